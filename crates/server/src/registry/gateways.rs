//! Gateways and distribution points registered with the server.

use super::*;

impl Registry {
    /// Registers a remote-office gateway held by an enrolled device, bound to its certificate
    /// (the SHA-256 of its DER encoding): the server takes tunnels from that certificate only,
    /// under this id.
    pub fn register_remote_office_gateway(
        &mut self,
        id: &str,
        device_id: &str,
        certificate_sha256: &[u8; 32],
    ) -> Result<(), ServerError> {
        check_id("gateway id", id)?;
        if !self.devices.contains_key(device_id) {
            return Err(ServerError::UnknownDevice(device_id.into()));
        }
        let digest = hex(certificate_sha256);
        if let Some(other) = self.remote_office_gateway_for(certificate_sha256) {
            return Err(ServerError::Duplicate {
                kind: "registration of gateway certificate",
                id: format!("{digest} (gateway {other})"),
            });
        }
        self.add_gateway(
            id,
            GatewayRegistration::RemoteOffice {
                device_id: device_id.into(),
                certificate_sha256: digest,
            },
        )
    }

    /// The remote-office gateway bound to the certificate with this SHA-256, if any.
    pub fn remote_office_gateway_for(&self, certificate_sha256: &[u8; 32]) -> Option<&str> {
        let digest = hex(certificate_sha256);
        self.gateways.iter().find_map(|(id, g)| match g {
            GatewayRegistration::RemoteOffice {
                certificate_sha256: c,
                ..
            } if *c == digest => Some(id.as_str()),
            _ => None,
        })
    }

    /// Registers a DMZ gateway the server dials at `addr`; `dns_names` are the names its
    /// certificate carries.
    pub fn register_dmz_gateway(
        &mut self,
        id: &str,
        addr: SocketAddr,
        dns_names: Vec<String>,
    ) -> Result<(), ServerError> {
        check_id("gateway id", id)?;
        for n in &dns_names {
            outpost_pki::validate_dns_name(n).map_err(|_| ServerError::InvalidId {
                what: "gateway DNS name",
                value: n.clone(),
                reason: "not a valid DNS name",
            })?;
        }
        if dns_names.is_empty() {
            return Err(ServerError::InvalidId {
                what: "gateway DNS names",
                value: String::new(),
                reason: "at least one is needed",
            });
        }
        self.add_gateway(id, GatewayRegistration::Dmz { addr, dns_names })
    }

    pub(super) fn add_gateway(
        &mut self,
        id: &str,
        g: GatewayRegistration,
    ) -> Result<(), ServerError> {
        if self.gateways.contains_key(id) {
            return Err(ServerError::Duplicate {
                kind: "gateway",
                id: id.into(),
            });
        }
        self.write(Op::PutGateway {
            id: id.into(),
            gateway: g,
        });
        Ok(())
    }

    /// Unregisters gateway `id`; returns what it was.
    pub fn unregister_gateway(&mut self, id: &str) -> Result<GatewayRegistration, ServerError> {
        let g = self
            .gateways
            .get(id)
            .cloned()
            .ok_or_else(|| ServerError::Unknown {
                kind: "gateway",
                id: id.into(),
            })?;
        self.write(Op::DeleteGateway { id: id.into() });
        Ok(g)
    }

    /// Registers enrolled `device` as a distribution point for `group` and its subgroups.
    pub fn register_dp(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        self.register_dp_scope(device, &DpScope::Group(group.into()))
    }

    /// Registers enrolled `device` as a distribution point for `scope`.
    pub fn register_dp_scope(&mut self, device: &str, scope: &DpScope) -> Result<(), ServerError> {
        if !self.devices.contains_key(device) {
            return Err(ServerError::UnknownDevice(device.into()));
        }
        if let DpScope::Group(group) = scope
            && !self.groups.contains_key(group)
        {
            return Err(ServerError::UnknownGroup(group.clone()));
        }
        let key = scope.key();
        let mut scopes = self.dps.get(device).cloned().unwrap_or_default();
        if scopes.contains(&key) {
            return Err(ServerError::Duplicate {
                kind: "distribution point",
                id: format!("{device} for {key}"),
            });
        }
        scopes.push(key);
        self.write(Op::PutDpScopes {
            device: device.into(),
            scopes,
        });
        Ok(())
    }

    /// Removes `device` as a distribution point of `group`.
    pub fn unregister_dp(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        self.unregister_dp_scope(device, &DpScope::Group(group.into()))
    }

    /// Removes `device` as a distribution point of `scope`.
    pub fn unregister_dp_scope(
        &mut self,
        device: &str,
        scope: &DpScope,
    ) -> Result<(), ServerError> {
        let key = scope.key();
        let mut scopes = self.dps.get(device).cloned().unwrap_or_default();
        let before = scopes.len();
        scopes.retain(|s| *s != key);
        if scopes.len() == before {
            return Err(ServerError::Unknown {
                kind: "distribution point",
                id: format!("{device} for {key}"),
            });
        }
        self.write(Op::PutDpScopes {
            device: device.into(),
            scopes,
        });
        Ok(())
    }

    /// The registered distribution points: device id → the keys of the scopes it serves
    /// ([`DpScope::key`]), in registration order.
    pub fn dps(&self) -> &BTreeMap<String, Vec<String>> {
        &self.dps
    }
}

impl Registry {
    /// The registered gateways.
    pub fn gateways(&self) -> &BTreeMap<String, GatewayRegistration> {
        &self.gateways
    }
}
