//! Nothing secret in the logs: the whole request matrix at `trace` level, then a search of the
//! captured output for every token, grant, key line and API key involved.

use std::sync::Arc;

use crate::support::*;
use maskinporten_broker::hash_api_key;
use serde_json::Value;

const API_KEY: &str = "very-secret-api-key-123456";

#[tokio::test]
async fn no_secret_appears_in_trace_logs() {
    let capture = LogCapture::start(tracing::Level::TRACE);

    // An upstream for the proxy that refuses the first token (the 401 retry path) and then accepts.
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = serve(axum::Router::new().fallback(move || {
        let first = !refused.swap(true, std::sync::atomic::Ordering::SeqCst);
        async move {
            match first {
                true => axum::http::StatusCode::UNAUTHORIZED,
                false => axum::http::StatusCode::OK,
            }
        }
    }))
    .await;
    let env = TestEnv::start(&format!(
        "default_org: '{ORG}'\non_demand:\n  scopes: ['altinn:*']\nclients:\n  - name: app\n    key_sha256: {}\n    profiles: ['*']\n    orgs: ['{ORG}']\n    scopes: ['*']\nhttp_client:\n  timeout: 300ms\nproxy:\n  p:\n    upstream: http://{upstream}/\n    profile: admin\n  dead:\n    upstream: http://127.0.0.1:9/\n    profile: admin\n",
        hash_api_key(API_KEY)
    ))
    .await;
    let mut served = Vec::new();
    let get = |path: String, accept: &'static str| {
        env.http
            .get(env.url(&path))
            .header("authorization", format!("Bearer {API_KEY}"))
            .header("accept", accept)
            .send()
    };
    for path in [
        "/token/altinn".to_owned(),
        "/token/admin".into(),
        "/token/skd".into(),
        format!("/token/altinn?org={ORG}"),
    ] {
        let body: Value = get(path.clone(), "application/json")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        served.push(body["access_token"].as_str().expect(&path).to_owned());
        served.push(get(path, "text/plain").await.unwrap().text().await.unwrap());
    }
    // On-demand tokens: GET /token?scope= (JSON and bare) and texas's POST /api/v1/token.
    for path in [
        "/token?scope=altinn:on-demand.read".to_owned(),
        format!("/token?scope=altinn:on-demand.write&org={ORG}&exchange=altinn"),
    ] {
        let body: Value = get(path.clone(), "application/json")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        served.push(body["access_token"].as_str().expect(&path).to_owned());
    }
    let texas: Value = env
        .http
        .post(env.url("/api/v1/token"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .json(&serde_json::json!({"identity_provider": "maskinporten", "target": "altinn:texas.read", "skip_cache": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    served.push(
        texas["access_token"]
            .as_str()
            .expect("texas token")
            .to_owned(),
    );
    for path in [
        "/proxy/p/x",
        "/proxy/p/y?org=1",
        "/proxy/dead/x",
        "/proxy/p/%2e%2e/x",
    ] {
        get(path.into(), "application/json").await.unwrap();
    }
    // The proxy replaced the rejected admin token: the fresh one must not leak either.
    let fresh: Value = get("/token/admin".into(), "application/json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    served.push(fresh["access_token"].as_str().unwrap().to_owned());
    for path in [
        "/token/nope",
        "/token/altinn?org=123",
        "/token",
        "/readyz",
        "/healthz",
    ] {
        get(path.into(), "application/json").await.unwrap();
    }
    env.mp.always(Reply::Refuse(
        "invalid_grant",
        "Invalid JWT signature (MP-124)",
    ));
    get(format!("/token/skd?org={OTHER_ORG}"), "application/json")
        .await
        .unwrap();
    env.mp
        .always(Reply::Hang(std::time::Duration::from_secs(5)));
    get(format!("/token/altinn?org={OTHER_ORG}"), "application/json")
        .await
        .unwrap();
    env.http
        .get(env.url("/token/admin"))
        .header("x-api-key", "wrong-key-987654321")
        .send()
        .await
        .unwrap();

    let logs = capture.text();
    assert!(
        logs.contains("token served") && logs.contains("TRACE"),
        "trace output was captured"
    );
    assert!(
        logs.contains("sending once more") && logs.contains("proxy request failed"),
        "the proxy's retry and failure lines were captured"
    );
    let mut secrets: Vec<String> = served;
    secrets.extend(env.mp.grants().into_iter().map(|g| g.raw));
    secrets.push(API_KEY.into());
    secrets.push("wrong-key-987654321".into());
    let pem = std::fs::read_to_string(fixture("client-key.pem")).unwrap();
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned),
    );
    assert!(secrets.len() > 20);
    for secret in &secrets {
        // Any 24-character window of a secret (signatures, payloads, key lines) must not appear.
        let chars: Vec<char> = secret.chars().collect();
        for window in chars.windows(24).step_by(8) {
            let needle: String = window.iter().collect();
            // JWT headers are public and shared by all tokens; skip the first segment.
            if secret.starts_with("eyJ") && secret.split('.').next().unwrap().contains(&needle) {
                continue;
            }
            assert!(
                !logs.contains(&needle),
                "a secret fragment {needle:?} appeared in the logs"
            );
        }
    }
}
