//! The token cache: one slot per (profile, organisation), filled once, refreshed ahead of expiry.
//!
//! - **Coalescing.** Concurrent requests for a missing key share one upstream call (moka's
//!   `or_try_insert_with`); a slot whose token got too old is refreshed under the slot's own lock,
//!   so again only one caller goes upstream.
//! - **Refresh ahead.** Each slot owns a background task that refreshes the token once only
//!   `refresh_when_left` of its lifetime is left (never later than `refresh_floor` and
//!   `min_remaining` before expiry). Callers keep getting the current token meanwhile, so a caller
//!   that asks at least once per lifetime never waits for the upstream after warm-up.
//! - **Never stale.** A token with less than `min_remaining` left is not served, an expired one
//!   never; the caller then waits for a fresh one or gets the error.
//! - **Idle entries fall out.** A slot nobody asked for during `idle` is dropped with its task.
//! - **Refusals are remembered.** A permanent refusal is returned from memory for
//!   [`REFUSAL_MEMORY`], so a crowd of callers cannot hammer Maskinporten with a broken grant.
//!
//! The cache knows nothing of HTTP, grants or upstreams: it asks a [`TokenSource`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::CacheSettings;
use crate::on_demand::OnDemandRequest;
use crate::org::OrgNumber;
use crate::profile::ProfileName;
use crate::token::Token;

/// How long a permanent refusal is answered from memory.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(5);
/// How long a transient failure is answered from memory: long enough that a crowd of callers
/// queued behind one failed fetch does not repeat it one by one, short enough to recover fast.
pub const OUTAGE_MEMORY: Duration = Duration::from_secs(1);
/// Longest pause between background refresh attempts while the upstream fails.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);

/// What a cached token is for: a configured profile, or an on-demand request (then `profile` is
/// [`crate::on_demand::ON_DEMAND`]), and the system user's organisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub profile: ProfileName,
    pub org: Option<OrgNumber>,
    /// The normalised on-demand request; `None` for a profile.
    pub on_demand: Option<Arc<OnDemandRequest>>,
}

/// Where fresh tokens come from.
pub trait TokenSource: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    fn fetch(&self, key: &CacheKey) -> impl Future<Output = Result<Token, Self::Error>> + Send;

    /// Whether this failure will repeat if asked again at once (a refusal, not an outage).
    fn is_permanent(error: &Self::Error) -> bool;
}

/// Why the cache has no token to give.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Source(Arc<E>),
    #[error(
        "the upstream issued a token that lives {}, not longer than cache.min_remaining ({})",
        humantime::format_duration(*.lifetime), humantime::format_duration(*.min_remaining)
    )]
    TooShortLived {
        lifetime: Duration,
        min_remaining: Duration,
    },
}

impl<E: std::error::Error + 'static> Clone for CacheError<E> {
    fn clone(&self) -> Self {
        match self {
            CacheError::Source(e) => CacheError::Source(e.clone()),
            CacheError::TooShortLived {
                lifetime,
                min_remaining,
            } => CacheError::TooShortLived {
                lifetime: *lifetime,
                min_remaining: *min_remaining,
            },
        }
    }
}

/// Whether the caller's token came from the cache or waited for the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
        }
    }
}

/// The refresh and serving rules, from `cache` in the config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub refresh_when_left: f64,
    pub refresh_floor: Duration,
    pub min_remaining: Duration,
    pub idle: Duration,
}

impl From<&CacheSettings> for Policy {
    fn from(s: &CacheSettings) -> Self {
        Policy {
            refresh_when_left: s.refresh_when_left,
            refresh_floor: s.refresh_floor,
            min_remaining: s.min_remaining,
            idle: s.idle,
        }
    }
}

