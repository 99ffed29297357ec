//! The simulated Maskinporten: the token endpoint, its metadata and its JWKS.
//!
//! `POST /token` verifies a JWT grant the way Maskinporten does, check by check, and refuses with
//! the same OAuth error and MP-code: client and `kid` (MP-100, MP-124), signature (MP-124), `aud`
//! (MP-110), lifetime (MP-130), replay (MP-012), scopes (MP-200) and system-user
//! `authorization_details` (MP-301/302/303). On success it issues an access token signed with the
//! simulator's key.
//!
//! It must never issue a token for a grant it has not fully verified, and never accept a `jti`
//! twice for the same client.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::self_service::Lookup;
use super::{World, decoding_key, now_unix};
use crate::policy::org::OrgNumber;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const SYSTEM_USER_TYPE: &str = "urn:altinn:systemuser";
const ISO6523: &str = "iso6523-actorid-upis";
/// `iat` may differ this much from the server clock.
const CLOCK_TOLERANCE: i64 = 10;
/// The longest `exp - iat` accepted.
const MAX_GRANT_LIFETIME: i64 = 120;

/// Why a grant is refused. The message is the `error_description` and ends with the MP-code.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("grant_type must be {JWT_BEARER} (MP-011)")]
    UnsupportedGrantType,
    #[error("{0} (MP-011)")]
    InvalidRequest(String),
    #[error("client authentication failed: no client '{0}' is registered (MP-100)")]
    UnknownClient(String),
    #[error("invalid aud: expected '{expected}' (MP-110)")]
    WrongAudience { expected: String },
    #[error(
        "Invalid assertion. Client authentication failed. Expired key: kid '{0}' is past its exp (MP-121)"
    )]
    ExpiredKey(String),
    #[error("invalid signature: {0} (MP-124)")]
    BadSignature(String),
    #[error("invalid grant lifetime: {0} (MP-130)")]
    BadLifetime(String),
    #[error("the grant has already been used: jti '{0}' was seen before (MP-012)")]
    ReusedJti(String),
    #[error("invalid scope: {0} (MP-200)")]
    ScopeNotAllowed(String),
    #[error("invalid authorization_details: {0} (MP-301)")]
    UnknownDetailType(String),
    #[error("invalid authorization_details: unknown fields {0} (MP-302)")]
    UnknownDetailFields(String),
    #[error("invalid authorization_details: {0} (MP-303)")]
    InvalidDetailValue(String),
    #[error("invalid altinn customer configuration: {0} (MP-303)")]
    CustomerConfiguration(String),
    #[error("the simulator could not sign the access token")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

impl Refusal {
    fn error(&self) -> &'static str {
        match self {
            Refusal::UnsupportedGrantType => "unsupported_grant_type",
            Refusal::InvalidRequest(_) | Refusal::ReusedJti(_) => "invalid_request",
            Refusal::UnknownClient(_)
            | Refusal::WrongAudience { .. }
            | Refusal::BadSignature(_)
            | Refusal::BadLifetime(_) => "invalid_grant",
            Refusal::ExpiredKey(_) => "invalid_client",
            Refusal::ScopeNotAllowed(_) => "invalid_scope",
            Refusal::UnknownDetailType(_)
            | Refusal::UnknownDetailFields(_)
            | Refusal::InvalidDetailValue(_) => "invalid_authorization_details",
            Refusal::CustomerConfiguration(_) => "invalid_altinn_customer_configuration",
            Refusal::Signing(_) => "server_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        tracing::debug!(error = self.error(), reason = %self, "simulator refused a grant");
        let body = json!({ "error": self.error(), "error_description": self.to_string() });
        (
            self.status(),
            [(header::CACHE_CONTROL, "no-store")],
            Json(body),
        )
            .into_response()
    }
}

