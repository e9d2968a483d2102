//! Security issues: listed with filters, acknowledged.

use super::*;

pub(super) fn issue_out(i: &crate::SecurityIssue) -> serde_json::Value {
    serde_json::json!({
        "device": i.device,
        "kind": i.kind,
        "severity": outpost_wire::messages::Severity::try_from(i.severity)
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_else(|_| i.severity.to_string()),
        "opened_at_unix": i.opened_at_unix,
        "body": i.body,
        "acknowledged_at_unix": i.acknowledged_at_unix,
        "acknowledged_by": i.acknowledged_by,
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueQuery {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// Only acknowledged (true) or unacknowledged (false) issues.
    #[serde(default)]
    acknowledged: Option<bool>,
    #[serde(default)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<String>,
}

/// The cursor of an issue: its device and kind.
fn cursor(i: &crate::SecurityIssue) -> String {
    format!("{}/{}", i.device, i.kind)
}

pub(super) async fn list_issues(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<IssueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let storage = who.vs.service.storage().clone();
    let all = blocking(move || storage.security_issues()).await?;
    let mut page = Vec::new();
    let mut next = None;
    for i in all.iter().filter(|i| {
        q.device.as_ref().is_none_or(|d| *d == i.device)
            && q.kind.as_ref().is_none_or(|k| *k == i.kind)
            && q.acknowledged
                .is_none_or(|a| i.acknowledged_at_unix.is_some() == a)
            && q.after.as_ref().is_none_or(|a| cursor(i) > *a)
    }) {
        if page.len() == limit {
            next = page.last().map(cursor);
            break;
        }
        page.push(i.clone());
    }
    let out: Vec<serde_json::Value> = page.iter().map(issue_out).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "security_issues": out, "next": next }),
    ))
}

pub(super) async fn acknowledge_issue(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path((device, kind)): axum::extract::Path<(String, String)>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let storage = who.vs.service.storage().clone();
    let open = blocking(move || storage.security_issues())
        .await?
        .into_iter()
        .find(|i| i.device == device && i.kind == kind)
        .ok_or_else(|| {
            Problem::from(ServerError::Unknown {
                kind: "security issue",
                id: format!("{device}/{kind}"),
            })
        })?;
    let at_unix = crate::registry::unix(SystemTime::now());
    who.vs
        .service
        .storage()
        .commit(vec![crate::Op::AcknowledgeSecurityIssue {
            device: device.clone(),
            kind: kind.clone(),
            by: who.account.clone(),
            at_unix,
        }])
        .await?;
    audit(
        &st,
        &who,
        "audit.security_issue.acknowledge",
        format!("acknowledged security issue {kind:?} of device {device:?}"),
    )
    .await;
    let mut done = open;
    done.acknowledged_at_unix = Some(at_unix);
    done.acknowledged_by = Some(who.account);
    Ok(json(StatusCode::OK, &issue_out(&done)))
}
