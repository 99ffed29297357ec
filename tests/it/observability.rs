//! `/metrics` and `/openapi.json`: what operators and client authors can see of the broker.
//!
//! Metrics are process-wide and the tests of this binary run in parallel in one process, so the
//! tests that count run the broker binary as a process of its own and assert exact values.

use std::collections::BTreeSet;

use crate::support::*;
use maskinporten_broker::route_paths;
use serde_json::Value;

/// The scrape, checking the Prometheus text content type.
async fn scrape(env: &TestEnv) -> String {
    scrape_url(&env.http, &env.url("/metrics")).await
}

/// The scrape of the broker at `url`.
async fn scrape_url(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    r.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Assert that the samples of `name` with `labels` add up to exactly `expected`.
#[track_caller]
fn assert_exactly(text: &str, name: &str, labels: &[(&str, &str)], expected: f64) {
    let value = sample(text, name, labels);
    assert!(
        value == expected,
        "{name}{labels:?} is {value}, not {expected}:\n{text}"
    );
}

/// The broker binary against fresh fakes: a process, so its metrics are its own.
async fn own_process(extra: &str) -> (FakeMaskinporten, FakeAltinn, ServedBinary) {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let broker = ServedBinary::start(&mp, &altinn, extra).await;
    (mp, altinn, broker)
}

#[tokio::test]
async fn metrics_count_a_miss_a_hit_and_the_upstream_calls() {
    let (mp, _altinn, broker) = own_process("").await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http.get(broker.url("/token/altinn")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(mp.calls(), 1, "the second request is a cache hit");

    let text = scrape_url(&http, &broker.url("/metrics")).await;
    let lookups = "broker_cache_lookups_total";
    assert_exactly(&text, lookups, &[("result", "miss")], 1.0);
    assert_exactly(&text, lookups, &[("result", "hit")], 1.0);
    for target in ["maskinporten", "altinn"] {
        assert_exactly(
            &text,
            "broker_upstream_requests_total",
            &[("target", target), ("outcome", "ok")],
            1.0,
        );
        assert_exactly(
            &text,
            "broker_upstream_duration_seconds_count",
            &[("target", target)],
            1.0,
        );
        assert_exactly(
            &text,
            "broker_upstream_duration_seconds_bucket",
            &[("target", target), ("le", "+Inf")],
            1.0,
        );
    }
    assert!(
        text.contains(
            "broker_upstream_duration_seconds_bucket{target=\"maskinporten\",le=\"0.05\"}"
        )
    );
    assert_exactly(
        &text,
        "broker_token_requests_total",
        &[("profile", "altinn"), ("outcome", "ok")],
        2.0,
    );
    let left = sample(
        &text,
        "broker_token_seconds_until_expiry",
        &[("profile", "altinn"), ("org", "")],
    );
    assert!((1700.0..=1800.0).contains(&left), "{left}: {text}");
    assert!(text.contains(&format!(
        "broker_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[tokio::test]
async fn metrics_never_contain_the_served_token() {
    let env = TestEnv::start("").await;
    let body = env.get_json(&format!("/token/altinn?org={ORG}"), 200).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let text = scrape(&env).await;
    assert!(
        text.contains(&format!(
            "broker_token_seconds_until_expiry{{profile=\"altinn\",org=\"{ORG}\"}}"
        )),
        "{text}"
    );
    let bytes = token.as_bytes();
    for window in bytes.windows(20) {
        let window = std::str::from_utf8(window).unwrap();
        assert!(
            !text.contains(window),
            "/metrics shows {window:?} of the token"
        );
    }
}

#[tokio::test]
async fn unknown_profiles_are_counted_without_their_name() {
    let (_mp, _altinn, broker) = own_process("").await;
    let http = reqwest::Client::new();
    let r = http
        .get(broker.url("/token/no-such-profile-xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = scrape_url(&http, &broker.url("/metrics")).await;
    assert!(!text.contains("no-such-profile-xyz"), "{text}");
    assert_exactly(
        &text,
        "broker_token_requests_total",
        &[("profile", "_unknown"), ("outcome", "client_error")],
        1.0,
    );
}

#[tokio::test]
async fn upstream_failures_are_counted_by_outcome() {
    let (mp, _altinn, broker) = own_process("").await;
    mp.always(Reply::Status(503));
    let http = reqwest::Client::new();
    let r = http.get(broker.url("/token/admin")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let calls = mp.calls() as f64;
    assert_eq!(calls, 3.0, "one attempt and two retries");
    let text = scrape_url(&http, &broker.url("/metrics")).await;
    assert_exactly(
        &text,
        "broker_upstream_requests_total",
        &[("target", "maskinporten"), ("outcome", "unavailable")],
        calls,
    );
    assert_exactly(
        &text,
        "broker_token_requests_total",
        &[("profile", "admin"), ("outcome", "upstream_error")],
        1.0,
    );
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_serves() {
    // One proxy route, so /proxy/{name}/{rest} has a name to serve (nothing listens upstream: 502).
    let env =
        TestEnv::start("proxy:\n  p:\n    upstream: http://127.0.0.1:9/\n    profile: admin\n")
            .await;
    let doc = env.get_json("/openapi.json", 200).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let routes = route_paths();
    let routed: BTreeSet<&str> = routes.iter().map(String::as_str).collect();
    assert_eq!(documented, routed);
    for route in &routes {
        let operations = doc["paths"][route].as_object().unwrap();
        assert!(!operations.is_empty(), "{route} has no operation");
        for method in operations.keys() {
            let path = route
                .replace("{profile}", "admin")
                .replace("{name}", "p")
                .replace("{rest}", "x");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let status = env
                .http
                .request(method.clone(), env.url(&path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_ne!(status, 404, "{method} {path} is documented but not served");
            assert_ne!(status, 405, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn openapi_describes_the_token_route_its_org_parameter_and_problems() {
    let env = TestEnv::start("").await;
    let doc = env.get_json("/openapi.json", 200).await;
    let get = &doc["paths"]["/token/{profile}"]["get"];
    let params = get["parameters"].as_array().unwrap();
    let param = |name: &str| -> &Value {
        params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}: {get}"))
    };
    assert_eq!(param("profile")["in"], "path");
    assert_eq!(param("profile")["required"], true);
    assert_eq!(param("org")["in"], "query");
    assert_ne!(param("org")["required"], true);
    assert_eq!(param("org")["schema"]["pattern"], "^[0-9]{9}$");

    let ok = &get["responses"]["200"]["content"];
    assert!(ok["application/json"].is_object(), "{ok}");
    assert!(ok["text/plain"].is_object(), "{ok}");
    for status in [
        "400", "401", "403", "404", "405", "414", "429", "431", "500", "502", "503", "504",
    ] {
        let problem = &get["responses"][status]["content"]["application/problem+json"];
        assert!(problem.is_object(), "{status}: {get}");
        assert_eq!(
            problem["schema"]["$ref"], "#/components/schemas/Problem",
            "{status}"
        );
    }
    let header = |status: &str, name: &str| get["responses"][status]["headers"][name].is_object();
    assert!(header("401", "WWW-Authenticate"), "{get}");
    for status in ["429", "503", "504"] {
        assert!(header(status, "Retry-After"), "{status}: {get}");
    }
    // What every route can answer before its handler runs, whatever the method.
    let methods = ["get", "head", "post", "put", "patch", "delete", "options"];
    for route in &route_paths() {
        let operations = doc["paths"][route].as_object().unwrap();
        for (method, operation) in operations
            .iter()
            .filter(|(m, _)| methods.contains(&m.as_str()))
        {
            for status in ["405", "414", "431", "503"] {
                assert!(
                    operation["responses"][status]["content"]["application/problem+json"]
                        .is_object(),
                    "{method} {route} {status}"
                );
            }
        }
    }
    for schema in ["TokenResponse", "Problem", "ProfileListing"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test]
async fn at_a_level_that_records_no_request_only_a_callers_id_comes_back() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let mut broker = ServedBinary::start(&mp, &altinn, "log:\n  level: warn\n").await;
    let http = reqwest::Client::new();
    let url = broker.url("/token/admin");
    let given = http
        .get(&url)
        .header("x-request-id", "quiet-1")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "quiet-1");
    let fresh = http.get(&url).send().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(
        !fresh.headers().contains_key("x-request-id"),
        "no line records the request, so no id is made up"
    );
    broker.child.kill().await.unwrap();
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let log_json = "log:\n  level: debug\n  format: json\n";
    let mut broker = ServedBinary::start(&mp, &altinn, log_json).await;
    let base = broker.base.clone();

    let http = reqwest::Client::new();
    let given = http
        .get(format!("{base}/token/admin"))
        .header("x-request-id", "caller-chosen-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), 200);
    assert_eq!(given.headers()["x-request-id"], "caller-chosen-id-42");
    let fresh = http
        .get(format!("{base}/token/admin"))
        .send()
        .await
        .unwrap();
    let fresh_id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh_id.len(), 36, "a UUID when the caller sends none");

    signal(broker.child.id().unwrap(), "TERM");
    broker.child.wait().await.unwrap();
    let log = stderr_of(&mut broker.child).await;
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    // Every event inside a request's span names the request; the ones of the first request
    // (a miss: cache, upstream calls, the answer) carry the caller's id, the second the fresh one.
    let of = |id: &str| {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id)
            .map(|l| l["message"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let first = of("caller-chosen-id-42");
    assert!(first.iter().any(|m| m == "token served"), "{log}");
    assert!(
        first.len() >= 2,
        "more than one line for the miss: {first:?}"
    );
    assert!(of(&fresh_id).iter().any(|m| m == "token served"), "{log}");
    // At debug every request is logged as it starts and as it is answered, with its status.
    for id in ["caller-chosen-id-42", fresh_id.as_str()] {
        let lines = of(id);
        assert!(
            lines.iter().any(|m| m == "started processing request"),
            "{log}"
        );
        assert!(
            lines.iter().any(|m| m == "finished processing request"),
            "{log}"
        );
    }
    let finished = lines
        .iter()
        .filter(|l| l["message"] == "finished processing request")
        .filter(|l| l["span"]["path"] == "/token/admin")
        .collect::<Vec<_>>();
    assert_eq!(finished.len(), 2, "{log}");
    assert!(
        finished
            .iter()
            .all(|l| l["status"] == 200 && l["latency_ms"].is_number()),
        "{log}"
    );
    let served = lines
        .iter()
        .filter(|l| l["message"] == "token served")
        .count();
    assert_eq!(served, 2, "both answers logged once: {log}");
}
