//! The credentials organisations hold, each made in the test as the real file would be: PEM,
//! private JWK, JWKS, and PKCS#12 business certificates (modern AES/PBKDF2 and legacy 3DES and
//! RC2-40 encryption) with a certificate chain; kid rules; certificate validity; grant lifetime;
//! rotation with `keygen --add-to`, `jwks` and a reload. The fake Maskinporten verifies each grant
//! with the certificate's key when `x5c` is present and refuses an unknown kid.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use maskinporten_broker::app::App;
use maskinporten_broker::config::Settings;
use p12_keystore::{
    Certificate as P12Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, LocalKeyId,
    MacAlgorithm, PrivateKey, PrivateKeyChain,
};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{Value, json};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::Encode;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

use crate::support::*;

const PASSWORD: &str = "p12-Secret-Passw0rd!";
const DAY: Duration = Duration::from_secs(86_400);
const CA_NAME: &str = "CN=Test Class 3 CA,O=Buypass AS-983163327,C=NO";
const LEAF_NAME: &str = "CN=TEST AS,serialNumber=991825827,O=TEST AS,C=NO";

fn private_key(fixture_name: &str) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(fixture(fixture_name)).unwrap()).unwrap()
}

/// A certificate for `key`'s public half, signed by `issuer` (name and key) or self-signed.
fn certificate(
    subject: &str,
    key: &RsaPrivateKey,
    issuer: Option<(&str, &RsaPrivateKey)>,
    valid: (SystemTime, SystemTime),
) -> Vec<u8> {
    let (profile, signer) = match issuer {
        None => (Profile::Root, key),
        Some((name, issuer_key)) => (
            Profile::Leaf {
                issuer: Name::from_str(name).unwrap(),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            issuer_key,
        ),
    };
    let validity = Validity {
        not_before: Time::try_from(valid.0).unwrap(),
        not_after: Time::try_from(valid.1).unwrap(),
    };
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(signer.clone());
    CertificateBuilder::new(
        profile,
        SerialNumber::from(42u32),
        validity,
        Name::from_str(subject).unwrap(),
        SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).unwrap(),
        &signer,
    )
    .unwrap()
    .build::<rsa::pkcs1v15::Signature>()
    .unwrap()
    .to_der()
    .unwrap()
}

/// A business certificate for the client key (`client-key.pem`), issued by a CA whose key is
/// `other-key.pem`, valid in `valid`: (leaf, CA) as DER.
pub(crate) fn business_certificate(valid: (SystemTime, SystemTime)) -> (Vec<u8>, Vec<u8>) {
    let now = SystemTime::now();
    let ca_key = private_key("other-key.pem");
    let ca = certificate(CA_NAME, &ca_key, None, (now - DAY, now + 3650 * DAY));
    let leaf = certificate(
        LEAF_NAME,
        &private_key("client-key.pem"),
        Some((CA_NAME, &ca_key)),
        valid,
    );
    (leaf, ca)
}

/// PEM of a DER certificate.
pub(crate) fn pem_certificate(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

pub(crate) fn valid_for(days: u32) -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now - DAY, now + days * DAY)
}

/// The client key and its certificate chain as PKCS#12 with this encryption.
fn pkcs12(chain: &(Vec<u8>, Vec<u8>), encryption: EncryptionAlgorithm) -> Vec<u8> {
    let key = private_key("client-key.pem").to_pkcs8_der().unwrap();
    let entry = PrivateKeyChain::new(
        LocalKeyId(vec![1, 2, 3, 4]),
        PrivateKey::from_der(key.as_bytes()).unwrap(),
        [
            P12Certificate::from_der(&chain.0).unwrap(),
            P12Certificate::from_der(&chain.1).unwrap(),
        ],
    );
    let mut store = KeyStore::new();
    store.add_entry("business", KeyStoreEntry::PrivateKeyChain(entry));
    let mac = match encryption {
        EncryptionAlgorithm::PbeWithHmacSha256AndAes256 => MacAlgorithm::HmacSha256,
        _ => MacAlgorithm::HmacSha1,
    };
    store
        .writer(PASSWORD)
        .encryption_algorithm(encryption)
        .mac_algorithm(mac)
        .write()
        .unwrap()
}

