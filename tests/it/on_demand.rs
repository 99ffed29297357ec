//! On-demand tokens (`GET /token?scope=`) and the texas-compatible `POST /api/v1/token`: the
//! allow-list, normalisation into one cache entry, per-client narrowing, texas's request and
//! answer shapes, and `skip_cache`.

use serde_json::{Value, json};

use crate::support::*;
use maskinporten_broker::hash_api_key;

const ON_DEMAND: &str =
    "on_demand:\n  scopes: ['altinn:*', 'skatteetaten:innrapporteringaksjonaerregisteroppgave']\n";
const KEY_A: &str = "on-demand-key-a-0123456789";
const KEY_B: &str = "on-demand-key-b-0123456789";

fn system_user(org: &str) -> Value {
    json!([{"type": "urn:altinn:systemuser",
            "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": format!("0192:{org}")}}])
}

async fn texas(env: &TestEnv, body: Value) -> (u16, Value) {
    let r = env
        .http
        .post(env.url("/api/v1/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_allowed_scope_is_served_like_a_profile_and_checked_by_maskinporten() {
    let env = TestEnv::start(ON_DEMAND).await;
    let body = env
        .get_json("/token?scope=altinn:resourceregistry/resource.read", 200)
        .await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["profile"], "on-demand");
    assert_eq!(body["scope"], "altinn:resourceregistry/resource.read");
    assert!(body["expires_in"].as_u64().unwrap() > 100);
    let grants = env.mp.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(
        grants[0].claims["scope"],
        "altinn:resourceregistry/resource.read"
    );
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    assert_eq!(env.altinn.calls(), 0, "no exchange unless asked for");

    let text = env
        .http
        .get(env.url("/token?scope=altinn:resourceregistry/resource.read"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, body["access_token"].as_str().unwrap());
    assert_eq!(env.mp.calls(), 1, "the second request is a cache hit");
}

#[tokio::test]
async fn two_spellings_of_one_request_share_one_upstream_call() {
    let env = TestEnv::start(ON_DEMAND).await;
    // Maskinporten is asked for exactly the two scopes, whatever the spelling.
    env.mp.expect_scope("altinn:a altinn:b");
    let a = env
        .get_json(
            &format!("/token?scope=altinn:b&scope=altinn:a&org={ORG}&exchange=altinn"),
            200,
        )
        .await;
    let b = env
        .get_json(
            &format!("/token?exchange=altinn&org={ORG}&scope=altinn:a%20altinn:b+altinn:a"),
            200,
        )
        .await;
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(env.mp.calls(), 1);
    assert_eq!(env.altinn.calls(), 1);
    let grant = &env.mp.grants()[0].claims;
    assert_eq!(grant["scope"], "altinn:a altinn:b");
    assert_eq!(
        grant["authorization_details"][0]["systemuser_org"]["ID"],
        format!("0192:{ORG}")
    );
    // Another org, or no exchange, is another entry.
    env.get_json(
        &format!("/token?scope=altinn:a+altinn:b&org={OTHER_ORG}&exchange=altinn"),
        200,
    )
    .await;
    env.get_json(&format!("/token?scope=altinn:a+altinn:b&org={ORG}"), 200)
        .await;
    assert_eq!(env.mp.calls(), 3);
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    // A request for other scopes than the fake expects is refused by it (it compares).
    env.mp.expect_scope("altinn:c");
    env.problem("/token?scope=altinn:d", 502).await;
    assert_eq!(env.mp.violations().len(), 1);
}

#[tokio::test]
async fn scopes_outside_the_list_are_403_naming_the_scope_and_never_reach_maskinporten() {
    let env = TestEnv::start(ON_DEMAND).await;
    let p = env
        .problem("/token?scope=altinn:x&scope=skatteetaten:other", 403)
        .await;
    assert_eq!(p["scope"], "skatteetaten:other");
    assert!(p["detail"].as_str().unwrap().contains("skatteetaten:other"));
    // Without on_demand.scopes the feature is off.
    let off = TestEnv::start("").await;
    let p = off.problem("/token?scope=altinn:x", 403).await;
    assert!(
        p["detail"].as_str().unwrap().contains("on_demand.scopes"),
        "{p}"
    );
    // Bad requests are 400s.
    for bad in [
        "/token?scope=",
        "/token?scope=altinn:x&orgnr=1",
        "/token?scope=altinn:x&org=123",
        "/token?scope=altinn:x&exchange=maybe",
    ] {
        env.problem(bad, 400).await;
    }
    assert_eq!(env.mp.calls() + off.mp.calls(), 0);
}

#[tokio::test]
async fn a_client_can_be_narrowed_to_its_own_scopes() {
    let env = TestEnv::start(&format!(
        "{ON_DEMAND}clients:\n  - name: narrow\n    key_sha256: {}\n    profiles: [altinn]\n    orgs: ['{ORG}']\n    scopes: ['altinn:instances.*']\n  - name: wide\n    key_sha256: {}\n    profiles: [altinn]\n    scopes: ['*']\n",
        hash_api_key(KEY_A),
        hash_api_key(KEY_B)
    ))
    .await;
    let get = |key: &'static str, path: &'static str| {
        env.http.get(env.url(path)).header("x-api-key", key).send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            get(KEY_A, "/token?scope=altinn:instances.read")
                .await
                .unwrap()
        ),
        200
    );
    let refused = get(KEY_A, "/token?scope=altinn:resourceregistry/resource.read")
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let p: Value = refused.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("narrow"), "{p}");
    assert_eq!(p["scope"], "altinn:resourceregistry/resource.read");
    // The wide client's scopes are ['*']: on_demand.scopes is its limit ...
    assert_eq!(
        status(
            get(KEY_B, "/token?scope=altinn:resourceregistry/resource.read")
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(get(KEY_B, "/token?scope=other:x").await.unwrap()),
        403
    );
    // ... and organisations stay per client.
    assert_eq!(
        status(
            get(KEY_B, "/token?scope=altinn:instances.read&org=991825827")
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            get(KEY_A, "/token?scope=altinn:instances.read&org=991825827")
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            env.http
                .get(env.url("/token?scope=altinn:instances.read"))
                .send()
                .await
                .unwrap()
        ),
        401
    );
}

#[tokio::test]
async fn maskinporten_invalid_scope_is_a_502_with_the_hint_and_is_remembered() {
    let env = TestEnv::start(ON_DEMAND).await;
    env.mp.always(Reply::Refuse(
        "invalid_scope",
        "Scope altinn:nope is not allowed for this client (MP-200)",
    ));
    let p = env.problem("/token?scope=altinn:nope", 502).await;
    assert_eq!(p["error"], "invalid_scope");
    assert_eq!(p["mp_code"], "MP-200");
    assert!(p["hint"].is_string(), "{p}");
    env.problem("/token?scope=altinn:nope", 502).await;
    assert_eq!(env.mp.calls(), 1, "a refusal is remembered, not repeated");
    let (status, body) = texas(
        &env,
        json!({"identity_provider": "maskinporten", "target": "altinn:nope"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("MP-200")
    );
}

#[tokio::test]
async fn texas_requests_in_json_and_form_get_texas_answers() {
    let env = TestEnv::start(ON_DEMAND).await;
    let (status, json_answer) = texas(
        &env,
        json!({"identity_provider": "maskinporten", "target": "altinn:a altinn:b"}),
    )
    .await;
    assert_eq!(status, 200);
    let mut keys: Vec<&str> = json_answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["access_token", "expires_in", "token_type"]);
    assert_eq!(json_answer["token_type"], "Bearer");
    let form: Value = env
        .http
        .post(env.url("/api/v1/token"))
        .form(&[
            ("identity_provider", "maskinporten"),
            ("target", "altinn:b altinn:a"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(form["access_token"], json_answer["access_token"]);
    // The same request on the broker's own route is the same entry.
    let own = env
        .get_json("/token?scope=altinn:a&scope=altinn:b", 200)
        .await;
    assert_eq!(own["access_token"], json_answer["access_token"]);
    assert_eq!(env.mp.calls(), 1);
}

#[tokio::test]
async fn texas_authorization_details_are_the_same_entry_as_org_and_the_extensions_work() {
    let env = TestEnv::start(ON_DEMAND).await;
    let (status, a) = texas(
        &env,
        json!({"identity_provider": "maskinporten", "target": "altinn:a",
               "authorization_details": system_user(ORG), "exchange": "altinn"}),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = texas(
        &env,
        json!({"identity_provider": "maskinporten", "target": "altinn:a", "org": ORG, "exchange": "altinn"}),
    )
    .await;
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(env.mp.calls(), 1);
    assert_eq!(env.altinn.calls(), 1);
    let grant = &env.mp.grants()[0].claims;
    assert_eq!(grant["authorization_details"], system_user(ORG));
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
}

#[tokio::test]
async fn texas_errors_have_texas_shapes_and_statuses() {
    let env = TestEnv::start(ON_DEMAND).await;
    for (body, status, error) in [
        (
            json!({"identity_provider": "azuread", "target": "api://x/.default"}),
            400,
            "invalid_request",
        ),
        (
            json!({"identity_provider": "maskinporten"}),
            400,
            "invalid_request",
        ),
        (
            json!({"identity_provider": "maskinporten", "target": "altinn:a", "org": "123"}),
            400,
            "invalid_request",
        ),
        (
            json!({"identity_provider": "maskinporten", "target": "altinn:a",
                "authorization_details": [{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "x", "ID": "0192:991825827"}}]}),
            400,
            "invalid_request",
        ),
        (
            json!({"identity_provider": "maskinporten", "target": "other:scope"}),
            403,
            "invalid_scope",
        ),
    ] {
        let (got, answer) = texas(&env, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"], error, "{body}");
        assert!(answer["error_description"].as_str().unwrap().len() > 10);
    }
    let unsupported = env
        .http
        .post(env.url("/api/v1/token"))
        .header("content-type", "text/plain")
        .body("identity_provider=maskinporten")
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status().as_u16(), 400);
    let answer: Value = unsupported.json().await.unwrap();
    assert!(
        answer["error_description"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    env.mp.always(Reply::Status(503));
    let down = env
        .http
        .post(env.url("/api/v1/token"))
        .json(&json!({"identity_provider": "maskinporten", "target": "altinn:down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 500);
    let retry_after: u64 = down.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let answer: Value = down.json().await.unwrap();
    assert_eq!(answer["error"], "server_error");
    assert_eq!(env.mp.grants().len(), env.mp.calls());
}

#[tokio::test]
async fn resource_consumer_org_and_star_scopes_are_checked_before_maskinporten() {
    let env = TestEnv::start(ON_DEMAND).await;
    for query in [
        "scope=altinn:a&resource=javascript:alert(1)",
        "scope=altinn:a&resource=https://api.example.no/%23frag",
        "scope=altinn:a&resource=api.example.no",
        "scope=altinn:a&resource=http://127.0.0.1:1/",
        "scope=altinn:a&consumer_org=0192:123",
        "scope=altinn:a&consumer_org=0192:991825828",
        "scope=altinn:a&consumer_org=991825827",
        "scope=altinn:*",
        "scope=altinn:a%20altinn:*",
    ] {
        let body = env.problem(&format!("/token?{query}"), 400).await;
        assert!(
            body["detail"].as_str().unwrap().len() > 20,
            "{query}: {body}"
        );
    }
    for body in [
        json!({"identity_provider": "maskinporten", "target": "altinn:a", "resource": "javascript:alert(1)"}),
        json!({"identity_provider": "maskinporten", "target": "altinn:a", "resource": "https://api.example.no/#x"}),
        json!({"identity_provider": "maskinporten", "target": "altinn:*"}),
    ] {
        let (status, answer) = texas(&env, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
    }
    assert_eq!(env.mp.calls(), 0, "nothing reached Maskinporten");

    let good = env
        .get_json(
            "/token?scope=altinn:a&resource=https://api.example.no/&consumer_org=0192:974761076",
            200,
        )
        .await;
    assert!(good["access_token"].is_string());
    let (status, _) = texas(
        &env,
        json!({"identity_provider": "maskinporten", "target": "altinn:b", "resource": "https://api.example.no/"}),
    )
    .await;
    assert_eq!(status, 200);
    let grants = env.mp.grants();
    assert_eq!(grants[0].claims["resource"], "https://api.example.no/");
    assert_eq!(grants[0].claims["consumer_org"], "0192:974761076");
    assert_eq!(grants[1].claims["resource"], "https://api.example.no/");
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
}

#[tokio::test]
async fn media_types_are_matched_case_insensitively_and_exactly() {
    let env = TestEnv::start(ON_DEMAND).await;
    let post = |content_type: &'static str, body: &'static str| {
        env.http
            .post(env.url("/api/v1/token"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let json_body = r#"{"identity_provider":"maskinporten","target":"altinn:a"}"#;
    let form_body = "identity_provider=maskinporten&target=altinn:a";
    for (content_type, body) in [
        ("application/json", json_body),
        ("Application/Json", json_body),
        ("APPLICATION/JSON; charset=utf-8", json_body),
        ("application/json;charset=UTF-8", json_body),
        ("application/x-www-form-urlencoded", form_body),
        (
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            form_body,
        ),
    ] {
        let r = post(content_type, body).await.unwrap();
        assert_eq!(r.status(), 200, "{content_type}");
    }
    for (content_type, body) in [
        ("application/jsonx", json_body),
        ("application/json-patch+json", json_body),
        ("application/json+x", json_body),
        ("text/json", json_body),
        ("application/x-www-form-urlencodedx", form_body),
        ("application/x-www-form-urlencoded-x", form_body),
    ] {
        let r = post(content_type, body).await.unwrap();
        assert_eq!(r.status(), 400, "{content_type}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request");
        assert!(
            answer["error_description"]
                .as_str()
                .unwrap()
                .contains("unsupported media type"),
            "{content_type}: {answer}"
        );
    }
}

#[tokio::test]
async fn skip_cache_fetches_a_new_token() {
    let env = TestEnv::start(ON_DEMAND).await;
    let request = json!({"identity_provider": "maskinporten", "target": "altinn:a"});
    let (_, first) = texas(&env, request.clone()).await;
    let (_, cached) = texas(&env, request.clone()).await;
    assert_eq!(first["access_token"], cached["access_token"]);
    assert_eq!(env.mp.calls(), 1);
    let mut skip = request.clone();
    skip["skip_cache"] = json!(true);
    let (status, fresh) = texas(&env, skip).await;
    assert_eq!(status, 200);
    assert_ne!(fresh["access_token"], first["access_token"]);
    assert_eq!(env.mp.calls(), 2);
    // The fresh token is the one cached from now on.
    let (_, after) = texas(&env, request).await;
    assert_eq!(after["access_token"], fresh["access_token"]);
    assert_eq!(env.mp.calls(), 2);
}

#[tokio::test]
async fn texas_bodies_over_16_kib_are_a_413_in_texas_shape_announced_or_streamed() {
    let env = TestEnv::start(ON_DEMAND).await;
    let big = format!(
        "{{\"identity_provider\":\"maskinporten\",\"target\":\"altinn:a\",\"pad\":\"{}\"}}",
        "x".repeat(16 * 1024)
    );
    // With a Content-Length: refused before the handler (tower-http's limit).
    let announced = env
        .http
        .post(env.url("/api/v1/token"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    // Chunked: refused while the handler reads it.
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let streamed = env
        .http
        .post(env.url("/api/v1/token"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    for answer in [announced, streamed] {
        assert_eq!(answer.status().as_u16(), 413);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("16384 bytes"),
            "{body}"
        );
    }
    assert_eq!(env.mp.calls(), 0, "nothing reached Maskinporten");
}

#[tokio::test]
async fn the_on_demand_route_is_the_same_as_the_token_alias_and_requires_a_scope() {
    let env = TestEnv::start(ON_DEMAND).await;
    let alias = env
        .get_json("/token?scope=altinn:a&scope=altinn:b", 200)
        .await;
    let own = env
        .get_json("/token/on-demand?scope=altinn:b+altinn:a", 200)
        .await;
    assert_eq!(own["profile"], "on-demand");
    assert_eq!(
        own["access_token"], alias["access_token"],
        "one cache entry"
    );
    assert_eq!(env.mp.calls(), 1);
    for path in ["/token/on-demand", "/token/on-demand?org=991825827"] {
        let p = env.problem(path, 400).await;
        assert!(
            p["detail"].as_str().unwrap().contains("scope"),
            "{path}: {p}"
        );
    }
    assert_eq!(env.mp.calls(), 1, "a refusal never reaches Maskinporten");
}
