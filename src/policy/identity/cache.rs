//! A bounded cache of workload tokens that verified, so a caller sending the same token
//! thousands of times pays for its signature once (`identity.cache.max_entries`).
//!
//! - The key is the SHA-256 of the whole token; the value is who it identified ([`Verified`]),
//!   its `exp` and `nbf`, and the key (issuer's key set, `kid`, key) that verified it.
//! - An entry lives until the token's `exp`, and at most [`MAX_LIFETIME`]; the least recently
//!   used entry goes first once `max_entries` are held.
//! - On every hit the checks that change with time are made again, as [`super::jwt`] makes them
//!   (`exp` and `nbf` against the clock, with [`LEEWAY`]), and the key must still be the one the
//!   issuer's keys hold under that `kid`: a re-read that dropped or replaced it makes the entry a
//!   miss (and removes it), so the token is verified again, and refused.
//! - Only successes go in. A refused token is refused again, at full cost, every time: a flood
//!   of invalid tokens therefore cannot evict a valid one.
//!
//! It never holds the token itself, only its digest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Verified;
use super::jwks::{Key, KeySet};
use super::jwt::LEEWAY;

/// An entry lives at most this long, however far the token's `exp`.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// `identity.cache.max_entries` when not given.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// The largest `identity.cache.max_entries` accepted (an entry is a few hundred bytes).
pub const MOST_ENTRIES: u64 = 1_000_000;

/// `identity.cache` in broker.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// The most verified tokens held; 0 turns the cache off (every request verifies).
    pub max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl CacheSettings {
    /// Every problem, with its field path.
    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        if self.max_entries > MOST_ENTRIES {
            problems.push(format!(
                "identity.cache.max_entries: at most {MOST_ENTRIES} (0 turns the cache off), not {}",
                self.max_entries
            ));
        }
    }
}

/// What a successful verification showed, to be cached.
pub struct Seen {
    pub verified: Verified,
    /// The token's `exp` and `nbf`, in seconds since the epoch.
    pub exp: u64,
    pub nbf: Option<u64>,
    /// The key set, `kid` and key that verified the signature.
    pub keys: Arc<KeySet>,
    pub kid: String,
    pub key: Arc<Key>,
}

struct Entry {
    seen: Seen,
    /// How long this entry may live, fixed when it went in.
    lifetime: Duration,
}

/// Each entry's own lifetime ([`Entry::lifetime`]).
struct Lifetime;

impl moka::Expiry<[u8; 32], Arc<Entry>> for Lifetime {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _: &[u8; 32],
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

/// The cache; `None` inside when `max_entries` is 0.
pub struct VerifiedCache(Option<Cache<[u8; 32], Arc<Entry>>>);

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("on", &self.is_on())
            .finish_non_exhaustive()
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache::new(0)
    }
}

impl VerifiedCache {
    /// At most `max_entries` entries; 0: no cache.
    pub fn new(max_entries: u64) -> Self {
        VerifiedCache((max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(Lifetime)
                .build()
        }))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The key of `token`.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Who the token with this digest identified, if it verified before and is still valid at
    /// `now` (seconds since the epoch) with the key it verified with.
    pub fn get(&self, digest: &[u8; 32], now: u64) -> Option<Verified> {
        let cache = self.0.as_ref()?;
        let entry = cache.get(digest)?;
        let seen = &entry.seen;
        let in_time = seen.exp.saturating_add(LEEWAY) >= now
            && seen.nbf.is_none_or(|nbf| nbf <= now.saturating_add(LEEWAY));
        if !in_time || !seen.keys.holds(&seen.kid, &seen.key) {
            cache.invalidate(digest);
            return None;
        }
        Some(seen.verified.clone())
    }

    /// Remember a successful verification at `now`; one whose `exp` has passed is not kept.
    pub fn insert(&self, digest: [u8; 32], seen: Seen, now: u64) {
        let Some(cache) = &self.0 else { return };
        let left = seen.exp.saturating_sub(now);
        if left == 0 {
            return;
        }
        let lifetime = Duration::from_secs(left).min(MAX_LIFETIME);
        cache.insert(digest, Arc::new(Entry { seen, lifetime }));
    }

    /// Forget every entry (a reload).
    pub fn clear(&self) {
        if let Some(cache) = &self.0 {
            cache.invalidate_all();
        }
    }

