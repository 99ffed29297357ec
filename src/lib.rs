//! maskinporten-broker: holds an organisation's Maskinporten key and serves ready-to-use tokens
//! over local HTTP.
//!
//! One request flows one way: HTTP route → profile → cache → grant → upstream → cache → response.

pub mod altinn;
pub mod broker;
pub mod cache;
pub mod clock;
pub mod config;
pub mod fetch;
pub mod grant;
pub mod key;
pub mod maskinporten;
pub mod org;
pub mod profile;
pub mod retry;
pub mod secret;
pub mod simulator;
pub mod token;
pub mod upstream;
