//! Rights added after onboarding: change requests that ask a customer to approve what `system:`
//! now lists (or what the vendor names) for the system user it already has, for one organisation
//! (`systemuser change`, `POST /systemusers/changes`) or for every one (`systemuser sync`).
//!
//! What a system user holds is not readable by the vendor; the broker works it out from Altinn's
//! own records: the rights and access packages of the accepted system-user request (by external
//! reference), changed by each accepted change request in the order they were made. Without the
//! request (a system user made elsewhere), it holds nothing known, and the change asks for all.
//!
//! Idempotent: Altinn deduplicates change requests only by correlation id, so before asking, the
//! broker reads the system's change requests (`GET changerequest/vendor/bysystem`) and answers a
//! pending one (`New`) for that system user as it is. Each new change gets a new correlation id.
//! When nothing differs, the answer is `NoChangeNeeded` without a call (Altinn answers a change
//! with four empty lists so, and stores nothing). Never prints, logs or answers a token.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Value, json};

use super::flow::{Onboarding, OnboardingError};
use crate::key::secret::Secret;
use crate::policy::org::OrgNumber;
use crate::upstream::register::field_of;

const RESOURCE: &str = "urn:altinn:resource";
/// The statuses of change requests that matter: a pending one, and accepted ones.
const PENDING: &str = "New";
const ACCEPTED: &str = "Accepted";
/// Altinn's status for a change that asks for nothing the system user lacks.
pub const NO_CHANGE_NEEDED: &str = "NoChangeNeeded";

/// Why a change was not asked for.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Onboarding(#[from] OnboardingError),
    /// Refused before any call: what `system:` does not list.
    #[error("{0}")]
    NotInSystem(String),
    #[error(
        "organisation {org} has no system user for this system with external reference {external_ref:?}: ask for one with `systemuser request --org {org}` (or name its --external-ref)"
    )]
    NoSystemUser { org: String, external_ref: String },
    #[error(
        "the system user {id} of organisation {org} is an agent (client delegation) system user, and Altinn cannot change those: delete it and request it anew with `systemuser request --agent`"
    )]
    Agent { org: String, id: String },
    #[error(
        "the system has more than {0} change requests in Altinn; the broker cannot be sure none is pending, so it asks for nothing"
    )]
    TooManyChangeRequests(usize),
}

/// What a change asks for. All four lists empty: what `system:` lists now (`sync`).
#[derive(Debug, Clone, Default)]
pub struct ChangeAsk {
    pub org: Option<OrgNumber>,
    /// Absent: the organisation number.
    pub external_ref: Option<String>,
    pub add_rights: Vec<String>,
    pub remove_rights: Vec<String>,
    pub add_packages: Vec<String>,
    pub remove_packages: Vec<String>,
    pub redirect_url: Option<String>,
}

impl ChangeAsk {
    fn names_nothing(&self) -> bool {
        self.add_rights.is_empty()
            && self.remove_rights.is_empty()
            && self.add_packages.is_empty()
            && self.remove_packages.is_empty()
    }
}

/// A change request as the CLI prints it and the HTTP routes answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChangeView {
    /// The change request's id (`null` for NoChangeNeeded: nothing was stored).
    pub id: Option<String>,
    /// `New`, `Accepted`, `Rejected`, `Denied`, `Timedout` or `NoChangeNeeded`.
    pub status: String,
    /// Where the customer approves (`null` when there is nothing to approve).
    pub confirm_url: Option<String>,
    pub org: String,
    pub external_ref: String,
    pub system_user_id: String,
    pub created: Option<String>,
}