/// A private JWK of a fixture key, as Digdir's portal or mkjwk writes it.
pub(crate) fn private_jwk(fixture_name: &str, kid: Option<&str>) -> Value {
    let key = private_key(fixture_name);
    let b64 = |n: &rsa::BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
    let mut jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256",
        "n": b64(key.n()), "e": b64(key.e()), "d": b64(key.d()),
        "p": b64(&key.primes()[0]), "q": b64(&key.primes()[1]),
    });
    if let Some(kid) = kid {
        jwk["kid"] = kid.into();
    }
    jwk
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A business certificate valid over `valid` with its key, as a modern (AES) PKCS#12 file.
fn business_p12(dir: &Path, name: &str, valid: (SystemTime, SystemTime)) -> PathBuf {
    write(
        dir,
        name,
        pkcs12(
            &business_certificate(valid),
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
        ),
    )
}

/// `kid:` (when given) and `key:` lines for a key file.
fn credentials(kid: Option<&str>, path: &Path, more: &str) -> String {
    let kid = kid.map(|k| format!("kid: {k}\n")).unwrap_or_default();
    format!("{kid}key:\n  path: {}\n{more}", path.display())
}

/// An error and its causes on one line, as the binary prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Start a broker against fresh fakes with these credentials; the fakes are returned with it.
async fn start(credentials: &str, extra: &str) -> Result<TestEnv, String> {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let settings = Settings::from_yaml(&config_yaml_with(&mp, &altinn, credentials, extra))
        .map_err(|e| chain(&e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match App::spawn(settings.clone(), listener).await {
        Ok(app) => {
            app.shutdown().await;
            Ok(TestEnv::start_settings(mp, altinn, settings).await)
        }
        Err(e) => Err(chain(&e)),
    }
}

/// The refusal a broker with these credentials gives at start.
async fn refusal(credentials: &str) -> String {
    match start(credentials, "").await {
        Ok(_) => panic!("the broker started with {credentials}"),
        Err(e) => e,
    }
}

/// GET /token/admin must succeed; returns the grant the fake Maskinporten verified.
async fn grant_of(env: &TestEnv) -> SeenGrant {
    let r = env.get("/token/admin").await;
    let status = r.status();
    assert_eq!(
        status,
        200,
        "{}; {:?}",
        r.text().await.unwrap(),
        env.mp.violations()
    );
    assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    env.mp.grants().pop().expect("a verified grant")
}

#[tokio::test]
async fn pem_jwk_and_jwks_files_get_tokens_with_only_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let jwk = write(
        dir.path(),
        "key.json",
        private_jwk("client-key.pem", Some(KID)).to_string(),
    );
    let jwks = write(
        dir.path(),
        "keys.json",
        json!({"keys": [private_jwk("client-key.pem", Some(KID))]}).to_string(),
    );
    let pkcs1 = PathBuf::from(fixture("client-key-pkcs1.pem"));
    let pkcs8 = PathBuf::from(fixture("client-key.pem"));
    for (kid, path) in [
        (Some(KID), &pkcs8),
        (Some(KID), &pkcs1),
        (None, &jwk),  // the kid comes from the JWK
        (None, &jwks), // a single-key JWKS needs no kid either
    ] {
        let env = start(&credentials(kid, path, ""), "").await.unwrap();
        let grant = grant_of(&env).await;
        assert_eq!(grant.header.kid.as_deref(), Some(KID), "{}", path.display());
        assert!(grant.header.x5c.is_none());
    }
}

#[tokio::test]
async fn a_pem_key_without_kid_is_refused_naming_kid() {
    let err = refusal(&credentials(
        None,
        Path::new(&fixture("client-key.pem")),
        "",
    ))
    .await;
    assert!(err.starts_with("kid: is required for this key"), "{err}");
}

#[tokio::test]
async fn inline_jwk_as_json_or_base64_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let config = write(
        dir.path(),
        "broker.yaml",
        config_yaml_with(&mp, &altinn, "", ""),
    );
    let jwk = private_jwk("client-key.pem", Some(KID)).to_string();
    for inline in [
        jwk.clone(),
        STANDARD.encode(&jwk),
        URL_SAFE_NO_PAD.encode(&jwk),
    ] {
        let env = config::Map::from([("BROKER__KEY__JWK".to_owned(), inline)]);
        let settings = Settings::load_with_env(&config, Some(env)).unwrap();
        assert!(!format!("{settings:?}").contains(&jwk[..40]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::spawn(settings, listener).await.unwrap();
        let r = reqwest::get(format!("http://{}/token/admin", app.addr))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        app.shutdown().await;
    }
    assert_eq!(mp.grants().len(), 3);
    assert!(mp.violations().is_empty(), "{:?}", mp.violations());
}

#[tokio::test]
async fn a_jwks_kid_picks_the_key_and_an_unknown_kid_lists_the_kids_present() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = write(
        dir.path(),
        "keys.json",
        json!({"keys": [private_jwk("client-key.pem", Some("old")), private_jwk("other-key.pem", Some("new"))]})
            .to_string(),
    );
    let env = start(&credentials(Some("new"), &jwks, ""), "")
        .await
        .unwrap();
    env.mp.add_key("new", public_key("other-key.pub.pem"));
    assert_eq!(grant_of(&env).await.header.kid.as_deref(), Some("new"));

    let unknown = refusal(&credentials(Some("newest"), &jwks, "")).await;
    assert_eq!(
        unknown,
        "kid: \"newest\" matches no key in the file; the kids present are: old, new"
    );
    let ambiguous = refusal(&credentials(None, &jwks, "")).await;
    assert!(
        ambiguous.starts_with("kid: is required: the key file holds 2 keys (old, new)"),
        "{ambiguous}"
    );
}

#[tokio::test]
async fn the_fake_refuses_an_unknown_kid_as_digdir_does() {
    let env = TestEnv::start("").await;
    env.mp.register_key("someone-else", "client-key.pub.pem");
    let r = env.get("/token/admin").await;
    assert_ne!(r.status(), 200);
    assert!(
        env.mp.violations()[0].contains("Unknown key identifier"),
        "{:?}",
        env.mp.violations()
    );
}

#[tokio::test]
async fn pkcs12_in_modern_and_legacy_encryption_signs_with_x5c_leaf_first() {
    let dir = tempfile::tempdir().unwrap();
    let chain = business_certificate(valid_for(365));
    for (name, encryption) in [
        ("aes.p12", EncryptionAlgorithm::PbeWithHmacSha256AndAes256),
        (
            "3des.pfx",
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
        ),
        ("rc2-40.p12", EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc),
    ] {
        let path = write(dir.path(), name, pkcs12(&chain, encryption));
        // Not registered on the client: x5c alone.
        let env = start(
            &credentials(None, &path, &format!("  password: '{PASSWORD}'\n")),
            "",
        )
        .await
        .unwrap();
        let grant = grant_of(&env).await;
        assert_eq!(grant.header.kid, None, "{name}");
        assert_eq!(
            grant.header.x5c,
            Some(vec![STANDARD.encode(&chain.0), STANDARD.encode(&chain.1)]),
            "{name}: leaf first, then the chain, standard base64 DER"
        );
        // Registered: kid as well, and the fake checks it is the certificate's key.
        let env = start(
            &credentials(Some(KID), &path, &format!("  password: '{PASSWORD}'\n")),
            "",
        )
        .await
        .unwrap();
        let grant = grant_of(&env).await;
        assert_eq!(grant.header.kid.as_deref(), Some(KID), "{name}");
        assert!(grant.header.x5c.is_some());
    }
}

#[tokio::test]
async fn a_pem_key_followed_by_its_certificates_sends_them_as_x5c() {
    let dir = tempfile::tempdir().unwrap();
    let chain = business_certificate(valid_for(365));
    let pem_block = pem_certificate;
    let text = format!(
        "{}{}{}",
        std::fs::read_to_string(fixture("client-key.pem")).unwrap(),
        pem_block(&chain.0),
        pem_block(&chain.1)
    );
    let path = write(dir.path(), "key-and-chain.pem", text);
    let env = start(&credentials(Some(KID), &path, ""), "").await.unwrap();
    let grant = grant_of(&env).await;
    assert_eq!(
        grant.header.x5c,
        Some(vec![STANDARD.encode(&chain.0), STANDARD.encode(&chain.1)])
    );
}

#[tokio::test]
async fn a_legacy_pkcs12_made_by_openssl_is_read() {
    // tests/fixtures/business-legacy.p12: `openssl pkcs12 -export -legacy` (RC2-40 certificates,
    // 3DES key, SHA-1 MAC) of client-key.pem with a self-signed certificate valid until 2126,
    // password in business-legacy.password.
    let path = PathBuf::from(fixture("business-legacy.p12"));
    let more = format!("  password_file: {}\n", fixture("business-legacy.password"));
    let env = start(&credentials(Some(KID), &path, &more), "")
        .await
        .unwrap();
    let grant = grant_of(&env).await;
    assert_eq!(grant.header.x5c.map(|c| c.len()), Some(1));
}

#[tokio::test]
async fn the_pkcs12_password_comes_from_each_source_and_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let path = business_p12(dir.path(), "business.p12", valid_for(365));
    let password_file = write(dir.path(), "password", format!("{PASSWORD}\n"));
    let env = start(
        &credentials(
            Some(KID),
            &path,
            &format!("  password_file: {}\n", password_file.display()),
        ),
        "",
    )
    .await
    .unwrap();
    grant_of(&env).await;

    let config = write(
        dir.path(),
        "broker.yaml",
        config_yaml_with(&env.mp, &env.altinn, &credentials(Some(KID), &path, ""), ""),
    );
    let from_env = config::Map::from([("BROKER__KEY__PASSWORD".to_owned(), PASSWORD.to_owned())]);
    let settings = Settings::load_with_env(&config, Some(from_env)).unwrap();
    assert!(!format!("{settings:?}").contains(PASSWORD));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    App::spawn(settings, listener)
        .await
        .unwrap()
        .shutdown()
        .await;

    let missing = refusal(&credentials(Some(KID), &path, "")).await;
    assert!(
        missing.starts_with("key.path: is a PKCS#12 file and needs its password"),
        "{missing}"
    );
    let wrong = refusal(&credentials(
        Some(KID),
        &path,
        "  password: 'not-it-at-all'\n",
    ))
    .await;
    assert_eq!(
        wrong,
        "key.path: is a PKCS#12 file and the password does not open it (wrong password)"
    );
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    for (name, valid, expected) in [
        ("expired.p12", (now - 400 * DAY, now - DAY), "expired at"),
        (
            "future.p12",
            (now + DAY, now + 400 * DAY),
            "is not valid before",
        ),
    ] {
        let path = business_p12(dir.path(), name, valid);
        let err = refusal(&credentials(
            Some(KID),
            &path,
            &format!("  password: '{PASSWORD}'\n"),
        ))
        .await;
        assert!(
            err.starts_with("key.path: holds an unusable certificate: the certificate \"")
                && err.contains("CN=TEST AS\""),
            "{err}"
        );
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn a_certificate_near_expiry_warns_and_shows_on_metrics_and_in_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = business_p12(dir.path(), "business.p12", valid_for(10));
    let more = format!("  password: '{PASSWORD}'\n");
    let env = start(&credentials(Some(KID), &path, &more), "")
        .await
        .unwrap();
    let metrics = env.get("/metrics").await.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("broker_key_seconds_until_expiry{kid=\"test-kid\"} "))
        .expect("the key expiry gauge");
    let left: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(left > 9.0 * 86_400.0 && left <= 10.0 * 86_400.0, "{line}");

    // `check` loads the key like `serve` (and a reload) does: the warning and the details.
    let config = write(
        dir.path(),
        "broker.yaml",
        config_yaml_with(
            &env.mp,
            &env.altinn,
            &credentials(Some(KID), &path, &more),
            "log:\n  level: trace\n",
        ),
    );
    let out = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "check"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("expires within 30 days"), "{stderr}");
    for expected in [
        "key form:        PKCS#12 business certificate",
        "certificate:     C=NO, O=TEST AS, serialNumber=991825827, CN=TEST AS",
        "  org number:    991825827",
        "  issuer:        C=NO, O=Buypass AS-983163327, CN=Test Class 3 CA",
        "days left; renew it now)",
        "  x5c:           the leaf and 1 chain certificate(s)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
}