    /// How many entries are held, after pending evictions.
    pub fn entry_count(&self) -> u64 {
        self.0.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::jwks::{Source, parse_jwks};

    /// A key set holding one RSA key under `kid` (never read over the network), and that key.
    fn key_set(kid: &str) -> (Arc<KeySet>, Arc<Key>) {
        let url = url::Url::parse("http://127.0.0.1:9/jwks").unwrap();
        let keys = KeySet::new("test", Source::Jwks(url), reqwest::Client::new(), None);
        let doc =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": kid, "n": "AQAB", "e": "AQAB"}]});
        keys.replace(parse_jwks(&doc).unwrap());
        let key = keys.key(kid).unwrap();
        (Arc::new(keys), key)
    }

    fn seen(keys: &(Arc<KeySet>, Arc<Key>), subject: &str, exp: u64, nbf: Option<u64>) -> Seen {
        Seen {
            verified: Verified {
                issuer: "kubernetes".into(),
                subject: subject.into(),
                principal: format!("kubernetes:{subject}"),
            },
            exp,
            nbf,
            keys: keys.0.clone(),
            kid: "k1".into(),
            key: keys.1.clone(),
        }
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn an_expired_token_is_refused_while_its_entry_is_held() {
        let cache = VerifiedCache::new(10);
        let keys = key_set("k1");
        let digest = VerifiedCache::digest("token");
        cache.insert(digest, seen(&keys, "a", NOW + 5, None), NOW);
        assert!(cache.get(&digest, NOW).is_some());
        // Within the leeway after exp: still served, as jwt.rs would accept it.
        assert!(cache.get(&digest, NOW + 5 + LEEWAY).is_some());
        // Past it: refused though moka's own clock has not expired the entry yet.
        assert!(cache.get(&digest, NOW + 6 + LEEWAY).is_none());
        assert!(cache.get(&digest, NOW).is_none(), "and removed");
    }

    #[test]
    fn a_token_not_yet_valid_is_refused_until_nbf_within_the_leeway() {
        let cache = VerifiedCache::new(10);
        let keys = key_set("k1");
        let digest = VerifiedCache::digest("token");
        cache.insert(digest, seen(&keys, "a", NOW + 300, Some(NOW + 100)), NOW);
        // The clock went back: nbf is now further than the leeway ahead.
        assert!(cache.get(&digest, NOW + 100 - LEEWAY - 1).is_none());
    }

    #[test]
    fn an_entry_goes_when_its_key_leaves_or_changes_and_stays_while_it_is_unchanged() {
        let cache = VerifiedCache::new(10);
        let keys = key_set("k1");
        let digest = VerifiedCache::digest("token");
        cache.insert(digest, seen(&keys, "a", NOW + 300, None), NOW);
        let same =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]});
        keys.0.replace(parse_jwks(&same).unwrap());
        assert!(cache.get(&digest, NOW).is_some(), "an unchanged key stays");
        let other =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAC", "e": "AQAB"}]});
        keys.0.replace(parse_jwks(&other).unwrap());
        assert!(cache.get(&digest, NOW).is_none(), "another key under k1");

        cache.insert(digest, seen(&keys, "a", NOW + 300, None), NOW);
        let k2 =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "k2", "n": "AQAB", "e": "AQAB"}]});
        keys.0.replace(parse_jwks(&k2).unwrap());
        assert!(cache.get(&digest, NOW).is_none(), "k1 left");
    }

    #[test]
    fn the_bound_holds_under_50_000_distinct_valid_tokens() {
        let bound = 1_000;
        let cache = VerifiedCache::new(bound);
        let keys = key_set("k1");
        for i in 0..50_000u32 {
            let token = format!("token-{i}");
            cache.insert(
                VerifiedCache::digest(&token),
                seen(&keys, &token, NOW + 300, None),
                NOW,
            );
        }
        let held = cache.entry_count();
        assert!(held <= bound && held > 0, "{held}");
        // Least recently used out: the last token is held, the first is not.
        assert!(
            cache
                .get(&VerifiedCache::digest("token-49999"), NOW)
                .is_some()
        );
        assert!(cache.get(&VerifiedCache::digest("token-0"), NOW).is_none());
    }

    #[test]
    fn entries_live_until_exp_at_most_ten_minutes_and_none_past_exp_go_in() {
        let cache = VerifiedCache::new(10);
        let keys = key_set("k1");
        cache.insert([1; 32], seen(&keys, "past", NOW - 1, None), NOW);
        cache.insert([2; 32], seen(&keys, "soon", NOW + 1, None), NOW);
        cache.insert([3; 32], seen(&keys, "far", NOW + 86_400, None), NOW);
        let lifetime = |d: [u8; 32]| cache.0.as_ref().unwrap().get(&d).map(|e| e.lifetime);
        assert_eq!(lifetime([1; 32]), None);
        assert_eq!(lifetime([2; 32]), Some(Duration::from_secs(1)));
        assert_eq!(lifetime([3; 32]), Some(MAX_LIFETIME));
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(cache.get(&[2; 32], NOW).is_none(), "gone at exp");
    }

    #[test]
    fn max_entries_0_is_no_cache() {
        let cache = VerifiedCache::new(0);
        let keys = key_set("k1");
        cache.insert([1; 32], seen(&keys, "a", NOW + 300, None), NOW);
        assert!(cache.get(&[1; 32], NOW).is_none());
        assert!(!cache.is_on());
    }
}
