//! Policy: who may have which token. Token profiles (the built-in three and broker.yaml's),
//! on-demand scope patterns, organisation numbers, and the API clients allowed to call.

pub(crate) mod access;
pub(crate) mod consent;
pub(crate) mod fnr;
pub(crate) mod identity;
pub(crate) mod introspection;
pub(crate) mod on_demand;
pub(crate) mod org;
pub(crate) mod profile;

/// Whether `url`'s host is a loopback address (127.0.0.0/8, ::1) or `localhost`: the only place
/// plain http is acceptable (a proxy route's upstream, Vault's address, an issuer's JWKS, the
/// Altinn platform in tests).
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
