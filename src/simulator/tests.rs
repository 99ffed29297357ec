//! Specifications of the simulator, driven over HTTP with hand-made grants signed by the fixture
//! keys, the way the broker (or any Maskinporten client) would talk to it.

use std::time::Duration;

use jsonwebtoken::{Algorithm as Alg, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use rsa::pkcs8::DecodePublicKey;
use serde_json::{Value, json};

use super::*;

const CLIENT_PEM: &str = include_str!("../../tests/fixtures/client-key.pem");
const CLIENT_PUB: &str = include_str!("../../tests/fixtures/client-key.pub.pem");
const OTHER_PEM: &str = include_str!("../../tests/fixtures/other-key.pem");
const SIMULATOR_PEM: &str = include_str!("../../tests/fixtures/simulator-key.pem");
const CLIENT_ID: &str = "test-client";
const KID: &str = "client-kid";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const EXCHANGE: &str = "authentication/api/v1/exchange/maskinporten";

fn client_public() -> RsaPublicKey {
    RsaPublicKey::from_public_key_pem(CLIENT_PUB).expect("fixture public key")
}

fn client() -> RegisteredClient {
    RegisteredClient {
        client_id: CLIENT_ID.to_owned(),
        keys: vec![(KID.to_owned(), client_public())],
        scopes: vec!["altinn:broker.read".to_owned(), "skd:test".to_owned()],
    }
}

async fn simulator_with(mut config: SimulatorConfig) -> SimulatorHandle {
    config.signing_key.get_or_insert_with(|| {
        SigningKey::from_pem(SIMULATOR_PEM, "simulator-test", Algorithm::RS256).unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    start(config, listener).await.unwrap()
}

async fn simulator() -> SimulatorHandle {
    simulator_with(SimulatorConfig {
        clients: vec![client()],
        ..SimulatorConfig::default()
    })
    .await
}

/// A grant that passes every check.
fn grant_claims(sim: &SimulatorHandle) -> Value {
    let now = now_unix();
    json!({
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": sim.issuer(),
        "scope": "altinn:broker.read",
        "iat": now,
        "exp": now + 120,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn system_user(org_id: &str) -> Value {
    json!([{
        "type": "urn:altinn:systemuser",
        "systemuser_org": { "authority": "iso6523-actorid-upis", "ID": org_id },
    }])
}

fn sign_with(claims: &Value, pem: &str, kid: &str, alg: Alg) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn sign(claims: &Value) -> String {
    sign_with(claims, CLIENT_PEM, KID, Alg::RS256)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post_form(sim: &SimulatorHandle, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http()
        .post(sim.base_url().join("token").unwrap())
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn post_grant(sim: &SimulatorHandle, assertion: &str) -> (StatusCode, Value) {
    post_form(sim, &[("grant_type", JWT_BEARER), ("assertion", assertion)]).await
}

async fn assert_refused(sim: &SimulatorHandle, assertion: &str, error: &str, code: &str) {
    let (status, body) = post_grant(sim, assertion).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.ends_with(&format!("({code})")), "{body}");
}

/// Post a grant that must succeed and return the access token.
async fn access_token(sim: &SimulatorHandle, claims: &Value) -> String {
    let (status, body) = post_grant(sim, &sign(claims)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Verify a token's signature with the key its `kid` names in a JWKS, and return its claims.
fn verify_with_jwks(token: &str, jwks: &Value) -> Value {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is in the JWKS");
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Alg::RS256);
    validation.validate_aud = false;
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies against the JWKS")
        .claims
}

async fn exchange(sim: &SimulatorHandle, bearer: Option<&str>, accept: &str) -> reqwest::Response {
    let mut request = http()
        .get(sim.base_url().join(EXCHANGE).unwrap())
        .header("Accept", accept);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn assert_exchange_refused(sim: &SimulatorHandle, bearer: Option<&str>) {
    let response = exchange(sim, bearer, "text/plain").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.text().await.unwrap(), "");
}

// --- Maskinporten: success ---------------------------------------------------------------------

#[tokio::test]
async fn a_valid_grant_gets_a_bearer_token_that_verifies_against_the_published_jwks() {
    let sim = simulator().await;
    let (status, body) = post_grant(&sim, &sign(&grant_claims(&sim))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["scope"], "altinn:broker.read");
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["access_token", "expires_in", "scope", "token_type"]);

    let jwks: Value = http()
        .get(sim.base_url().join("jwk").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, sim.public_jwks());
    let claims = verify_with_jwks(body["access_token"].as_str().unwrap(), &jwks);
    assert_eq!(claims["iss"], sim.issuer());
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert_eq!(claims["scope"], "altinn:broker.read");
    assert_eq!(claims["token_type"], "Bearer");
    assert_eq!(claims["consumer"]["authority"], "iso6523-actorid-upis");
    assert_eq!(claims["consumer"]["ID"], "0192:991825827");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(claims.get("aud").is_none());
    assert!(claims.get("authorization_details").is_none());
}

#[tokio::test]
async fn expires_in_follows_the_configured_token_lifetime() {
    let sim = simulator_with(SimulatorConfig {
        token_lifetime: Duration::from_secs(7),
        clients: vec![client()],
        ..SimulatorConfig::default()
    })
    .await;
    let (status, body) = post_grant(&sim, &sign(&grant_claims(&sim))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 7);
    let claims = verify_with_jwks(body["access_token"].as_str().unwrap(), &sim.public_jwks());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7
    );
}

#[tokio::test]
async fn several_allowed_scopes_are_all_granted() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["scope"] = json!("altinn:broker.read skd:test");
    let (status, body) = post_grant(&sim, &sign(&claims)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "altinn:broker.read skd:test");
}

#[tokio::test]
async fn grants_signed_with_rs384_and_rs512_are_accepted() {
    let sim = simulator().await;
    for alg in [Alg::RS384, Alg::RS512] {
        let grant = sign_with(&grant_claims(&sim), CLIENT_PEM, KID, alg);
        let (status, body) = post_grant(&sim, &grant).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
    }
}

#[tokio::test]
async fn the_resource_becomes_the_access_token_audience() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["resource"] = json!("https://api.example.no/");
    let token = access_token(&sim, &claims).await;
    let claims = verify_with_jwks(&token, &sim.public_jwks());
    assert_eq!(claims["aud"], "https://api.example.no/");
}

#[tokio::test]
async fn a_system_user_grant_yields_system_user_claims() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["authorization_details"] = json!([{
        "type": "urn:altinn:systemuser",
        "systemuser_org": { "authority": "iso6523-actorid-upis", "ID": "0192:974761076" },
        "externalRef": "ref-1",
    }]);
    let first = verify_with_jwks(&access_token(&sim, &claims).await, &sim.public_jwks());
    let detail = &first["authorization_details"][0];
    assert_eq!(detail["type"], "urn:altinn:systemuser");
    assert_eq!(
        detail["systemuser_org"]["authority"],
        "iso6523-actorid-upis"
    );
    assert_eq!(detail["systemuser_org"]["ID"], "0192:974761076");
    assert_eq!(detail["externalRef"], "ref-1");
    let id = detail["systemuser_id"][0].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    // The same system user again (new jti) has the same id; another organisation has another.
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let again = verify_with_jwks(&access_token(&sim, &claims).await, &sim.public_jwks());
    assert_eq!(again["authorization_details"][0]["systemuser_id"][0], id);
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    claims["authorization_details"][0]["systemuser_org"]["ID"] = json!("0192:991825827");
    let other = verify_with_jwks(&access_token(&sim, &claims).await, &sim.public_jwks());
    assert_ne!(other["authorization_details"][0]["systemuser_id"][0], id);
}

#[tokio::test]
async fn metadata_names_the_issuer_the_token_endpoint_and_the_jwks_uri() {
    let sim = simulator().await;
    let metadata: Value = http()
        .get(
            sim.base_url()
                .join(".well-known/oauth-authorization-server")
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = sim.base_url().as_str();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with('/'));
    assert_eq!(metadata["issuer"], base);
    assert_eq!(metadata["token_endpoint"], format!("{base}token"));
    assert_eq!(metadata["jwks_uri"], format!("{base}jwk"));
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(metadata["grant_types_supported"], json!([JWT_BEARER]));
    assert_eq!(
        metadata["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS256", "RS384", "RS512"])
    );
}

#[tokio::test]
async fn a_rotated_key_replaces_the_old_one() {
    let sim = simulator().await;
    let other_public = SigningKey::from_pem(OTHER_PEM, "x", Algorithm::RS256)
        .unwrap()
        .public_key();
    sim.register_client(RegisteredClient {
        keys: vec![("new-kid".to_owned(), other_public)],
        ..client()
    });
    let new = sign_with(&grant_claims(&sim), OTHER_PEM, "new-kid", Alg::RS256);
    let (status, body) = post_grant(&sim, &new).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(&sim, &sign(&grant_claims(&sim)), "invalid_grant", "MP-124").await;
}

// --- Maskinporten: refusals --------------------------------------------------------------------

#[tokio::test]
async fn a_grant_signed_with_another_key_is_refused_with_mp_124() {
    let sim = simulator().await;
    let grant = sign_with(&grant_claims(&sim), OTHER_PEM, KID, Alg::RS256);
    assert_refused(&sim, &grant, "invalid_grant", "MP-124").await;
}

#[tokio::test]
async fn an_unknown_kid_is_refused_with_mp_124() {
    let sim = simulator().await;
    let grant = sign_with(
        &grant_claims(&sim),
        CLIENT_PEM,
        "not-registered",
        Alg::RS256,
    );
    assert_refused(&sim, &grant, "invalid_grant", "MP-124").await;
}

#[tokio::test]
async fn an_unknown_client_is_refused_with_mp_100() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["iss"] = json!("someone-else");
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-100").await;
}

#[tokio::test]
async fn the_token_endpoint_as_aud_is_refused_with_mp_110() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["aud"] = json!(format!("{}token", sim.issuer()));
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-110").await;
}

