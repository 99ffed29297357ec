//! Every error case of the token API: status, RFC 9457 body, and what the caller can act on.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn unknown_profile_is_a_404_listing_the_profiles() {
    let env = TestEnv::start("").await;
    let p = env.problem("/token/nope", 404).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"nope\"") && detail.contains("admin, altinn, consent, skd"),
        "{detail}"
    );
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn malformed_org_numbers_are_400s() {
    let env = TestEnv::start("").await;
    let p = env.problem("/token/altinn?org=12345", 400).await;
    assert!(p["detail"].as_str().unwrap().contains("exactly 9 digits"));
    let p = env.problem("/token/altinn?org=991825828", 400).await;
    assert!(p["detail"].as_str().unwrap().contains("check digit"));
    // The cause once, after the field it is about (it was repeated after itself).
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.starts_with("org: "), "{detail}");
    assert_eq!(detail.matches("check digit").count(), 1, "{detail}");
    let p = env.problem("/token/altinn?org=99182582a", 400).await;
    assert!(p["detail"].as_str().unwrap().contains("only digits"));
    let p = env.problem("/token/altinn?orgnr=991825827", 400).await;
    assert!(p["detail"].as_str().unwrap().contains("org="));
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn org_for_a_profile_without_system_user_is_a_400() {
    let env = TestEnv::start("").await;
    let p = env.problem(&format!("/token/admin?org={ORG}"), 400).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("does not use a system user")
    );
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn skd_without_org_and_without_default_is_a_400() {
    let env = TestEnv::start("").await;
    let p = env.problem("/token/skd", 400).await;
    assert!(p["detail"].as_str().unwrap().contains("default_org"));
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn a_maskinporten_refusal_is_a_502_with_code_and_hint() {
    let env = TestEnv::start("").await;
    env.mp.always(Reply::Refuse(
        "invalid_grant",
        "Invalid assertion. Client authentication failed. Invalid JWT signature. (MP-124)",
    ));
    let p = env.problem("/token/admin", 502).await;
    assert_eq!(p["upstream"], "maskinporten");
    assert_eq!(p["upstream_status"], 400);
    assert_eq!(p["error"], "invalid_grant");
    assert_eq!(p["mp_code"], "MP-124");
    assert!(
        p["hint"]
            .as_str()
            .unwrap()
            .contains("private key does not match kid")
    );
    assert!(p["detail"].as_str().unwrap().contains("MP-124"));
    assert_eq!(env.mp.calls(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn an_altinn_refusal_is_a_502_naming_altinn() {
    let env = TestEnv::start("").await;
    // Maskinporten issues the token; Altinn refuses it (401).
    env.altinn.set_refusing(true);
    let p = env.problem("/token/altinn", 502).await;
    assert_eq!(p["upstream"], "altinn", "{p}");
    assert_eq!(p["upstream_status"], 401, "{p}");
    assert_eq!(
        p["hint"],
        "Altinn refused the Maskinporten token: it is invalid, expired or from another environment (check env and endpoints)"
    );
    assert_eq!(env.mp.calls(), 1);
    assert_eq!(env.altinn.calls(), 1, "a refusal is not retried");
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
}

#[tokio::test]
async fn a_maskinporten_scope_refusal_on_an_altinn_profile_never_reaches_altinn() {
    let env = TestEnv::start("").await;
    env.mp
        .always(Reply::Refuse("invalid_scope", "Scope not allowed (MP-200)"));
    let p = env.problem("/token/altinn", 502).await;
    assert_eq!(p["upstream"], "maskinporten");
    assert_eq!(p["mp_code"], "MP-200");
    assert!(p["hint"].as_str().unwrap().contains("scope"));
    assert_eq!(env.altinn.calls(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_503_with_retry_after() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let settings = maskinporten_broker::config::Settings::from_yaml(
        &config_yaml(&mp, &altinn, "").replace(&mp.token_url(), &format!("http://{closed}/token")),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    let r = reqwest::get(format!("http://{}/token/admin", app.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["upstream"], "maskinporten");
    assert!(p["detail"].as_str().unwrap().contains("unreachable"));
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_within_the_timeout() {
    let env = TestEnv::start("http_client:\n  timeout: 300ms\n").await;
    env.mp.always(Reply::Hang(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let p = env.problem("/token/admin", 504).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("did not answer within 300ms")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problem_bodies() {
    let env = TestEnv::start("").await;
    env.problem("/nowhere", 404).await;
    let r = env
        .http
        .post(env.url("/token/altinn"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn health_and_readiness() {
    let env = TestEnv::start("").await;
    assert_eq!(env.get_json("/healthz", 200).await["status"], "ok");
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["kid"], KID);
    assert!(!ready.to_string().contains("PRIVATE"));
}

#[tokio::test]
async fn oversized_queries_and_headers_are_refused_with_problems() {
    let env = TestEnv::start("").await;
    let long = format!("/token/altinn?org={}", "9".repeat(2000));
    env.problem(&long, 414).await;
    let r = env
        .http
        .get(env.url("/token/altinn"))
        .header("x-filler", "a".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn a_profile_that_does_not_decode_gets_a_problem() {
    let env = TestEnv::start("").await;
    let r = env.get("/token/%FF").await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("profile"),
        "{body}"
    );
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn a_callers_request_id_is_echoed() {
    // (A fresh one when the caller sends none and logs record requests: observability.rs.)
    let env = TestEnv::start("").await;
    let r = env
        .http
        .get(env.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "abc-123",
        "a caller's id is kept"
    );
}

#[tokio::test]
async fn a_hang_that_outlasts_the_callers_wait_is_a_504_at_20_s() {
    // One attempt of up to 25 s does not fit in the 20 s a caller waits: the caller gets the 504
    // when its wait ends, with the attempt still running. (With a timeout that fits, no retry
    // starts that could not finish within 19 s: retry.rs tests that.)
    let env = TestEnv::start("http_client:\n  timeout: 25s\n").await;
    env.mp.always(Reply::Hang(Duration::from_secs(60)));
    let started = std::time::Instant::now();
    let p = env.problem("/token/admin", 504).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    assert!(p["detail"].as_str().unwrap().contains("within 20s"), "{p}");
    assert_eq!(env.mp.calls(), 1, "the attempt was under way");
}
