//! maskinporten-broker: holds an organisation's Maskinporten key and serves ready-to-use tokens
//! over local HTTP.
//!
//! One request flows one way: listener → limits → caller → route → broker → cache → fetch →
//! Maskinporten/Altinn (ARCHITECTURE.md draws it). The public surface is what the binary and the
//! integration tests need; everything else is private to the crate, so the compiler reports what
//! nobody uses.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod onboarding;
pub mod telemetry;

pub use access::hash_api_key;
pub use http::route_paths;
pub use key::{SigningKey, public_key_from_jwk};

mod access;
mod altinn;
mod broker;
mod budget;
mod cache;
mod clock;
mod discovery;
mod fetch;
mod grant;
mod http;
mod key;
mod maskinporten;
mod meters;
mod on_demand;
mod org;
mod profile;
mod proxy_path;
mod proxy_route;
mod retry;
mod secret;
mod serve;
mod simulator;
mod token;
mod token_files;
mod upstream;
