//! Wall-clock time corrected for the upstream's clock.
//!
//! Maskinporten refuses a grant whose `iat` is more than about 10 s off its own clock (MP-130). A
//! broker on a host with a drifting clock would fail every request, so each upstream response's
//! `Date` header is compared with the local clock; when they differ by more than
//! [`SKEW_TOLERANCE`] the difference is applied to every grant and expiry computation, and a
//! warning is logged once.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// `Date` has one-second resolution and the request takes time: ignore differences below this.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(5);

/// The broker's notion of "now".
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    warned: AtomicBool,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let local = SystemTime::now();
        let shift = Duration::from_millis(offset.unsigned_abs());
        // Checked: an upstream's Date far in the future or past must not panic the clock.
        let corrected = if offset >= 0 {
            local.checked_add(shift)
        } else {
            local.checked_sub(shift)
        };
        corrected.unwrap_or(local)
    }

    /// The current correction in milliseconds (upstream minus local).
    #[cfg(test)]
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Learn from an upstream `Date` header observed at local time `local`.
    pub fn observe(&self, upstream: SystemTime, local: SystemTime) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let diff_ms: i64 = match upstream.duration_since(local) {
            Ok(ahead) => ms(ahead),
            Err(behind) => -ms(behind.duration()),
        };
        if diff_ms.unsigned_abs() as u128 <= SKEW_TOLERANCE.as_millis() {
            self.offset_ms.store(0, Ordering::Relaxed);
            return;
        }
        self.offset_ms.store(diff_ms, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                offset_ms = diff_ms,
                "the local clock differs from the upstream's Date header; grants use the upstream's time (fix NTP on this host)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_differences_are_ignored() {
        let c = Clock::default();
        let now = SystemTime::now();
        c.observe(now + Duration::from_secs(2), now);
        assert_eq!(c.offset_ms(), 0);
    }

    #[test]
    fn large_differences_correct_now_in_both_directions() {
        let c = Clock::default();
        let now = SystemTime::now();
        c.observe(now + Duration::from_secs(60), now);
        assert_eq!(c.offset_ms(), 60_000);
        let ahead = c.now().duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(59) && ahead <= Duration::from_secs(60));
        c.observe(now - Duration::from_secs(30), now);
        assert_eq!(c.offset_ms(), -30_000);
        assert!(c.now() < SystemTime::now() - Duration::from_secs(29));
    }
}
