//! The simulated Altinn system register and system-user requests (vendor side), with Altinn's
//! paths, shapes, statuses and codes (PROTOCOL.md), and the page where a customer accepts.
//!
//! - `POST/GET/PUT/DELETE /authentication/api/v1/systemregister/vendor[/{id}]`: the id rules
//!   (VLD-00000/1/13), VLD-00002 on a second POST (also for a deleted id), a bare JSON string
//!   answer to POST, `{"succeeded": true}` to PUT, soft delete.
//! - `POST /authentication/api/v1/systemuser/request/vendor[/agent]`: 201 new, 200 for a pending
//!   one, AUTH-00004 when the organisation has a system user, AUTH-00001/11/21/59.
//! - `GET .../systemuser/request/vendor[/agent]/{id}`, `.../byexternalref/{system}/{org}/{ref}`.
//! - `GET .../systemuser/vendor/bysystem/{system}`: 50 per page with `links.next`.
//! - `GET/POST /accessmanagement/ui/systemuser/request?id=` (and `agentrequest`): a plain HTML
//!   form with Accept and Reject.
//!
//! Every API call needs this simulator's token with the scope Altinn checks for it (401 without
//! a valid one, 403 without the scope or for another vendor's system). It holds at most
//! [`MAX_RECORDS`] systems, requests and system users each (503 beyond), and never lets a
//! system be used after it was deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::World;
use super::altinn::{bearer, verify_altinn_or_maskinporten_token};
use crate::policy::org::OrgNumber;

/// The most systems, requests and system users the simulator keeps, each.
pub const MAX_RECORDS: usize = 10_000;
/// System users per page of `bysystem`, as Altinn pages them.
const PAGE: usize = 50;

const SCOPE_REGISTER: &str = "altinn:authentication/systemregister.write";
const SCOPE_REQUEST_WRITE: &str = "altinn:authentication/systemuser.request.write";
const SCOPE_REQUEST_READ: &str = "altinn:authentication/systemuser.request.read";
const RESOURCE: &str = "urn:altinn:resource";
const ACCESS_PACKAGE: &str = "urn:altinn:accesspackage:";

/// Everything the register holds.
#[derive(Default)]
pub struct Register {
    systems: BTreeMap<String, System>,
    requests: BTreeMap<String, Request>,
    users: Vec<SystemUser>,
}

struct System {
    vendor: String,
    body: Value,
    internal_id: String,
    deleted: bool,
}

#[derive(Clone)]
struct Request {
    id: String,
    system_id: String,
    org: String,
    external_ref: String,
    rights: Value,
    packages: Value,
    status: &'static str,
    redirect_url: Option<String>,
    created: String,
    agent: bool,
}

#[derive(Clone)]
struct SystemUser {
    id: String,
    system_id: String,
    org: String,
    external_ref: String,
    created: String,
}

impl Register {
    /// Whether `org` has accepted a system user, made with `external_ref`, for a system that lists
    /// `client_id`: what Maskinporten checks before a system-user token (else MP-303). `Err` says
    /// which of the three is missing.
    pub fn check_system_user(
        &self,
        client_id: &str,
        org: &str,
        external_ref: Option<&str>,
    ) -> Result<(), String> {
        let external_ref = external_ref.unwrap_or(org);
        let for_org: Vec<&SystemUser> = self.users.iter().filter(|u| u.org == org).collect();
        if for_org.is_empty() {
            return Err(format!("organisation {org} has not accepted a system user"));
        }
        let listed = |u: &&&SystemUser| {
            self.systems.get(&u.system_id).is_some_and(|s| {
                !s.deleted && array(&s.body["clientId"]).any(|c| c.as_str() == Some(client_id))
            })
        };
        let of_client: Vec<_> = for_org.iter().filter(listed).collect();
        if of_client.is_empty() {
            return Err(format!(
                "no system with a system user for {org} lists client id {client_id} in clientId"
            ));
        }
        if !of_client.iter().any(|u| u.external_ref == external_ref) {
            return Err(format!(
                "the system user for {org} was made with another externalRef than {external_ref:?}"
            ));
        }
        Ok(())
    }

