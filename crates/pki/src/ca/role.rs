//! Roles: what an issued certificate is for.

use std::fmt;

use rcgen::ExtendedKeyUsagePurpose;

/// What an issued certificate is for. Written into the subject as `OU=outpost-<role>` so that
/// a peer can tell a server certificate from an agent certificate signed by the same CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The Administration Server (TLS server for agents, TLS client towards DMZ gateways).
    Server,
    /// A connection gateway (TLS server for agents, mobile devices and the server's links).
    Gateway,
    /// A Network Agent (TLS client).
    Agent,
    /// A mobile device (TLS client, issued by the mobile CA).
    Mobile,
}

impl Role {
    /// The organisational-unit tag written into the subject (`outpost-server`, ...).
    pub fn tag(self) -> &'static str {
        match self {
            Role::Server => "outpost-server",
            Role::Gateway => "outpost-gateway",
            Role::Agent => "outpost-agent",
            Role::Mobile => "outpost-mobile",
        }
    }

    /// Parses a tag written by [`Role::tag`].
    pub fn from_tag(tag: &str) -> Option<Role> {
        [Role::Server, Role::Gateway, Role::Agent, Role::Mobile]
            .into_iter()
            .find(|r| r.tag() == tag)
    }

    pub(super) fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            // The server and gateways are TLS servers and also dial each other with client
            // authentication (signal and data connections).
            Role::Server | Role::Gateway => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Agent | Role::Mobile => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Gateway => "gateway",
            Role::Agent => "agent",
            Role::Mobile => "mobile",
        })
    }
}
