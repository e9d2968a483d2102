//! Certificate profiles: the identity a certificate is issued for, validated.

use std::net::IpAddr;

use super::Role;
use super::parse::{common_name_of, parse_cert, role_of, san_of, virtual_server_of};
use crate::error::{CertError, NameError, PkiError, Result};
use crate::names::{validate_device_id, validate_identity, validate_san_set};

/// Longest common name written into a certificate (X.520 ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;

/// The subjectAltName URI prefix that binds a device certificate to a virtual server:
/// `urn:outpost:virtual-server:<id>`.
pub(super) const VIRTUAL_SERVER_URI_PREFIX: &str = "urn:outpost:virtual-server:";

/// The identity a certificate is issued for, decided by the server (never by a requester).
///
/// Built only through the validating constructors, so every value is well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProfile {
    role: Role,
    common_name: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    virtual_server: Option<String>,
}

impl CertProfile {
    /// The Administration Server: `common_name` plus the DNS names and addresses agents dial.
    ///
    /// # Errors
    /// An invalid or duplicate name, or no name and no address at all.
    pub fn server(common_name: &str, dns_names: &[String], ips: &[IpAddr]) -> Result<Self> {
        validate_identity("common name", common_name)?;
        let (dns_names, ip_addresses) = validate_san_set(dns_names, ips)?;
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(PkiError::Name(NameError::NoNames { role: "server" }));
        }
        Ok(Self {
            role: Role::Server,
            common_name: common_name.to_owned(),
            dns_names,
            ip_addresses,
            virtual_server: None,
        })
    }

    /// A connection gateway: every DNS name (and address) the administrator entered. The
    /// common name is the first DNS name that fits in a common name (at most 64 characters,
    /// X.520's upper bound), else the first address, else `outpost-gateway`. Peers match the
    /// subjectAltName, never the common name.
    ///
    /// # Errors
    /// [`NameError::InvalidDnsName`] naming the first bad name, [`NameError::Duplicate`],
    /// or [`NameError::NoNames`].
    pub fn gateway(dns_names: &[String], ips: &[IpAddr]) -> Result<Self> {
        let (dns_names, ip_addresses) = validate_san_set(dns_names, ips)?;
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(PkiError::Name(NameError::NoNames { role: "gateway" }));
        }
        let common_name = dns_names
            .iter()
            .find(|n| n.len() <= MAX_COMMON_NAME_LEN)
            .cloned()
            .or_else(|| ip_addresses.first().map(IpAddr::to_string))
            .unwrap_or_else(|| Role::Gateway.tag().to_owned());
        Ok(Self {
            role: Role::Gateway,
            common_name,
            dns_names,
            ip_addresses,
            virtual_server: None,
        })
    }

    /// A Network Agent bound to `device_id` (the common name).
    ///
    /// # Errors
    /// [`NameError::InvalidIdentity`] for a bad device id.
    pub fn agent(device_id: &str) -> Result<Self> {
        Self::device(Role::Agent, device_id)
    }

    /// A mobile device bound to `device_id`; issued by the mobile CA.
    ///
    /// # Errors
    /// [`NameError::InvalidIdentity`] for a bad device id.
    pub fn mobile(device_id: &str) -> Result<Self> {
        Self::device(Role::Mobile, device_id)
    }

    fn device(role: Role, device_id: &str) -> Result<Self> {
        validate_device_id(device_id)?;
        Ok(Self {
            role,
            common_name: device_id.to_owned(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            virtual_server: None,
        })
    }

    /// Binds a device profile to virtual server `id`: the certificate carries the
    /// subjectAltName URI `urn:outpost:virtual-server:<id>`, and a server routes its
    /// connections to that virtual server only.
    ///
    /// # Errors
    /// [`NameError::InvalidIdentity`] for a bad id, or a profile that is not a device's
    /// (servers and gateways serve every virtual server).
    pub fn in_virtual_server(mut self, id: &str) -> Result<Self> {
        validate_identity("virtual server id", id)?;
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(PkiError::Name(NameError::InvalidIdentity {
                what: "virtual server id",
                value: id.to_owned(),
                reason: "only letters, digits and - _ . are allowed",
            }));
        }
        if !matches!(self.role, Role::Agent | Role::Mobile) {
            return Err(PkiError::Name(NameError::InvalidIdentity {
                what: "virtual server id",
                value: id.to_owned(),
                reason: "only device certificates are bound to a virtual server",
            }));
        }
        self.virtual_server = Some(id.to_owned());
        Ok(self)
    }

    /// Reads the profile back from a certificate issued by this crate (role from the `OU`,
    /// identity from the `CN`, names from the subjectAltName), re-validating every part.
    ///
    /// # Errors
    /// [`CertError::Malformed`] if the certificate is unreadable or carries no role.
    pub fn from_certificate(der: &[u8]) -> Result<Self> {
        let cert = parse_cert(der, "certificate")?;
        let malformed = |reason: String| {
            PkiError::Cert(CertError::Malformed {
                what: "certificate".to_owned(),
                reason,
            })
        };
        let role =
            role_of(&cert).ok_or_else(|| malformed("no outpost role in subject OU".into()))?;
        let cn = common_name_of(&cert).ok_or_else(|| malformed("no common name".into()))?;
        let (dns, ips) = san_of(&cert);
        let profile = match role {
            Role::Server => Self::server(&cn, &dns, &ips),
            Role::Gateway => Self::gateway(&dns, &ips),
            Role::Agent => Self::agent(&cn),
            Role::Mobile => Self::mobile(&cn),
        }?;
        match virtual_server_of(&cert) {
            Some(vs) => profile.in_virtual_server(&vs),
            None => Ok(profile),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The subject common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }
    /// DNS names for the subjectAltName, lower case, in the order given.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }
    /// IP addresses for the subjectAltName.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }
    /// The virtual server a device certificate is bound to (`None`: the main server).
    pub fn virtual_server(&self) -> Option<&str> {
        self.virtual_server.as_deref()
    }
}
