//! Policy: who may have which token. Token profiles (the built-in three and broker.yaml's),
//! on-demand scope patterns, organisation numbers, and the API clients allowed to call.

pub(crate) mod access;
pub(crate) mod on_demand;
pub(crate) mod org;
pub(crate) mod profile;
