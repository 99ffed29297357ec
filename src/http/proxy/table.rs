//! The proxy's routes ready to serve: each `proxy:` entry with its base URL resolved, and the
//! HTTP client they share (its own, never following redirects; replaced at reload).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use url::Url;

use crate::http::proxy::client::ProxyClient;
use crate::http::proxy::pool::host_value;
use crate::http::proxy::route::ProxyRoute;
use crate::policy::org::OrgNumber;

/// The routes (fixed at start) and the HTTP client they share (rebuilt at each reload).
pub struct Proxy {
    /// By name; foldhash, not SipHash: the names are configured, and a caller's path can only
    /// look them up, never add one.
    pub(crate) routes: HashMap<String, Route, foldhash::fast::RandomState>,
    client: ArcSwap<ProxyClient>,
}

/// A route ready to serve: its base URL resolved.
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) base: Url,
    /// The `Host` header of every request to `base` (as the HTTP client would write it), made
    /// once instead of per request.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) profile: String,
    pub(crate) org: Option<OrgNumber>,
    pub(crate) timeout: Duration,
    pub(crate) max_body: u64,
}

impl Proxy {
    /// The routes with `local:` upstreams resolved against the simulator's base URL, and the
    /// HTTP client of their own (`client.rs`: rustls, `http_client` settings, redirects never
    /// followed).
    pub fn new(routes: &[ProxyRoute], local_base: Option<&Url>, client: ProxyClient) -> Proxy {
        let mut resolved = HashMap::default();
        for r in routes {
            let base = r.base_url(local_base);
            let host = host_value(&base);
            resolved.insert(
                r.name.clone(),
                Route {
                    name: r.name.clone(),
                    base,
                    host,
                    profile: r.profile.clone(),
                    org: r.org.clone(),
                    timeout: r.timeout,
                    max_body: r.max_body,
                },
            );
        }
        Proxy {
            routes: resolved,
            client: ArcSwap::from_pointee(client),
        }
    }

    /// The HTTP client in force now.
    pub(crate) fn client(&self) -> Arc<ProxyClient> {
        self.client.load_full()
    }

    /// Use `client` from the next request on (a reload's `http_client`).
    pub(crate) fn set_client(&self, client: ProxyClient) {
        self.client.store(Arc::new(client));
    }

    /// The configured route names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
