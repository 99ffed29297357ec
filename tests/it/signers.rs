//! Keys the broker never holds, against the real things: SoftHSM2 over PKCS#11 and an OpenBao
//! dev server's transit engine, both holding the fixture key `client-key.pem`, so the strict fake
//! Maskinporten verifies each grant with `client-key.pub.pem`.
//!
//! The tools come from `.ci/install-signer-tools.sh` (run once per test process; it installs
//! only what is missing). SoftHSM2 reads its configuration once per process, so the PKCS#11 tests
//! share one token directory made for this process, and take turns (`HSM_TURN`): one logs out
//! the whole process on purpose.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::*;
use maskinporten_broker::config::Settings;

/// The paths of the signer tools, installed when missing.
struct Tools {
    bao: PathBuf,
    module: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-signer-tools.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("runs .ci/install-signer-tools.sh");
        assert!(out.status.success(), "install-signer-tools.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bao = PathBuf::from(stdout.lines().last().expect("prints bao's path").trim());
        let module = [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libsofthsm2.so is installed");
        Tools { bao, module }
    })
}

// ---------------------------------------------------------------------------------------------
// SoftHSM2

const TOKEN: &str = "broker-tests";
const PIN: &str = "4711-pin";
const KEY_LABEL: &str = "mp-key";

struct Hsm {
    conf: PathBuf,
    dir: PathBuf,
}

/// One token for this process with the fixture key imported (label `mp-key`, id 01).
fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        tools();
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        // SoftHSM2 reads this when the module is initialized, once per process: before any.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        let util = |args: &[&str]| {
            let out = std::process::Command::new("softhsm2-util")
                .args(args)
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap();
            assert!(out.status.success(), "softhsm2-util {args:?}: {out:?}");
        };
        util(&[
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            PIN,
            "--so-pin",
            "so-4711",
        ]);
        util(&[
            "--import",
            &fixture("client-key.pem"),
            "--token",
            TOKEN,
            "--label",
            KEY_LABEL,
            "--id",
            "01",
            "--pin",
            PIN,
        ]);
        write_private(&dir.join("pin"), &format!("{PIN}\n"));
        Hsm { conf, dir }
    })
}

/// The PKCS#11 tests take turns: the process shares one login state per token.
static HSM_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hsm_credentials(pin_file: &Path) -> String {
    format!(
        "kid: {KID}\nkey:\n  pkcs11:\n    module: {}\n    token_label: {TOKEN}\n    key_label: {KEY_LABEL}\n    pin_file: {}\n",
        tools().module.display(),
        pin_file.display()
    )
}

async fn hsm_env(extra: &str) -> TestEnv {
    let hsm = hsm();
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml_with(&mp, &altinn, &hsm_credentials(&hsm.dir.join("pin")), extra);
    TestEnv::start_settings(mp, altinn, Settings::from_yaml(&yaml).unwrap()).await
}

/// A grant the fake accepted, signed by the key on the token, with the configured kid.
fn assert_signed_by_fixture_key(env: &TestEnv, grants: usize) {
    assert_eq!(env.mp.violations(), Vec::<String>::new());
    let seen = env.mp.grants();
    assert_eq!(seen.len(), grants);
    assert!(seen.iter().all(|g| g.header.kid.as_deref() == Some(KID)));
}

#[tokio::test]
async fn a_token_is_fetched_through_the_hsm_and_its_grant_verifies_with_the_token_key() {
    let _turn = HSM_TURN.lock().await;
    let env = hsm_env("").await;
    let signed = "broker_signer_requests_total{signer=\"pkcs11\",purpose=\"grant\",outcome=\"ok\"}";
    // HSM tests take turns (HSM_TURN), so the pkcs11 line moves by this test's signatures only.
    let before = metric(&env.get("/metrics").await.text().await.unwrap(), signed);
    env.get_json("/token/admin", 200).await;
    assert_signed_by_fixture_key(&env, 1);
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["upstreams"]["signer"]["consecutive_failures"], 0);
    assert!(
        ready["signer"]
            .as_str()
            .unwrap()
            .starts_with("pkcs11 token \"broker-tests\""),
        "{ready}"
    );
    let metrics = env.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric(&metrics, signed), before + 1.0, "{metrics}");
}