impl ChangeView {
    fn from_altinn(v: &Value) -> Self {
        let text = |f: &str| {
            field_of(v, f)
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        let status = text("status").unwrap_or_else(|| PENDING.to_owned());
        ChangeView {
            // Altinn answers NoChangeNeeded with the correlation id, which it never stored.
            id: text("id").filter(|_| status != NO_CHANGE_NEEDED),
            confirm_url: text("confirmUrl").filter(|_| status != NO_CHANGE_NEEDED),
            status,
            org: text("partyOrgNo").unwrap_or_default(),
            external_ref: text("externalRef").unwrap_or_default(),
            system_user_id: text("systemUserId").unwrap_or_default(),
            created: text("created"),
        }
    }

    /// The statuses after which nothing changes.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Accepted" | "Rejected" | "Denied" | "Timedout" | NO_CHANGE_NEEDED
        )
    }
}

/// A system user as the change needs it.
struct User {
    id: String,
    org: String,
    external_ref: String,
    agent: bool,
}

impl User {
    fn from_altinn(v: &Value) -> Self {
        let text = |f: &str| field_of(v, f).as_str().unwrap_or_default().to_owned();
        User {
            id: text("id"),
            org: text("reporteeOrgNo"),
            external_ref: text("externalRef"),
            agent: text("userType").eq_ignore_ascii_case("agent"),
        }
    }
}

/// The four lists of a change request, as resource ids and package URNs.
#[derive(Debug, Default, PartialEq)]
struct Lists {
    add_rights: BTreeSet<String>,
    remove_rights: BTreeSet<String>,
    add_packages: BTreeSet<String>,
    remove_packages: BTreeSet<String>,
}

impl Lists {
    fn is_empty(&self) -> bool {
        *self == Lists::default()
    }

    /// The body of `POST changerequest/vendor`.
    fn body(&self, redirect_url: Option<&str>) -> Value {
        let rights = |set: &BTreeSet<String>| {
            set.iter()
                .map(|r| json!({"resource": [{"id": RESOURCE, "value": r}]}))
                .collect::<Vec<_>>()
        };
        let packages =
            |set: &BTreeSet<String>| set.iter().map(|p| json!({"urn": p})).collect::<Vec<_>>();
        json!({
            "requiredRights": rights(&self.add_rights),
            "unwantedRights": rights(&self.remove_rights),
            "requiredAccessPackages": packages(&self.add_packages),
            "unwantedAccessPackages": packages(&self.remove_packages),
            "redirectUrl": redirect_url.unwrap_or_default(),
        })
    }
}

/// What a system user holds, as far as Altinn's records tell.
#[derive(Debug, Default)]
struct Held {
    rights: BTreeSet<String>,
    packages: BTreeSet<String>,
}

fn rights_of(list: &Value) -> impl Iterator<Item = String> + '_ {
    list.as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| field_of(r, "resource").as_array().into_iter().flatten())
        .filter(|r| field_of(r, "id").as_str() == Some(RESOURCE))
        .filter_map(|r| field_of(r, "value").as_str().map(str::to_owned))
}

fn packages_of(list: &Value) -> impl Iterator<Item = String> + '_ {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| field_of(p, "urn").as_str().map(str::to_owned))
}

/// For one system user: its pending change, or what to ask for.
enum Plan {
    Pending(ChangeView),
    Ask(Lists),
}

/// The change requests of the system that matter (pending and accepted).
struct Changes(Vec<Value>);

impl Changes {
    fn of<'c>(&'c self, user: &'c User) -> impl Iterator<Item = &'c Value> + 'c {
        self.0
            .iter()
            .filter(move |c| field_of(c, "systemUserId").as_str() == Some(user.id.as_str()))
    }
}

/// What `systemuser sync` did.
#[derive(Debug, Default)]
pub struct Synced {
    /// One per standard system user: its change (new, pending, or NoChangeNeeded).
    pub changes: Vec<ChangeView>,
    /// Agent system users, which cannot be changed (org, id).
    pub agents: Vec<(String, String)>,
    /// The list of system users stopped at its limit.
    pub truncated: bool,
}

