//! What the broker knows about its keys' lifetimes, shared by the key keeper (which writes it),
//! `/readyz`, `/metrics` and `keys status` (which read it). A leaf of plain values: a kid, where
//! the key is kept, Digdir's `exp` and the certificate's not-after, never key material.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::tokens::token::rfc3339;

/// One key of a managed client.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyReport {
    pub client: String,
    pub kid: String,
    /// Where the private half is (`key.path /run/keys.json`), or `digdir only` for a key the
    /// broker does not hold (another replica's or app's).
    pub kept: String,
    /// When Digdir stops accepting it, or the certificate expires, whichever is sooner.
    pub expires_at: Option<SystemTime>,
    pub in_use: bool,
}

impl KeyReport {
    /// Whole days left (negative once past).
    pub fn days_left(&self, now: SystemTime) -> Option<i64> {
        self.expires_at.map(|at| match at.duration_since(now) {
            Ok(left) => (left.as_secs() / 86_400) as i64,
            Err(past) => -((past.duration().as_secs() / 86_400) as i64) - 1,
        })
    }

    pub fn json(&self, now: SystemTime) -> Value {
        json!({
            "client": self.client,
            "kid": self.kid,
            "kept": self.kept,
            "expires_at": self.expires_at.map(rfc3339),
            "days_left": self.days_left(now),
            "in_use": self.in_use,
        })
    }
}

/// The last failed attempt to read or change Digdir's set.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub api: String,
    pub status: String,
    pub message: String,
    pub at: SystemTime,
    pub attempts: u32,
}

#[derive(Debug, Default)]
struct Inner {
    keys: Vec<KeyReport>,
    failure: Option<Failure>,
    last_check: Option<SystemTime>,
    /// `renew` or `rotate`; `None` without `key_rotation:`.
    action: Option<&'static str>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeyWatch(Arc<Mutex<Inner>>);

impl KeyWatch {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_keys(&self, keys: Vec<KeyReport>) {
        self.inner().keys = keys;
    }

    pub fn set_action(&self, action: &'static str) {
        self.inner().action = Some(action);
    }

    pub fn checked(&self, at: SystemTime) {
        let mut inner = self.inner();
        inner.last_check = Some(at);
        inner.failure = None;
    }

    pub fn failed(&self, failure: Failure) {
        self.inner().failure = Some(failure);
    }

    pub fn keys(&self) -> Vec<KeyReport> {
        self.inner().keys.clone()
    }

    pub fn failure(&self) -> Option<Failure> {
        self.inner().failure.clone()
    }

    /// `/readyz`'s `keys` and `key_rotation`.
    pub fn json(&self, now: SystemTime) -> (Value, Option<Value>) {
        let inner = self.inner();
        let keys = Value::Array(inner.keys.iter().map(|k| k.json(now)).collect());
        let rotation = inner.action.map(|action| {
            json!({
                "action": action,
                "last_check": inner.last_check.map(rfc3339),
                "failing": inner.failure.is_some(),
                "last_failure": inner.failure.as_ref().map(|f| json!({
                    "api": f.api,
                    "status": f.status,
                    "error": f.message,
                    "at": rfc3339(f.at),
                    "attempts": f.attempts,
                })),
            })
        });
        (keys, rotation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_left_counts_whole_days_and_goes_negative_past_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let key = |secs: i64| KeyReport {
            client: "c".into(),
            kid: "k".into(),
            kept: "key.path".into(),
            expires_at: Some(if secs >= 0 {
                now + Duration::from_secs(secs as u64)
            } else {
                now - Duration::from_secs((-secs) as u64)
            }),
            in_use: true,
        };
        assert_eq!(key(14 * 86_400 + 5).days_left(now), Some(14));
        assert_eq!(key(3600).days_left(now), Some(0));
        assert_eq!(key(-3600).days_left(now), Some(-1));
    }
}
