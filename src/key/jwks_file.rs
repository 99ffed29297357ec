//! The JWKS file of private keys that `key_rotation.action: rotate` rewrites: read, written
//! atomically (a new file beside it, mode 0600, synced, renamed over, the folder synced), and
//! locked while one process changes it (`<file>.lock`, so that replicas and `keys rotate`
//! sharing the file never rotate at once).
//!
//! Two members of our own mark the rotation's progress on each key, so a crash at any step
//! resumes from the file and what Digdir holds: `broker_created_at` (made here, unix seconds) and
//! `broker_signing_since` (grants are signed with it from then on; the newest such key signs).
//! This module never logs or returns a key's private members.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub const CREATED_AT: &str = "broker_created_at";
pub const SIGNING_SINCE: &str = "broker_signing_since";

/// Why the file could not be read, written or locked. Never quotes the content.
#[derive(Debug, thiserror::Error)]
pub enum JwksFileError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a JWK or JWKS of private keys")]
    NotJwks(String),
    #[error("{0} is being changed by another process (its .lock is held)")]
    Locked(String),
}

/// A private JWKS file.
#[derive(Debug, Clone)]
pub struct JwksFile {
    path: PathBuf,
}

/// The lock on the file, released when dropped.
pub struct Lock(#[allow(dead_code)] File);

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl JwksFile {
    pub fn new(path: &Path) -> Self {
        JwksFile {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> JwksFileError + '_ {
        move |source| JwksFileError::Io {
            action,
            path: self.path.display().to_string(),
            source,
        }
    }

    fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// The keys, in file order (a single JWK file: one).
    pub fn read(&self) -> Result<Vec<Value>, JwksFileError> {
        let bytes = std::fs::read(&self.path).map_err(self.io("read"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|_| JwksFileError::NotJwks(self.path.display().to_string()))?;
        match value.get("keys") {
            Some(Value::Array(keys)) => Ok(keys.clone()),
            Some(_) => Err(JwksFileError::NotJwks(self.path.display().to_string())),
            None if value.get("d").is_some() => Ok(vec![value]),
            None => Err(JwksFileError::NotJwks(self.path.display().to_string())),
        }
    }

    /// Replace the file with `keys`, durably: after this returns, a crash keeps the new set.
    pub fn write(&self, keys: &[Value]) -> Result<(), JwksFileError> {
        let text = serde_json::to_string_pretty(&json!({ "keys": keys }))
            .map_err(|_| JwksFileError::NotJwks(self.path.display().to_string()))?;
        let temp = self
            .dir()
            .join(format!(".{}.new", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            // The rename itself is durable once the folder is synced.
            File::open(self.dir())?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(self.io("write"))
    }

    /// Whether the folder takes a new file (a read-only mount does not).
    pub fn check_writable(&self) -> Result<(), JwksFileError> {
        let probe = self
            .dir()
            .join(format!(".{}.probe", uuid::Uuid::new_v4().simple()));
        File::create(&probe).map_err(self.io("write a file beside"))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }

    /// Take the lock, or say another process holds it.
    pub fn try_lock(&self) -> Result<Lock, JwksFileError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(name))
            .map_err(self.io("lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(Lock(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(JwksFileError::Locked(self.path.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(self.io("lock")(e)),
        }
    }
}

/// The kid that signs: the newest key marked `broker_signing_since`; a file of one key, its kid.
pub fn signing_kid(keys: &[Value]) -> Option<String> {
    let kid = |k: &Value| k.get("kid").and_then(Value::as_str).map(str::to_owned);
    keys.iter()
        .filter_map(|k| Some((k.get(SIGNING_SINCE)?.as_u64()?, k)))
        .max_by_key(|(since, _)| *since)
        .and_then(|(_, k)| kid(k))
        .or_else(|| match keys {
            [only] => kid(only),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_marked_key_signs_and_a_write_is_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = JwksFile::new(&dir.path().join("keys.json"));
        let keys = vec![
            json!({"kid": "a", "d": "x", SIGNING_SINCE: 10}),
            json!({"kid": "b", "d": "y", SIGNING_SINCE: 20}),
            json!({"kid": "c", "d": "z"}),
        ];
        file.write(&keys).unwrap();
        assert_eq!(file.read().unwrap(), keys);
        assert_eq!(signing_kid(&keys).as_deref(), Some("b"));
        assert_eq!(signing_kid(&keys[2..]).as_deref(), Some("c"));
        assert_eq!(
            signing_kid(&[json!({"kid": "a"}), json!({"kid": "b"})]),
            None
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let held = file.try_lock().unwrap();
        assert!(matches!(file.try_lock(), Err(JwksFileError::Locked(_))));
        drop(held);
        assert!(file.try_lock().is_ok());
    }
}
