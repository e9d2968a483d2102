//! Atomic persistence of a small state file.
//!
//! A write goes to a temporary file in the same directory, is flushed to disk, and is then
//! renamed over the old file (and the directory is flushed), so a crash leaves either the old
//! or the new state, never a torn one. A read is bounded before anything is allocated.

use std::path::Path;

use crate::ServerError;

/// Replaces `path` with `bytes` atomically (mode 0644), with
/// [`outpost_pki::store::write_atomic`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    Ok(outpost_pki::store::write_atomic(path, bytes, 0o644)?)
}

/// Reads `path`, refusing a file larger than `max` bytes before reading it. `Ok(None)` if the
/// file does not exist.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ServerError> {
    use outpost_pki::{FileError, PkiError};
    match outpost_pki::store::read_bounded(path, max, "state file") {
        Ok(bytes) => Ok(Some(bytes)),
        Err(PkiError::File(FileError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(PkiError::File(FileError::TooLarge { path, len, max, .. })) => {
            Err(ServerError::StateTooLarge { path, len, max })
        }
        Err(PkiError::File(FileError::Io { op, path, source })) => {
            Err(ServerError::Io { op, path, source })
        }
        Err(other) => Err(ServerError::Pki(other)),
    }
}
