//! The crate's one error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A configuration field holds a value that cannot work.
    #[error("config field `{field}`: {reason}")]
    Config {
        /// The field, dotted (`backoff.max_ms`).
        field: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The configuration file is not valid TOML for this structure.
    #[error("config file {path}: {reason}")]
    ConfigParse {
        /// The file (empty when parsed from text).
        path: PathBuf,
        /// What the parser found.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// The operation (`read`, `create`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than the bound for its kind.
    #[error("{path}: {len} bytes, more than the maximum of {max}")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A stored file is not what it must be.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored identity is incomplete (some of key, certificate chain, CA are missing).
    #[error("incomplete identity in {dir}: {missing} is missing while other identity files exist")]
    IncompleteIdentity {
        /// The data directory.
        dir: PathBuf,
        /// The missing file's name.
        missing: &'static str,
    },
    /// A certificate or key could not be used.
    #[error("certificate material: {0}")]
    Pki(#[from] outpost_pki::PkiError),
    /// Connecting to an endpoint failed.
    #[error("connect to {name} at {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The TLS name expected.
        name: String,
        /// Why it failed.
        reason: String,
    },
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server (or a gateway on its behalf) refused.
    #[error("refused ({code}): {reason}")]
    Refused {
        /// The refusal code's name.
        code: String,
        /// The reason the peer gave.
        reason: String,
    },
    /// The server refused enrollment.
    #[error("enrollment of {device_id:?} refused ({code}): {reason}")]
    EnrollmentRefused {
        /// The device id asked for.
        device_id: String,
        /// The refusal code's name.
        code: String,
        /// The reason the server gave.
        reason: String,
    },
    /// A discovery datagram could not be decoded.
    #[error("discovery datagram: {0}")]
    Discovery(String),
    /// A pushed "sync now" datagram failed a check.
    #[error("push datagram refused: {0}")]
    PushRefused(String),
    /// A settings document received or stored is unusable.
    #[error("settings of application {application:?}: {reason}")]
    Settings {
        /// The application.
        application: String,
        /// What is wrong.
        reason: String,
    },
    /// Update distribution failed (multicast sockets, sessions, manifests).
    #[error("update distribution: {0}")]
    Distribution(String),
    /// The agent was stopped.
    #[error("agent stopped")]
    Stopped,
}

impl AgentError {
    /// Whether trying the same enrollment again later may succeed: the server could not be
    /// reached, the connection broke, or the server said it is overloaded or cannot reach
    /// what it needs. A refused token or device id is not.
    pub fn enrollment_may_pass_later(&self) -> bool {
        match self {
            AgentError::Connect { .. } | AgentError::Protocol(_) => true,
            AgentError::EnrollmentRefused { code, .. } => {
                matches!(code.as_str(), "Overloaded" | "ServerUnreachable")
            }
            _ => false,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AgentError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { op, path, source }
    }
}
