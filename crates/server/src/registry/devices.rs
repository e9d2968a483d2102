//! Devices: moved, removed, tagged, their certificates (current and reserve) and network location.

use super::*;

impl Registry {
    /// Moves a device to another group.
    pub fn move_device(&mut self, id: &str, group: &str) -> Result<(), ServerError> {
        if !self.groups.contains_key(group) {
            return Err(ServerError::UnknownGroup(group.into()));
        }
        let mut device = self
            .devices
            .get(id)
            .ok_or_else(|| ServerError::UnknownDevice(id.into()))?
            .clone();
        device.group = group.into();
        self.write(Op::PutDevice {
            id: id.into(),
            device,
        });
        Ok(())
    }
}

impl Registry {
    /// Removes an enrolled device (and its distribution point scopes); returns its record.
    /// Refused while a remote-office gateway is registered on it.
    pub fn remove_device(&mut self, id: &str) -> Result<Device, ServerError> {
        let device = self
            .devices
            .get(id)
            .cloned()
            .ok_or_else(|| ServerError::UnknownDevice(id.into()))?;
        if let Some((gw, _)) = self.gateways.iter().find(|(_, g)| {
            matches!(g, GatewayRegistration::RemoteOffice { device_id, .. } if device_id == id)
        }) {
            return Err(ServerError::InUse(format!(
                "device {id:?} holds remote-office gateway {gw:?}: unregister the gateway first"
            )));
        }
        if self.dps.contains_key(id) {
            self.write(Op::PutDpScopes {
                device: id.into(),
                scopes: Vec::new(),
            });
        }
        self.write(Op::DeleteDevice { id: id.into() });
        Ok(device)
    }

    /// Inserts or replaces the record of `id` as it is (an import, a repair): its group
    /// must exist.
    pub fn put_device(&mut self, id: &str, device: Device) -> Result<(), ServerError> {
        check_id("device id", id)?;
        if !self.groups.contains_key(&device.group) {
            return Err(ServerError::UnknownGroup(device.group.clone()));
        }
        self.write(Op::PutDevice {
            id: id.into(),
            device,
        });
        Ok(())
    }

    /// Sets the tags of `device` (each an id; at most [`MAX_TAGS`]).
    pub fn set_tags(&mut self, device: &str, tags: BTreeSet<String>) -> Result<(), ServerError> {
        if tags.len() > MAX_TAGS {
            return Err(ServerError::InvalidId {
                what: "tags",
                value: format!("{} tags", tags.len()),
                reason: "more than 32 tags",
            });
        }
        for t in &tags {
            check_id("tag", t)?;
        }
        let mut d = self
            .devices
            .get(device)
            .cloned()
            .ok_or_else(|| ServerError::UnknownDevice(device.into()))?;
        d.tags = tags;
        self.write(Op::PutDevice {
            id: device.into(),
            device: d,
        });
        Ok(())
    }

    /// Records the reserve certificate issued to `device` (replacing an earlier reserve).
    pub fn set_reserve_certificate(
        &mut self,
        device: &str,
        reserve: ReserveCertificate,
    ) -> Result<(), ServerError> {
        let mut d = self
            .devices
            .get(device)
            .cloned()
            .ok_or_else(|| ServerError::UnknownDevice(device.into()))?;
        d.reserve_cert = Some(reserve);
        self.write(Op::PutDevice {
            id: device.into(),
            device: d,
        });
        Ok(())
    }

    /// Makes `device`'s reserve certificate its current one (it connected presenting it).
    /// Returns whether it had a reserve with this SHA-256.
    pub fn promote_reserve(&mut self, device: &str, sha256: &[u8; 32]) -> bool {
        let digest = hex(sha256);
        let Some(mut d) = self.devices.get(device).cloned() else {
            return false;
        };
        let Some(r) = d.reserve_cert.take().filter(|r| r.sha256 == digest) else {
            return false;
        };
        d.cert_sha256 = r.sha256;
        d.cert_serial = r.serial;
        d.cert_expires_unix = r.expires_unix;
        self.write(Op::PutDevice {
            id: device.into(),
            device: d,
        });
        true
    }

    /// Records the serial of `device`'s certificate where the registry has none (devices
    /// enrolled before serials were kept). Returns whether it changed anything.
    pub fn record_serial(&mut self, device: &str, serial: &str) -> bool {
        match self.devices.get(device) {
            Some(d) if d.cert_serial.is_empty() && !serial.is_empty() => {
                let mut d = d.clone();
                d.cert_serial = serial.to_string();
                self.write(Op::PutDevice {
                    id: device.into(),
                    device: d,
                });
                true
            }
            _ => false,
        }
    }
}

impl Registry {
    /// Puts `device` in network location `location` (or in none).
    pub fn set_network_location(
        &mut self,
        device: &str,
        location: Option<&str>,
    ) -> Result<(), ServerError> {
        if let Some(l) = location {
            check_id("network location", l)?;
        }
        let mut d = self
            .devices
            .get(device)
            .cloned()
            .ok_or_else(|| ServerError::UnknownDevice(device.into()))?;
        d.network_location = location.map(str::to_owned);
        self.write(Op::PutDevice {
            id: device.into(),
            device: d,
        });
        Ok(())
    }
}

impl Registry {
    /// Records that `device` synced at `now` and reported `free_disk_bytes`: kept in
    /// memory here; the storage layer writes these in batches ([`crate::Storage::touch`]),
    /// not as changes.
    pub fn touch(&mut self, device: &str, now: SystemTime, free_disk_bytes: Option<u64>) {
        if let Some(d) = self.devices.get_mut(device) {
            d.last_seen_unix = unix(now);
            if free_disk_bytes.is_some() {
                d.free_disk_bytes = free_disk_bytes;
            }
        }
    }
}
