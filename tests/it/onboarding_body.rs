//! `POST /systemusers/requests` bounds its body as the texas routes do (tower-http's body-limit
//! layer, 16 KiB): over it, a 413 problem+json whether the body announced its length or streamed,
//! before anything is sent upstream.

use serde_json::Value;

use crate::support::*;

const SYSTEM: &str = "system:\n  id: 991825827_wenche\n  name: {nb: Wenche, nn: Wenche, en: Wenche}\n  description: {nb: Aksjon, nn: Aksjon, en: Shareholders}\n  rights: [ske-innrapportering-aksjonaerregisteroppgave]\n";

#[tokio::test]
async fn a_system_user_request_over_16_kib_is_a_413_problem_announced_or_streamed() {
    let env = TestEnv::start(SYSTEM).await;
    let big = format!(
        "{{\"org\":\"{ORG}\",\"external_ref\":\"{}\"}}",
        "x".repeat(16 * 1024)
    );
    let post = |body: reqwest::Body| {
        env.http
            .post(env.url("/systemusers/requests"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // With a Content-Length: refused before the handler (tower-http's limit).
    let announced = post(big.clone().into()).await.unwrap();
    // Chunked: refused while the handler reads it.
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let streamed = post(reqwest::Body::wrap_stream(chunks)).await.unwrap();
    for answer in [announced, streamed] {
        assert_eq!(answer.status().as_u16(), 413);
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["status"], 413, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("16384 bytes"),
            "{body}"
        );
    }
    assert_eq!(env.mp.calls(), 0, "nothing was sent upstream");
    // The layer refuses before the handler runs: even a broker without `system:` (whose handler
    // answers 501) answers an announced oversized body with the 413.
    let bare = TestEnv::start("").await;
    let answer = bare
        .http
        .post(bare.url("/systemusers/requests"))
        .header("content-type", "application/json")
        .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 413);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let doc: Value = env.get_json("/openapi.json", 200).await;
    assert!(
        doc["paths"]["/systemusers/requests"]["post"]["responses"]["413"].is_object(),
        "the OpenAPI document lists the 413"
    );
}
