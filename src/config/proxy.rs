//! The `proxy:` section: one egress route per name, as written. `proxy/route.rs` checks it and
//! resolves the upstream.

use std::time::Duration;

use serde::Deserialize;

/// Default of `proxy.<name>.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `proxy.<name>.max_body`: 10 MiB.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// One route as written under `proxy:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRouteSettings {
    /// Base URL, ending in '/': `/proxy/{name}/{rest}` goes to `{upstream}{rest}`.
    pub upstream: String,
    /// Whose token goes on the request.
    pub profile: String,
    /// A fixed system-user organisation; otherwise the caller's `X-Broker-Org` header.
    pub org: Option<String>,
    /// The whole upstream exchange, first byte sent to last byte received.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest request body forwarded, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY
}
