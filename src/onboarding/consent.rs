//! The consent job, shared by the commands (`app/consent.rs`) and the HTTP routes
//! (`http/consent.rs`): check a consent request completely before any call, create it at Altinn
//! (idempotent by its `id`), read it, and learn what a consent token needs (its `from` and
//! `validTo`, read from Altinn once per accepted consent).
//!
//! A fødselsnummer goes only into the request body and the grant; every answer here shows it
//! masked. Nothing here prints, logs or answers with a token.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::flow::{Admin, OnboardingError};
use crate::config::Consent;
use crate::key::secret::Secret;
use crate::policy::consent::{ConsentToken, Party};
use crate::tokens::broker::{Generation, ResolveError};
use crate::upstream::consent::{ConsentApi, ConsentApiError, ConsentRecord};

/// Most resources one request asks for, and metadata entries per resource.
pub const MAX_RESOURCES: usize = 50;
pub const MAX_METADATA: usize = 20;
/// Longest resource id, metadata key or value, and message.
pub const MAX_TEXT: usize = 1000;
/// Accepted consents whose `from` and `validTo` are remembered.
pub const MAX_KNOWN: u64 = 10_000;

/// One right asked for: a resource id and its metadata (e.g. `fraOgMed: 2024`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Right {
    pub resource: String,
    pub metadata: BTreeMap<String, String>,
}

/// A consent request as the caller asks for it, parsed but not yet checked against `consent:`.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Absent: a fresh UUID; the same id again is the same request (Altinn answers 200).
    pub id: Option<uuid::Uuid>,
    pub from: Party,
    pub rights: Vec<Right>,
    pub valid_to: OffsetDateTime,
    pub message: Option<String>,
    pub redirect_url: Option<String>,
}

/// A consent request as the commands print it and the routes answer; `from` masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsentView {
    pub id: String,
    /// `Created`, `Accepted`, `Rejected`, `Revoked`, `Deleted` or `Expired`.
    pub status: String,
    /// Where the person (or organisation) accepts.
    pub view_uri: Option<String>,
    pub valid_to: Option<String>,
    /// The party asked, a fødselsnummer masked (`urn:altinn:person:identifier-no:150385*****`).
    pub from: Option<String>,
}

impl ConsentView {
    fn from_record(r: &ConsentRecord) -> Self {
        ConsentView {
            id: r.id.clone(),
            status: r.status.clone(),
            view_uri: r.view_uri.clone(),
            valid_to: r.valid_to.clone(),
            from: r.from.as_deref().map(masked_urn),
        }
    }

    /// `Rejected`, `Revoked`, `Deleted` or `Expired`: the consent will never be usable.
    pub fn is_refused(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Rejected" | "Revoked" | "Deleted" | "Expired"
        )
    }
}

/// A `from` URN with a person's number masked (an unparsable one with long digit runs masked).
fn masked_urn(urn: &str) -> String {
    Party::parse(urn).map_or_else(
        |_| crate::upstream::consent::mask_numbers(urn),
        |p| p.to_string(),
    )
}

/// Why the consent job did not get done.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The caller's input, refused before any call; `field` names it.
    #[error("{field}: {detail}")]
    BadRequest { field: &'static str, detail: String },
    #[error(transparent)]
    Altinn(#[from] ConsentApiError),
    /// The consent profile's token (or the running broker) failed.
    #[error(transparent)]
    Token(#[from] OnboardingError),
    #[error("Altinn has no consent request with id {0}")]
    NotFound(uuid::Uuid),
    /// A consent token for a consent that is not (or no longer) accepted.
    #[error(
        "consent {id} is {status}, not Accepted: {}",
        advice(.status)
    )]
    NotAccepted { id: uuid::Uuid, status: String },
}

fn advice(status: &str) -> &'static str {
    match status {
        "Created" => {
            "the person has not answered yet; send them to its view_uri and ask again after they accept"
        }
        "Expired" => "its valid_to has passed; ask for a new consent",
        _ => "ask for a new consent if the person should answer again",
    }
}

fn bad(field: &'static str, detail: impl Into<String>) -> ConsentError {
    ConsentError::BadRequest {
        field,
        detail: detail.into(),
    }
}

/// `valid_to`: RFC 3339, or a date (`2026-12-31`, the end of that day in UTC).
pub fn parse_valid_to(text: &str) -> Result<OffsetDateTime, ConsentError> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| {
        bad(
            "valid_to",
            "write a date (2026-12-31) or an RFC 3339 time (2026-12-31T12:00:00Z)",
        )
    })?;
    Ok(date
        .with_hms(23, 59, 59)
        .map_err(|e| bad("valid_to", e.to_string()))?
        .assume_utc())
}

