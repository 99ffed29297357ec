//! The cache of verified workload tokens (`identity.cache`): a repeated token is served from it,
//! counted by issuer in `/metrics`; a token whose key left the JWKS is refused after the re-read;
//! a flood of invalid tokens evicts nothing; a reload empties it; the audit line is the same on a
//! hit and a miss. (An expired token refused while cached, and the bound under 50,000 tokens:
//! the unit tests of `policy::identity::cache`, with an injected clock.)

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::oidc::*;
use crate::support::*;

const AUDIENCE: &str = "maskinporten-broker";

/// `identity.issuers.<name>` at `issuer`'s JWKS, `identity.cache.max_entries`, and a client for
/// any service account of team-a.
fn cache_yaml(name: &str, issuer: &FakeIssuer, max_entries: u64) -> String {
    format!(
        "identity:\n  cache:\n    max_entries: {max_entries}\n  issuers:\n    {name}:\n      issuer: {}\n      jwks_uri: {}\n      audience: {AUDIENCE}\nclients:\n  - name: team-a\n    identity: {{issuer: {name}, subject: \"system:serviceaccount:team-a:*\"}}\n    profiles: [admin]\n",
        issuer.issuer(),
        issuer.jwks_uri(),
    )
}

async fn status(env: &TestEnv, bearer: &str) -> u16 {
    env.http
        .get(env.url("/token/admin"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// (hits, misses) of `issuer`, and the entries held, in `text`.
fn lookups(text: &str, issuer: &str) -> (f64, f64, f64) {
    let name = |outcome: &str| {
        format!("broker_identity_cache_lookups_total{{issuer=\"{issuer}\",outcome=\"{outcome}\"}}")
    };
    (
        metric(text, &name("hit")),
        metric(text, &name("miss")),
        metric(text, "broker_identity_cache_entries"),
    )
}

async fn metrics_text(env: &TestEnv) -> String {
    env.get("/metrics").await.text().await.unwrap()
}

#[tokio::test]
async fn a_repeated_token_is_a_counted_hit_and_a_reload_empties_the_cache() {
    let key = TestKey::generate("k1");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let extra = cache_yaml("cache-hits", &issuer, 100);
    let env = TestEnv::start(&extra).await;
    let token = key.sign(&service_account_claims(
        &issuer.issuer(),
        AUDIENCE,
        "team-a",
        "invoicing",
    ));
    let (hits, misses, _) = lookups(&metrics_text(&env).await, "cache-hits");
    for _ in 0..3 {
        assert_eq!(status(&env, &token).await, 200);
    }
    let after = lookups(&metrics_text(&env).await, "cache-hits");
    assert_eq!(after, (hits + 2.0, misses + 1.0, 1.0));

    // A reload empties it: the next request verifies again.
    let reloaded = maskinporten_broker::config::Settings::from_yaml(&config_yaml(
        &env.mp,
        &env.altinn,
        &extra,
    ))
    .unwrap();
    env.app.reload(&reloaded).await.unwrap();
    assert_eq!(lookups(&metrics_text(&env).await, "cache-hits").2, 0.0);
    assert_eq!(status(&env, &token).await, 200);
    let last = lookups(&metrics_text(&env).await, "cache-hits");
    assert_eq!(last, (hits + 2.0, misses + 2.0, 1.0));
}

#[tokio::test]
async fn a_cached_token_whose_key_left_the_jwks_is_refused_after_the_reread() {
    let old = TestKey::generate("old");
    let issuer = FakeIssuer::start(vec![old.clone()]).await;
    let started = Instant::now();
    let env = TestEnv::start(&cache_yaml("cache-rotation", &issuer, 100)).await;
    let iss = issuer.issuer();
    let claims = service_account_claims(&iss, AUDIENCE, "team-a", "invoicing");
    let with_old = old.sign(&claims);
    assert_eq!(status(&env, &with_old).await, 200);
    assert_eq!(status(&env, &with_old).await, 200);
    let (hits, _, entries) = lookups(&metrics_text(&env).await, "cache-rotation");
    assert_eq!(entries, 1.0, "cached");
    assert!(hits >= 1.0);

    // The issuer rotates: `old` leaves the JWKS. A token of the new key re-reads it (an unknown
    // kid may read once 10 s have passed since the last read).
    tokio::time::sleep(Duration::from_millis(10_300).saturating_sub(started.elapsed())).await;
    let new = TestKey::generate("new");
    issuer.set_keys(vec![new.clone()]);
    assert_eq!(status(&env, &new.sign(&claims)).await, 200);
    assert_eq!(issuer.jwks_reads(), 2);
    let r = env
        .http
        .get(env.url("/token/admin"))
        .bearer_auth(&with_old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old key's token, though cached");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("unknown key"), "{challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_invalid_tokens_do_not_evict_a_valid_ones_entry() {
    let key = TestKey::generate("k1");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    // A bound of 10: were refusals cached, the flood would push the valid token out 1,000 times.
    let env = TestEnv::start(&cache_yaml("cache-flood", &issuer, 10)).await;
    let iss = issuer.issuer();
    let claims = service_account_claims(&iss, AUDIENCE, "team-a", "invoicing");
    let valid = key.sign(&claims);
    assert_eq!(status(&env, &valid).await, 200);
    let (hits, misses, _) = lookups(&metrics_text(&env).await, "cache-flood");

    // Each a different token: the valid one's payload changed, its signature kept.
    let invalid: Vec<String> = (0..10_000)
        .map(|i| {
            let mut c = claims.clone();
            c["sub"] = format!("system:serviceaccount:team-a:flood-{i}").into();
            tampered(&valid, &c)
        })
        .collect();
    let (http, url) = (env.http.clone(), env.url("/token/admin"));
    let statuses: Vec<u16> = futures::stream::iter(invalid)
        .map(|t| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(url).bearer_auth(t).send().await.unwrap();
                r.status().as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401));

    assert_eq!(status(&env, &valid).await, 200);
    let after = lookups(&metrics_text(&env).await, "cache-flood");
    assert_eq!(
        (after.0, after.1),
        (hits + 1.0, misses),
        "the valid token is still a hit"
    );
    assert_eq!(after.2, 1.0, "only the valid token is held");
}

#[tokio::test]
async fn the_audit_line_is_the_same_on_a_hit_and_a_miss() {
    let key = TestKey::generate("k1");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let extra = format!(
        "log:\n  level: debug\n{}",
        cache_yaml("kubernetes", &issuer, 100)
    );
    let mut broker = ServedBinary::start(&mp, &altinn, &extra).await;
    let http = reqwest::Client::new();
    let token = key.sign(&service_account_claims(
        &issuer.issuer(),
        AUDIENCE,
        "team-a",
        "reports",
    ));
    for _ in 0..2 {
        let r = http
            .get(broker.url("/token/admin"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let text = http
        .get(broker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Its own process: the counts are exact. The first a miss, the second a hit.
    assert_eq!(lookups(&text, "kubernetes"), (1.0, 1.0, 1.0), "{text}");
    signal(broker.child.id().unwrap(), "INT");
    broker.child.wait().await.unwrap();
    let log = stderr_of(&mut broker.child).await;
    // Each audit line's client and principal (the first for a principal is at info, later ones
    // at debug; the token cache's outcome differs).
    let field = |line: &str, name: &str| {
        let rest = line.split_once(&format!(" {name}=")).map(|(_, r)| r)?;
        Some(rest.split(' ').next()?.to_owned())
    };
    let served: Vec<(Option<String>, Option<String>)> = log
        .lines()
        .filter(|l| l.contains("token served"))
        .map(|l| (field(l, "client"), field(l, "principal")))
        .collect();
    assert_eq!(served.len(), 2, "{log}");
    let expected = (
        Some("\"team-a\"".to_owned()),
        Some("\"kubernetes:team-a/reports\"".to_owned()),
    );
    assert_eq!(served[0], expected, "{log}");
    assert_eq!(served[1], expected, "{log}");
    assert!(!log.contains(&token), "no token in the log");
}

#[tokio::test]
async fn max_entries_is_checked_with_its_field_path() {
    let problems = maskinporten_broker::config::Settings::from_yaml(
        "env: local\nidentity:\n  cache:\n    max_entries: 2000000\n",
    )
    .unwrap()
    .validate()
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        problems.contains("identity.cache.max_entries: at most 1000000"),
        "{problems}"
    );
    for fine in ["0", "10"] {
        let yaml = format!("env: local\nidentity:\n  cache:\n    max_entries: {fine}\n");
        let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
        assert!(settings.validate().is_ok(), "{fine}");
    }
}
