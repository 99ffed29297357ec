//! The upstream protocol: the JWT grant, issuer discovery, one call to Maskinporten's token
//! endpoint and to Altinn's exchange, Altinn's system register (`register.rs`, its codes in
//! `register_codes.rs`), retries and clock skew, over one shared HTTP client.
//! Nothing here knows about caches or HTTP routes.

pub(crate) mod altinn;
mod altinn_api;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod consent;
pub(crate) mod discovery;
pub(crate) mod fetch;
pub(crate) mod grant;
pub(crate) mod maskinporten;
pub(crate) mod register;
pub(crate) mod register_changes;
pub(crate) mod register_codes;
pub(crate) mod retry;
pub(crate) mod self_service;
