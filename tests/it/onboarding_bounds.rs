//! Onboarding bounded (#27): `external_ref` checked before any call, `clients[].orgs` bounding
//! `POST /systemusers/requests` and filtering `GET /systemusers`, and a system Altinn does not
//! know answered as a 409 that says to run `system register`.

use serde_json::{Value, json};

use crate::register_fake::FakeRegister;
use crate::support::*;
use maskinporten_broker::hash_api_key;

const SYSTEM_ID: &str = "991825827_bounds";
const KEY: &str = "onboarding-bounds-key-0123456789";

fn system_yaml() -> String {
    format!(
        "system:\n  id: {SYSTEM_ID}\n  name: {{nb: B, nn: B, en: B}}\n  description: {{nb: B, nn: B, en: B}}\n  rights: [ske-innrapportering-aksjonaerregisteroppgave]\n"
    )
}

struct Bounds {
    env: TestEnv,
    register: FakeRegister,
    config: tempfile::TempDir,
}

/// A broker (env test) with `system:` against a fake register, and one onboarding client bound
/// to ORG; the system registered when `registered`.
async fn start(registered: bool) -> Bounds {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let register = FakeRegister::start(&mp).await;
    let extra = format!(
        "  altinn_platform: {}\n{}clients:\n  - name: signup\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: ['{ORG}']\n    onboarding: true\n",
        register.platform(),
        system_yaml(),
        hash_api_key(KEY)
    );
    let yaml = config_yaml(&mp, &altinn, &extra);
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("broker.yaml"), &yaml).unwrap();
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let env = TestEnv::start_settings(mp, altinn, settings).await;
    if registered {
        let out = cli(&config, &["system", "register", "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Bounds {
        env,
        register,
        config,
    }
}

async fn cli(config: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config.path().join("broker.yaml"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

async fn ask(b: &Bounds, body: Value) -> (u16, Value) {
    let r = b
        .env
        .http
        .post(b.env.url("/systemusers/requests"))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_external_ref_that_could_leave_its_path_segment_is_a_400_before_any_call() {
    let b = start(false).await;
    let long = "r".repeat(256);
    for bad in [
        ".",
        "..",
        "a/b",
        "../../systemregister/vendor",
        "a\u{1}b",
        long.as_str(),
    ] {
        let (status, p) = ask(&b, json!({"org": ORG, "external_ref": bad})).await;
        assert_eq!(status, 400, "{bad:?}: {p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("external_ref"),
            "{p}"
        );
        let out = cli(
            &b.config,
            &["systemuser", "request", "--org", ORG, "--external-ref", bad],
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("external_ref"));
    }
    assert!(b.register.calls().is_empty(), "{:?}", b.register.calls());
    assert_eq!(b.env.mp.calls(), 0, "not even the admin token was fetched");
}

#[tokio::test]
async fn a_clients_orgs_bound_its_requests_and_filter_its_list() {
    let b = start(true).await;
    let calls = b.register.calls().len();
    let (status, p) = ask(&b, json!({"org": OTHER_ORG})).await;
    assert_eq!(status, 403, "{p}");
    assert!(p["detail"].as_str().unwrap().contains(OTHER_ORG), "{p}");
    assert_eq!(b.register.calls().len(), calls, "refused before any call");
    let (status, _) = ask(&b, json!({"org": ORG})).await;
    assert_eq!(status, 201);

    b.register
        .add_users(SYSTEM_ID, &[ORG.to_owned(), OTHER_ORG.to_owned()]);
    let list: Value = b
        .env
        .http
        .get(b.env.url("/systemusers"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orgs: Vec<&str> = list["system_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["org"].as_str().unwrap())
        .collect();
    assert_eq!(orgs, [ORG], "{list}");
}

#[tokio::test]
async fn a_system_altinn_does_not_know_is_a_409_saying_to_register_it() {
    let b = start(false).await;
    let (status, p) = ask(&b, json!({"org": ORG})).await;
    assert_eq!(status, 409, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("system register"),
        "{p}"
    );
}
