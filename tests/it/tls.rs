//! TLS and mTLS on the listener: a CA, server and client certificates made in the test; clients
//! matched by the SPIFFE ID or the subject of their verified certificate; API keys alongside with
//! `client_auth: optional`; no connection without a certificate with `required`; changed files
//! served to new connections; `healthcheck` and the probes over TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType};

use crate::support::*;

const API_KEY: &str = "tls-batch-key";
const SPIFFE_ID: &str = "spiffe://example.org/ns/team-a/sa/invoicing";

/// A CA that signs certificates.
pub(crate) struct Ca {
    pub(crate) cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// (certificate PEM, key PEM) for `params`.
    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn server(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "broker");
        self.sign(params)
    }

    fn client(&self, cn: &str, uri: Option<&str>) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        self.sign(params)
    }
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An HTTPS client trusting `ca`, presenting `identity` (cert, key) if given.
fn https(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .pool_max_idle_per_host(0)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// The status of GET `url`, or `None` when no connection could be made (refused handshake).
async fn status(client: reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// The server's certificate and key (from `server_ca`) and the clients' CA, written to `dir`.
fn write_tls_files(dir: &Path, server_ca: &Ca, clients_ca: &Ca) {
    let (cert, key) = server_ca.server();
    write(dir, "server.pem", &cert);
    write(dir, "server.key", &key);
    write(dir, "clients-ca.pem", &clients_ca.cert.pem());
}

fn tls_yaml(dir: &Path, auth: &str) -> String {
    format!(
        "server:\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n    client_auth: {auth}\n\
clients:\n  - name: invoicing\n    identity: {{spiffe_id: \"{SPIFFE_ID}\"}}\n    profiles: [admin]\n  - name: reports\n    identity: {{certificate_subject: \"CN=reports,O=Example\"}}\n    profiles: [admin]\n  - name: batch\n    key_sha256: {}\n    profiles: ['*']\nlog:\n  level: info\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("clients-ca.pem").display(),
        maskinporten_broker::hash_api_key(API_KEY),
    )
}

#[tokio::test]
async fn mtls_clients_are_known_by_spiffe_id_or_subject_and_api_keys_work_alongside() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca, stranger_ca) = (
        Ca::new("server ca"),
        Ca::new("clients ca"),
        Ca::new("stranger"),
    );
    write_tls_files(dir.path(), &server_ca, &clients_ca);
    let env = TestEnv::start(&tls_yaml(dir.path(), "optional")).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", env.app.addr.port());

    let invoicing = clients_ca.client("invoicing", Some(SPIFFE_ID));
    assert_eq!(
        status(https(&server_ca, Some(&invoicing)), &url("/token/admin")).await,
        Some(200)
    );
    let reports = clients_ca.client("reports", None);
    assert_eq!(
        status(https(&server_ca, Some(&reports)), &url("/token/admin")).await,
        Some(200)
    );
    // Verified, but named by no client: as if no certificate was sent.
    let other = clients_ca.client("other", Some("spiffe://example.org/ns/x/sa/y"));
    assert_eq!(
        status(https(&server_ca, Some(&other)), &url("/token/admin")).await,
        Some(401)
    );
    // (client_auth optional) no certificate: the API key works, nothing else does.
    let plain = https(&server_ca, None);
    let r = plain
        .get(url("/token/admin"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        plain
            .get(url("/token/admin"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The probes answer over TLS without a certificate (the kubelet sends none).
    assert_eq!(
        plain.get(url("/readyz")).send().await.unwrap().status(),
        200
    );
    // A certificate of another CA is refused in the handshake.
    let stranger = stranger_ca.client("invoicing", Some(SPIFFE_ID));
    assert_eq!(
        status(https(&server_ca, Some(&stranger)), &url("/healthz")).await,
        None
    );
    // Plain HTTP to the TLS listener gets no answer.
    let plain_http =
        reqwest::get(format!("http://127.0.0.1:{}/healthz", env.app.addr.port())).await;
    assert!(!matches!(plain_http, Ok(r) if r.status().is_success()));

    // healthcheck over TLS: with the CA it passes, without it fails.
    let ca_file = write(dir.path(), "server-ca.pem", &server_ca.cert.pem());
    let check = |args: Vec<String>| async move {
        tokio::process::Command::new(BIN)
            .arg("healthcheck")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap()
            .status
            .success()
    };
    assert!(
        check(vec![
            "--url".into(),
            url("/readyz"),
            "--ca".into(),
            ca_file.display().to_string()
        ])
        .await
    );
    assert!(!check(vec!["--url".into(), url("/readyz")]).await);
    env.app.shutdown().await;
}

#[tokio::test]
async fn required_client_auth_refuses_connections_without_a_certificate_and_changed_files_are_served()
 {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca) = (Ca::new("server ca"), Ca::new("clients ca"));
    write_tls_files(dir.path(), &server_ca, &clients_ca);
    let env = TestEnv::start(&tls_yaml(dir.path(), "required")).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", env.app.addr.port());
    assert_eq!(
        status(https(&server_ca, None), &url("/healthz")).await,
        None
    );
    let invoicing = clients_ca.client("invoicing", Some(SPIFFE_ID));
    assert_eq!(
        status(https(&server_ca, Some(&invoicing)), &url("/token/admin")).await,
        Some(200)
    );
    // healthcheck with --cert/--key, as an exec probe does with client_auth required.
    let files = [
        write(dir.path(), "server-ca.pem", &server_ca.cert.pem()),
        write(dir.path(), "probe.pem", &invoicing.0),
        write(dir.path(), "probe.key", &invoicing.1),
    ];
    let probe = tokio::process::Command::new(BIN)
        .arg("healthcheck")
        .args(["--url", &url("/healthz"), "--ca"])
        .arg(&files[0])
        .arg("--cert")
        .arg(&files[1])
        .arg("--key")
        .arg(&files[2])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // A renewed server certificate from another CA: new connections get it.
    let renewed_ca = Ca::new("renewed server ca");
    let (cert, key) = renewed_ca.server();
    write(dir.path(), "server.key", &key);
    write(dir.path(), "server.pem", &cert);
    let mut seen = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(r) = https(&renewed_ca, Some(&invoicing))
            .get(url("/healthz"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            seen = true;
            break;
        }
    }
    assert!(seen, "the renewed certificate was served within 4 s");
    assert_eq!(
        status(https(&server_ca, Some(&invoicing)), &url("/healthz")).await,
        None
    );
    env.app.shutdown().await;
}

#[tokio::test]
async fn client_auth_without_a_client_ca_is_refused() {
    let problems = maskinporten_broker::config::Settings::from_yaml(
        "env: local\nserver:\n  tls:\n    cert: a.pem\n    key: a.key\n    client_auth: required\n",
    )
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    assert!(problems.contains("server.tls.client_ca"), "{problems}");
}

/// A client certificate of `ca` whose subject is exactly these attributes.
fn client_with_subject(ca: &Ca, attributes: &[(DnType, &str)]) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    for (kind, value) in attributes {
        params.distinguished_name.push(kind.clone(), *value);
    }
    ca.sign(params)
}

#[tokio::test]
async fn certificate_subjects_match_attribute_by_attribute_with_rfc4514_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca) = (Ca::new("server ca"), Ca::new("clients ca"));
    write_tls_files(dir.path(), &server_ca, &clients_ca);
    let env = TestEnv::start(&format!(
        "server:\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n    client_auth: optional\n\
clients:\n  - name: reports\n    identity: {{certificate_subject: 'CN=reports,O=Example'}}\n    profiles: [admin]\n  - name: svc\n    identity: {{certificate_subject: 'CN=svc,O=Example\\, Inc.'}}\n    profiles: [admin]\n",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display(),
        dir.path().join("clients-ca.pem").display(),
    ))
    .await;
    let url = format!("https://127.0.0.1:{}/token/admin", env.app.addr.port());
    // One CN that reads like two attributes is one attribute: not the client `reports`.
    let forged = client_with_subject(&clients_ca, &[(DnType::CommonName, "reports,O=Example")]);
    assert_eq!(
        status(https(&server_ca, Some(&forged)), &url).await,
        Some(401)
    );
    // The escaped comma is part of O's value.
    let svc = client_with_subject(
        &clients_ca,
        &[
            (DnType::CommonName, "svc"),
            (DnType::OrganizationName, "Example, Inc."),
        ],
    );
    assert_eq!(status(https(&server_ca, Some(&svc)), &url).await, Some(200));
    let reports = clients_ca.client("reports", None);
    assert_eq!(
        status(https(&server_ca, Some(&reports)), &url).await,
        Some(200)
    );
    env.app.shutdown().await;
}

#[tokio::test]
async fn tls_files_changed_into_ones_that_do_not_load_keep_the_previous_ones() {
    let logs = LogCapture::start(tracing::Level::ERROR);
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, clients_ca) = (Ca::new("server ca"), Ca::new("clients ca"));
    write_tls_files(dir.path(), &server_ca, &clients_ca);
    let env = TestEnv::start(&tls_yaml(dir.path(), "optional")).await;
    let url = format!("https://127.0.0.1:{}/healthz", env.app.addr.port());
    assert_eq!(status(https(&server_ca, None), &url).await, Some(200));
    // A half-written renewal: the certificate is not PEM, the key another one's.
    write(
        dir.path(),
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    write(
        dir.path(),
        "server.key",
        &KeyPair::generate().unwrap().serialize_pem(),
    );
    // The files are looked at once a second: past that, new connections still get the old ones.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(status(https(&server_ca, None), &url).await, Some(200));
    }
    let log = logs.text();
    assert!(
        log.contains("server.tls files changed but do not load"),
        "{log}"
    );
    env.app.shutdown().await;
}
