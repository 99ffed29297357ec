//! The token endpoints against strict fake upstreams: every built-in profile, a custom profile,
//! system users, JSON and text answers, the listing, coalescing and background refresh.

use std::time::Duration;

use crate::support::*;
use serde_json::json;

const ALTINN_SCOPE: &str = "altinn:instances.read altinn:instances.write";
const ADMIN_SCOPE: &str = "altinn:authentication/systemregister.write altinn:authentication/systemuser.request.read altinn:authentication/systemuser.request.write";
const SKD_SCOPE: &str = "skatteetaten:innrapporteringaksjonaerregisteroppgave";

#[tokio::test]
async fn altinn_token_is_a_maskinporten_token_exchanged_at_altinn() {
    let env = TestEnv::start("").await;
    let body = env.get_json("/token/altinn", 200).await;
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    let grants = env.mp.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].claims["scope"], ALTINN_SCOPE);
    assert!(grants[0].claims.get("authorization_details").is_none());
    assert_eq!(env.altinn.calls(), 1);
    let served = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        served["iss"],
        "https://platform.tt02.altinn.no/authentication/api/v1/openid/"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["profile"], "altinn");
    assert_eq!(body["org"], json!(null));
    assert_eq!(body["scope"], ALTINN_SCOPE);
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(
        (1790..=1800).contains(&expires_in),
        "Altinn's 30 minutes, not Maskinporten's 120 s: {expires_in}"
    );
    let expires_at = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        expires_at.unix_timestamp() as u64,
        served["exp"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn altinn_with_org_is_the_system_user_token_for_that_org() {
    let env = TestEnv::start("").await;
    let body = env.get_json(&format!("/token/altinn?org={ORG}"), 200).await;
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    let grant = &env.mp.grants()[0].claims;
    assert_eq!(
        grant["authorization_details"],
        json!([{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": format!("0192:{ORG}")}}])
    );
    assert_eq!(body["org"], ORG);
    assert_eq!(
        env.altinn.exchanged()[0]["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{ORG}")
    );
}

#[tokio::test]
async fn admin_is_the_raw_maskinporten_token_without_exchange() {
    let env = TestEnv::start("").await;
    let body = env.get_json("/token/admin", 200).await;
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    assert_eq!(env.mp.grants()[0].claims["scope"], ADMIN_SCOPE);
    assert_eq!(env.altinn.calls(), 0);
    let served = claims(body["access_token"].as_str().unwrap());
    assert_eq!(served["iss"], env.mp.issuer());
    assert_eq!(served["client_id"], CLIENT_ID);
    assert!(body["expires_in"].as_u64().unwrap() <= 120);
}

#[tokio::test]
async fn skd_uses_the_default_org_as_system_user() {
    let env = TestEnv::start(&format!("default_org: '{ORG}'\n")).await;
    let body = env.get_json("/token/skd", 200).await;
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    let grant = &env.mp.grants()[0].claims;
    assert_eq!(grant["scope"], SKD_SCOPE);
    assert_eq!(
        grant["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{ORG}")
    );
    assert_eq!(body["org"], ORG);
    assert_eq!(
        env.altinn.calls(),
        0,
        "Skatteetaten takes the Maskinporten token directly"
    );
    let other = env
        .get_json(&format!("/token/skd?org={OTHER_ORG}"), 200)
        .await;
    assert_eq!(other["org"], OTHER_ORG);
    assert_eq!(
        env.mp.grants()[1].claims["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{OTHER_ORG}")
    );
}

#[tokio::test]
async fn a_custom_profile_from_yaml_is_served() {
    let env = TestEnv::start(
        "profiles:\n  skattemelding:\n    scopes: [skatteetaten:formueinntekt/skattemelding, altinn:instances.read, altinn:instances.write]\n    system_user: required\n    exchange: none\n    externalRef: ref-42\n",
    )
    .await;
    let body = env
        .get_json(&format!("/token/skattemelding?org={ORG}"), 200)
        .await;
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    let grant = &env.mp.grants()[0].claims;
    assert_eq!(
        grant["scope"],
        "skatteetaten:formueinntekt/skattemelding altinn:instances.read altinn:instances.write"
    );
    assert_eq!(grant["authorization_details"][0]["externalRef"], "ref-42");
    assert_eq!(body["profile"], "skattemelding");
    assert_eq!(env.altinn.calls(), 0);
}

#[tokio::test]
async fn accept_text_plain_returns_the_bare_token() {
    let env = TestEnv::start("").await;
    let r = env
        .http
        .get(env.url("/token/admin"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let text = r.text().await.unwrap();
    assert_eq!(text.split('.').count(), 3, "a bare JWT, no JSON around it");
    assert_eq!(claims(&text)["client_id"], CLIENT_ID);
    let json = env.get_json("/token/admin", 200).await;
    assert_eq!(
        json["access_token"], text,
        "the same cached token either way"
    );
}

#[tokio::test]
async fn json_quoted_altinn_answers_are_unquoted() {
    let env = TestEnv::start("").await;
    env.altinn.answer_json_quoted(true);
    let body = env.get_json("/token/altinn", 200).await;
    let token = body["access_token"].as_str().unwrap();
    assert!(!token.contains('"'));
    assert!(claims(token)["exp"].as_u64().is_some());
}

#[tokio::test]
async fn the_listing_shows_profiles_scopes_and_flags_but_no_secrets() {
    let env = TestEnv::start("profiles:\n  custom:\n    scopes: [a:b]\n").await;
    let body = env.get_json("/token", 200).await;
    let profiles = body["profiles"].as_array().unwrap();
    let names: Vec<&str> = profiles
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "altinn", "consent", "custom", "skd"]);
    let altinn = &profiles[1];
    assert_eq!(
        altinn["scopes"],
        json!(["altinn:instances.read", "altinn:instances.write"])
    );
    assert_eq!(altinn["exchange"], "altinn");
    assert_eq!(altinn["system_user"], "optional");
    assert_eq!(profiles[4]["system_user"], "required");
    let text = body.to_string();
    assert!(!text.contains("PRIVATE") && !text.contains("MII"));
    assert_eq!(env.mp.calls(), 0);
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_make_one_upstream_call() {
    let env = TestEnv::start("").await;
    env.mp.script([Reply::Hang(Duration::from_millis(300))]);
    let requests = (0..50).map(|_| env.http.get(env.url("/token/altinn")).send());
    let responses = futures::future::join_all(requests).await;
    let mut tokens = std::collections::HashSet::new();
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(env.mp.calls(), 1);
    assert_eq!(env.altinn.calls(), 1);
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn tokens_are_cached_per_profile_and_org() {
    let env = TestEnv::start("").await;
    let a = env.get_json("/token/altinn", 200).await;
    let b = env.get_json("/token/altinn", 200).await;
    assert_eq!(a["access_token"], b["access_token"]);
    env.get_json(&format!("/token/altinn?org={ORG}"), 200).await;
    env.get_json("/token/admin", 200).await;
    assert_eq!(env.mp.calls(), 3);
}

#[tokio::test]
async fn a_token_asked_for_again_is_refreshed_in_the_background_before_it_expires() {
    // 3 s tokens; refresh when 1.5 s are left (min_remaining 1 s + floor 0.5 s).
    let env = TestEnv::start("cache:\n  min_remaining: 1s\n  refresh_floor: 500ms\n").await;
    env.mp.set_expires_in(3);
    let first = env.get_json("/token/admin", 200).await;
    assert_eq!(env.mp.calls(), 1);
    // In use: asked for again after it was fetched (a hit).
    let again = env.get_json("/token/admin", 200).await;
    assert_eq!(again["access_token"], first["access_token"]);
    // Bounded wait for the background refresh, with no request in between.
    let mut waited = Duration::ZERO;
    while env.mp.calls() < 2 && waited < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(env.mp.calls(), 2, "refreshed without a caller asking");
    assert!(
        waited >= Duration::from_millis(1000),
        "not before the refresh point: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2600),
        "before expiry: {waited:?}"
    );
    let second = env.get_json("/token/admin", 200).await;
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(
        env.mp.calls(),
        2,
        "the caller was served the refreshed token from the cache"
    );
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
}

#[tokio::test]
async fn every_grant_has_a_unique_jti() {
    let env = TestEnv::start("").await;
    for path in [
        "/token/admin",
        "/token/altinn",
        &format!("/token/altinn?org={ORG}"),
        &format!("/token/skd?org={ORG}"),
    ] {
        env.get_json(path, 200).await;
    }
    let jtis: std::collections::HashSet<String> = env
        .mp
        .grants()
        .iter()
        .map(|g| g.claims["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), 4);
    assert!(env.mp.violations().is_empty());
}
