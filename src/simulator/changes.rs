//! The simulated Altinn system-user change requests (vendor side), with Altinn's paths, shapes,
//! statuses and codes (PROTOCOL.md, "Altinn system-user change requests"), and the page where a
//! customer approves one. System users hold the rights and access packages they were approved
//! with; an approved change adds and removes its lists.
//!
//! - `GET .../systemuser/vendor/byquery?system-id=&orgno=&external-ref=` (request.write).
//! - `POST .../systemuser/changerequest/vendor?correlation-id=&system-user-id=`: 201 new, 200 for
//!   a correlation id already used, 200 `NoChangeNeeded` for four empty lists (not stored);
//!   AUTH-00015 for an unknown or agent system user, AUTH-00001 for a right not in the system.
//!   Like Altinn, it deduplicates by correlation id only.
//! - `GET .../changerequest/vendor/{id}` (AUTH-00010), `.../bysystem/{system}` (50 per page).
//! - `GET/POST /accessmanagement/ui/systemuser/changerequest?id=`: Approve and Reject.
//!
//! At most [`super::register::MAX_RECORDS`] change requests (503 beyond).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::World;
use super::register::{
    Change, ConfirmQuery, PAGE, PageQuery, Refusal, Register, SCOPE_REQUEST_READ,
    SCOPE_REQUEST_WRITE, answered_page, array, bad_auth, escape, form_answer, json_body, lock, now,
    own_system, page, problem, still_new, vendor,
};

const LISTS: [&str; 4] = [
    "requiredRights",
    "unwantedRights",
    "requiredAccessPackages",
    "unwantedAccessPackages",
];

impl Change {
    fn confirm_url(&self, world: &World) -> String {
        format!(
            "{}accessmanagement/ui/systemuser/changerequest?id={}&DONTCHOOSEREPORTEE=true",
            world.base_url, self.id
        )
    }

    fn answer(&self, world: &World) -> Value {
        let mut answer = json!({
            "id": self.id,
            "externalRef": self.external_ref,
            "systemId": self.system_id,
            "systemUserId": self.user_id,
            "partyOrgNo": self.org,
            "status": self.status,
            "redirectUrl": self.redirect_url,
            "confirmUrl": self.confirm_url(world),
            "created": self.created,
        });
        for (name, list) in &self.lists {
            answer[*name] = json!(list);
        }
        answer
    }
}

/// `?system-id=&orgno=&external-ref=`.
#[derive(serde::Deserialize)]
pub(super) struct UserQuery {
    #[serde(rename = "system-id")]
    system_id: String,
    orgno: String,
    #[serde(rename = "external-ref")]
    external_ref: Option<String>,
}

/// `GET systemuser/vendor/byquery`: the system user, 404 when there is none.
pub(super) async fn system_user_by_query(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Query(query): Query<UserQuery>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REQUEST_WRITE)?;
    let register = lock(&world);
    let external_ref = query.external_ref.as_deref().unwrap_or(&query.orgno);
    let user = register
        .users
        .iter()
        .find(|u| {
            u.system_id == query.system_id && u.org == query.orgno && u.external_ref == external_ref
        })
        .filter(|u| {
            register
                .systems
                .get(&u.system_id)
                .is_some_and(|s| s.vendor == caller)
        })
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, None, "no such system user"))?;
    Ok(Json(json!({
        "id": user.id,
        "integrationTitle": user.system_id,
        "systemId": user.system_id,
        "productName": user.system_id,
        "reporteeOrgNo": user.org,
        "isDeleted": false,
        "supplierOrgno": caller,
        "externalRef": user.external_ref,
        "userType": if user.agent { "agent" } else { "standard" },
    }))
    .into_response())
}

/// `?correlation-id=&system-user-id=`.
#[derive(serde::Deserialize)]
pub(super) struct ChangeQuery {
    #[serde(rename = "correlation-id")]
    correlation_id: Option<String>,
    #[serde(rename = "system-user-id")]
    system_user_id: Option<String>,
}

