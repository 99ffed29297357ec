//! The vendor's system as `system:` in broker.yaml describes it: the settings, their check at
//! start (every problem with its field path), the body Altinn's system register takes
//! (`RegisterSystemRequest`), and what differs between a registered system and the configured one.
//!
//! It knows nothing of HTTP or tokens. It must never accept a definition Altinn would refuse for
//! a reason the config can show (id form, the three languages, https redirect URLs): those are
//! start-up errors, not a 400 from Altinn weeks later.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Languages, SystemSettings};
use crate::policy::org::OrgNumber;
use crate::policy::profile::Profiles;
use crate::upstream::register::field_of;

/// `urn:altinn:resource`: the kind of every right the system asks for.
const RESOURCE: &str = "urn:altinn:resource";
/// Every access package's URN starts with this.
const ACCESS_PACKAGE: &str = "urn:altinn:accesspackage:";
/// The profile whose token the register calls use when `system.profile` is absent.
const ADMIN_PROFILE: &str = "admin";

/// A checked `system:`: what the register calls send and compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub id: String,
    pub vendor: OrgNumber,
    pub name: Languages,
    pub description: Languages,
    pub rights: Vec<String>,
    pub access_packages: Vec<String>,
    pub client_ids: Vec<String>,
    pub allowed_redirect_urls: Vec<String>,
    pub visible: bool,
    /// The profile whose token the register and request calls use.
    pub profile: String,
}

/// One field that differs between the registered system and the configured one, named as in
/// broker.yaml (`name`, `rights`, `client_ids`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    pub field: &'static str,
    pub registered: Value,
    pub configured: Value,
}

impl Difference {
    /// Whether the configured `rights` or `access_packages` hold one the registered lacks.
    pub fn gains(&self) -> bool {
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        matches!(self.field, "rights" | "access_packages")
            && list(&self.configured)
                .iter()
                .any(|c| !list(&self.registered).contains(c))
    }
}

/// Check `system:`; `client_ids` are those of every configured Maskinporten client (the
/// default when `system.client_ids` is empty). Problems go to `problems` with their field path.
pub fn validate(
    settings: &SystemSettings,
    client_ids: Vec<String>,
    profiles: Option<&Profiles>,
    problems: &mut Vec<String>,
) -> Option<System> {
    let before = problems.len();
    let vendor = check_id(&settings.id, problems);
    for (field, text) in [
        ("name", &settings.name),
        ("description", &settings.description),
    ] {
        for (language, value) in [("nb", &text.nb), ("nn", &text.nn), ("en", &text.en)] {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!(
                    "system.{field}.{language}: is required (Altinn needs the {field} in all three languages: nb, nn and en)"
                ));
            }
        }
    }
    if settings.rights.is_empty() && settings.access_packages.is_empty() {
        problems.push(
            "system.rights: list at least one right (a resource id) in system.rights or one access package in system.access_packages, or no customer can accept a system user".to_owned(),
        );
    }
    check_list("system.rights", &settings.rights, problems, |r| {
        (r.is_empty() || r.contains(char::is_whitespace) || r.starts_with("urn:"))
            .then_some("is not a resource id (write the value of urn:altinn:resource, e.g. ske-innrapportering-aksjonaerregisteroppgave)")
    });
    check_list(
        "system.access_packages",
        &settings.access_packages,
        problems,
        |p| {
            (!p.starts_with(ACCESS_PACKAGE) || p.len() == ACCESS_PACKAGE.len())
                .then_some("is not an access package (urn:altinn:accesspackage:<name>)")
        },
    );
    check_list(
        "system.allowed_redirect_urls",
        &settings.allowed_redirect_urls,
        problems,
        |u| match url::Url::parse(u) {
            Ok(url) if url.scheme() == "https" && url.host().is_some() => None,
            _ => Some("must be an https URL"),
        },
    );
    check_list("system.client_ids", &settings.client_ids, problems, |c| {
        c.trim().is_empty().then_some("must not be empty")
    });
    let profile = settings.profile.as_deref().unwrap_or(ADMIN_PROFILE);
    if let Some(problem) = profiles.and_then(|p| p.check_named(profile, "system.profile")) {
        problems.push(problem);
    }
    let client_ids = if settings.client_ids.is_empty() {
        dedup(client_ids)
    } else {
        settings.client_ids.clone()
    };
    if problems.len() != before {
        return None;
    }
    Some(System {
        id: settings.id.clone(),
        vendor: vendor?,
        name: settings.name.clone(),
        description: settings.description.clone(),
        rights: settings.rights.clone(),
        access_packages: settings.access_packages.clone(),
        client_ids,
        allowed_redirect_urls: settings.allowed_redirect_urls.clone(),
        visible: settings.visible,
        profile: profile.to_owned(),
    })
}

