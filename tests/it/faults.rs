//! Fault injection against a scripted fake Maskinporten: what the caller sees, how many upstream
//! calls were made, and that no expired token is ever served.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

const FAST: &str = "http_client:\n  timeout: 300ms\n";

async fn expect_retry_after(env: &TestEnv, path: &str, status: u16) -> (Value, u64) {
    let r = env.get(path).await;
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (r.json().await.unwrap(), wait)
}

#[tokio::test]
async fn repeated_500s_are_retried_a_bounded_number_of_times_then_503() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::Status(500));
    let (p, wait) = expect_retry_after(&env, "/token/admin", 503).await;
    assert_eq!(p["upstream_status"], 500);
    assert!(wait >= 1);
    assert_eq!(env.mp.calls(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn a_single_503_is_retried_transparently() {
    let env = TestEnv::start(FAST).await;
    env.mp.script([Reply::Status(503)]);
    env.get_json("/token/admin", 200).await;
    assert_eq!(env.mp.calls(), 2);
}

#[tokio::test]
async fn a_short_retry_after_is_honoured() {
    let env = TestEnv::start(FAST).await;
    env.mp.script([Reply::RetryAfter(429, 1)]);
    let started = Instant::now();
    env.get_json("/token/admin", 200).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
    assert_eq!(env.mp.calls(), 2);
}

#[tokio::test]
async fn a_long_retry_after_is_passed_to_the_caller_without_waiting() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::RetryAfter(503, 60));
    let started = Instant::now();
    let (_, wait) = expect_retry_after(&env, "/token/admin", 503).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(wait, 60);
    assert_eq!(env.mp.calls(), 1);
}

#[tokio::test]
async fn a_hang_past_the_timeout_is_a_504_in_bounded_time() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::Hang(Duration::from_secs(30)));
    let started = Instant::now();
    let (p, _) = expect_retry_after(&env, "/token/admin", 504).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p["upstream"], "maskinporten");
    assert_eq!(env.mp.calls(), 3);
}

#[tokio::test]
async fn malformed_json_is_a_502_and_not_retried() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::Malformed);
    let p = env.problem("/token/admin", 502).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("not the expected JSON")
    );
    assert_eq!(env.mp.calls(), 1);
}

#[tokio::test]
async fn a_response_without_access_token_is_a_502() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::MissingToken);
    let p = env.problem("/token/admin", 502).await;
    assert!(p["detail"].as_str().unwrap().contains("no access_token"));
    assert_eq!(env.mp.calls(), 1);
}

#[tokio::test]
async fn a_token_from_another_environment_is_refused() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::WrongIssuer);
    let p = env.problem("/token/admin", 502).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("issued by https://maskinporten.no/")
            && detail.contains("another environment"),
        "{detail}"
    );
    assert_eq!(env.altinn.calls(), 0);
}

#[tokio::test]
async fn an_invalid_grant_is_remembered_so_a_crowd_makes_one_call() {
    let env = TestEnv::start(FAST).await;
    env.mp.always(Reply::Refuse(
        "invalid_grant",
        "Invalid JWT signature (MP-124)",
    ));
    for _ in 0..20 {
        let p = env.problem("/token/admin", 502).await;
        assert_eq!(p["mp_code"], "MP-124");
    }
    assert_eq!(env.mp.calls(), 1);
}

#[tokio::test]
async fn altinn_down_is_a_503_naming_altinn() {
    let env = TestEnv::start(FAST).await;
    env.altinn.set_down(true);
    let (p, _) = expect_retry_after(&env, "/token/altinn", 503).await;
    assert_eq!(p["upstream"], "altinn");
    assert_eq!(env.altinn.calls(), 3);
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["upstreams"]["altinn"]["consecutive_failures"], 1);
    assert_eq!(
        ready["upstreams"]["maskinporten"]["consecutive_failures"],
        0
    );
}