/// `POST /token`: verify the grant, issue an access token.
pub(super) async fn token(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let form = parse_form(&headers, &body)?;
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {}
        Some(_) => return Err(Refusal::UnsupportedGrantType),
        None => {
            return Err(Refusal::InvalidRequest(
                "the grant_type parameter is missing".into(),
            ));
        }
    }
    let assertion = form
        .get("assertion")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Refusal::InvalidRequest("the assertion parameter is missing".into()))?;

    let grant = verify_grant(&world, assertion)?;
    if world.strict_system_users
        && let Some(user) = &grant.system_user
    {
        let register = world.register.lock().unwrap_or_else(|e| e.into_inner());
        register
            .check_system_user(
                &grant.client_id,
                user.org.as_str(),
                user.external_ref.as_deref(),
            )
            .map_err(Refusal::CustomerConfiguration)?;
    }
    // Maskinporten looks the consent up at Altinn: accepted, unexpired, from and to matching.
    let consent_detail = match &grant.consent {
        Some((id, from)) => Some(
            super::consent::token_detail(&world, id, from, &world.consumer_org)
                .map_err(Refusal::InvalidDetailValue)?,
        ),
        None => None,
    };
    // Last, and atomically: only a grant that passed every other check is "used".
    let seen = world
        .seen_jtis
        .entry(format!("{}\n{}", grant.client_id, grant.jti))
        .or_insert(())
        .await;
    if !seen.is_fresh() {
        return Err(Refusal::ReusedJti(grant.jti));
    }

    let lifetime = world.token_lifetime.as_secs();
    let mut claims = access_token_claims(&world, &grant, lifetime);
    if let Some(detail) = consent_detail {
        claims["authorization_details"] = json!([detail]);
    }
    let access_token = world.sign(&claims)?;
    tracing::debug!(client_id = %grant.client_id, scope = %grant.scope, "simulator issued a token");
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": grant.scope,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /.well-known/oauth-authorization-server`.
pub(super) async fn metadata(State(world): State<Arc<World>>) -> Json<Value> {
    let endpoint = |path: &str| {
        world
            .base_url
            .join(path)
            .map(String::from)
            .unwrap_or_default()
    };
    Json(json!({
        "issuer": world.issuer,
        "token_endpoint": endpoint("token"),
        "jwks_uri": endpoint("jwk"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": [JWT_BEARER],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "RS512"],
    }))
}

/// `GET /jwk`: the keys access tokens are signed with.
pub(super) async fn jwks(State(world): State<Arc<World>>) -> Json<Value> {
    Json(world.jwks())
}

/// A grant that passed every check except replay detection.
#[derive(Debug)]
struct VerifiedGrant {
    client_id: String,
    jti: String,
    /// The requested scopes, space separated, all allowed for the client.
    scope: String,
    resource: Option<String>,
    system_user: Option<SystemUser>,
    /// A consent grant's consent id and `from`.
    consent: Option<(String, String)>,
}

#[derive(Debug)]
struct SystemUser {
    org: OrgNumber,
    external_ref: Option<String>,
}

/// The form body, refusing what Maskinporten would: another content type, or a parameter twice.
fn parse_form(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<std::collections::HashMap<String, String>, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Refusal::InvalidRequest(format!(
            "the body must be application/x-www-form-urlencoded, not '{content_type}'"
        )));
    }
    let mut form = std::collections::HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if form.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(Refusal::InvalidRequest(format!(
                "the parameter '{name}' is repeated"
            )));
        }
    }
    Ok(form)
}

