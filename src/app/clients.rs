//! The HTTP clients outside the token path: the workload-identity issuers' key sets, the
//! introspection verifiers and the egress proxy's client. Built at start and again at every
//! reload, so a reloaded `http_client` (timeouts, proxy, extra CA certificate) and `endpoints`
//! (the introspection verifiers' issuer and Altinn platform) reach them as they reach the token
//! fetchers. The `identity`, `introspection` and `proxy` sections themselves are read at start
//! only: a reload keeps the sections the broker started with.

use std::path::Path;
use std::sync::Arc;

use url::Url;

use crate::config::{HttpClientSettings, Settings};
use crate::http::proxy::client::ProxyClient;
use crate::http::state::Shared;
use crate::policy::identity::Issuers;
use crate::policy::introspection::Introspection;
use crate::upstream::client::{ClientBuildError, http_client};

/// The clients of `settings`; `http` is the token path's client, which the introspection
/// verifiers share. Every issuer's keys are read once before this returns (a failure is logged;
/// the keys are read again when a token names one).
pub(crate) async fn start(
    settings: &Settings,
    local_base: Option<&Url>,
    http: &reqwest::Client,
) -> Result<(Issuers, Introspection, ProxyClient), ClientBuildError> {
    let http_settings = &settings.http_client;
    let identity = Issuers::build(&settings.identity, |ca| {
        http_client(&with_ca(http_settings, ca))
    })?;
    let proxy = ProxyClient::build(http_settings)?;
    let introspection = introspection(&settings.introspection, settings, local_base, http);
    identity.read_keys().await;
    Ok((identity, introspection, proxy))
}

/// A reload's clients, built completely before [`Rebuilt::apply`] replaces anything.
pub(crate) struct Rebuilt {
    identity: Vec<reqwest::Client>,
    introspection: Introspection,
    proxy: ProxyClient,
}

impl Rebuilt {
    /// The clients of the running broker (`state`, started with `started`) with the
    /// `http_client` and `endpoints` of `settings`.
    pub(crate) fn build(
        state: &Shared,
        started: &Settings,
        settings: &Settings,
        local_base: Option<&Url>,
        http: &reqwest::Client,
    ) -> Result<Rebuilt, ClientBuildError> {
        let http_settings = &settings.http_client;
        Ok(Rebuilt {
            identity: state
                .identity
                .make_clients(|ca| http_client(&with_ca(http_settings, ca)))?,
            introspection: introspection(&started.introspection, settings, local_base, http),
            proxy: ProxyClient::build(http_settings)?,
        })
    }

    /// Put them in force: the proxy's next request and the next introspection use them (the
    /// verifiers read their keys again on first use); the issuers' keys are read at once with
    /// the new clients (a failed read keeps the keys held).
    pub(crate) async fn apply(self, state: &Shared) {
        state.proxy.set_client(self.proxy);
        state.introspection.store(Arc::new(self.introspection));
        state.identity.reread_with(self.identity).await;
    }
}

/// The verifiers of `POST /api/v1/introspect` for the default client's environment in
/// `settings`; keys are read on first use.
fn introspection(
    sections: &crate::policy::introspection::IntrospectionSettings,
    settings: &Settings,
    local_base: Option<&Url>,
    http: &reqwest::Client,
) -> Introspection {
    let endpoints = settings.endpoints(local_base);
    Introspection::new(
        &endpoints.issuer,
        &endpoints.altinn_platform,
        http.clone(),
        sections.clone(),
    )
}

/// `settings` with an issuer's own CA (`identity.issuers.*.ca_file`) in place of the extra CA.
fn with_ca(settings: &HttpClientSettings, ca: Option<&Path>) -> HttpClientSettings {
    HttpClientSettings {
        extra_ca_cert: ca.map(Path::to_owned),
        ..settings.clone()
    }
}
