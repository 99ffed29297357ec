//! The token cache: one slot per (profile, organisation), filled once, refreshed ahead of expiry
//! while it is in use, bounded in entries and in what it asks of the upstreams.
//!
//! - **Coalescing.** Concurrent requests for a missing key share one upstream call (moka's
//!   `or_try_insert_with`); a slot whose token got too old is refreshed under the slot's own lock,
//!   so again only one caller goes upstream.
//! - **Refresh ahead, only what is in use.** Each slot owns a background task that refreshes the
//!   token once only `refresh_when_left` of its lifetime is left (never later than
//!   `refresh_floor` and `min_remaining` before expiry), but only if a caller asked for the key
//!   since the token was fetched or the last refresh was tried. Otherwise the task waits for such a
//!   caller until the token stops being servable, and then the slot lapses: a key asked for once
//!   is fetched once, and once every caller stops, upstream calls stop within one token lifetime.
//! - **Bounded.** At most `max_entries` slots (moka with a plain LRU policy, so a new key is always
//!   admitted and answered from its slot, the least recently used one goes). Refusals are
//!   remembered in a map of the same bound. Fetches go through the [`FetchBudget`].
//! - **Hits without bookkeeping.** A read-mostly index of the slots (papaya: reads take no lock
//!   and write no shared memory) answers the hit path without moka's per-read bookkeeping. moka
//!   still owns the slots, eviction and idle time: each slot's use is reported to it at most once
//!   a second (by reading it from moka), and every slot moka evicts leaves the index.
//! - **Never stale.** A token with less than `min_remaining` left is not served, an expired one
//!   never; the caller then waits for a fresh one or gets the error.
//! - **Refusals are remembered.** A permanent refusal is returned from memory for
//!   [`REFUSAL_MEMORY`], so a crowd of callers cannot hammer Maskinporten with a broken grant.
//! - **Rejected tokens are replaced.** A token an API refused before its expiry (the proxy's
//!   401) is replaced once by [`TokenCache::invalidate`], at most once per key per
//!   [`REFUSAL_MEMORY`].
//!
//! The cache knows nothing of HTTP, grants or upstreams: it asks a [`TokenSource`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::CacheSettings;
use crate::policy::on_demand::OnDemandRequest;
use crate::policy::org::OrgNumber;
use crate::policy::profile::{ClientName, ProfileName};
use crate::tokens::budget::{ClientBudget, FetchBudget, MAX_RETRY_AFTER, OverBudget};
use crate::tokens::token::{Token, rfc3339};
use crate::upstream::clock::Clock;

/// How long a permanent refusal is answered from memory.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(5);
/// How long a transient failure is answered from memory: long enough that a crowd of callers
/// queued behind one failed fetch does not repeat it one by one, short enough to recover fast.
pub const OUTAGE_MEMORY: Duration = Duration::from_secs(1);
/// Longest pause between background refresh attempts of one key while the upstream fails.
pub const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);
/// How often at most a slot's use is reported to moka (its LRU order and idle time): the
/// index answers the hits in between.
const REPORT_USE_EVERY_SECS: u64 = 1;

/// What a cached token is for: a configured profile, or an on-demand request (then `profile` is
/// [`crate::policy::profile::ON_DEMAND`]), the Maskinporten client that signs its grants, and the
/// system user's organisation. Built only by `broker.rs` (`resolve`, `resolve_on_demand`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The same profile and org through two Maskinporten clients are two tokens.
    pub client: ClientName,
    pub profile: ProfileName,
    pub org: Option<OrgNumber>,
    /// The normalised on-demand request; `None` for a profile.
    pub on_demand: Option<Arc<OnDemandRequest>>,
    /// A consent token's consent and scope (then `profile` is
    /// [`crate::policy::consent::CONSENT_TOKEN`]); `None` otherwise.
    pub consent: Option<Arc<crate::policy::consent::ConsentToken>>,
}

/// Who a fetch is for: a caller waiting for it, or the background refresh of a token in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Caller,
    Background,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Caller => "caller",
            Purpose::Background => "background",
        }
    }
}

