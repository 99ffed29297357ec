//! `POST /api/v1/introspect`, texas-compatible: always 200 with `active`, texas's error strings,
//! 400 `invalid_request` for a bad body; Maskinporten tokens checked against `{issuer}jwk`, Altinn
//! tokens against Altinn's JWKS (standard base64 `n`/`e`); `env: local` validates its own tokens;
//! only `introspect: true` clients when clients are configured.

use serde_json::{Value, json};

use crate::oidc::*;
use crate::support::*;

pub(crate) async fn introspect(
    http: &reqwest::Client,
    base: &str,
    provider: &str,
    token: &str,
) -> Value {
    let r = http
        .post(format!("{base}/api/v1/introspect"))
        .json(&json!({"identity_provider": provider, "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn env_local_validates_its_own_maskinporten_and_altinn_tokens() {
    let settings = maskinporten_broker::config::Settings::from_yaml("env: local\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let token = |path: &'static str| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let body: Value = fetch_json(&http, &url).await;
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let admin = token("/token/admin").await;
    let altinn = token("/token/altinn").await;

    let mp = introspect(&http, &base, "maskinporten", &admin).await;
    assert_eq!(mp["active"], true, "{mp}");
    assert_eq!(mp["scope"], claims(&admin)["scope"]);
    assert!(mp["consumer"]["ID"].as_str().unwrap().starts_with("0192:"));
    // Altinn's JWKS writes n/e in standard base64 with padding.
    let a = introspect(&http, &base, "altinn", &altinn).await;
    assert_eq!(a["active"], true, "{a}");
    assert!(
        a["iss"]
            .as_str()
            .unwrap()
            .ends_with("/authentication/api/v1/openid/")
    );
    // Each provider's issuer is checked, though one key signs both here.
    let crossed = introspect(&http, &base, "altinn", &admin).await;
    assert_eq!(
        crossed,
        json!({"active": false, "error": "invalid token: InvalidIssuer"})
    );
    let other = introspect(&http, &base, "azuread", &admin).await;
    assert_eq!(
        other,
        json!({"active": false, "error": "identity provider 'azuread' is not enabled"})
    );
    app.shutdown().await;
}

/// A broker whose Maskinporten issuer is `issuer` (no token is fetched in these tests).
async fn broker_for(issuer: &FakeIssuer, extra: &str) -> maskinporten_broker::app::App {
    let yaml = format!(
        "env: test\nclient_id: {CLIENT_ID}\nkid: {KID}\nkey:\n  path: {}\nendpoints:\n  issuer: {}/\n  token_url: {}/token\n  discovery: false\n{extra}",
        fixture("client-key.pem"),
        issuer.issuer(),
        issuer.issuer(),
    );
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap()
}

fn maskinporten_claims(iss: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": iss, "client_id": "abc", "client_amr": "private_key_jwt",
        "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"},
        "scope": "test:read test:write", "token_type": "Bearer",
        "iat": now, "exp": now + 120, "jti": "j1",
    })
}

#[tokio::test]
async fn refusals_use_texas_error_strings_and_a_bad_body_is_400() {
    let key = TestKey::generate("mp-key");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let app = broker_for(&issuer, "").await;
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let iss = format!("{}/", issuer.issuer());
    let good = maskinporten_claims(&iss);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    assert_eq!(issuer.jwks_reads(), 0, "read on first use");
    let now = now_secs();
    let no_kid = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &good,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            key.sign(&with("exp", json!(now - 300))),
            "invalid token: ExpiredSignature",
        ),
        (
            key.sign(&with("iss", json!("https://evil.example/"))),
            "invalid token: InvalidIssuer",
        ),
        (no_kid, "missing key id from token header"),
        (
            TestKey {
                kid: "other".into(),
                ..key.clone()
            }
            .sign(&good),
            "token can not be validated with this identity provider",
        ),
        (
            tampered(&key.sign(&good), &with("scope", json!("admin"))),
            "invalid token: InvalidSignature",
        ),
        (
            unsigned(&json!({"alg": "none", "kid": "mp-key"}), &good),
            "invalid token header: algorithm none is not allowed",
        ),
    ];
    for (token, error) in cases {
        let answer = introspect(&http, &base, "maskinporten", &token).await;
        assert_eq!(answer, json!({"active": false, "error": error}));
    }
    let valid = key.sign(&good);
    let answer = introspect(&http, &base, "maskinporten", &valid).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["scope"], "test:read test:write");
    // The same as a form.
    let r = http
        .post(format!("{base}/api/v1/introspect"))
        .form(&[
            ("identity_provider", "maskinporten"),
            ("token", valid.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);
    // Unknown kids: the keys were read once on first use, and once more for the unknown kid.
    assert_eq!(issuer.jwks_reads(), 1);
    for i in 0..50 {
        let t = TestKey {
            kid: format!("k{i}"),
            ..key.clone()
        }
        .sign(&good);
        let answer = introspect(&http, &base, "maskinporten", &t).await;
        assert_eq!(answer["active"], false);
    }
    assert_eq!(issuer.jwks_reads(), 1, "no re-read within 10 s");

    for (body, content_type) in [
        ("{\"token\": \"x\"}", "application/json"),
        ("not json", "application/json"),
        (
            "identity_provider=maskinporten",
            "application/x-www-form-urlencoded",
        ),
        ("{}", "text/plain"),
    ] {
        let r = http
            .post(format!("{base}/api/v1/introspect"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{answer}");
        assert!(
            answer["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn audience_and_scopes_narrow_what_is_active_and_only_introspect_clients_may_ask() {
    let key = TestKey::generate("mp-key");
    let issuer = FakeIssuer::start(vec![key.clone()]).await;
    let extra = format!(
        "introspection:\n  audience: https://api.example.no\n  scopes: ['test:write']\nclients:\n  - name: api\n    key_sha256: {}\n    profiles: []\n    introspect: true\n  - name: app\n    key_sha256: {}\n    profiles: ['*']\n",
        maskinporten_broker::hash_api_key("api-key"),
        maskinporten_broker::hash_api_key("app-key"),
    );
    // `profiles: []` is refused; give the API client a profile list it does not use.
    let extra = extra.replace("profiles: []", "profiles: [admin]");
    let app = broker_for(&issuer, &extra).await;
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let iss = format!("{}/", issuer.issuer());
    let mut claims = maskinporten_claims(&iss);
    claims["aud"] = json!("https://api.example.no");
    let ask = |key: &'static str, token: String| {
        let http = http.clone();
        let url = format!("{base}/api/v1/introspect");
        async move {
            http.post(url)
                .header("x-api-key", key)
                .json(&json!({"identity_provider": "maskinporten", "token": token}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = ask("api-key", key.sign(&claims)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);
    let mut other_aud = claims.clone();
    other_aud["aud"] = json!("https://other.example.no");
    let r = ask("api-key", key.sign(&other_aud)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"active": false, "error": "invalid token: InvalidAudience"})
    );
    let mut read_only = claims.clone();
    read_only["scope"] = json!("test:read");
    let r = ask("api-key", key.sign(&read_only)).await;
    assert_eq!(r.json::<Value>().await.unwrap()["active"], false);

    let r = ask("app-key", key.sign(&claims)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let r = ask("no-such-key", key.sign(&claims)).await;
    assert_eq!(r.status(), 401);
    app.shutdown().await;
}