    /// A 503 when `len` records of a kind are already held.
    fn room(len: usize, what: &str) -> Result<(), Refusal> {
        if len >= MAX_RECORDS {
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                &format!("the simulator holds at most {MAX_RECORDS} {what}; restart it"),
            ));
        }
        Ok(())
    }
}

/// A refusal, rendered as Altinn renders it: ProblemDetails, a VLD code as a validation error.
pub(super) enum Refusal {
    Problem {
        status: StatusCode,
        code: Option<&'static str>,
        detail: String,
    },
    /// A status without a body (Altinn's 401, its 500 for a missing language).
    Bare(StatusCode),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, detail) = match self {
            Refusal::Bare(status) => return status.into_response(),
            Refusal::Problem {
                status,
                code,
                detail,
            } => (status, code, detail),
        };
        let body = match code {
            Some(code) if code.starts_with("VLD-") => json!({
                "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
                "title": "One or more validation errors occurred.",
                "status": status.as_u16(),
                "code": "STD-00000",
                "validationErrors": [{"code": code, "title": detail, "detail": detail, "paths": []}],
            }),
            _ => json!({
                "type": "https://tools.ietf.org/html/rfc9110",
                "title": detail,
                "status": status.as_u16(),
                "detail": detail,
                "code": code,
            }),
        };
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

pub(super) fn problem(status: StatusCode, code: Option<&'static str>, detail: &str) -> Refusal {
    Refusal::Problem {
        status,
        code,
        detail: detail.to_owned(),
    }
}

fn bad(code: &'static str, detail: &str) -> Refusal {
    problem(StatusCode::BAD_REQUEST, Some(code), detail)
}

/// The vendor organisation of a caller holding `scope`: 401 without a valid token, 403 without
/// the scope.
pub(super) fn vendor(world: &World, headers: &HeaderMap, scope: &str) -> Result<String, Refusal> {
    let claims = bearer(headers)
        .ok_or(())
        .and_then(|t| verify_altinn_or_maskinporten_token(world, t).map_err(drop))
        .map_err(|()| Refusal::Bare(StatusCode::UNAUTHORIZED))?;
    let scopes = claims["scope"].as_str().unwrap_or_default();
    if !scopes.split_whitespace().any(|s| s == scope) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            &format!("the token lacks the scope {scope}"),
        ));
    }
    claims["consumer"]["ID"]
        .as_str()
        .and_then(|id| id.strip_prefix("0192:"))
        .map(str::to_owned)
        .ok_or_else(|| {
            problem(
                StatusCode::UNAUTHORIZED,
                Some("AUTH-00023"),
                "the token names no vendor organisation",
            )
        })
}

pub(super) fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                None,
                "the body is not a JSON object",
            )
        })
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn lock(world: &World) -> std::sync::MutexGuard<'_, Register> {
    // A writer that panicked left whole values behind; keep serving.
    world.register.lock().unwrap_or_else(|e| e.into_inner())
}

