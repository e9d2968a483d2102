//! # outpost
//!
//! Facade over the outpost libraries: each module re-exports one crate.
//!
//! | module | crate | what it is for |
//! |---|---|---|
//! | [`wire`] | `outpost-wire` | frame format, message catalogue, codec |
//! | [`pki`] | `outpost-pki` | certificate authority and rustls configurations |
//! | [`policy`] | `outpost-policy` | policies, profiles, effective settings |
//! | [`election`] | `outpost-election` | distribution point scopes and election |
//! | [`multicast`] | `outpost-multicast` | reliable UDP multicast distribution |
//! | [`gateway`] | `outpost-gateway` | connection gateway relay (DMZ and remote office) and the server-side connector |
//! | [`server`] | `outpost-server` | Administration Server core: persistent registry, enrollment |
//! | [`agent`] | `outpost-agent` | Network Agent core: enrollment, connection with backoff, sync, settings overlay, discovery, update distribution and the DP role |

pub use outpost_agent as agent;
pub use outpost_election as election;
pub use outpost_gateway as gateway;
pub use outpost_multicast as multicast;
pub use outpost_pki as pki;
pub use outpost_policy as policy;
pub use outpost_server as server;
pub use outpost_wire as wire;
