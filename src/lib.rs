//! maskinporten-broker: holds an organisation's Maskinporten key and serves ready-to-use tokens
//! over local HTTP.
//!
//! One request flows one way: listener → limits → caller → route → broker → cache → fetch →
//! Maskinporten/Altinn (ARCHITECTURE.md draws it). The folders are the rooms of that flow:
//!
//! | folder | concern |
//! |---|---|
//! | `app/` | the process: command line, commands, start-up, reload, the accept loop |
//! | `http/` | the HTTP face: route table, front door, handlers, problem+json, OpenAPI, and the egress proxy (`http/proxy/`: its routes, path rules and forwarding) |
//! | `tokens/` | the token side: broker, cache, the token value, the fetch budget, token files |
//! | `upstream/` | the upstream protocol: grant, discovery, Maskinporten, Altinn, retries, the HTTP client |
//! | `onboarding/` | customers' system users: `system:` checked, the idempotent register and request job |
//! | `policy/` | who may have what: profiles, on-demand scopes, organisation numbers, API clients |
//! | `key/` | the signing key in every form, and the redacted secret string |
//! | `config/` | the shape of broker.yaml: plain settings types, loading, checks per section |
//! | `telemetry/` | logging set-up, error chains, Prometheus metrics |
//! | `simulator/` | the embedded Maskinporten + Altinn of `env: local` |
//!
//! The public surface is what the binary and the integration tests need; everything else is
//! private to the crate, so the compiler reports what nobody uses.

pub mod app;
pub mod config;
pub mod telemetry;

pub use app::{cli, commands};
pub use http::route_paths;
pub use key::{SigningKey, public_key_from_jwk};
pub use policy::access::hash_api_key;

mod body;
mod http;
mod key;
mod onboarding;
mod policy;
mod simulator;
mod tokens;
mod upstream;
