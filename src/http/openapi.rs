//! `GET /openapi.json`: the OpenAPI document of every route. The route table in `http/mod.rs`
//! adds each handler's `#[utoipa::path]` operation to the frame declared here, so the document
//! cannot drift from the router.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::limits::{MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_PROXY_URI_BYTES, MAX_URI_BYTES};

use super::problem::Problem;
use super::state::AppState;
use super::token::{MaskinportenClientListing, ProfileListing};
use crate::onboarding::system::System;
use crate::tokens::answer::TokenResponse;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "maskinporten-broker",
        description = "Holds an organisation's Maskinporten key and serves ready-to-use tokens over local HTTP."
    ),
    components(schemas(
        TokenResponse,
        ProfileListing,
        MaskinportenClientListing,
        Problem,
        super::on_demand::ExchangeParam
    )),
    tags(
        (name = "tokens", description = "Tokens and the profiles they are made for"),
        (name = "proxy", description = "Requests forwarded to configured upstreams with a token added"),
        (name = "onboarding", description = "System users: ask a customer organisation for one, follow the request (API clients with onboarding: true)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document of this broker", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
        .into_response()
}

/// The document as served: the onboarding and consent bodies take only what the configuration
/// allows, so that a request the schema allows is one the broker takes: `redirect_url` one of
/// `system.allowed_redirect_urls` (or of `consent.redirect_urls`) or null, `agent` only when
/// `system.access_packages` has some, and a change adds only rights and packages `system:` lists.
pub fn served(
    doc: &utoipa::openapi::OpenApi,
    system: Option<&System>,
    consent: Option<&crate::config::Consent>,
) -> Vec<u8> {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    let strings = |list: &[String]| -> Vec<serde_json::Value> {
        list.iter().map(|u| u.as_str().into()).collect()
    };
    let or_null = |mut list: Vec<serde_json::Value>| {
        list.push(serde_json::Value::Null);
        list
    };
    let mut limits: Vec<(&str, &str, serde_json::Value)> = Vec::new();
    if let Some(system) = system {
        let redirect = or_null(strings(&system.allowed_redirect_urls));
        let mut agent = vec![false.into(), serde_json::Value::Null];
        if !system.access_packages.is_empty() {
            agent.push(true.into());
        }
        limits.push((
            "SystemUserRequestBody",
            "redirect_url",
            redirect.clone().into(),
        ));
        limits.push(("SystemUserRequestBody", "agent", agent.into()));
        limits.push(("SystemUserChangeBody", "redirect_url", redirect.into()));
        for (name, list) in [
            ("add_rights", &system.rights),
            ("add_packages", &system.access_packages),
        ] {
            limits.push(("SystemUserChangeBody", name, strings(list).into()));
        }
    }
    if let Some(consent) = consent {
        let redirect = or_null(strings(&consent.redirect_urls));
        limits.push(("ConsentRequestBody", "redirect_url", redirect.into()));
    }
    for (schema, name, allowed) in limits {
        let at = format!("/components/schemas/{schema}/properties/{name}");
        let Some(property) = value
            .pointer_mut(&at)
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        // A list property (`add_rights`) limits its items; a single one itself.
        let is_list = property.contains_key("items")
            || property.get("type").is_some_and(|t| {
                t.as_array().is_some_and(|a| a.contains(&"array".into())) || t == "array"
            });
        if is_list {
            property.insert(
                "items".into(),
                serde_json::json!({"type": "string", "enum": allowed}),
            );
        } else {
            property.insert("enum".into(), allowed);
        }
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Add to every route of `doc` the answers given outside its handler: the method fallback, the
/// size limits and the deadline of `http::limits`, and the 500 of a handler that failed.
pub fn add_refusals(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let max_uri = if path.starts_with("/proxy/") {
            MAX_PROXY_URI_BYTES
        } else {
            MAX_URI_BYTES
        };
        add_to_item(item, &refusals(max_uri));
    }
}

/// The answers of the front door and the method fallback, for a route whose path and query may
/// be `max_uri` bytes long.
fn refusals(max_uri: usize) -> [(&'static str, String); 5] {
    [
        ("405", "A method this route does not take".to_owned()),
        ("414", format!("Path and query longer than {max_uri} bytes")),
        (
            "431",
            format!(
                "Headers over {MAX_HEADER_BYTES} bytes together or over {MAX_HEADER_COUNT} fields"
            ),
        ),
        (
            "500",
            "The broker failed while answering (a handler panicked); the connection stays open"
                .to_owned(),
        ),
        (
            "503",
            format!(
                "The request took longer than {}",
                humantime::format_duration(super::limits::REQUEST_TIMEOUT)
            ),
        ),
    ]
}

/// Add `refusals` to every method of `item` (the front door answers before any handler).
fn add_to_item(item: &mut utoipa::openapi::PathItem, refusals: &[(&'static str, String)]) {
    let operations = [
        &mut item.get,
        &mut item.head,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
        &mut item.options,
    ];
    for operation in operations.into_iter().flatten() {
        for (status, description) in refusals {
            let entry = operation.responses.responses.entry((*status).to_owned());
            let RefOr::T(own) = entry.or_insert_with(|| problem_response(description)) else {
                continue;
            };
            // A route's own answer with this status (the 503 of /readyz while draining):
            // the refusal can come too, in its problem form.
            if !own.content.contains_key(PROBLEM) {
                own.content
                    .insert(PROBLEM.to_owned(), RefOr::T(problem_content()));
                own.description = format!("{}; or: {description}", own.description);
            }
        }
    }
}

const PROBLEM: &str = "application/problem+json";

fn problem_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build()
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM, problem_content())
        .build()
        .into()
}
