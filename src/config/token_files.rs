//! The `token_files:` section: the files the broker keeps a token in, as written.
//! `tokens/files.rs` checks them and writes the files.

use std::path::PathBuf;

use serde::Deserialize;

/// What goes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFileFormat {
    /// The bare token, no trailing newline.
    #[default]
    Token,
    /// The JSON answer of `GET /token/{profile}`.
    Json,
}

/// One entry of `token_files:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFileSettings {
    pub profile: String,
    /// The system-user organisation, as `?org=` would give it.
    pub org: Option<String>,
    pub path: PathBuf,
    #[serde(default)]
    pub format: TokenFileFormat,
    /// Mode 0640 instead of 0600.
    #[serde(default)]
    pub group_readable: bool,
}