/// The rule Altinn applies to a system definition; `existing` is its own id on a PUT.
fn check_system(
    register: &Register,
    caller: &str,
    body: &Value,
    existing: Option<&str>,
) -> Result<(String, String), Refusal> {
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let vendor_id = body["vendor"]["ID"].as_str().unwrap_or_default();
    for text in ["name", "description"] {
        if ["nb", "nn", "en"]
            .iter()
            .any(|l| body[text][l].as_str().is_none_or(str::is_empty))
        {
            // Altinn has answered a missing language with a 500.
            return Err(Refusal::Bare(StatusCode::INTERNAL_SERVER_ERROR));
        }
    }
    let Some(vendor) = vendor_id.strip_prefix("0192:") else {
        return Err(bad(
            "VLD-00000",
            "vendor.ID must be 0192:<organisation number>",
        ));
    };
    if id.contains(char::is_whitespace) {
        return Err(bad("VLD-00013", "the system id must not contain spaces"));
    }
    if !id.starts_with(&format!("{vendor}_")) {
        return Err(bad(
            "VLD-00001",
            "the system id must start with the vendor's organisation number and '_'",
        ));
    }
    if vendor != caller {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            "the system's vendor is not the token's organisation",
        ));
    }
    if existing.is_none() && register.systems.contains_key(&id) {
        return Err(bad("VLD-00002", "a system with this id already exists"));
    }
    let mut rights = Vec::new();
    for right in array(&body["rights"]) {
        for resource in array(&right["resource"]) {
            match (resource["id"].as_str(), resource["value"].as_str()) {
                (Some(RESOURCE), Some(value)) if !value.is_empty() => rights.push(value),
                _ => {
                    return Err(bad(
                        "VLD-00009",
                        "a right's resource must be urn:altinn:resource with a value",
                    ));
                }
            }
        }
    }
    if has_duplicates(&rights) {
        return Err(bad("VLD-00006", "a right is listed twice"));
    }
    let packages: Vec<&str> = array(&body["accessPackages"])
        .map(|p| p["urn"].as_str().unwrap_or_default())
        .collect();
    if packages.iter().any(|p| !p.starts_with(ACCESS_PACKAGE)) {
        return Err(bad("VLD-00008", "an access package is not valid"));
    }
    if has_duplicates(&packages) {
        return Err(bad("VLD-00007", "an access package is listed twice"));
    }
    for url in array(&body["allowedRedirectUrls"]) {
        let https = url
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .is_some_and(|u| u.scheme() == "https");
        if !https {
            return Err(bad("VLD-00005", "a redirect URL is not a valid https URL"));
        }
    }
    for client in array(&body["clientId"]) {
        let taken = register
            .systems
            .iter()
            .any(|(other, s)| other != &id && array(&s.body["clientId"]).any(|c| c == client));
        if taken {
            return Err(bad("VLD-00004", "the client id is used by another system"));
        }
    }
    Ok((id, vendor.to_owned()))
}

fn has_duplicates(list: &[&str]) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    !list.iter().all(|x| seen.insert(*x))
}

/// `POST systemregister/vendor`.
pub(super) async fn create_system(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REGISTER)?;
    let body = json_body(&body)?;
    let mut register = lock(&world);
    let (id, vendor) = check_system(&register, &caller, &body, None)?;
    Register::room(register.systems.len(), "systems")?;
    let internal_id = uuid::Uuid::new_v4().to_string();
    register.systems.insert(
        id,
        System {
            vendor,
            body,
            internal_id: internal_id.clone(),
            deleted: false,
        },
    );
    // Altinn answers with the internal id as a bare JSON string.
    Ok(Json(internal_id).into_response())
}

/// `GET systemregister/vendor/{id}`.
pub(super) async fn get_system(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REGISTER)?;
    let register = lock(&world);
    let system = own_system(&register, &caller, &id)?;
    let mut answer = system.body.clone();
    answer["systemInternalId"] = json!(system.internal_id);
    answer["isDeleted"] = json!(system.deleted);
    Ok(Json(answer).into_response())
}

fn own_system<'r>(register: &'r Register, caller: &str, id: &str) -> Result<&'r System, Refusal> {
    let system = register
        .systems
        .get(id)
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, None, "no such system"))?;
    if system.vendor != caller {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            "the system belongs to another vendor",
        ));
    }
    Ok(system)
}

/// `PUT systemregister/vendor/{id}`: replace the whole definition.
pub(super) async fn update_system(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REGISTER)?;
    let body = json_body(&body)?;
    let mut register = lock(&world);
    if own_system(&register, &caller, &id)?.deleted {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            None,
            "the system is marked as deleted",
        ));
    }
    if body["id"].as_str() != Some(id.as_str()) {
        return Err(bad("VLD-00012", "the id in the body differs from the path"));
    }
    check_system(&register, &caller, &body, Some(&id))?;
    if let Some(system) = register.systems.get_mut(&id) {
        system.body = body;
    }
    Ok(Json(json!({"succeeded": true})).into_response())
}

/// `DELETE systemregister/vendor/{id}`: soft delete; the id can never be used again.
pub(super) async fn delete_system(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REGISTER)?;
    let mut register = lock(&world);
    own_system(&register, &caller, &id)?;
    if let Some(system) = register.systems.get_mut(&id) {
        system.deleted = true;
    }
    Ok(Json(json!({"succeeded": true})).into_response())
}

