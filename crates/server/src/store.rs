//! Atomic persistence of a small state file.
//!
//! A write goes to a temporary file in the same directory, is flushed to disk, and is then
//! renamed over the old file (and the directory is flushed), so a crash leaves either the old
//! or the new state, never a torn one. A read is bounded before anything is allocated.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use crate::ServerError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        // Make the rename itself durable.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
