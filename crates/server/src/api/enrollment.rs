//! Enrollment tokens.

use super::*;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEnrollmentToken {
    group: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

pub(super) async fn issue_enrollment_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let t: NewEnrollmentToken = json_body(bytes)?;
    let ttl = Duration::from_secs(t.ttl_secs.unwrap_or(86_400));
    let now = SystemTime::now();
    let token = who
        .vs
        .service
        .update_registry(|r| r.issue_token(&t.group, t.device.as_deref(), ttl, now))
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(_) => "group",
                ServerError::InvalidId { .. } => "device",
                _ => "ttl_secs",
            };
            Problem::from_error(&e, Some(field))
        })?;
    audit(
        &st,
        &who,
        "audit.enrollment_token.issue",
        format!(
            "issued an enrollment token for group {:?}{} valid {} s",
            t.group,
            t.device
                .as_deref()
                .map(|d| format!(", device {d:?}"))
                .unwrap_or_default(),
            ttl.as_secs()
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "token": token, "group": t.group, "expires_in_secs": ttl.as_secs() }),
    ))
}

pub(super) async fn list_enrollment_tokens(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let tokens: Vec<serde_json::Value> = who.vs.service.with_registry(|r| {
        r.tokens()
            .iter()
            .map(|(id, t)| {
                serde_json::json!({
                    "id": id,
                    "group": t.group,
                    "device": t.device,
                    "expires_unix": t.expires_unix,
                })
            })
            .collect()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tokens": tokens }),
    ))
}

pub(super) async fn revoke_enrollment_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    who.vs
        .service
        .update_registry(|r| r.revoke_token(&id))
        .await?;
    audit(
        &st,
        &who,
        "audit.enrollment_token.revoke",
        format!("revoked enrollment token {id}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
