//! One holder of a data directory at a time.
//!
//! A running server and every offline command that edits the data directory take an
//! exclusive lock on `server.lock` in it (an operating-system file lock, so a holder that
//! crashes releases it with its last descriptor) and write their process id and role into the
//! file, so whoever is refused learns who holds it.
//!
//! ```
//! use outpost_server::DataDirLock;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let held = DataDirLock::acquire(dir.path(), "server").unwrap();
//! let e = DataDirLock::acquire(dir.path(), "offline command").unwrap_err();
//! assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
//! drop(held);
//! DataDirLock::acquire(dir.path(), "offline command").unwrap();
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::ServerError;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "server.lock";

/// The longest holder description read back from a lock file.
const MAX_HOLDER: u64 = 256;

/// An exclusive hold on a data directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` for `role` ("server", "offline command", ...), or fails with
    /// [`ServerError::DataDirBusy`] naming the holder.
    pub fn acquire(dir: &Path, role: &str) -> Result<Self, ServerError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| ServerError::Io {
            op: "lock",
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's description stays readable to whoever is
        // refused.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // Best effort: the holder may be between truncating and writing.
                let _ = (&file).take(MAX_HOLDER).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(ServerError::DataDirBusy {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        holder.chars().filter(|c| !c.is_control()).collect()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "pid {} ({role})", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
