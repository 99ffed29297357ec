//! What each subcommand other than `serve` does. Output for people and scripts goes to stdout,
//! problems to stderr (through the returned error); the exit code says which.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::app;
use crate::config::{Environment, Settings};
use crate::http::problem::ApiError;
use crate::key::secret::Secret;
use crate::key::store::{self, load_key};
use crate::key::{Algorithm, Form, KeyFile, MAX_KEYS_PER_CLIENT, SigningKey, public_key_from_jwk};
use crate::policy::access::hash_api_key;
use crate::policy::org::OrgNumber;
use crate::simulator::{self, RegisteredClient, SimulatorConfig};
use crate::tokens::answer::TokenResponse;

fn parse_org(org: Option<&str>) -> anyhow::Result<Option<OrgNumber>> {
    org.map(|o| {
        o.parse::<OrgNumber>()
            .with_context(|| format!("--org {o:?}"))
    })
    .transpose()
}

/// `token PROFILE [--org N] [--json]`
pub async fn token(
    settings: Settings,
    profile: &str,
    org: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let org = parse_org(org)?;
    let built = app::build(settings).await?;
    let (tokens, broker) = (&built.state.tokens, built.state.broker());
    let (profile, key) = broker.resolve(profile, org)?;
    let (token, _) = tokens
        .get(&key, None)
        .await
        .map_err(|e| anyhow::anyhow!(ApiError::from(e).problem().detail))?;
    let mut out = std::io::stdout().lock();
    if json {
        let now = broker.clock().now();
        serde_json::to_writer_pretty(&mut out, &TokenResponse::new(&token, &key, &profile, now))?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", token.value.expose())?;
    }
    tokens.shutdown();
    Ok(())
}

/// `grant PROFILE [--org N]`: sign, print, do not send.
pub async fn grant(settings: Settings, profile: &str, org: Option<&str>) -> anyhow::Result<()> {
    let org = parse_org(org)?;
    let validated = settings.validate()?;
    let keys = store::load_keys(&settings).await?;
    // The same profile and system-user rules, and the same grant, as the server's.
    let http = crate::upstream::client::http_client(&settings.http_client)?;
    let generation = app::generation(&settings, validated, keys, None, Vec::new(), http);
    let (profile, key) = generation.resolve(profile, org)?;
    let grant = generation
        .fetcher(&key.client)?
        .grant(&profile, key.org.as_ref(), std::time::SystemTime::now())
        .await?;
    println!("{}", grant.expose());
    Ok(())
}

/// A fresh kid: the date and a random suffix, unique enough for Digdir's global namespace.
fn fresh_kid() -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "broker-{date}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// `keygen --out DIR --bits N`, or `keygen --add-to JWKS_FILE` for rotation.
pub fn keygen(out: &Path, bits: usize, add_to: Option<&Path>) -> anyhow::Result<()> {
    let kid = fresh_kid();
    if let Some(jwks) = add_to {
        return add_to_jwks(jwks, || SigningKey::generate(bits, &kid, Algorithm::RS256));
    }
    let key = SigningKey::generate(bits, &kid, Algorithm::RS256)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let pem_path = out.join("maskinporten-key.pem");
    let jwk_path = out.join("maskinporten-key.jwk.json");
    for path in [&pem_path, &jwk_path] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key (choose another --out)",
                path.display()
            );
        }
    }
    write_private(&pem_path, key.private_pem()?.expose())?;
    std::fs::write(
        &jwk_path,
        serde_json::to_string_pretty(&key.public_jwk())? + "\n",
    )
    .with_context(|| format!("cannot write {}", jwk_path.display()))?;
    println!(
        "wrote {} (private key, mode 0600) and {} (public JWK)",
        pem_path.display(),
        jwk_path.display()
    );
    println!(
        "upload the JWK to your client in Digdir's self-service portal, then put this in broker.yaml:"
    );
    println!();
    println!("kid: {kid}");
    println!("key:");
    println!("  path: {}", pem_path.display());
    Ok(())
}

/// `keygen --pkcs11` / `keygen --vault-transit`: create the key where the config's `key.pkcs11`
/// or `key.vault_transit` points (never over an existing one), read it back as the broker will
/// (public key, probe signature) and print its public JWK with the config's `kid`, or a fresh
/// one to put there.
pub async fn keygen_outside(settings: Settings, bits: usize, vault: bool) -> anyhow::Result<()> {
    let (kid, fresh) = match &settings.kid {
        Some(kid) => (kid.clone(), false),
        None => (fresh_kid(), true),
    };
    let key = crate::key::create_outside(
        settings.key.outside(),
        vault,
        &kid,
        bits,
        settings.http_client.timeout,
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&key.public_jwk())?);
    eprintln!(
        "created {}: upload the JWK above to your client in Digdir's self-service portal",
        key.location().unwrap_or_default()
    );
    if fresh {
        eprintln!("then set kid: {kid} in broker.yaml (or BROKER__KID)");
    }
    Ok(())
}

