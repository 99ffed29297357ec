//! A strict fake of Altinn's system register and system-user request API (vendor side), for the
//! onboarding tests: the paths, field names, answers and codes of PROTOCOL.md.
//!
//! Strict where Altinn is and stricter about what it receives: every call must carry a token the
//! fake Maskinporten signed, with the scope Altinn checks for that endpoint (401/403 otherwise), and
//! every body must use exactly Altinn's field names; anything else is recorded as a violation (the
//! tests assert none) and refused. Tests drive the customer's side with [`FakeRegister::accept`]
//! and [`FakeRegister::reject`].
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support::{FakeMaskinporten, fixture};

pub const SCOPE_REGISTER: &str = "altinn:authentication/systemregister.write";
pub const SCOPE_REQUEST_WRITE: &str = "altinn:authentication/systemuser.request.write";
pub const SCOPE_REQUEST_READ: &str = "altinn:authentication/systemuser.request.read";

const SYSTEM_FIELDS: [&str; 9] = [
    "id",
    "vendor",
    "name",
    "description",
    "rights",
    "accessPackages",
    "clientId",
    "isVisible",
    "allowedRedirectUrls",
];
const REQUEST_FIELDS: [&str; 7] = [
    "externalRef",
    "systemId",
    "partyOrgNo",
    "integrationTitle",
    "rights",
    "accessPackages",
    "redirectUrl",
];

#[derive(Default)]
struct Register {
    systems: BTreeMap<String, Value>,
    deleted: Vec<String>,
    requests: Vec<Value>,
    users: Vec<Value>,
    /// `METHOD path` of every call, in order.
    calls: Vec<String>,
    violations: Vec<String>,
    /// System users per page of `bysystem` (Altinn: 50).
    page_size: usize,
    /// Answer the next call with this status and code instead.
    refuse_next: Option<(u16, String)>,
    /// Change requests, as Altinn stores them (NoChangeNeeded answers are not stored).
    changes: Vec<Value>,
    /// The query string of every `POST changerequest/vendor`, in order.
    change_queries: Vec<String>,
    /// What each system user holds (by system-user id): resource ids and package URNs.
    held: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

struct FakeState {
    mp_issuer: String,
    base: String,
    key: DecodingKey,
    register: Mutex<Register>,
}

/// The fake, serving `/authentication/api/v1/...` on a loopback port.
pub struct FakeRegister {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
}

impl FakeRegister {
    pub async fn start(mp: &FakeMaskinporten) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pem = std::fs::read(fixture("other-key.pub.pem")).unwrap();
        let state = Arc::new(FakeState {
            mp_issuer: mp.issuer(),
            base: format!("http://{addr}/authentication/api/v1/"),
            key: DecodingKey::from_rsa_pem(&pem).unwrap(),
            register: Mutex::new(Register {
                page_size: 50,
                ..Register::default()
            }),
        });
        let api = Router::new()
            .route("/systemregister/vendor", post(create_system))
            .route(
                "/systemregister/vendor/{id}",
                get(get_system).put(update_system),
            )
            .route("/systemuser/request/vendor", post(create_request))
            .route(
                "/systemuser/request/vendor/agent",
                post(create_agent_request),
            )
            .route("/systemuser/request/vendor/{id}", get(get_request))
            .route(
                "/systemuser/request/vendor/byexternalref/{system}/{org}/{external_ref}",
                get(get_by_external_ref),
            )
            .route("/systemuser/vendor/bysystem/{system}", get(list_users))
            .route("/systemuser/vendor/byquery", get(user_by_query))
            .route("/systemuser/changerequest/vendor", post(create_change))
            .route("/systemuser/changerequest/vendor/{id}", get(get_change))
            .route(
                "/systemuser/changerequest/vendor/bysystem/{system}",
                get(list_changes),
            );
        let router = Router::new()
            .nest("/authentication/api/v1", api)
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeRegister { addr, state }
    }