/// `<vendor org>_<name>`: Altinn's rules (VLD-00001, VLD-00013) plus the org's check digit.
fn check_id(id: &str, problems: &mut Vec<String>) -> Option<OrgNumber> {
    let form = "must be <vendor organisation number>_<name>, e.g. 991825827_my_system";
    if id.contains(char::is_whitespace) {
        problems.push(format!("system.id: {id:?} {form}, without spaces"));
        return None;
    }
    let Some((org, name)) = id.split_once('_').filter(|(_, name)| !name.is_empty()) else {
        problems.push(format!("system.id: {id:?} {form}"));
        return None;
    };
    org.parse::<OrgNumber>()
        .inspect_err(|e| {
            problems.push(format!(
                "system.id: {id:?} {form}; the vendor's organisation number {org:?} is not valid: {e}"
            ))
        })
        .ok()
        .filter(|_| !name.is_empty())
}

/// Each entry of a list checked by `bad`, and no entry twice (Altinn refuses duplicates).
fn check_list(
    field: &str,
    entries: &[String],
    problems: &mut Vec<String>,
    bad: impl Fn(&str) -> Option<&'static str>,
) {
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(why) = bad(entry) {
            problems.push(format!("{field}[{i}]: {entry:?} {why}"));
        }
        if !seen.insert(entry.as_str()) {
            problems.push(format!("{field}[{i}]: {entry:?} is listed twice"));
        }
    }
}

fn dedup(mut list: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    list.retain(|c| seen.insert(c.clone()));
    list
}

impl System {
    /// The whole definition as `POST`/`PUT systemregister/vendor` take it.
    pub fn body(&self) -> Value {
        json!({
            "id": self.id,
            "vendor": {"authority": "iso6523-actorid-upis", "ID": self.vendor.iso6523()},
            "name": self.name,
            "description": self.description,
            "rights": self.rights.iter().map(|r| json!({"resource": [{"id": RESOURCE, "value": r}]})).collect::<Vec<_>>(),
            "accessPackages": self.access_packages.iter().map(|p| json!({"urn": p})).collect::<Vec<_>>(),
            "clientId": self.client_ids,
            "isVisible": self.visible,
            "allowedRedirectUrls": self.allowed_redirect_urls,
        })
    }

    /// The rights as a system-user request asks for them (all of the system's).
    pub fn request_rights(&self) -> Value {
        self.body()["rights"].clone()
    }

    /// The access packages as a system-user request asks for them.
    pub fn request_access_packages(&self) -> Value {
        self.body()["accessPackages"].clone()
    }