/// `POST systemuser/changerequest/vendor`.
pub(super) async fn create_change(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Query(query): Query<ChangeQuery>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REQUEST_WRITE)?;
    let uuid = |v: &Option<String>| v.as_deref().and_then(|v| uuid::Uuid::parse_str(v).ok());
    let Some(correlation_id) = uuid(&query.correlation_id).filter(|u| !u.is_nil()) else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            None,
            "Missing or invalid QueryParameter: correlation-id",
        ));
    };
    let body = json_body(&body)?;
    let mut register = lock(&world);
    let not_found = || {
        problem(
            StatusCode::NOT_FOUND,
            Some("AUTH-00015"),
            "The SystemUser was not found.",
        )
    };
    let user = uuid(&query.system_user_id)
        .and_then(|id| register.users.iter().find(|u| u.id == id.to_string()))
        .cloned()
        .ok_or_else(not_found)?;
    let system = register
        .systems
        .get(&user.system_id)
        .filter(|s| s.vendor == caller && !s.deleted)
        .ok_or(Refusal::Bare(StatusCode::UNAUTHORIZED))?;
    if correlation_id.to_string() == user.id {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            None,
            "The correlation-id should not be the same as the system-user-id",
        ));
    }
    let id = correlation_id.to_string();
    let lists: BTreeMap<&'static str, Vec<Value>> = LISTS
        .iter()
        .map(|name| (*name, array(&body[*name]).cloned().collect()))
        .collect();
    let redirect_url = body["redirectUrl"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let mut change = Change {
        id: id.clone(),
        system_id: user.system_id.clone(),
        user_id: user.id.clone(),
        org: user.org.clone(),
        external_ref: user.external_ref.clone(),
        lists,
        status: "New",
        redirect_url,
        created: now(),
    };
    if change.lists.values().all(Vec::is_empty) {
        change.status = "NoChangeNeeded";
        let mut answer = change.answer(&world);
        answer["confirmUrl"] = json!("");
        return Ok(Json(answer).into_response());
    }
    if let Some(existing) = register.changes.get(&id) {
        return Ok(Json(existing.answer(&world)).into_response());
    }
    if user.agent {
        // Altinn cannot change an agent system user, and says it is not found.
        return Err(not_found());
    }
    let known = |field: &str| -> Vec<Value> { array(&system.body[field]).cloned().collect() };
    let (rights, packages) = (known("rights"), known("accessPackages"));
    if change.lists["requiredRights"]
        .iter()
        .any(|r| !rights.contains(r))
        || change.lists["requiredAccessPackages"]
            .iter()
            .any(|p| !packages.contains(p))
    {
        return Err(bad_auth(
            "AUTH-00001",
            "a right or access package is not in the system, or not delegable",
        ));
    }
    if let Some(url) = &change.redirect_url
        && !array(&system.body["allowedRedirectUrls"]).any(|a| a.as_str() == Some(url))
    {
        return Err(bad_auth(
            "AUTH-00021",
            "the redirect URL is not one of the system's allowedRedirectUrls",
        ));
    }
    Register::room(register.changes.len(), "change requests")?;
    let answer = change.answer(&world);
    let location = format!(
        "{}authentication/api/v1/systemuser/changerequest/{id}",
        world.base_url
    );
    register.changes.insert(id, change);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(answer),
    )
        .into_response())
}

/// `GET systemuser/changerequest/vendor/{id}`.
pub(super) async fn get_change(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REQUEST_READ)?;
    let register = lock(&world);
    register
        .changes
        .get(&id)
        .filter(|c| {
            register
                .systems
                .get(&c.system_id)
                .is_some_and(|s| s.vendor == caller)
        })
        .map(|c| Json(c.answer(&world)).into_response())
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                Some("AUTH-00010"),
                "The Id does not refer to a Request in our system.",
            )
        })
}

