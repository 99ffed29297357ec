//! The access-control matrix of a shared broker: API keys, allowed profiles and organisations.

use crate::support::*;
use maskinporten_broker::hash_api_key;

const KEY_A: &str = "key-of-app-a-0123456789";
const KEY_B: &str = "key-of-app-b-9876543210";

async fn shared() -> TestEnv {
    TestEnv::start(&format!(
        "clients:\n  - name: app-a\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: ['{ORG}']\n  - name: app-b\n    key_sha256: {}\n    profiles: ['*']\n",
        hash_api_key(KEY_A),
        hash_api_key(KEY_B)
    ))
    .await
}

async fn status(env: &TestEnv, path: &str, header: Credential) -> u16 {
    let mut req = env.http.get(env.url(path));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    if code != 200 {
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    code
}

/// An optional request header: name and value.
type Credential = Option<(&'static str, String)>;

fn bearer(key: &str) -> Credential {
    Some(("authorization", format!("Bearer {key}")))
}

#[tokio::test]
async fn the_access_matrix() {
    let env = shared().await;
    let org = format!("/token/altinn?org={ORG}");
    let other = format!("/token/altinn?org={OTHER_ORG}");
    let cases: Vec<(&str, Credential, u16)> = vec![
        ("/token/altinn", None, 401),
        ("/token/altinn", bearer("not-a-key"), 401),
        (
            "/token/altinn",
            Some(("authorization", format!("Basic {KEY_A}"))),
            401,
        ),
        ("/token", None, 401),
        ("/token/altinn", bearer(KEY_A), 200),
        ("/token/altinn", Some(("x-api-key", KEY_A.to_owned())), 200),
        ("/token/admin", bearer(KEY_A), 403),
        (&org, bearer(KEY_A), 200),
        (&other, bearer(KEY_A), 403),
        ("/token/admin", bearer(KEY_B), 200),
        ("/token", bearer(KEY_B), 200),
        (&org, bearer(KEY_B), 403),
        ("/healthz", None, 200),
        ("/readyz", None, 200),
    ];
    for (path, header, expected) in cases {
        let shown = header.as_ref().map(|(n, _)| *n);
        assert_eq!(
            status(&env, path, header.clone()).await,
            expected,
            "{path} with {shown:?}"
        );
    }
    assert_eq!(
        env.mp.calls(),
        3,
        "refused requests never reach Maskinporten"
    );
}

#[tokio::test]
async fn a_refused_key_is_not_echoed() {
    let env = shared().await;
    let r = env
        .http
        .get(env.url("/token/admin"))
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("app-a") && !body.contains(KEY_A), "{body}");
}

#[tokio::test]
async fn an_empty_key_header_does_not_hide_a_key_in_the_other() {
    let env = shared().await;
    let both = |api_key: &str, authorization: String| {
        env.http
            .get(env.url("/token/altinn"))
            .header("x-api-key", api_key)
            .header("authorization", authorization)
            .send()
    };
    assert_eq!(
        both("", format!("Bearer {KEY_A}")).await.unwrap().status(),
        200
    );
    assert_eq!(both(KEY_A, "Bearer ".into()).await.unwrap().status(), 200);
    assert_eq!(both(" ", "Bearer  ".into()).await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_401_says_how_to_authenticate() {
    let env = shared().await;
    for path in ["/token/altinn", "/token"] {
        let r = env.get(path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"maskinporten-broker\"",
            "{path}"
        );
    }
}

#[tokio::test]
async fn two_clients_with_the_same_key_refuse_to_start_naming_both() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml(
        &mp,
        &altinn,
        &format!(
            "clients:\n  - name: app-a\n    key_sha256: {0}\n    profiles: [altinn]\n  - name: app-b\n    key_sha256: {0}\n    profiles: ['*']\n",
            hash_api_key(KEY_A)
        ),
    );
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("clients[1].key_sha256: the same API key as clients[0]")
            && err.contains("\"app-a\"")
            && err.contains("\"app-b\""),
        "{err}"
    );
}

#[tokio::test]
async fn readyz_names_organisations_only_to_whom_may_ask_for_them() {
    let env = shared().await;
    let fetched = env
        .http
        .get(env.url(&format!("/token/altinn?org={ORG}")))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched = env
        .http
        .get(env.url("/token/admin"))
        .bearer_auth(KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let readyz = |key: Option<&'static str>| {
        let mut r = env.http.get(env.url("/readyz"));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    // Anyone: counts only.
    for key in [None, Some("not-a-key")] {
        let anonymous = readyz(key).await;
        assert_eq!(anonymous["cached_token_count"], 2, "{anonymous}");
        assert_eq!(anonymous["cached_tokens_per_profile"]["altinn"], 1);
        assert!(anonymous.get("cached_tokens").is_none(), "{anonymous}");
        assert!(!anonymous.to_string().contains(ORG), "{anonymous}");
    }
    // app-a: its own organisation's altinn token, not the admin token it may not use.
    let a = readyz(Some(KEY_A)).await;
    let listed = a["cached_tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{a}");
    assert_eq!(listed[0]["org"], ORG);
    // app-b: every profile, no organisations.
    let b = readyz(Some(KEY_B)).await;
    let listed = b["cached_tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{b}");
    assert_eq!(listed[0]["profile"], "admin");
}
