//! The binary as a user runs it: start-up failures, `serve` against the fakes, and the tools
//! (`token`, `grant`, `check`, `keygen`, `hash-key`), each with its output and exit code.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::*;
use tokio::process::Command;

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("broker.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("command finishes")
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Start `serve` with this config in `dir`; it must exit non-zero before listening, saying
/// `expected` on stderr. Returns stderr.
async fn refuses_to_start(dir: &Path, yaml: &str, expected: &str) -> String {
    let cfg = write_config(dir, yaml);
    let out = run(&["--config", cfg.to_str().unwrap()]).await;
    assert!(!out.status.success(), "exited non-zero");
    let err = stderr(&out);
    assert!(err.contains(expected), "{err}");
    err
}

#[tokio::test]
async fn missing_client_id_is_named_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "env: test\nkid: k\nkey:\n  path: {}\n",
        fixture("client-key.pem")
    );
    refuses_to_start(dir.path(), &yaml, "client_id: is required").await;
}

#[tokio::test]
async fn an_unreadable_key_is_named_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "env: test\nclient_id: c\nkid: k\nkey:\n  path: /nonexistent/key.pem\n";
    refuses_to_start(
        dir.path(),
        yaml,
        "key.path: cannot read /nonexistent/key.pem",
    )
    .await;
}

#[tokio::test]
async fn a_key_that_is_not_pem_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "SECRET-NOT-A-KEY").unwrap();
    let yaml = format!(
        "env: test\nclient_id: c\nkid: k\nkey:\n  path: {}\n",
        key.display()
    );
    let err = refuses_to_start(
        dir.path(),
        &yaml,
        "key.path: is none of the key forms the broker reads",
    )
    .await;
    assert!(!err.contains("SECRET-NOT-A-KEY"));
}

#[tokio::test]
async fn malformed_yaml_is_reported_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    refuses_to_start(
        dir.path(),
        "env: test\nclient_id: [unclosed\n",
        "cannot load the configuration",
    )
    .await;
}

#[tokio::test]
async fn a_public_listen_address_without_clients_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "env: test\nclient_id: c\nkid: k\nlisten: 0.0.0.0:0\nkey:\n  path: {}\n",
        fixture("client-key.pem")
    );
    refuses_to_start(dir.path(), &yaml, "allow_unauthenticated: true").await;
}

#[tokio::test]
async fn serve_answers_all_three_token_kinds_and_drains_on_sigterm() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    // No shutdown delay: SIGTERM starts the drain at once, so the slow request below is in
    // flight while the broker shuts down (with a delay it would finish before).
    let mut broker = ServedBinary::start(
        &mp,
        &altinn,
        &format!("default_org: '{ORG}'\nserver:\n  shutdown_delay: 0s\n"),
    )
    .await;
    let base = broker.base.clone();
    let http = reqwest::Client::new();
    for path in [
        "/token/altinn",
        "/token/admin",
        "/token/skd",
        &format!("/token/altinn?org={ORG}"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3);
    }
    let text = http
        .get(format!("{base}/token/admin"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.split('.').count(), 3);
    assert!(mp.violations().is_empty(), "{:?}", mp.violations());

    // A request in flight when SIGTERM arrives still gets its answer; then the process exits 0.
    mp.script([Reply::Hang(Duration::from_millis(800))]);
    let slow = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/token/altinn?org={OTHER_ORG}");
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // Signalled once Maskinporten holds the request (at most 10 s of waiting).
    let calls = mp.calls();
    for _ in 0..200 {
        if mp.calls() > calls {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mp.calls() > calls, "the slow request reached Maskinporten");
    signal(broker.child.id().unwrap(), "TERM");
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request finished"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), broker.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    let log = stderr_of(&mut broker.child).await;
    assert!(log.contains("token served"), "{log}");
}

#[tokio::test]
async fn token_prints_the_bare_token_or_json_and_fails_clearly() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_yaml(&mp, &altinn, ""));
    let cfg = cfg.to_str().unwrap();
    let out = run(&["--config", cfg, "token", "admin"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(claims(&token)["client_id"], CLIENT_ID);
    let out = run(&["--config", cfg, "token", "altinn", "--org", ORG, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["org"], ORG);
    assert_eq!(json["profile"], "altinn");
    let out = run(&["--config", cfg, "token", "nope"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no profile named \"nope\""),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    mp.always(Reply::Refuse("invalid_grant", "bad signature (MP-124)"));
    let out = run(&["--config", cfg, "token", "admin"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("MP-124"), "{}", stderr(&out));
}

#[tokio::test]
async fn grant_prints_a_signed_grant_without_sending_it() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_yaml(&mp, &altinn, ""));
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "grant",
        "skd",
        "--org",
        ORG,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let grant = stdout(&out).trim().to_owned();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(
        &std::fs::read(fixture("client-key.pub.pem")).unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[mp.issuer()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&grant, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(
        claims["scope"],
        "skatteetaten:innrapporteringaksjonaerregisteroppgave"
    );
    assert_eq!(
        claims["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{ORG}")
    );
    assert_eq!(mp.calls(), 0, "not sent");
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "grant",
        "skd",
        "--org",
        "123",
    ])
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--org \"123\""), "{}", stderr(&out));
    // The same system-user rules as GET /token/{profile}.
    let out = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "grant",
        "admin",
        "--org",
        ORG,
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not use a system user"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn check_shows_the_resolved_setup_and_online_reports_each_profile() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_yaml(&mp, &altinn, ""));
    let cfg = cfg.to_str().unwrap();
    let out = run(&["--config", cfg, "check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("kid:             {KID} (RSA 2048 bits, RS256)")),
        "{text}"
    );
    assert!(text.contains("key pair:        ok"));
    assert!(text.contains(&mp.token_url()));
    assert!(!text.contains("PRIVATE KEY"));
    assert_eq!(mp.calls(), 0);
    let out = run(&["--config", cfg, "check", "--online"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("admin") && l.contains("ok (expires in")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("skd") && l.contains("skipped")),
        "{text}"
    );
    mp.always(Reply::Refuse(
        "invalid_grant",
        "Invalid JWT signature (MP-124)",
    ));
    let out = run(&["--config", cfg, "check", "--online"]).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("private key does not match kid"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn keygen_writes_a_private_key_0600_and_a_jwk_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let out = run(&["keygen", "--out", out_dir.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let pem = out_dir.join("maskinporten-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let jwk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("maskinporten-key.jwk.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(jwk["kty"], "RSA");
    let kid = jwk["kid"].as_str().unwrap();
    assert!(stdout(&out).contains(&format!("kid: {kid}")));
    assert!(!stdout(&out).contains("PRIVATE"));
    let key = maskinporten_broker::SigningKey::from_file(&pem, kid, Default::default()).unwrap();
    assert!(key.matches(&maskinporten_broker::public_key_from_jwk(&jwk).unwrap()));
    let again = run(&["keygen", "--out", out_dir.to_str().unwrap()]).await;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("refusing to overwrite"));
}

#[tokio::test]
async fn hash_key_prints_the_sha256_of_standard_input() {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"abc\n")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::copy(fixture("client-key.pem"), &key).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "env: test\nclient_id: c\nkid: k\nkey:\n  path: {}\n",
            key.display()
        ),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["--config", cfg.to_str().unwrap(), "check"]).await;
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("readable by group or others"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&["--config", cfg.to_str().unwrap(), "check"]).await;
    assert!(!stderr(&out).contains("readable by group or others"));
}