#[tokio::test]
async fn a_lost_hsm_login_and_closed_sessions_are_recovered_without_a_restart() {
    let _turn = HSM_TURN.lock().await;
    let env = hsm_env("").await;
    env.get_json("/token/admin", 200).await;
    let orgs = valid_orgs(2);

    // The login is per process and token: logging out here logs the broker's sessions out.
    let module = tools().module.clone();
    tokio::task::spawn_blocking(move || {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let ctx = Pkcs11::new(&module).unwrap();
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = token_slot(&ctx);
        let session = ctx.open_ro_session(slot).unwrap();
        session.logout().unwrap();
    })
    .await
    .unwrap();
    env.get_json(&format!("/token/skd?org={}", orgs[0]), 200)
        .await;

    // Every session of the process on the slot closed (as when the token is pulled).
    let module = tools().module.clone();
    tokio::task::spawn_blocking(move || {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let ctx = Pkcs11::new(&module).unwrap();
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = token_slot(&ctx).id();
        let raw = unsafe { cryptoki_sys::Pkcs11::new(&module) }.unwrap();
        assert_eq!(
            unsafe { raw.C_CloseAllSessions(slot) },
            cryptoki_sys::CKR_OK
        );
    })
    .await
    .unwrap();
    env.get_json(&format!("/token/skd?org={}", orgs[1]), 200)
        .await;
    assert_signed_by_fixture_key(&env, 3);
}

fn token_slot(ctx: &cryptoki::context::Pkcs11) -> cryptoki::slot::Slot {
    ctx.get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap()
}

async fn run_bin(args: &[&str], envs: &[(&str, &Path)]) -> std::process::Output {
    let child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("command finishes")
        .unwrap()
}

/// A secret file as an operator writes one: mode 600 (else the broker warns about it at start).
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A broker config in the HSM test directory, pointing at nothing but the token.
fn hsm_config(name: &str, pin_file: &Path) -> PathBuf {
    let hsm = hsm();
    let path = hsm.dir.join(name);
    std::fs::write(
        &path,
        format!(
            "env: test\nclient_id: {CLIENT_ID}\n{}",
            hsm_credentials(pin_file)
        ),
    )
    .unwrap();
    path
}