    /// The platform base to configure as `endpoints.altinn_platform`.
    pub fn platform(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Register> {
        self.state.register.lock().unwrap()
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
    pub fn system(&self, id: &str) -> Option<Value> {
        self.lock().systems.get(id).cloned()
    }
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }
    /// A system registered (and since deleted) by someone: its id can never be used again.
    pub fn add_deleted(&self, id: &str) {
        self.lock().deleted.push(id.to_owned());
    }
    /// Register a system directly, as if done earlier.
    pub fn add_system(&self, body: Value) {
        let id = body["id"].as_str().unwrap().to_owned();
        self.lock().systems.insert(id, body);
    }
    /// `n` system users of `system` for the organisations given, as accepted earlier (without a
    /// request Altinn still has: what they hold is unknown to the vendor).
    pub fn add_users(&self, system: &str, orgs: &[String]) {
        let mut register = self.lock();
        for org in orgs {
            let user = user(system, org, org);
            register.users.push(user);
        }
    }
    /// System users of `system` for `orgs`, each made by an accepted request for `rights`.
    pub fn add_users_holding(&self, system: &str, orgs: &[String], rights: &[&str]) {
        let mut register = self.lock();
        for org in orgs {
            let user = user(system, org, org);
            let rights_json: Vec<Value> = rights.iter().map(|r| right(r)).collect();
            register.requests.push(json!({
                "id": uuid::Uuid::new_v4().to_string(), "externalRef": org, "systemId": system,
                "partyOrgNo": org, "rights": rights_json, "accessPackages": [], "status": "Accepted",
                "redirectUrl": null, "confirmUrl": "https://am.ui.tt02.altinn.no/x", "escalated": false,
                "created": "2026-11-28T12:00:00Z",
            }));
            let id = user["id"].as_str().unwrap().to_owned();
            register.held.insert(
                id,
                (rights.iter().map(|r| r.to_string()).collect(), Vec::new()),
            );
            register.users.push(user);
        }
    }
    /// An agent (client delegation) system user of `system` for `org`.
    pub fn add_agent_user(&self, system: &str, org: &str) {
        let mut user = user(system, org, org);
        user["userType"] = json!("agent");
        self.lock().users.push(user);
    }
    /// The rights the system user of `org` holds.
    pub fn held_rights(&self, org: &str) -> Vec<String> {
        let register = self.lock();
        let user = register.users.iter().find(|u| u["reporteeOrgNo"] == org);
        user.and_then(|u| register.held.get(u["id"].as_str().unwrap()))
            .map(|h| h.0.clone())
            .unwrap_or_default()
    }
    /// `n` answered change requests of `system` for a system user long gone.
    pub fn add_old_changes(&self, system: &str, n: usize) {
        let change = json!({"id": "", "systemId": system, "systemUserId": uuid::Uuid::new_v4().to_string(), "status": "Rejected"});
        self.lock().changes.extend(std::iter::repeat_n(change, n));
    }
    pub fn changes(&self) -> Vec<Value> {
        self.lock().changes.clone()
    }
    pub fn change_queries(&self) -> Vec<String> {
        self.lock().change_queries.clone()
    }
    /// The customer approves change request `id`: the system user gains and loses its lists.
    pub fn accept_change(&self, id: &str) {
        let mut register = self.lock();
        let change = register
            .changes
            .iter_mut()
            .find(|c| c["id"] == id)
            .expect("a change request with this id");
        change["status"] = json!("Accepted");
        let change = change.clone();
        let values = |list: &Value| -> Vec<String> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|r| r["resource"][0]["value"].as_str().unwrap().to_owned())
                .collect()
        };
        let user = change["systemUserId"].as_str().unwrap().to_owned();
        let held = register.held.entry(user).or_default();
        held.0.extend(values(&change["requiredRights"]));
        let unwanted = values(&change["unwantedRights"]);
        held.0.retain(|r| !unwanted.contains(r));
    }
    pub fn reject_change(&self, id: &str) {
        let mut register = self.lock();
        let change = register.changes.iter_mut().find(|c| c["id"] == id).unwrap();
        change["status"] = json!("Rejected");
    }
    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = n;
    }
    /// Refuse the next call with this status and Altinn code.
    pub fn refuse_next(&self, status: u16, code: &str) {
        self.lock().refuse_next = Some((status, code.to_owned()));
    }
    /// The customer accepts request `id`: it becomes `Accepted` and a system user exists.
    pub fn accept(&self, id: &str) {
        self.answer(id, "Accepted");
    }
    pub fn reject(&self, id: &str) {
        self.answer(id, "Rejected");
    }
    fn answer(&self, id: &str, status: &str) {
        let mut register = self.lock();
        let request = register
            .requests
            .iter_mut()
            .find(|r| r["id"] == id)
            .expect("a request with this id");
        request["status"] = json!(status);
        let request = request.clone();
        if status == "Accepted" {
            let user = user(
                request["systemId"].as_str().unwrap(),
                request["partyOrgNo"].as_str().unwrap(),
                request["externalRef"].as_str().unwrap(),
            );
            let rights = request["rights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["resource"][0]["value"].as_str().unwrap().to_owned())
                .collect();
            register.held.insert(
                user["id"].as_str().unwrap().to_owned(),
                (rights, Vec::new()),
            );
            register.users.push(user);
        }
    }
}

