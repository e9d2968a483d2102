//! Server status, the event log and metrics.

use super::*;

pub(super) async fn status(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let (instance, devices, groups, tokens) = who.vs.service.with_registry(|r| {
        (
            r.instance_id.clone(),
            r.devices().len(),
            r.groups().len(),
            r.pending_tokens(),
        )
    });
    let gateways: Vec<String> = st.gateways.now().into_keys().collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "instance_id": instance,
            "devices": devices,
            "devices_online": who.vs.service.online().len(),
            "groups": groups,
            "pending_enrollment_tokens": tokens,
            "dmz_gateways_up": gateways,
            "database": who.vs.service.storage().backend().to_string(),
        }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EventPage {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

pub(super) async fn list_events(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<EventPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let mut query = crate::EventQuery::after(q.after.unwrap_or(0), limit + 1);
    query.kind = q.kind;
    query.device = q.device;
    let storage = who.vs.service.storage().clone();
    let mut events = blocking(move || storage.events(&query)).await?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next = if more {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    let out: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq,
                "device": e.event.device,
                "at_unix_ms": e.event.at_unix_ms,
                "severity": e.event.severity,
                "kind": e.event.kind,
                "body": e.event.body,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "events": out, "next": next }),
    ))
}

/// The server's counters in Prometheus' text format.
pub(super) async fn metrics(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let who = caller(&st, &headers)?;
    let s = who.vs.service.stats();
    let (devices, tokens) = who
        .vs
        .service
        .with_registry(|r| (r.devices().len(), r.pending_tokens()));
    let storage = who.vs.service.storage().clone();
    let events = blocking(move || storage.counts()).await?.events;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "outpost_devices",
        "gauge",
        "Enrolled devices.",
        devices as u64,
    );
    metric(
        "outpost_devices_online",
        "gauge",
        "Devices with a kept connection.",
        who.vs.service.online().len() as u64,
    );
    metric(
        "outpost_enrollment_tokens_pending",
        "gauge",
        "Unused enrollment tokens.",
        tokens as u64,
    );
    metric(
        "outpost_gateways_up",
        "gauge",
        "DMZ gateways whose signal connection is up.",
        st.gateways.now().len() as u64,
    );
    metric(
        "outpost_events_stored",
        "gauge",
        "Events in the database.",
        events,
    );
    metric(
        "outpost_enrollments_total",
        "counter",
        "Devices enrolled.",
        s.enrolled.load(Relaxed),
    );
    metric(
        "outpost_enrollments_refused_total",
        "counter",
        "Enrollments refused.",
        s.enroll_refused.load(Relaxed),
    );
    metric(
        "outpost_syncs_total",
        "counter",
        "Syncs answered.",
        s.syncs.load(Relaxed),
    );
    metric(
        "outpost_events_received_total",
        "counter",
        "Events received from agents.",
        s.events.load(Relaxed),
    );
    metric(
        "outpost_connections_refused_total",
        "counter",
        "Device connections refused.",
        s.refused.load(Relaxed),
    );
    metric(
        "outpost_devices_relayed",
        "gauge",
        "Devices with a kept connection through a connection gateway.",
        who.vs.service.relayed().values().sum::<usize>() as u64,
    );
    metric(
        "outpost_reserve_certificates_issued_total",
        "counter",
        "Reserve certificates issued to devices renewing theirs.",
        s.renewed.load(Relaxed),
    );
    // Distribution point roles, one series per role (a DP counts once per scope).
    let rows = who
        .vs
        .fleet
        .as_deref()
        .and_then(|f| f.with_dps(|c| c.report()))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP outpost_distribution_points Distribution points by role, per scope served.\n\
         # TYPE outpost_distribution_points gauge"
    );
    for role in ["active", "standby", "inactive"] {
        let n = rows.iter().filter(|r| r.role == role).count();
        let _ = writeln!(out, "outpost_distribution_points{{role=\"{role}\"}} {n}");
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}
