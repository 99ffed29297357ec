//! Rights added after onboarding: `system register` counting the customers who lack a new right,
//! `systemuser change` and `systemuser sync` asking them through Altinn's change requests, the
//! refusals before any call, `--wait`, and the HTTP routes for a vendor's own pages. Against the
//! strict fake of Altinn's vendor API (`register_fake.rs`), and on the simulator of `env: local`.

use std::path::Path;

use serde_json::{Value, json};

use crate::onboarding::{
    SYSTEM, SYSTEM_ID, Vendor, Waiting, cli, click, eventually, fails_saying, lines, ok_lines,
    shipped_broker, stderr,
};
use crate::support::*;

const OLD_RIGHT: &str = "ske-innrapportering-aksjonaerregisteroppgave";
const NEW_RIGHT: &str = "ske-skattemelding";

/// `SYSTEM` with a second right.
fn system_with_new_right() -> String {
    SYSTEM.replace(
        &format!("rights: [{OLD_RIGHT}]"),
        &format!("rights: [{OLD_RIGHT}, {NEW_RIGHT}]"),
    )
}

/// A registered vendor whose customers `orgs` hold the old right, then `system:` gains the new
/// one and `system register` runs: its one JSON line.
async fn vendor_gaining_a_right(orgs: &[String]) -> (Vendor, Value) {
    let v = Vendor::registered().await;
    v.register.add_users_holding(SYSTEM_ID, orgs, &[OLD_RIGHT]);
    v.write(&system_with_new_right());
    let registered = ok_lines(&v.cli(&["system", "register", "--json"]).await).remove(0);
    (v, registered)
}

/// `systemuser change --org ORG` and `extra`.
async fn change(v: &Vendor, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["systemuser", "change", "--org", ORG];
    args.extend_from_slice(extra);
    v.cli(&args).await
}

fn posts(v: &Vendor) -> usize {
    v.register.change_queries().len()
}