fn right(resource: &str) -> Value {
    json!({"resource": [{"id": "urn:altinn:resource", "value": resource}]})
}

fn user(system: &str, org: &str, external_ref: &str) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "integrationTitle": system,
        "systemId": system,
        "productName": system,
        "reporteeOrgNo": org,
        "partyId": 50_000_000,
        "created": "2026-11-28T12:00:00Z",
        "isDeleted": false,
        "externalRef": external_ref,
        "accessPackages": [],
        "userType": "standard",
    })
}

/// A refusal: a status, and Altinn's problem body when it sends one.
struct Refused(StatusCode, Option<Value>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self.1 {
            None => self.0.into_response(),
            Some(body) => (
                self.0,
                [(header::CONTENT_TYPE, "application/problem+json")],
                body.to_string(),
            )
                .into_response(),
        }
    }
}

fn bare(status: StatusCode) -> Refused {
    Refused(status, None)
}

fn problem(status: u16, code: &str, detail: &str) -> Refused {
    let body = json!({"type": "https://tools.ietf.org/html/rfc9110", "title": detail, "status": status, "detail": detail, "code": code});
    Refused(StatusCode::from_u16(status).unwrap(), Some(body))
}

impl FakeState {
    /// Record the call; check the token and its scope; a scripted refusal. `Err` is the answer.
    fn enter(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        scope: &str,
    ) -> Result<(), Refused> {
        let mut register = self.register.lock().unwrap();
        register.calls.push(format!("{method} {}", uri.path()));
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            register
                .violations
                .push(format!("{method} {uri}: no Bearer token"));
            return Err(bare(StatusCode::UNAUTHORIZED));
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.mp_issuer]);
        validation.validate_aud = false;
        let claims = match jsonwebtoken::decode::<Value>(token, &self.key, &validation) {
            Ok(t) => t.claims,
            Err(e) => {
                register
                    .violations
                    .push(format!("{method} {uri}: token does not verify: {e}"));
                return Err(bare(StatusCode::UNAUTHORIZED));
            }
        };
        if claims.get("authorization_details").is_some() {
            register.violations.push(format!(
                "{method} {uri}: a system-user token as admin token"
            ));
        }
        let scopes = claims["scope"].as_str().unwrap_or_default();
        if !scopes.split(' ').any(|s| s == scope) {
            // Altinn's answer to a token without the scope: 403, no code.
            return Err(bare(StatusCode::FORBIDDEN));
        }
        if let Some((status, code)) = register.refuse_next.take() {
            return Err(problem(status, &code, "scripted refusal"));
        }
        Ok(())
    }

    /// A JSON body with exactly the allowed fields (and the required ones).
    fn body(
        &self,
        uri: &Uri,
        bytes: &[u8],
        allowed: &[&str],
        required: &[&str],
    ) -> Result<Value, Refused> {
        let mut register = self.register.lock().unwrap();
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(bytes) else {
            register
                .violations
                .push(format!("{uri}: the body is not a JSON object"));
            return Err(bare(StatusCode::BAD_REQUEST));
        };
        let unknown: Vec<_> = body
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        let missing: Vec<_> = required
            .iter()
            .filter(|r| !body.contains_key(**r))
            .collect();
        if !unknown.is_empty() || !missing.is_empty() {
            register.violations.push(format!(
                "{uri}: unknown fields {unknown:?}, missing {missing:?}"
            ));
            return Err(bare(StatusCode::BAD_REQUEST));
        }
        Ok(Value::Object(body))
    }
}