fn verify_grant(world: &World, assertion: &str) -> Result<VerifiedGrant, Refusal> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| {
        Refusal::InvalidRequest(
            "the assertion is not a JWT with an RS256/RS384/RS512 header".into(),
        )
    })?;
    if !matches!(
        header.alg,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
    ) {
        return Err(Refusal::InvalidRequest(format!(
            "alg {:?} is not allowed; use RS256, RS384 or RS512",
            header.alg
        )));
    }
    // A business certificate's x5c may come along; the simulator verifies with the kid's key.
    let kid = header.kid.ok_or_else(|| {
        Refusal::InvalidRequest(if header.x5c.is_some() {
            "the simulator verifies grants by kid only; set kid: for the certificate's key".into()
        } else {
            "the grant header has no kid".into()
        })
    })?;

    // Who claims to have signed it decides which key to check the signature with.
    let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| Refusal::InvalidRequest("the grant's claims are not a JSON object".into()))?;
    let client_id = unverified
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::InvalidRequest("the grant has no iss (the client id)".into()))?;
    let client = world
        .client(client_id)
        .ok_or_else(|| Refusal::UnknownClient(client_id.to_owned()))?;
    let unknown = || {
        Refusal::BadSignature(format!(
            "kid '{kid}' is not registered on client '{client_id}'"
        ))
    };
    // The key set kept through the self-service API decides, with expiry and propagation.
    let managed = match world
        .keys
        .lookup(client_id, &kid, std::time::SystemTime::now())
    {
        Lookup::Unmanaged => None,
        Lookup::Usable(public) => Some(public),
        Lookup::Expired => return Err(Refusal::ExpiredKey(kid)),
        Lookup::NotYetPropagated | Lookup::Unknown => return Err(unknown()),
    };
    let public = match &managed {
        Some(public) => public,
        None => client
            .keys
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, public)| public)
            .ok_or_else(unknown)?,
    };

    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(assertion, &decoding_key(public), &validation)
        .map_err(|_| {
            Refusal::BadSignature(format!("the signature does not verify with kid '{kid}'"))
        })?
        .claims;

    check_audience(&claims, &world.issuer)?;
    check_lifetime(&claims, now_unix())?;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or_else(|| Refusal::InvalidRequest("the grant has no jti".into()))?
        .to_owned();
    let scope = check_scopes(&claims, &client.scopes)?;
    let resource = match claims.get("resource") {
        None => None,
        Some(Value::String(r)) if !r.is_empty() => Some(r.clone()),
        Some(_) => {
            return Err(Refusal::InvalidRequest(
                "resource must be one non-empty string".into(),
            ));
        }
    };
    let details = claims.get("authorization_details");
    let consent = details
        .map(super::consent::grant_detail)
        .transpose()
        .map_err(Refusal::UnknownDetailFields)?
        .flatten();
    let system_user = match consent {
        Some(_) => None,
        None => details.map(check_system_user).transpose()?,
    };

    Ok(VerifiedGrant {
        client_id: client.client_id,
        jti,
        scope,
        resource,
        system_user,
        consent,
    })
}

fn check_audience(claims: &Value, issuer: &str) -> Result<(), Refusal> {
    // One string, exactly the issuer: not the token endpoint, not an array.
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == issuer => Ok(()),
        _ => Err(Refusal::WrongAudience {
            expected: issuer.to_owned(),
        }),
    }
}

fn check_lifetime(claims: &Value, now: i64) -> Result<(), Refusal> {
    let time = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| Refusal::InvalidRequest(format!("the grant has no numeric {name}")))
    };
    let (iat, exp) = (time("iat")?, time("exp")?);
    if (iat - now).abs() > CLOCK_TOLERANCE {
        return Err(Refusal::BadLifetime(format!(
            "iat is {} s away from the server clock; at most {CLOCK_TOLERANCE} s is accepted",
            iat - now
        )));
    }
    if exp <= now {
        return Err(Refusal::BadLifetime("exp is in the past".into()));
    }
    if exp <= iat {
        return Err(Refusal::BadLifetime("exp is not after iat".into()));
    }
    if exp - iat > MAX_GRANT_LIFETIME {
        return Err(Refusal::BadLifetime(format!(
            "exp - iat is {} s; at most {MAX_GRANT_LIFETIME} s is accepted",
            exp - iat
        )));
    }
    Ok(())
}

/// Whether a registered scope allows `scope`: itself, or, for a pattern ending in `*` (the
/// broker's `on_demand.scopes`), any scope with that prefix.
fn scope_matches(registered: &str, scope: &str) -> bool {
    match registered.strip_suffix('*') {
        Some(prefix) => scope.starts_with(prefix),
        None => registered == scope,
    }
}