    /// What differs between `registered` (Altinn's answer to `GET systemregister/vendor/{id}`)
    /// and this definition. Lists compare as sets; Altinn's field names are matched ignoring case.
    pub fn differences(&self, registered: &Value) -> Vec<Difference> {
        let texts = |field: &str| {
            let t = field_of(registered, field);
            json!({"nb": field_of(t, "nb"), "nn": field_of(t, "nn"), "en": field_of(t, "en")})
        };
        let rights: BTreeSet<String> = array(field_of(registered, "rights"))
            .flat_map(|r| array(field_of(r, "resource")))
            .filter(|r| field_of(r, "id").as_str() == Some(RESOURCE))
            .filter_map(|r| field_of(r, "value").as_str().map(str::to_owned))
            .collect();
        let packages: BTreeSet<String> = array(field_of(registered, "accessPackages"))
            .filter_map(|p| field_of(p, "urn").as_str().map(str::to_owned))
            .collect();
        let strings = |field: &str| -> BTreeSet<String> {
            array(field_of(registered, field))
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let set = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
        let candidates = [
            ("name", texts("name"), json!(self.name)),
            ("description", texts("description"), json!(self.description)),
            ("rights", json!(rights), json!(set(&self.rights))),
            (
                "access_packages",
                json!(packages),
                json!(set(&self.access_packages)),
            ),
            (
                "client_ids",
                json!(strings("clientId")),
                json!(set(&self.client_ids)),
            ),
            (
                "allowed_redirect_urls",
                json!(strings("allowedRedirectUrls")),
                json!(set(&self.allowed_redirect_urls)),
            ),
            (
                "visible",
                field_of(registered, "isVisible").clone(),
                json!(self.visible),
            ),
        ];
        candidates
            .into_iter()
            .filter(|(_, registered, configured)| registered != configured)
            .map(|(field, registered, configured)| Difference {
                field,
                registered,
                configured,
            })
            .collect()
    }
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> SystemSettings {
        config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap()
    }

    const GOOD: &str = "id: 991825827_wenche\nname: {nb: Wenche, nn: Wenche, en: Wenche}\ndescription: {nb: a, nn: b, en: c}\nrights: [ske-innrapportering-aksjonaerregisteroppgave]\n";

    fn check(yaml: &str) -> (Option<System>, Vec<String>) {
        let mut problems = Vec::new();
        let system = validate(
            &settings(yaml),
            vec!["c1".into(), "c1".into(), "c2".into()],
            None,
            &mut problems,
        );
        (system, problems)
    }

    #[test]
    fn a_good_system_takes_every_client_id_once_and_the_admin_profile() {
        let (system, problems) = check(GOOD);
        assert_eq!(problems, Vec::<String>::new());
        let system = system.unwrap();
        assert_eq!(system.client_ids, ["c1", "c2"]);
        assert_eq!(system.profile, "admin");
        assert_eq!(system.vendor.as_str(), "991825827");
        let body = system.body();
        assert_eq!(body["vendor"]["ID"], "0192:991825827");
        assert_eq!(
            body["rights"][0]["resource"][0],
            json!({"id": "urn:altinn:resource", "value": "ske-innrapportering-aksjonaerregisteroppgave"})
        );
        assert_eq!(body["isVisible"], true);
        assert!(system.differences(&body).is_empty(), "its own body");
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let (system, p) = check(
            "id: 991825828_x\nname: {nb: a, nn: ' '}\nallowed_redirect_urls: [http://x.no/, https://y.no/]\naccess_packages: [skattegrunnlag]\n",
        );
        assert!(system.is_none());
        for expected in [
            "system.id: \"991825828_x\" must be <vendor organisation number>_<name>",
            "system.name.nn: is required",
            "system.name.en: is required",
            "system.description.nb: is required",
            "system.allowed_redirect_urls[0]: \"http://x.no/\" must be an https URL",
            "system.access_packages[0]: \"skattegrunnlag\" is not an access package",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(expected)),
                "{expected} in {p:#?}"
            );
        }
        assert!(!p.iter().any(|l| l.contains("redirect_urls[1]")), "{p:#?}");
        let (_, p) = check(&GOOD.replace(
            "rights: [ske-innrapportering-aksjonaerregisteroppgave]\n",
            "",
        ));
        assert!(
            p.iter()
                .any(|l| l.starts_with("system.rights: list at least one right")),
            "{p:?}"
        );
        let (_, p) = check(&GOOD.replace("991825827_wenche", "991825827_my system"));
        assert!(p.iter().any(|l| l.ends_with("without spaces")), "{p:?}");
        let (_, p) = check(&GOOD.replace("991825827_wenche", "wenche"));
        assert!(
            p.iter().any(|l| l.starts_with("system.id: \"wenche\"")),
            "{p:?}"
        );
        let (_, p) = check(&GOOD.replace("[ske-", "[ske-a, ske-a, ske-"));
        assert!(
            p.iter()
                .any(|l| l.starts_with("system.rights[1]: \"ske-a\" is listed twice")),
            "{p:?}"
        );
    }

    #[test]
    fn differences_name_the_config_fields_and_compare_lists_as_sets() {
        let (system, _) = check(&format!("{GOOD}client_ids: [a, b]\n"));
        let system = system.unwrap();
        let mut registered = system.body();
        registered["clientId"] = json!(["b", "a"]);
        registered["isDeleted"] = json!(false);
        assert!(system.differences(&registered).is_empty());
        registered["name"]["en"] = json!("Old");
        registered.as_object_mut().unwrap().remove("clientId");
        let fields: Vec<_> = system
            .differences(&registered)
            .iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, ["name", "client_ids"]);
    }
}
