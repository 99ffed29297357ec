//! X.509 certificates that come with a key: the business certificate (virksomhetssertifikat) of a
//! PKCS#12 file or the `CERTIFICATE` blocks beside a PEM key.
//!
//! It reads what `check` shows and what the broker decides on (subject, organisation number,
//! issuer, validity) and keeps the DER for the grant's `x5c`. It never verifies a chain of trust:
//! that is Maskinporten's job; the broker only refuses what is sure to fail (expired, not yet
//! valid, or a certificate that is not the key's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;

use crate::tokens::token::rfc3339;

/// `serialNumber` in a subject: Buypass and Commfides put the organisation number here.
const SERIAL_NUMBER: &str = "2.5.4.5";
/// `organizationIdentifier` (eIDAS, `NTRNO-<orgnr>`): newer business certificates use it.
const ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";

/// A warning is due when a certificate expires within this long.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a certificate cannot be used. Messages name dates and subjects, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("a certificate is not valid DER X.509")]
    Malformed,
    #[error("the certificate's public key is not an RSA key")]
    NotRsa,
    #[error(
        "the certificate {subject:?} expired at {not_after}; get a renewed business certificate from the vendor"
    )]
    Expired { subject: String, not_after: String },
    #[error(
        "the certificate {subject:?} is not valid before {not_before} (check the clock of this host)"
    )]
    NotYetValid { subject: String, not_before: String },
    #[error("the certificate {subject:?} belongs to another key than the private key beside it")]
    NotTheKeys { subject: String },
}

/// One certificate, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Certificate {
    der: Vec<u8>,
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// From the subject's `serialNumber` or `organizationIdentifier`, when either holds one.
    pub(crate) org_number: Option<String>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    public_key: Option<RsaPublicKey>,
}

impl Certificate {
    pub(crate) fn from_der(der: &[u8]) -> Result<Certificate, CertificateError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| CertificateError::Malformed)?;
        let time = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            match u64::try_from(secs) {
                Ok(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s)),
                Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())),
            }
            .unwrap_or(UNIX_EPOCH)
        };
        let attribute = |oid: &str| {
            cert.subject()
                .iter_attributes()
                .find(|a| a.attr_type().to_id_string() == oid)
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned)
        };
        let org_number = attribute(ORGANIZATION_IDENTIFIER)
            .or_else(|| attribute(SERIAL_NUMBER))
            .and_then(|v| org_number_in(&v));
        Ok(Certificate {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            org_number,
            not_before: time(&cert.validity().not_before),
            not_after: time(&cert.validity().not_after),
            public_key: RsaPublicKey::from_public_key_der(cert.public_key().raw).ok(),
            der: der.to_vec(),
        })
    }

    /// The `x5c` entry: standard base64 (not URL-safe) of the DER, as RFC 7515 says.
    pub(crate) fn x5c(&self) -> String {
        STANDARD.encode(&self.der)
    }

    /// Refuse a certificate outside its validity period at `now`.
    pub(crate) fn check_validity(&self, now: SystemTime) -> Result<(), CertificateError> {
        if now < self.not_before {
            return Err(CertificateError::NotYetValid {
                subject: self.subject.clone(),
                not_before: rfc3339(self.not_before),
            });
        }
        if now >= self.not_after {
            return Err(CertificateError::Expired {
                subject: self.subject.clone(),
                not_after: rfc3339(self.not_after),
            });
        }
        Ok(())
    }

    /// Refuse a certificate whose public key is not `public`.
    pub(crate) fn check_key(&self, public: &RsaPublicKey) -> Result<(), CertificateError> {
        match &self.public_key {
            None => Err(CertificateError::NotRsa),
            Some(k) if k == public => Ok(()),
            Some(_) => Err(CertificateError::NotTheKeys {
                subject: self.subject.clone(),
            }),
        }
    }
}

/// The nine digits of a Norwegian organisation number in `serialNumber` (`991825827`) or
/// `organizationIdentifier` (`NTRNO-991825827`).
fn org_number_in(value: &str) -> Option<String> {
    let digits = value.trim().trim_start_matches("NTRNO-");
    (digits.len() == 9 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_numbers_in_both_subject_forms() {
        assert_eq!(org_number_in("991825827").as_deref(), Some("991825827"));
        assert_eq!(
            org_number_in("NTRNO-991825827").as_deref(),
            Some("991825827")
        );
        assert_eq!(org_number_in("12345"), None);
        assert_eq!(org_number_in("NTRNO-99182582x"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            Certificate::from_der(b"not a certificate"),
            Err(CertificateError::Malformed)
        ));
    }
}
