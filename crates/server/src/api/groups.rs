//! The group tree.

use super::*;

#[derive(Serialize)]
pub(super) struct GroupOut {
    id: String,
    name: String,
    parent: Option<String>,
}

pub(super) async fn list_groups(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let groups: Vec<GroupOut> = who.vs.service.with_registry(|r| {
        r.groups()
            .iter()
            .map(|(id, g)| GroupOut {
                id: id.clone(),
                name: g.name.clone(),
                parent: g.parent.clone(),
            })
            .collect()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "groups": groups }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGroup {
    id: String,
    name: String,
    #[serde(default)]
    parent: Option<String>,
}

pub(super) async fn create_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let g: NewGroup = json_body(bytes)?;
    who.vs
        .service
        .add_group(&g.id, &g.name, g.parent.as_deref())
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(_) => "parent",
                _ => "id",
            };
            Problem::from_error(&e, Some(field))
        })?;
    audit(
        &st,
        &who,
        "audit.group.create",
        format!(
            "created group {:?} under {:?}",
            g.id,
            g.parent.as_deref().unwrap_or(crate::ROOT_GROUP)
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &GroupOut {
            id: g.id,
            name: g.name,
            parent: Some(g.parent.unwrap_or_else(|| crate::ROOT_GROUP.into())),
        },
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupChange {
    /// A new display name.
    #[serde(default)]
    name: Option<String>,
    /// A new parent: the group moves there with its subgroups and devices (their settings
    /// and distribution point placement follow).
    #[serde(default)]
    parent: Option<String>,
}

/// Renames a group, moves it, or both.
pub(super) async fn change_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let c: GroupChange = json_body(bytes)?;
    if c.name.is_none() && c.parent.is_none() {
        return Err(Problem::invalid(
            "nothing to change: give a name or a parent",
        ));
    }
    if let Some(name) = &c.name {
        who.vs
            .service
            .update_registry(|r| r.rename_group(&id, name))
            .await
            .map_err(|e| {
                let field = matches!(e, ServerError::InvalidId { .. }).then_some("name");
                Problem::from_error(&e, field)
            })?;
        audit(
            &st,
            &who,
            "audit.group.rename",
            format!("renamed group {id:?} to {name:?}"),
        )
        .await;
    }
    let mut pushed = 0;
    if let Some(parent) = &c.parent {
        pushed = who.vs.service.move_group(&id, parent).await.map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(g) if g == parent => Some("parent"),
                ServerError::Cycle { .. } => Some("parent"),
                _ => None,
            };
            Problem::from_error(&e, field)
        })?;
        audit(
            &st,
            &who,
            "audit.group.move",
            format!("moved group {id:?} under {parent:?}; {pushed} device(s) pushed"),
        )
        .await;
    }
    let (name, parent) = who
        .vs
        .service
        .with_registry(|r| {
            r.groups()
                .get(&id)
                .map(|g| (g.name.clone(), g.parent.clone()))
        })
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "name": name, "parent": parent, "pushed_sync_now": pushed }),
    ))
}

pub(super) async fn remove_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    who.vs
        .service
        .update_registry(|r| r.remove_group(&id))
        .await?;
    audit(
        &st,
        &who,
        "audit.group.remove",
        format!("removed group {id:?}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
