//! Key rotation without restart: SIGHUP reloads key, kid and config; a broken config is refused
//! and the old one keeps serving; tokens made with the old key stay cached until they expire.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn sighup_rotates_the_key_and_a_broken_config_keeps_the_old_one() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("broker.yaml");
    let base_yaml = config_yaml(&mp, &altinn, &format!("listen: 127.0.0.1:{port}\n"));
    std::fs::write(&cfg, &base_yaml).unwrap();
    let mut child = spawn_bin(&["--config", cfg.to_str().unwrap()], &[]);
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{base}/healthz")).await;
    let token = |path: &'static str| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<serde_json::Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let before = token("/token/admin").await;
    assert_eq!(mp.grants()[0].header.kid.as_deref(), Some(KID));

    // Rotate: Digdir now knows only the new key, the config names it, SIGHUP.
    mp.register_key("rotated-kid", "other-key.pub.pem");
    std::fs::write(
        &cfg,
        base_yaml
            .replace(&fixture("client-key.pem"), &fixture("other-key.pem"))
            .replace(&format!("kid: {KID}"), "kid: rotated-kid"),
    )
    .unwrap();
    signal(pid, "HUP");
    let mut rotated = false;
    for _ in 0..100 {
        let r = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        if r["kid"] == "rotated-kid" {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new kid is in use within 5 s");
    assert_eq!(
        token("/token/admin").await,
        before,
        "the old token stays cached until it expires"
    );
    token("/token/altinn").await;
    let last = mp.grants().pop().unwrap();
    assert_eq!(last.header.kid.as_deref(), Some("rotated-kid"));
    assert!(mp.violations().is_empty(), "{:?}", mp.violations());

    // A broken config is refused; the rotated key keeps serving.
    std::fs::write(&cfg, "env: test\nclient_id: [broken\n").unwrap();
    signal(pid, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = http
        .get(format!("{base}/token/altinn?org={ORG}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        mp.grants().pop().unwrap().header.kid.as_deref(),
        Some("rotated-kid")
    );

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let log = stderr_of(&mut child).await;
    assert!(log.contains("configuration and key reloaded"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
}