type Answer = Result<Response, Refused>;

async fn create_system(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REGISTER)?;
    let body = s.body(&uri, &body, &SYSTEM_FIELDS, &SYSTEM_FIELDS)?;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let mut register = s.register.lock().unwrap();
    if register.systems.contains_key(&id) || register.deleted.contains(&id) {
        return Err(problem(400, "VLD-00002", "The system id already exists"));
    }
    for language in ["nb", "nn", "en"] {
        if body["name"][language].as_str().is_none()
            || body["description"][language].as_str().is_none()
        {
            return Err(bare(StatusCode::INTERNAL_SERVER_ERROR));
        }
    }
    register.systems.insert(id, body);
    // A bare JSON string: the system's internal id.
    Ok(axum::Json(uuid::Uuid::new_v4().to_string()).into_response())
}

async fn get_system(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REGISTER)?;
    let register = s.register.lock().unwrap();
    let mut system = register
        .systems
        .get(&id)
        .cloned()
        .ok_or_else(|| bare(StatusCode::NOT_FOUND))?;
    system["isDeleted"] = json!(false);
    system["systemInternalId"] = json!("4f1c7a3e-0000-4000-8000-000000000000");
    Ok(axum::Json(system).into_response())
}

async fn update_system(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REGISTER)?;
    let body = s.body(&uri, &body, &SYSTEM_FIELDS, &SYSTEM_FIELDS)?;
    if body["id"] != id {
        return Err(problem(
            400,
            "VLD-00012",
            "id in body differs from the path",
        ));
    }
    let mut register = s.register.lock().unwrap();
    if !register.systems.contains_key(&id) {
        return Err(bare(StatusCode::NOT_FOUND));
    }
    register.systems.insert(id, body);
    Ok(axum::Json(json!({"succeeded": true})).into_response())
}

async fn create_request(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    new_request(&s, &method, &uri, &headers, &body, false)
}

async fn create_agent_request(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    new_request(&s, &method, &uri, &headers, &body, true)
}

fn new_request(
    s: &FakeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    agent: bool,
) -> Answer {
    s.enter(method, uri, headers, SCOPE_REQUEST_WRITE)?;
    let body = s.body(uri, body, &REQUEST_FIELDS, &["systemId", "partyOrgNo"])?;
    if agent && body.get("rights").is_some() {
        s.register
            .lock()
            .unwrap()
            .violations
            .push("rights in an agent request".into());
        return Err(bare(StatusCode::BAD_REQUEST));
    }
    let mut register = s.register.lock().unwrap();
    let system_id = body["systemId"].as_str().unwrap_or_default().to_owned();
    let org = body["partyOrgNo"].as_str().unwrap_or_default().to_owned();
    let external_ref = body["externalRef"].as_str().unwrap_or(&org).to_owned();
    if !register.systems.contains_key(&system_id) {
        return Err(problem(404, "AUTH-00011", "The system is not found"));
    }
    let same = |v: &Value| {
        v["systemId"] == system_id && v["partyOrgNo"] == org && v["externalRef"] == external_ref
    };
    if register.users.iter().any(|u| {
        u["systemId"] == system_id && u["reporteeOrgNo"] == org && u["externalRef"] == external_ref
    }) {
        return Err(problem(
            400,
            "AUTH-00004",
            "The party already has a system user for this system",
        ));
    }
    if let Some(existing) = register.requests.iter().find(|r| same(r)) {
        return match existing["status"].as_str() {
            Some("New") => Ok((StatusCode::OK, axum::Json(existing.clone())).into_response()),
            Some("Rejected") => Err(problem(400, "AUTH-00009", "The request was rejected")),
            _ => Err(problem(
                400,
                "AUTH-00006",
                "The request is already accepted",
            )),
        };
    }
    let id = uuid::Uuid::new_v4().to_string();
    let page = if agent { "agentrequest" } else { "request" };
    let request = json!({
        "id": id,
        "externalRef": external_ref,
        "systemId": system_id,
        "partyOrgNo": org,
        "rights": body.get("rights").cloned().unwrap_or(json!([])),
        "accessPackages": body.get("accessPackages").cloned().unwrap_or(json!([])),
        "status": "New",
        "redirectUrl": body.get("redirectUrl").cloned(),
        "confirmUrl": format!("https://am.ui.tt02.altinn.no/accessmanagement/ui/systemuser/{page}?id={id}"),
        "escalated": false,
        "created": "2026-11-28T12:00:00Z",
    });
    register.requests.push(request.clone());
    Ok((StatusCode::CREATED, axum::Json(request)).into_response())
}

