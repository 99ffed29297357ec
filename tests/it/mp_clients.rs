//! Several Maskinporten clients in one broker: `maskinporten_clients:` beside the top-level
//! client (named `default`), chosen per profile with `client:`; each signs with its own key and
//! id, caches apart, shows in `/readyz` and `GET /token`, reloads with the others, and an API
//! client can be restricted to some of them.

use maskinporten_broker::app::App;
use maskinporten_broker::config::Settings;
use maskinporten_broker::hash_api_key;
use std::error::Error as _;

use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::*;

const SECOND_ID: &str = "second-client";
const SECOND_KID: &str = "second-kid";
const API_KEY: &str = "key-of-app-default-only-0123";

/// `maskinporten_clients.second` (other-key.pem) and a profile `reports` on it; `extra` appended.
fn second_client(extra: &str) -> String {
    format!(
        "maskinporten_clients:\n  second:\n    client_id: {SECOND_ID}\n    kid: {SECOND_KID}\n    key:\n      path: {}\nprofiles:\n  reports:\n    scopes: ['test:reports']\n    client: second\n{extra}",
        fixture("other-key.pem")
    )
}

async fn two_clients(extra: &str) -> TestEnv {
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SECOND_ID, &[(SECOND_KID, "other-key.pub.pem")]);
    let altinn = FakeAltinn::start(&mp).await;
    TestEnv::start_with(mp, altinn, &second_client(extra)).await
}

fn last_grant(env: &TestEnv) -> SeenGrant {
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    env.mp.grants().last().cloned().expect("a grant was sent")
}

#[tokio::test]
async fn a_profile_on_the_second_client_is_signed_with_its_key_and_its_client_id() {
    let env = two_clients("").await;
    let body = env.get_json("/token/reports", 200).await;
    let grant = last_grant(&env);
    assert_eq!(grant.header.kid.as_deref(), Some(SECOND_KID));
    assert_eq!(grant.claims["iss"], SECOND_ID);
    assert_eq!(grant.claims["sub"], SECOND_ID);
    assert_eq!(grant.claims["scope"], "test:reports");
    assert!(body["access_token"].as_str().is_some());

    // The default client still signs the profiles that name none.
    env.get_json("/token/admin", 200).await;
    let grant = last_grant(&env);
    assert_eq!(grant.header.kid.as_deref(), Some(KID));
    assert_eq!(grant.claims["iss"], CLIENT_ID);
    assert_eq!(env.mp.calls(), 2);
}

#[tokio::test]
async fn the_same_profile_and_org_on_another_client_is_another_cache_entry() {
    let env = two_clients("").await;
    let path = format!("/token/altinn?org={ORG}");
    env.get_json(&path, 200).await;
    env.get_json(&path, 200).await;
    assert_eq!(env.mp.calls(), 1, "the second request is a cache hit");
    assert_eq!(last_grant(&env).claims["iss"], CLIENT_ID);

    // The same profile and org, now on the second client: not served from the default's entry.
    let moved = second_client("  altinn:\n    client: second\n");
    let yaml = config_yaml(&env.mp, &env.altinn, &moved);
    env.app
        .reload(&Settings::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    env.get_json(&path, 200).await;
    assert_eq!(env.mp.calls(), 2, "a new fetch for the other client");
    let grant = last_grant(&env);
    assert_eq!(grant.claims["iss"], SECOND_ID);
    assert_eq!(grant.header.kid.as_deref(), Some(SECOND_KID));
    assert_eq!(cached_tokens(&env).await, 2, "both entries are cached");
    env.get_json(&path, 200).await;
    assert_eq!(env.mp.calls(), 2, "and the new entry is hit");
}

#[tokio::test]
async fn an_api_client_restricted_to_the_default_client_gets_a_403_naming_the_other() {
    let env = two_clients(&format!(
        "clients:\n  - name: app\n    key_sha256: {}\n    profiles: ['*']\n    maskinporten_clients: [default]\n",
        hash_api_key(API_KEY)
    ))
    .await;
    let get = |path: &'static str| env.http.get(env.url(path)).bearer_auth(API_KEY).send();
    assert_eq!(get("/token/admin").await.unwrap().status(), 200);
    let refused = get("/token/reports").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("\"second\""), "{detail}");
    assert!(detail.contains("maskinporten_clients"), "{detail}");
    assert_eq!(problem["maskinporten_client"], "second");
    assert_eq!(env.mp.calls(), 1, "a refused request fetches nothing");
}