impl Request {
    fn confirm_url(&self, world: &World) -> String {
        let page = if self.agent {
            "agentrequest"
        } else {
            "request"
        };
        format!(
            "{}accessmanagement/ui/systemuser/{page}?id={}",
            world.base_url, self.id
        )
    }

    fn answer(&self, world: &World) -> Value {
        json!({
            "id": self.id,
            "externalRef": self.external_ref,
            "systemId": self.system_id,
            "partyOrgNo": self.org,
            "rights": self.rights,
            "accessPackages": self.packages,
            "status": self.status,
            "redirectUrl": self.redirect_url,
            "confirmUrl": self.confirm_url(world),
            "escalated": false,
            "created": self.created,
        })
    }
}

/// `POST systemuser/request/vendor`.
pub(super) async fn create_request(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    new_request(&world, &headers, &body, false)
}

/// `POST systemuser/request/vendor/agent`.
pub(super) async fn create_agent_request(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    new_request(&world, &headers, &body, true)
}

fn new_request(
    world: &World,
    headers: &HeaderMap,
    body: &[u8],
    agent: bool,
) -> Result<Response, Refusal> {
    let caller = vendor(world, headers, SCOPE_REQUEST_WRITE)?;
    // Unknown fields are ignored, as Altinn ignores them (a misspelt externalRef included).
    let body = json_body(body)?;
    let system_id = body["systemId"].as_str().unwrap_or_default().to_owned();
    let org = body["partyOrgNo"].as_str().unwrap_or_default().to_owned();
    if org.parse::<OrgNumber>().is_err() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            None,
            "partyOrgNo is not a valid organisation number",
        ));
    }
    let external_ref = body["externalRef"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or(&org)
        .to_owned();
    let mut register = lock(world);
    let system = match register.systems.get(&system_id) {
        Some(s) if !s.deleted && s.vendor == caller => s,
        _ => {
            return Err(problem(
                StatusCode::NOT_FOUND,
                Some("AUTH-00011"),
                "the system is not found",
            ));
        }
    };
    let rights = body["rights"].clone();
    let packages = body["accessPackages"].clone();
    let values = |v: &Value| -> Vec<Value> { array(v).cloned().collect() };
    if agent && !values(&rights).is_empty() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            None,
            "an agent request takes access packages, not rights",
        ));
    }
    if values(&rights).is_empty() && values(&packages).is_empty() {
        return Err(bad_auth(
            "AUTH-00059",
            "the request has neither rights nor access packages",
        ));
    }
    let known_rights = values(&system.body["rights"]);
    let known_packages = values(&system.body["accessPackages"]);
    if values(&rights).iter().any(|r| !known_rights.contains(r))
        || values(&packages)
            .iter()
            .any(|p| !known_packages.contains(p))
    {
        return Err(bad_auth(
            "AUTH-00001",
            "a right or access package is not in the system",
        ));
    }
    let redirect_url = body["redirectUrl"].as_str().filter(|u| !u.is_empty());
    if let Some(url) = redirect_url
        && !array(&system.body["allowedRedirectUrls"]).any(|a| a.as_str() == Some(url))
    {
        return Err(bad_auth(
            "AUTH-00021",
            "the redirect URL is not one of the system's allowedRedirectUrls",
        ));
    }
    let same = |s: &str, o: &str, r: &str| s == system_id && o == org && r == external_ref;
    if register
        .users
        .iter()
        .any(|u| same(&u.system_id, &u.org, &u.external_ref))
    {
        return Err(bad_auth(
            "AUTH-00004",
            "the organisation already has a system user for this system",
        ));
    }
    if let Some(existing) = register
        .requests
        .values()
        .find(|r| same(&r.system_id, &r.org, &r.external_ref) && r.status != "Timedout")
    {
        return match existing.status {
            "New" => Ok((StatusCode::OK, Json(existing.answer(world))).into_response()),
            "Accepted" => Err(bad_auth("AUTH-00006", "the request is already accepted")),
            "Denied" => Err(bad_auth("AUTH-00008", "the request was denied")),
            _ => Err(bad_auth("AUTH-00009", "the request was rejected")),
        };
    }
    Register::room(register.requests.len(), "requests")?;
    let request = Request {
        id: uuid::Uuid::new_v4().to_string(),
        system_id: system_id.clone(),
        org: org.clone(),
        external_ref: external_ref.clone(),
        rights,
        packages,
        status: "New",
        redirect_url: redirect_url.map(str::to_owned),
        created: now(),
        agent,
    };
    let answer = request.answer(world);
    register.requests.insert(request.id.clone(), request);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