async fn get_request(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_READ)?;
    let register = s.register.lock().unwrap();
    let found = register.requests.iter().find(|r| r["id"] == id).cloned();
    found
        .map(|r| axum::Json(r).into_response())
        .ok_or_else(|| bare(StatusCode::NOT_FOUND))
}

async fn get_by_external_ref(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((system, org, external_ref)): Path<(String, String, String)>,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_READ)?;
    let register = s.register.lock().unwrap();
    let found = register
        .requests
        .iter()
        .find(|r| {
            r["systemId"] == system && r["partyOrgNo"] == org && r["externalRef"] == external_ref
        })
        .cloned();
    // Altinn answers 400 without a body when there is none.
    found
        .map(|r| axum::Json(r).into_response())
        .ok_or_else(|| bare(StatusCode::BAD_REQUEST))
}

#[derive(serde::Deserialize)]
struct PageQuery {
    token: Option<usize>,
}

async fn list_users(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(system): Path<String>,
    Query(page): Query<PageQuery>,
) -> Answer {
    // Listing system users needs systemregister.write, not request.read.
    s.enter(&method, &uri, &headers, SCOPE_REGISTER)?;
    let register = s.register.lock().unwrap();
    let users: Vec<&Value> = register
        .users
        .iter()
        .filter(|u| u["systemId"] == system)
        .collect();
    Ok(paged(&users, &page, register.page_size, &s.base, &uri))
}

/// One page of `all` from `?token=`, with `links.next` to the rest (Altinn's `Paginated`).
fn paged(all: &[&Value], page: &PageQuery, size: usize, base: &str, uri: &Uri) -> Response {
    let start = page.token.unwrap_or(0).min(all.len());
    let end = (start + size).min(all.len());
    // Nested under the platform base, the path comes without it.
    let path = uri.path().trim_start_matches('/');
    let next = (end < all.len()).then(|| format!("{base}{path}?token={end}"));
    axum::Json(json!({"links": {"next": next}, "data": all[start..end]})).into_response()
}

const CHANGE_FIELDS: [&str; 5] = [
    "requiredRights",
    "unwantedRights",
    "requiredAccessPackages",
    "unwantedAccessPackages",
    "redirectUrl",
];

/// `GET systemuser/vendor/byquery?system-id=&orgno=&external-ref=`.
async fn user_by_query(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Answer {
    // Altinn checks systemuser.request.write here, not read.
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_WRITE)?;
    let mut register = s.register.lock().unwrap();
    let keys: Vec<&str> = query.keys().map(String::as_str).collect();
    if keys != ["external-ref", "orgno", "system-id"] {
        register
            .violations
            .push(format!("byquery with the query {keys:?}"));
        return Err(bare(StatusCode::BAD_REQUEST));
    }
    let found = register.users.iter().find(|u| {
        u["systemId"] == query["system-id"].as_str()
            && u["reporteeOrgNo"] == query["orgno"].as_str()
            && u["externalRef"] == query["external-ref"].as_str()
    });
    found
        .map(|u| axum::Json(u.clone()).into_response())
        .ok_or_else(|| bare(StatusCode::NOT_FOUND))
}

