//! The token side: from a resolved request to a token in hand. The broker turns profile + org into
//! a cache key, the cache answers or fetches once per key within the fetch budget, and token
//! files follow the cache onto disk.

pub(crate) mod answer;
pub(crate) mod broker;
pub(crate) mod budget;
pub(crate) mod cache;
pub(crate) mod files;
pub(crate) mod token;