/// `GET systemuser/changerequest/vendor/bysystem/{system}`: 50 per page, `links.next`.
pub(super) async fn list_changes(
    State(world): State<Arc<World>>,
    headers: HeaderMap,
    Path(system_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Refusal> {
    let caller = vendor(&world, &headers, SCOPE_REQUEST_READ)?;
    let register = lock(&world);
    own_system(&register, &caller, &system_id)?;
    let changes: Vec<&Change> = register
        .changes
        .values()
        .filter(|c| c.system_id == system_id)
        .collect();
    let start = query.token.unwrap_or(0).min(changes.len());
    let end = start.saturating_add(PAGE).min(changes.len());
    let data: Vec<Value> = changes[start..end]
        .iter()
        .map(|c| c.answer(&world))
        .collect();
    let next = (end < changes.len()).then(|| {
        format!(
            "{}authentication/api/v1/systemuser/changerequest/vendor/bysystem/{system_id}?token={end}",
            world.base_url
        )
    });
    Ok(Json(json!({"links": {"next": next}, "data": data})).into_response())
}

/// The resource ids (or package URNs) of a list, for the page.
fn names(list: &[Value]) -> String {
    let names: Vec<&str> = list
        .iter()
        .filter_map(|v| {
            v["urn"]
                .as_str()
                .or_else(|| v["resource"][0]["value"].as_str())
        })
        .collect();
    escape(&names.join(", "))
}

/// `GET /accessmanagement/ui/systemuser/changerequest?id=`: the change, Approve and Reject.
pub(super) async fn confirm_page(
    State(world): State<Arc<World>>,
    Query(query): Query<ConfirmQuery>,
) -> Response {
    let register = lock(&world);
    let Some(change) = query.id.and_then(|id| register.changes.get(&id).cloned()) else {
        return no_such_change();
    };
    let body = if change.status == "New" {
        let mut asked = String::new();
        for (name, what) in [
            ("requiredRights", "add the rights"),
            ("unwantedRights", "remove the rights"),
            ("requiredAccessPackages", "add the access packages"),
            ("unwantedAccessPackages", "remove the access packages"),
        ] {
            if !change.lists[name].is_empty() {
                asked.push_str(&format!("<li>{what} {}</li>\n", names(&change.lists[name])));
            }
        }
        format!(
            "<p>The vendor asks to change the system user of organisation {} (external reference {}):</p>\n<ul>\n{asked}</ul>\n\
             <form method=\"post\">\n<input type=\"hidden\" name=\"id\" value=\"{}\">\n\
             <button type=\"submit\" name=\"action\" value=\"accept\">Accept</button>\n\
             <button type=\"submit\" name=\"action\" value=\"reject\">Reject</button>\n</form>",
            escape(&change.org),
            escape(&change.external_ref),
            escape(&change.id)
        )
    } else {
        format!("<p>This change request is {}.</p>", change.status)
    };
    page("System user change request", &body).into_response()
}

/// `POST /accessmanagement/ui/systemuser/changerequest`: the customer's answer (`id`, `action`);
/// an approval changes what the system user holds.
pub(super) async fn confirm_answer(State(world): State<Arc<World>>, body: Bytes) -> Response {
    let (id, accept) = match form_answer(&body) {
        Ok(answer) => answer,
        Err(bad) => return bad.into_response(),
    };
    let mut register = lock(&world);
    let Some(change) = register.changes.get_mut(&id) else {
        return no_such_change();
    };
    if let Err(answered) = still_new(change.status) {
        return answered.into_response();
    }
    change.status = if accept { "Accepted" } else { "Rejected" };
    let change = change.clone();
    if accept && let Some(user) = register.users.iter_mut().find(|u| u.id == change.user_id) {
        apply(
            &mut user.rights,
            &change.lists["requiredRights"],
            &change.lists["unwantedRights"],
        );
        apply(
            &mut user.packages,
            &change.lists["requiredAccessPackages"],
            &change.lists["unwantedAccessPackages"],
        );
    }
    answered_page(
        "change request",
        &change.org,
        change.status,
        change.redirect_url.as_deref(),
    )
}

/// `held` gains `required` (once each) and loses `unwanted`.
fn apply(held: &mut Vec<Value>, required: &[Value], unwanted: &[Value]) {
    for r in required {
        if !held.contains(r) {
            held.push(r.clone());
        }
    }
    held.retain(|h| !unwanted.contains(h));
}

fn no_such_change() -> Response {
    let text = "<p>There is no system-user change request with this id.</p>";
    (StatusCode::NOT_FOUND, page("No such change request", text)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approved_change_adds_once_and_removes() {
        let (a, b) = (json!({"urn": "a"}), json!({"urn": "b"}));
        let mut held = vec![a.clone()];
        apply(&mut held, &[a.clone(), b.clone()], &[]);
        assert_eq!(held, [a.clone(), b.clone()]);
        apply(&mut held, &[], &[a]);
        assert_eq!(held, [b]);
    }
}
