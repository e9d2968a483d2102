//! Connection gateways: DMZ gateways registered (the server dials them at once) and
//! unregistered (the signal connection closed), remote-office gateways registered on a
//! device, and the status of each: signal connection up, devices relayed.

use super::*;

pub(super) async fn list_gateways(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let up = st.gateways.now();
    let relayed = who.vs.service.relayed();
    let status = |id: &str| {
        serde_json::json!({
            "signal_up": up.contains_key(id),
            "signal_session": up.get(id),
            "devices_relayed": relayed.get(id).copied().unwrap_or(0),
        })
    };
    let mut out: Vec<serde_json::Value> = who.vs.service.with_registry(|r| {
        r.gateways()
            .iter()
            .map(|(id, g)| {
                let mut v = match g {
                    crate::GatewayRegistration::Dmz { addr, dns_names } => serde_json::json!({
                        "id": id, "kind": "dmz", "source": "registered",
                        "addr": addr.to_string(), "dns_names": dns_names,
                    }),
                    crate::GatewayRegistration::RemoteOffice {
                        device_id,
                        certificate_sha256,
                    } => serde_json::json!({
                        "id": id, "kind": "remote_office", "source": "registered",
                        "device": device_id,
                        "certificate_sha256": Some(certificate_sha256).filter(|c| !c.is_empty()),
                    }),
                };
                if let (Some(o), serde_json::Value::Object(s)) = (v.as_object_mut(), status(id)) {
                    o.extend(s);
                }
                v
            })
            .collect()
    });
    for gw in &st.configured_gateways {
        let mut v = serde_json::json!({
            "id": gw.id, "kind": "dmz", "source": "configuration",
            "addr": gw.addr.to_string(), "dns_names": [gw.name],
        });
        if let (Some(o), serde_json::Value::Object(s)) = (v.as_object_mut(), status(&gw.id)) {
            o.extend(s);
        }
        out.push(v);
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "gateways": out }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGateway {
    id: String,
    /// `dmz` or `remote_office`.
    kind: String,
    /// DMZ: the address the server dials.
    #[serde(default)]
    addr: Option<SocketAddr>,
    /// DMZ: the DNS names its certificate carries (the first is dialled by name).
    #[serde(default)]
    dns_names: Vec<String>,
    /// Remote office: the enrolled device that holds the role.
    #[serde(default)]
    device: Option<String>,
    /// Remote office: the gateway's certificate (PEM; the first of a chain). Tunnels are
    /// taken from this very certificate only, under this gateway's id.
    #[serde(default)]
    certificate_pem: Option<String>,
}

/// The SHA-256 of a remote-office gateway's certificate given as PEM, refused unless it is a
/// certificate of the gateway role from this server's CA.
fn gateway_certificate(st: &ApiState, pem: &str) -> Result<[u8; 32], Problem> {
    let field = |detail: String| Problem::invalid(detail).field("certificate_pem");
    let chain = outpost_pki::store::parse_certificates(pem, "certificate_pem".as_ref())
        .map_err(|e| field(e.to_string()))?;
    let first = chain
        .first()
        .ok_or_else(|| field("no certificate".into()))?;
    let who = outpost_pki::PeerIdentity::from_der(first).map_err(|e| field(e.to_string()))?;
    if who.role != Some(outpost_pki::Role::Gateway) {
        return Err(field(format!(
            "the certificate of {:?} is not a gateway certificate",
            who.subject
        )));
    }
    st.servers
        .main()
        .service
        .verify_issued(first)
        .map_err(|e| field(format!("not issued by this server's CA: {e}")))?;
    Ok(who.sha256)
}

pub(super) async fn register_gateway(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let g: NewGateway = json_body(bytes)?;
    if st.configured_gateways.iter().any(|c| c.id == g.id) {
        return Err(Problem::from_error(
            &ServerError::Duplicate {
                kind: "gateway (in the configuration file)",
                id: g.id.clone(),
            },
            Some("id"),
        ));
    }
    // Gateways are shared by every (virtual) server: an id or certificate is registered once.
    let digest_of = |pem: &str| gateway_certificate(&st, pem);
    let remote_digest = match (g.kind.as_str(), g.certificate_pem.as_deref()) {
        ("remote_office", Some(pem)) => Some(digest_of(pem)?),
        _ => None,
    };
    for t in st.servers.all() {
        let taken = t.service.with_registry(|r| {
            r.gateways().contains_key(&g.id)
                || remote_digest
                    .as_ref()
                    .is_some_and(|d| r.remote_office_gateway_for(d).is_some())
        });
        if taken && t.id() != who.vs.id() {
            return Err(Problem::from_error(
                &ServerError::Duplicate {
                    kind: "gateway (on another virtual server)",
                    id: g.id.clone(),
                },
                Some("id"),
            ));
        }
    }
    let field_of = |e: &ServerError| match e {
        ServerError::InvalidId { what, .. } if what.contains("DNS") => "dns_names",
        ServerError::UnknownDevice(_) => "device",
        ServerError::Duplicate { kind, .. } if kind.contains("certificate") => "certificate_pem",
        _ => "id",
    };
    match g.kind.as_str() {
        "dmz" => {
            let addr = g
                .addr
                .ok_or_else(|| Problem::invalid("a DMZ gateway needs its addr").field("addr"))?;
            let name = g.dns_names.first().cloned().unwrap_or_default();
            let entry = outpost_gateway::DmzGatewayEntry::new(g.id.clone(), addr, name);
            who.vs
                .service
                .update_registry(|r| r.register_dmz_gateway(&g.id, addr, g.dns_names.clone()))
                .await
                .map_err(|e| Problem::from_error(&e, Some(field_of(&e))))?;
            if let Err(e) = st.gateway_control.add(entry) {
                tracing::error!("gateway {:?} registered but not dialled: {e}", g.id);
                return Err(Problem::internal(e));
            }
        }
        "remote_office" => {
            let device = g.device.clone().ok_or_else(|| {
                Problem::invalid("a remote-office gateway needs its device").field("device")
            })?;
            let pem = g.certificate_pem.as_deref().ok_or_else(|| {
                Problem::invalid("a remote-office gateway needs its certificate (PEM)")
                    .field("certificate_pem")
            })?;
            let digest = match remote_digest {
                Some(d) => d,
                None => gateway_certificate(&st, pem)?,
            };
            who.vs
                .service
                .update_registry(|r| r.register_remote_office_gateway(&g.id, &device, &digest))
                .await
                .map_err(|e| Problem::from_error(&e, Some(field_of(&e))))?;
        }
        other => {
            return Err(Problem::invalid(format!(
                "kind {other:?}: must be \"dmz\" or \"remote_office\""
            ))
            .field("kind"));
        }
    }
    audit(
        &st,
        &who,
        "audit.gateway.register",
        format!("registered {} gateway {:?}", g.kind, g.id),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "id": g.id, "kind": g.kind }),
    ))
}

pub(super) async fn unregister_gateway(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    if st.configured_gateways.iter().any(|c| c.id == id) {
        return Err(Problem::from(ServerError::InUse(format!(
            "gateway {id:?} is named in the configuration file: remove it there"
        ))));
    }
    let was = who
        .vs
        .service
        .update_registry(|r| r.unregister_gateway(&id))
        .await?;
    if matches!(was, crate::GatewayRegistration::Dmz { .. }) {
        st.gateway_control.remove(&id).await;
    }
    // Devices of every (virtual) server may have come through it.
    let cut: usize = st
        .servers
        .all()
        .iter()
        .map(|t| t.service.disconnect_gateway(&id))
        .sum();
    audit(
        &st,
        &who,
        "audit.gateway.unregister",
        format!("unregistered gateway {id:?}: {cut} relayed connection(s) closed"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
