//! Devices: listed, moved, removed, and their effective settings.

use std::collections::{BTreeSet, HashSet};

use super::*;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicePage {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    /// Only devices in this group.
    #[serde(default)]
    group: Option<String>,
    /// Only devices with this tag.
    #[serde(default)]
    tag: Option<String>,
    /// Only devices with (true) or without (false) a kept connection.
    #[serde(default)]
    online: Option<bool>,
    /// Only devices seen at or after this time (seconds since the Unix epoch).
    #[serde(default)]
    seen_since: Option<u64>,
    /// Only devices not seen since this time (never-seen devices included).
    #[serde(default)]
    seen_before: Option<u64>,
    /// Only devices registered (true) or not (false) as a distribution point.
    #[serde(default)]
    dp: Option<bool>,
    /// Only devices with (true) or without (false) an open security issue.
    #[serde(default)]
    issue: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct DeviceOut {
    id: String,
    group: String,
    enrolled_at_unix: u64,
    last_seen_unix: Option<u64>,
    online: bool,
    certificate_sha256: String,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    tags: BTreeSet<String>,
}

pub(super) async fn list_devices(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<DevicePage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let with_issue: Option<HashSet<String>> = match q.issue {
        Some(_) => {
            let storage = who.vs.service.storage().clone();
            let issues = blocking(move || storage.security_issues()).await?;
            Some(issues.into_iter().map(|i| i.device).collect())
        }
        None => None,
    };
    let (devices, more) = who.vs.service.with_registry(|r| {
        use std::ops::Bound;
        let start = match &q.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let wanted = |id: &String, d: &crate::Device| {
            q.group.as_deref().is_none_or(|g| g == d.group)
                && q.tag.as_ref().is_none_or(|t| d.tags.contains(t))
                && q.seen_since
                    .is_none_or(|t| d.last_seen_unix >= t && d.last_seen_unix > 0)
                && q.seen_before.is_none_or(|t| d.last_seen_unix < t)
                && q.dp.is_none_or(|dp| r.dps().contains_key(id) == dp)
                && q.online.is_none_or(|on| who.vs.service.is_online(id) == on)
                && with_issue
                    .as_ref()
                    .zip(q.issue)
                    .is_none_or(|(set, has)| set.contains(id) == has)
        };
        let mut page = Vec::with_capacity(limit);
        let mut more = false;
        for (id, d) in r.devices().range((start, Bound::Unbounded)) {
            if !wanted(id, d) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(DeviceOut {
                id: id.clone(),
                group: d.group.clone(),
                enrolled_at_unix: d.enrolled_at_unix,
                last_seen_unix: (d.last_seen_unix > 0).then_some(d.last_seen_unix),
                online: who.vs.service.is_online(id),
                certificate_sha256: d.cert_sha256.clone(),
                tags: d.tags.clone(),
            });
        }
        (page, more)
    });
    let next = if more {
        devices.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "devices": devices, "next": next }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveTo {
    group: String,
}

pub(super) async fn move_device(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let m: MoveTo = json_body(bytes)?;
    let pushed = who
        .vs
        .service
        .move_device(&id, &m.group)
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(_) => Some("group"),
                _ => None,
            };
            Problem::from_error(&e, field)
        })?;
    audit(
        &st,
        &who,
        "audit.device.move",
        format!("moved device {id:?} to group {:?}", m.group),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "group": m.group, "pushed_sync_now": pushed }),
    ))
}

pub(super) async fn remove_device(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let revoke = |serials: &[String]| st.servers.revoke(serials);
    who.vs.service.remove_device(&id, revoke).await?;
    audit(
        &st,
        &who,
        "audit.device.remove",
        format!("removed device {id:?} and revoked its certificate"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn device_settings(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let settings = policies_of(&who.vs)?
        .effective(&id)
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
    let mut apps = serde_json::Map::new();
    let mut names: Vec<&str> = settings.apps().collect();
    names.sort_unstable();
    for app in names {
        if let Some((version, doc)) = crate::settings_document(&settings, app)
            && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&doc)
        {
            v["version"] = serde_json::Value::from(version);
            apps.insert(app.to_string(), v);
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "device": id, "settings": apps }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    /// Only this application's settings.
    #[serde(default)]
    app: Option<String>,
    /// Only this setting path (with `app`).
    #[serde(default)]
    path: Option<String>,
}

/// Every effective value of a device with where it came from and every candidate that lost,
/// and why.
pub(super) async fn explain_settings(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    if q.path.is_some() && q.app.is_none() {
        return Err(Problem::invalid("a setting path needs its application (app=)").field("app"));
    }
    let policies = policies_of(&who.vs)?;
    if policies.effective(&id).is_none() {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    let explained = policies
        .explain(&id, q.app.as_deref(), q.path.as_deref())
        .map_err(|e| {
            let field = match &e {
                outpost_policy::PolicyError::UnknownSetting { .. } => "path",
                _ => "app",
            };
            Problem::not_found(e.to_string()).field(field)
        })?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "device": id, "settings": explained }),
    ))
}

