//! The crate's one error type.

use std::net::SocketAddr;

/// Everything that can go wrong configuring or running a gateway or the server-side connector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A configuration value is not acceptable.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field (dotted path).
        field: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// A configuration file could not be parsed.
    #[error("cannot parse configuration: {0}")]
    ConfigSyntax(String),
    /// Certificates or keys could not be loaded or turned into TLS configurations.
    #[error("TLS setup: {0}")]
    Pki(#[from] outpost_pki::PkiError),
    /// Binding a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A TLS handshake failed.
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer's address.
        peer: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A peer broke the signal/data protocol.
    #[error("protocol error with {peer}: {reason}")]
    Protocol {
        /// The peer's address.
        peer: SocketAddr,
        /// What it did.
        reason: String,
    },
    /// The peer refused with a wire `Refusal`.
    #[error("refused by {peer}: {code:?}: {reason}")]
    Refused {
        /// The peer's address.
        peer: SocketAddr,
        /// The refusal code.
        code: outpost_wire::messages::RefusalCode,
        /// The peer's reason.
        reason: String,
    },
    /// A wire decoding error.
    #[error(transparent)]
    Wire(#[from] outpost_wire::WireError),
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An operation did not finish in time.
    #[error("{what} timed out after {millis} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The limit.
        millis: u64,
    },
}

impl GatewayError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        GatewayError::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