/// Check `ask` against `consent:` and `now`, and build Altinn's body. Every failure names its field.
pub fn body(
    consent: &Consent,
    ask: &Ask,
    now: SystemTime,
) -> Result<(uuid::Uuid, Value), ConsentError> {
    if ask.valid_to <= OffsetDateTime::from(now) {
        return Err(bad("valid_to", "must be in the future"));
    }
    if ask.rights.is_empty() {
        return Err(bad("resources", "name at least one resource"));
    }
    if ask.rights.len() > MAX_RESOURCES {
        return Err(bad(
            "resources",
            format!("at most {MAX_RESOURCES} resources"),
        ));
    }
    let text_ok =
        |t: &str| !t.is_empty() && t.len() <= MAX_TEXT && !t.chars().any(char::is_control);
    let mut rights = Vec::new();
    for right in &ask.rights {
        if !text_ok(&right.resource) || right.resource.contains(char::is_whitespace) {
            return Err(bad(
                "resources",
                "a resource is a resource id without spaces (the value of urn:altinn:resource)",
            ));
        }
        if right.metadata.len() > MAX_METADATA
            || right
                .metadata
                .iter()
                .any(|(k, v)| !text_ok(k) || v.len() > MAX_TEXT)
        {
            return Err(bad(
                "metadata",
                format!(
                    "at most {MAX_METADATA} entries per resource, each key and value at most {MAX_TEXT} characters"
                ),
            ));
        }
        let mut r = json!({
            "action": ["consent"],
            "resource": [{"type": "urn:altinn:resource", "value": right.resource}],
        });
        if !right.metadata.is_empty() {
            r["metadata"] = json!(right.metadata);
        }
        rights.push(r);
    }
    if ask.message.as_deref().is_some_and(|m| !text_ok(m)) {
        return Err(bad(
            "message",
            format!("at most {MAX_TEXT} characters, no control characters"),
        ));
    }
    let redirect_url = match &ask.redirect_url {
        Some(url) if consent.redirect_urls.contains(url) => url.clone(),
        Some(_) => {
            return Err(bad(
                "redirect_url",
                "is not in consent.redirect_urls of the config; use one of those or leave it out",
            ));
        }
        None => consent.redirect_urls.first().cloned().ok_or_else(|| {
            bad(
                "redirect_url",
                "consent.redirect_urls in the config is empty: list where Altinn may send people back",
            )
        })?,
    };
    let id = ask.id.unwrap_or_else(uuid::Uuid::new_v4);
    let valid_to = ask
        .valid_to
        .format(&Rfc3339)
        .map_err(|e| bad("valid_to", e.to_string()))?;
    let mut body = json!({
        "id": id.to_string(),
        "from": ask.from.urn(),
        "to": format!("urn:altinn:organization:identifier-no:{}", consent.org),
        "requiredDelegator": null,
        "validTo": valid_to,
        "consentRights": rights,
        "redirectUrl": redirect_url,
        "portalViewMode": "show",
    });
    if let Some(message) = &ask.message {
        body["requestMessage"] = json!({"nb": message});
    }
    Ok((id, body))
}

/// `consent:` and what the broker remembers of accepted consents (bounded, [`MAX_KNOWN`]).
pub struct Consents {
    pub settings: Consent,
    known: moka::future::Cache<uuid::Uuid, (Party, Option<SystemTime>)>,
}

impl Consents {
    pub fn new(settings: Consent) -> Self {
        Consents {
            settings,
            known: moka::future::Cache::builder()
                .max_capacity(MAX_KNOWN)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// Forget a consent (a token for it was refused).
    pub async fn forget(&self, id: &uuid::Uuid) {
        self.known.invalidate(id).await;
    }
}

/// One session: `consent:`, Altinn's API, and where the consent profile's token comes from.
pub struct Session<'a> {
    pub consent: &'a Consent,
    pub api: ConsentApi,
    pub admin: Admin<'a>,
}

impl Session<'_> {
    /// Create the request (checked first); `true` when Altinn made a new one.
    pub async fn request(
        &self,
        ask: &Ask,
        now: SystemTime,
    ) -> Result<(ConsentView, bool), ConsentError> {
        let (id, body) = body(self.consent, ask, now)?;
        let token = self.token().await?;
        let (created, record) = self.api.create(&token, &body).await?;
        if record.id != id.to_string() {
            return Err(ConsentApiError::Invalid {
                call: "POST consentrequests",
                reason: format!("asked to create {id}, got {}", record.id),
            }
            .into());
        }
        tracing::info!(consent_id = %id, created, status = %record.status, "consent request");
        Ok((ConsentView::from_record(&record), created))
    }