/// `check` with this config must exit 1 with one line on stderr, which it returns.
async fn refused_at_start(config: &Path) -> String {
    let out = run_bin(
        &["--config", config.to_str().unwrap(), "check"],
        &[("SOFTHSM2_CONF", &hsm().conf)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test]
async fn a_wrong_pin_or_an_unknown_key_stops_the_broker_at_start_with_one_line() {
    let hsm = hsm();
    let wrong = hsm.dir.join("wrong-pin");
    write_private(&wrong, "99887766\n");
    let line = refused_at_start(&hsm_config("wrong-pin.yaml", &wrong)).await;
    assert!(
        line.contains("key.pkcs11")
            && line.contains("pkcs11 token \"broker-tests\" key \"mp-key\"")
            && line.contains("wrong PIN (CKR_PIN_INCORRECT"),
        "{line}"
    );
    assert!(!line.contains("99887766") && !line.contains(PIN));

    // An unknown key: the same, naming what is missing.
    let config = hsm.dir.join("unknown-key.yaml");
    let yaml = std::fs::read_to_string(hsm_config("pin.yaml", &hsm.dir.join("pin"))).unwrap();
    std::fs::write(&config, yaml.replace(KEY_LABEL, "no-such-key")).unwrap();
    let line = refused_at_start(&config).await;
    assert!(line.contains("no such private key on the token"), "{line}");
}

#[tokio::test]
async fn rotate_with_a_key_in_the_hsm_is_refused_at_start_with_one_line_saying_renew_only() {
    let hsm = hsm();
    let base = std::fs::read_to_string(hsm_config("rotate.yaml", &hsm.dir.join("pin"))).unwrap();
    let rotation = format!(
        "key_rotation:\n  self_service:\n    client_id: ss-client\n    key:\n      path: {}\n      password_file: {}\n  action: {{action}}\n",
        fixture("business-legacy.p12"),
        fixture("business-legacy.password"),
    );
    let config = hsm.dir.join("rotate.yaml");
    std::fs::write(
        &config,
        format!("{base}{}", rotation.replace("{action}", "rotate")),
    )
    .unwrap();
    let line = refused_at_start(&config).await;
    assert!(
        line.contains("key_rotation.action: rotate")
            && line.contains("key.pkcs11: renew-only")
            && line.contains("use action: renew"),
        "{line}"
    );
    // renew is accepted with the same key.
    let renew = hsm.dir.join("renew.yaml");
    std::fs::write(
        &renew,
        format!("{base}{}", rotation.replace("{action}", "renew")),
    )
    .unwrap();
    let out = run_bin(
        &["--config", renew.to_str().unwrap(), "check"],
        &[("SOFTHSM2_CONF", &hsm.conf)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("renew-only"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[tokio::test]
async fn check_and_jwks_say_where_the_hsm_key_is_and_print_its_public_jwk() {
    let hsm = hsm();
    let config = hsm_config("check.yaml", &hsm.dir.join("pin"));
    let envs = [("SOFTHSM2_CONF", hsm.conf.as_path())];
    let out = run_bin(&["--config", config.to_str().unwrap(), "check"], &envs).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("key location:    pkcs11 token \"broker-tests\" key \"mp-key\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("key pair:        ok (a probe signature"),
        "{stdout}"
    );

    let out = run_bin(&["--config", config.to_str().unwrap(), "jwks"], &envs).await;
    assert!(out.status.success());
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jwk = &set["keys"][0];
    assert_eq!(jwk["kid"], KID);
    assert_eq!(
        maskinporten_broker::public_key_from_jwk(jwk).unwrap(),
        public_key("client-key.pub.pem")
    );
}

// ---------------------------------------------------------------------------------------------
// OpenBao transit

pub(crate) const ROOT_TOKEN: &str = "root-token-of-the-test-server";

/// `bao server -dev` on a loopback port, transit enabled and the fixture key imported as `mp`.
pub(crate) struct Bao {
    pub(crate) port: u16,
    child: tokio::process::Child,
}

impl Bao {
    pub(crate) async fn start() -> Bao {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Bao {
        let child = Command::new(&tools().bao)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            .env("HOME", std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let bao = Bao { port, child };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http
            .get(bao.url("sys/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(started.elapsed() < Duration::from_secs(20), "bao starts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bao.post("sys/mounts/transit", json!({"type": "transit"}), ROOT_TOKEN)
            .await;
        bao.import_fixture_key().await;
        bao
    }

    pub(crate) fn address(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v1/{path}", self.port)
    }

    pub(crate) async fn post(&self, path: &str, body: Value, token: &str) -> Value {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .header("X-Vault-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "POST {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    /// `bao transit import`: the CLI wraps the key with transit's wrapping key (docs/signers.md).
    async fn import_fixture_key(&self) {
        use base64::Engine;
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(
            &std::fs::read_to_string(fixture("client-key.pem")).unwrap(),
        )
        .unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
        )
        .unwrap();
        let out = Command::new(&tools().bao)
            .args([
                "transit",
                "import",
                "transit/keys/mp",
                &format!("@{}", file.path().display()),
                "type=rsa-2048",
            ])
            .env("BAO_ADDR", self.address())
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("HOME", std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "bao transit import: {out:?}");
    }

    /// A new token (child of root) that may sign.
    pub(crate) async fn token(&self) -> String {
        let answer = self
            .post("auth/token/create", json!({"ttl": "1h"}), ROOT_TOKEN)
            .await;
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

pub(crate) fn vault_credentials(bao: &Bao, token_file: &Path) -> String {
    format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: {}\n    name: mp\n    token_file: {}\n",
        bao.address(),
        token_file.display()
    )
}

async fn vault_env(bao: &Bao, token_file: &Path, extra: &str) -> TestEnv {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = config_yaml_with(&mp, &altinn, &vault_credentials(bao, token_file), extra);
    TestEnv::start_settings(mp, altinn, Settings::from_yaml(&yaml).unwrap()).await
}

#[tokio::test]
async fn a_token_is_fetched_through_vault_transit_and_its_grant_verifies() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, bao.token().await).unwrap();
    let env = vault_env(&bao, &token_file, "").await;
    env.get_json("/token/admin", 200).await;
    env.get_json(&format!("/token/skd?org={ORG}"), 200).await;
    assert_signed_by_fixture_key(&env, 2);
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(
        ready["signer"],
        format!("vault transit at {} (key mp)", bao.address())
    );
    assert_eq!(ready["upstreams"]["signer"]["consecutive_failures"], 0);
}

#[tokio::test]
async fn vault_stopped_mid_run_is_a_503_naming_it_while_cached_tokens_are_served_then_recovers() {
    let bao = Bao::start().await;
    let port = bao.port;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, ROOT_TOKEN).unwrap();
    let env = vault_env(&bao, &token_file, "http_client:\n  timeout: 2s\n").await;
    let cached = env.get_json("/token/admin", 200).await;
    bao.stop().await;

    let path = format!("/token/skd?org={ORG}");
    let r = env.get(&path).await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        format!(
            "cannot sign the grant: vault transit at http://127.0.0.1:{port}/ (key mp): connection refused"
        )
    );
    assert_eq!(problem["upstream"], "signer");
    // The cached token is still served, and /readyz says what fails.
    assert_eq!(env.get_json("/token/admin", 200).await, cached);
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["status"], "degraded");
    assert!(ready["upstreams"]["signer"]["consecutive_failures"].as_u64() >= Some(1));

    let _bao = Bao::start_on(port).await;
    // Recovery without a restart: a failure is remembered for a second (OUTAGE_MEMORY), so the
    // first attempt right after Vault is back may still be that 503; within 10 s it is a 200.
    let mut status = 0;
    for _ in 0..50 {
        status = env.get(&path).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "the broker recovers once Vault is back");
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["upstreams"]["signer"]["consecutive_failures"], 0);
    assert_signed_by_fixture_key(&env, 2);
}

#[tokio::test]
async fn a_rotated_vault_token_file_is_read_again_without_a_restart() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    let first = bao.token().await;
    std::fs::write(&token_file, &first).unwrap();
    let env = vault_env(&bao, &token_file, "").await;
    env.get_json("/token/admin", 200).await;

    // The first token is revoked: signing is refused, and the answer never quotes a token.
    bao.post("auth/token/revoke-self", json!({}), &first).await;
    let problem = env.problem(&format!("/token/skd?org={ORG}"), 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("permission denied (HTTP 403)"),
        "{problem}"
    );
    assert!(!problem.to_string().contains(&first));

    // A Vault agent writes the next one.
    let second = bao.token().await;
    std::fs::write(&token_file, &second).unwrap();
    // Another key than the one that failed (a failure is answered from memory for a second).
    env.get_json(&format!("/token/skd?org={OTHER_ORG}"), 200)
        .await;
    assert_signed_by_fixture_key(&env, 2);
}

#[tokio::test]
async fn keygen_pkcs11_creates_the_key_on_the_token_once_and_prints_its_public_jwk() {
    let hsm = hsm();
    let config = hsm.dir.join("keygen.yaml");
    std::fs::write(
        &config,
        format!(
            "env: test\nclient_id: {CLIENT_ID}\nkid: made-on-token\nkey:\n  pkcs11:\n    module: {}\n    token_label: {TOKEN}\n    key_label: made-by-keygen\n",
            tools().module.display()
        ),
    )
    .unwrap();
    let run = |command: &'static str| {
        let config = config.clone();
        async move {
            Command::new(BIN)
                .args(["--config", config.to_str().unwrap(), command])
                .args(if command == "keygen" {
                    &["--pkcs11"][..]
                } else {
                    &[][..]
                })
                .env("SOFTHSM2_CONF", &hsm.conf)
                .env("BROKER__KEY__PKCS11__PIN", PIN)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap()
        }
    };
    let made = run("keygen").await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let jwk: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(jwk["kid"], "made-on-token");
    assert!(maskinporten_broker::public_key_from_jwk(&jwk).is_some());
    // The broker reads the same key back.
    let listed = run("jwks").await;
    let set: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(set["keys"][0], jwk);
    let again = run("keygen").await;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to make a second"));
}

#[tokio::test]
async fn keygen_vault_transit_creates_the_key_once_and_prints_its_public_jwk() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "env: test\nclient_id: {CLIENT_ID}\nkid: made-in-vault\nkey:\n  vault_transit:\n    address: {}\n    name: made\n",
            bao.address()
        ),
    )
    .unwrap();
    let keygen = || {
        Command::new(BIN)
            .args([
                "--config",
                config.to_str().unwrap(),
                "keygen",
                "--vault-transit",
            ])
            .env("BROKER__KEY__VAULT_TRANSIT__TOKEN", ROOT_TOKEN)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
    };
    let made = keygen().await.unwrap();
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{stderr}");
    assert!(!stderr.contains(ROOT_TOKEN));
    let jwk: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(jwk["kid"], "made-in-vault");
    let again = keygen().await.unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to create it again"));
}

#[tokio::test]
async fn kubernetes_login_gets_the_vault_token_and_logs_in_again_before_its_lease_runs_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let bao = Bao::start().await;
    // A service-account token as the kubelet mounts it (its claims name the account).
    let claims = json!({
        "iss": "kubernetes/serviceaccount",
        "sub": "system:serviceaccount:team:broker",
        "kubernetes.io/serviceaccount/namespace": "team",
        "kubernetes.io/serviceaccount/service-account.name": "broker",
        "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
    });
    let jwt = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64.encode(br#"{"alg":"RS256"}"#),
            b64.encode(claims.to_string())
        )
    };
    // The Kubernetes API's TokenReview, which Vault asks: it accepts exactly that token.
    let reviews = Arc::new(AtomicUsize::new(0));
    let (count, expected) = (reviews.clone(), jwt.clone());
    let review = axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
        count.fetch_add(1, Ordering::SeqCst);
        let ok = body["spec"]["token"] == expected.as_str();
        (
            axum::http::StatusCode::CREATED,
            axum::Json(json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "status": {"authenticated": ok, "user": {
                    "username": "system:serviceaccount:team:broker", "uid": "uid-1"}},
            })),
        )
    });
    let api =
        serve(axum::Router::new().route("/apis/authentication.k8s.io/v1/tokenreviews", review))
            .await;
    let (leaf, _) = crate::credentials::business_certificate(crate::credentials::valid_for(30));
    bao.post(
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
        ROOT_TOKEN,
    )
    .await;
    bao.post(
        "auth/kubernetes/config",
        json!({"kubernetes_host": format!("http://{api}"), "disable_local_ca_jwt": true,
               "token_reviewer_jwt": "reviewer", "kubernetes_ca_cert": crate::credentials::pem_certificate(&leaf)}),
        ROOT_TOKEN,
    )
    .await;
    bao.post(
        "sys/policies/acl/signer",
        json!({"policy": "path \"transit/sign/mp\" { capabilities = [\"update\"] }\npath \"transit/keys/mp\" { capabilities = [\"read\"] }"}),
        ROOT_TOKEN,
    )
    .await;
    // Tokens of this role live 3 s: the broker must log in again after 2.
    bao.post(
        "auth/kubernetes/role/maskinporten-broker",
        json!({"bound_service_account_names": ["broker"], "bound_service_account_namespaces": ["team"],
               "token_policies": ["signer"], "token_ttl": "3s", "token_max_ttl": "3s"}),
        ROOT_TOKEN,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &jwt).unwrap();

    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let credentials = format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: {}\n    name: mp\n    kubernetes:\n      role: maskinporten-broker\n      jwt_file: {}\n",
        bao.address(),
        jwt_file.display()
    );
    let yaml = config_yaml_with(&mp, &altinn, &credentials, "");
    let env = TestEnv::start_settings(mp, altinn, Settings::from_yaml(&yaml).unwrap()).await;
    assert_eq!(reviews.load(Ordering::SeqCst), 1, "one login at start");
    env.get_json("/token/admin", 200).await;
    assert_eq!(reviews.load(Ordering::SeqCst), 1, "the token is reused");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    env.get_json(&format!("/token/skd?org={ORG}"), 200).await;
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        2,
        "logged in again before the lease ran out"
    );
    assert_signed_by_fixture_key(&env, 2);
}

