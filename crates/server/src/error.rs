//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the server core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file or directory operation failed.
    #[error("cannot {op} {path}: {source}", path = path.display())]
    Io {
        /// The operation (`read`, `create`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A socket, thread or runtime the server needs could not be set up.
    #[error("cannot {what}: {source}")]
    Os {
        /// What was being set up (`bind the administration API`, ...).
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is larger than the configured bound.
    #[error("{path}: {len} bytes, more than the maximum of {max}")]
    StateTooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The state file is not a valid registry.
    #[error("{path}: not a valid registry: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found (with line and column).
        reason: String,
    },
    /// The state file was written by a newer format.
    #[error("{path}: registry format {found}, this server reads up to {supported}")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The format version found.
        found: u32,
        /// The newest format this server reads.
        supported: u32,
    },
    /// A group id is unknown.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// A device id is unknown.
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
    /// No object of this kind has this id.
    #[error("unknown {kind} {id:?}")]
    Unknown {
        /// What kind of object.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// An object cannot be removed while others depend on it.
    #[error("{0}")]
    InUse(String),
    /// The virtual server is disabled: its devices are refused until it is enabled.
    #[error("virtual server {0:?} is disabled")]
    Disabled(String),
    /// A device asked for another reserve certificate sooner than
    /// [`ServiceConfig::min_renewal_interval`](crate::ServiceConfig::min_renewal_interval)
    /// after the last.
    #[error(
        "device {device:?} was issued a reserve certificate recently; retry in {retry_after_secs} s"
    )]
    RenewalTooSoon {
        /// The device.
        device: String,
        /// Seconds until it may ask again.
        retry_after_secs: u64,
    },
    /// An object with this id already exists.
    #[error("{kind} {id:?} already exists")]
    Duplicate {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// Moving a group would make it its own ancestor.
    #[error("moving group {group:?} under {parent:?} would create a cycle")]
    Cycle {
        /// The group.
        group: String,
        /// The requested parent.
        parent: String,
    },
    /// An identifier is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        /// What kind of identifier.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The enrollment was refused.
    #[error("enrollment of {device:?} refused: {reason}")]
    EnrollmentRefused {
        /// The device id asked for.
        device: String,
        /// Why.
        reason: EnrollmentRefusal,
    },
    /// Another process holds the data directory (a running server, or an offline command).
    #[error(
        "data directory {dir} is in use by {holder}: stop that process first \
         (offline commands run only while no server runs on the directory, and one server \
         runs per directory)"
    )]
    DataDirBusy {
        /// The data directory.
        dir: PathBuf,
        /// Who holds it, as the holder wrote it ("pid 1234 (server)").
        holder: String,
    },
    /// The random source failed.
    #[error("the operating system's random source failed")]
    Random,
    /// A configuration value or file is not acceptable.
    #[error("configuration: {0}")]
    Config(String),
    /// Certificates or keys could not be loaded.
    #[error(transparent)]
    Pki(#[from] outpost_pki::PkiError),
    /// The listener or the gateway connector could not start.
    #[error(transparent)]
    Gateway(#[from] outpost_gateway::GatewayError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ServerError {
    /// A mapper of an I/O error from `op` on `path` (`.map_err(ServerError::io("read", p))`).
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ServerError::Io { op, path, source }
    }

    /// A mapper of an I/O error setting up `what`.
    pub(crate) fn os(what: &'static str) -> impl Fn(std::io::Error) -> Self + Copy {
        move |source| ServerError::Os { what, source }
    }

    /// Whether the same request may succeed later unchanged (the database was unreachable,
    /// full or busy): devices are told to retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ServerError::Storage(_))
    }
}

/// What went wrong in the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database could not be reached or opened.
    #[error("{backend} database {url}: cannot connect: {source}")]
    Connect {
        /// The backend.
        backend: crate::Backend,
        /// Its URL, without password.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("{backend} database: schema migration failed: {source}")]
    Migrate {
        /// The backend.
        backend: crate::Backend,
        /// Why.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed (nothing of its transaction was kept).
    #[error("{backend} database: {what}: {source}")]
    Query {
        /// The backend.
        backend: crate::Backend,
        /// What the server was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not make sense.
    #[error("database: stored {what} is not valid")]
    BadRow {
        /// What.
        what: String,
    },
    /// The storage's writer is gone (the storage was shut down).
    #[error("the storage has stopped")]
    Stopped,
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollmentRefusal {
    /// The token is not one the server issued, or it was already used.
    #[error("unknown or already used enrollment token")]
    UnknownToken,
    /// The token expired.
    #[error("the enrollment token expired")]
    ExpiredToken,
    /// The token was issued for another device.
    #[error("the enrollment token was issued for device {0:?}")]
    OtherDevice(String),
    /// The device is already enrolled.
    #[error("the device is already enrolled")]
    AlreadyEnrolled,
    /// The certificate request is not acceptable.
    #[error("certificate request refused: {0}")]
    BadCsr(String),
}
