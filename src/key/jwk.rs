//! JSON Web Keys: a private JWK (Digdir's self-service portal, mkjwk, texas's
//! `MASKINPORTEN_CLIENT_JWK`), a JWKS holding several (key rotation), the inline `key.jwk` form
//! (JSON or base64 of it), and the public JWK/JWKS the broker prints for upload.
//!
//! Parsing never lets serde quote the input: a field of the wrong type would otherwise put key
//! material into the message. Public JWKs go through `jsonwebtoken::jwk`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
    RSAKeyParameters, RSAKeyType,
};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value};

use super::{Algorithm, Candidate, KeyError};

/// Whether `bytes` look like JSON (an object, after whitespace).
pub(super) fn looks_like(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The inline `key.jwk`: the JSON itself, or base64 (standard or URL-safe, padded or not) of it.
pub(super) fn inline(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim();
    if looks_like(text.as_bytes()) {
        return Ok(text.as_bytes().to_vec());
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .filter(|bytes| looks_like(bytes))
        .ok_or(KeyError::InlineJwk)
}

/// A JWK or a JWKS: whether it is a set, and every private RSA key in it, with its `kid`.
pub(super) fn parse(bytes: &[u8]) -> Result<(bool, Vec<Candidate>), KeyError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| KeyError::Json {
        line: e.line(),
        column: e.column(),
    })?;
    match value.get("keys") {
        Some(Value::Array(keys)) => Ok((
            true,
            keys.iter().map(private_key).collect::<Result<_, _>>()?,
        )),
        Some(_) => Err(KeyError::Jwk("\"keys\" is not an array")),
        None => Ok((false, vec![private_key(&value)?])),
    }
}

fn private_key(jwk: &Value) -> Result<Candidate, KeyError> {
    let jwk = jwk
        .as_object()
        .ok_or(KeyError::Jwk("a key is not a JSON object"))?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(KeyError::Jwk("\"kid\" is not a string")),
    };
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {}
        Some(other) => {
            return Err(KeyError::JwkNotRsa {
                kty: other.chars().take(16).collect(),
            });
        }
        None => return Err(KeyError::Jwk("\"kty\" is missing")),
    }
    if !jwk.contains_key("d") {
        return Err(KeyError::JwkPublicOnly { kid });
    }
    let n = number(jwk, "n")?.ok_or(KeyError::Jwk("\"n\" is missing"))?;
    let e = number(jwk, "e")?.ok_or(KeyError::Jwk("\"e\" is missing"))?;
    let d = number(jwk, "d")?.ok_or(KeyError::Jwk("\"d\" is missing"))?;
    let primes = match (number(jwk, "p")?, number(jwk, "q")?) {
        (Some(p), Some(q)) => vec![p, q],
        _ => Vec::new(),
    };
    let private = RsaPrivateKey::from_components(n, e, d, primes)
        .map_err(|_| KeyError::Jwk("n, e, d, p and q are not one RSA key"))?;
    Ok(Candidate {
        kid,
        private,
        chain: Vec::new(),
    })
}

/// A base64url big-endian integer member, if present.
fn number(jwk: &Map<String, Value>, name: &'static str) -> Result<Option<BigUint>, KeyError> {
    let Some(value) = jwk.get(name) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|text| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
        .map(|bytes| Some(BigUint::from_bytes_be(&bytes)))
        .ok_or(KeyError::JwkMember(name))
}

fn b64(n: &BigUint) -> String {
    URL_SAFE_NO_PAD.encode(n.to_bytes_be())
}

/// A public RSA key as a JWK (`kty`, `n`, `e`, `kid`, `alg`, `use`): the form Digdir's portal and
/// JWKS endpoints take.
pub(crate) fn public_jwk(key: &RsaPublicKey, kid: Option<&str>, algorithm: Algorithm) -> Jwk {
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(match algorithm {
                Algorithm::RS256 => KeyAlgorithm::RS256,
                Algorithm::RS384 => KeyAlgorithm::RS384,
                Algorithm::RS512 => KeyAlgorithm::RS512,
            }),
            key_id: kid.map(str::to_owned),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::RSA(RSAKeyParameters {
            key_type: RSAKeyType::RSA,
            n: b64(key.n()),
            e: b64(key.e()),
        }),
    }
}

/// Parse a public JWK (`kty` RSA, `n`, `e`) back into a key.
pub fn public_key_from_jwk(jwk: &Value) -> Option<RsaPublicKey> {
    let jwk: Jwk = serde_json::from_value(jwk.clone()).ok()?;
    let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
        return None;
    };
    let part = |text: &str| {
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .map(|b| BigUint::from_bytes_be(&b))
    };
    RsaPublicKey::new(part(&rsa.n)?, part(&rsa.e)?).ok()
}

/// The public JWKS of some keys: the set to upload to Digdir.
pub(crate) fn public_jwks<'a>(
    keys: impl IntoIterator<Item = (&'a RsaPublicKey, Option<&'a str>)>,
    algorithm: Algorithm,
) -> JwkSet {
    JwkSet {
        keys: keys
            .into_iter()
            .map(|(key, kid)| public_jwk(key, kid, algorithm))
            .collect(),
    }
}

/// The private key as a JWK, for `keygen --add-to` to write into a JWKS file. The returned value
/// holds key material: write it to a private file and nowhere else.
pub(crate) fn private_jwk(key: &RsaPrivateKey, kid: &str, algorithm: Algorithm) -> Value {
    let mut jwk = serde_json::to_value(public_jwk(&key.to_public_key(), Some(kid), algorithm))
        .unwrap_or_default();
    if let Some(object) = jwk.as_object_mut() {
        object.insert("d".into(), b64(key.d()).into());
        let primes = key.primes();
        if let [p, q] = primes {
            object.insert("p".into(), b64(p).into());
            object.insert("q".into(), b64(q).into());
        }
        if let (Some(dp), Some(dq), Some(qi)) = (key.dp(), key.dq(), key.crt_coefficient()) {
            object.insert("dp".into(), b64(dp).into());
            object.insert("dq".into(), b64(dq).into());
            object.insert("qi".into(), b64(&qi).into());
        }
    }
    jwk
}