#[tokio::test]
async fn grant_lifetime_is_configurable_up_to_120_seconds() {
    let env = TestEnv::start("grant:\n  lifetime: 60s\n").await;
    let grant = grant_of(&env).await;
    let (iat, exp) = (
        grant.claims["iat"].as_u64().unwrap(),
        grant.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    let err = Settings::from_yaml("env: local\ngrant:\n  lifetime: 121s\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        chain(&err).contains("grant.lifetime: must be between 1s and 120s"),
        "{}",
        chain(&err)
    );
}

async fn bin(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn rotation_keygen_add_to_jwks_and_a_reload_switch_the_signing_key() {
    // The JWKS holds the key in use ("old"); keygen adds a fresh one to it.
    let dir = tempfile::tempdir().unwrap();
    let jwks = write(
        dir.path(),
        "keys.json",
        json!({"keys": [private_jwk("client-key.pem", Some("old"))]}).to_string(),
    );
    let jwks_arg = jwks.to_str().unwrap();
    let out = bin(&["keygen", "--add-to", jwks_arg]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("\"d\""), "no key material on stdout");
    let new_kid = stdout.split_once("set kid: ").unwrap().1;
    let kids = [
        "old".to_owned(),
        new_kid.split_whitespace().next().unwrap().to_owned(),
    ];
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&jwks).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = bin(&["jwks", "--file", jwks_arg]).await;
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .all(|k| k.get("d").is_none() && k["kty"] == "RSA" && k["use"] == "sig")
    );

    // Digdir holds both (the uploaded set); the broker signs with the first, then the second.
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    for key in keys {
        let public = maskinporten_broker::public_key_from_jwk(key).unwrap();
        mp.add_key(key["kid"].as_str().unwrap(), public);
    }
    let yaml = |kid: &str, listen: &str| {
        config_yaml_with(&mp, &altinn, &credentials(Some(kid), &jwks, ""), listen)
    };
    let broker = ServedBinary::start_yaml(|listen| yaml(&kids[0], listen)).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(broker.url(path)).send();
    assert_eq!(get("/token/admin").await.unwrap().status(), 200);
    assert_eq!(
        mp.grants().pop().unwrap().header.kid.as_deref(),
        Some(kids[0].as_str())
    );

    let listen = std::fs::read_to_string(&broker.config).unwrap();
    let listen = listen
        .lines()
        .find(|l| l.starts_with("listen:"))
        .unwrap()
        .to_owned()
        + "\n";
    std::fs::write(&broker.config, yaml(&kids[1], &listen)).unwrap();
    signal(broker.child.id().unwrap(), "HUP");
    let mut switched = false;
    for _ in 0..100 {
        let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
        if ready["kid"] == kids[1].as_str() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        switched,
        "the new kid is in use within 5 s, without a restart"
    );
    assert_eq!(get("/token/altinn").await.unwrap().status(), 200);
    assert_eq!(
        mp.grants().pop().unwrap().header.kid.as_deref(),
        Some(kids[1].as_str())
    );
    assert!(mp.violations().is_empty(), "{:?}", mp.violations());

    // Digdir takes at most 5 keys per client: a sixth is refused.
    let full: Vec<Value> = (1..=5)
        .map(|i| private_jwk("client-key.pem", Some(&format!("k{i}"))))
        .collect();
    let full = write(dir.path(), "full.json", json!({ "keys": full }).to_string());
    let sixth = bin(&["keygen", "--add-to", full.to_str().unwrap()]).await;
    assert!(!sixth.status.success());
    assert!(String::from_utf8_lossy(&sixth.stderr).contains("already holds 5 keys"));
}

