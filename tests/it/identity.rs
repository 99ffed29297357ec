//! Workload identity: callers known by a token of an issuer under `identity.issuers` (a
//! Kubernetes projected service-account token), verified offline against a fake OIDC issuer on
//! loopback; refusals are 401 `invalid_token` with the reason; the issuer's keys are re-read on an
//! unknown kid at most once per 10 s whatever the flood; API-key clients keep working alongside.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::oidc::*;
use crate::support::*;

const AUDIENCE: &str = "maskinporten-broker";
const API_KEY: &str = "the-batch-api-key";

/// `identity.issuers.kubernetes` at `issuer` (discovery when `jwks_uri` is `None`), with an
/// exact-subject client, a pattern client and an API-key client.
fn identity_yaml(issuer: &FakeIssuer, jwks_uri: Option<&str>) -> String {
    let jwks = jwks_uri.map_or(String::new(), |u| format!("      jwks_uri: {u}\n"));
    let clients = [
        "clients:",
        "  - name: invoicing",
        "    identity: {issuer: kubernetes, subject: \"system:serviceaccount:team-a:invoicing\"}",
        "    profiles: [admin]",
        "  - name: team-b",
        "    identity: {issuer: kubernetes, subject: \"system:serviceaccount:team-b:*\"}",
        "    profiles: ['*']",
        "  - name: batch",
        "    key_sha256: {hash}",
        "    profiles: ['*']",
    ]
    .join("\n");
    format!(
        "identity:\n  issuers:\n    kubernetes:\n      issuer: {}\n{jwks}      audience: {AUDIENCE}\n{}\n",
        issuer.issuer(),
        clients.replace("{hash}", &hash_api_key(API_KEY))
    )
}

use maskinporten_broker::hash_api_key;

