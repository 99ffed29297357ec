//! Norwegian fødselsnummer (and D-numbers, and the synthetic numbers of Skatteetaten's Tenor):
//! eleven digits whose last two are modulus-11 check digits.
//!
//! A [`Fnr`] is personal data. It is parsed once at the edge and then only ever shown masked
//! (`150385*****`, the birth date without the personal number) by `Display` and `Debug`; the
//! whole number is reachable only through [`Fnr::expose`], for the one place it must go: the
//! `from` of a consent request and of a consent grant. It must never reach a log line, a metric
//! label or an error body.

use std::fmt;
use std::str::FromStr;

/// A fødselsnummer (or D-number) with both check digits right.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fnr(String);

/// Why a text is not a fødselsnummer. The messages never repeat the number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FnrError {
    #[error("a fødselsnummer is exactly 11 digits; got {0} characters")]
    WrongLength(usize),
    #[error("a fødselsnummer contains only digits 0-9")]
    NotDigits,
    #[error("the first check digit (the 10th digit) does not match; check for a typo")]
    BadFirstCheckDigit,
    #[error("the second check digit (the 11th digit) does not match; check for a typo")]
    BadSecondCheckDigit,
}

const K1: [u32; 9] = [3, 7, 6, 1, 8, 9, 4, 5, 2];
const K2: [u32; 10] = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// The modulus-11 check digit of `digits` with `weights`; `None` when the remainder gives 10
/// (no number has that).
fn check_digit(digits: &[u32], weights: &[u32]) -> Option<u32> {
    let sum: u32 = digits.iter().zip(weights).map(|(d, w)| d * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c),
    }
}

impl Fnr {
    /// The whole number, for the consent request and grant only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The birth date part and five stars: what logs and answers may show.
    pub fn masked(&self) -> String {
        format!("{}*****", &self.0[..6])
    }
}

impl FromStr for Fnr {
    type Err = FnrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len != 11 {
            return Err(FnrError::WrongLength(len));
        }
        let digits: Vec<u32> = s
            .chars()
            .map(|c| c.to_digit(10))
            .collect::<Option<_>>()
            .ok_or(FnrError::NotDigits)?;
        if check_digit(&digits[..9], &K1) != Some(digits[9]) {
            return Err(FnrError::BadFirstCheckDigit);
        }
        if check_digit(&digits[..10], &K2) != Some(digits[10]) {
            return Err(FnrError::BadSecondCheckDigit);
        }
        Ok(Fnr(s.to_owned()))
    }
}

impl fmt::Display for Fnr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Fnr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fnr({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_numbers_parse_with_both_check_digits() {
        // Synthetic numbers (no real person); the second a D-number (day + 40).
        for n in ["01010112377", "41010112360", "15038512363"] {
            assert_eq!(n.parse::<Fnr>().unwrap().expose(), n);
        }
    }

    #[test]
    fn each_check_digit_is_checked() {
        assert_eq!(
            "01010112387".parse::<Fnr>(),
            Err(FnrError::BadFirstCheckDigit)
        );
        assert_eq!(
            "01010112378".parse::<Fnr>(),
            Err(FnrError::BadSecondCheckDigit)
        );
        assert_eq!("0101011235".parse::<Fnr>(), Err(FnrError::WrongLength(10)));
        assert_eq!("0101011235x".parse::<Fnr>(), Err(FnrError::NotDigits));
    }

    #[test]
    fn display_and_debug_are_masked() {
        let fnr: Fnr = "15038512363".parse().unwrap();
        assert_eq!(fnr.to_string(), "150385*****");
        assert_eq!(format!("{fnr:?}"), "Fnr(150385*****)");
        assert!(!format!("{fnr} {fnr:?} {fnr:#?}").contains("12363"));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(s in ".{0,20}") {
            let _ = s.parse::<Fnr>();
        }

        #[test]
        fn one_changed_digit_is_refused(i in 0usize..11, delta in 1u32..10) {
            let good = "01010112377";
            let mut digits: Vec<u32> = good.chars().map(|c| c.to_digit(10).unwrap()).collect();
            digits[i] = (digits[i] + delta) % 10;
            let bad: String = digits.iter().map(|d| char::from_digit(*d, 10).unwrap()).collect();
            prop_assert!(bad.parse::<Fnr>().is_err());
        }
    }
}
