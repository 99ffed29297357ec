//! Security round 3 (#27): each defect a hostile tester found, tried black-box.

use serde_json::json;

use crate::support::*;
use maskinporten_broker::hash_api_key;

const KEY_A: &str = "security3-key-a-0123456789";
const KEY_B: &str = "security3-key-b-0123456789";
const ADMIN_SCOPE: &str = "altinn:authentication/systemregister.write";

/// GET `path` with the API key `key`; the status.
async fn status_with_key(env: &TestEnv, path: &str, key: &str) -> u16 {
    env.http
        .get(env.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_client_without_scopes_gets_no_on_demand_scope_and_star_means_all_on_demand_allows() {
    let logs = LogCapture::start(tracing::Level::WARN);
    let env = TestEnv::start(&format!(
        "on_demand:\n  scopes: ['altinn:*']\nclients:\n  - name: no-scopes\n    key_sha256: {}\n    profiles: [altinn]\n    onboarding: true\n  - name: all-scopes\n    key_sha256: {}\n    profiles: [altinn]\n    scopes: ['*']\n",
        hash_api_key(KEY_A),
        hash_api_key(KEY_B)
    ))
    .await;
    let log = logs.text();
    assert_eq!(
        log.matches("no on-demand scopes").count(),
        1,
        "one warning, for the client without scopes: {log}"
    );
    assert!(log.contains("no-scopes"), "{log}");
    for path in [
        format!("/token?scope={ADMIN_SCOPE}"),
        format!("/token/on-demand?scope={ADMIN_SCOPE}"),
    ] {
        assert_eq!(status_with_key(&env, &path, KEY_A).await, 403, "{path}");
    }
    let r = env
        .http
        .post(env.url("/api/v1/token"))
        .header("x-api-key", KEY_A)
        .json(&json!({"identity_provider": "maskinporten", "target": ADMIN_SCOPE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(env.mp.calls(), 0, "refused before Maskinporten");
    // `scopes: ['*']`: everything on_demand.scopes allows, and nothing more.
    assert_eq!(
        status_with_key(&env, "/token?scope=altinn:instances.read", KEY_B).await,
        200
    );
    assert_eq!(
        status_with_key(&env, "/token?scope=other:thing", KEY_B).await,
        403
    );
}

#[tokio::test]
async fn two_clients_with_one_identity_are_refused_at_start_naming_both() {
    for identity in [
        "{issuer: k8s, subject: 'system:serviceaccount:a:b'}",
        "{spiffe_id: 'spiffe://example.org/a'}",
        "{certificate_subject: 'CN=a,O=Example'}",
    ] {
        let second = identity.replace("CN=a,O=Example", "o=Example, cn=a");
        let yaml = format!(
            "env: local\nidentity:\n  issuers:\n    k8s:\n      issuer: https://k8s.example\n      jwks_uri: https://k8s.example/jwks\n      audience: broker\nclients:\n  - name: first\n    identity: {identity}\n    profiles: ['*']\n  - name: second\n    identity: {second}\n    profiles: ['*']\n"
        );
        let problems = maskinporten_broker::config::Settings::from_yaml(&yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("clients[1].identity: the same identity as clients[0]")
                && problems.contains("\"first\"")
                && problems.contains("\"second\""),
            "{identity}: {problems}"
        );
    }
}

/// A loopback listener that counts the connections made to it (and answers none).
async fn counting_listener() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_environments_proxy_variables_get_nothing_not_even_the_vault_token() {
    let (proxy, seen) = counting_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, "hvs.not-for-the-proxy").unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "env: test\nclient_id: c\nkid: k\nkey:\n  vault_transit:\n    address: http://127.0.0.1:{}/\n    name: mp\n    token_file: {}\n",
            free_port(),
            token_file.display()
        ),
    )
    .unwrap();
    let proxy_url = format!("http://{proxy}");
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .envs(
            [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ]
            .map(|name| (name, proxy_url.as_str())),
        )
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "Vault is not there: check fails ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy of the environment was used: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Authorization headers (or "none") seen by a JWKS on its own origin.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A JWKS at `http://127.0.0.1:PORT/jwks` that records the Authorization it gets.
async fn recording_jwks() -> (String, Seen) {
    let seen: Seen = Default::default();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none");
                record.lock().unwrap().push(auth.to_owned());
                axum::Json(json!({"keys": []}))
            }
        }),
    );
    (format!("http://{}/jwks", serve(router).await), seen)
}

/// An issuer whose discovery document says `issuer` (`None`: its own base) and `jwks_uri`.
async fn discovering_issuer(issuer: Option<String>, jwks_uri: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let named = issuer.unwrap_or_else(|| base.clone());
    let router = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let doc = json!({"issuer": named, "jwks_uri": jwks_uri});
            async move { axum::Json(doc) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn issuer_yaml(issuer: &str, token_file: &std::path::Path) -> String {
    format!(
        "identity:\n  issuers:\n    k8s:\n      issuer: {issuer}\n      audience: broker\n      bearer_token_file: {}\n",
        token_file.display()
    )
}

#[tokio::test]
async fn the_jwks_bearer_token_goes_only_to_the_issuers_origin_and_a_foreign_issuer_is_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, "the-pods-own-token").unwrap();
    // A discovered jwks_uri on another origin is read, without the token.
    let (elsewhere, seen) = recording_jwks().await;
    let issuer = discovering_issuer(None, elsewhere).await;
    let env = TestEnv::start(&issuer_yaml(&issuer, &token_file)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["none"],
        "read once, without the token"
    );
    env.app.shutdown().await;

    // A discovery document naming another issuer: not trusted, a line naming both.
    let logs = LogCapture::start(tracing::Level::WARN);
    let (jwks, seen) = recording_jwks().await;
    let issuer = discovering_issuer(Some("https://evil.example".into()), jwks).await;
    let env = TestEnv::start(&issuer_yaml(&issuer, &token_file)).await;
    let log = logs.text();
    assert!(
        log.contains(&format!("{issuer:?}")) && log.contains("\"https://evil.example\""),
        "{log}"
    );
    assert!(seen.lock().unwrap().is_empty(), "its JWKS is never read");
    env.app.shutdown().await;
}

