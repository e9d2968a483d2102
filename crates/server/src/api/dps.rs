//! Distribution points: assigned to and removed from a group scope, made active, and the
//! report of every DP (role, epoch, multicast group, free disk, last heartbeat, devices
//! served).

use super::*;

fn fleet_of(st: &ApiState) -> Result<&crate::FleetSync, Problem> {
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
    caller(&st, &headers)?;
    let rows = fleet_of(&st)?.with_dps(|c| c.report()).unwrap_or_default();
    let out: Vec<serde_json::Value> = st.service.with_registry(|r| {
        rows.iter()
            .map(|row| {
                let seen = r
                    .device(&row.device)
                    .map(|d| d.last_seen_unix)
                    .filter(|t| *t > 0);
                serde_json::json!({
                    "device": row.device,
                    "group": row.group,
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
    device: String,
    group: String,
}

fn scope_problem(e: ServerError) -> Problem {
    let field = match &e {
        ServerError::UnknownGroup(_) => Some("group"),
        ServerError::UnknownDevice(_) | ServerError::InvalidId { .. } => Some("device"),
        _ => None,
    };
    Problem::from_error(&e, field)
}

/// `POST /api/v1/distribution-points` `{"device", "group"}`: the device serves the group
/// and its subgroups from its next sync (it is pushed "sync now").
pub(super) async fn assign_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let a: DpScope = json_body(bytes)?;
    let fleet = fleet_of(&st)?;
    st.service
        .update_registry(|r| r.register_dp(&a.device, &a.group))
        .await
        .map_err(scope_problem)?;
    let multicast = fleet
        .with_dps(|c| c.register_group_dp(&a.device, &a.group))
        .transpose()
        .map_err(scope_problem)?;
    let pushed = push_changed(&st, &[a.device.as_str()], "distribution point assigned");
    audit(
        &st,
        &who,
        "audit.dp.assign",
        format!(
            "made device {:?} a distribution point of group {:?}",
            a.device, a.group
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "device": a.device,
            "group": a.group,
            "multicast_group": multicast.map(|m| m.to_string()),
            "pushed_sync_now": pushed,
        }),
    ))
}

/// `DELETE /api/v1/distribution-points/{device}/{group}`.
pub(super) async fn unassign_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((device, group)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let fleet = fleet_of(&st)?;
    st.service
        .update_registry(|r| r.unregister_dp(&device, &group))
        .await?;
    if let Some(Err(e)) = fleet.with_dps(|c| c.unregister_group_dp(&device, &group)) {
        log::warn!("distribution point {device:?} of {group:?}: {e}");
    }
    push_changed(&st, &[device.as_str()], "distribution point removed");
    audit(
        &st,
        &who,
        "audit.dp.unassign",
        format!("device {device:?} is no longer a distribution point of group {group:?}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/distribution-points/{device}/{group}/activate`: it becomes the active DP
/// of the group now, with a new epoch; the devices are told at the next tick.
pub(super) async fn activate_dp(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((device, group)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let fleet = fleet_of(&st)?;
    let epoch = fleet
        .with_dps(|c| c.make_active(&device, &group, Instant::now()))
        .transpose()?
        .unwrap_or_default();
    push_changed(&st, &[device.as_str()], "distribution point made active");
    audit(
        &st,
        &who,
        "audit.dp.activate",
        format!("made device {device:?} the active distribution point of group {group:?} (epoch {epoch})"),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "device": device, "group": group, "epoch": epoch }),
    ))
}