/// `POST systemuser/changerequest/vendor?correlation-id=&system-user-id=`.
async fn create_change(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_WRITE)?;
    let body = s.body(&uri, &body, &CHANGE_FIELDS, &CHANGE_FIELDS)?;
    let mut register = s.register.lock().unwrap();
    register
        .change_queries
        .push(uri.query().unwrap_or_default().to_owned());
    let keys: Vec<&str> = query.keys().map(String::as_str).collect();
    let parse = |k: &str| query.get(k).and_then(|v| uuid::Uuid::parse_str(v).ok());
    let (Some(correlation), Some(user_id), ["correlation-id", "system-user-id"]) = (
        parse("correlation-id"),
        parse("system-user-id"),
        keys.as_slice(),
    ) else {
        register
            .violations
            .push(format!("a change request with the query {keys:?}"));
        return Err(bare(StatusCode::BAD_REQUEST));
    };
    let Some(user) = register
        .users
        .iter()
        .find(|u| u["id"] == user_id.to_string())
        .cloned()
    else {
        return Err(problem(404, "AUTH-00015", "The SystemUser was not found."));
    };
    if let Some(existing) = register
        .changes
        .iter()
        .find(|c| c["id"] == correlation.to_string())
    {
        return Ok((StatusCode::OK, axum::Json(existing.clone())).into_response());
    }
    let lists = &CHANGE_FIELDS[..4];
    let mut answer = json!({
        "id": correlation.to_string(), "externalRef": user["externalRef"],
        "systemId": user["systemId"], "systemUserId": user["id"], "partyOrgNo": user["reporteeOrgNo"],
        "status": "New", "redirectUrl": body["redirectUrl"], "created": "2026-12-01T12:00:00Z",
    });
    for list in lists {
        answer[*list] = body[*list].clone();
    }
    if lists
        .iter()
        .all(|l| body[*l].as_array().is_some_and(Vec::is_empty))
    {
        answer["status"] = json!("NoChangeNeeded");
        answer["confirmUrl"] = json!("");
        return Ok((StatusCode::OK, axum::Json(answer)).into_response());
    }
    if user["userType"] == "agent" {
        // Altinn cannot change an agent system user, and says it is not found.
        return Err(problem(404, "AUTH-00015", "The SystemUser was not found."));
    }
    let system = register
        .systems
        .get(user["systemId"].as_str().unwrap_or_default());
    let known = system.map(|s| s["rights"].clone()).unwrap_or(json!([]));
    let unknown = body["requiredRights"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| !known.as_array().is_some_and(|k| k.contains(r)));
    if unknown {
        return Err(problem(400, "AUTH-00001", "A right is not in the system"));
    }
    if register
        .changes
        .iter()
        .any(|c| c["systemUserId"] == user["id"] && c["status"] == "New")
    {
        register
            .violations
            .push("a second pending change request for one system user".into());
    }
    answer["confirmUrl"] = json!(format!(
        "https://am.ui.tt02.altinn.no/accessmanagement/ui/systemuser/changerequest?id={correlation}&DONTCHOOSEREPORTEE=true"
    ));
    register.changes.push(answer.clone());
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// `GET systemuser/changerequest/vendor/{id}`.
async fn get_change(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_READ)?;
    let register = s.register.lock().unwrap();
    let found = register.changes.iter().find(|c| c["id"] == id).cloned();
    found.map(|c| axum::Json(c).into_response()).ok_or_else(|| {
        problem(
            404,
            "AUTH-00010",
            "The Id does not refer to a Request in our system.",
        )
    })
}

/// `GET systemuser/changerequest/vendor/bysystem/{system}`: paged as the system users are.
async fn list_changes(
    State(s): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(system): Path<String>,
    Query(page): Query<PageQuery>,
) -> Answer {
    s.enter(&method, &uri, &headers, SCOPE_REQUEST_READ)?;
    let register = s.register.lock().unwrap();
    let changes: Vec<&Value> = register
        .changes
        .iter()
        .filter(|c| c["systemId"] == system)
        .collect();
    Ok(paged(&changes, &page, register.page_size, &s.base, &uri))
}