/// An upstream that answers 200 and then streams a body that does not end (64 KiB every 10 ms,
/// for at most 20 s).
async fn endless_upstream() -> String {
    use futures::StreamExt;
    let router = axum::Router::new().fallback(|| async {
        let chunks = futures::stream::iter(0..2000).then(|_| async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b' '; 64 * 1024]))
        });
        (
            [("content-type", "application/json")],
            axum::body::Body::from_stream(chunks),
        )
    });
    format!("http://{}/endless", serve(router).await)
}

#[tokio::test]
async fn an_endless_answer_from_maskinporten_or_altinn_is_a_502_naming_it_and_the_limit() {
    let endless = endless_upstream().await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml(&mp, &altinn, "http_client:\n  timeout: 4s\n")
        .replace(&mp.token_url(), &endless);
    let env = TestEnv::start_settings(
        mp,
        altinn,
        maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap(),
    )
    .await;
    let p = env.problem("/token/admin", 502).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("Maskinporten") && detail.contains("1 MiB"),
        "{p}"
    );
    env.app.shutdown().await;

    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml(&mp, &altinn, "http_client:\n  timeout: 4s\n")
        .replace(&altinn.exchange_url(), &endless);
    let env = TestEnv::start_settings(
        mp,
        altinn,
        maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap(),
    )
    .await;
    let p = env.problem("/token/altinn", 502).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("Altinn") && detail.contains("1 MiB"), "{p}");
}

#[tokio::test]
async fn an_endless_answer_from_vault_is_refused_naming_the_limit() {
    let endless = endless_upstream().await.replace("/endless", "/");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, "hvs.x").unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "env: test\nclient_id: c\nkid: k\nkey:\n  vault_transit:\n    address: {endless}\n    name: mp\n    token_file: {}\n",
            token_file.display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("1 MiB"), "{err}");
}

/// `name` in `dir` holding `text`, with `mode`.
fn secret_file(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[tokio::test]
async fn secret_files_readable_by_others_are_warned_about_naming_file_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let password = std::fs::read_to_string(fixture("business-legacy.password")).unwrap();
    let password_file = secret_file(d, "p12-password", &password, 0o640);
    let bearer = secret_file(d, "sa-token", "t", 0o604);
    let private_bearer = secret_file(d, "private-token", "t", 0o600);
    let vault_token = secret_file(d, "vault-token", "hvs.x", 0o644);
    let pin = secret_file(d, "pin", "1234", 0o644);

    let logs = LogCapture::start(tracing::Level::WARN);
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let credentials = format!(
        "kid: {KID}\nkey:\n  path: {}\n  password_file: {}\n",
        fixture("business-legacy.p12"),
        password_file.display()
    );
    let closed = free_port();
    let identity = format!(
        "identity:\n  issuers:\n    a:\n      issuer: http://127.0.0.1:{closed}\n      jwks_uri: http://127.0.0.1:{closed}/jwks\n      audience: b\n      bearer_token_file: {}\n    b:\n      issuer: http://127.0.0.1:{closed}/b\n      jwks_uri: http://127.0.0.1:{closed}/jwks\n      audience: b\n      bearer_token_file: {}\n",
        bearer.display(),
        private_bearer.display()
    );
    let yaml = config_yaml_with(&mp, &altinn, &credentials, &identity);
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The p12 fixture's kid may differ: whether it starts is not the point, the warnings are.
    let _ = maskinporten_broker::app::App::spawn(settings, listener).await;
    let log = logs.text();
    for (path, mode) in [(&password_file, "640"), (&bearer, "604")] {
        assert!(
            log.lines().any(|l| l.contains(&path.display().to_string())
                && l.contains(&format!("mode=\"{mode}\""))
                && l.contains("readable by group or others")),
            "{path:?}: {log}"
        );
    }
    assert!(
        !log.contains(&private_bearer.display().to_string()),
        "{log}"
    );

    // The Vault token and the PKCS#11 PIN, through `check`.
    for key in [
        format!(
            "  vault_transit:\n    address: http://127.0.0.1:{closed}/\n    name: mp\n    token_file: {}\n",
            vault_token.display()
        ),
        format!(
            "  pkcs11:\n    module: {}\n    token_label: t\n    key_label: k\n    pin_file: {}\n",
            d.join("no-module.so").display(),
            pin.display()
        ),
    ] {
        let config = d.join("broker.yaml");
        std::fs::write(
            &config,
            format!("env: test\nclient_id: c\nkid: k\nkey:\n{key}"),
        )
        .unwrap();
        let out = tokio::process::Command::new(BIN)
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let file = if key.contains("vault") {
            &vault_token
        } else {
            &pin
        };
        assert!(
            err.lines().any(|l| l.contains(&file.display().to_string())
                && l.contains("mode=\"644\"")
                && l.contains("readable by group or others")),
            "{err}"
        );
    }
}
