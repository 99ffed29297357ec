//! Token files: written atomically with the right mode, kept fresh with no HTTP caller, a write
//! failure shown in /readyz and never fatal, a deleted or changed file restored within the check
//! interval, and no more writes after shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn files_yaml(entries: &[(&str, &Path, &str)]) -> String {
    let mut yaml = String::from("token_files:\n");
    for (profile, path, more) in entries {
        yaml.push_str(&format!(
            "  - profile: {profile}\n    path: {}\n{more}",
            path.display()
        ));
    }
    yaml
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Poll (at most 20 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 20 s");
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn entries_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test]
async fn files_hold_the_token_or_the_json_answer_with_mode_0600_or_0640() {
    let dir = tempfile::tempdir().unwrap();
    let (bare, json, skd) = (
        dir.path().join("admin"),
        dir.path().join("altinn.json"),
        dir.path().join("skd"),
    );
    let yaml = files_yaml(&[
        ("admin", &bare, ""),
        (
            "altinn",
            &json,
            "    format: json\n    group_readable: true\n",
        ),
        ("skd", &skd, &format!("    org: '{OTHER_ORG}'\n")),
    ]);
    let env = TestEnv::start(&yaml).await;
    eventually("three files", || {
        read(&bare).is_some() && read(&json).is_some() && read(&skd).is_some()
    })
    .await;
    let served = env.get_json("/token/admin", 200).await;
    assert_eq!(
        read(&bare).unwrap(),
        served["access_token"].as_str().unwrap()
    );
    assert_eq!(mode(&bare), 0o600);
    assert_eq!(mode(&json), 0o640);
    let answer: Value = serde_json::from_str(&read(&json).unwrap()).unwrap();
    assert_eq!(answer["profile"], "altinn");
    assert_eq!(answer["token_type"], "Bearer");
    let altinn = env.get_json("/token/altinn", 200).await;
    assert_eq!(answer["access_token"], altinn["access_token"]);
    let skd_claims = claims(&read(&skd).unwrap());
    assert_eq!(
        skd_claims["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{OTHER_ORG}")
    );
    assert_eq!(entries_in(dir.path()).len(), 3, "no temporary file is left");
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["token_files"].as_array().unwrap().len(), 3);
    assert!(ready["token_files"][0]["written_at"].is_string(), "{ready}");
    assert!(
        !ready
            .to_string()
            .contains(served["access_token"].as_str().unwrap())
    );
}

#[tokio::test]
async fn a_file_follows_the_background_refresh_with_no_http_caller() {
    let mp = FakeMaskinporten::start().await;
    mp.set_expires_in(6);
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin");
    let yaml = format!(
        "cache:\n  min_remaining: 2s\n  refresh_floor: 1s\n{}",
        files_yaml(&[("admin", &path, "")])
    );
    let env = TestEnv::start_with(mp, altinn, &yaml).await;
    eventually("the first write", || read(&path).is_some()).await;
    let first = read(&path).unwrap();
    let mut seen = vec![first.clone()];
    // Every version a reader sees is a whole token, never a part of one.
    eventually("a rewrite with a fresh token", || {
        let now = read(&path).unwrap_or_default();
        assert_eq!(now.split('.').count(), 3, "a whole JWT: {now:?}");
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        seen.len() >= 3
    })
    .await;
    assert!(
        env.mp.calls() >= 3,
        "background refreshes: {}",
        env.mp.calls()
    );
    let newest = claims(seen.last().unwrap());
    assert!(newest["exp"].as_u64().unwrap() > now_secs(), "fresh");
    assert_eq!(entries_in(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_write_failure_shows_in_readyz_and_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-yet");
    let path = missing.join("admin");
    let env = TestEnv::start(&files_yaml(&[("admin", &path, "")])).await;
    let failing = || async {
        let ready = env.get_json("/readyz", 200).await;
        ready["token_files"][0].clone()
    };
    let mut file = Value::Null;
    for _ in 0..100 {
        file = failing().await;
        if file["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = file["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot write") && error.contains("admin"),
        "{file}"
    );
    assert_eq!(env.get_json("/readyz", 200).await["status"], "degraded");
    env.get_json("/token/admin", 200).await; // the broker keeps serving

    std::fs::create_dir(&missing).unwrap();
    eventually("the write after the directory appeared", || {
        read(&path).is_some()
    })
    .await;
    let mut healed = Value::Null;
    for _ in 0..50 {
        healed = env.get_json("/readyz", 200).await;
        if healed["status"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healed["status"], "ready", "{healed}");
    assert!(healed["token_files"][0]["last_error"].is_null(), "{healed}");
}

/// A broker with one token file of the admin profile, after its first write.
async fn one_admin_file() -> (tempfile::TempDir, PathBuf, TestEnv) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin");
    let env = TestEnv::start(&files_yaml(&[("admin", &path, "")])).await;
    eventually("the first write", || read(&path).is_some()).await;
    (dir, path, env)
}

#[tokio::test]
async fn a_deleted_overwritten_or_loosened_file_is_restored_within_the_check_interval() {
    let (_dir, path, env) = one_admin_file().await;
    let token = read(&path).unwrap();
    // The check runs every second; each damage is repaired within 2 s (one interval, plus the
    // time a check takes on a busy machine).
    let restored_within_2s = |what: &'static str| {
        let (path, token) = (path.clone(), token.clone());
        async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if read(&path).as_deref() == Some(token.as_str()) && mode(&path) == 0o600 {
                    return;
                }
            }
            panic!("{what}: not restored within 2 s");
        }
    };
    std::fs::remove_file(&path).unwrap();
    restored_within_2s("deleted").await;
    std::fs::write(&path, "something else").unwrap();
    restored_within_2s("overwritten").await;
    std::fs::write(&path, format!("{token}x")).unwrap();
    restored_within_2s("appended to").await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    restored_within_2s("made world-readable").await;
    assert_eq!(env.mp.calls(), 1, "the same token, written again");
}

#[tokio::test]
async fn no_file_is_written_after_shutdown() {
    let (_dir, path, env) = one_admin_file().await;
    // While the broker runs, a deleted file comes back within the check interval ...
    std::fs::remove_file(&path).unwrap();
    eventually("the file restored", || read(&path).is_some()).await;
    env.app.shutdown().await;
    // ... and after shutdown it does not: a writer still running would restore it within 1 s.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(read(&path).is_none(), "written after shutdown");
}

#[tokio::test]
async fn a_file_for_a_token_the_broker_cannot_make_refuses_to_start() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    for (entry, field) in [
        ("admin", "token_files[0]"),        // admin takes no org
        ("nope", "token_files[0].profile"), // no such profile
    ] {
        let yaml = files_yaml(&[(entry, &path, &format!("    org: '{ORG}'\n"))]);
        let settings =
            maskinporten_broker::config::Settings::from_yaml(&config_yaml(&mp, &altinn, &yaml))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let Err(error) = maskinporten_broker::app::App::spawn(settings, listener).await else {
            panic!("{entry} was accepted");
        };
        assert!(error.to_string().contains(field), "{error}");
    }
}
