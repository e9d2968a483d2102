//! The message bodies of the catalogue.
//!
//! Every body is a Protocol Buffers message (encoded with `prost`): fields are tagged, so a
//! peer skips fields it does not know and a newer peer can add fields without breaking an
//! older one. Bulk fields (`csr_der`, `data`, settings documents, ...) are [`Bytes`] and are
//! decoded without copying out of the frame payload.
//!
//! Field numbers are part of the protocol: never reuse or renumber one; add new fields with
//! new numbers. `docs/protocol.md` lists every field.

use bytes::Bytes;

// ---------------------------------------------------------------------------------------
// Shared types
// ---------------------------------------------------------------------------------------

/// The role a peer announces in its [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum Role {
    /// Not stated (or a role this side does not know).
    Unspecified = 0,
    /// A Network Agent on a managed device.
    Agent = 1,
    /// The Administration Server.
    Server = 2,
    /// A connection gateway.
    Gateway = 3,
    /// A distribution point serving its scope.
    DistributionPoint = 4,
    /// A mobile device.
    Mobile = 5,
}

/// Why something was refused; carried by [`Refusal`] and [`ConnectRefusal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum RefusalCode {
    /// Not stated (or a code this side does not know).
    Unspecified = 0,
    /// No protocol version in common.
    VersionMismatch = 1,
    /// The peer is not who it must be, or not allowed to do this.
    NotAuthorized = 2,
    /// The enrollment token is unknown, used or expired.
    BadEnrollmentToken = 3,
    /// The certificate request is unacceptable.
    BadCsr = 4,
    /// The Administration Server cannot be reached right now.
    ServerUnreachable = 5,
    /// The ticket is unknown, already used, expired or from another signal session.
    BadTicket = 6,
    /// A configured limit is reached (devices, pending connections, ...).
    Overloaded = 7,
    /// The message was not expected in this state.
    ProtocolViolation = 8,
    /// The side is shutting down.
    ShuttingDown = 9,
    /// The requested object does not exist.
    NotFound = 10,
    /// An internal failure on the refusing side.
    Internal = 11,
    /// The (virtual) server the device belongs to is disabled by an administrator: its
    /// data is kept and the device is served again once it is enabled (retry later).
    ServerDisabled = 12,
}

/// What kind of device connection a gateway relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum ChannelKind {
    /// Not stated (or a kind this side does not know).
    Unspecified = 0,
    /// A Network Agent on the agent port (client certificate from the server CA).
    Agent = 1,
    /// A mobile device authenticated by a certificate from the mobile CA.
    Mobile = 2,
    /// A mobile device on the port without client authentication.
    MobileUnauthenticated = 3,
    /// A Web Console connection tunnelled to the server side.
    WebConsole = 4,
    /// A device without a certificate yet, on the server's enrollment channel: only
    /// `EnrollRequest` is served.
    Enrollment = 5,
}

/// The role of a distribution point within its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum DpRole {
    /// Not a distribution point (any more) for this scope.
    None = 0,
    /// The active DP: takes files from the server.
    Active = 1,
    /// A standby DP: takes files from the active one.
    Standby = 2,
}

/// The kind of a distribution point scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum ScopeKind {
    /// Not stated (or a kind this side does not know).
    Unspecified = 0,
    /// An administration group and all its subgroups.
    Group = 1,
    /// A broadcast domain.
    BroadcastDomain = 2,
    /// A network location.
    NetworkLocation = 3,
}

/// The kind of an object whose version an agent reports in a [`SyncRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum ObjectKind {
    /// Not stated (or a kind this side does not know).
    Unspecified = 0,
    /// One application's effective settings.
    Settings = 1,
    /// An update or installation package.
    Update = 2,
    /// The device's distribution point and gateway assignments.
    Assignment = 3,
    /// A task.
    Task = 4,
}

/// Severity of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[non_exhaustive]
pub enum Severity {
    /// Informational.
    Info = 0,
    /// Something to look at.
    Warning = 1,
    /// A failure.
    Error = 2,
    /// A failure that needs action now.
    Critical = 3,
}

/// A single-use 128-bit ticket binding a gateway's [`ConnectRequest`] to the data connection
/// the server opens for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Ticket {
    /// The high 64 bits.
    #[prost(fixed64, tag = "1")]
    pub hi: u64,
    /// The low 64 bits.
    #[prost(fixed64, tag = "2")]
    pub lo: u64,
}