async fn get_with(env: &TestEnv, path: &str, bearer: &str) -> reqwest::Response {
    env.http
        .get(env.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_service_account_token_identifies_its_client_alongside_api_keys() {
    let key = TestKey::generate("k1");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let env = TestEnv::start(&identity_yaml(&issuer, None)).await;
    // The keys came by discovery, read once at start.
    assert_eq!((issuer.discovery_reads(), issuer.jwks_reads()), (1, 1));
    let iss = issuer.issuer();

    let invoicing = key.sign(&service_account_claims(
        &iss,
        AUDIENCE,
        "team-a",
        "invoicing",
    ));
    let r = get_with(&env, "/token/admin", &invoicing).await;
    assert_eq!(r.status(), 200);
    // The profile its client may not use: 403, as for API keys.
    let r = get_with(&env, &format!("/token/skd?org={ORG}"), &invoicing).await;
    assert_eq!(r.status(), 403);

    // A pattern matches any service account of team-b; another namespace matches no client.
    let team_b = key.sign(&service_account_claims(&iss, AUDIENCE, "team-b", "reports"));
    assert_eq!(get_with(&env, "/token/admin", &team_b).await.status(), 200);
    let team_c = key.sign(&service_account_claims(&iss, AUDIENCE, "team-c", "reports"));
    let r = get_with(&env, "/token/admin", &team_c).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:team-c:reports"),
        "{body}"
    );

    // The API-key client keeps working, by Bearer and by X-Api-Key.
    assert_eq!(get_with(&env, "/token/admin", API_KEY).await.status(), 200);
    let r = env
        .http
        .get(env.url("/token/admin"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(issuer.jwks_reads(), 1, "known kids need no read");
}

#[tokio::test]
async fn refused_tokens_are_401_invalid_token_with_the_reason() {
    let key = TestKey::generate("k1");
    let stranger = TestKey::generate("k1"); // the same kid, another key
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let jwks = issuer.jwks_uri();
    let env = TestEnv::start(&identity_yaml(&issuer, Some(&jwks))).await;
    let iss = issuer.issuer();
    let good = service_account_claims(&iss, AUDIENCE, "team-a", "invoicing");
    let with = |changes: serde_json::Value| {
        let mut claims = good.clone();
        for (k, v) in changes.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let now = now_secs();
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        // HMAC keyed with what an attacker knows: the public key's bytes.
        let secret = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&key.public).unwrap();
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let no_kid = {
        let header = Header::new(Algorithm::RS256);
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let cases = [
        (
            "expired",
            key.sign(&with(
                json!({"exp": now - 120, "iat": now - 720, "nbf": now - 720}),
            )),
            "expired",
        ),
        (
            "within the 60 s leeway",
            key.sign(&with(json!({"exp": now - 30}))),
            "",
        ),
        (
            "wrong audience",
            key.sign(&with(json!({"aud": ["vault"]}))),
            "audience",
        ),
        ("no audience", key.sign(&with(json!({"aud": null}))), "aud"),
        (
            "wrong issuer",
            key.sign(&with(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        (
            "not yet valid",
            key.sign(&with(json!({"nbf": now + 300}))),
            "nbf",
        ),
        (
            "issued in the future",
            key.sign(&with(json!({"iat": now + 300}))),
            "iat",
        ),
        ("no exp", key.sign(&with(json!({"exp": null}))), "exp"),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "kid": "k1"}), &good),
            "algorithm none",
        ),
        ("HS256", hs256, "algorithm HS256"),
        (
            "tampered",
            tampered(
                &key.sign(&good),
                &with(json!({"sub": "system:serviceaccount:team-a:admin"})),
            ),
            "signature",
        ),
        ("another key", stranger.sign(&good), "signature"),
        ("no kid", no_kid, "kid"),
        (
            "unknown kid",
            TestKey {
                kid: "k9".into(),
                ..key.clone()
            }
            .sign(&good),
            "unknown key",
        ),
        (
            "PS256 with a key the JWKS pins to RS256",
            key.sign_with(Algorithm::PS256, &good),
            "algorithm PS256",
        ),
    ];
    for (case, token, reason) in cases {
        let r = get_with(&env, "/token/admin", &token).await;
        if reason.is_empty() {
            assert_eq!(r.status(), 200, "{case}");
            continue;
        }
        assert_eq!(r.status(), 401, "{case}");
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{case}: {challenge}"
        );
        assert!(challenge.contains(reason), "{case}: {challenge}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body = r.text().await.unwrap();
        assert!(!body.contains(&token), "{case}: the token is echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kids_reread_the_keys_at_most_once_per_10_seconds_and_a_failed_read_keeps_them() {
    let old = TestKey::generate("old");
    let issuer = FakeIssuer::start(vec![old.clone()]).await;
    let jwks = issuer.jwks_uri();
    let started = Instant::now();
    let env = TestEnv::start(&identity_yaml(&issuer, Some(&jwks))).await;
    assert_eq!(issuer.jwks_reads(), 1);
    let iss = issuer.issuer();
    let claims = service_account_claims(&iss, AUDIENCE, "team-a", "invoicing");
    let with_old = old.sign(&claims);
    // 1,000 random kids: the old token with only its header's kid changed (an unknown kid is
    // found before any signature is checked).
    let flood = |env: &TestEnv| {
        let tokens: Vec<String> = (0..1_000)
            .map(|_| {
                let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": uuid::Uuid::new_v4().to_string()});
                let unsigned = unsigned(&header, &claims);
                let signature = with_old.rsplit('.').next().unwrap();
                format!("{unsigned}{signature}")
            })
            .collect();
        let (http, url) = (env.http.clone(), env.url("/token/admin"));
        async move {
            futures::stream::iter(tokens)
                .map(|t| {
                    let http = http.clone();
                    let url = url.clone();
                    async move { http.get(url).bearer_auth(t).send().await.unwrap().status() }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        }
    };
    let statuses = flood(&env).await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        issuer.jwks_reads(),
        1,
        "read at start, and not again within 10 s"
    );

    // After 10 s an unknown kid may read again; this read fails (a document over 256 KiB): the
    // old key stays in use.
    tokio::time::sleep(Duration::from_millis(10_300).saturating_sub(started.elapsed())).await;
    issuer.set_oversized(true);
    let new = TestKey::generate("new");
    issuer.set_keys(vec![old.clone(), new.clone()]);
    let with_new = new.sign(&claims);
    let second_read = Instant::now();
    assert_eq!(
        get_with(&env, "/token/admin", &with_new).await.status(),
        401
    );
    assert_eq!(issuer.jwks_reads(), 2);
    assert_eq!(
        get_with(&env, "/token/admin", &with_old).await.status(),
        200
    );
    let statuses = flood(&env).await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert_eq!(issuer.jwks_reads(), 2, "the flood read nothing");

    // 10 s after that read, the next unknown kid reads again, and the rotated key works.
    tokio::time::sleep(Duration::from_millis(10_300).saturating_sub(second_read.elapsed())).await;
    issuer.set_oversized(false);
    let r = get_with(&env, "/token/admin", &with_new).await;
    assert_eq!(
        r.status(),
        200,
        "{:?} {}",
        r.headers().get("www-authenticate"),
        issuer.jwks_reads()
    );
    assert_eq!(issuer.jwks_reads(), 3);
    let statuses = flood(&env).await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert_eq!(issuer.jwks_reads(), 3);
}

#[tokio::test]
async fn the_audit_line_names_the_principal_and_how_it_was_identified() {
    let key = TestKey::generate("k1");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let extra = format!("log:\n  level: info\n{}", identity_yaml(&issuer, None));
    let mut broker = ServedBinary::start(&mp, &altinn, &extra).await;
    let http = reqwest::Client::new();
    let token = key.sign(&service_account_claims(
        &issuer.issuer(),
        AUDIENCE,
        "team-b",
        "reports",
    ));
    for bearer in [token.as_str(), API_KEY] {
        let r = http
            .get(broker.url("/token/admin"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    signal(broker.child.id().unwrap(), "INT");
    broker.child.wait().await.unwrap();
    let log = stderr_of(&mut broker.child).await;
    let served: Vec<&str> = log.lines().filter(|l| l.contains("token served")).collect();
    assert_eq!(served.len(), 2, "{log}");
    assert!(served[0].contains("team-b"), "{log}");
    assert!(
        served[0].contains("principal=\"kubernetes:team-b/reports\""),
        "{log}"
    );
    assert!(
        served[1].contains("batch") && served[1].contains("principal=\"api_key\""),
        "{log}"
    );
    assert!(
        !log.contains(&token) && !log.contains(API_KEY),
        "no credential in the log"
    );
}

#[tokio::test]
async fn identity_settings_are_checked() {
    let problems = |yaml: &str| {
        maskinporten_broker::config::Settings::from_yaml(&format!("env: local\n{yaml}"))
            .unwrap()
            .validate()
            .map(|_| Vec::new())
            .unwrap_or_else(|e| match e {
                maskinporten_broker::config::ConfigError::Invalid(p) => p,
                other => vec![other.to_string()],
            })
    };
    let p = problems(
        "identity:\n  issuers:\n    k8s:\n      issuer: https://kubernetes.default.svc\n      jwks_uri: http://10.0.0.1/openid/v1/jwks\n      audience: ''\n",
    );
    assert!(
        p.iter()
            .any(|p| p.starts_with("identity.issuers.k8s.jwks_uri: ") && p.contains("loopback")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.starts_with("identity.issuers.k8s.audience")),
        "{p:?}"
    );
    let p = problems(
        "clients:\n  - name: a\n    identity: {issuer: nowhere, subject: x}\n    profiles: ['*']\n",
    );
    assert!(
        p.iter()
            .any(|p| p
                .starts_with("clients[0].identity.issuer: there is no issuer named \"nowhere\"")),
        "{p:?}"
    );
    let p = problems("clients:\n  - name: b\n    profiles: ['*']\n");
    assert!(
        p.iter()
            .any(|p| p.starts_with("clients[0].key_sha256: give key_sha256")),
        "{p:?}"
    );
}
