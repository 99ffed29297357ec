//! A reload reaches every HTTP client, not only the token fetchers: the egress proxy's client,
//! the identity issuers' key sets and the introspection verifiers take the new `http_client`, and
//! the introspection verifiers the new `endpoints`. Observed through a recording forward proxy on
//! loopback (`http_client.proxy`), which sees each absolute URL a client sends through it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, Uri};
use maskinporten_broker::config::Settings;
use serde_json::json;

use crate::introspect::introspect;
use crate::oidc::*;
use crate::support::*;

/// A forward proxy that records the URL of every request sent through it and answers 502.
struct RecordingProxy {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let router = Router::new().fallback(move |uri: Uri| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(uri.to_string());
                StatusCode::BAD_GATEWAY
            }
        });
        let addr = serve(router).await;
        RecordingProxy { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn saw(&self, url: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|u| u == url)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A plain upstream for the proxy route that counts what reaches it directly.
async fn upstream() -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let hits = Arc::new(Mutex::new(0));
    let count = hits.clone();
    let router = Router::new().fallback(move || {
        let count = count.clone();
        async move {
            *count.lock().unwrap() += 1;
            "ok"
        }
    });
    (serve(router).await, hits)
}

#[tokio::test]
async fn a_reloaded_http_client_reaches_the_proxy_identity_and_introspection_clients() {
    let recorder = RecordingProxy::start().await;
    let k8s = TestKey::generate("k8s");
    let idp = FakeIssuer::start(vec![k8s.clone()]).await;
    let (up, direct_hits) = upstream().await;
    let extra = format!(
        "identity:\n  issuers:\n    kubernetes:\n      issuer: {}\n      jwks_uri: {}\n      audience: broker\nclients:\n  - name: app\n    identity: {{issuer: kubernetes, subject: 'system:serviceaccount:a:app'}}\n    profiles: ['*']\n    introspect: true\nproxy:\n  p:\n    upstream: http://{up}/\n    profile: admin\n",
        idp.issuer(),
        idp.jwks_uri(),
    );
    let env = TestEnv::start(&extra).await;
    assert_eq!(idp.jwks_reads(), 1, "the issuer's keys are read at start");
    // The caller: client `app`, known by its service-account token.
    let sa = k8s.sign(&service_account_claims(&idp.issuer(), "broker", "a", "app"));
    let mut bearer = reqwest::header::HeaderMap::new();
    bearer.insert("authorization", format!("Bearer {sa}").parse().unwrap());
    let http = reqwest::Client::builder()
        .default_headers(bearer)
        .build()
        .unwrap();
    let get = |path: &str| http.get(env.url(path)).send();
    // Through the start-up client: the proxy route reaches its upstream directly, and a token
    // for it is cached (so that after the reload no token fetch stands in the way).
    let r = get("/proxy/p/before").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(*direct_hits.lock().unwrap(), 1);

    let reloaded = Settings::from_yaml(&config_yaml(
        &env.mp,
        &env.altinn,
        &format!("{extra}http_client:\n  proxy: {}\n", recorder.url()),
    ))
    .unwrap();
    env.app.reload(&reloaded).await.unwrap();

    // Identity: the issuer's keys are read again at reload, through the new client; the read
    // failed (the recorder answers 502), so the keys held stay and the caller is still known.
    assert!(recorder.saw(&idp.jwks_uri()), "{:?}", recorder.seen());
    assert_eq!(idp.jwks_reads(), 1, "not directly");
    // The egress proxy: the request goes through the new client (which the recorder answers).
    let r = get("/proxy/p/after").await.unwrap();
    assert_eq!(r.status(), 502, "{:?}", r.text().await);
    assert!(
        recorder.saw(&format!("http://{up}/after")),
        "{:?}",
        recorder.seen()
    );
    assert_eq!(*direct_hits.lock().unwrap(), 1, "not directly");
    // Introspection: the verifier's keys are read on first use, through the new client.
    let token = TestKey::generate("mp")
        .sign(&json!({"iss": env.mp.issuer(), "exp": now_secs() + 60, "iat": now_secs()}));
    let answer = introspect(&http, &env.url(""), "maskinporten", &token).await;
    assert_eq!(answer["active"], false, "{answer}");
    let jwk = format!("{}/jwk", env.mp.issuer().trim_end_matches('/'));
    assert!(recorder.saw(&jwk), "{:?}", recorder.seen());
    // And the token fetchers, as before.
    let r = get("/token/altinn").await.unwrap();
    assert_ne!(r.status(), 200);
    assert!(recorder.saw(&env.mp.token_url()), "{:?}", recorder.seen());
}

#[tokio::test]
async fn a_reloaded_endpoints_issuer_moves_the_introspection_verifier() {
    let key = TestKey::generate("b-key");
    let (a, b) = (
        FakeIssuer::start(vec![TestKey::generate("a-key")]).await,
        FakeIssuer::start(vec![key.clone()]).await,
    );
    let yaml = |issuer: &FakeIssuer| {
        format!(
            "env: test\nclient_id: {CLIENT_ID}\nkid: {KID}\nkey:\n  path: {}\nendpoints:\n  issuer: {}/\n  token_url: {}/token\n  discovery: false\n",
            fixture("client-key.pem"),
            issuer.issuer(),
            issuer.issuer(),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app =
        maskinporten_broker::app::App::spawn(Settings::from_yaml(&yaml(&a)).unwrap(), listener)
            .await
            .unwrap();
    let http = reqwest::Client::new();
    let now = now_secs();
    let token = key.sign(&json!({
        "iss": format!("{}/", b.issuer()), "client_id": "abc", "scope": "test:read",
        "iat": now, "exp": now + 120,
    }));
    let base = format!("http://{}", app.addr);
    let check = || introspect(&http, &base, "maskinporten", &token);
    let before = check().await;
    assert_eq!(
        before["active"], false,
        "b's token is not active while endpoints.issuer is a: {before}"
    );
    assert_eq!(b.jwks_reads(), 0);

    app.reload(&Settings::from_yaml(&yaml(&b)).unwrap())
        .await
        .unwrap();
    let answer = check().await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(b.jwks_reads(), 1, "b's keys read at {}/jwk", b.issuer());
    app.shutdown().await;
}
