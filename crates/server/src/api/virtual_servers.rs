//! Virtual servers: created, listed, renamed, disabled, enabled and deleted by the main
//! server's administrators. Every other endpoint works on the virtual server the
//! `Outpost-Virtual-Server` header names (the main server without one).

use super::*;

#[derive(Serialize)]
pub(super) struct VirtualServerOut {
    id: String,
    name: String,
    disabled: bool,
    created_at_unix: u64,
    multicast_first: String,
    multicast_last: String,
    devices: usize,
    online: usize,
}

fn out(st: &ApiState, t: &crate::Tenant) -> Option<VirtualServerOut> {
    let r = t.record()?;
    let range = st.servers.config().block(r.multicast_block)?;
    Some(VirtualServerOut {
        devices: t.service.with_registry(|reg| reg.devices().len()),
        online: t.service.online().len(),
        id: r.id,
        name: r.name,
        disabled: r.disabled,
        created_at_unix: r.created_at_unix,
        multicast_first: range.first.to_string(),
        multicast_last: range.last.to_string(),
    })
}

/// The caller, who must be one of the main server's accounts (`write`: an administrator).
fn main_account(st: &ApiState, headers: &HeaderMap, write: bool) -> Result<Caller, Problem> {
    let who = caller(st, headers)?;
    if !who.main {
        return Err(Problem::forbidden(format!(
            "account {:?} belongs to virtual server {:?}: only the main server's accounts \
             manage virtual servers",
            who.account,
            who.vs.id()
        )));
    }
    if write {
        who.may_write()?;
    }
    // Virtual servers are managed from the main server, whatever the header names.
    Ok(Caller {
        vs: st.servers.main().clone(),
        ..who
    })
}

fn found(st: &ApiState, id: &str) -> Result<Arc<crate::Tenant>, Problem> {
    st.servers.get(id).ok_or_else(|| no_virtual_server(id))
}

pub(super) async fn list_virtual_servers(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    main_account(&st, &headers, false)?;
    let list: Vec<VirtualServerOut> = st
        .servers
        .all()
        .iter()
        .filter_map(|t| out(&st, t))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "virtual_servers": list,
            "capacity": st.servers.config().capacity(),
        }),
    ))
}

pub(super) async fn get_virtual_server(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    main_account(&st, &headers, false)?;
    let t = found(&st, &id)?;
    let o = out(&st, &t).ok_or_else(|| no_virtual_server(&id))?;
    Ok(json(StatusCode::OK, &o))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewVirtualServer {
    /// 1 to 64 letters, digits, `-`, `_`, `.`.
    id: String,
    /// Display name.
    #[serde(default)]
    name: String,
}

pub(super) async fn create_virtual_server(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = main_account(&st, &headers, true)?;
    let v: NewVirtualServer = json_body(bytes)?;
    let name = if v.name.is_empty() {
        v.id.clone()
    } else {
        v.name.clone()
    };
    st.servers.create(&v.id, &name).await.map_err(|e| {
        let field = if matches!(e, ServerError::Config(ref m) if m.starts_with("name")) {
            "name"
        } else {
            "id"
        };
        Problem::from_error(&e, Some(field))
    })?;
    audit(
        &st,
        &who,
        "audit.virtual_server.create",
        format!("created virtual server {:?} ({name:?})", v.id),
    )
    .await;
    let t = found(&st, &v.id)?;
    let o = out(&st, &t).ok_or_else(|| no_virtual_server(&v.id))?;
    Ok(json(StatusCode::CREATED, &o))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VirtualServerChange {
    /// A new display name.
    #[serde(default)]
    name: Option<String>,
    /// Disable (its devices are refused, its data kept) or enable it.
    #[serde(default)]
    disabled: Option<bool>,
}

pub(super) async fn change_virtual_server(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = main_account(&st, &headers, true)?;
    let c: VirtualServerChange = json_body(bytes)?;
    found(&st, &id)?;
    let r = st
        .servers
        .update(&id, c.name.as_deref(), c.disabled)
        .await
        .map_err(|e| Problem::from_error(&e, Some("name")))?;
    audit(
        &st,
        &who,
        "audit.virtual_server.change",
        format!(
            "virtual server {id:?}: name {:?}, {}",
            r.name,
            if r.disabled { "disabled" } else { "enabled" }
        ),
    )
    .await;
    let t = found(&st, &id)?;
    let o = out(&st, &t).ok_or_else(|| no_virtual_server(&id))?;
    Ok(json(StatusCode::OK, &o))
}

pub(super) async fn delete_virtual_server(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = main_account(&st, &headers, true)?;
    found(&st, &id)?;
    let revoked = st.servers.delete(&id).await?;
    audit(
        &st,
        &who,
        "audit.virtual_server.delete",
        format!("deleted virtual server {id:?}: {revoked} certificate(s) revoked"),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "revoked_certificates": revoked }),
    ))
}
