//! Logging in and out, and API tokens.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    name: String,
    password: String,
}

pub(super) async fn login(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: Login = json_body(bytes)?;
    let now = Instant::now();
    let source = peer.ip().to_string();
    let name: String = req.name.chars().take(128).collect();
    let throttled =
        !lock(&st.by_source).admit(&source, now) || !lock(&st.by_account).admit(&name, now);
    if throttled {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins",
            "too many failed logins for this account or from this address; wait and try again",
        ));
    }
    // The hash check is slow on purpose: off the async threads.
    let book = lock(&st.accounts).clone();
    let password = req.password;
    let checked_name = name.clone();
    let role = tokio::task::spawn_blocking(move || book.check_password(&checked_name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        lock(&st.by_source).failed(&source, now);
        lock(&st.by_account).failed(&name, now);
        log::warn!("administration API: failed login for {name:?} from {peer}");
        return Err(Problem::unauthenticated("wrong name or password"));
    };
    let token = lock(&st.sessions).open(&name, role, now).map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions",
            e.to_string(),
        )
    })?;
    log::info!("administration API: {name:?} logged in from {peer}");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "token": token,
            "role": role.as_str(),
            "expires_in_secs": st.session_ttl.as_secs(),
        }),
    ))
}

pub(super) async fn logout(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let token = bearer(&headers).ok_or_else(|| Problem::unauthenticated("no session"))?;
    if lock(&st.sessions).close(token) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::unauthenticated("no such session"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewApiToken {
    label: String,
}

pub(super) async fn issue_api_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let t: NewApiToken = json_body(bytes)?;
    let (secret, op) = lock(&st.accounts)
        .issue_api_token(&who.account, &t.label, SystemTime::now())
        .map_err(|e| Problem::from_error(&e, Some("label")))?;
    let id = match &op {
        crate::Op::PutApiToken(t) => t.id.clone(),
        _ => String::new(),
    };
    st.service.storage().commit(vec![op.clone()]).await?;
    lock(&st.accounts).apply(&op);
    audit(
        &st,
        &who,
        "audit.api_token.issue",
        format!("issued API token {id} ({:?})", t.label),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "id": id, "token": secret, "label": t.label }),
    ))
}
