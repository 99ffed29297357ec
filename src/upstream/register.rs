//! Client for Altinn's system register and system-user request API, under
//! `{altinn_platform}authentication/api/v1/` (PROTOCOL.md, "Altinn system register and
//! system-user requests"): one method per call, each with the shapes Altinn sends and takes.
//!
//! Every call carries the token it is given as Bearer and nothing else; it never logs, keeps or
//! returns the token, and never sends it anywhere but under the platform base (a `links.next`
//! pointing elsewhere is refused). Answers are read up to [`MAX_ANSWER_BYTES`]; a list is read up
//! to [`MAX_SYSTEM_USERS`] entries.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::altinn_api::{AltinnApi, CallError};
use super::client::UpstreamError;
use super::register_codes as codes;
use crate::key::secret::Secret;

/// The largest answer read from Altinn; a page of 50 system users is a few tens of KiB.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// `system users` follows `links.next` at most until this many entries.
pub const MAX_SYSTEM_USERS: usize = 10_000;

/// Characters left as they are in a path segment (the rest is percent-encoded).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// The scope each kind of call needs, as Altinn checks it.
pub const SCOPE_REGISTER: &str = "altinn:authentication/systemregister.write";
pub const SCOPE_REQUEST_WRITE: &str = "altinn:authentication/systemuser.request.write";
pub const SCOPE_REQUEST_READ: &str = "altinn:authentication/systemuser.request.read";

/// Why a call to the register API gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegisterError {
    /// Altinn answered with a 4xx: it said no.
    #[error("Altinn refused {call} with HTTP {status}{}: {}", code_suffix(.code), .advice)]
    Refused {
        call: String,
        status: u16,
        code: Option<String>,
        /// What to do: the code's advice, or a sentence for the status.
        advice: String,
    },
    /// No answer, a 5xx, or a timeout.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// An answer of the wrong shape.
    #[error("Altinn sent an unusable answer to {call}: {reason}")]
    Invalid { call: String, reason: String },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

impl RegisterError {
    /// The Altinn code (`AUTH-…`, `VLD-…`) when Altinn sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RegisterError::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status Altinn refused with.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegisterError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The register API of one Altinn platform.
#[derive(Debug, Clone)]
pub struct RegisterApi {
    http: reqwest::Client,
    /// `{altinn_platform}authentication/api/v1/`.
    base: Url,
    timeout: Duration,
}

impl RegisterApi {
    pub fn new(http: reqwest::Client, platform: &Url, timeout: Duration) -> Self {
        let base = platform
            .join("authentication/api/v1/")
            .unwrap_or_else(|_| platform.clone());
        RegisterApi {
            http,
            base,
            timeout,
        }
    }

