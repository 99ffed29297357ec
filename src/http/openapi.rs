//! `GET /openapi.json`: the OpenAPI document of every route, generated from the handlers'
//! `#[utoipa::path]` attributes so it cannot drift from the code unnoticed (tests compare its paths
//! with [`super::ROUTES`]).

use axum::Json;
use utoipa::OpenApi;

use super::problem::Problem;
use super::token::{ProfileListing, TokenResponse};
use super::{health, metrics, proxy, token};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "maskinporten-broker",
        description = "Holds an organisation's Maskinporten key and serves ready-to-use tokens over local HTTP."
    ),
    paths(
        token::list_profiles,
        token::get_token,
        health::healthz,
        health::readyz,
        metrics::metrics,
        openapi,
        proxy::forward,
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
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
