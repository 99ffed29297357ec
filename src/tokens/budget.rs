//! What protects Maskinporten and Altinn from the broker: how many fetches per second, how many
//! at once, and how hard background refreshes may push an upstream that is failing.
//!
//! - **Fetch budget.** [`FetchBudget`] allows `cache.max_fetches_per_second` upstream fetches for
//!   all callers together (a GCRA rate limiter from `governor`, burst of one second's worth) and,
//!   per API client, `clients[].max_fetches_per_second` ([`ClientBudget`]). A caller whose request
//!   would start a fetch over budget is refused at once with the time to wait; a cache hit never
//!   asks the budget. Background refreshes take from the global budget too, but wait for it at
//!   most [`BACKGROUND_BUDGET_WAIT`] and then go: callers cannot starve the refresh of a token in use.
//! - **Concurrency.** At most `cache.max_concurrent_fetches` fetches run at once; the rest queue.
//! - **Breaker.** One [`Breaker`] per upstream target. After [`TRIP_AFTER`] consecutive transient
//!   failures (or any `Retry-After`) it is open: background attempts go one at a time, at least
//!   [`PROBE_SPACING`] apart and not before the upstream's `Retry-After` (up to
//!   [`MAX_RETRY_AFTER`]), so an outage costs about one background call per second whatever the
//!   number of keys. A success closes it. While closed, at most [`BACKGROUND_LANES`] background
//!   attempts per upstream are in flight, so a wave of refreshes due at once meets an outage
//!   with a few calls, not with all of them. Callers' own fetches are not held back by it (they
//!   are bounded by the fetch budget); their outcomes feed it.
//!
//! This module knows nothing of HTTP, tokens or upstream protocols: names, numbers and outcomes.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The longest a background refresh waits for the global fetch budget before it goes anyway.
pub const BACKGROUND_BUDGET_WAIT: Duration = Duration::from_secs(1);
/// Consecutive transient failures of one upstream that open its breaker.
pub const TRIP_AFTER: u32 = 3;
/// While a breaker is open, background attempts on its upstream are at least this far apart.
pub const PROBE_SPACING: Duration = Duration::from_secs(1);
/// Background attempts on one upstream in flight at once while its breaker is closed.
pub const BACKGROUND_LANES: usize = 8;
/// The longest `Retry-After` the background honours; a longer one is read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// Why a fetch was not started: the budget it needed is spent for now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} may start at most {per_second} upstream fetches per second and that budget is spent; cached tokens are still served, try again in {}s",
    who.as_deref().map_or_else(|| "all callers together".to_owned(), |c| format!("client {c:?}")),
    retry_after.as_secs().max(1)
)]
pub struct OverBudget {
    /// The API client whose own budget is spent; `None` for the global one.
    pub who: Option<Arc<str>>,
    pub per_second: u32,
    pub retry_after: Duration,
}

/// A rate of fetches: the limiter and the number it was built from (for the error message).
struct Rate {
    limiter: DefaultDirectRateLimiter,
    per_second: NonZeroU32,
}

impl Rate {
    fn new(per_second: NonZeroU32) -> Self {
        Rate {
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            per_second,
        }
    }

    /// Take one fetch from the budget, or say how long until one is free.
    fn take(&self, who: Option<&Arc<str>>) -> Result<(), OverBudget> {
        self.limiter.check().map_err(|not_until| OverBudget {
            who: who.cloned(),
            per_second: self.per_second.get(),
            retry_after: not_until.wait_time_from(self.limiter.clock().now()),
        })
    }
}

/// One API client's own fetch budget (`clients[].max_fetches_per_second`).
pub struct ClientBudget {
    name: Arc<str>,
    rate: Rate,
}

impl ClientBudget {
    pub fn new(name: &str, per_second: NonZeroU32) -> Self {
        ClientBudget {
            name: name.into(),
            rate: Rate::new(per_second),
        }
    }
}

