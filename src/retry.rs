//! Retrying transient upstream failures: exponential backoff with full jitter, bounded in attempts
//! and in total waiting, honouring `Retry-After`.
//!
//! Only [`UpstreamError::is_transient`] failures are retried (connection trouble, timeouts, 5xx,
//! 429). A refusal (`invalid_grant`, 4xx) is returned at once: the same grant would be refused again.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::fetch::FetchError;

/// How hard to try before giving up on one fetch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first backoff ceiling; doubles each retry.
    pub min_delay: Duration,
    /// The most the retries may wait in total; a `Retry-After` beyond it ends the retries.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(200),
            max_wait: Duration::from_secs(5),
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
        let max_wait = self.max_wait;
        attempt
            .retry(backoff)
            .when(is_transient)
            .adjust(move |err, planned| {
                // `None` means the backoff is exhausted: stay exhausted, whatever the upstream says.
                let planned = planned?;
                match retry_after(err) {
                    Some(wanted) if wanted > max_wait => None,
                    Some(wanted) => Some(wanted),
                    // Full jitter: anywhere between nothing and the exponential ceiling.
                    None => Some(planned.mul_f64(rand::random::<f64>())),
                }
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
    use crate::upstream::{Target, UpstreamError};
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
        }
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
