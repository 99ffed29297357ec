//! The upstream protocol: the JWT grant, issuer discovery, one call to Maskinporten's token
//! endpoint and to Altinn's exchange, retries and clock skew, over one shared HTTP client.
//! Nothing here knows about caches or HTTP routes.

pub(crate) mod altinn;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod discovery;
pub(crate) mod fetch;
pub(crate) mod grant;
pub(crate) mod maskinporten;
pub(crate) mod retry;