impl std::fmt::Debug for ClientBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBudget")
            .field("name", &self.name)
            .field("per_second", &self.rate.per_second)
            .finish()
    }
}

/// The global fetch budget and the cap on concurrent fetches.
pub struct FetchBudget {
    rate: Rate,
    concurrent: Semaphore,
}

impl FetchBudget {
    pub fn new(per_second: NonZeroU32, concurrent: usize) -> Self {
        FetchBudget {
            rate: Rate::new(per_second),
            concurrent: Semaphore::new(concurrent.max(1)),
        }
    }

    /// A caller's request would start a fetch: its client's budget, then everyone's.
    pub fn admit_caller(&self, client: Option<&ClientBudget>) -> Result<(), OverBudget> {
        if let Some(client) = client {
            client.rate.take(Some(&client.name))?;
        }
        self.rate.take(None)
    }

    /// A background refresh takes from the global budget, waiting for it a little at most.
    pub async fn admit_background(&self) {
        let _ = tokio::time::timeout(BACKGROUND_BUDGET_WAIT, self.rate.limiter.until_ready()).await;
    }

    /// A place among the fetches running at once; waits while all are taken.
    pub async fn running(&self) -> Option<SemaphorePermit<'_>> {
        // Only a closed semaphore fails, and this one is never closed.
        self.concurrent.acquire().await.ok()
    }
}

/// How one upstream call ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered usefully (or refused: it is up).
    Up,
    /// A transient failure, with the upstream's `Retry-After` if it sent one.
    Down { retry_after: Option<Duration> },
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    /// No background attempt before this.
    not_before: Option<Instant>,
}

/// The outage budget of one upstream (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    /// One per background attempt in flight.
    lanes: Semaphore,
    /// Held by the one background attempt in flight while the breaker is open.
    probe: tokio::sync::Mutex<()>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::default(),
            lanes: Semaphore::new(BACKGROUND_LANES),
            probe: tokio::sync::Mutex::default(),
        }
    }
}

