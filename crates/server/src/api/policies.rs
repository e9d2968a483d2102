//! Policies: listed, read, set and removed on the running server.

use super::*;

pub(super) fn policies_of(st: &crate::Tenant) -> Result<&crate::PolicySync, Problem> {
    st.fleet.as_ref().and_then(|f| f.policy()).ok_or_else(|| {
        Problem::not_found("this server answers syncs from another source: it serves no policies")
    })
}

pub(super) async fn list_policies(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let storage = who.vs.service.storage().clone();
    let rows = blocking(move || storage.policy_objects(crate::PolicyObjectKind::Policy)).await?;
    let policies: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|(_, doc)| serde_json::from_str(doc).ok())
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "policies": policies }),
    ))
}

pub(super) async fn get_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let storage = who.vs.service.storage().clone();
    let key = id.clone();
    let doc = blocking(move || storage.policy_object(crate::PolicyObjectKind::Policy, &key))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no policy {id:?}")))?;
    let v: serde_json::Value = serde_json::from_str(&doc).map_err(Problem::internal)?;
    Ok(json(StatusCode::OK, &v))
}

/// The answer to a policy the resolver refused, naming the field at fault where there is one
/// (`settings.scan.level`, `profiles[1].settings.scan.level`, `status`).
pub(super) fn invalid_policy(e: &outpost_policy::PolicyError) -> Problem {
    let p = Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid policy",
        e.to_string(),
    );
    match e.field() {
        Some(f) => p.field(f),
        None => p,
    }
}

/// Applies `change` to the policies, commits `row`, and on a failed commit puts the policy
/// back as the database has it (`old`). Returns the devices whose settings changed.
pub(super) async fn edit_policy(
    vs: &crate::Tenant,
    id: &str,
    change: outpost_policy::Change,
    row: crate::Op,
) -> Result<Vec<Arc<str>>, Problem> {
    use crate::PolicyObjectKind::Policy as Kind;
    let policies = policies_of(vs)?;
    let storage = vs.service.storage().clone();
    let key = id.to_string();
    let old = blocking(move || storage.policy_object(Kind, &key)).await?;
    let changed = policies.apply(change).map_err(|e| invalid_policy(&e))?;
    if let Err(e) = vs.service.storage().commit(vec![row]).await {
        let undo = match old
            .as_deref()
            .map(serde_json::from_str::<outpost_policy::Policy>)
        {
            Some(Ok(p)) => outpost_policy::Change::UpsertPolicy(p),
            _ => outpost_policy::Change::RemovePolicy(id.to_string()),
        };
        if let Err(u) = policies.apply(undo) {
            tracing::error!(policy = %id, "commit failed and the change could not be undone: {u}");
        }
        return Err(Problem::from_error(&e, None));
    }
    Ok(changed)
}

/// Pushes "sync now" to the online devices among `changed`; returns how many.
/// (`push_all` reaches only the devices with a kept connection.)
pub(super) fn push_changed<S: AsRef<str>>(
    vs: &crate::Tenant,
    changed: &[S],
    reason: &str,
) -> usize {
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    vs.service.push_all(changed, reason, nonce)
}

pub(super) async fn put_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let policy: outpost_policy::Policy = json_body(bytes)?;
    if policy.id != id {
        return Err(Problem::invalid(format!(
            "the body's id {:?} is not the path's {id:?}",
            policy.id
        ))
        .field("id"));
    }
    let document = serde_json::to_string(&policy).map_err(Problem::internal)?;
    let _one_at_a_time = who.vs.policy_edit.lock().await;
    let row = crate::Op::PutPolicyObject {
        kind: crate::PolicyObjectKind::Policy,
        id: id.clone(),
        document,
    };
    let changed = edit_policy(
        &who.vs,
        &id,
        outpost_policy::Change::UpsertPolicy(policy),
        row,
    )
    .await?;
    let pushed = push_changed(&who.vs, &changed, "policy changed");
    audit(
        &st,
        &who,
        "audit.policy.put",
        format!(
            "set policy {id:?}: {} device(s) changed, {pushed} pushed",
            changed.len()
        ),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "devices_changed": changed.len(), "pushed_sync_now": pushed }),
    ))
}