#[tokio::test]
async fn the_issuer_without_its_trailing_slash_is_refused_with_mp_110() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["aud"] = json!(sim.issuer().trim_end_matches('/'));
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-110").await;
}

#[tokio::test]
async fn an_iat_60_seconds_old_is_refused_with_mp_130() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let now = now_unix();
    claims["iat"] = json!(now - 60);
    claims["exp"] = json!(now + 60);
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-130").await;
}

#[tokio::test]
async fn a_grant_living_300_seconds_is_refused_with_mp_130() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() + 300);
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-130").await;
}

#[tokio::test]
async fn an_expired_grant_is_refused_with_mp_130() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let now = now_unix();
    claims["iat"] = json!(now - 8);
    claims["exp"] = json!(now - 1);
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-130").await;
}

#[tokio::test]
async fn an_exp_before_iat_is_refused_with_mp_130() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let now = now_unix();
    claims["iat"] = json!(now + 8);
    claims["exp"] = json!(now + 5);
    assert_refused(&sim, &sign(&claims), "invalid_grant", "MP-130").await;
}

#[tokio::test]
async fn a_missing_grant_type_is_refused_with_mp_011() {
    let sim = simulator().await;
    let grant = sign(&grant_claims(&sim));
    let (status, body) = post_form(&sim, &[("assertion", &grant)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request", "{body}");
}

#[tokio::test]
async fn a_reused_jti_is_refused_with_mp_012() {
    let sim = simulator().await;
    let grant = sign(&grant_claims(&sim));
    let (status, body) = post_grant(&sim, &grant).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_refused(&sim, &grant, "invalid_request", "MP-012").await;
}

#[tokio::test]
async fn a_scope_not_registered_on_the_client_is_refused_with_mp_200() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["scope"] = json!("altinn:broker.read altinn:not-mine");
    assert_refused(&sim, &sign(&claims), "invalid_scope", "MP-200").await;
}

#[tokio::test]
async fn an_empty_scope_is_refused_with_mp_200() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["scope"] = json!(" ");
    assert_refused(&sim, &sign(&claims), "invalid_scope", "MP-200").await;
}

