//! Onboarding customers: the vendor's system in Altinn's system register, and system-user
//! requests the customers accept, done by the broker with its own admin token.
//!
//! - `system`: `system:` of broker.yaml (`config/system.rs`), checked, as Altinn's register
//!   body; differences between the registered system and the configured one.
//! - `flow`: the idempotent job, shared by the commands (`app/onboarding.rs`) and the HTTP routes
//!   (`http/onboarding.rs`), over Altinn's register API (`upstream/register.rs`).
//!
//! Nothing here ever prints, logs or answers with a token.

pub(crate) mod change;
pub(crate) mod consent;
pub(crate) mod flow;
pub(crate) mod system;
