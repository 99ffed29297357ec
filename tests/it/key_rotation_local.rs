//! The rehearsal docs/keys.md gives a newcomer, on the release binary in `env: local`: a JWKS key
//! file, `action: rotate`, `keys status` and `keys rotate` from the command line beside the
//! running broker, and tokens for fresh orgs (each a new grant) flowing all through the
//! rotation. The embedded simulator takes 30 s to spread a new key, so this test takes ~35 s.

use std::time::Duration;

use serde_json::Value;

use crate::key_rotation::keys_command;
use crate::support::*;

fn file_kids(path: &std::path::Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_local_rehearsal_rotates_with_keys_rotate_while_tokens_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--add-to"])
        .arg(&keys)
        .env_remove("RUST_LOG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen --add-to: {out:?}");
    let old = file_kids(&keys).remove(0);
    let port = free_port();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "env: local\nlisten: 127.0.0.1:{port}\nkey:\n  path: {}\nkey_rotation:\n  self_service:\n    client_id: local-self-service\n  action: rotate\n  propagation: 31s\n  retire_after: 1s\n  check_every: 2s\n",
            keys.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
    let _broker = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{base}/healthz")).await;
    let http = reqwest::Client::new();
    let orgs = valid_orgs(500);
    let mut orgs = orgs.iter();
    let mut ran = false;
    let mut served = 0;
    // Bounded: 500 × (a token call + 100 ms) ≥ 50 s.
    for i in 0..500 {
        let org = orgs.next().unwrap();
        let r = http
            .get(format!("{base}/token/altinn?org={org}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a token call failed during the rotation");
        served += 1;
        if i == 3 && !ran {
            let config = config.clone();
            let (status, rotate) = tokio::task::spawn_blocking(move || {
                (
                    keys_command(&config, &["status", "--json"]),
                    keys_command(&config, &["rotate"]),
                )
            })
            .await
            .unwrap();
            assert_eq!(status.0, 0, "{}", status.2);
            let body: Value = serde_json::from_str(&status.1).unwrap();
            assert_eq!(body["keys"][0]["kid"], old.as_str(), "{body}");
            assert_eq!(body["keys"][0]["in_use"], true, "{body}");
            assert_eq!(rotate.0, 0, "{}", rotate.2);
            assert!(rotate.2.contains("rotation in progress"), "{}", rotate.2);
            assert_eq!(file_kids(&keys).len(), 2, "keys rotate added a key");
            ran = true;
        }
        let kids = file_kids(&keys);
        if ran && kids.len() == 1 && kids[0] != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kids = file_kids(&keys);
    assert!(
        kids.len() == 1 && kids[0] != old,
        "the running broker switched and retired the old key: {kids:?}"
    );
    let ready: Value = fetch_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(ready["kid"], kids[0].as_str(), "{ready}");
    assert_eq!(ready["key_rotation"]["failing"], false, "{ready}");
    // A fresh grant with the new key after the old one left the simulator's set.
    let org = orgs.next().unwrap();
    let r = http
        .get(format!("{base}/token/altinn?org={org}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(served > 30, "{served}");
}