/// Held for the duration of one background attempt: its lane, and the probe while open.
pub struct Probe<'a> {
    _lane: Option<SemaphorePermit<'a>>,
    _probe: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether background attempts are currently held back.
    pub fn is_open(&self) -> bool {
        let state = self.state();
        state.failures >= TRIP_AFTER || state.not_before.is_some_and(|at| at > Instant::now())
    }

    /// Wait until a background attempt may go: at once while closed; while open, one at a time,
    /// spaced and after `Retry-After`. Keep the returned probe for the duration of the attempt.
    pub async fn admit_background(&self) -> Probe<'_> {
        // Only a closed semaphore fails, and this one is never closed.
        let lane = self.lanes.acquire().await.ok();
        if !self.is_open() {
            return Probe {
                _lane: lane,
                _probe: None,
            };
        }
        let guard = self.probe.lock().await;
        let not_before = self.state().not_before;
        if let Some(at) = not_before
            && self.is_open()
        {
            tokio::time::sleep_until(at).await;
        }
        Probe {
            _lane: lane,
            _probe: Some(guard),
        }
    }

    /// Learn from one call's outcome (callers' and background alike).
    pub fn record(&self, outcome: Outcome) {
        let mut state = self.state();
        match outcome {
            Outcome::Up => *state = BreakerState::default(),
            Outcome::Down { retry_after } => {
                state.failures = state.failures.saturating_add(1);
                let wait = match retry_after {
                    Some(wanted) => wanted.min(MAX_RETRY_AFTER).max(PROBE_SPACING),
                    None if state.failures >= TRIP_AFTER => PROBE_SPACING,
                    None => return,
                };
                let now = Instant::now();
                let at = now.checked_add(wait).unwrap_or(now);
                state.not_before = Some(state.not_before.map_or(at, |old| old.max(at)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn the_global_budget_refuses_with_a_wait_once_spent() {
        let budget = FetchBudget::new(n(3), 16);
        for _ in 0..3 {
            budget.admit_caller(None).unwrap();
        }
        let over = budget.admit_caller(None).unwrap_err();
        assert_eq!(over.who, None);
        assert!(over.retry_after <= Duration::from_secs(1));
        assert!(over.to_string().contains("all callers together"), "{over}");
    }

    #[test]
    fn a_client_budget_is_its_own_and_also_counts_globally() {
        let budget = FetchBudget::new(n(5), 16);
        let small = ClientBudget::new("batch", n(2));
        budget.admit_caller(Some(&small)).unwrap();
        budget.admit_caller(Some(&small)).unwrap();
        let over = budget.admit_caller(Some(&small)).unwrap_err();
        assert_eq!(over.who.as_deref(), Some("batch"));
        assert!(over.to_string().contains("client \"batch\""), "{over}");
        // The other callers still have what the client did not use of the global budget.
        for _ in 0..3 {
            budget.admit_caller(None).unwrap();
        }
        assert!(budget.admit_caller(None).is_err());
    }

    #[tokio::test]
    async fn background_refreshes_are_never_starved_by_callers() {
        // Callers take every fetch of a 1/s budget the moment it frees up (for 3 s), and four
        // refreshes wait for it at once. Each goes within the 1 s wait all the same: waiting
        // for the budget itself, the four would need 4 s even if no caller took a fetch, and
        // with the callers some would never get one.
        let budget = Arc::new(FetchBudget::new(n(1), 16));
        let callers = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let until = std::time::Instant::now() + Duration::from_secs(3);
                while std::time::Instant::now() < until {
                    let _ = budget.admit_caller(None);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        let refreshes: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    budget.admit_background().await;
                    started.elapsed()
                })
            })
            .collect();
        for refresh in refreshes {
            let waited = refresh.await.unwrap();
            assert!(
                waited <= BACKGROUND_BUDGET_WAIT + Duration::from_millis(500),
                "a refresh waited {waited:?}"
            );
        }
        callers.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_lets_one_background_attempt_through_per_second() {
        let breaker = Arc::new(Breaker::default());
        for _ in 0..TRIP_AFTER {
            breaker.record(Outcome::Down { retry_after: None });
        }
        assert!(breaker.is_open());
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (breaker, attempts) = (breaker.clone(), attempts.clone());
                tokio::spawn(async move {
                    let _probe = breaker.admit_background().await;
                    attempts.lock().unwrap().push(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    breaker.record(Outcome::Down { retry_after: None });
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let made = attempts.lock().unwrap().len();
        assert!((9..=11).contains(&made), "{made} attempts in 10 s");
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wave_of_refreshes_meeting_an_outage_makes_a_few_calls_then_one_per_second() {
        let breaker = Arc::new(Breaker::default());
        let attempts = Arc::new(Mutex::new(0usize));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (breaker, attempts) = (breaker.clone(), attempts.clone());
                tokio::spawn(async move {
                    let _probe = breaker.admit_background().await;
                    *attempts.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    breaker.record(Outcome::Down { retry_after: None });
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wave = *attempts.lock().unwrap();
        assert!(
            wave <= BACKGROUND_LANES,
            "{wave} calls before the breaker opened"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let later = *attempts.lock().unwrap() - wave;
        assert!((4..=6).contains(&later), "{later} calls in the next 5 s");
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_and_clamped_and_success_closes() {
        let breaker = Breaker::default();
        breaker.record(Outcome::Down {
            retry_after: Some(Duration::from_secs(60)),
        });
        assert!(breaker.is_open(), "a Retry-After opens it at once");
        let started = Instant::now();
        drop(breaker.admit_background().await);
        assert!(started.elapsed() >= Duration::from_secs(60));
        breaker.record(Outcome::Down {
            retry_after: Some(Duration::MAX),
        });
        assert!(breaker.state().not_before.unwrap() <= Instant::now() + MAX_RETRY_AFTER);
        breaker.record(Outcome::Up);
        assert!(!breaker.is_open());
    }
}