#[tokio::test]
async fn a_certificate_on_the_token_goes_into_every_grant_as_x5c() {
    let _turn = HSM_TURN.lock().await;
    let hsm = hsm();
    let (leaf, _) = crate::credentials::business_certificate(crate::credentials::valid_for(30));
    let der = hsm.dir.join("business-cert.der");
    std::fs::write(&der, &leaf).unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            tools().module.to_str().unwrap(),
            "--token-label",
            TOKEN,
        ])
        .args([
            "--login",
            "--pin",
            PIN,
            "--write-object",
            der.to_str().unwrap(),
        ])
        .args(["--type", "cert", "--label", "business-cert", "--id", "01"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "pkcs11-tool: {out:?}");
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let credentials = format!(
        "{}    certificate_label: business-cert\n",
        hsm_credentials(&hsm.dir.join("pin"))
    );
    let yaml = config_yaml_with(&mp, &altinn, &credentials, "");
    let env = TestEnv::start_settings(mp, altinn, Settings::from_yaml(&yaml).unwrap()).await;
    // Two profiles, two grants: the certificate is in each, not only in the first.
    env.get_json("/token/admin", 200).await;
    env.get_json("/token/altinn", 200).await;
    assert_eq!(env.mp.violations(), Vec::<String>::new());
    let grants = env.mp.grants();
    assert_eq!(grants.len(), 2);
    use base64::Engine;
    for grant in grants {
        assert_eq!(
            grant.header.x5c.expect("x5c in the header"),
            [base64::engine::general_purpose::STANDARD.encode(&leaf)]
        );
    }
}

