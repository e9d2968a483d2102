//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in outpost-multicast.
///
/// Each variant names what was wrong and carries the offending value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MulticastError {
    /// A datagram was shorter than its fixed header or than a length it declared.
    #[error("packet truncated: {what} needs {needed} bytes, {available} available")]
    Truncated {
        /// Which part of the packet was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// The datagram does not start with the protocol magic.
    #[error("bad magic 0x{0:04x}, expected 0x4f4d")]
    BadMagic(u16),
    /// The protocol version is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The packet type byte is unknown.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// A field holds a value outside its allowed range.
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// The offending value, formatted.
        value: String,
    },
    /// Bytes were left after a complete packet or manifest.
    #[error("{0} trailing bytes after {1}")]
    TrailingBytes(usize, &'static str),
    /// The manifest signature did not verify with the configured sender key.
    #[error("manifest signature does not verify for session {session_id:#018x}")]
    BadSignature {
        /// Session the manifest claimed.
        session_id: u64,
    },
    /// A configuration field is invalid.
    #[error("invalid configuration field `{field}`: {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A block did not match its hash from the manifest.
    #[error("block {block} does not match its manifest hash")]
    BlockHashMismatch {
        /// Block index.
        block: u32,
    },
    /// The assembled file does not match the whole-file hash.
    #[error("file hash mismatch: manifest {expected}, computed {actual}")]
    FileHashMismatch {
        /// Hex of the manifest hash.
        expected: String,
        /// Hex of the computed hash.
        actual: String,
    },
    /// A signing key could not be loaded.
    #[error("bad signing key: {0}")]
    Key(String),
    /// An I/O error, with the path or socket it concerned.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (file path, socket operation).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The unicast fetcher failed for a block.
    #[error("unicast fetch of block {block} failed: {reason}")]
    Fetch {
        /// Block index.
        block: u32,
        /// Why.
        reason: String,
    },
    /// An output path is unusable.
    #[error("unusable output path {0}")]
    BadPath(PathBuf),
    /// The session ended before the file was complete and no fetch could finish it.
    #[error("session {session_id:#018x} ended with {missing} blocks missing")]
    Incomplete {
        /// Session id.
        session_id: u64,
        /// Blocks still missing.
        missing: usize,
    },
}

impl MulticastError {
    pub(crate) fn invalid(field: &'static str, value: impl std::fmt::Display) -> Self {
        MulticastError::InvalidField {
            field,
            value: value.to_string(),
        }
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        MulticastError::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MulticastError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MulticastError>;
