//! Retrying transient upstream failures: exponential backoff with full jitter, bounded in attempts,
//! in total waiting and in total time, honouring `Retry-After`.
//!
//! Only callers' fetches are retried; a background refresh makes one attempt (its own loop and
//! the upstream's breaker decide when the next one is).
//!
//! Only [`UpstreamError::is_transient`] failures are retried (connection trouble, timeouts, 5xx,
//! 429). A refusal (`invalid_grant`, 4xx) is returned at once: the same grant would be refused again.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::upstream::fetch::FetchError;

/// How hard to try before giving up on one fetch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first backoff ceiling; doubles each retry.
    pub min_delay: Duration,
    /// The most the retries may wait in total (sleeping between attempts); a `Retry-After` that
    /// would take the sum beyond it ends the retries.
    pub max_wait: Duration,
    /// The longest one attempt may take (`http_client.timeout`).
    pub attempt_timeout: Duration,
    /// No retry starts unless it can finish, at `attempt_timeout`, within this long from the first
    /// attempt; below the caller's 20 s wait, so that a hang is answered as a timeout (504).
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(15),
            total: Duration::from_secs(19),
        }
    }
}

fn is_transient(e: &FetchError) -> bool {
    matches!(e, FetchError::Upstream(u) if u.is_transient())
}

fn retry_after(e: &FetchError) -> Option<Duration> {
    match e {
        FetchError::Upstream(u) => u.retry_after(),
        FetchError::Grant(_) => None,
    }
}

impl RetryPolicy {
    /// Run `attempt` until it succeeds, fails permanently, or the policy's bounds are reached.
    pub async fn run<T, F, Fut>(&self, attempt: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, FetchError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_wait)
            .with_max_times(self.max_retries)
            .with_total_delay(Some(self.max_wait));
        let (max_wait, attempt_timeout, total) = (self.max_wait, self.attempt_timeout, self.total);
        let started = tokio::time::Instant::now();
        let mut waited = Duration::ZERO;
        attempt
            .retry(backoff)
            .when(is_transient)
            .adjust(move |err, planned| {
                // `None` means the backoff is exhausted: stay exhausted, whatever the upstream says.
                let planned = planned?;
                let wait = match retry_after(err) {
                    Some(wanted) => wanted,
                    // Full jitter: anywhere between nothing and the exponential ceiling.
                    None => planned.mul_f64(rand::random::<f64>()),
                };
                let after_wait = waited.checked_add(wait).filter(|w| *w <= max_wait)?;
                let finish = started
                    .elapsed()
                    .checked_add(wait)
                    .and_then(|d| d.checked_add(attempt_timeout))
                    .filter(|d| *d <= total);
                finish?;
                waited = after_wait;
                Some(wait)
            })
            .notify(|err, wait| {
                tracing::info!(error = %err, wait_ms = wait.as_millis() as u64, "transient upstream failure; retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::client::{Target, UpstreamError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn unavailable(retry_after: Option<Duration>) -> FetchError {
        FetchError::Upstream(UpstreamError::Unavailable {
            target: Target::Maskinporten,
            status: 503,
            retry_after,
        })
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(1),
            max_wait: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(100),
            total: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_afters_that_add_up_beyond_max_wait_end_the_retries() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let policy = RetryPolicy {
            max_wait: Duration::from_secs(5),
            ..fast()
        };
        let r: Result<(), _> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable(Some(Duration::from_secs(3))))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "3 s + 3 s would exceed 5 s"
        );
        assert!(started.elapsed() <= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_that_could_not_finish_in_the_total_time() {
        let calls = AtomicUsize::new(0);
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_secs(15),
            total: Duration::from_secs(19),
            ..RetryPolicy::default()
        };
        let r: Result<(), _> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(15)).await;
                Err(FetchError::Upstream(UpstreamError::Timeout {
                    target: Target::Maskinporten,
                    after: Duration::from_secs(15),
                }))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a second 15 s attempt would end after 30 s"
        );
    }

    #[tokio::test]
    async fn transient_failures_are_retried_a_bounded_number_of_times() {
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable(None))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn refusals_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let r: Result<(), _> = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(FetchError::Upstream(UpstreamError::Refused {
                    target: Target::Maskinporten,
                    status: 400,
                    error: Some("invalid_grant".into()),
                    description: None,
                    code: None,
                    hint: None,
                }))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_ends_retries() {
        let calls = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let r: Result<(), _> = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable(Some(Duration::from_secs(60))))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_short_retry_after_is_honoured() {
        let calls = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let r = fast()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(unavailable(Some(Duration::from_secs(1))))
                } else {
                    Ok(())
                }
            })
            .await;
        assert!(r.is_ok());
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