impl Policy {
    /// When the background task should fetch this token's successor: once `refresh_when_left` of
    /// the lifetime is left, but at least `refresh_floor` before the token stops being servable.
    pub fn refresh_at(&self, token: &Token) -> SystemTime {
        let left = token
            .lifetime()
            .mul_f64(self.refresh_when_left)
            .max(self.min_remaining + self.refresh_floor);
        token
            .expires_at
            .checked_sub(left)
            .unwrap_or(token.issued_at)
            .max(token.issued_at)
    }

    /// Whether a token may be handed out at `now`.
    pub fn servable(&self, token: &Token, now: SystemTime) -> bool {
        token.remaining(now) >= self.min_remaining && !token.remaining(now).is_zero()
    }
}

/// A failure answered from memory, and for how long.
struct Remembered<E: std::error::Error + 'static> {
    error: CacheError<E>,
    ttl: Duration,
}

impl<E: std::error::Error + 'static> Clone for Remembered<E> {
    fn clone(&self) -> Self {
        Remembered {
            error: self.error.clone(),
            ttl: self.ttl,
        }
    }
}

struct RememberFor;

impl<E: std::error::Error + 'static> moka::Expiry<CacheKey, Remembered<E>> for RememberFor {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Remembered<E>,
        _created: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

struct Slot {
    token: RwLock<Token>,
    /// Held while fetching a successor, so only one fetch per slot runs at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Milliseconds since `epoch` at the last caller's request.
    last_used_ms: AtomicU64,
    /// Milliseconds since `epoch` at the last replacement of a rejected token, plus one (0: never).
    rejected_ms: AtomicU64,
    epoch: Instant,
    stop: CancellationToken,
}