/// Where fresh tokens come from.
pub trait TokenSource: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    fn fetch(
        &self,
        key: &CacheKey,
        purpose: Purpose,
    ) -> impl Future<Output = Result<Token, Self::Error>> + Send;

    /// Held while a background fetch runs: the source's own admission of background work (the
    /// upstreams' breakers), taken before the fetch queues for a place among the running ones.
    type Gate<'a>: Send
    where
        Self: 'a;

    /// Wait until a background fetch for `key` may go.
    fn admit_background<'a>(
        &'a self,
        key: &CacheKey,
    ) -> impl Future<Output = Self::Gate<'a>> + Send + 'a;

    /// Whether this failure will repeat if asked again at once (a refusal, not an outage).
    fn is_permanent(error: &Self::Error) -> bool;

    /// How long the upstream asked to be left alone after this failure.
    fn retry_after(error: &Self::Error) -> Option<Duration>;
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
    #[error(transparent)]
    OverBudget(OverBudget),
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
            CacheError::OverBudget(o) => CacheError::OverBudget(o.clone()),
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
    /// Up to this fraction of the lifetime earlier, at random ([`Policy::refresh_at_jittered`]).
    pub refresh_jitter: f64,
    pub refresh_floor: Duration,
    pub min_remaining: Duration,
    pub idle: Duration,
    pub max_entries: u64,
}

impl From<&CacheSettings> for Policy {
    fn from(s: &CacheSettings) -> Self {
        Policy {
            refresh_when_left: s.refresh_when_left,
            refresh_jitter: s.refresh_jitter,
            refresh_floor: s.refresh_floor,
            min_remaining: s.min_remaining,
            idle: s.idle,
            max_entries: s.max_entries,
        }
    }
}

impl Policy {
    /// When the background task should fetch this token's successor: once `refresh_when_left` of
    /// the lifetime is left, but at least `refresh_floor` before the token stops being servable.
    pub fn refresh_at(&self, token: &Token) -> SystemTime {
        let lifetime = token.lifetime();
        let share = Duration::try_from_secs_f64(lifetime.as_secs_f64() * self.refresh_when_left)
            .unwrap_or(lifetime);
        let left = share.max(self.min_remaining.saturating_add(self.refresh_floor));
        token
            .expires_at
            .checked_sub(left)
            .unwrap_or(token.issued_at)
            .max(token.issued_at)
    }

    /// [`Policy::refresh_at`] moved earlier by `draw` (in `[0, 1)`, uniform at random in the
    /// refresher) times `refresh_jitter` of the lifetime, never before the token was issued.
    /// Replicas that fetched the same token at the same moment then refresh at different ones,
    /// spread over `refresh_jitter` of the lifetime; never later, so never nearer expiry.
    pub fn refresh_at_jittered(&self, token: &Token, draw: f64) -> SystemTime {
        let at = self.refresh_at(token);
        let share = (self.refresh_jitter * draw.clamp(0.0, 1.0)).clamp(0.0, 1.0);
        let earlier =
            Duration::try_from_secs_f64(token.lifetime().as_secs_f64() * share).unwrap_or_default();
        at.checked_sub(earlier)
            .unwrap_or(token.issued_at)
            .max(token.issued_at)
    }

    /// When this token stops being servable (`min_remaining` before expiry).
    pub fn unservable_at(&self, token: &Token) -> SystemTime {
        token
            .expires_at
            .checked_sub(self.min_remaining)
            .unwrap_or(token.issued_at)
    }