impl Onboarding<'_> {
    /// `systemuser change`: the change for one organisation's system user. `true` with a new
    /// change request; a pending one, or NoChangeNeeded, comes back with `false`.
    pub async fn change(&self, ask: &ChangeAsk) -> Result<(ChangeView, bool), ChangeError> {
        self.check_change(ask)?;
        if let Some(external_ref) = &ask.external_ref {
            super::flow::check_external_ref(external_ref)
                .map_err(|e| ChangeError::Onboarding(OnboardingError::BadRequest(e)))?;
        }
        let org = ask
            .org
            .as_ref()
            .ok_or_else(|| ChangeError::NotInSystem("the change needs an organisation".into()))?
            .as_str();
        let external_ref = ask.external_ref.clone().unwrap_or_else(|| org.to_owned());
        let token = self.admin_token().await?;
        let user = self
            .api
            .system_user_by_query(&token, &self.system.id, org, &external_ref)
            .await
            .map_err(OnboardingError::from)?
            .map(|v| User::from_altinn(&v))
            .filter(|u| !u.id.is_empty())
            .ok_or_else(|| ChangeError::NoSystemUser {
                org: org.to_owned(),
                external_ref: external_ref.clone(),
            })?;
        if user.agent {
            return Err(ChangeError::Agent {
                org: user.org,
                id: user.id,
            });
        }
        let changes = self.changes(&token).await?;
        self.apply(&token, &user, &changes, ask).await
    }

    /// `systemuser sync`: for every standard system user (or those of `ask.org`), a change asking
    /// for what `system:` lists now.
    pub async fn sync(&self, org: Option<&OrgNumber>) -> Result<Synced, ChangeError> {
        let token = self.admin_token().await?;
        let (users, truncated) = self.standard_users(&token, org).await?;
        let changes = self.changes(&token).await?;
        let mut synced = Synced {
            truncated,
            ..Synced::default()
        };
        let ask = ChangeAsk::default();
        for user in users {
            if user.agent {
                synced.agents.push((user.org, user.id));
                continue;
            }
            let (view, _) = self.apply(&token, &user, &changes, &ask).await?;
            synced.changes.push(view);
        }
        Ok(synced)
    }

    /// How many customers' system users lack something `system:` lists now (a pending change
    /// counts as lacking): after `system register` added a right.
    pub async fn lacking(&self) -> Result<usize, ChangeError> {
        let token = self.admin_token().await?;
        let (users, _) = self.standard_users(&token, None).await?;
        let changes = self.changes(&token).await?;
        let mut lacking = 0;
        for user in users.iter().filter(|u| !u.agent) {
            match self
                .plan(&token, user, &changes, &ChangeAsk::default())
                .await?
            {
                Plan::Ask(lists)
                    if lists.add_rights.is_empty() && lists.add_packages.is_empty() => {}
                _ => lacking += 1,
            }
        }
        Ok(lacking)
    }

    /// `systemuser status ID` for a change request.
    pub async fn change_status(&self, id: &str) -> Result<ChangeView, OnboardingError> {
        let token = self.admin_token().await?;
        self.api
            .change_request(&token, id)
            .await?
            .map(|v| ChangeView::from_altinn(&v))
            .ok_or_else(|| OnboardingError::NoSuchRequest(id.to_owned()))
    }

    /// What `system:` does not allow, refused before any call.
    pub fn check_change(&self, ask: &ChangeAsk) -> Result<(), ChangeError> {
        let system = self.system;
        if let Some(right) = ask.add_rights.iter().find(|r| !system.rights.contains(r)) {
            return Err(ChangeError::NotInSystem(format!(
                "right {right:?} is not in system.rights: add it there, run `maskinporten-broker system register`, then ask again"
            )));
        }
        if let Some(package) = ask
            .add_packages
            .iter()
            .find(|p| !system.access_packages.contains(p))
        {
            return Err(ChangeError::NotInSystem(format!(
                "access package {package:?} is not in system.access_packages: add it there, run `maskinporten-broker system register`, then ask again"
            )));
        }
        if let Some(url) = &ask.redirect_url
            && !system.allowed_redirect_urls.contains(url)
        {
            return Err(ChangeError::NotInSystem(format!(
                "redirect_url {url:?} is not in system.allowed_redirect_urls; add it there and run `system register`, or leave it out"
            )));
        }
        Ok(())
    }

    async fn standard_users(
        &self,
        token: &Secret,
        org: Option<&OrgNumber>,
    ) -> Result<(Vec<User>, bool), ChangeError> {
        let (users, truncated) = self
            .api
            .system_users(token, &self.system.id)
            .await
            .map_err(OnboardingError::from)?;
        let users = users
            .iter()
            .filter(|u| field_of(u, "isDeleted").as_bool() != Some(true))
            .map(User::from_altinn)
            .filter(|u| org.is_none_or(|o| o.as_str() == u.org))
            .collect();
        Ok((users, truncated))
    }

    async fn changes(&self, token: &Secret) -> Result<Changes, ChangeError> {
        let (changes, truncated) = self
            .api
            .change_requests(token, &self.system.id, &[PENDING, ACCEPTED])
            .await
            .map_err(OnboardingError::from)?;
        if truncated {
            return Err(ChangeError::TooManyChangeRequests(
                crate::upstream::register_changes::MAX_CHANGE_REQUESTS,
            ));
        }
        Ok(Changes(changes))
    }

    /// The pending change of `user`, or a new one for what differs, or NoChangeNeeded.
    async fn apply(
        &self,
        token: &Secret,
        user: &User,
        changes: &Changes,
        ask: &ChangeAsk,
    ) -> Result<(ChangeView, bool), ChangeError> {
        let lists = match self.plan(token, user, changes, ask).await? {
            Plan::Pending(view) => return Ok((view, false)),
            Plan::Ask(lists) => lists,
        };
        if lists.is_empty() {
            return Ok((
                ChangeView {
                    id: None,
                    status: NO_CHANGE_NEEDED.to_owned(),
                    confirm_url: None,
                    org: user.org.clone(),
                    external_ref: user.external_ref.clone(),
                    system_user_id: user.id.clone(),
                    created: None,
                },
                false,
            ));
        }
        let correlation_id = uuid::Uuid::new_v4();
        let body = lists.body(ask.redirect_url.as_deref());
        let answer = match self
            .api
            .create_change_request(token, &correlation_id, &user.id, &body)
            .await
        {
            Ok(answer) => answer,
            // Pending under this very correlation id (a retried POST): read it.
            Err(e) if e.code() == Some("AUTH-00007") => {
                let found = self
                    .api
                    .change_request(token, &correlation_id.to_string())
                    .await
                    .map_err(OnboardingError::from)?;
                (false, found.ok_or(OnboardingError::from(e))?)
            }
            Err(e) => return Err(OnboardingError::from(e).into()),
        };
        let (created, value) = answer;
        let view = ChangeView::from_altinn(&value);
        if view.system_user_id != user.id {
            return Err(OnboardingError::Mismatch(format!(
                "asked to change system user {}, got a change of {:?}",
                user.id, view.system_user_id
            ))
            .into());
        }
        tracing::info!(org = %view.org, change_id = ?view.id, status = %view.status, created, "system-user change request");
        Ok((view, created))
    }

    async fn plan(
        &self,
        token: &Secret,
        user: &User,
        changes: &Changes,
        ask: &ChangeAsk,
    ) -> Result<Plan, ChangeError> {
        if let Some(pending) = changes
            .of(user)
            .find(|c| field_of(c, "status").as_str() == Some(PENDING))
        {
            return Ok(Plan::Pending(ChangeView::from_altinn(pending)));
        }
        let held = self.held(token, user, changes).await?;
        let system = self.system;
        let set = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
        let lists = if ask.names_nothing() {
            match &held {
                Some(held) => Lists {
                    add_rights: &set(&system.rights) - &held.rights,
                    remove_rights: &held.rights - &set(&system.rights),
                    add_packages: &set(&system.access_packages) - &held.packages,
                    remove_packages: &held.packages - &set(&system.access_packages),
                },
                None => Lists {
                    add_rights: set(&system.rights),
                    add_packages: set(&system.access_packages),
                    ..Lists::default()
                },
            }
        } else {
            let empty = Held::default();
            let known = held.as_ref().unwrap_or(&empty);
            let unknown = held.is_none();
            Lists {
                add_rights: &set(&ask.add_rights) - &known.rights,
                remove_rights: set(&ask.remove_rights)
                    .into_iter()
                    .filter(|r| unknown || known.rights.contains(r))
                    .collect(),
                add_packages: &set(&ask.add_packages) - &known.packages,
                remove_packages: set(&ask.remove_packages)
                    .into_iter()
                    .filter(|p| unknown || known.packages.contains(p))
                    .collect(),
            }
        };
        Ok(Plan::Ask(lists))
    }

    /// What `user` holds: its accepted request, then its accepted changes in order; `None` when
    /// Altinn has no request for it.
    async fn held(
        &self,
        token: &Secret,
        user: &User,
        changes: &Changes,
    ) -> Result<Option<Held>, ChangeError> {
        let request = self
            .api
            .request_by_external_ref(token, &self.system.id, &user.org, &user.external_ref)
            .await
            .map_err(OnboardingError::from)?
            .filter(|r| field_of(r, "status").as_str() == Some(ACCEPTED));
        let Some(request) = request else {
            return Ok(None);
        };
        let mut held = Held {
            rights: rights_of(field_of(&request, "rights")).collect(),
            packages: packages_of(field_of(&request, "accessPackages")).collect(),
        };
        let mut accepted: Vec<&Value> = changes
            .of(user)
            .filter(|c| field_of(c, "status").as_str() == Some(ACCEPTED))
            .collect();
        // RFC 3339 times of one source sort as text.
        accepted.sort_by_key(|c| field_of(c, "created").as_str().unwrap_or_default());
        for change in accepted {
            held.rights
                .extend(rights_of(field_of(change, "requiredRights")));
            for r in rights_of(field_of(change, "unwantedRights")) {
                held.rights.remove(&r);
            }
            held.packages
                .extend(packages_of(field_of(change, "requiredAccessPackages")));
            for p in packages_of(field_of(change, "unwantedAccessPackages")) {
                held.packages.remove(&p);
            }
        }
        Ok(Some(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_altinns_four_lists_and_the_redirect_url() {
        let lists = Lists {
            add_rights: ["r2".to_owned()].into(),
            remove_packages: ["urn:altinn:accesspackage:a".to_owned()].into(),
            ..Lists::default()
        };
        assert_eq!(
            lists.body(None),
            json!({
                "requiredRights": [{"resource": [{"id": "urn:altinn:resource", "value": "r2"}]}],
                "unwantedRights": [],
                "requiredAccessPackages": [],
                "unwantedAccessPackages": [{"urn": "urn:altinn:accesspackage:a"}],
                "redirectUrl": "",
            })
        );
        assert!(!lists.is_empty());
        assert!(Lists::default().is_empty());
    }

    #[test]
    fn no_change_needed_keeps_no_id_and_no_confirm_url() {
        let view = ChangeView::from_altinn(&json!({
            "id": "c0ffee00-0000-4000-8000-000000000000", "status": "NoChangeNeeded",
            "confirmUrl": "", "partyOrgNo": "974761076", "systemUserId": "u",
        }));
        assert_eq!((view.id, view.confirm_url), (None, None));
        assert!(ChangeView::from_altinn(&json!({"status": "NoChangeNeeded"})).is_final());
        assert!(!ChangeView::from_altinn(&json!({"status": "New"})).is_final());
    }
}
