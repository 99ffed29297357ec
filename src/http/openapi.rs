//! `GET /openapi.json`: the OpenAPI document of every route. The route table in `http/mod.rs`
//! adds each handler's `#[utoipa::path]` operation to the frame declared here, so the document
//! cannot drift from the router.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::AppState;
use super::problem::Problem;
use super::token::{ProfileListing, TokenResponse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "maskinporten-broker",
        description = "Holds an organisation's Maskinporten key and serves ready-to-use tokens over local HTTP."
    ),
    components(schemas(TokenResponse, ProfileListing, Problem)),
    tags(
        (name = "tokens", description = "Tokens and the profiles they are made for"),
        (name = "proxy", description = "Requests forwarded to configured upstreams with a token added"),
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
