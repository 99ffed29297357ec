//! Works out of the box: the shipped broker.yaml (env local) started as a process, and `keygen`
//! output accepted by the `simulate` subcommand.

use crate::support::*;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Verify a token's signature with a JWKS, returning its claims.
fn verify_with(jwks: &JwkSet, token: &str, issuer: &str) -> Value {
    let kid = jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .expect("kid");
    let jwk = jwks.find(&kid).expect("kid in the JWKS");
    let mut v = Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("signature verifies with the simulator's JWKS")
        .claims
}

fn spawn_shipped_broker(port: u16) -> Child {
    // The README's run command is `cargo run --release`: this binary with ./broker.yaml.
    spawn_bin(&[], &[("BROKER__LISTEN", format!("127.0.0.1:{port}"))])
}

#[tokio::test]
async fn the_shipped_config_serves_verifiable_tokens_with_no_credentials() {
    let port = free_port();
    let _broker = spawn_shipped_broker(port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until_up(&format!("{base}/healthz")).await;
    let ready: Value = fetch_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(ready["env"], "local");
    let issuer = ready["issuer"].as_str().unwrap().to_owned();
    assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");
    let jwks: JwkSet = fetch_json(&http, &format!("{issuer}jwk")).await;

    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let altinn = get(format!("{base}/token/altinn")).await;
    let claims = verify_with(
        &jwks,
        altinn["access_token"].as_str().unwrap(),
        &format!("{issuer}authentication/api/v1/openid/"),
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 1800, "Altinn tokens live 30 minutes");

    let admin = get(format!("{base}/token/admin")).await;
    let claims = verify_with(&jwks, admin["access_token"].as_str().unwrap(), &issuer);
    assert!(
        claims["scope"]
            .as_str()
            .unwrap()
            .contains("systemregister.write")
    );

    let skd = get(format!("{base}/token/skd")).await;
    assert_eq!(skd["org"], "991825827", "the shipped default_org");
    let claims = verify_with(&jwks, skd["access_token"].as_str().unwrap(), &issuer);
    assert_eq!(
        claims["authorization_details"][0]["systemuser_org"]["ID"],
        "0192:991825827"
    );

    let su = get(format!("{base}/token/altinn?org={OTHER_ORG}")).await;
    assert_eq!(su["org"], OTHER_ORG);
    verify_with(
        &jwks,
        su["access_token"].as_str().unwrap(),
        &format!("{issuer}authentication/api/v1/openid/"),
    );

    // On demand: the shipped on_demand.scopes lets any altinn: scope through, and the simulator
    // accepts what the pattern allows; the texas route answers the same request.
    let any = get(format!(
        "{base}/token?scope=altinn:resourceregistry/resource.read"
    ))
    .await;
    let claims = verify_with(&jwks, any["access_token"].as_str().unwrap(), &issuer);
    assert_eq!(claims["scope"], "altinn:resourceregistry/resource.read");
    let texas: Value = http
        .post(format!("{base}/api/v1/token"))
        .json(&serde_json::json!({"identity_provider": "maskinporten", "target": "altinn:resourceregistry/resource.read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(texas["access_token"], any["access_token"]);

    // The README's proxy example: the simulated Altinn API checks the token the broker added.
    let me = get(format!("{base}/proxy/altinn-storage/whoami")).await;
    assert_eq!(me["client_id"], "local-client", "{me}");
    assert!(
        me["scope"]
            .as_str()
            .unwrap()
            .contains("altinn:instances.read")
    );
    let as_org = http
        .get(format!("{base}/proxy/altinn-storage/whoami"))
        .header("x-broker-org", OTHER_ORG)
        .send()
        .await
        .unwrap();
    assert_eq!(as_org.status(), 200);
    let as_org: Value = as_org.json().await.unwrap();
    assert_eq!(as_org["system_user_org"], OTHER_ORG);
    let bare = http
        .get(format!("{issuer}storage/api/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401, "without the broker there is no token");
}

#[tokio::test]
async fn keygen_output_round_trips_through_the_standalone_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = Command::new(BIN)
        .args(["keygen", "--out", keys.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let jwk_path = keys.join("maskinporten-key.jwk.json");
    let jwk: Value = serde_json::from_str(&std::fs::read_to_string(&jwk_path).unwrap()).unwrap();
    let kid = jwk["kid"].as_str().unwrap();

    let sim_port = free_port();
    let _sim = spawn_bin(
        &[
            "--config",
            "/nonexistent.yaml",
            "simulate",
            "--listen",
            &format!("127.0.0.1:{sim_port}"),
            "--jwk",
            jwk_path.to_str().unwrap(),
            "--client-id",
            "my-client",
        ],
        &[],
    );
    let sim = format!("http://127.0.0.1:{sim_port}/");
    wait_until_up(&format!("{sim}.well-known/oauth-authorization-server")).await;

    let cfg = dir.path().join("broker.yaml");
    std::fs::write(
        &cfg,
        format!(
            "env: test\nclient_id: my-client\nkid: {kid}\nkey:\n  path: {}\nendpoints:\n  issuer: {sim}\n  token_url: {sim}token\n  altinn_exchange_url: {sim}authentication/api/v1/exchange/maskinporten\n",
            keys.join("maskinporten-key.pem").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "token", "altinn"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(claims(token.trim())["client_id"], "my-client");

    // The same broker with another client's key is refused with the simulator's MP-code.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            &keys.join("maskinporten-key.pem").display().to_string(),
            &fixture("client-key.pem"),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "token", "admin"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MP-124") && err.contains("private key does not match kid"),
        "{err}"
    );
}