#[tokio::test]
async fn key_errors_print_once_on_one_line_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "broker.yaml",
        "env: test\nclient_id: c\nkid: k\nkey:\n  path: /nonexistent/key.p12\n  password: 'p-Secret-9'\n",
    );
    let out = bin(&["--config", config.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("error: key.path: cannot read /nonexistent/key.p12: No such file"),
        "{stderr}"
    );
    assert!(!stderr.contains("p-Secret-9"));

    let jwk = private_jwk("client-key.pem", Some("k"));
    let mut broken = jwk.clone();
    broken["e"] = json!(65537);
    let path = write(dir.path(), "key.json", broken.to_string());
    let err = refusal(&credentials(None, &path, "")).await;
    assert_eq!(err, "key.path: is not a usable JWK: \"e\" is not base64url");
    let d = jwk["d"].as_str().unwrap();
    let mut public = jwk.clone();
    public.as_object_mut().unwrap().remove("d");
    let path = write(dir.path(), "public.json", public.to_string());
    let err = refusal(&credentials(None, &path, "")).await;
    assert!(err.contains("holds a public JWK (kid \"k\")"), "{err}");
    assert!(!err.contains(&d[..20]));
}

/// Credentials and endpoints for a broker that must discover the token endpoint of `mp`.
fn discovering(altinn: &FakeAltinn, endpoints: &str) -> Settings {
    Settings::from_yaml(&format!(
        "env: test\nclient_id: {CLIENT_ID}\nkid: {KID}\nkey:\n  path: {}\nendpoints:\n  altinn_exchange_url: {}\n{endpoints}",
        fixture("client-key.pem"),
        altinn.exchange_url()
    ))
    .unwrap()
}

