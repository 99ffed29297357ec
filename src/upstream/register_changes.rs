//! Altinn's system-user change requests (vendor side), under
//! `{altinn_platform}authentication/api/v1/systemuser/` (PROTOCOL.md, "Altinn system-user change
//! requests"): the system user by its organisation and external reference, a change request made,
//! read, and listed for a system. A change request asks a customer to approve rights (and access
//! packages) added to, or removed from, a system user it already has.
//!
//! The same rules as `register.rs`: the token goes only to Altinn, as Bearer, under the platform
//! base; answers are read up to [`super::register::MAX_ANSWER_BYTES`]; the list of change
//! requests is read up to [`MAX_CHANGE_REQUESTS`] entries.
//!
//! Altinn makes a change request idempotent only by its correlation id (a second POST with the
//! same id answers the first; a second with a new id is a second request). The broker never
//! repeats a correlation id, so finding a pending change first is the caller's job
//! (`onboarding/change.rs`, over [`RegisterApi::change_requests`]).

use reqwest::Method;
use serde_json::Value;

use super::register::{
    RegisterApi, RegisterError, SCOPE_REQUEST_READ, SCOPE_REQUEST_WRITE, field_of, invalid, kind,
    segment,
};
use crate::key::secret::Secret;

/// The most change requests of one system read when looking for pending and accepted ones.
pub const MAX_CHANGE_REQUESTS: usize = 10_000;

impl RegisterApi {
    /// `GET systemuser/vendor/byquery?system-id=&orgno=&external-ref=` (scope
    /// `systemuser.request.write`): the system user, `None` when Altinn has none.
    pub async fn system_user_by_query(
        &self,
        token: &Secret,
        system: &str,
        org: &str,
        external_ref: &str,
    ) -> Result<Option<Value>, RegisterError> {
        let path = "systemuser/vendor/byquery";
        let mut url = self.url(path)?;
        url.query_pairs_mut()
            .append_pair("system-id", system)
            .append_pair("orgno", org)
            .append_pair("external-ref", external_ref);
        match self
            .fetch(Method::GET, url, path, SCOPE_REQUEST_WRITE, token, None)
            .await
        {
            Ok((_, v)) if v.is_null() => Ok(None),
            Ok((_, v)) => with_id(path, v).map(Some),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST systemuser/changerequest/vendor?correlation-id=&system-user-id=`: `true` with a new
    /// change request (201), `false` with the one this correlation id already made, or
    /// `NoChangeNeeded` (200).
    pub async fn create_change_request(
        &self,
        token: &Secret,
        correlation_id: &uuid::Uuid,
        system_user_id: &str,
        body: &Value,
    ) -> Result<(bool, Value), RegisterError> {
        let path = "systemuser/changerequest/vendor";
        let mut url = self.url(path)?;
        url.query_pairs_mut()
            .append_pair("correlation-id", &correlation_id.to_string())
            .append_pair("system-user-id", system_user_id);
        let (status, value) = self
            .fetch(
                Method::POST,
                url,
                path,
                SCOPE_REQUEST_WRITE,
                token,
                Some(body),
            )
            .await?;
        Ok((status == 201, with_id(path, value)?))
    }

    /// `GET systemuser/changerequest/vendor/{id}`: `None` when Altinn has none (404, AUTH-00010).
    pub async fn change_request(
        &self,
        token: &Secret,
        id: &str,
    ) -> Result<Option<Value>, RegisterError> {
        let path = format!("systemuser/changerequest/vendor/{}", segment(id));
        match self
            .send(Method::GET, &path, SCOPE_REQUEST_READ, token, None)
            .await
        {
            Ok(v) => with_id(&path, v).map(Some),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET systemuser/changerequest/vendor/bysystem/{system}` and every `links.next` after it:
    /// the change requests whose status is in `statuses`, among the first
    /// [`MAX_CHANGE_REQUESTS`]; `true` when more were left unread.
    pub async fn change_requests(
        &self,
        token: &Secret,
        system: &str,
        statuses: &[&str],
    ) -> Result<(Vec<Value>, bool), RegisterError> {
        let first = format!(
            "systemuser/changerequest/vendor/bysystem/{}",
            segment(system)
        );
        self.pages(
            &first,
            SCOPE_REQUEST_READ,
            token,
            MAX_CHANGE_REQUESTS,
            |v| {
                field_of(v, "status")
                    .as_str()
                    .is_some_and(|s| statuses.contains(&s))
            },
        )
        .await
    }
}

/// An answer that is an object with a string `id`.
fn with_id(call: &str, value: Value) -> Result<Value, RegisterError> {
    if field_of(&value, "id").as_str().is_some() {
        Ok(value)
    } else {
        Err(invalid(
            call,
            format!("expected an object with an id, got {}", kind(&value)),
        ))
    }
}
