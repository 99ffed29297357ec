//! Key rotation without restart: SIGHUP reloads key, kid and config; a broken config is refused
//! and the old one keeps serving; tokens made with the old key stay cached until they expire.

use std::sync::Arc;
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

#[tokio::test]
async fn a_refused_reload_changes_nothing() {
    use maskinporten_broker::config::Settings;
    use maskinporten_broker::hash_api_key;
    let client = |name: &str, key: &str| {
        format!(
            "  - name: {name}\n    key_sha256: {}\n    profiles: ['*']\n",
            hash_api_key(key)
        )
    };
    let old_clients = format!("clients:\n{}", client("old", "old-key-0123456789"));
    let env = TestEnv::start(&old_clients).await;
    let status = |key: &'static str| {
        let request = env.http.get(env.url("/token/admin")).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("old-key-0123456789").await, 200);
    let new_clients = format!(
        "clients:\n{}{}",
        client("old", "old-key-0123456789"),
        client("new", "new-key-0123456789")
    );
    let yaml = |extra: &str| config_yaml(&env.mp, &env.altinn, &format!("{new_clients}{extra}"));

    // New clients and an HTTP client that cannot be built: refused, and the new clients with it.
    let bad_ca = Settings::from_yaml(&yaml(
        "http_client:\n  extra_ca_cert: /nonexistent/ca.pem\n",
    ))
    .unwrap();
    let err = env.app.reload(&bad_ca).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert_eq!(
        status("new-key-0123456789").await,
        401,
        "the refused clients are not in force"
    );
    assert_eq!(status("old-key-0123456789").await, 200);

    // The same clients with a working HTTP client: applied.
    env.app
        .reload(&Settings::from_yaml(&yaml("")).unwrap())
        .await
        .unwrap();
    assert_eq!(status("new-key-0123456789").await, 200);
}

#[tokio::test]
async fn after_a_reload_the_new_key_file_is_watched_and_restart_only_changes_are_named() {
    use tokio::io::AsyncBufReadExt;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_key, new_key) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
    std::fs::copy(fixture("client-key.pem"), &old_key).unwrap();
    std::fs::copy(fixture("other-key.pem"), &new_key).unwrap();
    let port = free_port();
    let config = dir.path().join("broker.yaml");
    let yaml = config_yaml(&mp, &altinn, &format!("listen: 127.0.0.1:{port}\n"))
        .replace(&fixture("client-key.pem"), old_key.to_str().unwrap());
    std::fs::write(&config, &yaml).unwrap();
    let mut child = spawn_bin(&["--config", config.to_str().unwrap()], &[]);
    // The log, line by line, as it is written.
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let logged = |needle: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{base}/healthz")).await;

    // Rotate to the new key file; change sections that need a restart on the way.
    mp.register_key("rotated-kid", "other-key.pub.pem");
    std::fs::write(
        &config,
        yaml.replace(old_key.to_str().unwrap(), new_key.to_str().unwrap())
            .replace(&format!("kid: {KID}"), "kid: rotated-kid")
            .replace(&format!("listen: 127.0.0.1:{port}"), "listen: 127.0.0.1:1")
            + "cache:\n  min_remaining: 11s\n",
    )
    .unwrap();
    signal(child.id().unwrap(), "HUP");
    let http = reqwest::Client::new();
    let mut rotated = false;
    for _ in 0..100 {
        let ready: serde_json::Value = fetch_json(&http, &format!("{base}/readyz")).await;
        if ready["kid"] == "rotated-kid" {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new kid is in use within 5 s");
    assert_eq!(
        http.get(format!("{base}/token/admin"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still on the old port"
    );
    for _ in 0..100 {
        if logged("needs a restart") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restart = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("needs a restart"))
        .cloned();
    let restart = restart.expect("the restart-only change is logged");
    assert!(restart.contains("listen, cache"), "{restart}");

    // The old key file is no longer watched: changing it reloads nothing ... (the config write
    // above may itself have been seen as a file change before the SIGHUP arrived: count from here)
    let file_changes = logged("file change");
    std::fs::write(&old_key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // longer than the 2 s check interval
    assert_eq!(
        logged("file change"),
        file_changes,
        "{:?}",
        log.lock().unwrap()
    );
    // ... the new one is: a broken key there is noticed (and refused).
    std::fs::write(&new_key, "not a key either").unwrap();
    for _ in 0..100 {
        if logged("reload refused") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("reload refused"))
        .cloned();
    assert!(
        refused.is_some_and(|l| l.contains("file change")),
        "{:?}",
        log.lock().unwrap()
    );
    assert_eq!(
        http.get(format!("{base}/token/altinn"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the loaded key keeps serving"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
