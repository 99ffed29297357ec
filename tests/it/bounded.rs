//! A shared broker stays bounded: only keys in use are refreshed, the cache has a size, fetches
//! have a budget, an outage costs about one background call per second, absurd upstream
//! lifetimes do not panic, and the log does not grow per hit.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;

use crate::support::*;

/// 3 s tokens are servable for 2 s and refreshed when 1.5 s are left.
const SHORT: &str = "cache:\n  min_remaining: 1s\n  refresh_floor: 500ms\n";

fn skd(org: &str) -> String {
    format!("/token/skd?org={org}")
}

/// GET every path at once.
async fn get_all(env: &TestEnv, paths: impl IntoIterator<Item = String>) -> Vec<reqwest::Response> {
    join_all(
        paths
            .into_iter()
            .map(|path| async move { env.get(&path).await }),
    )
    .await
}

/// GET every path at once, each must be 200 JSON.
async fn json_all(env: &TestEnv, paths: impl IntoIterator<Item = String>) -> Vec<Value> {
    join_all(
        paths
            .into_iter()
            .map(|path| async move { env.get_json(&path, 200).await }),
    )
    .await
}

/// Poll `cond` every 100 ms for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond().await
}

#[tokio::test]
async fn keys_asked_for_once_are_fetched_once_and_then_lapse() {
    let env = TestEnv::start(SHORT).await;
    env.mp.set_expires_in(3);
    let orgs = valid_orgs(20);
    for org in &orgs {
        env.get_json(&skd(org), 200).await;
    }
    assert_eq!(env.mp.calls(), 20);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        env.mp.calls(),
        20,
        "no background refresh of keys nobody asked for again"
    );
    assert!(
        eventually(Duration::from_secs(2), async || cached_tokens(&env).await
            == 0)
        .await,
        "lapsed keys leave the cache"
    );
    assert!(env.mp.violations().is_empty());
}

