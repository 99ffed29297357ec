//! The simulated Altinn consent requests (PROTOCOL.md, "Altinn consent"), the page where a
//! person accepts or rejects, and the look-up the simulated Maskinporten does before it issues a
//! consent token.
//!
//! - `POST /accessmanagement/api/v1/enterprise/consentrequests`: scope
//!   `altinn:consentrequests.write`, `to` the token's organisation (403 otherwise), `validTo` in
//!   the future, at least one right, an https `redirectUrl`; 201 new, 200 for an existing `id`.
//! - `GET …/consentrequests/{id}`: scope `altinn:consentrequests.read`, the asker's own only.
//! - `GET/POST /accessmanagement/ui/consent/request?id=`: a plain HTML form, Accept and Reject.
//!
//! A consent token is issued only for an `Accepted` consent whose `validTo` has not passed, whose
//! `from` is the grant's and whose `to` is the client's organisation. A fødselsnummer is shown
//! on the page masked and never logged. At most [`super::register::MAX_RECORDS`] requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::World;
use super::register::{MAX_RECORDS, Refusal, escape, json_body, page, problem, vendor};

const SCOPE_WRITE: &str = "altinn:consentrequests.write";
const SCOPE_READ: &str = "altinn:consentrequests.read";
const CONSENT_TYPE: &str = "urn:altinn:consent";
const PERSON: &str = "urn:altinn:person:identifier-no:";
const ORG: &str = "urn:altinn:organization:identifier-no:";

/// Every consent request, by id.
#[derive(Default)]
pub struct Consents(HashMap<String, Consent>);

#[derive(Clone)]
struct Consent {
    id: String,
    from: String,
    to: String,
    valid_to: String,
    until: i64,
    status: &'static str,
    rights: Value,
    redirect_url: String,
    consented: Option<String>,
}

impl Consent {
    fn answer(&self, world: &World) -> Value {
        json!({
            "id": self.id,
            "from": self.from,
            "to": self.to,
            "validTo": self.valid_to,
            "status": self.status,
            "consentRights": self.rights,
            "redirectUrl": self.redirect_url,
            "viewUri": format!("{}accessmanagement/ui/consent/request?id={}", world.base_url, self.id),
        })
    }

    /// `from` with a person's number masked, for the page.
    fn masked_from(&self) -> String {
        match self.from.strip_prefix(PERSON) {
            Some(n) if n.len() == 11 => format!("{PERSON}{}*****", &n[..6]),
            _ => self.from.clone(),
        }
    }
}

fn lock(world: &World) -> std::sync::MutexGuard<'_, Consents> {
    world.consents.lock().unwrap_or_else(|e| e.into_inner())
}

fn bad(detail: &str) -> Refusal {
    problem(StatusCode::BAD_REQUEST, None, detail)
}

/// A `from` Altinn accepts: a person's or an organisation's URN with a valid number.
fn valid_party(urn: &str) -> bool {
    if let Some(n) = urn.strip_prefix(PERSON) {
        return n.parse::<crate::policy::fnr::Fnr>().is_ok();
    }
    urn.strip_prefix(ORG)
        .is_some_and(|n| n.parse::<crate::policy::org::OrgNumber>().is_ok())
}