fn bad_auth(code: &'static str, detail: &str) -> Refusal {
    problem(StatusCode::BAD_REQUEST, Some(code), detail)
}

/// `GET systemuser/request/vendor/{id}`.
pub(super) async fn get_request(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    read_request(&world, &headers, |r| r.id == id && !r.agent)
}

/// `GET systemuser/request/vendor/agent/{id}`.
pub(super) async fn get_agent_request(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    read_request(&world, &headers, |r| r.id == id && r.agent)
}

/// `GET systemuser/request/vendor/byexternalref/{system}/{org}/{ref}`: 400 without a body
/// when there is none, as Altinn answers.
pub(super) async fn get_request_by_external_ref(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path((system, org, external_ref)): Path<(String, String, String)>,
) -> Result<Response, Refusal> {
    read_request(&world, &headers, |r| {
        r.system_id == system && r.org == org && r.external_ref == external_ref
    })
    .map_err(|refusal| match refusal {
        Refusal::Problem { status, .. } if status == StatusCode::NOT_FOUND => {
            Refusal::Bare(StatusCode::BAD_REQUEST)
        }
        other => other,
    })
}

fn read_request(
    world: &World,
    headers: &HeaderMap,
    pick: impl Fn(&Request) -> bool,
) -> Result<Response, Refusal> {
    let caller = vendor(world, headers, SCOPE_REQUEST_READ)?;
    let register = lock(world);
    let found = register
        .requests
        .values()
        .filter(|r| pick(r))
        .find(|r| {
            register
                .systems
                .get(&r.system_id)
                .is_some_and(|s| s.vendor == caller)
        })
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, None, "no such request"))?;
    Ok(Json(found.answer(world)).into_response())
}

/// `?token=` of a `bysystem` page: where the page starts.
#[derive(serde::Deserialize)]
pub(super) struct PageQuery {
    token: Option<usize>,
}

/// `GET systemuser/vendor/bysystem/{system}`: 50 per page, `links.next` to the rest.
pub(super) async fn list_system_users(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(system_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REGISTER)?;
    let register = lock(&world);
    own_system(&register, &caller, &system_id)?;
    let users: Vec<&SystemUser> = register
        .users
        .iter()
        .filter(|u| u.system_id == system_id)
        .collect();
    let start = page.token.unwrap_or(0).min(users.len());
    let end = start.saturating_add(PAGE).min(users.len());
    let data: Vec<Value> = users[start..end]
        .iter()
        .map(|u| {
            json!({
                "id": u.id,
                "integrationTitle": u.system_id,
                "systemId": u.system_id,
                "reporteeOrgNo": u.org,
                "created": u.created,
                "isDeleted": false,
                "externalRef": u.external_ref,
            })
        })
        .collect();
    let next = (end < users.len()).then(|| {
        format!(
            "{}authentication/api/v1/systemuser/vendor/bysystem/{system_id}?token={end}",
            world.base_url
        )
    });
    Ok(Json(json!({"links": {"next": next}, "data": data})).into_response())
}

/// `?id=` of the confirm page.
#[derive(serde::Deserialize)]
pub(super) struct ConfirmQuery {
    id: Option<String>,
}

