//! The `maskinporten-broker` binary: parse the command line, load the config, start logging, run.

use clap::Parser;
use maskinporten_broker::cli::{Cli, Command};
use maskinporten_broker::config::Settings;
use maskinporten_broker::{app, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let settings = Settings::load(path)?;
    telemetry::init(&settings.log);
    app::run(settings).await?;
    Ok(())
}
