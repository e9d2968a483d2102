//! The agent's data directory: its identity (key, certificate chain, server CA) and the
//! settings documents received, each written atomically (temporary file, fsync, rename).
//!
//! Layout:
//!
//! | file | content |
//! |---|---|
//! | `agent.key` | the private key, PKCS#8 PEM, mode 0600 |
//! | `agent.chain.pem` | the agent certificate, then the issuing CA |
//! | `ca.crt` | the server CA the agent trusts from enrollment on |
//! | `agent.reserve.key`, `agent.reserve.chain.pem` | the reserve certificate that succeeds the current one, once issued |
//! | `settings/<application>.json` | `{"application", "version", "document"}` |

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The private key file.
pub const KEY_FILE: &str = "agent.key";
/// The certificate chain file.
pub const CHAIN_FILE: &str = "agent.chain.pem";
/// The server CA file.
pub const CA_FILE: &str = "ca.crt";
/// The reserve certificate's private key file.
pub const RESERVE_KEY_FILE: &str = "agent.reserve.key";
/// The reserve certificate's chain file.
pub const RESERVE_CHAIN_FILE: &str = "agent.reserve.chain.pem";
/// The settings directory.
pub const SETTINGS_DIR: &str = "settings";
/// Largest settings document stored or accepted.
pub const MAX_SETTINGS_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a whole file, refusing one larger than `max` before reading it.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, AgentError> {
    use outpost_pki::{FileError, PkiError};
    outpost_pki::store::read_bounded(path, max, "file").map_err(|e| match e {
        PkiError::File(FileError::TooLarge { path, len, max, .. }) => {
            AgentError::FileTooLarge { path, len, max }
        }
        PkiError::File(FileError::Io { op, path, source }) => AgentError::Io { op, path, source },
        other => AgentError::from(other),
    })
}

/// Writes `data` to `path` atomically (mode 0644), with
/// [`outpost_pki::store::write_atomic`].
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    Ok(outpost_pki::store::write_atomic(path, data, 0o644)?)
}

/// One application's settings as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredSettings {
    /// The application.
    pub application: String,
    /// The version the server gave.
    pub version: u64,
    /// The document as received (parsed).
    pub document: serde_json::Value,
}

/// The settings documents received, one per application, kept in memory and on disk.
#[derive(Debug)]
pub struct SettingsStore {
    dir: PathBuf,
    docs: BTreeMap<String, StoredSettings>,
}

impl SettingsStore {
    /// Opens (creating) `data_dir/settings` and loads every stored document.
    ///
    /// # Errors
    /// [`AgentError::Io`], or [`AgentError::Corrupt`] naming a file that is not a stored
    /// settings document.
    pub fn open(data_dir: &Path) -> Result<Self, AgentError> {
        let dir = data_dir.join(SETTINGS_DIR);
        fs::create_dir_all(&dir).map_err(AgentError::io("create", &dir))?;
        let mut docs = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(AgentError::io("list", &dir))? {
            let entry = entry.map_err(AgentError::io("list", &dir))?;
            let path = entry.path();
            let Some(app) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if app.starts_with('.') {
                continue;
            }
            let bytes = read_bounded(&path, MAX_SETTINGS_BYTES)?;
            let s: StoredSettings =
                serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt {
                    path: path.clone(),
                    reason: format!("not a stored settings document: {e}"),
                })?;
            if s.application != app {
                return Err(AgentError::Corrupt {
                    path,
                    reason: format!("holds application {:?}", s.application),
                });
            }
            docs.insert(app.to_string(), s);
        }
        Ok(SettingsStore { dir, docs })
    }

    /// The versions held, per application.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.docs
            .iter()
            .map(|(a, s)| (a.clone(), s.version))
            .collect()
    }

    /// The stored document of `application`.
    pub fn get(&self, application: &str) -> Option<&StoredSettings> {
        self.docs.get(application)
    }

    /// Stores a received document (JSON text) atomically.
    ///
    /// # Errors
    /// [`AgentError::Settings`] for a bad application name, an oversized document or one
    /// that is not JSON; [`AgentError::Io`] if writing fails (the previous document stays).
    pub fn put(&mut self, application: &str, version: u64, json: &[u8]) -> Result<(), AgentError> {
        let bad = |reason: String| AgentError::Settings {
            application: application.to_string(),
            reason,
        };
        if !crate::config::valid_name(application) {
            return Err(bad("not a valid application name".into()));
        }
        if json.len() as u64 > MAX_SETTINGS_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the maximum of {MAX_SETTINGS_BYTES}",
                json.len()
            )));
        }
        let document: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let s = StoredSettings {
            application: application.to_string(),
            version,
            document,
        };
        let bytes = serde_json::to_vec_pretty(&s).map_err(|e| bad(e.to_string()))?;
        write_atomic(&self.dir.join(format!("{application}.json")), &bytes)?;
        self.docs.insert(application.to_string(), s);
        Ok(())
    }

    /// Drops `application`'s document.
    ///
    /// # Errors
    /// [`AgentError::Io`] if the file exists and cannot be removed.
    pub fn remove(&mut self, application: &str) -> Result<(), AgentError> {
        if self.docs.remove(application).is_some() {
            let path = self.dir.join(format!("{application}.json"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io("remove", path)(e)),
            }
        }
        Ok(())
    }
}

/// Free bytes available to the agent on the file system of `dir` (0 if unknown).
pub fn free_disk_bytes(dir: &Path) -> u64 {
    #[cfg(unix)]
    {
        match rustix::fs::statvfs(dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(_) => 0,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_reopen_and_bad_input_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SettingsStore::open(d.path()).unwrap();
        s.put("agent", 3, br#"{"a":1}"#).unwrap();
        s.put("av", 1, br#"{"b":2}"#).unwrap();
        assert!(s.put("../evil", 1, b"{}").is_err());
        let e = s.put("agent", 4, b"{nope").unwrap_err().to_string();
        assert!(e.contains("agent") && e.contains("not JSON"), "{e}");
        s.remove("av").unwrap();
        let s = SettingsStore::open(d.path()).unwrap();
        assert_eq!(s.versions(), BTreeMap::from([("agent".to_string(), 3)]));
        assert_eq!(s.get("agent").unwrap().document["a"], 1);
    }

    #[test]
    fn a_corrupt_settings_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(SETTINGS_DIR)).unwrap();
        fs::write(d.path().join("settings/agent.json"), b"garbage").unwrap();
        let e = SettingsStore::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("agent.json"), "{e}");
    }

    #[test]
    fn free_disk_is_reported() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_disk_bytes(d.path()) > 0);
    }
}
