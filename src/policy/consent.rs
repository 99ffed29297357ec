//! Altinn consent ("samtykke"): who a consent is from, and what a consent token asks
//! Maskinporten for (PROTOCOL.md, "Altinn consent").
//!
//! A [`Party`] is the data subject: a person (a [`Fnr`], personal data) or an organisation. Its
//! URN goes into the consent request's `from` and the consent grant's `authorization_details`,
//! and nowhere else: `Display` and `Debug` mask a person's number. A [`ConsentToken`] is the
//! part of a cache key that names one consent token: the consent, its `from`, the data
//! provider's scope and, when the broker read it, the consent's `validTo`. Nothing here knows
//! HTTP or Altinn's API.

use std::fmt;
use std::time::SystemTime;

use crate::policy::fnr::{Fnr, FnrError};
use crate::policy::org::{OrgError, OrgNumber};

/// The profile name of consent tokens (in answers, metrics and logs).
pub const CONSENT_TOKEN: &str = "consent-token";
/// The `type` of a consent's `authorization_details`.
pub const CONSENT_TYPE: &str = "urn:altinn:consent";
const PERSON_URN: &str = "urn:altinn:person:identifier-no:";
const ORG_URN: &str = "urn:altinn:organization:identifier-no:";

/// Who a consent is from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Party {
    Person(Fnr),
    Org(OrgNumber),
}

/// Why a text names no party. Never repeats the text (it may be a fødselsnummer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartyError {
    #[error("a fødselsnummer (11 digits) is not valid: {0}")]
    Fnr(FnrError),
    #[error("an organisation number (9 digits) is not valid: {0}")]
    Org(OrgError),
    #[error(
        "write a fødselsnummer (11 digits), an organisation number (9 digits), or their urn:altinn:person:identifier-no: / urn:altinn:organization:identifier-no: URN"
    )]
    Unknown,
}

impl Party {
    /// A fødselsnummer, an organisation number, or either's URN.
    pub fn parse(text: &str) -> Result<Party, PartyError> {
        let text = text.trim();
        let (bare, kind) = if let Some(n) = text.strip_prefix(PERSON_URN) {
            (n, Some(true))
        } else if let Some(n) = text.strip_prefix(ORG_URN) {
            (n, Some(false))
        } else {
            (text, None)
        };
        let person = kind.unwrap_or(bare.len() == 11);
        if kind.is_none() && !matches!(bare.len(), 9 | 11) {
            return Err(PartyError::Unknown);
        }
        if person {
            bare.parse().map(Party::Person).map_err(PartyError::Fnr)
        } else {
            bare.parse().map(Party::Org).map_err(PartyError::Org)
        }
    }

    /// The URN Altinn and Maskinporten take: the whole number.
    pub fn urn(&self) -> String {
        match self {
            Party::Person(fnr) => format!("{PERSON_URN}{}", fnr.expose()),
            Party::Org(org) => format!("{ORG_URN}{org}"),
        }
    }
}

/// The URN with a person's number masked.
impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Person(fnr) => write!(f, "{PERSON_URN}{fnr}"),
            Party::Org(org) => write!(f, "{ORG_URN}{org}"),
        }
    }
}

/// One consent token: what its grant carries besides the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsentToken {
    pub id: uuid::Uuid,
    pub from: Party,
    /// The data provider's scope (one; it matched `consent.scopes`).
    pub scope: String,
    /// The consent's `validTo` when the broker read it: no token outlives it.
    pub valid_to: Option<SystemTime>,
}

/// Shown in audit lines beside the profile: the consent and scope, never `from`.
impl fmt::Display for ConsentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "consent {} scope {}", self.id, self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_urns_and_masks_a_person() {
        let p = Party::parse("15038512363").unwrap();
        assert_eq!(p.urn(), "urn:altinn:person:identifier-no:15038512363");
        assert_eq!(p.to_string(), "urn:altinn:person:identifier-no:150385*****");
        assert!(!format!("{p:?}").contains("12363"));
        assert_eq!(Party::parse(&p.urn()).unwrap(), p);
        let o = Party::parse("urn:altinn:organization:identifier-no:991825827").unwrap();
        assert_eq!(o, Party::Org("991825827".parse().unwrap()));
        assert_eq!(Party::parse("991825827").unwrap(), o);
        for bad in [
            "15038512364",
            "991825828",
            "1234",
            "urn:altinn:person:identifier-no:991825827",
            "",
        ] {
            let e = Party::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("1503851236"), "{e}");
        }
    }
}
