//! Token files: a fresh token kept in a file, for cron jobs, shell scripts and programs that read
//! a file more easily than they call HTTP.
//!
//! Each file has a background task that asks the cache for its token every [`CHECK_INTERVAL`] and
//! rewrites the file when the token changed, or when the file no longer holds what was last
//! written (deleted, overwritten, its mode changed). Asking keeps the cache entry in use, so the
//! cache's refresh-ahead keeps it fresh with no HTTP caller at all, and the file follows within a
//! second.
//! A file is written atomically (a temporary file in the same directory, fsync, rename) with mode
//! 0600, or 0640 with `group_readable: true`, so a reader never sees half a token.
//!
//! A failure (no token, unwritable directory) is logged once when it starts, retried every check
//! and shown in `/readyz`; it never stops the broker. This module never logs a token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{TokenFileFormat, TokenFileSettings};
use crate::policy::org::OrgNumber;
use crate::policy::profile::{Profile, Profiles};
use crate::tokens::broker::{Broker, Generation};
use crate::tokens::cache::{CacheKey, TokenCache};
use crate::tokens::token::{Token, rfc3339};

/// How often each file's token is compared with the cache's.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for a token before the check counts as failed (the cache keeps trying).
const MAX_WAIT: Duration = Duration::from_secs(20);

/// A validated entry.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub profile: String,
    pub org: Option<OrgNumber>,
    pub path: PathBuf,
    pub format: TokenFileFormat,
    pub group_readable: bool,
}

impl TokenFile {
    fn mode(&self) -> u32 {
        if self.group_readable { 0o640 } else { 0o600 }
    }
}

/// Validate `token_files:`; every problem goes to `problems` with its field path.
pub fn validate(
    settings: &[TokenFileSettings],
    profiles: Option<&Profiles>,
    problems: &mut Vec<String>,
) -> Vec<TokenFile> {
    let mut files = Vec::new();
    for (i, s) in settings.iter().enumerate() {
        let field = |f: &str| format!("token_files[{i}].{f}");
        let before = problems.len();
        if let Some(profiles) = profiles {
            problems.extend(profiles.check_named(&s.profile, &field("profile")));
        }
        let org = crate::policy::org::parse_field(s.org.as_deref(), &field("org"), problems);
        if s.path.file_name().is_none() {
            problems.push(format!("{}: must name a file", field("path")));
        }
        if settings[..i].iter().any(|other| other.path == s.path) {
            problems.push(format!(
                "{}: {} is already used by an earlier entry",
                field("path"),
                s.path.display()
            ));
        }
        if problems.len() == before {
            files.push(TokenFile {
                profile: s.profile.clone(),
                org,
                path: s.path.clone(),
                format: s.format,
                group_readable: s.group_readable,
            });
        }
    }
    files
}

/// What `/readyz` shows of one file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileStatus {
    pub path: String,
    pub profile: String,
    pub org: Option<String>,
    /// When the current token was written.
    pub written_at: Option<String>,
    /// When the token in the file expires.
    pub expires_at: Option<String>,
    /// Checks that failed since the last success.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

/// One file with its cache key and status.
struct Entry {
    file: TokenFile,
    key: CacheKey,
    profile: Arc<Profile>,
    status: Mutex<FileStatus>,
}

/// The configured token files and what became of them.
#[derive(Default)]
pub struct TokenFiles {
    entries: Vec<Arc<Entry>>,
}

impl TokenFiles {
    /// Resolve each file's profile and org with the broker's rules; the problems, with field
    /// paths, if any does not name a token the broker can make.
    pub fn new(files: &[TokenFile], generation: &Generation) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for (i, file) in files.iter().enumerate() {
            match generation.resolve(&file.profile, file.org.clone()) {
                Ok((profile, key)) => entries.push(Arc::new(Entry {
                    status: Mutex::new(FileStatus {
                        path: file.path.display().to_string(),
                        profile: key.profile.as_str().to_owned(),
                        org: key.org.as_ref().map(|o| o.as_str().to_owned()),
                        ..Default::default()
                    }),
                    file: file.clone(),
                    key,
                    profile,
                })),
                Err(e) => problems.push(format!("token_files[{i}]: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(TokenFiles { entries })
        } else {
            Err(problems)
        }
    }

    /// Start one task per file; they stop when `stop` is cancelled.
    pub fn spawn(&self, tokens: &TokenCache<Broker>, stop: &CancellationToken) {
        for entry in &self.entries {
            let (entry, tokens, stop) = (entry.clone(), tokens.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = keep_fresh(&entry, &tokens) => {}
                }
            });
        }
    }

    /// Every file's status, for `/readyz`.
    pub fn report(&self) -> Vec<FileStatus> {
        self.entries.iter().map(|e| e.status().clone()).collect()
    }

    /// Whether any file is failing.
    pub fn failing(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.status().consecutive_failures > 0)
    }
}