pub(super) async fn delete_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let _one_at_a_time = who.vs.policy_edit.lock().await;
    let row = crate::Op::DeletePolicyObject {
        kind: crate::PolicyObjectKind::Policy,
        id: id.clone(),
    };
    let changed = edit_policy(
        &who.vs,
        &id,
        outpost_policy::Change::RemovePolicy(id.clone()),
        row,
    )
    .await
    .map_err(|p| {
        if p.status == StatusCode::UNPROCESSABLE_ENTITY {
            Problem::not_found(p.detail)
        } else {
            p
        }
    })?;
    let pushed = push_changed(&who.vs, &changed, "policy removed");
    audit(
        &st,
        &who,
        "audit.policy.remove",
        format!("removed policy {id:?}: {} device(s) changed", changed.len()),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "devices_changed": changed.len(), "pushed_sync_now": pushed }),
    ))
}

/// A policy's status, as the API names it.
#[derive(Deserialize, Serialize, schemars::JsonSchema, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(super) enum StatusName {
    /// Applied to the group's devices and inherited by subgroups.
    Active,
    /// Neither applied nor inherited.
    Inactive,
    /// Replaces the active policy for the group's own devices off the corporate network.
    OutOfOffice,
}

impl From<StatusName> for outpost_policy::PolicyStatus {
    fn from(s: StatusName) -> Self {
        match s {
            StatusName::Active => outpost_policy::PolicyStatus::Active,
            StatusName::Inactive => outpost_policy::PolicyStatus::Inactive,
            StatusName::OutOfOffice => outpost_policy::PolicyStatus::OutOfOffice,
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusChange {
    /// The new status. Making a policy active (or out-of-office) makes the policy that held
    /// that status for the same application and group inactive in the same step.
    status: StatusName,
}

/// The row storing `policy` as it now is.
fn policy_row(policy: &outpost_policy::Policy) -> Result<crate::Op, Problem> {
    Ok(crate::Op::PutPolicyObject {
        kind: crate::PolicyObjectKind::Policy,
        id: policy.id.clone(),
        document: serde_json::to_string(policy).map_err(Problem::internal)?,
    })
}

pub(super) async fn set_policy_status(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let StatusChange { status: name } = json_body(bytes)?;
    let status = outpost_policy::PolicyStatus::from(name);
    let policies = policies_of(&who.vs)?;
    let _one_at_a_time = who.vs.policy_edit.lock().await;
    let before = policies
        .policy(&id)
        .ok_or_else(|| Problem::not_found(format!("no policy {id:?}")))?;
    let (displaced, changed) = policies
        .set_status(&id, status)
        .map_err(|e| invalid_policy(&e))?;
    let displaced_before = displaced.as_deref().and_then(|d| {
        let mut p = policies.policy(d)?;
        p.status = status;
        Some(p)
    });
    // Both rows in one transaction: the store never holds two active policies either.
    let mut rows = Vec::with_capacity(2);
    for p in std::iter::once(id.as_str()).chain(displaced.as_deref()) {
        let now = policies.policy(p).ok_or_else(|| {
            Problem::internal(format!("policy {p:?} vanished while its status was set"))
        })?;
        rows.push(policy_row(&now)?);
    }
    if let Err(e) = who.vs.service.storage().commit(rows).await {
        // Put both back as the database has them: the target first (it frees the slot), then
        // the policy it displaced.
        for p in std::iter::once(before).chain(displaced_before) {
            let pid = p.id.clone();
            if let Err(u) = policies.apply(outpost_policy::Change::UpsertPolicy(p)) {
                tracing::error!(
                    policy = %pid, "commit failed and the change could not be undone: {u}"
                );
            }
        }
        return Err(Problem::from_error(&e, None));
    }
    let pushed = push_changed(&who.vs, &changed, "policy status changed");
    audit(
        &st,
        &who,
        "audit.policy.status",
        format!(
            "set policy {id:?} {}{}: {} device(s) changed, {pushed} pushed",
            status_str(name),
            displaced
                .as_deref()
                .map(|d| format!(", making {d:?} inactive"))
                .unwrap_or_default(),
            changed.len()
        ),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "id": id,
            "status": name,
            "deactivated": displaced,
            "devices_changed": changed.len(),
            "pushed_sync_now": pushed,
        }),
    ))
}

fn status_str(s: StatusName) -> &'static str {
    match s {
        StatusName::Active => "active",
        StatusName::Inactive => "inactive",
        StatusName::OutOfOffice => "out-of-office",
    }
}
