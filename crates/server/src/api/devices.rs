//! Devices: listed, moved, removed, and their effective settings.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DevicePage {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

#[derive(Serialize)]
pub(super) struct DeviceOut {
    id: String,
    group: String,
    enrolled_at_unix: u64,
    last_seen_unix: Option<u64>,
    online: bool,
    certificate_sha256: String,
}

pub(super) async fn list_devices(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<DevicePage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let (devices, more) = st.service.with_registry(|r| {
        use std::ops::Bound;
        let start = match &q.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let mut page = Vec::with_capacity(limit);
        let mut more = false;
        for (id, d) in r.devices().range((start, Bound::Unbounded)) {
            if q.group.as_deref().is_some_and(|g| g != d.group) {
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
                online: st.service.is_online(id),
                certificate_sha256: d.cert_sha256.clone(),
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

#[derive(Deserialize)]
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
    let pushed = st.service.move_device(&id, &m.group).await.map_err(|e| {
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
    let revoke = |serial: &str| -> Result<outpost_pki::ServerCa, ServerError> {
        use outpost_pki::{CaKind, PkiConfig, Serial, store};
        let _one_at_a_time = lock(&st.crl);
        let now = SystemTime::now();
        let mut ca = store::load_server_ca(&st.data_dir, PkiConfig::default())?;
        ca.authority_mut(CaKind::Server)
            .revoke(Serial::from_hex(serial)?, now)?;
        store::save_crl(&mut ca, CaKind::Server, &st.data_dir, now)?;
        Ok(ca)
    };
    st.service.remove_device(&id, revoke).await?;
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
    caller(&st, &headers)?;
    let settings = policies_of(&st)?.effective(&id).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no device {id:?}"),
        )
    })?;
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