/// One device: its record, facts, certificate, connection, distribution point scopes,
/// open security issues.
pub(super) async fn device_details(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let (d, scopes) = who
        .vs
        .service
        .with_registry(|r| {
            r.device(&id)
                .cloned()
                .map(|d| (d, r.dps().get(&id).cloned().unwrap_or_default()))
        })
        .ok_or_else(|| Problem::from(ServerError::UnknownDevice(id.clone())))?;
    let storage = who.vs.service.storage().clone();
    let issues: Vec<serde_json::Value> = blocking(move || storage.security_issues())
        .await?
        .into_iter()
        .filter(|i| i.device == id)
        .map(|i| issue_out(&i))
        .collect();
    let via = who.vs.service.connected_via(&id);
    // The broadcast domain the discovery reports put it in (named by its lowest member).
    let domain = who
        .vs
        .fleet
        .as_deref()
        .and_then(|f| f.with_dps(|c| c.broadcast_domain_of(&id)))
        .flatten()
        .or(d.broadcast_domain.clone());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "id": id,
            "group": d.group,
            "tags": d.tags,
            "network_location": d.network_location,
            "enrolled_at_unix": d.enrolled_at_unix,
            "last_seen_unix": (d.last_seen_unix > 0).then_some(d.last_seen_unix),
            "facts": {
                "os_class": d.os_class,
                "broadcast_domain": domain,
                "free_disk_bytes": d.free_disk_bytes,
            },
            "certificate": {
                "sha256": d.cert_sha256,
                "serial": d.cert_serial,
                "expires_unix": (d.cert_expires_unix > 0).then_some(d.cert_expires_unix),
                "reserve": d.reserve_cert.as_ref().map(|r| serde_json::json!({
                    "sha256": r.sha256, "serial": r.serial, "expires_unix": r.expires_unix,
                })),
            },
            "online": via.is_some(),
            "connected_via": via.map(|v| v.to_string()),
            "dp_scopes": scopes,
            "security_issues": issues,
        }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceChange {
    /// Its tags (replacing those it has).
    #[serde(default)]
    tags: Option<BTreeSet<String>>,
    /// Its network location (`null`: none); distribution points of that location serve it
    /// before any group's.
    #[serde(default, deserialize_with = "present")]
    network_location: Option<Option<String>>,
}

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Sets a device's tags and network location.
pub(super) async fn change_device(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let c: DeviceChange = json_body(bytes)?;
    if c.tags.is_none() && c.network_location.is_none() {
        return Err(Problem::invalid(
            "nothing to change: give tags or network_location",
        ));
    }
    let (tags, location) = (c.tags.clone(), c.network_location.clone());
    who.vs
        .service
        .update_registry(|r| {
            if let Some(t) = tags {
                r.set_tags(&id, t)?;
            }
            if let Some(l) = &location {
                r.set_network_location(&id, l.as_deref())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::InvalidId { what, .. } if what.contains("location") => {
                    Some("network_location")
                }
                ServerError::InvalidId { .. } => Some("tags"),
                _ => None,
            };
            Problem::from_error(&e, field)
        })?;
    let mut what = Vec::new();
    if let Some(t) = &c.tags {
        what.push(format!("tags {t:?}"));
    }
    if let Some(l) = &c.network_location {
        if let Some(Err(e)) = who
            .vs
            .fleet
            .as_deref()
            .and_then(|f| f.with_dps(|d| d.set_location(&id, l.as_deref())))
        {
            tracing::warn!(device = %id, "network location not given to the election: {e}");
        }
        push_changed(&who.vs, &[id.as_str()], "network location changed");
        what.push(format!("network location {l:?}"));
    }
    audit(
        &st,
        &who,
        "audit.device.change",
        format!("set {} of device {id:?}", what.join(" and ")),
    )
    .await;
    let (tags, location) = who.vs.service.with_registry(|r| {
        r.device(&id)
            .map(|d| (d.tags.clone(), d.network_location.clone()))
            .unwrap_or_default()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "tags": tags, "network_location": location }),
    ))
}