    /// `GET systemregister/vendor/{id}`: the registered system, `None` when Altinn has none.
    pub async fn system(&self, token: &Secret, id: &str) -> Result<Option<Value>, RegisterError> {
        let path = format!("systemregister/vendor/{}", segment(id));
        match self
            .send(Method::GET, &path, SCOPE_REGISTER, token, None)
            .await
        {
            Ok(v) if v.is_null() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST systemregister/vendor`: Altinn answers with the system's internal id as a bare
    /// JSON string.
    pub async fn create_system(&self, token: &Secret, body: &Value) -> Result<(), RegisterError> {
        let path = "systemregister/vendor";
        match self
            .send(Method::POST, path, SCOPE_REGISTER, token, Some(body))
            .await?
        {
            Value::String(_) => Ok(()),
            other => Err(invalid(
                path,
                format!(
                    "expected the new system's id as a JSON string, got {}",
                    kind(&other)
                ),
            )),
        }
    }

    /// `PUT systemregister/vendor/{id}`: replace the whole definition.
    pub async fn update_system(
        &self,
        token: &Secret,
        id: &str,
        body: &Value,
    ) -> Result<(), RegisterError> {
        let path = format!("systemregister/vendor/{}", segment(id));
        self.send(Method::PUT, &path, SCOPE_REGISTER, token, Some(body))
            .await
            .map(drop)
    }

    /// `POST systemuser/request/vendor[/agent]`: `true` with a new request (201), `false` with
    /// an existing pending one (200).
    pub async fn create_request(
        &self,
        token: &Secret,
        agent: bool,
        body: &Value,
    ) -> Result<(bool, Value), RegisterError> {
        let path = if agent {
            "systemuser/request/vendor/agent"
        } else {
            "systemuser/request/vendor"
        };
        let url = self.url(path)?;
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
        Ok((status == 201, request_object(path, value)?))
    }

    /// `GET systemuser/request/vendor/{id}`, then the agent variant: `None` when neither has it.
    pub async fn request(&self, token: &Secret, id: &str) -> Result<Option<Value>, RegisterError> {
        for kind in ["", "agent/"] {
            let path = format!("systemuser/request/vendor/{kind}{}", segment(id));
            match self
                .send(Method::GET, &path, SCOPE_REQUEST_READ, token, None)
                .await
            {
                Ok(v) => return request_object(&path, v).map(Some),
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// `GET systemuser/request/vendor/byexternalref/{system}/{org}/{ref}`: Altinn answers 400
    /// without a body (or 404) when there is none.
    pub async fn request_by_external_ref(
        &self,
        token: &Secret,
        system: &str,
        org: &str,
        external_ref: &str,
    ) -> Result<Option<Value>, RegisterError> {
        let path = format!(
            "systemuser/request/vendor/byexternalref/{}/{}/{}",
            segment(system),
            segment(org),
            segment(external_ref)
        );
        match self
            .send(Method::GET, &path, SCOPE_REQUEST_READ, token, None)
            .await
        {
            Ok(v) => request_object(&path, v).map(Some),
            Err(e) if matches!(e.status(), Some(400 | 404)) && e.code().is_none() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET systemuser/vendor/bysystem/{system}` and every `links.next` after it, up to
    /// [`MAX_SYSTEM_USERS`] entries; `true` when more were left unread.
    pub async fn system_users(
        &self,
        token: &Secret,
        system: &str,
    ) -> Result<(Vec<Value>, bool), RegisterError> {
        let first = format!("systemuser/vendor/bysystem/{}", segment(system));
        self.pages(&first, SCOPE_REGISTER, token, MAX_SYSTEM_USERS, |_| true)
            .await
    }

    /// A paged list (`{"links": {"next"}, "data": [...]}`) from `first` on, following
    /// `links.next`: the entries `keep` picks among the first `limit` read, and `true` when more
    /// were left unread.
    pub(super) async fn pages(
        &self,
        first: &str,
        scope: &'static str,
        token: &Secret,
        limit: usize,
        mut keep: impl FnMut(&Value) -> bool,
    ) -> Result<(Vec<Value>, bool), RegisterError> {
        let mut next = Some(self.url(first)?);
        let (mut kept, mut read) = (Vec::new(), 0usize);
        while let Some(url) = next.take() {
            if read >= limit {
                return Ok((kept, true));
            }
            let page = self
                .fetch(Method::GET, url, first, scope, token, None)
                .await?
                .1;
            let data = field_of(&page, "data")
                .as_array()
                .ok_or_else(|| invalid(first, "a page without a data array".into()))?;
            let room = limit - read;
            read += data.len().min(room);
            kept.extend(data.iter().take(room).filter(|v| keep(v)).cloned());
            let link = field_of(field_of(&page, "links"), "next");
            next = match link.as_str().filter(|l| !l.is_empty()) {
                // A page that adds nothing but points on would loop for ever.
                Some(_) if data.is_empty() => None,
                Some(link) => Some(self.within_base(first, link)?),
                None => None,
            };
            if data.len() > room {
                return Ok((kept, true));
            }
        }
        Ok((kept, false))
    }

    /// `links.next`, only when it stays under the platform base (the token goes with it).
    fn within_base(&self, call: &str, link: &str) -> Result<Url, RegisterError> {
        let url = self
            .base
            .join(link)
            .map_err(|e| invalid(call, format!("links.next is not a URL: {e}")))?;
        if url.origin() != self.base.origin() || !url.path().starts_with(self.base.path()) {
            return Err(invalid(
                call,
                format!(
                    "links.next points outside {}; the broker sends the admin token nowhere else",
                    self.base
                ),
            ));
        }
        Ok(url)
    }

    /// `path` under the API's base; never outside it (the admin token goes nowhere else).
    pub(super) fn url(&self, path: &str) -> Result<Url, RegisterError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| invalid(path, format!("cannot build the URL: {e}")))?;
        if !url.as_str().starts_with(self.base.as_str()) {
            return Err(invalid(path, format!("the URL would leave {}", self.base)));
        }
        Ok(url)
    }

    /// One call: its JSON answer (`null` for an empty one) on a 2xx.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        scope: &'static str,
        token: &Secret,
        body: Option<&Value>,
    ) -> Result<Value, RegisterError> {
        let url = self.url(path)?;
        let (_, answer) = self.fetch(method, url, path, scope, token, body).await?;
        Ok(answer)
    }

