//! The group tree: groups added, renamed, moved and removed, the root kept.

use super::*;

impl Registry {
    /// Adds a group under `parent` (the root if `None`).
    pub fn add_group(
        &mut self,
        id: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<(), ServerError> {
        check_id("group id", id)?;
        let parent = parent.unwrap_or(ROOT_GROUP);
        if !self.groups.contains_key(parent) {
            return Err(ServerError::UnknownGroup(parent.into()));
        }
        if self.groups.contains_key(id) {
            return Err(ServerError::Duplicate {
                kind: "group",
                id: id.into(),
            });
        }
        self.write(Op::PutGroup {
            id: id.into(),
            group: Group {
                name: name.into(),
                parent: Some(parent.into()),
            },
        });
        Ok(())
    }

    /// Renames a group (its id stays).
    pub fn rename_group(&mut self, id: &str, name: &str) -> Result<(), ServerError> {
        let g = self
            .groups
            .get(id)
            .ok_or_else(|| ServerError::UnknownGroup(id.into()))?;
        if name.is_empty() || name.len() > 256 {
            return Err(ServerError::InvalidId {
                what: "group name",
                value: name.chars().take(200).collect(),
                reason: "must be 1 to 256 bytes",
            });
        }
        let group = Group {
            name: name.into(),
            parent: g.parent.clone(),
        };
        self.write(Op::PutGroup {
            id: id.into(),
            group,
        });
        Ok(())
    }

    /// Removes an empty group: refused for the root, and while it has subgroups, devices,
    /// enrollment tokens into it or distribution points serving it.
    pub fn remove_group(&mut self, id: &str) -> Result<(), ServerError> {
        if id == ROOT_GROUP {
            return Err(ServerError::InUse(
                "the root group cannot be removed".into(),
            ));
        }
        if !self.groups.contains_key(id) {
            return Err(ServerError::UnknownGroup(id.into()));
        }
        let busy = |what: &str, n: usize| {
            Err(ServerError::InUse(format!(
                "group {id:?} is not empty: {n} {what}; move or remove them first"
            )))
        };
        let children = self
            .groups
            .values()
            .filter(|g| g.parent.as_deref() == Some(id))
            .count();
        if children > 0 {
            return busy("subgroup(s)", children);
        }
        let devices = self.devices.values().filter(|d| d.group == id).count();
        if devices > 0 {
            return busy("device(s)", devices);
        }
        let tokens = self.tokens.values().filter(|t| t.group == id).count();
        if tokens > 0 {
            return busy("pending enrollment token(s)", tokens);
        }
        let dps = self
            .dps
            .values()
            .filter(|g| g.iter().any(|g| g == id))
            .count();
        if dps > 0 {
            return busy("distribution point(s) serving it", dps);
        }
        self.write(Op::DeleteGroup { id: id.into() });
        Ok(())
    }

    /// Moves a group under another.
    pub fn move_group(&mut self, id: &str, parent: &str) -> Result<(), ServerError> {
        if id == ROOT_GROUP || !self.groups.contains_key(id) {
            return Err(ServerError::UnknownGroup(id.into()));
        }
        if !self.groups.contains_key(parent) {
            return Err(ServerError::UnknownGroup(parent.into()));
        }
        let mut at = Some(parent);
        while let Some(g) = at {
            if g == id {
                return Err(ServerError::Cycle {
                    group: id.into(),
                    parent: parent.into(),
                });
            }
            at = self.groups.get(g).and_then(|g| g.parent.as_deref());
        }
        if let Some(g) = self.groups.get(id) {
            let group = Group {
                name: g.name.clone(),
                parent: Some(parent.into()),
            };
            self.write(Op::PutGroup {
                id: id.into(),
                group,
            });
        }
        Ok(())
    }
}
