//! # outpost-gateway
//!
//! Connection gateways: devices that cannot or must not reach the Administration Server
//! connect to a gateway, which relays them to the server.
//!
//! - **DMZ mode** (server-initiated): the gateway never opens a connection toward the
//!   server. The server dials the gateway ([`ServerConnector`]) and keeps a permanent *signal
//!   connection* with keepalives. When a device connects, the gateway sends a
//!   `ConnectRequest` with a fresh single-use 128-bit ticket over the signal connection; the
//!   server opens a new *data connection* to the gateway and presents the ticket
//!   (`DataAttach`); the gateway splices it to the waiting device. The signal connection
//!   never carries device data. Tickets expire, are single-use and bound to the signal
//!   session (and server certificate) that issued them ([`tickets`]). While no signal
//!   connection is up a connecting device gets a prompt `Refusal { ServerUnreachable }`.
//! - **Remote-office mode** ("keep connection"): the gateway dials the server's
//!   [`DeviceListener`] for each device and opens a tunnel (`TunnelOpen`).
//!
//! Ports: the agent port (default 13000; TLS with a client certificate from the server CA; in
//! DMZ mode the server's signal and data connections arrive here too, told apart by TLS
//! ALPN), a mobile port with client authentication (mobile CA), a mobile port without it
//! (only when explicitly enabled, and logged), and a Web Console tunnel (DMZ only). The
//! gateway forwards the identity it authenticated (certificate fingerprint and subject) with
//! each data connection, so the server knows who is behind it: every device reaches the
//! server as the same [`DeviceConnection`] type, whichever way it came.
//!
//! The decisions live in sans-IO pieces ([`tickets`], [`admission`] of peers not known yet,
//! [`GatewayConfig`] validation); tokio and sockets live in [`Gateway`], [`ServerConnector`]
//! and [`DeviceListener`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_gateway::tickets::{Binding, Refused, TicketTable};
//!
//! // The ticket rules, without any IO: single use, bound to the session, expiring.
//! let mut t = TicketTable::new(Duration::from_secs(10), 1_000);
//! let now = Instant::now();
//! let session = Binding { session: 7, server: [0xAA; 32] };
//! t.issue(42, session, now, ()).unwrap();
//! assert_eq!(t.redeem(42, Binding { session: 8, ..session }, now), Err(Refused::WrongSession));
//! assert_eq!(t.redeem(42, session, now), Ok(()));
//! assert_eq!(t.redeem(42, session, now), Err(Refused::Replayed));
//! ```

pub mod admission;
pub mod chunked;
mod config;
mod connector;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod gateway;
pub mod io;
mod listener;
mod parking;
mod peer;
pub mod pool;
pub mod signal;
pub mod splice;
pub mod tickets;

pub use config::{
    ConnectorConfig, DmzGatewayEntry, GatewayConfig, GatewayMode, Limits, RemoteOfficeEntry,
    ServerSideConfig, StaticTunnels, TlsFiles, TlsMaterial,
};
pub use connector::{ConnectorStats, GatewayControl, GatewaysUp, ServerConnector};
pub use error::GatewayError;
pub use gateway::{CRL_CHECK_INTERVAL, Gateway, GatewayStats, web_console_exposure};
pub use listener::{DeviceListener, ListenerLimits, TunnelAuthority, TunnelPolicy};
pub use peer::{BoxStream, DeviceConnection, DeviceIo, DevicePeer, Via};

/// TLS ALPN protocol of a remote-office gateway's tunnel to the server.
pub const ALPN_TUNNEL: &[u8] = b"outpost-tunnel/1";
/// TLS ALPN protocol of the server's enrollment channel: a device without a certificate yet
/// connects with it (no client certificate asked) and may only enroll.
pub const ALPN_ENROLL: &[u8] = outpost_pki::tls::ALPN_ENROLL;