    pub(super) async fn fetch(
        &self,
        method: Method,
        url: Url,
        path: &str,
        scope: &'static str,
        token: &Secret,
        body: Option<&Value>,
    ) -> Result<(u16, Value), RegisterError> {
        let call = format!("{method} {path}");
        let api = AltinnApi {
            http: &self.http,
            timeout: self.timeout,
            limit: MAX_ANSWER_BYTES,
            log: "Altinn register call",
        };
        let (status, bytes) = match api.send(method, url, &call, token, body).await {
            Ok(answer) => answer,
            Err(CallError::Upstream(e)) => return Err(e.into()),
            Err(CallError::TooLarge) => {
                return Err(invalid(
                    &call,
                    format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                ));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            return Err(refusal(call, status, scope, &text));
        }
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        serde_json::from_str(&text)
            .map(|v| (status, v))
            .map_err(|e| invalid(&call, format!("not JSON: {e}")))
    }
}

/// A 4xx as a sentence: the code's advice, else Altinn's own detail, else what the status means.
fn refusal(call: String, status: u16, scope: &str, body: &str) -> RegisterError {
    let code = codes::find_code(body);
    let detail = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        ["detail", "title"]
            .iter()
            .find_map(|f| v.get(f).and_then(Value::as_str).map(str::to_owned))
    });
    // Altinn's own words, unless they are long or could hold a token.
    let detail = detail.filter(|d| d.len() <= 300 && !d.contains("eyJ"));
    let advice = match (code.as_deref().and_then(codes::advice), status, detail) {
        (Some(advice), _, _) => advice.to_owned(),
        (None, 401, _) => "Altinn did not accept the token: check that env (test or prod) matches where the Maskinporten client is registered".to_owned(),
        (None, 403, _) => format!(
            "the token may not make this call: it needs the scope {scope} on your Maskinporten client (Digdir's portal) and in system.profile's scopes, and system.id must start with your client's organisation number"
        ),
        (None, 404, _) => "Altinn does not know it: check the id, and run `maskinporten-broker system register` if the system is missing".to_owned(),
        (None, _, Some(detail)) => format!("Altinn says: {detail}"),
        (None, _, None) => "Altinn gave no reason".to_owned(),
    };
    RegisterError::Refused {
        call,
        status,
        code,
        advice,
    }
}

pub(super) fn invalid(call: &str, reason: String) -> RegisterError {
    RegisterError::Invalid {
        call: call.to_owned(),
        reason,
    }
}

fn request_object(call: &str, value: Value) -> Result<Value, RegisterError> {
    if value.get("id").and_then(Value::as_str).is_some() {
        Ok(value)
    } else {
        Err(invalid(
            call,
            format!("expected a request with an id, got {}", kind(&value)),
        ))
    }
}

/// What a JSON value is, without its content (it could be anything).
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `text` as one path segment. Every character but letters, digits, `-`, `_` and `.` is
/// percent-encoded, so only `.` and `..` themselves could form a dot segment (and `%2E` counts as
/// a dot to a URL parser, so encoding the dots would not help): those become `%252E`, which no
/// parser takes for a dot, and Altinn finds nothing under them.
pub(super) fn segment(text: &str) -> String {
    match text {
        "." | ".." => "%252E".repeat(text.len()),
        _ => utf8_percent_encode(text, SEGMENT).to_string(),
    }
}

/// The member `name` of an object, matched ignoring ASCII case (Altinn's JSON is camelCase, its
/// documentation sometimes not); `null` when absent.
pub fn field_of<'v>(value: &'v Value, name: &str) -> &'v Value {
    static NULL: Value = Value::Null;
    value
        .as_object()
        .and_then(|o| {
            o.get(name).or_else(|| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
        })
        .unwrap_or(&NULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_segment_can_leave_the_api_base() {
        let api = RegisterApi::new(
            reqwest::Client::new(),
            &Url::parse("https://platform.example/").unwrap(),
            Duration::from_secs(1),
        );
        for text in [".", "..", "%2e%2E", "a/../..", "..%2f..", "a\\..\\b"] {
            let path = format!(
                "systemuser/request/vendor/byexternalref/s/o/{}",
                segment(text)
            );
            let url = api.url(&path).unwrap();
            assert!(
                url.path().starts_with(
                    "/authentication/api/v1/systemuser/request/vendor/byexternalref/s/o/"
                ),
                "{text:?} → {url}"
            );
        }
        assert!(api.url("../../x").is_err());
    }
}
