//! Update objects: published by upload (streamed to disk, hashed on the way) or from a file
//! in the server's import directory, listed with how many devices hold them.

use super::*;

fn updates_of(st: &crate::Tenant) -> Result<(&crate::StoredObjects, &crate::FleetSync), Problem> {
    match (&st.updates, &st.fleet) {
        (Some(u), Some(f)) => Ok((u, f)),
        _ => Err(Problem::not_found(
            "this server serves updates from another store: it publishes none",
        )),
    }
}

pub(super) async fn list_updates(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&st, &headers)?;
    let (objects, fleet) = updates_of(&who.vs)?;
    let out: Vec<serde_json::Value> = objects
        .list()
        .iter()
        .map(|u| {
            let (exact, any) = fleet.holders(&u.id, u.version);
            serde_json::json!({
                "id": u.id,
                "name": u.name,
                "version": u.version,
                "size": u.size,
                "sha256": u.sha256,
                "published_at_unix": u.published_at_unix,
                "devices_holding": exact,
                "devices_holding_any_version": any,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "updates": out })))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    name: String,
    version: u64,
}

/// Publishes the announcement of a stored object, audits it, answers with it.
async fn announce(
    st: &ApiState,
    who: &Caller,
    fleet: &crate::FleetSync,
    a: outpost_wire::messages::UpdateAnnouncement,
    how: &str,
) -> Response {
    fleet.publish_update(a.clone());
    audit(
        st,
        who,
        "audit.update.publish",
        format!(
            "published update {:?} ({:?}) version {}, {} bytes, {how}",
            a.object_id, a.name, a.version, a.size
        ),
    )
    .await;
    json(
        StatusCode::CREATED,
        &serde_json::json!({
            "id": a.object_id,
            "name": a.name,
            "version": a.version,
            "size": a.size,
            "sha256": crate::registry::hex(&a.sha256),
        }),
    )
}

fn check_upload(q: &UploadQuery) -> Result<(), Problem> {
    if q.name.is_empty() || q.name.len() > 200 {
        return Err(Problem::invalid("name: must be 1 to 200 bytes").field("name"));
    }
    Ok(())
}

/// `PUT /api/v1/updates/{id}?name=&version=`: the body is the file, streamed to disk.
pub(super) async fn upload_update(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    use futures_util::StreamExt;
    let who = writer(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    check_upload(&q)?;
    crate::check_id("update object id", &id).map_err(|e| Problem::from_error(&e, Some("id")))?;
    let (objects, fleet) = updates_of(&who.vs)?;
    let max = st.max_upload;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Unreadable body",
            format!("the upload is larger than max_upload_bytes ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // Chunks go to a blocking writer through a short queue: a slow disk slows the upload.
    let staged = objects.stage()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer_task = tokio::task::spawn_blocking(move || {
        let mut staged = staged;
        while let Some(chunk) = rx.blocking_recv() {
            staged.write(&chunk)?;
        }
        Ok::<_, ServerError>(staged)
    });
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                received += c.len() as u64;
                if received > max {
                    failure = Some(too_large());
                    break;
                }
                if tx.send(c).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(Problem::bad_request(format!("the upload broke off: {e}")));
                break;
            }
        }
    }
    drop(tx);
    let staged = writer_task.await.map_err(Problem::internal)??;
    if let Some(p) = failure {
        return Err(p);
    }
    if declared.is_some_and(|n| n != staged.len()) {
        return Err(Problem::bad_request(format!(
            "the upload ended after {} of its {} declared bytes",
            staged.len(),
            declared.unwrap_or_default()
        )));
    }
    let a = objects
        .publish_staged(staged, &id, &q.name, q.version)
        .await?;
    Ok(announce(&st, &who, fleet, a, "uploaded").await)
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportRequest {
    /// A file in the import directory (a name, or a path relative to it).
    path: String,
    name: String,
    version: u64,
}

/// `POST /api/v1/updates/{id}/import`: publishes a file already on the server, from the
/// configured import directory only.
pub(super) async fn import_update(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let r: ImportRequest = json_body(bytes)?;
    check_upload(&UploadQuery {
        name: r.name.clone(),
        version: r.version,
    })?;
    crate::check_id("update object id", &id).map_err(|e| Problem::from_error(&e, Some("id")))?;
    let (objects, fleet) = updates_of(&who.vs)?;
    let dir = st.import_dir.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "import by path is off: set [api] import_dir in the server configuration",
        )
    })?;
    let max = st.max_upload;
    let staged = objects.stage()?;
    let asked = r.path.clone();
    let staged = tokio::task::spawn_blocking(move || -> Result<crate::Staged, Problem> {
        let not_found = |why: String| Problem::not_found(why).field("path");
        let root = dir
            .canonicalize()
            .map_err(|e| Problem::internal(format!("import_dir {}: {e}", dir.display())))?;
        let path = root
            .join(&asked)
            .canonicalize()
            .map_err(|e| not_found(format!("{asked:?} in the import directory: {e}")))?;
        if !path.starts_with(&root) || !path.is_file() {
            return Err(not_found(format!(
                "{asked:?} is not a file in the import directory"
            )));
        }
        let mut f = std::fs::File::open(&path)
            .map_err(|e| not_found(format!("{}: {e}", path.display())))?;
        let mut staged = staged;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(|e| Problem::internal(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            staged.write(&buf[..n]).map_err(Problem::from)?;
            if staged.len() > max {
                return Err(Problem::invalid(format!(
                    "{asked:?} is larger than max_upload_bytes ({max} bytes)"
                ))
                .field("path"));
            }
        }
        Ok(staged)
    })
    .await
    .map_err(Problem::internal)??;
    let a = objects
        .publish_staged(staged, &id, &r.name, r.version)
        .await?;
    Ok(announce(&st, &who, fleet, a, &format!("imported from {:?}", r.path)).await)
}