impl Ticket {
    /// A ticket from its 128-bit value.
    pub fn from_u128(v: u128) -> Self {
        Ticket {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }

    /// The ticket's 128-bit value.
    pub fn as_u128(&self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}

/// The identity a gateway authenticated on a device connection, forwarded to the server.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct PeerIdentity {
    /// SHA-256 of the peer's certificate (DER); exactly 32 bytes, or empty when the peer
    /// presented no certificate (unauthenticated mobile port, Web Console tunnel).
    #[prost(bytes = "bytes", tag = "1")]
    pub cert_sha256: Bytes,
    /// The certificate subject as text (empty without a certificate).
    #[prost(string, tag = "2")]
    pub subject: String,
    /// The device's address as the gateway saw it (`ip:port`).
    #[prost(string, tag = "3")]
    pub remote_addr: String,
    /// The port kind the device came in on.
    #[prost(enumeration = "ChannelKind", tag = "4")]
    pub channel: i32,
    /// The certificate's serial number as lower-case hex (at most [`MAX_SERIAL_HEX`]
    /// digits; empty without a certificate), so the server can check revocation without the certificate itself.
    #[prost(string, tag = "5")]
    pub cert_serial: String,
    /// The virtual server the certificate is bound to (its subjectAltName
    /// `urn:outpost:virtual-server:<id>`; empty: the main server). At most
    /// [`MAX_VIRTUAL_SERVER_ID`] bytes.
    #[prost(string, tag = "6")]
    pub virtual_server: String,
}

/// The longest [`PeerIdentity::virtual_server`], bytes (an id's limit).
pub const MAX_VIRTUAL_SERVER_ID: usize = 64;

/// The most hex digits of a [`PeerIdentity::cert_serial`]: an X.509 serial is at most 20
/// bytes.
pub const MAX_SERIAL_HEX: usize = 40;

/// A reference to a distribution point scope.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ScopeRef {
    /// The scope kind.
    #[prost(enumeration = "ScopeKind", tag = "1")]
    pub kind: i32,
    /// The scope's identifier (group id, broadcast domain id or network location name).
    #[prost(string, tag = "2")]
    pub id: String,
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

/// First message on every connection, from the side that opened it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Hello {
    /// Lowest protocol version spoken.
    #[prost(uint32, tag = "1")]
    pub min_version: u32,
    /// Highest protocol version spoken.
    #[prost(uint32, tag = "2")]
    pub max_version: u32,
    /// The sender's role.
    #[prost(enumeration = "Role", tag = "3")]
    pub role: i32,
    /// The sender's stable identifier (device id, gateway id, server instance id).
    #[prost(string, tag = "4")]
    pub node_id: String,
    /// Free-form software name and version, for logs.
    #[prost(string, tag = "5")]
    pub software: String,
}

/// Answer to a [`Hello`]: the chosen protocol version.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HelloAck {
    /// The highest version both sides speak.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The answering side's role.
    #[prost(enumeration = "Role", tag = "2")]
    pub role: i32,
    /// The answering side's stable identifier.
    #[prost(string, tag = "3")]
    pub node_id: String,
}

/// A refusal of the last request, or of the whole connection (then the sender closes).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Refusal {
    /// Why.
    #[prost(enumeration = "RefusalCode", tag = "1")]
    pub code: i32,
    /// A human-readable reason.
    #[prost(string, tag = "2")]
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// Enrollment
// ---------------------------------------------------------------------------------------

/// An agent asks for its certificate: a PKCS#10 request and the one-time token the
/// administrator issued.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EnrollRequest {
    /// The device identity the certificate is to be bound to.
    #[prost(string, tag = "1")]
    pub device_id: String,
    /// The certificate signing request, DER.
    #[prost(bytes = "bytes", tag = "2")]
    pub csr_der: Bytes,
    /// The one-time enrollment token.
    #[prost(string, tag = "3")]
    pub enrollment_token: String,
    /// The administration group the device asks to be placed in (the server may ignore it).
    #[prost(string, tag = "4")]
    pub group_hint: String,
}

/// The server's answer to an [`EnrollRequest`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EnrollResponse {
    /// The issued certificate, DER.
    #[prost(bytes = "bytes", tag = "1")]
    pub certificate_der: Bytes,
    /// Intermediate certificates up to (not including) the root, DER.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub chain_der: Vec<Bytes>,
    /// The server CA certificate the agent must trust from now on, DER.
    #[prost(bytes = "bytes", tag = "3")]
    pub ca_der: Bytes,
    /// The administration group the device was placed in.
    #[prost(string, tag = "4")]
    pub group: String,
}

