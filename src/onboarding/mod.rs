//! Onboarding customers: the vendor's system in Altinn's system register, and system-user
//! requests the customers accept, done by the broker with its own admin token.
//!
//! - `system`: `system:` of broker.yaml, checked, as Altinn's register body; differences.
//! - `client`: the register and request API of Altinn (one method per call).
//! - `codes`: Altinn's `AUTH-…`/`VLD-…` codes as sentences that say what to do.
//! - `flow`: the idempotent job, shared by the CLI and the HTTP routes (`http/onboarding.rs`).
//! - `commands`: `system show|register`, `systemuser request|status|list`.
//!
//! Nothing here ever prints, logs or answers with a token.

pub(crate) mod client;
pub(crate) mod codes;
mod commands;
pub(crate) mod flow;
pub(crate) mod system;

pub use self::commands::{system, systemuser};
