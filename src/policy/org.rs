//! Norwegian organisation numbers.
//!
//! An [`OrgNumber`] is parsed once at the edge (query string, config, CLI) and trusted everywhere
//! after: nine digits whose last is the modulus-11 check digit over the first eight (weights
//! 3 2 7 6 5 4 3 2). It never accepts anything else, so a typo is a clear 400, not an MP-303 from
//! Maskinporten a second later.

use std::fmt;
use std::str::FromStr;

/// A valid nine-digit Norwegian organisation number.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgNumber(String);

/// Why a string is not an organisation number; the messages are shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("an organisation number is exactly 9 digits; got {0} characters")]
    WrongLength(usize),
    #[error("an organisation number contains only digits 0-9")]
    NotDigits,
    #[error("the check digit (the 9th digit) does not match the other eight; check for a typo")]
    BadCheckDigit,
}

const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];

impl OrgNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier Maskinporten expects in `systemuser_org.ID` (ISO 6523 ICD 0192).
    pub fn iso6523(&self) -> String {
        format!("0192:{}", self.0)
    }
}

impl FromStr for OrgNumber {
    type Err = OrgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len != 9 {
            return Err(OrgError::WrongLength(len));
        }
        let digits: Vec<u32> = s
            .chars()
            .map(|c| c.to_digit(10))
            .collect::<Option<_>>()
            .ok_or(OrgError::NotDigits)?;
        let sum: u32 = digits.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => return Err(OrgError::BadCheckDigit),
            c => c,
        };
        if digits[8] != check {
            return Err(OrgError::BadCheckDigit);
        }
        Ok(OrgNumber(s.to_owned()))
    }
}

impl fmt::Display for OrgNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An optional organisation number written at `field` in the config; a problem when it is not valid.
pub fn parse_field(
    text: Option<&str>,
    field: &str,
    problems: &mut Vec<String>,
) -> Option<OrgNumber> {
    text?
        .trim()
        .parse()
        .inspect_err(|e| problems.push(format!("{field}: {e}")))
        .ok()
}

impl fmt::Debug for OrgNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgNumber({})", self.0)
    }
}

impl serde::Serialize for OrgNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_real_organisation_numbers() {
        // Digdir, Skatteetaten and Brønnøysundregistrene.
        for n in ["991825827", "974761076", "974760673"] {
            assert_eq!(n.parse::<OrgNumber>().unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_a_wrong_check_digit() {
        assert_eq!(
            "991825828".parse::<OrgNumber>(),
            Err(OrgError::BadCheckDigit)
        );
    }

    #[test]
    fn rejects_numbers_whose_check_digit_would_be_ten() {
        // 3*1 + 2*0 + ... gives remainder 1, so the check digit would be 10: no valid number.
        let sum: u32 = [1, 0, 0, 0, 0, 0, 0, 0]
            .iter()
            .zip(WEIGHTS)
            .map(|(d, w)| d * w)
            .sum();
        assert_eq!(11 - sum % 11, 8);
        assert_eq!(
            "100000000".parse::<OrgNumber>(),
            Err(OrgError::BadCheckDigit)
        );
        let ten = (0..=99_999_999u32)
            .step_by(7919)
            .map(|n| format!("{n:08}"))
            .find(|p| {
                let s: u32 = p
                    .chars()
                    .zip(WEIGHTS)
                    .map(|(c, w)| c.to_digit(10).unwrap() * w)
                    .sum();
                11 - s % 11 == 10
            })
            .expect("some prefix has check digit 10");
        for last in 0..=9 {
            assert!(format!("{ten}{last}").parse::<OrgNumber>().is_err());
        }
    }

    #[test]
    fn rejects_wrong_lengths_and_non_digits() {
        assert_eq!(
            "99182582".parse::<OrgNumber>(),
            Err(OrgError::WrongLength(8))
        );
        assert_eq!(
            "9918258270".parse::<OrgNumber>(),
            Err(OrgError::WrongLength(10))
        );
        assert_eq!("99182582x".parse::<OrgNumber>(), Err(OrgError::NotDigits));
        assert_eq!("".parse::<OrgNumber>(), Err(OrgError::WrongLength(0)));
        assert_eq!(
            "９９１８２５８２７".parse::<OrgNumber>(),
            Err(OrgError::NotDigits)
        );
    }

    #[test]
    fn formats_the_iso6523_identifier() {
        let org: OrgNumber = "991825827".parse().unwrap();
        assert_eq!(org.iso6523(), "0192:991825827");
    }

    proptest! {
        #[test]
        fn parsing_any_string_never_panics(s in ".{0,40}") {
            let _ = s.parse::<OrgNumber>();
        }

        #[test]
        fn every_accepted_number_is_nine_digits_with_a_valid_check(s in "[0-9]{9}") {
            if let Ok(org) = s.parse::<OrgNumber>() {
                let d: Vec<u32> = org.as_str().chars().map(|c| c.to_digit(10).unwrap()).collect();
                let sum: u32 = d.iter().zip(WEIGHTS).map(|(a, w)| a * w).sum();
                prop_assert_eq!((sum + d[8]) % 11, 0);
            }
        }

        #[test]
        fn exactly_one_check_digit_fits_each_valid_prefix(prefix in "[0-9]{8}") {
            let ok = (0..=9).filter(|l| format!("{prefix}{l}").parse::<OrgNumber>().is_ok()).count();
            // A prefix whose check digit would be 10 has none (no such number is issued);
            // every other prefix has exactly one.
            let sum: u32 = prefix.chars().zip([3, 2, 7, 6, 5, 4, 3, 2]).map(|(c, w)| c.to_digit(10).unwrap() * w).sum();
            let expected = usize::from(11 - sum % 11 != 10);
            prop_assert_eq!(ok, expected, "{}", prefix);
        }
    }
}