    /// Whether a token may be handed out at `now`.
    pub fn servable(&self, token: &Token, now: SystemTime) -> bool {
        let remaining = token.remaining(now);
        remaining >= self.min_remaining && !remaining.is_zero()
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
    token: ArcSwap<Token>,
    /// Held while fetching a successor, so only one fetch per slot runs at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// A caller asked for this key since the token was fetched or a refresh was last tried.
    asked: AtomicBool,
    /// Wakes the background task waiting for a caller to ask.
    wake: Notify,
    /// Milliseconds since `epoch` at the last replacement of a rejected token, plus one (0: never).
    rejected_ms: AtomicU64,
    epoch: Instant,
    stop: CancellationToken,
    /// Set once moka has evicted the slot: the index no longer answers with it.
    evicted: AtomicBool,
    /// The Unix second of the last use reported to moka.
    reported: AtomicU64,
}

impl Slot {
    fn new(token: Arc<Token>, stop: CancellationToken) -> Self {
        Slot {
            token: ArcSwap::new(token),
            refreshing: tokio::sync::Mutex::new(()),
            asked: AtomicBool::new(false),
            wake: Notify::new(),
            rejected_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            stop,
            evicted: AtomicBool::new(false),
            reported: AtomicU64::new(0),
        }
    }
    /// moka let go of the slot: stop its refresher, keep the index from answering with it.
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }
    /// Whether this use at `now` is the first of its reporting period: moka is to be told.
    fn report_due(&self, now: SystemTime) -> bool {
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / REPORT_USE_EVERY_SECS);
        self.reported.load(Ordering::Relaxed) != second
            && self.reported.swap(second, Ordering::Relaxed) != second
    }
    fn current(&self) -> Arc<Token> {
        self.token.load_full()
    }
    fn replace(&self, token: Arc<Token>) {
        self.token.store(token);
    }
    /// A caller asked: note it, and wake the background task the first time.
    fn touch(&self) {
        if !self.asked.load(Ordering::Relaxed) && !self.asked.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
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
}

/// The hit path's index of the slots moka holds.
type Index = papaya::HashMap<CacheKey, Arc<Slot>, foldhash::fast::RandomState>;