/// Add `key` to the private JWKS at `path` (created when absent), at most
/// [`MAX_KEYS_PER_CLIENT`] keys, replacing the file atomically with mode 0600.
fn add_to_jwks(
    path: &Path,
    generate: impl FnOnce() -> Result<SigningKey, crate::key::KeyError>,
) -> anyhow::Result<()> {
    let mut keys: Vec<serde_json::Value> = if path.exists() {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = KeyFile::parse(&bytes, None)
            .with_context(|| format!("{} is not a private JWKS", path.display()))?;
        if file.form != Form::Jwks {
            bail!(
                "{} is not a JWKS ({{\"keys\": [...]}}); --add-to extends a JWKS file",
                path.display()
            );
        }
        if file.len() >= MAX_KEYS_PER_CLIENT {
            bail!(
                "{} already holds {} keys, Digdir's limit per client; remove the oldest (after switching kid away from it) first",
                path.display(),
                file.len()
            );
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)?;
        value["keys"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let key = generate()?;
    keys.push(key.private_jwk());
    let text =
        Secret::new(serde_json::to_string_pretty(&serde_json::json!({ "keys": keys }))? + "\n");
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(format!(".{}.new", uuid::Uuid::new_v4().simple()));
    write_private(&temp, text.expose())?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    let kid = key.kid().unwrap_or_default();
    println!(
        "added kid {kid} to {} (now {} keys, mode 0600)",
        path.display(),
        keys.len()
    );
    println!(
        "1. upload the public set to Digdir: maskinporten-broker jwks --file {}",
        path.display()
    );
    println!("2. wait until Digdir has it (up to 2 minutes)");
    println!("3. set kid: {kid} in broker.yaml; the broker reloads and signs with the new key");
    println!("4. later, remove the old key from the file and upload the set again");
    Ok(())
}

/// `jwks [--file PATH]`: the public JWKS of every key in the file (or the configured key
/// source): the set to upload to Digdir. A key in an HSM or Vault: its public JWK, read from
/// there, with the configured kid.
pub async fn jwks(settings: Option<&Settings>, file: Option<&Path>) -> anyhow::Result<()> {
    let algorithm = settings.map(|s| s.key.algorithm).unwrap_or_default();
    if let (None, Some(settings)) = (file, settings)
        && (settings.key.pkcs11.is_some() || settings.key.vault_transit.is_some())
    {
        let key = load_key(settings).await?;
        let set = serde_json::json!({"keys": [key.public_jwk()]});
        println!("{}", serde_json::to_string_pretty(&set)?);
        return Ok(());
    }
    let keys = match (file, settings) {
        (Some(path), _) => match KeyFile::read(path, None) {
            Ok(file) => file,
            // A read error names the path already; the others say what the content is not.
            Err(e @ crate::key::KeyError::Read { .. }) => return Err(e.into()),
            Err(e) => return Err(anyhow::Error::new(e).context(path.display().to_string())),
        },
        (None, Some(settings)) => match store::read_key_file(settings)? {
            Some((_, file)) => file,
            None => bail!("the config names no key (key.path, key.pem or key.jwk)"),
        },
        (None, None) => bail!("pass --file PATH or a --config with a key"),
    };
    if keys.len() > MAX_KEYS_PER_CLIENT {
        bail!(
            "the file holds {} keys; Digdir accepts at most {MAX_KEYS_PER_CLIENT} per client: remove the oldest first",
            keys.len()
        );
    }
    let set = keys.public_jwks(algorithm);
    println!("{}", serde_json::to_string_pretty(&set)?);
    Ok(())
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

/// `check [--online]`
pub async fn check(settings: Settings, config_path: &Path, online: bool) -> anyhow::Result<()> {
    let validated = settings.validate()?;
    let keys = store::load_keys(&settings).await?;
    let key = keys.default.clone();
    verify_key_pair(&key).await?;
    println!(
        "config:          {} (env {})",
        config_path.display(),
        settings.env
    );
    println!("client_id:       {}", settings.client_id());
    print_key(&key);
    for (client, key) in settings.named_clients().zip(&keys.named) {
        verify_key_pair(key).await?;
        println!(
            "maskinporten_clients.{}: client_id {}, kid {}, issuer {}",
            client.name,
            client.client_id,
            key.kid().unwrap_or("none (x5c only)"),
            client.endpoints(None).issuer
        );
    }
    if settings.env == Environment::Local {
        println!("endpoints:       the embedded simulator on a loopback port chosen at start");
    } else {
        let e = settings.endpoints(None);
        println!("issuer:          {}", e.issuer);
        let token_url = match crate::upstream::discovery::Plan::of(&settings, &e.issuer) {
            None => format!("{} (configured; no discovery)", e.token_url),
            Some(plan) if !online => format!(
                "read from {} at start (built-in: {}; check --online reads it now)",
                plan.url, e.token_url
            ),
            Some(_) => match app::discover(
                &settings,
                None,
                &crate::upstream::client::http_client(&settings.http_client)?,
            )
            .await?
            .into_iter()
            .next()
            .flatten()
            {
                Some((_, Some(m))) => format!("{} (from the issuer's metadata)", m.token_endpoint),
                _ => format!(
                    "{} (built-in: the issuer's metadata is unreadable, see the warning)",
                    e.token_url
                ),
            },
        };
        println!("token endpoint:  {token_url}");
        println!("altinn exchange: {}", e.altinn_exchange_url);
        println!("altinn platform: {}", e.altinn_platform);
    }
    if let Some(org) = &validated.default_org {
        println!("default_org:     {org}");
    }
    println!("profiles:");
    for p in validated.profiles.iter() {
        println!(
            "  {:<14} exchange={:<6} system_user={:<8} scopes={}",
            p.name.as_str(),
            format!("{:?}", p.exchange).to_lowercase(),
            format!("{:?}", p.system_user).to_lowercase(),
            p.scope()
        );
    }
    if !online {
        return Ok(());
    }
    println!("online:");
    let settings_for_keys = settings.clone();
    let built = app::build(settings).await?;
    let (tokens, broker) = (&built.state.tokens, built.state.broker());
    let mut failures = 0;
    for p in validated.profiles.iter() {
        let line = match broker.resolve(p.name.as_str(), None) {
            Err(e) => format!("skipped: {e}"),
            Ok((_, key)) => match tokens.get(&key, None).await {
                Ok((t, _)) => format!(
                    "ok (expires in {}s)",
                    t.remaining(broker.clock().now()).as_secs()
                ),
                Err(e) => {
                    failures += 1;
                    format!(
                        "FAILED: {}",
                        crate::http::problem::ApiError::from(e).problem().detail
                    )
                }
            },
        };
        println!("  {:<14} {line}", p.name.as_str());
    }
    if let Some(keeper) = app::keeper(&settings_for_keys, &built).await? {
        match keeper.status().await {
            Ok(keys) => {
                let now = std::time::SystemTime::now();
                for key in keys {
                    println!("  key            {}", crate::app::keys::line(&key, now));
                }
            }
            Err(e) => {
                failures += 1;
                println!("  key_rotation   FAILED: {}", crate::telemetry::Chain(&e));
            }
        }
    }
    tokens.shutdown();
    if failures > 0 {
        bail!("{failures} profile(s) failed");
    }
    Ok(())
}

/// What `check` says about the key: its form, kid, and the business certificate.
fn print_key(key: &SigningKey) {
    println!("key form:        {}", key.form().explain());
    if let Some(location) = key.location() {
        println!("key location:    {location}");
    }
    println!(
        "kid:             {} (RSA {} bits, {})",
        key.kid()
            .unwrap_or("none: grants carry only x5c (Digdir requires kid once a key or certificate is registered on the client)"),
        key.bits(),
        key.algorithm().name()
    );
    match key.location() {
        None => println!("key pair:        ok (a signed grant verifies with the public key)"),
        Some(_) => println!(
            "key pair:        ok (a probe signature by the signer verifies with the public key read from it)"
        ),
    }
    let Some(leaf) = key.chain().first() else {
        return;
    };
    let now = std::time::SystemTime::now();
    let days = leaf
        .not_after
        .duration_since(now)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    println!("certificate:     {}", leaf.subject);
    println!(
        "  org number:    {}",
        leaf.org_number
            .as_deref()
            .unwrap_or("none found (no serialNumber or organizationIdentifier in the subject)")
    );
    println!("  issuer:        {}", leaf.issuer);
    println!(
        "  not after:     {} ({days} days left{})",
        crate::tokens::token::rfc3339(leaf.not_after),
        if days < 30 { "; renew it now" } else { "" }
    );
    println!(
        "  x5c:           the leaf{} in every grant header",
        match key.chain().len() {
            1 => String::new(),
            n => format!(" and {} chain certificate(s)", n - 1),
        }
    );
}

/// Sign a grant and verify it with the public half: catches a PEM that is not the pair of itself.
async fn verify_key_pair(key: &SigningKey) -> anyhow::Result<()> {
    let jwk = key.public_jwk();
    let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap_or_default(),
        jwk["e"].as_str().unwrap_or_default(),
    )?;
    let profile = crate::policy::profile::builtins().remove(0);
    let grant = crate::upstream::grant::build_jwt_grant(
        key,
        &crate::upstream::grant::GrantRequest {
            client_id: "check",
            audience: "check",
            profile: &profile,
            org: None,
            now: std::time::SystemTime::now(),
            lifetime: Duration::from_secs(60),
        },
    )
    .await?;
    let mut validation = jsonwebtoken::Validation::new(key.algorithm().jwt());
    validation.set_audience(&["check"]);
    jsonwebtoken::decode::<serde_json::Value>(grant.expose(), &decoding, &validation)
        .context("the key pair does not verify its own signature")?;
    Ok(())
}

/// `simulate --listen ADDR [--jwk FILE --client-id ID]`
pub async fn simulate(
    settings: Option<Settings>,
    listen: std::net::SocketAddr,
    jwk: Option<&Path>,
    client_id: &str,
) -> anyhow::Result<()> {
    // Without a config: the built-in profiles, as a `local` broker would have them.
    let validated = match &settings {
        Some(s) => s.validate()?,
        None => Settings {
            env: Environment::Local,
            ..Settings::default()
        }
        .validate()?,
    };
    let client = match (jwk, &settings) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let jwk: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let kid = jwk["kid"]
                .as_str()
                .context("the JWK has no kid")?
                .to_owned();
            let public = public_key_from_jwk(&jwk).context("the JWK is not an RSA public key")?;
            RegisteredClient {
                client_id: client_id.to_owned(),
                keys: vec![(kid, public)],
                scopes: validated.scopes(),
            }
        }
        (None, Some(s)) => app::simulator_client(s.client_id(), &load_key(s).await?, &validated),
        (None, None) => {
            bail!("no client to register: pass --jwk FILE (from keygen) or a --config with a key")
        }
    };
    let token_lifetime = settings
        .as_ref()
        .map(|s| s.local.token_lifetime)
        .unwrap_or(Duration::from_secs(120));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let registered = client.client_id.clone();
    let handle = simulator::start(
        SimulatorConfig {
            signing_key: None,
            token_lifetime,
            clients: vec![client],
            consumer_org: validated.system.as_ref().map(|s| s.vendor.to_string()),
            strict_system_users: settings
                .as_ref()
                .is_some_and(|s| s.local.system_users == crate::config::SystemUsers::Strict),
        },
        listener,
    )
    .await?;
    println!(
        "simulator listening on {} (issuer {}, JWKS {}jwk), client {registered}",
        handle.base_url(),
        handle.issuer(),
        handle.base_url()
    );
    let _ = app::shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// `healthcheck --url URL [--ca FILE] [--cert FILE --key FILE]`: with TLS on the listener, the
/// CA to trust and, with `client_auth: required`, a client certificate to present.
pub async fn healthcheck(
    url: &str,
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<()> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(3))
        .no_proxy();
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca {} is not a PEM certificate", ca.display()))?,
        );
    }
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert)
            .with_context(|| format!("cannot read --cert {}", cert.display()))?;
        pem.extend(
            std::fs::read(key).with_context(|| format!("cannot read --key {}", key.display()))?,
        );
        builder =
            builder.identity(reqwest::Identity::from_pem(&pem).map_err(|_| {
                anyhow::anyhow!("--cert and --key are not a PEM certificate and key")
            })?);
    }
    let response = builder
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("{url} does not answer"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

/// `hash-key`: the API key comes on stdin so it stays out of shell history and `ps`.
pub fn hash_key() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::stdin().read_to_string(&mut key)?;
    if key.trim().is_empty() {
        bail!(
            "no API key on standard input (try: printf %s \"$KEY\" | maskinporten-broker hash-key)"
        );
    }
    println!("{}", hash_api_key(&key));
    Ok(())
}