#[tokio::test]
async fn register_counts_who_lacks_the_new_right_and_change_asks_for_it_once_with_altinns_exact_query_and_body()
 {
    let (v, registered) = vendor_gaining_a_right(&[ORG.to_owned()]).await;
    assert_eq!(
        registered,
        json!({"system_id": SYSTEM_ID, "action": "updated", "customers_lacking": 1})
    );
    let text = v.cli(&["system", "register"]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("unchanged"));

    let first = ok_lines(&change(&v, &["--json"]).await).remove(0);
    assert_eq!(first["status"], "New");
    assert_eq!(first["org"], ORG);
    assert_eq!(first["external_ref"], ORG);
    let id = first["id"].as_str().unwrap().to_owned();
    let user = first["system_user_id"].as_str().unwrap().to_owned();
    assert!(first["confirm_url"].as_str().unwrap().contains(&id));
    assert!(first["created"].is_string());
    let queries = v.register.change_queries();
    assert_eq!(
        queries,
        [format!("correlation-id={id}&system-user-id={user}")],
        "a new correlation id, the system user's id"
    );
    let sent = &v.register.changes()[0];
    for (list, expected) in [
        (
            "requiredRights",
            json!([{"resource": [{"id": "urn:altinn:resource", "value": NEW_RIGHT}]}]),
        ),
        ("unwantedRights", json!([])),
        ("requiredAccessPackages", json!([])),
        ("unwantedAccessPackages", json!([])),
        ("redirectUrl", json!("")),
    ] {
        assert_eq!(sent[list], expected, "{list}");
    }

    // Asked again, in any form: the pending change as it is, not a second request.
    for again in [
        vec!["systemuser", "change", "--org", ORG, "--json"],
        vec![
            "systemuser",
            "change",
            "--org",
            ORG,
            "--add-right",
            NEW_RIGHT,
            "--json",
        ],
        vec!["systemuser", "sync", "--json"],
    ] {
        let line = ok_lines(&v.cli(&again).await).remove(0);
        assert_eq!((&line["id"], &line["status"]), (&json!(id), &json!("New")));
    }
    assert_eq!(posts(&v), 1);
    let status = ok_lines(&v.cli(&["systemuser", "status", &id, "--json"]).await).remove(0);
    assert_eq!(
        (&status["id"], &status["status"]),
        (&json!(id), &json!("New"))
    );

    v.register.accept_change(&id);
    assert!(v.register.held_rights(ORG).contains(&NEW_RIGHT.to_owned()));
    let done = ok_lines(&change(&v, &["--json"]).await).remove(0);
    assert_eq!(done["status"], "NoChangeNeeded", "{done}");
    assert_eq!(
        (&done["id"], &done["confirm_url"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(done["system_user_id"], user.as_str());
    assert_eq!(posts(&v), 1, "NoChangeNeeded asks Altinn nothing");
    let registered = ok_lines(&v.cli(&["system", "register", "--json"]).await).remove(0);
    assert_eq!(registered["action"], "unchanged");

    // Removing a right it holds asks for exactly that.
    let removed = change(&v, &["--remove-right", OLD_RIGHT, "--json"]).await;
    assert_eq!(ok_lines(&removed)[0]["status"], "New");
    let sent = v.register.changes().pop().unwrap();
    assert_eq!(sent["requiredRights"], json!([]));
    assert_eq!(sent["unwantedRights"][0]["resource"][0]["value"], OLD_RIGHT);
    assert_ne!(
        v.register.change_queries()[1],
        v.register.change_queries()[0]
    );
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn sync_asks_every_customer_across_pages_once_and_twice_prints_the_same_ids() {
    let orgs = valid_orgs(5);
    let (v, registered) = vendor_gaining_a_right(&orgs).await;
    assert_eq!(registered["customers_lacking"], 5);
    v.register.add_agent_user(SYSTEM_ID, OTHER_ORG);
    v.register.set_page_size(2);
    let before = v.register.calls().len();

    let out = v.cli(&["systemuser", "sync", "--json"]).await;
    let first = ok_lines(&out);
    assert_eq!(first.len(), 5, "one line per standard system user");
    assert!(first.iter().all(|l| l["status"] == "New"), "{first:?}");
    let err = stderr(&out);
    assert!(
        err.contains(OTHER_ORG) && err.contains("agent") && err.contains("request it anew"),
        "{err}"
    );
    let pages = |kind: &str| {
        v.register.calls()[before..]
            .iter()
            .filter(|c| c.starts_with("GET") && c.contains(kind))
            .count()
    };
    assert_eq!(
        pages("/systemuser/vendor/bysystem/"),
        3,
        "6 system users, 2 a page"
    );
    let orgs_asked: Vec<&str> = first.iter().map(|l| l["org"].as_str().unwrap()).collect();
    assert_eq!(
        orgs_asked,
        orgs.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let second = ok_lines(&v.cli(&["systemuser", "sync", "--json"]).await);
    let ids = |lines: &[Value]| lines.iter().map(|l| l["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&second), ids(&first), "the same pending changes");
    assert_eq!(v.register.changes().len(), 5, "nothing new");
    assert!(
        pages("/changerequest/vendor/bysystem/") == 1 + 3,
        "the change requests are read across their pages too"
    );

    v.register.accept_change(first[0]["id"].as_str().unwrap());
    let only = ok_lines(
        &v.cli(&["systemuser", "sync", "--org", &orgs[0], "--json"])
            .await,
    );
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["status"], "NoChangeNeeded");
    let text = v.cli(&["systemuser", "sync"]).await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("NoChangeNeeded") && text.contains("send the customer this link"),
        "{text}"
    );
    assert_eq!(v.register.changes().len(), 5);
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn refusals_come_before_any_change_is_asked_for() {
    let (v, _) = vendor_gaining_a_right(&[ORG.to_owned()]).await;
    let before = v.register.calls().len();
    let out = change(&v, &["--add-right", "ske-unknown"]).await;
    fails_saying(
        &out,
        &["\"ske-unknown\" is not in system.rights", "system register"],
    );
    let out = change(&v, &["--add-package", "urn:altinn:accesspackage:x"]).await;
    fails_saying(&out, &["not in system.access_packages"]);
    let out = change(&v, &["--redirect-url", "https://elsewhere.example/"]).await;
    fails_saying(&out, &["system.allowed_redirect_urls"]);
    let out = change(&v, &["--external-ref", ".."]).await;
    fails_saying(&out, &["external_ref"]);
    assert_eq!(
        v.register.calls()[before..],
        [] as [String; 0],
        "no call for a refusal"
    );

    let out = v.cli(&["systemuser", "change", "--org", OTHER_ORG]).await;
    fails_saying(
        &out,
        &[
            &format!("organisation {OTHER_ORG} has no system user"),
            "systemuser request",
        ],
    );
    let out = change(&v, &["--external-ref", "other-ref"]).await;
    fails_saying(&out, &["has no system user", "\"other-ref\""]);

    v.register.add_agent_user(SYSTEM_ID, OTHER_ORG);
    let out = v.cli(&["systemuser", "change", "--org", OTHER_ORG]).await;
    fails_saying(
        &out,
        &[
            "agent (client delegation)",
            "cannot change",
            "request it anew",
        ],
    );
    assert_eq!(
        v.register.change_queries(),
        Vec::<String>::new(),
        "nothing asked"
    );

    // Altinn's own codes as sentences.
    v.register.refuse_next(409, "AUTH-00061");
    let out = v.cli(&["systemuser", "change", "--org", ORG]).await;
    fails_saying(&out, &["(AUTH-00061)", "new correlation id"]);
    let out = v
        .cli(&[
            "systemuser",
            "status",
            "00000000-0000-4000-8000-000000000000",
        ])
        .await;
    fails_saying(&out, &["no system-user request with id"]);
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

/// `systemuser change --org ORG --wait --json ...` running.
async fn wait_for_change(v: &Vendor, extra: &[&str]) -> Waiting {
    let mut args = vec!["systemuser", "change", "--org", ORG, "--wait", "--json"];
    args.extend_from_slice(extra);
    Waiting::start(&v.config, &args, &[]).await
}

#[tokio::test]
async fn change_wait_exits_0_when_approved_and_1_when_rejected_or_out_of_time() {
    let (v, _) = vendor_gaining_a_right(&[ORG.to_owned()]).await;
    let wait = wait_for_change(&v, &[]).await;
    assert_eq!(wait.first["status"], "New");
    let id = wait.first["id"].as_str().unwrap().to_owned();
    eventually("a poll of the change", || {
        v.register
            .calls()
            .iter()
            .any(|c| c.ends_with(&format!("/changerequest/vendor/{id}")))
    })
    .await;
    v.register.accept_change(&id);
    let (code, rest, err) = wait.finish().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (&rest[0]["id"], &rest[0]["status"]),
        (&json!(id), &json!("Accepted"))
    );

    let out = change(
        &v,
        &[
            "--remove-right",
            OLD_RIGHT,
            "--wait",
            "--timeout",
            "1s",
            "--json",
        ],
    )
    .await;
    fails_saying(
        &out,
        &[
            "change request",
            "is still New after 1s",
            "systemuser status",
        ],
    );
    assert_eq!(lines(&out)[0]["status"], "New");
    let pending = lines(&out)[0]["id"].as_str().unwrap().to_owned();
    let wait = wait_for_change(&v, &["--remove-right", OLD_RIGHT]).await;
    assert_eq!(
        wait.first["id"],
        pending.as_str(),
        "the same pending change"
    );
    v.register.reject_change(&pending);
    let (code, rest, err) = wait.finish().await;
    assert_eq!((code, &rest[0]["status"]), (Some(1), &json!("Rejected")));
    assert!(err.contains("is Rejected"), "{err}");

    // NoChangeNeeded with --wait: nothing to wait for, exit 0.
    let out = change(&v, &["--add-right", NEW_RIGHT, "--wait", "--json"]).await;
    assert_eq!(ok_lines(&out)[0]["status"], "NoChangeNeeded");
    assert_eq!(v.register.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_http_routes_change_for_onboarding_clients_within_their_orgs_only() {
    let extra = format!(
        "{}clients:\n  - name: settings-page\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: [{ORG}]\n    onboarding: true\n  - name: invoicing\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: [{ORG}]\n",
        system_with_new_right(),
        maskinporten_broker::hash_api_key("key-of-settings-page"),
        maskinporten_broker::hash_api_key("key-of-invoicing"),
    );
    let v = Vendor::start(SYSTEM).await;
    ok_lines(&v.cli(&["system", "register", "--json"]).await);
    v.register.add_users_holding(
        SYSTEM_ID,
        &[ORG.to_owned(), OTHER_ORG.to_owned()],
        &[OLD_RIGHT],
    );
    v.write(&extra);
    ok_lines(&v.cli(&["system", "register", "--json"]).await);
    let app = v.serve().await;
    let base = format!("http://{}", app.addr);
    let http = reqwest::Client::new();
    let post = |key: &'static str, body: Value| {
        http.post(format!("{base}/systemusers/changes"))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(!text.contains("eyJ"), "no token in an answer: {text}");
        (status, serde_json::from_str::<Value>(&text).unwrap())
    };
    let calls = v.register.calls().len();
    let page = "key-of-settings-page";
    for (key, body, status, says) in [
        (
            "key-of-invoicing",
            json!({"org": ORG}),
            403,
            "onboarding: true",
        ),
        (
            page,
            json!({"org": OTHER_ORG}),
            403,
            "may not onboard organisation",
        ),
        (
            page,
            json!({"org": ORG, "add_rights": ["ske-unknown"]}),
            400,
            "system register",
        ),
        (
            page,
            json!({"org": ORG, "addRights": [NEW_RIGHT]}),
            400,
            "add_rights",
        ),
        (page, json!({"org": "123"}), 400, "org"),
    ] {
        let (got, problem) = answer(post(key, body.clone()).await.unwrap()).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    assert_eq!(v.register.calls().len(), calls, "refused before any call");

    let (status, created) = answer(post(page, json!({"org": ORG})).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "New");
    let (status, again) = answer(
        post(page, json!({"org": ORG, "add_rights": [NEW_RIGHT]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &again["id"]), (200, &created["id"]));
    assert_eq!(v.register.changes().len(), 1);
    let id = created["id"].as_str().unwrap();
    let get = |path: String, key: &'static str| {
        http.get(format!("{base}{path}"))
            .header("x-api-key", key)
            .send()
    };
    let (status, read) = answer(
        get(format!("/systemusers/changes/{id}"), page)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &read["id"]), (200, &created["id"]));
    let (status, _) = answer(
        get(format!("/systemusers/changes/{id}"), "key-of-invoicing")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = answer(
        get("/systemusers/changes/not-a-uuid".into(), page)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let unknown = "/systemusers/changes/00000000-0000-4000-8000-000000000000";
    let (status, _) = answer(get(unknown.into(), page).await.unwrap()).await;
    assert_eq!(status, 404);

    v.register.accept_change(id);
    let (status, done) = answer(post(page, json!({"org": ORG})).await.unwrap()).await;
    assert_eq!((status, &done["status"]), (200, &json!("NoChangeNeeded")));
    assert_eq!(done["id"], Value::Null);

    let doc: Value = fetch_json(&http, &format!("{base}/openapi.json")).await;
    let post_doc = &doc["paths"]["/systemusers/changes"]["post"]["responses"];
    for status in [
        "200", "201", "400", "401", "403", "404", "409", "501", "502", "503", "504",
    ] {
        assert!(
            post_doc[status].is_object(),
            "POST /systemusers/changes {status}"
        );
    }
    // The served schema takes only what system: allows (schemathesis finds no valid body refused).
    let body = &doc["components"]["schemas"]["SystemUserChangeBody"]["properties"];
    assert_eq!(
        body["redirect_url"]["enum"],
        json!(["https://vendor.example/done", null])
    );
    assert_eq!(
        body["add_rights"]["items"]["enum"],
        json!([OLD_RIGHT, NEW_RIGHT])
    );
    let get_doc = &doc["paths"]["/systemusers/changes/{id}"]["get"]["responses"];
    for status in ["200", "400", "403", "404"] {
        assert!(
            get_doc[status].is_object(),
            "GET /systemusers/changes/{{id}} {status}"
        );
    }
    assert_eq!(v.register.violations(), Vec::<String>::new());
    app.shutdown().await;
}

#[tokio::test]
async fn the_http_route_refuses_an_agent_system_user_with_409_and_a_missing_one_with_404() {
    let v = Vendor::registered().await;
    v.register.add_agent_user(SYSTEM_ID, OTHER_ORG);
    let app = v.serve().await;
    let http = reqwest::Client::new();
    for (org, status, says) in [
        (OTHER_ORG, 409, "delete it and request it anew"),
        (ORG, 404, "has no system user"),
    ] {
        let r = http
            .post(format!("http://{}/systemusers/changes", app.addr))
            .json(&json!({"org": org}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let problem: Value = r.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    assert_eq!(v.register.change_queries(), Vec::<String>::new());
    app.shutdown().await;
}

#[tokio::test]
async fn on_the_laptop_a_right_added_to_system_reaches_the_customer_by_sync_and_the_confirm_page() {
    // The shipped broker.yaml, served, with the simulator's Maskinporten strict.
    let strict = [("BROKER__LOCAL__SYSTEM_USERS", "strict".to_owned())];
    let (_broker, envs) = shipped_broker(&strict).await;
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("broker.yaml");
    let http = reqwest::Client::new();
    ok_lines(&cli(&shipped, &["system", "register", "--json"], &envs).await);
    let asked = ["systemuser", "request", "--org", OTHER_ORG, "--json"];
    let request = ok_lines(&cli(&shipped, &asked, &envs).await).remove(0);
    click(&http, request["confirm_url"].as_str().unwrap(), "accept").await;

    // The vendor adds a right to system: and registers it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.yaml");
    let yaml = std::fs::read_to_string(&shipped).unwrap().replace(
        &format!("rights: [{OLD_RIGHT}]"),
        &format!("rights: [{OLD_RIGHT}, {NEW_RIGHT}]"),
    );
    std::fs::write(&config, yaml).unwrap();
    let registered = ok_lines(&cli(&config, &["system", "register", "--json"], &envs).await);
    assert_eq!(registered[0]["action"], "updated");
    assert_eq!(registered[0]["customers_lacking"], 1);
    let out = cli(&config, &["system", "register"], &envs).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));

    let sync = ["systemuser", "sync", "--json"];
    let first = ok_lines(&cli(&config, &sync, &envs).await);
    assert_eq!(first.len(), 1);
    assert_eq!(
        (&first[0]["org"], &first[0]["status"]),
        (&json!(OTHER_ORG), &json!("New"))
    );
    let confirm_url = first[0]["confirm_url"].as_str().unwrap().to_owned();
    assert!(
        confirm_url.starts_with("http://127.0.0.1:") && confirm_url.contains("/changerequest?id="),
        "{confirm_url}"
    );
    let again = ok_lines(&cli(&config, &sync, &envs).await);
    assert_eq!(again[0]["id"], first[0]["id"], "twice: the same change");

    let page = click(&http, &confirm_url, "accept").await;
    assert!(page.contains("Accepted"), "{page}");
    let id = first[0]["id"].as_str().unwrap();
    let status = ok_lines(&cli(&config, &["systemuser", "status", id, "--json"], &envs).await);
    assert_eq!(status[0]["status"], "Accepted");
    let done = ok_lines(&cli(&config, &sync, &envs).await);
    assert_eq!(
        done[0]["status"], "NoChangeNeeded",
        "the system user now holds the right"
    );
    let registered = ok_lines(&cli(&config, &["system", "register", "--json"], &envs).await);
    assert_eq!(registered[0]["action"], "unchanged");

    // A right the system does not list: refused before any call, saying what to do.
    let out = cli(
        &config,
        &[
            "systemuser",
            "change",
            "--org",
            OTHER_ORG,
            "--add-right",
            "ske-x",
        ],
        &envs,
    )
    .await;
    fails_saying(&out, &["not in system.rights", "system register"]);
    assert!(!stderr(&out).contains("eyJ"));
}

#[tokio::test]
async fn sync_reads_at_most_10000_change_requests_and_then_asks_for_nothing() {
    let (v, _) = vendor_gaining_a_right(&[ORG.to_owned()]).await;
    v.register.set_page_size(1000);
    v.register.add_old_changes(SYSTEM_ID, 10_000);
    let done = ok_lines(&v.cli(&["systemuser", "sync", "--json"]).await);
    assert_eq!(done[0]["status"], "New", "10000 read to the end");
    v.register.add_old_changes(SYSTEM_ID, 1);
    let out = v.cli(&["systemuser", "sync"]).await;
    fails_saying(
        &out,
        &["more than 10000 change requests", "asks for nothing"],
    );
    assert_eq!(v.register.change_queries().len(), 1);
}