/// An enrolled agent asks, over its authenticated connection, for the certificate that will
/// succeed the one it presents (its reserve): a PKCS#10 request for a fresh key. The server
/// binds the new certificate to the device the connection authenticated, whatever the
/// request names.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenewRequest {
    /// The certificate signing request, DER.
    #[prost(bytes = "bytes", tag = "1")]
    pub csr_der: Bytes,
}

/// The server's answer to a [`RenewRequest`]: the reserve certificate. The agent switches to
/// it shortly before the one it presents expires.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RenewResponse {
    /// The issued certificate, DER.
    #[prost(bytes = "bytes", tag = "1")]
    pub certificate_der: Bytes,
    /// Intermediate certificates up to (not including) the root, DER.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub chain_der: Vec<Bytes>,
    /// The server CA certificate, DER.
    #[prost(bytes = "bytes", tag = "3")]
    pub ca_der: Bytes,
}

// ---------------------------------------------------------------------------------------
// Sync
// ---------------------------------------------------------------------------------------

/// The version of one object an agent holds.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HeldVersion {
    /// What kind of object.
    #[prost(enumeration = "ObjectKind", tag = "1")]
    pub kind: i32,
    /// The object's identifier (application name, update id, ...).
    #[prost(string, tag = "2")]
    pub id: String,
    /// The version held.
    #[prost(uint64, tag = "3")]
    pub version: u64,
}

/// A distribution point's health, reported with its heartbeat.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DpStatus {
    /// The scope the report is for.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<ScopeRef>,
    /// The election epoch the DP believes current.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// The role the DP believes it has.
    #[prost(enumeration = "DpRole", tag = "3")]
    pub role: i32,
    /// Free disk space in bytes.
    #[prost(uint64, tag = "4")]
    pub free_disk_bytes: u64,
    /// Uptime in seconds.
    #[prost(uint64, tag = "5")]
    pub uptime_secs: u64,
    /// Load in thousandths (1000 = one busy core).
    #[prost(uint32, tag = "6")]
    pub load_milli: u32,
    /// The Ed25519 public key (32 bytes) that signs this DP's multicast session manifests;
    /// empty if it does not send multicast.
    #[prost(bytes = "bytes", tag = "7")]
    pub signing_key: Bytes,
    /// Where this DP serves blocks by unicast (`host:port`, chunk requests over the wire
    /// protocol); empty if it does not.
    #[prost(string, tag = "8")]
    pub unicast_addr: String,
}

/// The agent's periodic heartbeat.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncRequest {
    /// The device.
    #[prost(string, tag = "1")]
    pub device_id: String,
    /// Every object version the agent holds.
    #[prost(message, repeated, tag = "2")]
    pub held: Vec<HeldVersion>,
    /// Whether the device believes it is on the corporate network.
    #[prost(bool, tag = "3")]
    pub on_corporate_network: bool,
    /// Free disk space in bytes.
    #[prost(uint64, tag = "4")]
    pub free_disk_bytes: u64,
    /// Uptime in seconds.
    #[prost(uint64, tag = "5")]
    pub uptime_secs: u64,
    /// Peers heard in the device's broadcast domain (their device ids).
    #[prost(string, repeated, tag = "6")]
    pub visible_peers: Vec<String>,
    /// Status of every DP role this device holds.
    #[prost(message, repeated, tag = "7")]
    pub dp_status: Vec<DpStatus>,
}

/// One application's effective settings, as a JSON document.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AppSettings {
    /// The application.
    #[prost(string, tag = "1")]
    pub application: String,
    /// The settings version (changes whenever the document does).
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// The effective settings, a UTF-8 JSON document.
    #[prost(bytes = "bytes", tag = "3")]
    pub json: Bytes,
}