struct Inner<S: TokenSource> {
    slots: moka::future::Cache<CacheKey, Arc<Slot>>,
    /// Every slot of `slots` (and, for the moment between moka's eviction and its listener, one
    /// it just let go of, marked `evicted`). Written on insert and eviction only.
    index: Arc<Index>,
    refusals: moka::future::Cache<CacheKey, Remembered<S::Error>>,
    source: S,
    policy: Policy,
    budget: FetchBudget,
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
    pub fn new(source: S, policy: Policy, budget: FetchBudget, clock: Arc<Clock>) -> Self {
        let index = Arc::new(Index::default());
        let evicted_from = index.clone();
        let slots = moka::future::Cache::builder()
            .max_capacity(policy.max_entries)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_idle(policy.idle)
            .eviction_listener(move |key: Arc<CacheKey>, slot: Arc<Slot>, _cause| {
                slot.evict();
                unindex(&evicted_from, &key, &slot);
            })
            .build();
        let refusals = moka::future::Cache::builder()
            .max_capacity(policy.max_entries)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .expire_after(RememberFor)
            .build();
        TokenCache {
            inner: Arc::new(Inner {
                slots,
                index,
                refusals,
                source,
                policy,
                budget,
                clock,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// The hit path, which never waits: the servable token for `key` from the index. `None`
    /// when the index cannot tell (no such key, or the slot's use is due to be reported to
    /// moka): [`TokenCache::get_servable`] then asks moka.
    /// `now` is the cache's clock, read by the caller (which answers with the same instant).
    pub fn peek(&self, key: &CacheKey, now: SystemTime) -> Option<Arc<Token>> {
        let index = self.inner.index.pin();
        let slot = index.get(key)?;
        if slot.evicted.load(Ordering::SeqCst) || slot.report_due(now) {
            return None;
        }
        self.servable_from(slot, now)
    }

    /// The cached token for `key` if it is servable now: [`TokenCache::peek`], else from moka
    /// (boxed: rarely needed).
    pub async fn get_servable(&self, key: &CacheKey) -> Option<Arc<Token>> {
        if let Some(token) = self.peek(key, self.inner.clock.now()) {
            return Some(token);
        }
        let slot = Box::pin(self.slot_from_moka(key)).await?;
        self.servable_from(&slot, self.inner.clock.now())
    }

    /// The slot's token if it is servable at `now`; the slot counts as asked for.
    fn servable_from(&self, slot: &Slot, now: SystemTime) -> Option<Arc<Token>> {
        let token = slot.current();
        if !self.inner.policy.servable(&token, now) {
            return None;
        }
        slot.touch();
        Some(token)
    }

    /// The slot of `key` as moka has it (a read moka counts), indexed.
    async fn slot_from_moka(&self, key: &CacheKey) -> Option<Arc<Slot>> {
        let slot = self.inner.slots.get(key).await?;
        self.index(key, &slot);
        Some(slot)
    }

    /// Put `slot` in the index, unless moka has evicted it meanwhile. The eviction listener
    /// marks the slot before it unindexes it, and this looks at the mark after indexing, so
    /// either one of them takes the slot out: the index never keeps an evicted slot.
    fn index(&self, key: &CacheKey, slot: &Arc<Slot>) {
        let index = &self.inner.index;
        index.pin().insert(key.clone(), slot.clone());
        if slot.evicted.load(Ordering::SeqCst) {
            unindex(index, key, slot);
        }
    }

    /// A servable token for `key`, from the cache or, if there is none, from the source. A fetch
    /// this call starts is paid from `client`'s budget (if any) and the global one.
    pub async fn get(
        &self,
        key: &CacheKey,
        client: Option<&ClientBudget>,
    ) -> Result<(Arc<Token>, Outcome), CacheError<S::Error>> {
        let inner = &self.inner;
        if let Some(token) = self.get_servable(key).await {
            tracing::debug!(profile = %key.profile, "cache hit");
            return Ok((token, Outcome::Hit));
        }
        if let Some(slot) = inner.slots.get(key).await {
            return self
                .refresh_now(key, &slot, client, None)
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
                let token = this.fetch(key, client).await?;
                let slot = Arc::new(Slot::new(token, this.inner.shutdown.child_token()));
                this.spawn_refresher(key.clone(), &slot);
                Ok::<_, CacheError<S::Error>>(slot)
            })
            .await
            .map_err(|e| e.as_ref().clone())?;
        let outcome = if entry.is_fresh() {
            // A new entry may take the cache past max_entries: evict now, not at moka's leisure,
            // so what the cache holds (and /metrics lists) stays within the bound.
            inner.slots.run_pending_tasks().await;
            Outcome::Miss
        } else {
            Outcome::Hit
        };
        // Callers who waited for this fetch do not count as asking again after it.
        let slot = entry.into_value();
        self.index(key, &slot);
        let token = slot.current();
        if inner.policy.servable(&token, inner.clock.now()) {
            return Ok((token, outcome));
        }
        self.refresh_now(key, &slot, client, None)
            .await
            .map(|t| (t, Outcome::Miss))
    }

    /// The upstream refused `rejected` (revoked before its expiry): replace it with a fresh token.
    /// Callers reporting the same rejected token share one fetch; one that reports a token already
    /// replaced gets the replacement. At most one replacement per key every [`REFUSAL_MEMORY`]:
    /// within it the rejected token itself comes back, so a caller can tell nothing changed.
    pub async fn invalidate(
        &self,
        key: &CacheKey,
        rejected: &Token,
        client: Option<&ClientBudget>,
    ) -> Result<Arc<Token>, CacheError<S::Error>> {
        match self.inner.slots.get(key).await {
            Some(slot) => self.refresh_now(key, &slot, client, Some(rejected)).await,
            None => self.get(key, client).await.map(|(token, _)| token),
        }
    }

    /// A fresh token for `key` whatever is cached (a caller's `skip_cache`); it replaces the
    /// cached one. Fetches for one key run one at a time, each paid from the fetch budget.
    pub async fn refetch(
        &self,
        key: &CacheKey,
        client: Option<&ClientBudget>,
    ) -> Result<Arc<Token>, CacheError<S::Error>> {
        let Some(slot) = self.inner.slots.get(key).await else {
            return self.get(key, client).await.map(|(token, _)| token);
        };
        let _guard = slot.refreshing.lock().await;
        slot.touch();
        let token = self.fetch(key, client).await?;
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

    /// A caller's fetch: paid from `client`'s budget (if any) and the global one, or refused.
    async fn fetch(
        &self,
        key: &CacheKey,
        client: Option<&ClientBudget>,
    ) -> Result<Arc<Token>, CacheError<S::Error>> {
        self.inner
            .budget
            .admit_caller(client)
            .map_err(CacheError::OverBudget)?;
        self.fetch_admitted(key, Purpose::Caller).await
    }

    /// Fetch from the source among the running fetches, check the token is worth caching,
    /// remember failures.
    async fn fetch_admitted(
        &self,
        key: &CacheKey,
        purpose: Purpose,
    ) -> Result<Arc<Token>, CacheError<S::Error>> {
        let inner = &self.inner;
        let running = inner.budget.running().await;
        // Boxed: the source's future is large, and a slot's idle task should not carry its space.
        let fetched = Box::pin(inner.source.fetch(key, purpose)).await;
        drop(running);
        match fetched {
            Ok(token) => {
                let now = inner.clock.now();
                if !inner.policy.servable(&token, now) {
                    return Err(CacheError::TooShortLived {
                        lifetime: token.remaining(now),
                        min_remaining: inner.policy.min_remaining,
                    });
                }
                tracing::info!(
                    profile = %key.profile,
                    org = key.org.as_ref().map(|o| o.as_str()),
                    purpose = purpose.as_str(),
                    expires_at = %rfc3339(token.expires_at),
                    fingerprint = %token.value.fingerprint(),
                    "token fetched"
                );
                inner.refusals.invalidate(key).await;
                Ok(Arc::new(token))
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
        client: Option<&ClientBudget>,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, CacheError<S::Error>> {
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
        let token = self.fetch(key, client).await?;
        if still_rejected {
            slot.note_rejection();
        }
        slot.replace(token.clone());
        Ok(token)
    }

    fn spawn_refresher(&self, key: CacheKey, slot: &Arc<Slot>) {
        let weak = Arc::downgrade(slot);
        let stop = slot.stop.clone();
        let cache = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = cache.refresh_loop(key, weak) => {}
            }
        });
    }

    /// Time from now until `at` (zero if past).
    fn until(&self, at: SystemTime) -> Duration {
        at.duration_since(self.inner.clock.now())
            .unwrap_or_default()
    }

    /// Whether a caller asks for the slot's key before `token` stops being servable.
    async fn asked_before_lapse(&self, slot: &Slot, token: &Token) -> bool {
        let lapse = tokio::time::sleep(self.until(self.inner.policy.unservable_at(token)));
        tokio::pin!(lapse);
        loop {
            let woken = slot.wake.notified();
            if slot.asked.load(Ordering::Acquire) {
                return true;
            }
            tokio::select! {
                _ = woken => {}
                _ = &mut lapse => return slot.asked.load(Ordering::Acquire),
            }
        }
    }

    /// The background task of one slot: sleep until the refresh point; if the key is in use,
    /// fetch; repeat. Ends (and drops the slot) when the key is no longer asked for.
    async fn refresh_loop(&self, key: CacheKey, weak: std::sync::Weak<Slot>) {
        let inner = &self.inner;
        let mut failures: u32 = 0;
        let mut retry_after: Option<Duration> = None;
        loop {
            let Some(slot) = weak.upgrade() else { return };
            let token = slot.current();
            drop(slot);
            let wait = if failures == 0 {
                self.until(
                    inner
                        .policy
                        .refresh_at_jittered(&token, rand::random::<f64>()),
                )
            } else {
                let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                backoff(failures).max(asked)
            };
            tokio::time::sleep(wait).await;
            let Some(slot) = weak.upgrade() else { return };
            if !Arc::ptr_eq(&slot.current(), &token) {
                failures = 0; // a caller refreshed it meanwhile
                continue;
            }
            if !Box::pin(self.asked_before_lapse(&slot, &token)).await {
                tracing::debug!(profile = %key.profile, "no caller asked for this token again; it lapses");
                Box::pin(inner.slots.invalidate(&key)).await;
                return;
            }
            // Admission first (the upstreams' breakers, the global budget), then the slot's lock:
            // a caller needing this slot's token never waits behind a breaker.
            // (The rarer awaits are boxed: an idle slot's task then holds little more than its
            // timer, which matters at max_entries of them.)
            let gate = Box::pin(inner.source.admit_background(&key)).await;
            Box::pin(inner.budget.admit_background()).await;
            let _guard = Box::pin(slot.refreshing.lock()).await;
            if !Arc::ptr_eq(&slot.current(), &token) {
                failures = 0;
                continue;
            }
            slot.asked.store(false, Ordering::Release);
            let fetched = Box::pin(self.fetch_admitted(&key, Purpose::Background)).await;
            drop(gate);
            match fetched {
                Ok(token) => {
                    slot.replace(token);
                    failures = 0;
                    retry_after = None;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    retry_after = match &e {
                        CacheError::Source(source) => S::retry_after(source),
                        _ => None,
                    };
                    crate::telemetry::meters::refresh_failure(key.profile.as_str());
                    tracing::warn!(profile = %key.profile, error = %crate::telemetry::Chain(&e), failures, "background refresh failed; the cached token is served while it lasts");
                }
            }
        }
    }
}

/// Take `slot` out of the index, if the index still has this one for `key`.
fn unindex(index: &Index, key: &CacheKey, slot: &Arc<Slot>) {
    let _ = index
        .pin()
        .remove_if(key, |_, indexed| Arc::ptr_eq(indexed, slot));
}

/// Exponential backoff with full jitter: a random wait up to 1 s, 2 s, 4 s, ... capped at 30 s.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(5);
    let ceiling = Duration::from_secs(1u64 << exponent).min(MAX_REFRESH_BACKOFF);
    ceiling
        .mul_f64(rand::random::<f64>())
        .max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::secret::Secret;
    use std::sync::atomic::AtomicUsize;

    fn token(lifetime: Duration) -> Token {
        let value = Secret::new(format!("t-{}", rand::random::<u64>()));
        Token::new(value, SystemTime::now(), lifetime, "s".into())
    }

    fn policy() -> Policy {
        Policy {
            refresh_when_left: 1.0 / 3.0,
            refresh_jitter: 0.0,
            refresh_floor: Duration::from_secs(5),
            min_remaining: Duration::from_secs(10),
            idle: Duration::from_secs(600),
            max_entries: 100,
        }
    }

    fn budget() -> FetchBudget {
        FetchBudget::new(std::num::NonZeroU32::new(1000).unwrap(), 16)
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
    fn jitter_moves_the_refresh_earlier_by_up_to_its_share_of_the_lifetime() {
        let t = token(Duration::from_secs(120));
        let p = Policy {
            refresh_jitter: 0.1,
            ..policy()
        };
        let left = |draw: f64| {
            t.expires_at
                .duration_since(p.refresh_at_jittered(&t, draw))
                .unwrap()
        };
        assert_eq!(left(0.0), Duration::from_secs(40));
        assert_eq!(left(0.5), Duration::from_secs(46));
        assert_eq!(left(0.999_999), Duration::from_micros(51_999_988));
        // Draws out of range are clamped; never later than without jitter, never before issue.
        assert_eq!(left(-1.0), Duration::from_secs(40));
        assert_eq!(left(7.0), Duration::from_secs(52));
        let absurd = Policy {
            refresh_jitter: f64::MAX,
            ..policy()
        };
        assert_eq!(absurd.refresh_at_jittered(&t, 1.0), t.issued_at);
        // Draws spread the moments: 1,000 draws cover the whole 12 s window.
        let moments: Vec<Duration> = (0..1_000).map(|_| left(rand::random())).collect();
        let (first, last) = (moments.iter().min().unwrap(), moments.iter().max().unwrap());
        assert!(*first < Duration::from_secs(41) && *last > Duration::from_secs(51));
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
    fn backoff_is_bounded_and_reaches_30_seconds() {
        for n in 1..100 {
            assert!(backoff(n) <= MAX_REFRESH_BACKOFF);
        }
        // Full jitter up to 30 s: the longest of 2000 draws is above 29 s unless the ceiling
        // is lower (a chance of (29/30)^2000, about 1e-29, otherwise).
        let longest = (0..2000).map(|_| backoff(10)).max().unwrap();
        assert!(longest > Duration::from_secs(29), "{longest:?}");
        // And each step doubles the ceiling until then: 1, 2, 4, 8, 16 s.
        for (failures, ceiling) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16)] {
            let longest = (0..2000).map(|_| backoff(failures)).max().unwrap();
            let ceiling = Duration::from_secs(ceiling);
            assert!(longest <= ceiling, "{failures}: {longest:?}");
            assert!(longest > ceiling.mul_f64(0.97), "{failures}: {longest:?}");
        }
    }

    #[test]
    fn refresh_points_of_absurd_tokens_do_not_panic() {
        let mut p = policy();
        p.min_remaining = Duration::MAX;
        p.refresh_floor = Duration::MAX;
        let t = token(Duration::MAX);
        let _ = p.refresh_at(&t);
        let _ = p.unservable_at(&t);
        p.refresh_when_left = f64::MAX;
        let _ = p.refresh_at(&t);
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
        async fn fetch(&self, _key: &CacheKey, _: Purpose) -> Result<Token, Refused> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(token(self.lifetime))
        }
        type Gate<'a> = ();
        fn admit_background<'a>(&'a self, _key: &CacheKey) -> impl Future<Output = ()> + Send + 'a {
            std::future::ready(())
        }
        fn is_permanent(_: &Refused) -> bool {
            true
        }
        fn retry_after(_: &Refused) -> Option<Duration> {
            None
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            profile: ProfileName::new("altinn"),
            org: None,
            on_demand: None,
            client: ClientName::default_client(),
            consent: None,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_then_hit() {
        let cache = counting(Duration::from_secs(120), policy());
        let results = futures_join(&cache, 20).await;
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 1);
        let first = results[0].0.value.clone();
        assert!(results.iter().all(|(t, _)| t.value == first));
        assert_eq!(
            results.iter().filter(|(_, o)| *o == Outcome::Miss).count(),
            1
        );
        let (_, again) = cache.get(&key(), None).await.unwrap();
        assert_eq!(again, Outcome::Hit);
    }

    async fn futures_join(cache: &TokenCache<Counting>, n: usize) -> Vec<(Arc<Token>, Outcome)> {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get(&key(), None).await.unwrap() })
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
        let cache = counting(Duration::from_secs(120), policy());
        let (first, _) = cache.get(&key(), None).await.unwrap();
        let reports: Vec<_> = (0..5)
            .map(|_| {
                let (c, first) = (cache.clone(), first.clone());
                tokio::spawn(async move { c.invalidate(&key(), &first, None).await.unwrap() })
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
        assert_eq!(
            cache.get(&key(), None).await.unwrap().0.value,
            fresh[0].value
        );
        // Rejected again at once: the upstream refuses fresh tokens too; no more fetches.
        let again = cache.invalidate(&key(), &fresh[0], None).await.unwrap();
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
            budget(),
            Arc::new(Clock::default()),
        );
        let err = cache.get(&key(), None).await.unwrap_err();
        assert!(matches!(err, CacheError::TooShortLived { .. }), "{err}");
    }