impl Entry {
    fn status(&self) -> std::sync::MutexGuard<'_, FileStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a failed check; log it when it starts or changes.
    fn failed(&self, error: String) {
        let mut status = self.status();
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        if status.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(path = %self.file.path.display(), profile = %self.key.profile, error = %error, "token file not updated; retrying every second");
        }
        status.last_error = Some(error);
    }

    fn written(&self, token: &Token) {
        let mut status = self.status();
        if status.consecutive_failures > 0 {
            tracing::info!(path = %self.file.path.display(), "token file written again");
        }
        status.consecutive_failures = 0;
        status.last_error = None;
        status.written_at = Some(rfc3339(std::time::SystemTime::now()));
        status.expires_at = Some(rfc3339(token.expires_at));
    }
}

/// What was last written to a file: the token, and the file's bytes.
struct Written {
    token: Arc<Token>,
    contents: Vec<u8>,
}

/// Every [`CHECK_INTERVAL`], compare the cache's token with the one last written and the file on
/// disk with the bytes last written; write when either differs (or the last write failed).
/// Never returns.
async fn keep_fresh(entry: &Entry, tokens: &TokenCache<Broker>) {
    let mut written: Option<Written> = None;
    loop {
        match tokio::time::timeout(MAX_WAIT, tokens.get(&entry.key, None)).await {
            Err(_) => entry.failed(format!(
                "no token within {}",
                humantime::format_duration(MAX_WAIT)
            )),
            Ok(Err(e)) => entry.failed(format!("no token: {e}")),
            Ok(Ok((token, _))) => {
                let same_token = written
                    .as_ref()
                    .is_some_and(|w| w.token.value == token.value);
                let intact = match &written {
                    Some(w) if same_token => holds(&entry.file, &w.contents).await,
                    _ => false,
                };
                if same_token && !intact {
                    tracing::info!(path = %entry.file.path.display(), profile = %entry.key.profile, "token file deleted or changed by someone else; writing it again");
                }
                if !intact {
                    match write(entry, &token, tokens).await {
                        Ok(contents) => {
                            tracing::debug!(path = %entry.file.path.display(), profile = %entry.key.profile, fingerprint = %token.value.fingerprint(), "token file written");
                            entry.written(&token);
                            written = Some(Written { token, contents });
                        }
                        Err(e) => {
                            entry.failed(format!("cannot write {}: {e}", entry.file.path.display()))
                        }
                    }
                }
            }
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// Whether the file still holds exactly `contents` with its mode (read only when its length
/// matches, so a large file put in its place is never read).
async fn holds(file: &TokenFile, contents: &[u8]) -> bool {
    let (path, mode, expected) = (file.path.clone(), file.mode(), contents.to_vec());
    let check = move || -> std::io::Result<bool> {
        let meta = std::fs::symlink_metadata(&path)?;
        #[cfg(unix)]
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777 != mode {
            return Ok(false);
        }
        #[cfg(not(unix))]
        let _ = mode;
        if !meta.is_file() || meta.len() != expected.len() as u64 {
            return Ok(false);
        }
        Ok(std::fs::read(&path)? == expected)
    };
    tokio::task::spawn_blocking(check)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

/// Write the file for `token`; the bytes written.
async fn write(
    entry: &Entry,
    token: &Token,
    tokens: &TokenCache<Broker>,
) -> std::io::Result<Vec<u8>> {
    let contents = match entry.file.format {
        TokenFileFormat::Token => token.value.expose().as_bytes().to_vec(),
        TokenFileFormat::Json => {
            let now = tokens.source().clock().now();
            let answer =
                crate::tokens::answer::TokenResponse::new(token, &entry.key, &entry.profile, now);
            serde_json::to_vec(&answer).map_err(std::io::Error::other)?
        }
    };
    let (path, mode) = (entry.file.path.clone(), entry.file.mode());
    tokio::task::spawn_blocking(move || write_atomically(&path, &contents, mode).map(|()| contents))
        .await
        .map_err(std::io::Error::other)?
}

/// Write `contents` to a new file next to `path` with `mode`, flush it to disk, and rename it
/// over `path`: a reader sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&tmp)?;
        // The umask may have taken bits the mode asked for (group read).
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        #[cfg(not(unix))]
        let _ = mode;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_with_the_mode_asked_for() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_atomically(&path, b"first", 0o600).unwrap();
        write_atomically(&path, b"second", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the temporary file was written.
        let path = dir.path().join("sub");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        assert!(write_atomically(&path, b"t", 0o600).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let profiles = Profiles::from_settings(&Default::default()).unwrap();
        let settings: Vec<TokenFileSettings> = serde_json::from_value(serde_json::json!([
            {"profile": "nope", "path": "/run/t"},
            {"profile": "altinn", "org": "123", "path": "/run/u"},
            {"profile": "altinn", "path": "/run/u"},
            {"profile": "altinn", "path": "/"},
        ]))
        .unwrap();
        let mut problems = Vec::new();
        let files = validate(&settings, Some(&profiles), &mut problems);
        assert_eq!(files.len(), 0, "{problems:?}");
        assert!(
            problems[0].starts_with("token_files[0].profile:"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("token_files[1].org:"),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("token_files[2].path:"),
            "{problems:?}"
        );
        assert!(
            problems[3].starts_with("token_files[3].path:"),
            "{problems:?}"
        );
    }
}
