//! A string that must never be printed: private keys, grants, access tokens, API keys.
//!
//! `Debug` and `Display` both print `[redacted]`, so a secret that slips into a log line, an error or
//! a panic message shows nothing. The only way to the text is [`Secret::expose`], which is easy to
//! grep for. A short SHA-256 [`Secret::fingerprint`] lets audit logs tell tokens apart without
//! revealing them.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A secret string; cheap to clone (shared), impossible to print by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret text itself. Call this only where the secret leaves the process on purpose: an
    /// upstream request, a response body to the caller that asked for it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits of the SHA-256 of the secret: enough to correlate, useless to replay.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..6])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("eyJhbGciOi.super.secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "eyJhbGciOi.super.secret");
    }

    #[test]
    fn fingerprint_is_short_stable_and_distinct() {
        let a = Secret::new("token-a");
        assert_eq!(a.fingerprint().len(), 12);
        assert_eq!(a.fingerprint(), Secret::new("token-a").fingerprint());
        assert_ne!(a.fingerprint(), Secret::new("token-b").fingerprint());
        assert!(!a.fingerprint().contains("token"));
    }
}