    fn short_lived() -> Policy {
        Policy {
            refresh_when_left: 1.0 / 3.0,
            refresh_jitter: 0.0,
            refresh_floor: Duration::from_millis(300),
            min_remaining: Duration::from_millis(500),
            idle: Duration::from_secs(600),
            max_entries: 100,
        }
    }

    fn counting(lifetime: Duration, policy: Policy) -> TokenCache<Counting> {
        TokenCache::new(
            Counting {
                calls: AtomicUsize::new(0),
                lifetime,
            },
            policy,
            budget(),
            Arc::new(Clock::default()),
        )
    }

    #[tokio::test]
    async fn a_key_asked_for_once_is_fetched_once_and_lapses() {
        let cache = counting(Duration::from_secs(2), short_lived());
        cache.get(&key(), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 1);
        assert!(cache.get_servable(&key()).await.is_none(), "lapsed");
        cache.inner.slots.run_pending_tasks().await;
        assert_eq!(cache.inner.index.len(), 0, "and left the index");
        cache.shutdown();
    }

    #[tokio::test]
    async fn hits_come_from_the_index_and_moka_hears_of_each_slot_once_a_second() {
        let cache = counting(Duration::from_secs(120), policy());
        cache.get(&key(), None).await.unwrap();
        let slot = cache
            .inner
            .index
            .pin()
            .get(&key())
            .cloned()
            .expect("indexed");
        let reported = || slot.reported.load(Ordering::Relaxed);
        assert!(cache.get_servable(&key()).await.is_some());
        let first = reported();
        assert_ne!(first, 0, "the first hit is reported to moka");
        for _ in 0..100 {
            assert!(cache.get_servable(&key()).await.is_some());
        }
        assert!(reported() - first <= 1, "not once per hit");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(cache.get_servable(&key()).await.is_some());
        assert!(reported() > first, "a hit in a later second is reported");
        // A slot moka let go of is not answered from the index, even before its listener ran.
        slot.evicted.store(true, Ordering::SeqCst);
        cache.inner.slots.invalidate(&key()).await;
        cache.inner.slots.run_pending_tasks().await;
        assert!(cache.inner.index.pin().get(&key()).is_none());
        assert!(cache.get_servable(&key()).await.is_none());
        cache.shutdown();
    }