/// `GET /accessmanagement/ui/systemuser/request?id=`: the request, and Accept and Reject.
pub(super) async fn confirm_page(
    State(world): State<Arc<World>>,
    Query(query): Query<ConfirmQuery>,
) -> Response {
    let register = lock(&world);
    let Some(request) = query.id.and_then(|id| register.requests.get(&id).cloned()) else {
        return no_such_request();
    };
    let name = register
        .systems
        .get(&request.system_id)
        .and_then(|s| s.body["name"]["en"].as_str())
        .unwrap_or(&request.system_id)
        .to_owned();
    let id = escape(&request.id);
    let body = if request.status == "New" {
        format!(
            "<p>{} asks to act for organisation {} as a system user (external reference {}).</p>\n\
             <form method=\"post\">\n<input type=\"hidden\" name=\"id\" value=\"{id}\">\n\
             <button type=\"submit\" name=\"action\" value=\"accept\">Accept</button>\n\
             <button type=\"submit\" name=\"action\" value=\"reject\">Reject</button>\n</form>",
            escape(&name),
            escape(&request.org),
            escape(&request.external_ref)
        )
    } else {
        format!("<p>This request is {}.</p>", request.status)
    };
    page("System user request", &body).into_response()
}

/// `POST /accessmanagement/ui/systemuser/request`: the customer's answer (`id`, `action`).
pub(super) async fn confirm_answer(State(world): State<Arc<World>>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (Some(id), Some(action)) = (form.get("id"), form.get("action")) else {
        return (
            StatusCode::BAD_REQUEST,
            page("Bad answer", "<p>The form needs id and action.</p>"),
        )
            .into_response();
    };
    let mut register = lock(&world);
    let users = register.users.len();
    let Some(request) = register.requests.get_mut(id) else {
        return no_such_request();
    };
    if request.status != "New" {
        let text = format!("<p>This request is already {}.</p>", request.status);
        return (StatusCode::CONFLICT, page("Already answered", &text)).into_response();
    }
    let accepted = match action.as_str() {
        "accept" => {
            if let Err(full) = Register::room(users, "system users") {
                return full.into_response();
            }
            request.status = "Accepted";
            true
        }
        "reject" => {
            request.status = "Rejected";
            false
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                page("Bad answer", "<p>action is accept or reject.</p>"),
            )
                .into_response();
        }
    };
    let request = request.clone();
    if accepted {
        register.users.push(SystemUser {
            id: uuid::Uuid::new_v4().to_string(),
            system_id: request.system_id.clone(),
            org: request.org.clone(),
            external_ref: request.external_ref.clone(),
            created: now(),
        });
    }
    let mut text = format!(
        "<p>The request for organisation {} is {}.</p>",
        escape(&request.org),
        request.status
    );
    if let Some(url) = &request.redirect_url {
        text.push_str(&format!(
            "<p><a href=\"{}\">Back to the vendor</a></p>",
            escape(url)
        ));
    }
    page(request.status, &text).into_response()
}

fn no_such_request() -> Response {
    let text = "<p>There is no system-user request with this id.</p>";
    (StatusCode::NOT_FOUND, page("No such request", text)).into_response()
}

pub(super) fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t} (simulated Altinn)</title></head>\n<body><h1>{t}</h1>\n{body}\n</body></html>\n",
        t = escape(title)
    ))
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_holds_at_most_max_records_of_each_kind() {
        assert!(Register::room(MAX_RECORDS - 1, "requests").is_ok());
        let full = Register::room(MAX_RECORDS, "requests").unwrap_err();
        assert_eq!(
            full.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_system_user_check_names_the_missing_piece() {
        let mut register = Register::default();
        assert!(
            register
                .check_system_user("c", "991825827", None)
                .unwrap_err()
                .contains("has not accepted")
        );
        register.systems.insert(
            "991825827_s".into(),
            System {
                vendor: "991825827".into(),
                body: json!({"clientId": ["c"]}),
                internal_id: "x".into(),
                deleted: false,
            },
        );
        register.users.push(SystemUser {
            id: "u".into(),
            system_id: "991825827_s".into(),
            org: "974761076".into(),
            external_ref: "974761076".into(),
            created: now(),
        });
        assert!(register.check_system_user("c", "974761076", None).is_ok());
        assert!(
            register
                .check_system_user("other", "974761076", None)
                .unwrap_err()
                .contains("clientId")
        );
        assert!(
            register
                .check_system_user("c", "974761076", Some("r"))
                .unwrap_err()
                .contains("externalRef")
        );
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        assert_eq!(
            escape("<b a=\"1\">&'"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
