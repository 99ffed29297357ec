//! Key rotation without restart: SIGHUP reloads key, kid and config; a broken config is refused
//! and the old one keeps serving; tokens made with the old key stay cached until they expire.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_maskinporten-broker");

fn hup(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn sighup_rotates_the_key_and_a_broken_config_keeps_the_old_one() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("broker.yaml");
    let base_yaml = config_yaml(&mp, &altinn, &format!("listen: 127.0.0.1:{port}\n"));
    std::fs::write(&cfg, &base_yaml).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up);
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
    hup(pid);
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
    hup(pid);
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
    let mut log = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut log)
        .await
        .unwrap();
    assert!(log.contains("configuration and key reloaded"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
}
