//! The egress proxy's routes as configured under `proxy:`: which upstream each name forwards to,
//! which token goes on the request, and the limits of one request.
//!
//! Validation refuses anything that would make the broker an open or a leaky proxy: a route name
//! outside `[a-z0-9-]`, an upstream that is not a base URL ending in '/', plain `http` to a host
//! other than loopback (outside `env: local`), a profile that does not exist. In `env: local` an
//! upstream `local:/path/` names a path on the embedded simulator, whose port is only known once it
//! runs.

use std::collections::BTreeMap;
use std::time::Duration;

use url::Url;

use crate::config::{Endpoints, Environment, ProxyRouteSettings};
use crate::policy::is_loopback;
use crate::policy::org::OrgNumber;
use crate::policy::profile::Profiles;

/// Upper bound of `proxy.<name>.max_body`: 1 GiB.
pub const MAX_MAX_BODY: u64 = 1024 * 1024 * 1024;
/// Upper bound of `proxy.<name>.timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The prefix of an upstream on the embedded simulator (`env: local`).
pub const LOCAL_PREFIX: &str = "local:";

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Url(Url),
    /// A path on the embedded simulator (`local:/storage/api/v1/`), resolved at start.
    Local(String),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct ProxyRoute {
    pub name: String,
    pub upstream: Upstream,
    pub profile: String,
    pub org: Option<OrgNumber>,
    pub timeout: Duration,
    pub max_body: u64,
}

impl ProxyRoute {
    /// The base URL, with `local:` resolved against the simulator's base URL (the simulator's
    /// default address when none is running, as for the token endpoints).
    pub fn base_url(&self, local_base: Option<&Url>) -> Url {
        match &self.upstream {
            Upstream::Url(url) => url.clone(),
            Upstream::Local(path) => {
                // Any URL on the simulator; joining an absolute path keeps only its origin.
                let simulator = Endpoints::defaults(Environment::Local, local_base).token_url;
                simulator.join(path).unwrap_or(simulator)
            }
        }
    }
}

/// Validate `proxy:`; every problem goes to `problems` with its field path.
pub fn validate(
    settings: &BTreeMap<String, ProxyRouteSettings>,
    env: Environment,
    profiles: Option<&Profiles>,
    problems: &mut Vec<String>,
) -> Vec<ProxyRoute> {
    let mut routes = Vec::new();
    for (name, s) in settings {
        let field = |f: &str| format!("proxy.{name}.{f}");
        let before = problems.len();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            problems.push(format!(
                "proxy.{name}: route names are 1 to 64 of a-z, 0-9 and '-'"
            ));
        }
        let upstream = match upstream(&s.upstream, env) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{}: {e}", field("upstream")));
                None
            }
        };
        if let Some(profiles) = profiles {
            problems.extend(profiles.check_named(&s.profile, &field("profile")));
        }
        let org = crate::policy::org::parse_field(s.org.as_deref(), &field("org"), problems);
        if s.timeout.is_zero() || s.timeout > MAX_TIMEOUT {
            problems.push(format!(
                "{}: must be longer than 0s and at most 1h",
                field("timeout")
            ));
        }
        if s.max_body == 0 || s.max_body > MAX_MAX_BODY {
            problems.push(format!(
                "{}: must be between 1 and {MAX_MAX_BODY} bytes",
                field("max_body")
            ));
        }
        if let (Some(upstream), true) = (upstream, problems.len() == before) {
            routes.push(ProxyRoute {
                name: name.clone(),
                upstream,
                profile: s.profile.clone(),
                org,
                timeout: s.timeout,
                max_body: s.max_body,
            });
        }
    }
    routes
}

/// Parse and check one `upstream:` value.
fn upstream(text: &str, env: Environment) -> Result<Upstream, String> {
    let local = env == Environment::Local;
    if let Some(path) = text.strip_prefix(LOCAL_PREFIX) {
        if !local {
            return Err(format!(
                "{LOCAL_PREFIX} names the embedded simulator, which runs only in env local"
            ));
        }
        if !path.starts_with('/') || !path.ends_with('/') || path.contains("..") {
            return Err(format!(
                "{text:?}: write {LOCAL_PREFIX}/path/ (a path that starts and ends with '/')"
            ));
        }
        return Ok(Upstream::Local(path.to_owned()));
    }
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: a base URL has no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?}: credentials do not belong in the URL; the broker adds the token"
        ));
    }
    if !text.ends_with('/') || !url.path().ends_with('/') {
        return Err(format!(
            "{text:?} must end with '/' (requests go to the upstream followed by the rest of the path)"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if local || is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "{text:?}: the token would travel unencrypted; use https (plain http only to loopback or in env local)"
            ));
        }
        other => return Err(format!("{text:?}: scheme {other} is not http(s)")),
    }
    Ok(Upstream::Url(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_MAX_BODY, DEFAULT_TIMEOUT};

    #[test]
    fn https_only_except_loopback_and_env_local() {
        let e = Environment::Test;
        assert!(upstream("https://platform.tt02.altinn.no/storage/api/v1/", e).is_ok());
        assert!(upstream("http://127.0.0.1:8080/", e).is_ok());
        assert!(upstream("http://[::1]:8080/", e).is_ok());
        assert!(upstream("http://localhost/x/", e).is_ok());
        let err = upstream("http://platform.tt02.altinn.no/", e).unwrap_err();
        assert!(err.contains("use https"), "{err}");
        assert!(upstream("http://platform.example/", Environment::Local).is_ok());
        assert!(upstream("ftp://x.example/", e).is_err());
    }

    #[test]
    fn base_urls_end_with_a_slash_and_carry_nothing_else() {
        let e = Environment::Prod;
        assert!(upstream("https://x.example/api", e).is_err());
        assert!(upstream("https://x.example", e).is_err());
        assert!(upstream("https://x.example/?a=1", e).is_err());
        assert!(upstream("https://u:p@x.example/", e).is_err());
        assert!(upstream("not a url/", e).is_err());
    }

    #[test]
    fn local_placeholder_only_in_env_local() {
        assert_eq!(
            upstream("local:/storage/api/v1/", Environment::Local),
            Ok(Upstream::Local("/storage/api/v1/".into()))
        );
        assert!(upstream("local:/storage/api/v1/", Environment::Test).is_err());
        assert!(upstream("local:storage/", Environment::Local).is_err());
        let route = ProxyRoute {
            name: "r".into(),
            upstream: Upstream::Local("/storage/api/v1/".into()),
            profile: "altinn".into(),
            org: None,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        };
        let base = Url::parse("http://127.0.0.1:4321/").unwrap();
        assert_eq!(
            route.base_url(Some(&base)).as_str(),
            "http://127.0.0.1:4321/storage/api/v1/"
        );
    }
}