/// Seconds left on a served token, by its own `exp`.
fn seconds_left(body: &Value) -> i64 {
    claims(body["access_token"].as_str().unwrap())["exp"]
        .as_i64()
        .unwrap()
        - now_secs() as i64
}

#[tokio::test]
async fn an_outage_longer_than_a_token_lifetime_serves_valid_tokens_then_503_then_recovers() {
    let env = TestEnv::start(
        "http_client:\n  timeout: 200ms\ncache:\n  min_remaining: 1s\n  refresh_floor: 500ms\n",
    )
    .await;
    env.mp.set_expires_in(3);
    let first = env.get_json("/token/admin", 200).await;
    env.mp.always(Reply::Status(503));
    let started = Instant::now();
    let (mut ok, mut unavailable) = (0, 0);
    while started.elapsed() < Duration::from_secs(5) {
        let r = env.get("/token/admin").await;
        match r.status().as_u16() {
            200 => {
                let body: Value = r.json().await.unwrap();
                assert_eq!(
                    body["access_token"], first["access_token"],
                    "only the cached token exists"
                );
                assert!(
                    seconds_left(&body) >= 1,
                    "never an expired or nearly expired token"
                );
                assert_eq!(unavailable, 0, "no 200 after the token ran out");
                ok += 1;
            }
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                unavailable += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok > 0 && unavailable > 0,
        "served while valid ({ok}), then 503 ({unavailable})"
    );
    let calls_during_outage = env.mp.calls();
    assert!(
        calls_during_outage < 60,
        "bounded upstream calls: {calls_during_outage}"
    );
    env.mp.heal();
    let healed = Instant::now();
    let mut recovered = false;
    while healed.elapsed() < Duration::from_secs(10) {
        if env.get("/token/admin").await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "recovered by itself within 10 s");
    assert!(
        healed.elapsed() < Duration::from_secs(3),
        "recovery is prompt: {:?}",
        healed.elapsed()
    );
}

#[tokio::test]
async fn a_soak_with_a_flapping_upstream_never_fails_while_a_valid_token_exists() {
    let env = TestEnv::start(
        "http_client:\n  timeout: 200ms\ncache:\n  min_remaining: 1s\n  refresh_floor: 500ms\n",
    )
    .await;
    env.mp.set_expires_in(4);
    env.get_json("/token/admin", 200).await;
    let soak = Duration::from_secs(20);
    let started = Instant::now();
    let flipper = async {
        let mut failing = false;
        while started.elapsed() < soak {
            failing = !failing;
            if failing {
                env.mp.always(Reply::Status(503))
            } else {
                env.mp.heal()
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        env.mp.heal();
    };
    let best_exp = std::sync::atomic::AtomicI64::new(0);
    let worker = || async {
        let (mut ok, mut bad) = (0u32, 0u32);
        while started.elapsed() < soak {
            let r = env.get("/token/admin").await;
            let now = now_secs() as i64;
            if r.status() == 200 {
                let body: Value = r.json().await.unwrap();
                let exp = claims(body["access_token"].as_str().unwrap())["exp"]
                    .as_i64()
                    .unwrap();
                assert!(exp - now >= 1, "served a token with {}s left", exp - now);
                best_exp.fetch_max(exp, std::sync::atomic::Ordering::SeqCst);
                ok += 1;
            } else {
                assert_eq!(r.status(), 503);
                let best = best_exp.load(std::sync::atomic::Ordering::SeqCst);
                assert!(
                    best - now <= 2,
                    "a 503 while a token with {}s left was known",
                    best - now
                );
                bad += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, bad)
    };
    let (_, results) = tokio::join!(flipper, futures::future::join_all((0..8).map(|_| worker())));
    let ok: u32 = results.iter().map(|r| r.0).sum();
    assert!(ok > 1000, "the soak made real traffic: {ok} successes");
    assert!(env.mp.violations().is_empty());
}