/// `POST …/enterprise/consentrequests`.
pub(super) async fn create(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let org = vendor(&world, &headers, SCOPE_WRITE)?;
    let body = json_body(&body)?;
    let text = |f: &str| body.get(f).and_then(Value::as_str).unwrap_or_default();
    let id = text("id");
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad("id must be a UUID"));
    }
    if !valid_party(text("from")) {
        return Err(bad(
            "from must be a person's or an organisation's URN with a valid number",
        ));
    }
    if text("to") != format!("{ORG}{org}") {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            "to must be the organisation of the token",
        ));
    }
    let until = OffsetDateTime::parse(text("validTo"), &Rfc3339)
        .map_err(|_| bad("validTo must be an RFC 3339 time"))?
        .unix_timestamp();
    if until <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(bad("validTo must be in the future"));
    }
    let rights = body.get("consentRights").cloned().unwrap_or(Value::Null);
    if rights.as_array().is_none_or(Vec::is_empty) {
        return Err(bad("consentRights must list at least one right"));
    }
    let redirect_url = text("redirectUrl");
    if !redirect_url.starts_with("https://") {
        return Err(bad("redirectUrl must be an https URL"));
    }
    let mut consents = lock(&world);
    if let Some(existing) = consents.0.get(id) {
        if existing.to != text("to") {
            return Err(bad("the id is taken"));
        }
        return Ok(Json(existing.answer(&world)).into_response());
    }
    if consents.0.len() >= MAX_RECORDS {
        return Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the simulator holds no more consent requests",
        ));
    }
    let consent = Consent {
        id: id.to_owned(),
        from: text("from").to_owned(),
        to: text("to").to_owned(),
        valid_to: text("validTo").to_owned(),
        until,
        status: "Created",
        rights,
        redirect_url: redirect_url.to_owned(),
        consented: None,
    };
    let answer = consent.answer(&world);
    consents.0.insert(id.to_owned(), consent);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET …/enterprise/consentrequests/{id}`.
pub(super) async fn read(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let org = vendor(&world, &headers, SCOPE_READ)?;
    let mut consents = lock(&world);
    let consent = consents
        .0
        .get_mut(&id)
        .filter(|c| c.to == format!("{ORG}{org}"))
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, None, "no such consent request"))?;
    if consent.status == "Accepted" && consent.until <= OffsetDateTime::now_utc().unix_timestamp() {
        consent.status = "Expired";
    }
    Ok(Json(consent.answer(&world)).into_response())
}

/// `authorization_details` of a consent grant: `Some((id, from))` when its type is
/// `urn:altinn:consent`, `None` for another type; `Err` for a consent detail of the wrong shape.
pub(super) fn grant_detail(details: &Value) -> Result<Option<(String, String)>, String> {
    let Some([Value::Object(detail)]) = details.as_array().map(Vec::as_slice) else {
        return Ok(None);
    };
    if detail.get("type").and_then(Value::as_str) != Some(CONSENT_TYPE) {
        return Ok(None);
    }
    let mut keys: Vec<&str> = detail.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["from", "id", "type"] {
        return Err(format!(
            "a consent detail has type, id and from only, not {keys:?}"
        ));
    }
    let text = |f: &str| {
        detail
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Some((text("id"), text("from"))))
}

/// What the token's `authorization_details` carry, for an accepted, unexpired consent from
/// `from` to `org`; why not otherwise.
pub(super) fn token_detail(
    world: &World,
    id: &str,
    from: &str,
    org: &str,
) -> Result<Value, String> {
    let consents = lock(world);
    let consent = consents
        .0
        .get(id)
        .ok_or_else(|| format!("there is no consent {id}"))?;
    if consent.from != from || consent.to != format!("{ORG}{org}") {
        return Err(format!(
            "consent {id} is not from this party to this client's organisation"
        ));
    }
    if consent.status != "Accepted" {
        return Err(format!("consent {id} is {}, not Accepted", consent.status));
    }
    if consent.until <= OffsetDateTime::now_utc().unix_timestamp() {
        return Err(format!("consent {id} has expired"));
    }
    Ok(json!({
        "type": CONSENT_TYPE,
        "id": id,
        "from": from,
        "consented": consent.consented,
        "validTo": consent.valid_to,
        "consentRights": consent.rights,
    }))
}

/// `?id=` of the page.
#[derive(serde::Deserialize)]
pub(super) struct PageQuery {
    id: Option<String>,
}

/// `GET /accessmanagement/ui/consent/request?id=`: the request, and Accept and Reject.
pub(super) async fn consent_page(
    State(world): State<Arc<World>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let consents = lock(&world);
    let Some(consent) = query.id.and_then(|id| consents.0.get(&id).cloned()) else {
        return no_such_consent();
    };
    let rights: Vec<String> = consent
        .rights
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["resource"][0]["value"].as_str())
        .map(escape)
        .collect();
    let body = if consent.status == "Created" {
        format!(
            "<p>{} asks {} for consent to {} until {}.</p>\n<form method=\"post\">\n\
             <input type=\"hidden\" name=\"id\" value=\"{}\">\n\
             <button type=\"submit\" name=\"action\" value=\"accept\">Accept</button>\n\
             <button type=\"submit\" name=\"action\" value=\"reject\">Reject</button>\n</form>",
            escape(&consent.to),
            escape(&consent.masked_from()),
            rights.join(", "),
            escape(&consent.valid_to),
            escape(&consent.id)
        )
    } else {
        format!("<p>This consent request is {}.</p>", consent.status)
    };
    page("Consent request", &body).into_response()
}

/// `POST /accessmanagement/ui/consent/request`: the answer (`id`, `action`).
pub(super) async fn consent_answer(State(world): State<Arc<World>>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (Some(id), Some(action)) = (form.get("id"), form.get("action")) else {
        let text = "<p>The form needs id and action.</p>";
        return (StatusCode::BAD_REQUEST, page("Bad answer", text)).into_response();
    };
    let mut consents = lock(&world);
    let Some(consent) = consents.0.get_mut(id) else {
        return no_such_consent();
    };
    if consent.status != "Created" {
        let text = format!("<p>This consent request is already {}.</p>", consent.status);
        return (StatusCode::CONFLICT, page("Already answered", &text)).into_response();
    }
    let (status, result) = match action.as_str() {
        "accept" => ("Accepted", "OK"),
        "reject" => ("Rejected", "Failed"),
        _ => {
            let text = "<p>action is accept or reject.</p>";
            return (StatusCode::BAD_REQUEST, page("Bad answer", text)).into_response();
        }
    };
    consent.status = status;
    if status == "Accepted" {
        consent.consented = OffsetDateTime::now_utc().format(&Rfc3339).ok();
    }
    let back = format!(
        "<p>The consent request is {status}.</p>\n<p><a href=\"{}\">Back</a></p>",
        escape(&format!("{}?Status={result}", consent.redirect_url))
    );
    page(status, &back).into_response()
}

fn no_such_consent() -> Response {
    let text = "<p>There is no consent request with this id.</p>";
    (StatusCode::NOT_FOUND, page("No such consent request", text)).into_response()
}