    /// The request's state.
    pub async fn status(&self, id: &uuid::Uuid) -> Result<ConsentView, ConsentError> {
        Ok(ConsentView::from_record(&self.record(id).await?))
    }

    async fn record(&self, id: &uuid::Uuid) -> Result<ConsentRecord, ConsentError> {
        let token = self.token().await?;
        self.api
            .read(&token, id)
            .await?
            .ok_or(ConsentError::NotFound(*id))
    }

    /// What a consent token for `id` and `scope` carries: `from` as given, else (with `validTo`)
    /// read from Altinn once per accepted consent. A consent read that is not `Accepted`, or
    /// whose `validTo` has passed, is [`ConsentError::NotAccepted`].
    pub async fn token_for(
        &self,
        known: &Consents,
        id: uuid::Uuid,
        scope: String,
        from: Option<Party>,
        now: SystemTime,
    ) -> Result<ConsentToken, ConsentError> {
        if let Some(from) = from {
            return Ok(ConsentToken {
                id,
                from,
                scope,
                valid_to: None,
            });
        }
        if let Some((from, valid_to)) = known.known.get(&id).await {
            if valid_to.is_some_and(|v| v <= now) {
                known.forget(&id).await;
                return Err(ConsentError::NotAccepted {
                    id,
                    status: "Expired".into(),
                });
            }
            return Ok(ConsentToken {
                id,
                from,
                scope,
                valid_to,
            });
        }
        let record = self.record(&id).await?;
        let valid_to = record
            .valid_to
            .as_deref()
            .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
            .map(SystemTime::from);
        let status = if record.status == "Accepted" && valid_to.is_some_and(|v| v <= now) {
            "Expired".to_owned()
        } else {
            record.status
        };
        if status != "Accepted" {
            return Err(ConsentError::NotAccepted { id, status });
        }
        let from = record
            .from
            .as_deref()
            .and_then(|f| Party::parse(f).ok())
            .ok_or_else(|| ConsentApiError::Invalid {
                call: "GET consentrequests/{id}",
                reason: "the consent has no from the broker can read".into(),
            })?;
        known.known.insert(id, (from.clone(), valid_to)).await;
        Ok(ConsentToken {
            id,
            from,
            scope,
            valid_to,
        })
    }

    /// Why a consent token was refused, when the consent is the reason: its status if it is not
    /// `Accepted` (then it is forgotten), else `None`.
    pub async fn refusal_reason(&self, known: &Consents, id: uuid::Uuid) -> Option<ConsentError> {
        let record = self.record(&id).await.ok()?;
        if record.status == "Accepted" {
            return None;
        }
        known.forget(&id).await;
        Some(ConsentError::NotAccepted {
            id,
            status: record.status,
        })
    }

    async fn token(&self) -> Result<Secret, OnboardingError> {
        self.admin
            .token(&self.consent.profile, "consent.profile")
            .await
    }
}

/// The consent API the consent profile reaches: its Maskinporten client's Altinn platform.
pub fn api_for(generation: &Generation, consent: &Consent) -> Result<ConsentApi, ResolveError> {
    let profile = generation.profile(&consent.profile)?;
    let fetcher = generation.fetcher(&profile.client)?;
    Ok(ConsentApi::new(
        fetcher.http().clone(),
        &fetcher.endpoints.altinn_platform,
        fetcher.timeout,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_of_accepted_consents_holds_at_most_max_known() {
        let known = Consents::new(Consent {
            org: "991825827".parse().unwrap(),
            redirect_urls: Vec::new(),
            scopes: Default::default(),
            profile: "consent".into(),
        });
        let from = Party::parse("urn:altinn:organization:identifier-no:991825827").unwrap();
        let past = MAX_KNOWN + 500;
        for _ in 0..past {
            known
                .known
                .insert(uuid::Uuid::new_v4(), (from.clone(), None))
                .await;
        }
        known.known.run_pending_tasks().await;
        let held = known.known.entry_count();
        assert!(
            held <= MAX_KNOWN,
            "{held} consents remembered, bound {MAX_KNOWN}"
        );
        assert!(held > 0);
    }
}