/// The server's answer to a [`SyncRequest`]: only what changed for this device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncResponse {
    /// Settings documents newer than the agent holds.
    #[prost(message, repeated, tag = "1")]
    pub settings: Vec<AppSettings>,
    /// Applications whose settings the agent must drop.
    #[prost(string, repeated, tag = "2")]
    pub removed_settings: Vec<String>,
    /// Seconds until the next sync.
    #[prost(uint32, tag = "3")]
    pub next_sync_secs: u32,
    /// The device's distribution point assignments (its own roles, or who serves it).
    #[prost(message, repeated, tag = "4")]
    pub assignments: Vec<DpAssignment>,
    /// The gateway the device must use, `host:port`; empty to connect directly.
    #[prost(string, tag = "5")]
    pub gateway: String,
    /// Updates the agent does not hold yet.
    #[prost(message, repeated, tag = "6")]
    pub updates: Vec<UpdateAnnouncement>,
}

/// One event reported by an agent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Event {
    /// Sequence number, increasing per device.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// When it happened, milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub time_unix_ms: i64,
    /// Severity.
    #[prost(enumeration = "Severity", tag = "3")]
    pub severity: i32,
    /// A machine-readable kind (`"dp.low_disk"`, ...).
    #[prost(string, tag = "4")]
    pub kind: String,
    /// Free-form details.
    #[prost(string, tag = "5")]
    pub body: String,
}

/// A batch of events from an agent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EventBatch {
    /// The device.
    #[prost(string, tag = "1")]
    pub device_id: String,
    /// The events, in order.
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<Event>,
}

/// The server has stored every event up to and including `up_to_id`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EventAck {
    /// The highest event id stored.
    #[prost(uint64, tag = "1")]
    pub up_to_id: u64,
}

/// Push: "sync now" (over a kept connection, or signed in a UDP packet to port 15000).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncNow {
    /// Why (for logs).
    #[prost(string, tag = "1")]
    pub reason: String,
    /// A nonce; a receiver ignores a nonce it has seen.
    #[prost(uint64, tag = "2")]
    pub nonce: u64,
}

// ---------------------------------------------------------------------------------------
// Gateway signal connection (server dials a DMZ gateway)
// ---------------------------------------------------------------------------------------

/// First message of a signal connection, server to gateway.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SignalHello {
    /// The server instance.
    #[prost(string, tag = "1")]
    pub server_id: String,
    /// Keepalive interval the server will keep, in milliseconds.
    #[prost(uint32, tag = "2")]
    pub keepalive_ms: u32,
    /// Data connections the server wants to keep open and idle at the gateway (its warm
    /// pool; 0: none). The gateway grants at most its own limit with [`PoolTickets`].
    #[prost(uint32, tag = "3")]
    pub pool_size: u32,
}

/// The gateway accepts a signal connection.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SignalHelloAck {
    /// The gateway.
    #[prost(string, tag = "1")]
    pub gateway_id: String,
    /// The signal session id; tickets issued on this connection are bound to it.
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
}

/// Keepalive on a signal connection; the other side answers with the same `seq`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Keepalive {
    /// Sequence number.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Set on the answer.
    #[prost(bool, tag = "2")]
    pub reply: bool,
}

/// Gateway to server: a device is waiting; open a data connection and present `ticket`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConnectRequest {
    /// Single-use ticket (required).
    #[prost(message, optional, tag = "1")]
    pub ticket: Option<Ticket>,
    /// Who is waiting (required).
    #[prost(message, optional, tag = "2")]
    pub peer: Option<PeerIdentity>,
    /// Milliseconds until the ticket expires.
    #[prost(uint32, tag = "3")]
    pub expires_in_ms: u32,
}

/// Gateway to server: tickets for warm-pool data connections. The server opens one data
/// connection per ticket and presents it (`DataAttach`); the gateway keeps the connection
/// idle until a device comes, then says `TunnelOpen` on it and the server answers
/// `TunnelAccept`. Pool tickets are single-use and bound to the signal session like every
/// other.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PoolTickets {
    /// The tickets (at most [`MAX_POOL_TICKETS`]).
    #[prost(message, repeated, tag = "1")]
    pub tickets: Vec<Ticket>,
    /// Milliseconds until they expire.
    #[prost(uint32, tag = "2")]
    pub expires_in_ms: u32,
}

/// The most tickets one [`PoolTickets`] carries.
pub const MAX_POOL_TICKETS: usize = 1_024;

/// Server to gateway: the server will not serve this ticket; close the waiting device.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConnectRefusal {
    /// The ticket refused (required).
    #[prost(message, optional, tag = "1")]
    pub ticket: Option<Ticket>,
    /// Why.
    #[prost(enumeration = "RefusalCode", tag = "2")]
    pub code: i32,
    /// A human-readable reason.
    #[prost(string, tag = "3")]
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// Data connections and tunnels
// ---------------------------------------------------------------------------------------

