//! How the onboarding commands follow a request or change request with `--wait` (polling with
//! back-off until the customer answers, or time runs out) and print a result (text, or one JSON
//! object per line). Shared by `app/onboarding.rs` and `app/changes.rs`; it prints no token.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

/// `--wait` polls first after this long...
const FIRST_POLL: Duration = Duration::from_secs(2);
/// ... and backs off to at most this.
const LONGEST_POLL: Duration = Duration::from_secs(30);

/// A request or change request `--wait` follows until it is final.
pub(super) trait Followed {
    /// `request` or `change request`.
    const WHAT: &'static str;
    fn id(&self) -> &str;
    fn status(&self) -> &str;
    fn is_final(&self) -> bool;
}

/// Poll `status` (backing off from [`FIRST_POLL`] to [`LONGEST_POLL`]) until `view` is final;
/// an error after `timeout`.
pub(super) async fn follow<V, E, F, Fut>(
    mut view: V,
    timeout: Duration,
    status: F,
) -> anyhow::Result<V>
where
    V: Followed,
    E: std::error::Error + Send + Sync + 'static,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<V, E>>,
{
    eprintln!(
        "waiting up to {} for the customer to answer at the confirm URL ...",
        humantime::format_duration(timeout)
    );
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    while !view.is_final() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} {} is still {} after {}; run `systemuser status {}` later",
                V::WHAT,
                view.id(),
                view.status(),
                humantime::format_duration(timeout),
                view.id()
            );
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 3 / 2).min(LONGEST_POLL);
        view = status(view.id().to_owned()).await?;
    }
    Ok(view)
}

/// One result: a JSON object on one line, or text.
pub(super) fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("cannot print the result as JSON: {e}"),
        }
    } else {
        println!("{}", text());
    }
}
