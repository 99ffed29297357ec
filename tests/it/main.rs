//! The integration tests: one binary, so the fake upstreams in `support` compile once.
//!
//! Each module is one area of behaviour, tested the way a user meets it: the broker started
//! in-process or as the release binary, on 127.0.0.1, against strict fakes of Maskinporten and
//! Altinn that verify what they receive.

mod support;

mod access;
mod bounded;
mod changes;
mod cli;
mod connections;
mod consent;
mod container_files;
mod credentials;
mod errors;
mod faults;
mod identity;
mod identity_cache;
mod introspect;
mod key_rotation;
mod key_rotation_local;
mod local_env;
mod manifests;
mod mp_clients;
mod observability;
mod oidc;
mod on_demand;
mod onboarding;
mod onboarding_body;
mod onboarding_bounds;
mod proxy;
mod proxy_tls;
mod register_fake;
mod reload;
mod reload_clients;
mod rollouts;
mod secrets;
mod security3;
mod signer_probe;
mod signers;
mod tls;
mod token_endpoints;
mod token_files;
mod vault_rotation;
