//! Atomic persistence of a small state file.
//!
//! A write goes to a temporary file in the same directory, is flushed to disk, and is then
//! renamed over the old file (and the directory is flushed), so a crash leaves either the old
//! or the new state, never a torn one. A read is bounded before anything is allocated.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::ServerError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `bytes` atomically (mode 0644), with
/// [`outpost_pki::store::write_atomic`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    Ok(outpost_pki::store::write_atomic(path, bytes, 0o644)?)
}

/// Reads `path`, refusing a file larger than `max` bytes before reading it. `Ok(None)` if the
/// file does not exist.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ServerError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let len = f.metadata().map_err(io(path))?.len();
    if len > max {
        return Err(ServerError::StateTooLarge {
            path: path.to_path_buf(),
            len,
            max,
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    // The file may grow between the check and the read: read at most max + 1 bytes.
    f.take(max + 1).read_to_end(&mut buf).map_err(io(path))?;
    if buf.len() as u64 > max {
        return Err(ServerError::StateTooLarge {
            path: path.to_path_buf(),
            len: buf.len() as u64,
            max,
        });
    }
    Ok(Some(buf))
}
