//! Logging in and out, and API tokens.

use super::*;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    name: String,
    password: String,
}

pub(super) async fn login(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: Login = json_body(bytes)?;
    // The accounts of the virtual server the header names (the main server's without one).
    let vs = target(&st, &headers)?;
    if vs.record().is_some_and(|r| r.disabled) {
        return Err(Problem::forbidden(format!(
            "virtual server {:?} is disabled; its accounts cannot log in until it is enabled",
            vs.id()
        )));
    }
    let now = Instant::now();
    let source = peer.ip().to_string();
    let name: String = req.name.chars().take(128).collect();
    let throttle_key = format!("{}/{name}", vs.id());
    let throttled =
        !lock(&st.by_source).admit(&source, now) || !lock(&st.by_account).admit(&throttle_key, now);
    if throttled {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins",
            "too many failed logins for this account or from this address; wait and try again",
        ));
    }
    // The hash check is slow on purpose: off the async threads.
    let book = lock(&vs.accounts).clone();
    let password = req.password;
    let checked_name = name.clone();
    let role = tokio::task::spawn_blocking(move || book.check_password(&checked_name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        lock(&st.by_source).failed(&source, now);
        lock(&st.by_account).failed(&throttle_key, now);
        tracing::warn!(
            "administration API: failed login for {name:?} of {:?} from {peer}",
            vs.id()
        );
        return Err(Problem::unauthenticated("wrong name or password"));
    };
    let token = lock(&vs.sessions).open(&name, role, now).map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions",
            e.to_string(),
        )
    })?;
    tracing::info!(
        "administration API: {name:?} of {:?} logged in from {peer}",
        vs.id()
    );
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
    if st
        .servers
        .all()
        .iter()
        .any(|t| lock(&t.sessions).close(token))
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::unauthenticated("no such session"))
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
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
    let (secret, op) = lock(&who.vs.accounts)
        .issue_api_token(&who.account, &t.label, SystemTime::now())
        .map_err(|e| Problem::from_error(&e, Some("label")))?;
    let id = match &op {
        crate::Op::PutApiToken(t) => t.id.clone(),
        _ => String::new(),
    };
    who.vs.service.storage().commit(vec![op.clone()]).await?;
    lock(&who.vs.accounts).apply(&op);
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

pub(super) async fn list_api_tokens(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let tokens: Vec<serde_json::Value> = lock(&who.vs.accounts)
        .tokens()
        .into_iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "account": t.account,
                "label": t.label,
                "created_at_unix": t.created_at_unix,
                "revoked_at_unix": t.revoked_at_unix,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "api_tokens": tokens }),
    ))
}

pub(super) async fn revoke_api_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let op = lock(&who.vs.accounts).revoke_api_token(&id, SystemTime::now())?;
    who.vs.service.storage().commit(vec![op.clone()]).await?;
    lock(&who.vs.accounts).apply(&op);
    audit(
        &st,
        &who,
        "audit.api_token.revoke",
        format!("revoked API token {id}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) fn account_out(a: &crate::Account) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "role": a.role.as_str(),
        "created_at_unix": a.created_at_unix,
        "disabled": a.disabled,
    })
}

pub(super) async fn list_accounts(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let book = lock(&who.vs.accounts);
    let mut accounts: Vec<&crate::Account> = book.accounts().collect();
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    let out: Vec<serde_json::Value> = accounts.into_iter().map(account_out).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "accounts": out }),
    ))
}

fn role_of(s: &str) -> Result<Role, Problem> {
    Role::parse(s).ok_or_else(|| {
        Problem::invalid(format!(
            "role {s:?}: must be \"administrator\" or \"auditor\""
        ))
        .field("role")
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAccount {
    name: String,
    role: String,
    password: String,
}

pub(super) async fn create_account(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let a: NewAccount = json_body(bytes)?;
    let role = role_of(&a.role)?;
    // Hashing is slow on purpose: off the async threads.
    let book = lock(&who.vs.accounts).clone();
    let name = a.name.clone();
    let op = tokio::task::spawn_blocking(move || {
        book.create(&name, role, &a.password, SystemTime::now())
    })
    .await
    .map_err(Problem::internal)?
    .map_err(|e| {
        let field = match &e {
            ServerError::InvalidId { what, .. } if *what == "password" => "password",
            _ => "name",
        };
        Problem::from_error(&e, Some(field))
    })?;
    who.vs.service.storage().commit(vec![op.clone()]).await?;
    lock(&who.vs.accounts).apply(&op);
    audit(
        &st,
        &who,
        "audit.account.create",
        format!("created account {:?} ({})", a.name, role.as_str()),
    )
    .await;
    let out = match &op {
        crate::Op::PutAccount(a) => account_out(a),
        _ => serde_json::Value::Null,
    };
    Ok(json(StatusCode::CREATED, &out))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountChange {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// Changes an account's role, password or whether it is disabled; its sessions are closed.
pub(super) async fn change_account(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let c: AccountChange = json_body(bytes)?;
    let role = c.role.as_deref().map(role_of).transpose()?;
    let book = lock(&who.vs.accounts).clone();
    let key = name.clone();
    let password = c.password.clone();
    let op = tokio::task::spawn_blocking(move || {
        book.change(&key, role, password.as_deref(), c.disabled)
    })
    .await
    .map_err(Problem::internal)?
    .map_err(|e| {
        let field = matches!(e, ServerError::InvalidId { .. }).then_some("password");
        Problem::from_error(&e, field)
    })?;
    who.vs.service.storage().commit(vec![op.clone()]).await?;
    lock(&who.vs.accounts).apply(&op);
    let closed = lock(&who.vs.sessions).close_all_of(&name);
    let out = match &op {
        crate::Op::PutAccount(a) => account_out(a),
        _ => serde_json::Value::Null,
    };
    audit(
        &st,
        &who,
        "audit.account.change",
        format!("changed account {name:?} to {out}; {closed} session(s) closed"),
    )
    .await;
    Ok(json(StatusCode::OK, &out))
}