#[tokio::test]
async fn authorization_details_of_another_type_is_refused_with_mp_301() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let mut details = system_user("0192:974761076");
    details[0]["type"] = json!("urn:altinn:resource");
    claims["authorization_details"] = details;
    assert_refused(
        &sim,
        &sign(&claims),
        "invalid_authorization_details",
        "MP-301",
    )
    .await;
}

#[tokio::test]
async fn authorization_details_with_two_entries_is_refused_with_mp_301() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let one = system_user("0192:974761076")[0].clone();
    claims["authorization_details"] = json!([one.clone(), one]);
    assert_refused(
        &sim,
        &sign(&claims),
        "invalid_authorization_details",
        "MP-301",
    )
    .await;
}

#[tokio::test]
async fn authorization_details_with_an_unknown_field_is_refused_with_mp_302() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    let mut details = system_user("0192:974761076");
    details[0]["systemuser_id"] = json!("guessed");
    claims["authorization_details"] = details;
    assert_refused(
        &sim,
        &sign(&claims),
        "invalid_authorization_details",
        "MP-302",
    )
    .await;
}

#[tokio::test]
async fn a_system_user_org_with_a_bad_check_digit_is_refused_with_mp_303() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["authorization_details"] = system_user("0192:974761077");
    assert_refused(
        &sim,
        &sign(&claims),
        "invalid_authorization_details",
        "MP-303",
    )
    .await;
}

