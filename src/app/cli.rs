//! The command line: `serve` (the default) and the tools around it. Every subcommand has `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "maskinporten-broker",
    version,
    about = "Holds a Maskinporten key and serves ready-to-use tokens over local HTTP"
)]
pub struct Cli {
    /// The configuration file (YAML); BROKER__* environment variables override it.
    #[arg(
        long,
        short,
        global = true,
        default_value = "broker.yaml",
        env = "BROKER_CONFIG"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve tokens over HTTP (the default when no subcommand is given).
    Serve,
    /// Fetch one token with the configured key and print it (bare token, or --json).
    Token {
        /// The profile: altinn, admin, skd or one from the config.
        profile: String,
        /// Organisation number of the system user.
        #[arg(long)]
        org: Option<String>,
        /// Print the same JSON as GET /token/{profile} instead of the bare token.
        #[arg(long)]
        json: bool,
    },
    /// Print the signed JWT grant for a profile without sending it (for debugging with Digdir).
    Grant {
        profile: String,
        #[arg(long)]
        org: Option<String>,
    },
    /// Write a new RSA private key (PEM, mode 0600) and its public JWK with a fresh kid.
    Keygen {
        /// Directory for maskinporten-key.pem and maskinporten-key.jwk.json.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Key size: 2048, 3072 or 4096 bits.
        #[arg(long, default_value_t = 2048, value_parser = clap::builder::PossibleValuesParser::new(["2048", "3072", "4096"]).map(|s| s.parse::<usize>().unwrap_or(2048)))]
        bits: usize,
        /// Add the new key to this private JWKS file instead (created when absent; at most 5
        /// keys), for key rotation. Print the set to upload with `jwks --file`.
        #[arg(long, value_name = "JWKS_FILE")]
        add_to: Option<PathBuf>,
        /// Create the key inside the HSM the config's key.pkcs11 names (label or id from
        /// there; refused if a key is there already) and print its public JWK.
        #[arg(long, conflicts_with_all = ["add_to", "vault_transit"])]
        pkcs11: bool,
        /// Create the key in the Vault/OpenBao transit engine the config's key.vault_transit
        /// names (refused if it exists) and print its public JWK.
        #[arg(long, conflicts_with = "add_to")]
        vault_transit: bool,
    },
    /// Print the public JWKS of every key in the key file: the set to upload to Digdir (at most 5).
    Jwks {
        /// A key file (PEM, JWK or JWKS); without it, the config's key source.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Validate the config and key and show what the broker would use; --online fetches tokens.
    Check {
        /// Also fetch one token per profile and report each result.
        #[arg(long)]
        online: bool,
    },
    /// Run only the Maskinporten + Altinn simulator, for other applications' integration tests.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// A client's public JWK (from `keygen`) to register; without it, the config's key is used.
        #[arg(long)]
        jwk: Option<PathBuf>,
        /// The client id to register with --jwk.
        #[arg(long, default_value = crate::config::LOCAL_CLIENT_ID)]
        client_id: String,
    },
    /// Exit 0 if the broker's /healthz answers 200 (for container HEALTHCHECKs).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// With TLS on the listener (an https URL): a PEM CA to trust besides the system's (the
        /// CA of server.tls.cert).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// With server.tls.client_auth required: a PEM client certificate (chain) ...
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        /// ... and its PEM private key.
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
    },
    /// Read an API key from standard input and print the hash to put in `clients[].key_sha256`.
    HashKey,
    /// The vendor's system (`system:` in the config) in Altinn's system register.
    System {
        #[command(subcommand)]
        action: SystemAction,
        /// Print one JSON object per line instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// System users: ask a customer organisation for one, follow the request, list them.
    /// The default client's keys in Digdir: expiry, renewal (docs/keys.md).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        /// One JSON object instead of lines.
        #[arg(long, global = true)]
        json: bool,
    },
    Systemuser {
        #[command(subcommand)]
        action: SystemuserAction,
        /// Print one JSON object per line instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Altinn consent: ask a person or an organisation for consent, follow the request.
    Consent {
        #[command(subcommand)]
        action: ConsentAction,
        /// Print one JSON object per line instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConsentAction {
    /// Ask for consent; prints the view URI to send the person to.
    Request {
        /// Who is asked: a fødselsnummer (11 digits) or an organisation number (9 digits).
        #[arg(long, value_name = "FNR|ORGNR")]
        from: String,
        /// The resource id the consent is for (repeat for more).
        #[arg(long, required = true)]
        resource: Vec<String>,
        /// Metadata of the resource, key=value (repeat for more).
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// When the consent ends: a date (2026-12-31) or an RFC 3339 time; in the future.
        #[arg(long, value_name = "DATE")]
        valid_to: String,
        /// The message shown to the person.
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
        /// Where Altinn sends the person afterwards (one of consent.redirect_urls).
        #[arg(long, value_name = "U")]
        redirect_url: Option<String>,
        /// Wait for the answer: exit 0 on Accepted, 1 on Rejected, Revoked or Expired.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A consent request's state by its id.
    Status { id: String },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum KeysAction {
    /// Each key: client, kid, where it is kept, Digdir's exp, in use, days left.
    Status,
    /// Post the same public keys again now: Digdir gives each another year.
    Renew,
    /// With `key_rotation.action: rotate`: start a rotation now, or take its next step.
    Rotate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SystemAction {
    /// Whether the system is registered, and what differs from the config.
    Show,
    /// Create the system, or update it to match the config (idempotent; never deletes).
    Register,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SystemuserAction {
    /// Ask an organisation to accept a system user; prints the URL to send the customer.
    Request {
        /// The customer's organisation number.
        #[arg(long)]
        org: String,
        /// Your reference for this system user (default: the organisation number). Tokens for
        /// it need the same value as the profile's externalRef.
        #[arg(long)]
        external_ref: Option<String>,
        /// Where Altinn sends the customer after answering (one of system.allowed_redirect_urls).
        #[arg(long)]
        redirect_url: Option<String>,
        /// The agent (client delegation) variant: access packages only.
        #[arg(long)]
        agent: bool,
        /// Wait until the customer answers; after Accepted, fetch one token as proof.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The profile of the proof token --wait fetches (it must take an org).
        #[arg(long, default_value = "altinn")]
        profile: String,
    },
    /// A request's (or change request's) state by its id.
    Status { id: String },
    /// Every system user of the system.
    List,
    /// Ask a customer to approve rights added to (or removed from) the system user it has;
    /// without --add-*/--remove-*: what system: lists now. Prints the URL to send the customer.
    Change(ChangeArgs),
    /// For every system user (or the one of --org), ask for what system: lists now; one line per
    /// customer: NoChangeNeeded, or the change and the URL to send.
    Sync {
        /// Only this organisation's system users.
        #[arg(long)]
        org: Option<String>,
    },
}

/// `systemuser change`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangeArgs {
    /// The customer's organisation number.
    #[arg(long)]
    pub org: String,
    /// The external reference of its system user (default: the organisation number).
    #[arg(long)]
    pub external_ref: Option<String>,
    /// A right (resource id) of system.rights to add; repeatable.
    #[arg(long = "add-right")]
    pub add_rights: Vec<String>,
    /// A right (resource id) to remove; repeatable.
    #[arg(long = "remove-right")]
    pub remove_rights: Vec<String>,
    /// An access package of system.access_packages to add; repeatable.
    #[arg(long = "add-package")]
    pub add_packages: Vec<String>,
    /// An access package to remove; repeatable.
    #[arg(long = "remove-package")]
    pub remove_packages: Vec<String>,
    /// Where Altinn sends the customer after answering (one of system.allowed_redirect_urls).
    #[arg(long)]
    pub redirect_url: Option<String>,
    /// Wait until the customer answers: Accepted exits 0; Rejected, Denied, Timedout exit 1.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}