/// The requested scopes, each checked against the client's; returned space separated.
fn check_scopes(claims: &Value, allowed: &[String]) -> Result<String, Refusal> {
    let requested: Vec<&str> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if requested.is_empty() {
        return Err(Refusal::ScopeNotAllowed(
            "the grant asks for no scope".into(),
        ));
    }
    let refused: Vec<&str> = requested
        .iter()
        .copied()
        .filter(|s| !allowed.iter().any(|a| scope_matches(a, s)))
        .collect();
    if !refused.is_empty() {
        return Err(Refusal::ScopeNotAllowed(format!(
            "not registered on the client: {}",
            refused.join(" ")
        )));
    }
    Ok(requested.join(" "))
}

/// `authorization_details` for a system user: exactly one object of type `urn:altinn:systemuser`
/// with only the known fields and a valid organisation.
fn check_system_user(details: &Value) -> Result<SystemUser, Refusal> {
    let detail = match details.as_array().map(Vec::as_slice) {
        Some([Value::Object(detail)]) => detail,
        _ => {
            return Err(Refusal::UnknownDetailType(
                "must be an array of exactly one object".into(),
            ));
        }
    };
    match detail.get("type").and_then(Value::as_str) {
        Some(SYSTEM_USER_TYPE) => {}
        other => {
            return Err(Refusal::UnknownDetailType(format!(
                "type {other:?} is not supported; use {SYSTEM_USER_TYPE}"
            )));
        }
    }
    unknown_fields(detail, &["type", "systemuser_org", "externalRef"])?;

    let org = detail
        .get("systemuser_org")
        .and_then(Value::as_object)
        .ok_or_else(|| Refusal::InvalidDetailValue("systemuser_org must be an object".into()))?;
    unknown_fields(org, &["authority", "ID"])?;
    if org.get("authority").and_then(Value::as_str) != Some(ISO6523) {
        return Err(Refusal::InvalidDetailValue(format!(
            "systemuser_org.authority must be {ISO6523}"
        )));
    }
    let id = org.get("ID").and_then(Value::as_str).unwrap_or_default();
    let number = id.strip_prefix("0192:").ok_or_else(|| {
        Refusal::InvalidDetailValue("systemuser_org.ID must be 0192:<organisation number>".into())
    })?;
    let org: OrgNumber = number
        .parse()
        .map_err(|e| Refusal::InvalidDetailValue(format!("systemuser_org.ID: {e}")))?;

    let external_ref = match detail.get("externalRef") {
        None => None,
        Some(Value::String(r)) if !r.is_empty() => Some(r.clone()),
        Some(_) => {
            return Err(Refusal::InvalidDetailValue(
                "externalRef must be a non-empty string".into(),
            ));
        }
    };
    Ok(SystemUser { org, external_ref })
}

fn unknown_fields(object: &Map<String, Value>, known: &[&str]) -> Result<(), Refusal> {
    let unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Refusal::UnknownDetailFields(unknown.join(", ")))
    }
}

fn access_token_claims(world: &World, grant: &VerifiedGrant, lifetime: u64) -> Value {
    let now = now_unix();
    let mut claims = json!({
        "iss": world.issuer,
        "client_id": grant.client_id,
        "client_amr": "private_key_jwt",
        "token_type": "Bearer",
        "scope": grant.scope,
        "consumer": { "authority": ISO6523, "ID": format!("0192:{}", world.consumer_org) },
        "iat": now,
        "exp": now + lifetime as i64,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(resource) = &grant.resource {
        claims["aud"] = json!(resource);
    }
    if let Some(user) = &grant.system_user {
        let mut detail = json!({
            "type": SYSTEM_USER_TYPE,
            "systemuser_id": [system_user_id(&grant.client_id, user)],
            "systemuser_org": { "authority": ISO6523, "ID": user.org.iso6523() },
        });
        if let Some(external_ref) = &user.external_ref {
            detail["externalRef"] = json!(external_ref);
        }
        claims["authorization_details"] = json!([detail]);
    }
    claims
}

/// The same client, organisation and `externalRef` always name the same system user.
fn system_user_id(client_id: &str, user: &SystemUser) -> String {
    let digest = Sha256::new()
        .chain_update(client_id)
        .chain_update([0])
        .chain_update(user.org.as_str())
        .chain_update([0])
        .chain_update(user.external_ref.as_deref().unwrap_or_default())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}
