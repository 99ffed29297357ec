//! Key rotation without restart: SIGHUP reloads key, kid and config; a broken config is refused
//! and the old one keeps serving; tokens made with the old key stay cached until they expire.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sighup_rotates_the_key_and_a_broken_config_keeps_the_old_one() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let mut broker = ServedBinary::start(&mp, &altinn, "").await;
    let cfg = broker.config.clone();
    let base_yaml = std::fs::read_to_string(&cfg).unwrap();
    let pid = broker.child.id().unwrap();
    let http = reqwest::Client::new();
    let token = |path: &'static str| {
        let http = http.clone();
        let url = broker.url(path);
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
            .get(broker.url("/readyz"))
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
        .get(broker.url(&format!("/token/altinn?org={ORG}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        mp.grants().pop().unwrap().header.kid.as_deref(),
        Some("rotated-kid")
    );

    broker.child.start_kill().unwrap();
    let _ = broker.child.wait().await;
    let log = stderr_of(&mut broker.child).await;
    assert!(log.contains("configuration and key reloaded"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
}
