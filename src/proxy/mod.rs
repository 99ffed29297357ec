//! The egress proxy's rules: its routes (`proxy:` in broker.yaml, https only) and where a proxied
//! path may go (never outside the route's base). The handler that forwards lives in `http/proxy.rs`.

pub(crate) mod path;
pub(crate) mod route;
pub(crate) mod table;