#[tokio::test]
async fn readyz_and_the_listing_show_each_client_and_never_a_key() {
    let env = two_clients("").await;
    env.get_json("/token/reports", 200).await;
    let ready = env.get_json("/readyz", 200).await;
    let listing = env.get_json("/token", 200).await;
    for body in [&ready, &listing] {
        let clients = body["maskinporten_clients"].as_array().unwrap();
        assert_eq!(clients.len(), 2, "{body}");
        assert_eq!(clients[0]["name"], "default");
        assert_eq!(clients[0]["client_id"], CLIENT_ID);
        assert_eq!(clients[0]["kid"], KID);
        assert_eq!(clients[0]["issuer"], env.mp.issuer());
        assert_eq!(clients[1]["name"], "second");
        assert_eq!(clients[1]["client_id"], SECOND_ID);
        assert_eq!(clients[1]["kid"], SECOND_KID);
        assert_eq!(clients[1]["issuer"], env.mp.issuer());
        let text = body.to_string();
        assert!(
            !text.contains("PRIVATE") && !text.contains("\"d\""),
            "{text}"
        );
    }
    let reports = listing["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "reports")
        .unwrap();
    assert_eq!(reports["client"], "second");
    assert_eq!(ready["cached_tokens"][0]["maskinporten_client"], "second");
}

#[tokio::test]
async fn a_reload_that_changes_the_second_clients_kid_switches_its_signing_key() {
    let env = two_clients("").await;
    env.get_json("/token/reports", 200).await;
    assert_eq!(last_grant(&env).header.kid.as_deref(), Some(SECOND_KID));

    // Digdir now holds another key for the second client; the config names it.
    env.mp
        .register_client(SECOND_ID, &[("second-kid-2", "client-key.pub.pem")]);
    let rotated = second_client("  skd:\n    client: second\n")
        .replace(&fixture("other-key.pem"), &fixture("client-key.pem"))
        .replace(&format!("kid: {SECOND_KID}"), "kid: second-kid-2");
    let yaml = config_yaml(&env.mp, &env.altinn, &rotated);
    env.app
        .reload(&Settings::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    let ready = env.get_json("/readyz", 200).await;
    assert_eq!(ready["maskinporten_clients"][1]["kid"], "second-kid-2");
    assert_eq!(
        ready["maskinporten_clients"][0]["kid"], KID,
        "default unchanged"
    );

    env.get_json(&format!("/token/skd?org={ORG}"), 200).await;
    let grant = last_grant(&env);
    assert_eq!(grant.header.kid.as_deref(), Some("second-kid-2"));
    assert_eq!(grant.claims["iss"], SECOND_ID);
    env.get_json("/token/reports", 200).await;
    assert_eq!(
        env.mp.calls(),
        2,
        "the token made with the old key stays cached"
    );
}

#[tokio::test]
async fn a_second_client_whose_key_does_not_load_refuses_to_start_naming_its_field() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let broken = second_client("").replace(&fixture("other-key.pem"), "/nonexistent/second.pem");
    let settings = Settings::from_yaml(&config_yaml(&mp, &altinn, &broken)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(err) = App::spawn(settings, listener).await else {
        panic!("a broken second key must refuse to start");
    };
    let mut err: (String, Option<&dyn std::error::Error>) = (err.to_string(), err.source());
    while let Some(source) = err.1 {
        err = (format!("{}: {source}", err.0), source.source());
    }
    let err = err.0;
    assert!(
        err.starts_with("maskinporten_clients.second.key.path"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/second.pem"), "{err}");
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let yaml = |extra: &str| config_yaml(&mp, &altinn, extra);
    let problems = |extra: &str| {
        Settings::from_yaml(&yaml(extra))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    let unknown = problems("profiles:\n  reports:\n    scopes: [a:b]\n    client: nope\n");
    assert!(
        unknown.contains("profiles.reports.client: there is no Maskinporten client named \"nope\"; the clients are: default"),
        "{unknown}"
    );
    let conflict = problems(
        "maskinporten_clients:\n  default:\n    client_id: x\n    key:\n      path: k.pem\n",
    );
    assert!(
        conflict
            .contains("maskinporten_clients.default: the client named default is the top-level"),
        "{conflict}"
    );
    let keyless = problems("maskinporten_clients:\n  b:\n    client_id: ''\n    kid: ''\n");
    for field in [
        "maskinporten_clients.b.client_id: must not be empty",
        "maskinporten_clients.b.kid: must not be empty",
        "maskinporten_clients.b.key.path: is required",
    ] {
        assert!(keyless.contains(field), "{field}: {keyless}");
    }
    let restricted = problems(&format!(
        "clients:\n  - name: app\n    key_sha256: {}\n    profiles: ['*']\n    maskinporten_clients: [nope]\n",
        hash_api_key(API_KEY)
    ));
    assert!(
        restricted.contains(
            "clients[0].maskinporten_clients: there is no Maskinporten client named \"nope\""
        ),
        "{restricted}"
    );
    // The same client id twice (one Digdir client, two keys) is fine.
    let twice = format!(
        "maskinporten_clients:\n  again:\n    client_id: {CLIENT_ID}\n    kid: k2\n    key:\n      path: k.pem\n"
    );
    assert!(
        Settings::from_yaml(&yaml(&twice))
            .unwrap()
            .validate()
            .is_ok()
    );
}

#[tokio::test]
async fn env_local_registers_every_client_with_the_simulator() {
    let settings = Settings::from_yaml(
        "env: local\nmaskinporten_clients:\n  second:\n    client_id: second-local\nprofiles:\n  reports:\n    scopes: ['test:reports']\n    client: second\n",
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::spawn(settings, listener).await.expect("broker starts");
    let http = reqwest::Client::new();
    for (profile, client_id) in [("reports", "second-local"), ("admin", "local-client")] {
        let r = http
            .get(format!("http://{}/token/{profile}", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{profile}");
        let body: Value = r.json().await.unwrap();
        let served = claims(body["access_token"].as_str().unwrap());
        assert_eq!(served["client_id"], client_id, "{served}");
    }
    app.shutdown().await;
}