#[tokio::test]
async fn neither_the_pin_nor_the_vault_token_appears_in_a_trace_log() {
    let hsm = hsm();
    let bao = Bao::start().await;
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let dir = tempfile::tempdir().unwrap();
    let hsm_yaml = format!(
        "kid: {KID}\nkey:\n  pkcs11:\n    module: {}\n    token_label: {TOKEN}\n    key_label: {KEY_LABEL}\n",
        tools().module.display()
    );
    let vault_yaml = format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: {}\n    name: mp\n",
        bao.address()
    );
    for (name, credentials, secret_env, secret) in [
        ("hsm", hsm_yaml, "BROKER__KEY__PKCS11__PIN", PIN),
        (
            "vault",
            vault_yaml,
            "BROKER__KEY__VAULT_TRANSIT__TOKEN",
            ROOT_TOKEN,
        ),
    ] {
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, config_yaml_with(&mp, &altinn, &credentials, "")).unwrap();
        let out = Command::new(BIN)
            .args(["--config", config.to_str().unwrap(), "token", "admin"])
            .env("RUST_LOG", "trace")
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env(secret_env, secret)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {log}");
        assert!(log.lines().count() > 10, "{name}: the trace log is written");
        assert!(!log.contains(secret), "{name}: the secret is in the log");
    }
}