impl Slot {
    fn current(&self) -> Token {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn replace(&self, token: Token) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }
    fn touch(&self) {
        self.last_used_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// Whether a rejected token was replaced less than `within` ago.
    fn rejected_within(&self, within: Duration) -> bool {
        let last = self.rejected_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        last != 0 && now.saturating_sub(last) < within.as_millis() as u64
    }
    fn note_rejection(&self) {
        self.rejected_ms.store(
            self.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }
    fn idle_for(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(
            self.last_used_ms.load(Ordering::Relaxed),
        ))
    }
}

struct Inner<S: TokenSource> {
    slots: moka::future::Cache<CacheKey, Arc<Slot>>,
    refusals: moka::future::Cache<CacheKey, Remembered<S::Error>>,
    source: S,
    policy: Policy,
    clock: Arc<Clock>,
    shutdown: CancellationToken,
}

/// The shared token cache. Cheap to clone.
pub struct TokenCache<S: TokenSource> {
    inner: Arc<Inner<S>>,
}

impl<S: TokenSource> Clone for TokenCache<S> {
    fn clone(&self) -> Self {
        TokenCache {
            inner: self.inner.clone(),
        }
    }
}

impl<S: TokenSource> TokenCache<S> {
    pub fn new(source: S, policy: Policy, clock: Arc<Clock>) -> Self {
        let slots = moka::future::Cache::builder()
            .time_to_idle(policy.idle)
            .eviction_listener(|_key, slot: Arc<Slot>, _cause| slot.stop.cancel())
            .build();
        let refusals = moka::future::Cache::builder()
            .expire_after(RememberFor)
            .build();
        TokenCache {
            inner: Arc::new(Inner {
                slots,
                refusals,
                source,
                policy,
                clock,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// A servable token for `key`, from the cache or, if there is none, from the source.
    /// The cached token for `key` if it is servable now: the hit path, which never waits.
    pub async fn get_servable(&self, key: &CacheKey) -> Option<Token> {
        let slot = self.inner.slots.get(key).await?;
        self.servable_in(&slot)
    }

    /// A caller uses `slot`: note it (idle tracking) and return its token if it may be served.
    fn servable_in(&self, slot: &Slot) -> Option<Token> {
        slot.touch();
        let token = slot.current();
        self.inner
            .policy
            .servable(&token, self.inner.clock.now())
            .then_some(token)
    }

    pub async fn get(&self, key: &CacheKey) -> Result<(Token, Outcome), CacheError<S::Error>> {
        let inner = &self.inner;
        if let Some(slot) = inner.slots.get(key).await {
            if let Some(token) = self.servable_in(&slot) {
                tracing::debug!(profile = %key.profile, "cache hit");
                return Ok((token, Outcome::Hit));
            }
            return self
                .refresh_now(key, &slot, None)
                .await
                .map(|t| (t, Outcome::Miss));
        }
        if let Some(refusal) = inner.refusals.get(key).await {
            tracing::debug!(profile = %key.profile, "remembered failure");
            return Err(refusal.error);
        }
        let this = self.clone();
        let entry = inner
            .slots
            .entry(key.clone())
            .or_try_insert_with(async move {
                let token = this.fetch(key).await?;
                let slot = Arc::new(Slot {
                    token: RwLock::new(token),
                    refreshing: tokio::sync::Mutex::new(()),
                    last_used_ms: AtomicU64::new(0),
                    rejected_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                    stop: this.inner.shutdown.child_token(),
                });
                this.spawn_refresher(key.clone(), &slot);
                Ok::<_, CacheError<S::Error>>(slot)
            })
            .await
            .map_err(|e| e.as_ref().clone())?;
        let outcome = if entry.is_fresh() {
            Outcome::Miss
        } else {
            Outcome::Hit
        };
        let slot = entry.into_value();
        match self.servable_in(&slot) {
            Some(token) => Ok((token, outcome)),
            None => self
                .refresh_now(key, &slot, None)
                .await
                .map(|t| (t, Outcome::Miss)),
        }
    }

    /// The upstream refused `rejected` (revoked before its expiry): replace it with a fresh token.
    /// Callers reporting the same rejected token share one fetch; one that reports a token already
    /// replaced gets the replacement. At most one replacement per key every [`REFUSAL_MEMORY`]:
    /// within it the rejected token itself comes back, so a caller can tell nothing changed.
    pub async fn invalidate(
        &self,
        key: &CacheKey,
        rejected: &Token,
    ) -> Result<Token, CacheError<S::Error>> {
        match self.inner.slots.get(key).await {
            Some(slot) => self.refresh_now(key, &slot, Some(rejected)).await,
            None => self.get(key).await.map(|(token, _)| token),
        }
    }

    /// A fresh token for `key` whatever is cached (a caller's `skip_cache`); it replaces the
    /// cached one. Fetches for one key run one at a time.
    pub async fn refetch(&self, key: &CacheKey) -> Result<Token, CacheError<S::Error>> {
        let Some(slot) = self.inner.slots.get(key).await else {
            return self.get(key).await.map(|(token, _)| token);
        };
        let _guard = slot.refreshing.lock().await;
        slot.touch();
        let token = self.fetch(key).await?;
        slot.replace(token.clone());
        Ok(token)
    }

    /// Stop all background refreshes.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Cached tokens and their remaining lifetime, for metrics and readiness.
    pub fn snapshot(&self) -> Vec<(CacheKey, Duration)> {
        let now = self.inner.clock.now();
        self.inner
            .slots
            .iter()
            .map(|(k, slot)| ((*k).clone(), slot.current().remaining(now)))
            .collect()
    }

    /// Fetch from the source, checking the token is worth caching and remembering refusals.
    async fn fetch(&self, key: &CacheKey) -> Result<Token, CacheError<S::Error>> {
        let inner = &self.inner;
        match inner.source.fetch(key).await {
            Ok(token) => {
                let lifetime = token.remaining(inner.clock.now());
                if !inner.policy.servable(&token, inner.clock.now()) {
                    return Err(CacheError::TooShortLived {
                        lifetime,
                        min_remaining: inner.policy.min_remaining,
                    });
                }
                inner.refusals.invalidate(key).await;
                Ok(token)
            }
            Err(e) => {
                let ttl = if S::is_permanent(&e) {
                    REFUSAL_MEMORY
                } else {
                    OUTAGE_MEMORY
                };
                let err = CacheError::Source(Arc::new(e));
                let remembered = Remembered {
                    error: err.clone(),
                    ttl,
                };
                inner.refusals.insert(key.clone(), remembered).await;
                Err(err)
            }
        }
    }

    /// The caller's path when the slot's token is too old (or was `rejected` upstream): one fetch
    /// per slot, others wait for it.
    async fn refresh_now(
        &self,
        key: &CacheKey,
        slot: &Slot,
        rejected: Option<&Token>,
    ) -> Result<Token, CacheError<S::Error>> {
        let _guard = slot.refreshing.lock().await;
        let current = slot.current();
        // A token rejected again within REFUSAL_MEMORY of the last replacement stays: the
        // upstream refuses fresh tokens too, and each rejection must not cost a fetch.
        let still_rejected = rejected.is_some_and(|r| r.value == current.value)
            && !slot.rejected_within(REFUSAL_MEMORY);
        if !still_rejected && self.inner.policy.servable(&current, self.inner.clock.now()) {
            return Ok(current);
        }
        if let Some(refusal) = self.inner.refusals.get(key).await {
            return Err(refusal.error);
        }
        let token = self.fetch(key).await?;
        if still_rejected {
            slot.note_rejection();
        }
        slot.replace(token.clone());
        Ok(token)
    }

    fn spawn_refresher(&self, key: CacheKey, slot: &Arc<Slot>) {
        let weak: Weak<Slot> = Arc::downgrade(slot);
        let stop = slot.stop.clone();
        let cache = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = cache.refresh_loop(key, weak) => {}
            }
        });
    }

    /// The background task of one slot: sleep until the refresh point, fetch, repeat.
    async fn refresh_loop(&self, key: CacheKey, weak: Weak<Slot>) {
        let inner = &self.inner;
        let mut failures: u32 = 0;
        loop {
            let Some(slot) = weak.upgrade() else { return };
            let wait = if failures == 0 {
                let at = inner.policy.refresh_at(&slot.current());
                at.duration_since(inner.clock.now()).unwrap_or_default()
            } else {
                backoff(failures)
            };
            drop(slot);
            tokio::time::sleep(wait).await;
            let Some(slot) = weak.upgrade() else { return };
            if slot.idle_for() >= inner.policy.idle {
                tracing::debug!(profile = %key.profile, "idle entry dropped");
                inner.slots.invalidate(&key).await;
                return;
            }
            let _guard = slot.refreshing.lock().await;
            if failures == 0 && inner.policy.refresh_at(&slot.current()) > inner.clock.now() {
                continue; // a caller refreshed it meanwhile
            }
            match self.fetch(&key).await {
                Ok(token) => {
                    tracing::info!(profile = %key.profile, org = ?key.org.as_ref().map(|o| o.as_str()), "token refreshed in the background");
                    slot.replace(token);
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    crate::meters::refresh_failure(key.profile.as_str());
                    tracing::warn!(profile = %key.profile, error = %crate::telemetry::Chain(&e), failures, "background refresh failed; the cached token is served while it lasts");
                }
            }
        }
    }
}

/// Exponential backoff with full jitter: a random wait up to 1 s, 2 s, 4 s, ... capped at 30 s.
fn backoff(failures: u32) -> Duration {
    let ceiling =
        Duration::from_secs(1u64 << failures.min(5).saturating_sub(1)).min(MAX_REFRESH_BACKOFF);
    ceiling
        .mul_f64(rand::random::<f64>())
        .max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::sync::atomic::AtomicUsize;

    fn token(lifetime: Duration) -> Token {
        let now = SystemTime::now();
        Token {
            value: Secret::new(format!("t-{}", rand::random::<u64>())),
            issued_at: now,
            expires_at: now + lifetime,
            scope: "s".into(),
        }
    }

    fn policy() -> Policy {
        Policy {
            refresh_when_left: 1.0 / 3.0,
            refresh_floor: Duration::from_secs(5),
            min_remaining: Duration::from_secs(10),
            idle: Duration::from_secs(600),
        }
    }

    #[test]
    fn refreshes_when_a_third_is_left() {
        let t = token(Duration::from_secs(120));
        let at = policy().refresh_at(&t);
        assert_eq!(
            t.expires_at.duration_since(at).unwrap(),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn short_tokens_refresh_before_min_remaining() {
        let t = token(Duration::from_secs(20));
        let left = t
            .expires_at
            .duration_since(policy().refresh_at(&t))
            .unwrap();
        assert_eq!(left, Duration::from_secs(15));
        assert!(left > policy().min_remaining);
    }

    #[test]
    fn tokens_below_min_remaining_are_not_servable() {
        let p = policy();
        let t = token(Duration::from_secs(60));
        assert!(p.servable(&t, SystemTime::now()));
        assert!(!p.servable(&t, SystemTime::now() + Duration::from_secs(51)));
        assert!(!p.servable(&t, SystemTime::now() + Duration::from_secs(61)));
    }

    #[test]
    fn backoff_is_bounded() {
        for n in 1..100 {
            assert!(backoff(n) <= MAX_REFRESH_BACKOFF);
        }
    }

    struct Counting {
        calls: AtomicUsize,
        lifetime: Duration,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    impl TokenSource for Counting {
        type Error = Refused;
        async fn fetch(&self, _key: &CacheKey) -> Result<Token, Refused> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(token(self.lifetime))
        }
        fn is_permanent(_: &Refused) -> bool {
            true
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            profile: ProfileName::new("altinn"),
            org: None,
            on_demand: None,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_then_hit() {
        let cache = TokenCache::new(
            Counting {
                calls: AtomicUsize::new(0),
                lifetime: Duration::from_secs(120),
            },
            policy(),
            Arc::new(Clock::default()),
        );
        let results = futures_join(&cache, 20).await;
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 1);
        let first = results[0].0.value.clone();
        assert!(results.iter().all(|(t, _)| t.value == first));
        assert_eq!(
            results.iter().filter(|(_, o)| *o == Outcome::Miss).count(),
            1
        );
        let (_, again) = cache.get(&key()).await.unwrap();
        assert_eq!(again, Outcome::Hit);
    }

    async fn futures_join(cache: &TokenCache<Counting>, n: usize) -> Vec<(Token, Outcome)> {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get(&key()).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_rejected_token_is_replaced_once_however_many_report_it() {
        let cache = TokenCache::new(
            Counting {
                calls: AtomicUsize::new(0),
                lifetime: Duration::from_secs(120),
            },
            policy(),
            Arc::new(Clock::default()),
        );
        let (first, _) = cache.get(&key()).await.unwrap();
        let reports: Vec<_> = (0..5)
            .map(|_| {
                let (c, first) = (cache.clone(), first.clone());
                tokio::spawn(async move { c.invalidate(&key(), &first).await.unwrap() })
            })
            .collect();
        let mut fresh = Vec::new();
        for r in reports {
            fresh.push(r.await.unwrap());
        }
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 2);
        assert!(
            fresh
                .iter()
                .all(|t| t.value == fresh[0].value && t.value != first.value)
        );
        assert_eq!(cache.get(&key()).await.unwrap().0.value, fresh[0].value);
        // Rejected again at once: the upstream refuses fresh tokens too; no more fetches.
        let again = cache.invalidate(&key(), &fresh[0]).await.unwrap();
        assert_eq!(again.value, fresh[0].value);
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_shorter_than_min_remaining_is_refused() {
        let cache = TokenCache::new(
            Counting {
                calls: AtomicUsize::new(0),
                lifetime: Duration::from_secs(5),
            },
            policy(),
            Arc::new(Clock::default()),
        );
        let err = cache.get(&key()).await.unwrap_err();
        assert!(matches!(err, CacheError::TooShortLived { .. }), "{err}");
    }
}
