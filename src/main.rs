//! The `maskinporten-broker` binary: parse the command line, load the config, start logging, and
//! hand over to the library. Errors go to stderr with a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use maskinporten_broker::cli::{Cli, Command};
use maskinporten_broker::config::{LogSettings, Settings};
use maskinporten_broker::{app, commands, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || -> anyhow::Result<Settings> {
        let settings = Settings::load(&cli.config)?;
        telemetry::init(&settings.log);
        Ok(settings)
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => app::run(load()?, &cli.config).await?,
        Command::Token { profile, org, json } => {
            commands::token(load()?, &profile, org.as_deref(), json).await?
        }
        Command::Grant { profile, org } => {
            commands::grant(load()?, &profile, org.as_deref()).await?
        }
        Command::Keygen {
            pkcs11: true, bits, ..
        } => commands::keygen_outside(load()?, bits, false).await?,
        Command::Keygen {
            vault_transit: true,
            bits,
            ..
        } => commands::keygen_outside(load()?, bits, true).await?,
        Command::Keygen {
            out, bits, add_to, ..
        } => commands::keygen(&out, bits, add_to.as_deref())?,
        Command::Jwks { file } => {
            let settings = if file.is_none() { Some(load()?) } else { None };
            commands::jwks(settings.as_ref(), file.as_deref()).await?
        }
        Command::Check { online } => commands::check(load()?, &cli.config, online).await?,
        Command::Simulate {
            listen,
            jwk,
            client_id,
        } => {
            let settings = if cli.config.exists() {
                Some(load()?)
            } else {
                telemetry::init(&LogSettings::default());
                None
            };
            commands::simulate(settings, listen, jwk.as_deref(), &client_id).await?
        }
        Command::Healthcheck { url, ca, cert, key } => {
            commands::healthcheck(&url, ca.as_deref(), cert.as_deref().zip(key.as_deref())).await?
        }
        Command::HashKey => commands::hash_key()?,
        Command::System { action, json } => app::onboarding::system(load()?, action, json).await?,
        Command::Keys { action, json } => app::keys::keys(load()?, action, json).await?,
        Command::Systemuser { action, json } => {
            app::onboarding::systemuser(load()?, action, json).await?
        }
        Command::Consent { action, json } => app::consent::consent(load()?, action, json).await?,
    }
    Ok(())
}
