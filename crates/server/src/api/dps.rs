//! Distribution points: assigned to and removed from a group scope, made active, and the
//! report of every DP (role, epoch, multicast group, free disk, last heartbeat, devices
//! served).

use super::*;

fn fleet_of(st: &crate::Tenant) -> Result<&crate::FleetSync, Problem> {
    st.fleet.as_deref().ok_or_else(|| {
        Problem::not_found(
            "this server answers syncs from another source: it elects no distribution points",
        )
    })
}

pub(super) async fn dp_report(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let rows = fleet_of(&who.vs)?
        .with_dps(|c| c.report())
        .unwrap_or_default();
    let out: Vec<serde_json::Value> = who.vs.service.with_registry(|r| {
        rows.iter()
            .map(|row| {
                let seen = r
                    .device(&row.device)
                    .map(|d| d.last_seen_unix)
                    .filter(|t| *t > 0);
                let (group, location) = match &row.scope {
                    crate::DpScope::Group(g) => (Some(g.as_str()), None),
                    crate::DpScope::NetworkLocation(l) => (None, Some(l.as_str())),
                    _ => (None, None),
                };
                serde_json::json!({
                    "device": row.device,
                    "scope": row.scope.key(),
                    "kind": row.scope.kind(),
                    "group": group,
                    "network_location": location,
                    "broadcast_domain": row.domain,
                    "role": row.role,
                    "epoch": row.epoch,
                    "multicast_group": row.multicast_group.map(|a| a.to_string()),
                    "free_disk_bytes": row.free_disk_bytes,
                    "last_heartbeat_unix": seen,
                    "devices_served": row.devices_served,
                })
            })
            .collect()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "distribution_points": out }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DpScope {
    /// The device that becomes a distribution point.
    device: String,
    /// Serve this group and its subgroups.
    #[serde(default)]
    group: Option<String>,
    /// Serve the devices placed in this network location.
    #[serde(default)]
    network_location: Option<String>,
    /// Serve the devices of its own broadcast domain (network segment), as the agents'
    /// discovery reports find it.
    #[serde(default)]
    broadcast_domain: bool,
}

impl DpScope {
    /// The one scope the body names.
    pub(super) fn scope(&self) -> Result<crate::DpScope, Problem> {
        match (&self.group, &self.network_location, self.broadcast_domain) {
            (Some(g), None, false) => Ok(crate::DpScope::Group(g.clone())),
            (None, Some(l), false) => {
                crate::check_id("network location", l)
                    .map_err(|e| Problem::from_error(&e, Some("network_location")))?;
                Ok(crate::DpScope::NetworkLocation(l.clone()))
            }
            (None, None, true) => Ok(crate::DpScope::OwnBroadcastDomain),
            _ => Err(Problem::invalid(
                "name exactly one scope: group, network_location or broadcast_domain: true",
            )
            .field("group")),
        }
    }
}

/// The scope a path names: a group id, `location~NAME` or `broadcast-domain~own`.
fn path_scope(key: &str) -> Result<crate::DpScope, Problem> {
    crate::DpScope::parse(key).map_err(|e| Problem::from_error(&e, Some("scope")))
}

fn scope_problem(e: ServerError) -> Problem {
    let field = match &e {
        ServerError::UnknownGroup(_) => Some("group"),
        ServerError::UnknownDevice(_) | ServerError::InvalidId { .. } => Some("device"),
        _ => None,
    };
    Problem::from_error(&e, field)
}

/// `POST /api/v1/distribution-points` `{"device", "group" | "network_location" |
/// "broadcast_domain": true}`: the device serves that scope from its next sync (it is
/// pushed "sync now").
pub(super) async fn assign_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let a: DpScope = json_body(bytes)?;
    let scope = a.scope()?;
    let fleet = fleet_of(&who.vs)?;
    who.vs
        .service
        .update_registry(|r| r.register_dp_scope(&a.device, &scope))
        .await
        .map_err(scope_problem)?;
    let multicast = fleet
        .with_dps(|c| c.register(&a.device, &scope))
        .transpose()
        .map_err(scope_problem)?
        .flatten();
    let pushed = push_changed(&who.vs, &[a.device.as_str()], "distribution point assigned");
    audit(
        &st,
        &who,
        "audit.dp.assign",
        format!(
            "made device {:?} a distribution point of {}",
            a.device,
            scope.key()
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "device": a.device,
            "scope": scope.key(),
            "kind": scope.kind(),
            "multicast_group": multicast.map(|m| m.to_string()),
            "pushed_sync_now": pushed,
        }),
    ))
}

/// `DELETE /api/v1/distribution-points/{device}/{scope}`.
pub(super) async fn unassign_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((device, key)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let scope = path_scope(&key)?;
    let fleet = fleet_of(&who.vs)?;
    who.vs
        .service
        .update_registry(|r| r.unregister_dp_scope(&device, &scope))
        .await?;
    if let Some(Err(e)) = fleet.with_dps(|c| c.unregister(&device, &scope)) {
        tracing::warn!(dp = %device, scope = %key, "not unregistered from the election: {e}");
    }
    push_changed(&who.vs, &[device.as_str()], "distribution point removed");
    audit(
        &st,
        &who,
        "audit.dp.unassign",
        format!("device {device:?} is no longer a distribution point of {key}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/distribution-points/{device}/{scope}/activate`: it becomes the active DP
/// of the scope now, with a new epoch; the devices are told at the next tick.
pub(super) async fn activate_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((device, key)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let scope = path_scope(&key)?;
    let fleet = fleet_of(&who.vs)?;
    let epoch = fleet
        .with_dps(|c| c.make_active(&device, &scope, Instant::now()))
        .transpose()?
        .unwrap_or_default();
    push_changed(
        &who.vs,
        &[device.as_str()],
        "distribution point made active",
    );
    audit(
        &st,
        &who,
        "audit.dp.activate",
        format!("made device {device:?} the active distribution point of {key} (epoch {epoch})"),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "device": device, "scope": key, "epoch": epoch }),
    ))
}
