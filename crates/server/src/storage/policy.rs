//! Policies in the database: an `outpost-policy` state document as rows (one per schema,
//! policy group, policy and device), and back.

use std::collections::BTreeMap;

use outpost_policy::State;

use super::{Op, PolicyObjectKind};
use crate::ServerError;

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, ServerError> {
    serde_json::to_string(v).map_err(|e| ServerError::Config(format!("{what}: {e}")))
}

/// The rows that store `state`, replacing every policy object in `existing` (what the
/// database holds now) that `state` does not have.
pub fn policy_ops(
    state: &State,
    existing: &BTreeMap<(PolicyObjectKind, String), String>,
) -> Result<Vec<Op>, ServerError> {
    let mut rows: BTreeMap<(PolicyObjectKind, String), String> = BTreeMap::new();
    for s in &state.schemas {
        rows.insert(
            (PolicyObjectKind::Schema, s.app.clone()),
            json("schema", s)?,
        );
    }
    for g in &state.groups {
        rows.insert((PolicyObjectKind::Group, g.id.clone()), json("group", g)?);
    }
    for p in &state.policies {
        rows.insert((PolicyObjectKind::Policy, p.id.clone()), json("policy", p)?);
    }
    for d in &state.devices {
        rows.insert((PolicyObjectKind::Device, d.id.clone()), json("device", d)?);
    }
    let mut ops: Vec<Op> = existing
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .map(|(kind, id)| Op::DeletePolicyObject {
            kind: *kind,
            id: id.clone(),
        })
        .collect();
    ops.extend(
        rows.into_iter()
            .filter(|(k, doc)| existing.get(k) != Some(doc))
            .map(|((kind, id), document)| Op::PutPolicyObject { kind, id, document }),
    );
    Ok(ops)
}

/// The policy state stored as `rows` (`None` if there is none). A row that does not parse
/// is an error naming it.
pub fn policy_state(
    rows: &BTreeMap<(PolicyObjectKind, String), String>,
) -> Result<Option<State>, ServerError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let mut state = State::default();
    for ((kind, id), doc) in rows {
        let bad = |e: serde_json::Error| {
            ServerError::Storage(crate::StorageError::BadRow {
                what: format!("policy object {} {id:?}: {e}", kind.as_str()),
            })
        };
        match kind {
            PolicyObjectKind::Schema => state.schemas.push(serde_json::from_str(doc).map_err(bad)?),
            PolicyObjectKind::Group => state.groups.push(serde_json::from_str(doc).map_err(bad)?),
            PolicyObjectKind::Policy => {
                state.policies.push(serde_json::from_str(doc).map_err(bad)?)
            }
            PolicyObjectKind::Device => state.devices.push(serde_json::from_str(doc).map_err(bad)?),
        }
    }
    Ok(Some(state))
}
