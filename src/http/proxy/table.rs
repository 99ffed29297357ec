//! The proxy's routes ready to serve: each `proxy:` entry with its base URL resolved, and the
//! HTTP client they share (its own, never following redirects).

use std::collections::HashMap;
use std::time::Duration;

use url::Url;

use crate::config::HttpClientSettings;
use crate::http::proxy::route::ProxyRoute;
use crate::policy::org::OrgNumber;
use crate::upstream::client::{ClientBuildError, http_client};

/// The routes and the HTTP client they share.
pub struct Proxy {
    pub(crate) routes: HashMap<String, Route>,
    pub(crate) client: reqwest::Client,
}

/// A route ready to serve: its base URL resolved.
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) base: Url,
    pub(crate) profile: String,
    pub(crate) org: Option<OrgNumber>,
    pub(crate) timeout: Duration,
    pub(crate) max_body: u64,
}

impl Proxy {
    /// The routes with `local:` upstreams resolved against the simulator's base URL, and an HTTP
    /// client of their own (rustls, `http_client` settings, redirects never followed).
    pub fn new(
        routes: &[ProxyRoute],
        local_base: Option<&Url>,
        settings: &HttpClientSettings,
    ) -> Result<Proxy, ClientBuildError> {
        let mut resolved = HashMap::new();
        for r in routes {
            let base = r.base_url(local_base);
            resolved.insert(
                r.name.clone(),
                Route {
                    name: r.name.clone(),
                    base,
                    profile: r.profile.clone(),
                    org: r.org.clone(),
                    timeout: r.timeout,
                    max_body: r.max_body,
                },
            );
        }
        Ok(Proxy {
            routes: resolved,
            client: http_client(settings)?,
        })
    }

    /// The configured route names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
