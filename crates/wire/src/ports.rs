//! The system's well-known ports, each a default a configuration may change.

/// TCP: the device port, of the Administration Server and of every connection gateway
/// (agents, mobile devices and the server's own connections to a gateway).
pub const DEVICE: u16 = 13000;
/// UDP: broadcast-domain discovery between agents, and the server's signed "sync now"
/// datagrams ([`push`](crate::push)).
pub const DISCOVERY: u16 = 15000;
/// UDP: multicast update distribution from the active distribution points.
pub const MULTICAST: u16 = 15001;