#[tokio::test]
async fn a_system_user_org_without_the_0192_prefix_is_refused_with_mp_303() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["authorization_details"] = system_user("974761076");
    assert_refused(
        &sim,
        &sign(&claims),
        "invalid_authorization_details",
        "MP-303",
    )
    .await;
}

#[tokio::test]
async fn another_grant_type_is_refused_as_unsupported() {
    let sim = simulator().await;
    let grant = sign(&grant_claims(&sim));
    let (status, body) = post_form(
        &sim,
        &[("grant_type", "client_credentials"), ("assertion", &grant)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");
}

#[tokio::test]
async fn a_missing_assertion_is_refused_with_mp_011() {
    let sim = simulator().await;
    let (status, body) = post_form(&sim, &[("grant_type", JWT_BEARER)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .ends_with("(MP-011)")
    );
}

#[tokio::test]
async fn a_grant_with_a_symmetric_alg_is_refused_with_mp_011() {
    let sim = simulator().await;
    let mut header = Header::new(Alg::HS256);
    header.kid = Some(KID.to_owned());
    let grant = jsonwebtoken::encode(
        &header,
        &grant_claims(&sim),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_refused(&sim, &grant, "invalid_request", "MP-011").await;
}

#[tokio::test]
async fn a_grant_without_kid_is_refused_with_mp_011() {
    let sim = simulator().await;
    let grant = jsonwebtoken::encode(
        &Header::new(Alg::RS256),
        &grant_claims(&sim),
        &EncodingKey::from_rsa_pem(CLIENT_PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_refused(&sim, &grant, "invalid_request", "MP-011").await;
}

// --- Altinn exchange ---------------------------------------------------------------------------

#[tokio::test]
async fn the_exchange_returns_a_30_minute_altinn_token_as_raw_text() {
    let sim = simulator().await;
    let token = access_token(&sim, &grant_claims(&sim)).await;
    let response = exchange(&sim, Some(&token), "text/plain").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let altinn = response.text().await.unwrap();
    assert_eq!(altinn.split('.').count(), 3, "{altinn}");
    let claims = verify_with_jwks(&altinn, &sim.public_jwks());
    assert!((claims["exp"].as_i64().unwrap() - (now_unix() + 1800)).abs() <= 5);
    assert_eq!(
        claims["iss"],
        format!("{}authentication/api/v1/openid/", sim.issuer())
    );
    assert_eq!(claims["scope"], "altinn:broker.read");
    assert_eq!(claims["client_id"], CLIENT_ID);
    assert_eq!(claims["urn:altinn:orgNumber"], "991825827");
}

#[tokio::test]
async fn the_exchange_returns_a_json_quoted_token_when_json_is_accepted() {
    let sim = simulator().await;
    let token = access_token(&sim, &grant_claims(&sim)).await;
    let response = exchange(&sim, Some(&token), "application/json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    assert!(body.starts_with('"') && body.ends_with('"'), "{body}");
    let altinn: String = serde_json::from_str(&body).unwrap();
    let claims = verify_with_jwks(&altinn, &sim.public_jwks());
    assert!((claims["exp"].as_i64().unwrap() - (now_unix() + 1800)).abs() <= 5);
}

#[tokio::test]
async fn the_exchange_carries_the_system_user() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["authorization_details"] = system_user("0192:974761076");
    let token = access_token(&sim, &claims).await;
    let response = exchange(&sim, Some(&token), "text/plain").await;
    assert_eq!(response.status(), StatusCode::OK);
    let altinn = verify_with_jwks(&response.text().await.unwrap(), &sim.public_jwks());
    let detail = &altinn["authorization_details"][0];
    assert_eq!(detail["systemuser_org"]["ID"], "0192:974761076");
    assert!(detail["systemuser_id"][0].is_string());
}

#[tokio::test]
async fn the_exchange_of_a_garbage_token_is_401_with_an_empty_body() {
    let sim = simulator().await;
    assert_exchange_refused(&sim, Some("not.a.token")).await;
}

#[tokio::test]
async fn the_exchange_without_a_token_is_401_with_an_empty_body() {
    let sim = simulator().await;
    assert_exchange_refused(&sim, None).await;
}

#[tokio::test]
async fn the_exchange_of_an_expired_token_is_401() {
    let sim = simulator().await;
    let now = now_unix();
    let expired = sim
        .world
        .sign(&json!({
            "iss": sim.issuer(), "client_id": CLIENT_ID, "scope": "altinn:broker.read",
            "iat": now - 130, "exp": now - 10,
        }))
        .unwrap();
    assert_exchange_refused(&sim, Some(&expired)).await;
}

#[tokio::test]
async fn the_exchange_of_a_token_signed_by_someone_else_is_401() {
    let sim = simulator().await;
    let now = now_unix();
    let claims = json!({
        "iss": sim.issuer(), "client_id": CLIENT_ID, "scope": "altinn:broker.read",
        "iat": now, "exp": now + 120,
    });
    let kid = sim.world.key.kid().unwrap_or_default().to_owned();
    assert_exchange_refused(&sim, Some(&sign_with(&claims, OTHER_PEM, &kid, Alg::RS256))).await;
}

#[tokio::test]
async fn the_exchange_of_a_token_from_another_issuer_is_401() {
    let sim = simulator().await;
    let now = now_unix();
    let foreign = sim
        .world
        .sign(&json!({
            "iss": "https://test.maskinporten.no/", "client_id": CLIENT_ID,
            "scope": "altinn:broker.read", "iat": now, "exp": now + 120,
        }))
        .unwrap();
    assert_exchange_refused(&sim, Some(&foreign)).await;
}

#[tokio::test]
async fn the_exchange_refuses_an_altinn_token_in_place_of_a_maskinporten_token() {
    let sim = simulator().await;
    let token = access_token(&sim, &grant_claims(&sim)).await;
    let altinn = exchange(&sim, Some(&token), "text/plain")
        .await
        .text()
        .await
        .unwrap();
    assert_exchange_refused(&sim, Some(&altinn)).await;
}

// --- Altinn-like API (for the egress proxy) -------------------------------------------------

async fn whoami(sim: &SimulatorHandle, bearer: &str) -> reqwest::Response {
    http()
        .get(sim.base_url().join("storage/api/v1/whoami").unwrap())
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn whoami_says_who_an_altinn_token_belongs_to() {
    let sim = simulator().await;
    let mut claims = grant_claims(&sim);
    claims["authorization_details"] = system_user("0192:974761076");
    let token = access_token(&sim, &claims).await;
    let altinn = exchange(&sim, Some(&token), "text/plain")
        .await
        .text()
        .await
        .unwrap();
    let response = whoami(&sim, &altinn).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["client_id"], CLIENT_ID);
    assert_eq!(body["scope"], "altinn:broker.read");
    assert_eq!(body["system_user_org"], "974761076");
    assert!(body["expires_at"].as_i64().unwrap() > now_unix());
}

#[tokio::test]
async fn whoami_refuses_maskinporten_expired_and_foreign_tokens_like_altinn() {
    let sim = simulator().await;
    let maskinporten = access_token(&sim, &grant_claims(&sim)).await;
    let now = now_unix();
    let issuer = sim
        .base_url()
        .join("authentication/api/v1/openid/")
        .unwrap();
    let expired = sim
        .world
        .sign(&json!({"iss": issuer.as_str(), "iat": now - 100, "exp": now - 1}))
        .unwrap();
    let claims = json!({"iss": issuer.as_str(), "iat": now, "exp": now + 100});
    let kid = sim.world.key.kid().unwrap_or_default().to_owned();
    let foreign = sign_with(&claims, OTHER_PEM, &kid, Alg::RS256);
    for token in [maskinporten.as_str(), &expired, &foreign, "garbage"] {
        let response = whoami(&sim, token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert_eq!(response.text().await.unwrap(), "");
    }
}

// --- Lifecycle ---------------------------------------------------------------------------------

#[tokio::test]
async fn after_shutdown_the_simulator_no_longer_answers() {
    let sim = simulator().await;
    let url = sim.base_url().join("jwk").unwrap();
    assert!(
        http()
            .get(url.clone())
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    sim.shutdown().await;
    assert!(http().get(url).send().await.is_err());
}
