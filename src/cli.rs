//! The command line: `serve` (the default) and the tools around it.

use std::path::PathBuf;

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
    /// Serve tokens over HTTP (the default).
    Serve,
}