/// First message of a server-opened data connection to a DMZ gateway: present the ticket.
/// After the gateway's [`DataAttachAck`] the connection carries the device's bytes.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DataAttach {
    /// The ticket from the [`ConnectRequest`] (required).
    #[prost(message, optional, tag = "1")]
    pub ticket: Option<Ticket>,
    /// The signal session the ticket came from.
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
}

/// The gateway accepted a [`DataAttach`] and splices; it echoes who is behind it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DataAttachAck {
    /// The ticket accepted (required).
    #[prost(message, optional, tag = "1")]
    pub ticket: Option<Ticket>,
    /// The identity the gateway authenticated (required).
    #[prost(message, optional, tag = "2")]
    pub peer: Option<PeerIdentity>,
}

/// Opens a relayed stream on a gateway-opened connection (remote-office mode): the
/// connection then carries the device's bytes.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TunnelOpen {
    /// The identity the gateway authenticated (required).
    #[prost(message, optional, tag = "1")]
    pub peer: Option<PeerIdentity>,
    /// The gateway.
    #[prost(string, tag = "2")]
    pub gateway_id: String,
    /// The gateway asks to carry the stream in chunks, ended by an empty chunk each way, so
    /// the connection can carry another device afterwards (a warm-pool connection).
    #[prost(bool, tag = "3")]
    pub reuse: bool,
}

/// The server accepted a [`TunnelOpen`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TunnelAccept {
    /// Maximum idle time the server allows on the tunnel, in milliseconds.
    #[prost(uint32, tag = "1")]
    pub idle_timeout_ms: u32,
    /// The server agrees to chunks (only when asked): the stream is carried so, and the
    /// connection returns to the pool when both directions have ended.
    #[prost(bool, tag = "2")]
    pub reuse: bool,
}

// ---------------------------------------------------------------------------------------
// Distribution points and updates
// ---------------------------------------------------------------------------------------

/// A distribution point's assignment or role change in a scope.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DpAssignment {
    /// The scope (required).
    #[prost(message, optional, tag = "1")]
    pub scope: Option<ScopeRef>,
    /// The DP the assignment is about.
    #[prost(string, tag = "2")]
    pub dp_device_id: String,
    /// Its role.
    #[prost(enumeration = "DpRole", tag = "3")]
    pub role: i32,
    /// The scope's election epoch; a DP that sees a higher epoch than its own has been
    /// replaced.
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
    /// The DP's multicast group address (text form of an IPv4 or IPv6 address; may be empty).
    #[prost(string, tag = "5")]
    pub multicast_group: String,
    /// The multicast UDP port.
    #[prost(uint32, tag = "6")]
    pub multicast_port: u32,
    /// Where the DP takes files from: the server (active) or the active DP (standby),
    /// `host:port`.
    #[prost(string, tag = "7")]
    pub upstream: String,
    /// The DP's multicast manifest signing key (Ed25519 public key, 32 bytes) as the DP
    /// reported it to the server: receivers accept only sessions signed with it. Empty if
    /// unknown.
    #[prost(bytes = "bytes", tag = "8")]
    pub signing_key: Bytes,
    /// Where the DP serves blocks by unicast (`host:port`), as it reported it; empty if
    /// unknown.
    #[prost(string, tag = "9")]
    pub unicast_addr: String,
}

/// An update or installation package available to the receiver.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct UpdateAnnouncement {
    /// The object id.
    #[prost(string, tag = "1")]
    pub object_id: String,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Version.
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// Size in bytes.
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// SHA-256 of the whole file; exactly 32 bytes.
    #[prost(bytes = "bytes", tag = "5")]
    pub sha256: Bytes,
}

/// Ask for a byte range of an object.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChunkRequest {
    /// The object id.
    #[prost(string, tag = "1")]
    pub object_id: String,
    /// Offset of the first byte.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// Number of bytes wanted (the answer may be shorter at the end of the object).
    #[prost(uint32, tag = "3")]
    pub length: u32,
}

/// A byte range of an object.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChunkResponse {
    /// The object id.
    #[prost(string, tag = "1")]
    pub object_id: String,
    /// Offset of the first byte.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// The bytes.
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
    /// The object's total size.
    #[prost(uint64, tag = "4")]
    pub total_size: u64,
}