    #[tokio::test]
    async fn a_key_in_use_is_refreshed_ahead_and_never_waits() {
        let cache = counting(Duration::from_secs(2), short_lived());
        cache.get(&key(), None).await.unwrap();
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (_, outcome) = cache.get(&key(), None).await.unwrap();
            assert_eq!(outcome, Outcome::Hit);
        }
        let calls = cache.source().calls.load(Ordering::SeqCst);
        assert!(
            (3..=5).contains(&calls),
            "{calls} fetches in 5 s of 2 s tokens"
        );
        cache.shutdown();
    }

    #[tokio::test]
    async fn a_key_asked_late_in_its_lifetime_is_refreshed_then() {
        let cache = counting(Duration::from_secs(3), short_lived());
        cache.get(&key(), None).await.unwrap();
        // Past the refresh point (2 s) but still servable (until 2.5 s).
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert!(cache.get_servable(&key()).await.is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 2);
        assert!(
            cache.get_servable(&key()).await.is_some(),
            "the successor is cached"
        );
        cache.shutdown();
    }

    #[tokio::test]
    async fn entries_are_bounded_and_a_new_key_is_always_cached() {
        let mut p = policy();
        p.max_entries = 3;
        let cache = counting(Duration::from_secs(120), p);
        // The i-th valid organisation number from 900000000 up (one per eight-digit prefix).
        let org = |i: usize| {
            (0..10)
                .map(|d| format!("{}{d}", 90_000_000 + i))
                .find_map(|s| s.parse::<OrgNumber>().ok())
        };
        let key_of = |i: usize| CacheKey {
            profile: ProfileName::new("skd"),
            org: org(i),
            on_demand: None,
            client: ClientName::default_client(),
            consent: None,
        };
        // Popular keys first, so frequency-based admission would refuse newcomers.
        for _ in 0..5 {
            for i in 0..3 {
                cache.get(&key_of(i), None).await.unwrap();
            }
        }
        let keys: Vec<_> = (3..60).map(key_of).filter(|k| k.org.is_some()).collect();
        for key in &keys {
            for _ in 0..5 {
                cache.get(key, None).await.unwrap();
            }
        }
        let fetched = cache.source().calls.load(Ordering::SeqCst);
        assert_eq!(fetched, 3 + keys.len(), "one fetch per key");
        cache.inner.slots.run_pending_tasks().await;
        assert!(cache.inner.slots.entry_count() <= 3);
        assert!(
            cache.inner.index.len() <= 3,
            "the index holds what moka holds: {}",
            cache.inner.index.len()
        );
        cache.shutdown();
    }

    #[tokio::test]
    async fn an_idle_slot_task_is_small() {
        // Every cached key has one such task; its rare steps are boxed so that it stays small.
        let cache = counting(Duration::from_secs(2), short_lived());
        let token = Arc::new(token(Duration::from_secs(2)));
        let slot = Arc::new(Slot::new(token, CancellationToken::new()));
        let task = cache.refresh_loop(key(), Arc::downgrade(&slot));
        assert!(
            std::mem::size_of_val(&task) < 1024,
            "{}",
            std::mem::size_of_val(&task)
        );
    }
}
