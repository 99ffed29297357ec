//! Onboarding customers, as a vendor does it: `system register`, `systemuser request --wait`, the
//! customer's click, `systemuser list`, and the HTTP routes for a sign-up page. Against a strict
//! fake of Altinn's register API configured as `env: test`, and against the simulator of
//! `env: local` (the shipped broker.yaml, the four laptop steps).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::register_fake::FakeRegister;
use crate::support::*;

pub(crate) const SYSTEM_ID: &str = "991825827_wenche";
pub(crate) const SYSTEM: &str = "system:\n  id: 991825827_wenche\n  name: {nb: Wenche, nn: Wenche, en: Wenche}\n  description: {nb: Aksjonærregisteroppgave, nn: Aksjonærregisteroppgåve, en: Shareholder register}\n  rights: [ske-innrapportering-aksjonaerregisteroppgave]\n  allowed_redirect_urls: ['https://vendor.example/done']\n";

/// A vendor's broker config (env test) against the fakes, written to a temporary directory.
pub(crate) struct Vendor {
    mp: FakeMaskinporten,
    _altinn: FakeAltinn,
    pub(crate) register: FakeRegister,
    pub(crate) config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Vendor {
    pub(crate) async fn start(extra: &str) -> Vendor {
        let mp = FakeMaskinporten::start().await;
        let altinn = FakeAltinn::start(&mp).await;
        let register = FakeRegister::start(&mp).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("broker.yaml");
        let vendor = Vendor {
            mp,
            _altinn: altinn,
            register,
            config,
            _dir: dir,
        };
        vendor.write(extra);
        vendor
    }

    /// The config with `extra` (top-level keys, `system:` among them) after the endpoints.
    pub(crate) fn write(&self, extra: &str) {
        let yaml = format!(
            "env: test\nclient_id: {CLIENT_ID}\nkid: {KID}\nkey:\n  path: {}\nendpoints:\n  issuer: {}\n  token_url: {}\n  altinn_exchange_url: {}\n  altinn_platform: {}\nlog:\n  level: warn\n{extra}",
            fixture("client-key.pem"),
            self.mp.issuer(),
            self.mp.token_url(),
            self._altinn.exchange_url(),
            self.register.platform(),
        );
        std::fs::write(&self.config, yaml).unwrap();
    }

    /// A vendor whose system is registered.
    pub(crate) async fn registered() -> Vendor {
        let v = Vendor::start(SYSTEM).await;
        ok_lines(&v.cli(&["system", "register", "--json"]).await);
        v
    }

    pub(crate) async fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config, args, &[]).await
    }

    /// The broker of this config serving in-process on a loopback port.
    pub(crate) async fn serve(&self) -> maskinporten_broker::app::App {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        maskinporten_broker::app::App::spawn(settings, listener)
            .await
            .unwrap()
    }

    /// `systemuser request --org org --wait --json`, running.
    async fn wait_for(&self, org: &str) -> Waiting {
        let args = ["systemuser", "request", "--org", org, "--wait", "--json"];
        Waiting::start(&self.config, &args, &[]).await
    }
}

/// The binary with `--config config` and `args`, at most 60 s.
pub(crate) async fn cli(config: &Path, args: &[&str], envs: &[(&str, String)]) -> Output {
    let child = command(config, args, envs).output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("the command finishes")
        .unwrap()
}

fn command(config: &Path, args: &[&str], envs: &[(&str, String)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every line of stdout as JSON; the command must have exited 0.
pub(crate) fn ok_lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "exit 0; stderr: {}", stderr(o));
    lines(o)
}

