//! Changes to the fleet made through the service: groups and devices added, moved and removed, with the sync sources told.

use super::*;

impl AdminService {
    /// Adds a group under `parent` (the root if `None`): committed, then the policies and the
    /// election know it, so devices can be placed in it at once.
    pub async fn add_group(
        &self,
        id: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<(), ServerError> {
        self.update_registry(|r| r.add_group(id, name, parent))
            .await?;
        self.sync
            .on_group_added(id, parent.unwrap_or(crate::ROOT_GROUP));
        Ok(())
    }

    /// Moves group `id` (with its subgroups and devices) under `parent`: committed, then
    /// the policies and the election follow, and the online devices whose settings changed
    /// are pushed "sync now" (returns how many).
    pub async fn move_group(&self, id: &str, parent: &str) -> Result<usize, ServerError> {
        self.update_registry(|r| r.move_group(id, parent)).await?;
        // The stored policy state has the group tree too: its row takes the new parent, so
        // a restart resolves the same settings.
        let storage = self.storage.clone();
        let key = id.to_string();
        let stored = tokio::task::spawn_blocking(move || {
            storage.policy_object(crate::PolicyObjectKind::Group, &key)
        })
        .await
        .map_err(|e| ServerError::os("apply the policy change")(std::io::Error::other(e)))??;
        let mut group = stored
            .as_deref()
            .and_then(|d| serde_json::from_str::<outpost_policy::Group>(d).ok())
            .unwrap_or_else(|| outpost_policy::Group::child(id, parent));
        group.parent = Some(parent.to_string());
        let document = serde_json::to_string(&group)
            .map_err(|e| ServerError::Config(format!("group {id:?} as a policy object: {e}")))?;
        self.storage
            .commit(vec![crate::Op::PutPolicyObject {
                kind: crate::PolicyObjectKind::Group,
                id: id.to_string(),
                document,
            }])
            .await?;
        let changed = self.sync.on_group_moved(id, parent);
        Ok(self.push_all(&changed, "group moved", next_nonce()))
    }

    /// Moves enrolled `device` to `group`: committed, then its settings and distribution
    /// point placement follow and it is pushed "sync now" (returns whether it had a kept
    /// connection to push to).
    pub async fn move_device(&self, device: &str, group: &str) -> Result<bool, ServerError> {
        self.update_registry(|r| r.move_device(device, group))
            .await?;
        self.sync.on_enrolled(device, group);
        Ok(self.push_sync_now(device, "moved to another group", next_nonce()))
    }

    /// Removes enrolled `device`: its certificate is revoked first (`revoke` adds its
    /// serial to the CA's revocation list and returns the CA as it is now; its kept
    /// connection is cut and every later connection refused, through gateways too), then
    /// its rows are committed away and the sync source forgets it.
    pub async fn remove_device(
        &self,
        device: &str,
        revoke: impl FnOnce(&[String]) -> Result<ServerCa, ServerError>,
    ) -> Result<(), ServerError> {
        // Its current certificate and its reserve, if it has one.
        let serials: Vec<String> = self
            .with_registry(|r| {
                r.device(device).map(|d| {
                    std::iter::once(d.cert_serial.clone())
                        .chain(d.reserve_cert.as_ref().map(|rc| rc.serial.clone()))
                        .filter(|s| !s.is_empty())
                        .collect()
                })
            })
            .ok_or_else(|| ServerError::UnknownDevice(device.into()))?;
        if !serials.is_empty() {
            let ca = revoke(&serials)?;
            self.set_revocations(&ca);
        }
        self.update_registry(|r| r.remove_device(device).map(drop))
            .await?;
        self.sync.on_removed(device);
        Ok(())
    }
}