#[tokio::test]
async fn upstream_calls_stop_within_one_token_lifetime_after_the_callers_stop() {
    let env = TestEnv::start(SHORT).await;
    env.mp.set_expires_in(3);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let body = env.get_json("/token/admin", 200).await;
        assert!(body["expires_in"].as_u64().unwrap() >= 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (at_stop, calls_in_use) = (Instant::now(), env.mp.calls());
    assert!(calls_in_use >= 3, "refreshed while in use: {calls_in_use}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_one_lifetime = env.mp.calls();
    assert!(
        after_one_lifetime <= calls_in_use + 1,
        "{calls_in_use} -> {after_one_lifetime}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.mp.calls(),
        after_one_lifetime,
        "nothing more after {:?}",
        at_stop.elapsed()
    );
}

#[tokio::test]
async fn max_entries_caps_the_cache_and_every_new_key_is_fetched_once() {
    let env = TestEnv::start("cache:\n  max_entries: 3\n").await;
    let orgs = valid_orgs(12);
    // Three popular keys first: a frequency-based admission would then refuse newcomers.
    for _ in 0..5 {
        for org in &orgs[..3] {
            env.get_json(&skd(org), 200).await;
        }
    }
    for org in &orgs[3..] {
        let first = env.get_json(&skd(org), 200).await;
        for _ in 0..4 {
            let again = env.get_json(&skd(org), 200).await;
            assert_eq!(again["access_token"], first["access_token"]);
            assert_eq!(again["org"], org.as_str());
        }
    }
    assert_eq!(env.mp.calls(), 12, "one fetch per key, none per request");
    assert!(
        eventually(Duration::from_secs(3), async || cached_tokens(&env).await
            <= 3)
        .await,
        "at most max_entries cached: {}",
        cached_tokens(&env).await
    );
}

#[tokio::test]
async fn over_the_fetch_budget_a_caller_gets_429_and_cache_hits_are_never_limited() {
    let env = TestEnv::start("cache:\n  max_fetches_per_second: 3\n").await;
    let hot = env.get_json("/token/admin", 200).await;
    // Ten new keys at once: the budget's burst (three) is fetched, the rest refused.
    let answers = get_all(&env, valid_orgs(10).iter().map(|o| skd(o))).await;
    let mut refused = 0;
    for r in answers {
        match r.status().as_u16() {
            200 => {}
            429 => {
                refused += 1;
                assert_eq!(r.headers()["content-type"], "application/problem+json");
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                let p: Value = r.json().await.unwrap();
                assert_eq!(p["status"], 429);
                assert!(
                    p["detail"]
                        .as_str()
                        .unwrap()
                        .contains("all callers together"),
                    "{p}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 6, "{refused} of 10 new keys refused");
    for _ in 0..200 {
        let body = env.get_json("/token/admin", 200).await;
        assert_eq!(body["access_token"], hot["access_token"]);
    }
    assert!(env.mp.calls() <= 1 + 6, "{}", env.mp.calls());
}

#[tokio::test]
async fn a_client_budget_limits_only_that_client() {
    const KEY_A: &str = "key-of-the-batch-job-0123";
    const KEY_B: &str = "key-of-the-web-app-4567";
    let orgs = valid_orgs(8);
    let list = orgs
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let env = TestEnv::start(&format!(
        "clients:\n  - name: batch\n    key_sha256: {}\n    profiles: ['*']\n    orgs: [{list}]\n    max_fetches_per_second: 1\n  - name: web\n    key_sha256: {}\n    profiles: ['*']\n    orgs: [{list}]\n",
        maskinporten_broker::hash_api_key(KEY_A),
        maskinporten_broker::hash_api_key(KEY_B),
    ))
    .await;
    let ask = async |key: &str, org: &str| {
        env.http
            .get(env.url(&skd(org)))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
    };
    // Four new keys at once from the batch job: one is fetched (its budget's burst), three refused.
    let answers = join_all(orgs[..4].iter().map(|org| ask(KEY_A, org))).await;
    let fetched: Vec<_> = (0..4).filter(|i| answers[*i].status() == 200).collect();
    assert_eq!(
        fetched.len(),
        1,
        "{:?}",
        answers.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    let mut refusals = answers.into_iter().filter(|r| r.status() == 429);
    let over = refusals.next().expect("a 429");
    assert!(over.headers().contains_key("retry-after"));
    let p: Value = over.json().await.unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("client \"batch\""),
        "{p}"
    );
    // A cache hit is free for the client over budget; the other client is not held back.
    assert_eq!(ask(KEY_A, &orgs[fetched[0]]).await.status(), 200);
    for org in &orgs[4..8] {
        assert_eq!(ask(KEY_B, org).await.status(), 200);
    }
}

#[tokio::test]
async fn concurrent_fetches_are_capped_and_the_rest_queue() {
    let env = TestEnv::start("cache:\n  max_concurrent_fetches: 2\n").await;
    env.mp.always(Reply::Hang(Duration::from_millis(300)));
    let orgs = valid_orgs(8);
    let answers = get_all(&env, orgs.iter().map(|o| skd(o))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(env.mp.calls(), 8);
    assert!(env.mp.most_in_flight() <= 2, "{}", env.mp.most_in_flight());
}

/// Warm `n` keys whose 60 s tokens are refreshed 1.2 s after each fetch, then let Maskinporten
/// fail with `reply` while every key keeps being asked for (hits); the calls it got per second
/// after `settle`, and whether every caller was served throughout.
async fn outage(n: usize, reply: Reply, settle: Duration, length: Duration) -> (f64, bool) {
    let env = TestEnv::start(
        "cache:\n  refresh_when_left: 0.98\n  min_remaining: 1s\n  max_fetches_per_second: 1000\n",
    )
    .await;
    // Long enough to outlive the warm-up (grants are signed by the unoptimised test build).
    env.mp.set_expires_in(60);
    let orgs = valid_orgs(n);
    json_all(&env, orgs.iter().map(|o| skd(o))).await;
    env.mp.always(reply);
    let started = Instant::now();
    let mut all_served = true;
    let mut settled_at = None;
    while started.elapsed() < length {
        if settled_at.is_none() && started.elapsed() >= settle {
            settled_at = Some((Instant::now(), env.mp.calls()));
        }
        let answers = get_all(&env, orgs.iter().map(|o| skd(o))).await;
        all_served &= answers.iter().all(|r| r.status() == 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (at, calls) = settled_at.expect("the outage outlasts the settling time");
    let rate = (env.mp.calls() - calls) as f64 / at.elapsed().as_secs_f64();
    (rate, all_served)
}

#[tokio::test]
async fn an_outage_costs_about_one_background_call_per_second_whatever_the_number_of_keys() {
    let (per_second, all_served) = outage(
        30,
        Reply::Status(503),
        Duration::from_secs(3),
        Duration::from_secs(8),
    )
    .await;
    assert!(per_second <= 1.6, "{per_second:.2} calls/s with 30 keys");
    assert!(all_served, "cached tokens are served through the outage");
}

#[tokio::test]
async fn the_background_honours_retry_after() {
    let (per_second, all_served) = outage(
        20,
        Reply::RetryAfter(429, 4),
        Duration::from_secs(2),
        Duration::from_secs(7),
    )
    .await;
    assert!(
        per_second <= 0.5,
        "{per_second:.2} calls/s with Retry-After 4"
    );
    assert!(all_served);
}

#[tokio::test]
async fn a_huge_expires_in_is_clamped_and_twenty_callers_still_share_one_call() {
    for expires_in in [1_000_000_000_000, u64::MAX] {
        let env = TestEnv::start("").await;
        env.mp.always(Reply::ExpiresIn(expires_in));
        let answers = json_all(&env, (0..20).map(|_| skd(ORG))).await;
        assert_eq!(env.mp.calls(), 1, "expires_in {expires_in}");
        for body in &answers {
            assert!(body["expires_in"].as_u64().unwrap() <= 24 * 3600, "{body}");
            assert!(
                body["expires_at"].as_str().unwrap().starts_with("20"),
                "{body}"
            );
        }
    }
}

#[tokio::test]
async fn an_altinn_token_with_an_absurd_exp_is_clamped() {
    let env = TestEnv::start("").await;
    env.altinn.set_exp(10_000_000_000_000);
    let answers = json_all(&env, (0..20).map(|_| "/token/altinn".to_owned())).await;
    assert_eq!((env.mp.calls(), env.altinn.calls()), (1, 1));
    assert!(answers[0]["expires_in"].as_u64().unwrap() <= 24 * 3600);
}

#[tokio::test]
async fn a_failed_fetch_does_not_poison_the_key() {
    let env = TestEnv::start("").await;
    env.mp.always(Reply::Status(503));
    let answers = get_all(&env, (0..20).map(|_| skd(ORG))).await;
    assert!(answers.iter().all(|r| r.status() == 503));
    assert_eq!(env.mp.calls(), 3, "one coalesced fetch and its two retries");
    env.mp.heal();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answers = get_all(&env, (0..20).map(|_| skd(ORG))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    assert_eq!(env.mp.calls(), 4);
}

#[tokio::test]
async fn hits_are_logged_once_per_client_and_token_not_per_request() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let mut broker = ServedBinary::start(&mp, &altinn, "log:\n  level: info\n").await;
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let r = http.get(broker.url("/token/admin")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    signal(broker.child.id().unwrap(), "TERM");
    broker.child.wait().await.unwrap();
    let log = stderr_of(&mut broker.child).await;
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("token served"), 1, "{log}");
    assert_eq!(count("token fetched"), 1, "{log}");
    assert!(log.lines().count() < 20, "{log}");
}
