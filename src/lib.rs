//! maskinporten-broker: holds an organisation's Maskinporten key and serves ready-to-use tokens
//! over local HTTP.
//!
//! One request flows one way: HTTP route → profile → cache → grant → upstream → cache → response.

pub mod access;
pub mod altinn;
pub mod app;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod fetch;
pub mod grant;
pub mod http;
pub mod key;
pub mod maskinporten;
pub mod metrics;
pub mod org;
pub mod profile;
pub mod proxy_path;
pub mod proxy_route;
pub mod retry;
pub mod secret;
pub mod simulator;
pub mod telemetry;
pub mod token;
pub mod token_files;
pub mod upstream;