pub(crate) fn lines(o: &Output) -> Vec<Value> {
    let out = stdout(o);
    assert!(!out.contains("eyJ"), "no token in the output: {out}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Exit 1, one clear line on stderr containing each of `expected`; no token anywhere.
pub(crate) fn fails_saying(o: &Output, expected: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit 1; stderr: {err}");
    for e in expected {
        assert!(err.contains(e), "{e:?} in {err}");
    }
    assert!(!err.contains("eyJ") && !stdout(o).contains("eyJ"), "{err}");
    err
}

#[tokio::test]
async fn system_register_creates_then_changes_nothing_then_puts_a_changed_definition() {
    let v = Vendor::start(SYSTEM).await;
    let shown = ok_lines(&v.cli(&["system", "show", "--json"]).await);
    assert_eq!(
        shown,
        [json!({"system_id": SYSTEM_ID, "registered": false, "differences": []})]
    );
    let first = ok_lines(&v.cli(&["system", "register", "--json"]).await);
    assert_eq!(
        first,
        [json!({"system_id": SYSTEM_ID, "action": "created"})]
    );
    let registered = v.register.system(SYSTEM_ID).unwrap();
    assert_eq!(
        registered["vendor"],
        json!({"authority": "iso6523-actorid-upis", "ID": "0192:991825827"})
    );
    assert_eq!(
        registered["clientId"],
        json!([CLIENT_ID]),
        "absent client_ids: every client's"
    );
    assert_eq!(
        registered["rights"],
        json!([{"resource": [{"id": "urn:altinn:resource", "value": "ske-innrapportering-aksjonaerregisteroppgave"}]}])
    );
    assert_eq!(
        registered["name"],
        json!({"nb": "Wenche", "nn": "Wenche", "en": "Wenche"})
    );
    assert_eq!(registered["isVisible"], true);

    let second = ok_lines(&v.cli(&["system", "register", "--json"]).await);
    assert_eq!(
        second,
        [json!({"system_id": SYSTEM_ID, "action": "unchanged"})]
    );
    let api = "/systemregister/vendor"; // as the fake records it, under its platform base
    assert_eq!(
        v.register.calls(),
        [
            format!("GET {api}/{SYSTEM_ID}"),
            format!("GET {api}/{SYSTEM_ID}"),
            format!("POST {api}"),
            format!("GET {api}/{SYSTEM_ID}"),
        ],
        "show, then GET + POST, then only GET"
    );

    v.write(&SYSTEM.replace("en: Wenche", "en: Wenche AS"));
    let shown = ok_lines(&v.cli(&["system", "show", "--json"]).await);
    assert_eq!(shown[0]["differences"][0]["field"], "name");
    assert_eq!(shown[0]["differences"][0]["registered"]["en"], "Wenche");
    assert_eq!(shown[0]["differences"][0]["configured"]["en"], "Wenche AS");
    let updated = ok_lines(&v.cli(&["system", "register", "--json"]).await);
    assert_eq!(
        updated,
        [json!({"system_id": SYSTEM_ID, "action": "updated"})]
    );
    assert_eq!(
        v.register.calls().last().unwrap(),
        &format!("PUT {api}/{SYSTEM_ID}")
    );
    assert_eq!(
        v.register.system(SYSTEM_ID).unwrap()["name"]["en"],
        "Wenche AS"
    );
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_request_twice_is_the_same_pending_request_and_an_org_with_a_system_user_is_accepted() {
    let v = Vendor::registered().await;
    let ask = [
        "systemuser",
        "request",
        "--org",
        ORG,
        "--external-ref",
        "kunde-1",
        "--json",
    ];
    let first = ok_lines(&v.cli(&ask).await).remove(0);
    assert_eq!(first["status"], "New");
    assert_eq!(first["org"], ORG);
    assert_eq!(first["external_ref"], "kunde-1");
    assert!(
        first["confirm_url"]
            .as_str()
            .unwrap()
            .contains(first["id"].as_str().unwrap())
    );
    let again = ok_lines(&v.cli(&ask).await).remove(0);
    assert_eq!(
        again["id"], first["id"],
        "the pending request, not a new one"
    );
    assert_eq!(v.register.requests().len(), 1);
    let sent = &v.register.requests()[0];
    assert_eq!(sent["externalRef"], "kunde-1");
    assert_eq!(sent["systemId"], SYSTEM_ID);

    let id = first["id"].as_str().unwrap();
    v.register.accept(id);
    let status = ok_lines(&v.cli(&["systemuser", "status", id, "--json"]).await).remove(0);
    assert_eq!(status["status"], "Accepted");
    // Altinn now answers AUTH-00004: the broker says Accepted and exits 0.
    let accepted = ok_lines(&v.cli(&ask).await).remove(0);
    assert_eq!(accepted["status"], "Accepted");
    assert_eq!(accepted["org"], ORG);
    assert_eq!(accepted["external_ref"], "kunde-1");
    let listed = ok_lines(&v.cli(&["systemuser", "list", "--json"]).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], accepted["id"]);
    assert_eq!(listed[0]["org"], ORG);
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

/// `systemuser request ... --wait --json` running, with the first line it printed (the request,
/// with its confirm URL).
pub(crate) struct Waiting {
    child: tokio::process::Child,
    pub(crate) first: Value,
    rest: tokio::task::JoinHandle<Vec<String>>,
}

impl Waiting {
    pub(crate) async fn start(config: &Path, args: &[&str], envs: &[(&str, String)]) -> Waiting {
        let mut child = command(config, args, envs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the request is printed before the wait")
            .unwrap()
            .expect("a line");
        let rest = tokio::spawn(async move {
            let mut all = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                all.push(line);
            }
            all
        });
        Waiting {
            child,
            first: serde_json::from_str(&first).unwrap(),
            rest,
        }
    }

    /// Its exit code, the lines after the first (as JSON) and stderr.
    pub(crate) async fn finish(mut self) -> (Option<i32>, Vec<Value>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the wait ends")
            .unwrap();
        let err = stderr_of(&mut self.child).await;
        let rest = self.rest.await.unwrap();
        assert!(
            !err.contains("eyJ") && !rest.iter().any(|l| l.contains("eyJ")),
            "no token: {err} {rest:?}"
        );
        let rest = rest
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (status.code(), rest, err)
    }
}

/// Poll `check` every 50 ms for at most 20 s.
pub(crate) async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 20 s");
}

#[tokio::test]
async fn wait_polls_until_accepted_then_proves_it_with_a_token_it_never_prints() {
    let v = Vendor::registered().await;
    let wait = v.wait_for(ORG).await;
    assert_eq!(wait.first["status"], "New");
    let id = wait.first["id"].as_str().unwrap().to_owned();
    let polled = |n: usize| {
        let calls = v.register.calls();
        calls.iter().filter(|c| c.ends_with(&id)).count() >= n
    };
    eventually("a first poll", || polled(1)).await;
    v.register.accept(&id);
    let (code, rest, _) = wait.finish().await;
    assert_eq!(code, Some(0));
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["status"], "Accepted");
    assert_eq!(rest[0]["id"], id.as_str());
    let expires = rest[0]["token_expires_at"]
        .as_str()
        .expect("token_expires_at");
    assert!(expires.ends_with('Z'), "{expires}");
    let proof = v.mp.grants().last().unwrap().claims.clone();
    assert_eq!(
        proof["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{ORG}"),
        "the proof is a system-user token for the org"
    );
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn wait_exits_1_when_the_customer_rejects_or_time_runs_out() {
    let v = Vendor::registered().await;
    let wait = v.wait_for(ORG).await;
    v.register.reject(wait.first["id"].as_str().unwrap());
    let (code, rest, err) = wait.finish().await;
    assert_eq!(code, Some(1));
    assert_eq!(rest[0]["status"], "Rejected");
    assert!(
        err.contains("is Rejected: make a new one with another --external-ref"),
        "{err}"
    );

    let out = v
        .cli(&[
            "systemuser",
            "request",
            "--org",
            OTHER_ORG,
            "--wait",
            "--timeout",
            "1s",
            "--json",
        ])
        .await;
    fails_saying(&out, &["is still New after 1s", "systemuser status"]);
    assert_eq!(
        lines(&out)[0]["status"],
        "New",
        "the request is printed first"
    );
}

#[tokio::test]
async fn list_follows_links_next_to_the_end_and_stops_at_10000() {
    let v = Vendor::registered().await;
    let orgs = valid_orgs(10_010);
    v.register.add_users(SYSTEM_ID, &orgs[..120]);
    let listed = ok_lines(&v.cli(&["systemuser", "list", "--json"]).await);
    assert_eq!(listed.len(), 120);
    assert_eq!(listed[119]["org"], orgs[119].as_str());
    let pages = |calls: Vec<String>| calls.iter().filter(|c| c.contains("/bysystem/")).count();
    assert_eq!(pages(v.register.calls()), 3, "50 per page");

    v.register.add_users(SYSTEM_ID, &orgs[120..]);
    v.register.set_page_size(1000);
    let out = v.cli(&["systemuser", "list", "--json"]).await;
    fails_saying(&out, &["stopped after 10000 system users"]);
    assert_eq!(lines(&out).len(), 10_000);
}

#[tokio::test]
async fn altinn_refusals_and_bad_config_say_what_to_do() {
    let v = Vendor::start(SYSTEM).await;
    v.register.add_deleted(SYSTEM_ID);
    let out = v.cli(&["system", "register"]).await;
    fails_saying(
        &out,
        &[
            "a deleted id can never be used again",
            "choose a new system.id",
        ],
    );

    let v = Vendor::start(SYSTEM).await;
    v.register.refuse_next(400, "VLD-00004");
    fails_saying(
        &v.cli(&["system", "show"]).await,
        &["(VLD-00004)", "already used by another system"],
    );
    ok_lines(&v.cli(&["system", "register", "--json"]).await);
    let out = v
        .cli(&[
            "systemuser",
            "request",
            "--org",
            ORG,
            "--redirect-url",
            "https://elsewhere.example/",
        ])
        .await;
    fails_saying(&out, &["redirect_url", "system.allowed_redirect_urls"]);
    v.register.refuse_next(400, "AUTH-00011");
    let out = v.cli(&["systemuser", "request", "--org", ORG]).await;
    fails_saying(
        &out,
        &[
            "Altinn does not know system",
            "run `maskinporten-broker system register` first",
        ],
    );
    fails_saying(
        &v.cli(&["systemuser", "request", "--org", "123456789"])
            .await,
        &["--org \"123456789\"", "check digit"],
    );

    // An admin profile without the request scope: Altinn's 403 names the scope to add.
    v.write(&format!(
        "{SYSTEM}profiles:\n  admin:\n    scopes: [altinn:authentication/systemregister.write, altinn:authentication/systemuser.request.read]\n"
    ));
    let out = v.cli(&["systemuser", "request", "--org", ORG]).await;
    fails_saying(
        &out,
        &["HTTP 403", "altinn:authentication/systemuser.request.write"],
    );

    v.write("");
    fails_saying(
        &v.cli(&["system", "show"]).await,
        &["no system: section", "docs/onboarding.md"],
    );
    v.write("system:\n  id: 991825828_wenche\n  name: {nb: a}\n  allowed_redirect_urls: [http://x.example/]\n");
    let out = v.cli(&["system", "show"]).await;
    fails_saying(
        &out,
        &[
            "system.id: \"991825828_wenche\"",
            "system.name.nn: is required",
            "system.description.en: is required",
            "system.rights: list at least one right",
            "system.allowed_redirect_urls[0]: \"http://x.example/\" must be an https URL",
        ],
    );
    // The same problems stop `serve` before it listens.
    let out = cli(&v.config, &[], &[]).await;
    fails_saying(&out, &["system.name.nn: is required"]);
}

#[tokio::test]
async fn the_http_routes_onboard_for_clients_with_onboarding_true_only() {
    let onboarding_key = "key-of-signup-page";
    let other_key = "key-of-invoicing";
    let extra = format!(
        "{SYSTEM}clients:\n  - name: signup\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: ['{ORG}', '{OTHER_ORG}']\n    onboarding: true\n  - name: invoicing\n    key_sha256: {}\n    profiles: [altinn]\n",
        maskinporten_broker::hash_api_key(onboarding_key),
        maskinporten_broker::hash_api_key(other_key),
    );
    let v = Vendor::start(&extra).await;
    ok_lines(&v.cli(&["system", "register", "--json"]).await);
    let app = v.serve().await;
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let post = |key: Option<&'static str>, body: Value| {
        let mut r = http
            .post(format!("{base}/systemusers/requests"))
            .json(&body);
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send()
    };
    let onboard = Some("key-of-signup-page");
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(!text.contains("eyJ"), "no token in an answer: {text}");
        (status, serde_json::from_str::<Value>(&text).unwrap())
    };

    let (status, body) = answer(post(None, json!({"org": ORG})).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = answer(
        post(Some("key-of-invoicing"), json!({"org": ORG}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("onboarding: true"),
        "{body}"
    );
    let (status, body) = answer(post(onboard, json!({"org": "123"})).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = answer(
        post(onboard, json!({"org": ORG, "externalRef": "x"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 400,
        "a misspelt field is refused, not ignored: {body}"
    );

    let (status, created) = answer(post(onboard, json!({"org": ORG, "external_ref": "k-1", "redirect_url": "https://vendor.example/done"})).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "New");
    assert_eq!(
        v.register.requests()[0]["redirectUrl"],
        "https://vendor.example/done"
    );
    let (status, again) = answer(
        post(onboard, json!({"org": ORG, "external_ref": "k-1"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &again["id"]), (200, &created["id"]));

    let get = |path: String| {
        http.get(format!("{base}{path}"))
            .header("x-api-key", onboarding_key)
            .send()
    };
    let id = created["id"].as_str().unwrap();
    let (status, read) = answer(get(format!("/systemusers/requests/{id}")).await.unwrap()).await;
    assert_eq!((status, &read["id"]), (200, &created["id"]));
    let (status, _) = answer(
        get("/systemusers/requests/not-a-uuid".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    v.register.accept(id);
    let (status, list) = answer(get("/systemusers".into()).await.unwrap()).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["system_users"][0]["org"], ORG);
    assert_eq!(list["system_users"][0]["external_ref"], "k-1");

    v.register.refuse_next(400, "AUTH-00021");
    let (status, refused) = answer(post(onboard, json!({"org": OTHER_ORG})).await.unwrap()).await;
    assert_eq!(status, 502, "{refused}");
    assert_eq!(refused["altinn_code"], "AUTH-00021");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("system.allowed_redirect_urls"),
        "{refused}"
    );

    let doc: Value = fetch_json(&http, &format!("{base}/openapi.json")).await;
    for path in [
        "/systemusers/requests",
        "/systemusers/requests/{id}",
        "/systemusers",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in /openapi.json");
    }
    assert!(doc["paths"]["/systemusers/requests"]["post"]["responses"]["502"].is_object());
    assert_eq!(v.register.violations(), Vec::<String>::new());
    app.shutdown().await;
}

#[tokio::test]
async fn without_clients_the_routes_are_open_and_without_system_they_say_how_to_add_it() {
    let env = TestEnv::start("").await;
    let r = env
        .http
        .post(env.url("/systemusers/requests"))
        .json(&json!({"org": ORG}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no system: section"),
        "{body}"
    );

    let v = Vendor::registered().await;
    let app = v.serve().await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/systemusers/requests", app.addr))
        .json(&json!({"org": ORG}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "no clients: open, like the token routes");
    app.shutdown().await;
}

#[tokio::test]
async fn mp_303_on_a_system_user_token_names_its_three_causes() {
    let env = TestEnv::start("").await;
    env.mp.script([Reply::Refuse(
        "invalid_altinn_customer_configuration",
        "Invalid altinn customer configuration (MP-303)",
    )]);
    let body = env
        .problem(&format!("/token/skd?org={OTHER_ORG}"), 502)
        .await;
    let detail = body["detail"].as_str().unwrap();
    for cause in ["has not accepted a system user", "clientId", "externalRef"] {
        assert!(detail.contains(cause), "{cause} in {detail}");
    }
    assert_eq!(body["mp_code"], "MP-303");
}

/// The shipped broker.yaml served as `cargo run --release` does, on a free port, with `envs`.
pub(crate) async fn shipped_broker(
    envs: &[(&'static str, String)],
) -> (tokio::process::Child, Vec<(&'static str, String)>) {
    let port = free_port();
    let mut all = vec![("BROKER__LISTEN", format!("127.0.0.1:{port}"))];
    all.extend(envs.iter().map(|(k, v)| (*k, v.clone())));
    let child = spawn_bin(&[], &all);
    wait_until_up(&format!("http://127.0.0.1:{port}/healthz")).await;
    (child, all)
}

/// Fetch the confirm page as a browser would, and submit its form with the button `action`.
pub(crate) async fn click(http: &reqwest::Client, confirm_url: &str, action: &str) -> String {
    let page = http
        .get(confirm_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = page.split("<form").nth(1).expect("the page has a form");
    assert!(form.contains("method=\"post\""), "{form}");
    let id = form
        .split("name=\"id\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries the request id");
    assert!(
        form.contains(&format!("name=\"action\" value=\"{action}\"")),
        "{form}"
    );
    // No action attribute: the browser posts to the page's own URL.
    let answer = http
        .post(confirm_url)
        .form(&[("id", id), ("action", action)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.text().await.unwrap()
}

#[tokio::test]
async fn the_four_laptop_steps_onboard_a_customer_on_the_simulator() {
    // 1. cargo run --release (the shipped config), with the simulator's Maskinporten strict.
    let strict = [("BROKER__LOCAL__SYSTEM_USERS", "strict".to_owned())];
    let (mut broker, envs) = shipped_broker(&strict).await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("broker.yaml");
    let base = format!("http://{}", envs[0].1);
    let http = reqwest::Client::new();
    let token = |org: &str| http.get(format!("{base}/token/altinn?org={org}")).send();
    let refused = token(OTHER_ORG).await.unwrap();
    assert_eq!(refused.status(), 502, "strict: no system user yet");
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_altinn_customer_configuration");
    assert_eq!(refused["mp_code"], "MP-303");

    // 2. system register (twice: the second changes nothing).
    let done = ok_lines(&cli(&config, &["system", "register", "--json"], &envs).await);
    assert_eq!(done[0]["action"], "created");
    let done = ok_lines(&cli(&config, &["system", "register", "--json"], &envs).await);
    assert_eq!(done[0]["action"], "unchanged");

    // 3. systemuser request --org X --wait, and 4. a click on the printed link.
    let args = [
        "systemuser",
        "request",
        "--org",
        OTHER_ORG,
        "--wait",
        "--json",
    ];
    let wait = Waiting::start(&config, &args, &envs).await;
    let confirm_url = wait.first["confirm_url"].as_str().unwrap().to_owned();
    assert!(
        confirm_url.starts_with("http://127.0.0.1:"),
        "{confirm_url}"
    );
    // A second request meanwhile is the same pending one.
    let again = ok_lines(
        &cli(
            &config,
            &["systemuser", "request", "--org", OTHER_ORG, "--json"],
            &envs,
        )
        .await,
    );
    assert_eq!(again[0]["id"], wait.first["id"]);
    let page = click(&http, &confirm_url, "accept").await;
    assert!(page.contains("Accepted"), "{page}");
    let (code, rest, err) = wait.finish().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rest[0]["status"], "Accepted");
    assert!(rest[0]["token_expires_at"].is_string());

    assert_eq!(
        token(OTHER_ORG).await.unwrap().status(),
        200,
        "accepted: tokens flow"
    );
    let accepted = ok_lines(
        &cli(
            &config,
            &["systemuser", "request", "--org", OTHER_ORG, "--json"],
            &envs,
        )
        .await,
    );
    assert_eq!(
        accepted[0]["status"], "Accepted",
        "AUTH-00004: already a system user"
    );
    let listed = ok_lines(&cli(&config, &["systemuser", "list", "--json"], &envs).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["org"], OTHER_ORG);

    // Rejected at the page: --wait exits 1.
    let other = valid_orgs(1).remove(0);
    let args = [
        "systemuser",
        "request",
        "--org",
        other.as_str(),
        "--wait",
        "--json",
    ];
    let wait = Waiting::start(&config, &args, &envs).await;
    click(&http, wait.first["confirm_url"].as_str().unwrap(), "reject").await;
    let (code, rest, _) = wait.finish().await;
    assert_eq!((code, &rest[0]["status"]), (Some(1), &json!("Rejected")));

    signal(broker.id().unwrap(), "TERM");
    let log = stderr_of(&mut broker).await;
    assert!(log.contains("listening"), "the broker logged: {log}");
    assert!(!log.contains("eyJ"), "no token in the broker's log: {log}");
}

#[tokio::test]
async fn the_simulator_answers_with_altinns_shapes_and_codes() {
    let (_broker, envs) = shipped_broker(&[]).await;
    let base = format!("http://{}", envs[0].1);
    let http = reqwest::Client::new();
    let ready: Value = fetch_json(&http, &format!("{base}/readyz")).await;
    let api = format!(
        "{}authentication/api/v1/",
        ready["altinn_platform"].as_str().unwrap()
    );
    let admin: Value = fetch_json(&http, &format!("{base}/token/admin")).await;
    let admin = admin["access_token"].as_str().unwrap().to_owned();
    let altinn: Value = fetch_json(&http, &format!("{base}/token/altinn")).await;
    let no_scope = altinn["access_token"].as_str().unwrap().to_owned();
    let system = json!({
        "id": "991825827_sim", "vendor": {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"},
        "name": {"nb": "a", "nn": "b", "en": "c"}, "description": {"nb": "a", "nn": "b", "en": "c"},
        "rights": [{"resource": [{"id": "urn:altinn:resource", "value": "r1"}]}], "accessPackages": [],
        "clientId": ["sim-client"], "isVisible": true, "allowedRedirectUrls": [],
    });
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<&Value>| {
        let mut r = http
            .request(method, format!("{api}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(b);
        }
        r.send()
    };
    use reqwest::Method as M;
    let r = call(M::POST, "systemregister/vendor", &no_scope, Some(&system))
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "systemregister.write is needed");
    let r = call(
        M::POST,
        "systemregister/vendor",
        "not-a-token",
        Some(&system),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = call(M::POST, "systemregister/vendor", &admin, Some(&system))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    assert!(created.is_string(), "a bare JSON string: {created}");
    let r = call(M::POST, "systemregister/vendor", &admin, Some(&system))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("VLD-00002"));
    let mut spaced = system.clone();
    spaced["id"] = json!("991825827_with space");
    let r = call(M::POST, "systemregister/vendor", &admin, Some(&spaced))
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("VLD-00013"));
    let mut foreign = system.clone();
    foreign["id"] = json!("974761076_sim");
    let r = call(M::POST, "systemregister/vendor", &admin, Some(&foreign))
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("VLD-00001"));
    let mut mismatch = system.clone();
    mismatch["id"] = json!("991825827_other");
    let r = call(
        M::PUT,
        "systemregister/vendor/991825827_sim",
        &admin,
        Some(&mismatch),
    )
    .await
    .unwrap();
    assert!(r.text().await.unwrap().contains("VLD-00012"));
    let r = call(
        M::PUT,
        "systemregister/vendor/991825827_sim",
        &admin,
        Some(&system),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"succeeded": true}));

    let orgs = valid_orgs(55);
    let mut first_id = String::new();
    for org in &orgs {
        let ask =
            json!({"systemId": "991825827_sim", "partyOrgNo": org, "rights": system["rights"]});
        let r = call(M::POST, "systemuser/request/vendor", &admin, Some(&ask))
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let request: Value = r.json().await.unwrap();
        assert_eq!(
            request["externalRef"],
            org.as_str(),
            "externalRef defaults to the org"
        );
        click(&http, request["confirmUrl"].as_str().unwrap(), "accept").await;
        if first_id.is_empty() {
            first_id = request["id"].as_str().unwrap().to_owned();
            let r = call(M::POST, "systemuser/request/vendor", &admin, Some(&ask))
                .await
                .unwrap();
            assert!(r.text().await.unwrap().contains("AUTH-00004"));
        }
    }
    let ask = json!({"systemId": "991825827_nope", "partyOrgNo": ORG, "rights": system["rights"]});
    let r = call(M::POST, "systemuser/request/vendor", &admin, Some(&ask))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("AUTH-00011"));
    let ask = json!({"systemId": "991825827_sim", "partyOrgNo": ORG});
    let r = call(M::POST, "systemuser/request/vendor", &admin, Some(&ask))
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("AUTH-00059"));

    let r = call(
        M::GET,
        &format!("systemuser/request/vendor/{first_id}"),
        &no_scope,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403, "systemuser.request.read is needed");
    let page: Value = call(
        M::GET,
        "systemuser/vendor/bysystem/991825827_sim",
        &admin,
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 50);
    let next = page["links"]["next"].as_str().expect("links.next");
    let rest: Value = http
        .get(next)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 5);
    assert!(rest["links"]["next"].is_null());
    assert_eq!(rest["data"][4]["reporteeOrgNo"], orgs[54].as_str());
}
