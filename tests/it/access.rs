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