async fn spawn(settings: Settings) -> Result<App, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    App::spawn(settings, listener).await.map_err(|e| chain(&e))
}

#[tokio::test]
async fn a_custom_issuer_reads_its_token_endpoint_from_the_metadata_or_refuses_to_start() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let issuer = format!("  issuer: {}\n", mp.issuer());
    let app = spawn(discovering(&altinn, &issuer)).await.unwrap();
    assert_eq!(mp.metadata_calls(), 1, "read once at start");
    let r = reqwest::get(format!("http://{}/token/admin", app.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mp.metadata_calls(), 1, "never on a token request");
    assert_eq!(mp.grants().len(), 1);
    app.shutdown().await;

    mp.set_metadata(Metadata::WrongIssuer);
    let err = spawn(discovering(&altinn, &issuer)).await.err().unwrap();
    assert!(
        err.starts_with("endpoints.issuer: the issuer metadata at ")
            && err.contains("names issuer \"https://maskinporten.no/\", not the configured"),
        "{err}"
    );
    mp.set_metadata(Metadata::Down);
    let err = spawn(discovering(&altinn, &issuer)).await.err().unwrap();
    assert!(err.contains("answered HTTP 503"), "{err}");

    // Without discovery a custom issuer needs its token_url.
    let off = format!("{issuer}  discovery: false\n");
    let err = spawn(discovering(&altinn, &off)).await.err().unwrap();
    assert!(err.contains("endpoints.token_url: is required"), "{err}");
    let calls = mp.metadata_calls();
    let explicit = format!("{off}  token_url: {}\n", mp.token_url());
    let app = spawn(discovering(&altinn, &explicit)).await.unwrap();
    let r = reqwest::get(format!("http://{}/token/admin", app.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mp.metadata_calls(), calls, "discovery: false reads nothing");
    app.shutdown().await;
}

#[tokio::test]
async fn test_and_prod_fall_back_to_the_built_in_endpoints_when_the_metadata_is_unreadable() {
    let logs = LogCapture::start(tracing::Level::INFO);
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    // Every upstream call goes to a proxy on a closed loopback port: nothing leaves the machine.
    let mut settings = discovering(&altinn, "");
    settings.http_client.proxy = Some(format!("http://127.0.0.1:{}", free_port()).parse().unwrap());
    let app = spawn(settings)
        .await
        .expect("starts with the built-in endpoints");
    let ready: Value = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["issuer"], "https://test.maskinporten.no/");
    // The built-in issuer holds either way: the log shows that discovery was tried and failed.
    let logs = logs.text();
    assert!(
        logs.contains("issuer metadata unreadable: using the built-in endpoints"),
        "{logs}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_embedded_simulator_serves_the_metadata_the_broker_discovers() {
    let logs = LogCapture::start(tracing::Level::INFO);
    let settings = Settings::from_yaml("env: local\nendpoints:\n  discovery: true\n").unwrap();
    let app = spawn(settings).await.unwrap();
    let r = reqwest::get(format!("http://{}/token/admin", app.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Discovery in env: local tolerates a failure (the simulator's endpoints are built in), so
    // the 200 alone proves nothing: the metadata was read, and names the simulator's endpoint.
    let ready: Value = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = ready["issuer"].as_str().unwrap().to_owned();
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains("read the issuer metadata"))
        .unwrap_or_else(|| panic!("discovery did not read the metadata:\n{logs}"));
    assert!(
        line.contains(&format!("token_endpoint={}", issuer.trim_end_matches('/'))),
        "{issuer}: {line}"
    );
    assert!(!logs.contains("issuer metadata unreadable"), "{logs}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_certificate_near_expiry_warns_at_start_and_at_each_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = business_p12(dir.path(), "business.p12", valid_for(10));
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let more = format!("  password: '{PASSWORD}'\n");
    let mut broker = ServedBinary::start_yaml(|listen| {
        config_yaml_with(&mp, &altinn, &credentials(Some(KID), &path, &more), listen)
    })
    .await;
    // Reload to another kid registered for the same certificate key: readyz shows when it is done.
    mp.add_key("renewed", public_key("client-key.pub.pem"));
    let listen = std::fs::read_to_string(&broker.config).unwrap();
    let listen = listen
        .lines()
        .find(|l| l.starts_with("listen:"))
        .unwrap()
        .to_owned()
        + "\n";
    let yaml = config_yaml_with(
        &mp,
        &altinn,
        &credentials(Some("renewed"), &path, &more),
        &listen,
    );
    std::fs::write(&broker.config, yaml).unwrap();
    // A token first, as a running broker would have served (the reload watcher is running by
    // then); then SIGHUP (the file change may trigger a reload of its own). readyz shows when
    // the reload is done.
    let http = reqwest::Client::new();
    let r = http.get(broker.url("/token/admin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    signal(broker.child.id().unwrap(), "HUP");
    for _ in 0..100 {
        let ready: Value = fetch_json(&http, &broker.url("/readyz")).await;
        if ready["kid"] == "renewed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(broker.child.id().unwrap(), "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(10), broker.child.wait()).await;
    let log = stderr_of(&mut broker.child).await;
    // Once at start, and once per reload.
    assert!(log.matches("expires within 30 days").count() >= 2, "{log}");
    assert!(log.contains("expires within 30 days: order a renewed one from the vendor and switch key.path kid=\"renewed\""), "{log}");
    assert!(log.contains("reloaded"), "{log}");
    assert!(!log.contains(PASSWORD));
}

#[tokio::test]
async fn rs384_and_rs512_grants_are_signed_and_verified_with_their_algorithm() {
    for alg in ["RS384", "RS512"] {
        let path = std::path::PathBuf::from(fixture("client-key.pem"));
        let env = start(
            &credentials(Some(KID), &path, &format!("  algorithm: {alg}\n")),
            "",
        )
        .await
        .unwrap();
        env.mp.expect_scope("altinn:authentication/systemregister.write altinn:authentication/systemuser.request.read altinn:authentication/systemuser.request.write");
        env.get_json("/token/admin", 200).await;
        let grant = env.mp.grants().pop().expect("the fake accepted the grant");
        assert_eq!(format!("{:?}", grant.header.alg), alg);
        assert!(env.mp.violations().is_empty(), "{:?}", env.mp.violations());
    }
}
