//! Writes: each registry operation as its SQL statements, virtual servers' rows, and events
//! in batches.

use super::*;

pub(super) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::PutGroup { .. } => "writing a group",
        Op::DeleteGroup { .. } => "removing a group",
        Op::PutDevice { .. } => "writing a device",
        Op::DeleteDevice { .. } => "removing a device",
        Op::PutToken { .. } => "writing an enrollment token",
        Op::DeleteToken { .. } => "removing an enrollment token",
        Op::PutGateway { .. } => "writing a gateway",
        Op::DeleteGateway { .. } => "removing a gateway",
        Op::PutDpScopes { .. } => "writing distribution point scopes",
        Op::PutEpoch { .. } => "writing a distribution point epoch",
        Op::PutPolicyObject { .. } => "writing a policy object",
        Op::DeletePolicyObject { .. } => "removing a policy object",
        Op::PutUpdateObject(_) => "writing an update object",
        Op::PutSecurityIssue(_) => "writing a security issue",
        Op::DeleteSecurityIssue { .. } => "closing a security issue",
        Op::AcknowledgeSecurityIssue { .. } => "acknowledging a security issue",
        Op::PutMeta { .. } => "writing a marker",
        Op::PutAccount(_) => "writing an account",
        Op::PutApiToken(_) => "writing an API token",
        Op::PutVirtualServer(_) => "writing a virtual server",
        Op::DeleteVirtualServer { .. } => "removing a virtual server",
    }
}

/// The tables holding a server's rows, children before parents.
pub(super) const SERVER_TABLES: &[&str] = &[
    "api_tokens",
    "accounts",
    "dp_scope_refs",
    "dp_scopes",
    "dp_epochs",
    "security_issues",
    "events",
    "policy_objects",
    "update_objects",
    "server_meta",
    "gateways",
    "enrollment_tokens",
    "devices",
    "admin_groups",
];

pub(super) async fn put_virtual_server(
    conn: &mut AnyConnection,
    parent: &str,
    v: &VirtualServerRecord,
) -> Result<(), sqlx::Error> {
    // Never turns another server's row (the main server's) into a virtual server.
    sqlx::query(
        "INSERT INTO servers (id, created_at, parent, name, disabled, multicast_block) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, disabled = excluded.disabled \
         WHERE servers.parent = excluded.parent",
    )
    .bind(&v.id)
    .bind(i64_of(v.created_at_unix))
    .bind(parent)
    .bind(&v.name)
    .bind(i64::from(v.disabled))
    .bind(i64::from(v.multicast_block))
    .execute(&mut *conn)
    .await?;
    ensure_root_group(conn, &v.id).await
}

/// Server `sid`'s root group, unless it has one.
pub(super) async fn ensure_root_group(
    conn: &mut AnyConnection,
    sid: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_groups (server_id, id, name, parent) VALUES ($1, $2, $3, NULL) \
         ON CONFLICT (server_id, id) DO NOTHING",
    )
    .bind(sid)
    .bind(ROOT_GROUP)
    .bind("Managed devices")
    .execute(conn)
    .await
    .map(drop)
}

pub(super) async fn delete_virtual_server(
    conn: &mut AnyConnection,
    parent: &str,
    id: &str,
) -> Result<(), sqlx::Error> {
    let ours: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM servers WHERE id = $1 AND parent = $2")
            .bind(id)
            .bind(parent)
            .fetch_one(&mut *conn)
            .await?;
    if ours == 0 {
        return Ok(());
    }
    for table in SERVER_TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE server_id = $1"))
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM servers WHERE id = $1 AND parent = $2")
        .bind(id)
        .bind(parent)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn apply(conn: &mut AnyConnection, sid: &str, op: &Op) -> Result<(), sqlx::Error> {
    let q = match op {
        Op::PutVirtualServer(v) => return put_virtual_server(conn, sid, v).await,
        Op::DeleteVirtualServer { id } => return delete_virtual_server(conn, sid, id).await,
        Op::PutGroup { id, group } => sqlx::query(
            "INSERT INTO admin_groups (server_id, id, name, parent) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (server_id, id) DO UPDATE SET name = excluded.name, parent = excluded.parent",
        )
        .bind(sid)
        .bind(id)
        .bind(&group.name)
        .bind(group.parent.as_deref()),
        Op::DeleteGroup { id } => {
            sqlx::query("DELETE FROM admin_groups WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutDevice { id, device } => return put_device(conn, sid, id, device).await,
        Op::DeleteDevice { id } => {
            clear_dp_scopes(conn, sid, id).await?;
            sqlx::query("DELETE FROM devices WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutToken { key, token } => sqlx::query(
            "INSERT INTO enrollment_tokens (server_id, token_sha256, group_id, device_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_id, token_sha256) DO UPDATE SET \
             group_id = excluded.group_id, device_id = excluded.device_id, expires_at = excluded.expires_at",
        )
        .bind(sid)
        .bind(key)
        .bind(&token.group)
        .bind(token.device.as_deref())
        .bind(i64_of(token.expires_unix)),
        Op::DeleteToken { key } => {
            sqlx::query("DELETE FROM enrollment_tokens WHERE server_id = $1 AND token_sha256 = $2")
                .bind(sid)
                .bind(key)
        }
        Op::PutGateway { id, gateway } => return put_gateway(conn, sid, id, gateway).await,
        Op::DeleteGateway { id } => {
            sqlx::query("DELETE FROM gateways WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutDpScopes { device, scopes } => return put_dp_scopes(conn, sid, device, scopes).await,
        Op::PutEpoch { scope, epoch } => sqlx::query(
            "INSERT INTO dp_epochs (server_id, scope, epoch) VALUES ($1, $2, $3) \
             ON CONFLICT (server_id, scope) DO UPDATE SET epoch = excluded.epoch \
             WHERE excluded.epoch > dp_epochs.epoch",
        )
        .bind(sid)
        .bind(scope)
        .bind(i64_of(*epoch)),
        Op::PutPolicyObject { kind, id, document } => sqlx::query(
            "INSERT INTO policy_objects (server_id, kind, id, document) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (server_id, kind, id) DO UPDATE SET document = excluded.document",
        )
        .bind(sid)
        .bind(kind.as_str())
        .bind(id)
        .bind(document),
        Op::DeletePolicyObject { kind, id } => sqlx::query(
            "DELETE FROM policy_objects WHERE server_id = $1 AND kind = $2 AND id = $3",
        )
        .bind(sid)
        .bind(kind.as_str())
        .bind(id),
        Op::PutUpdateObject(u) => sqlx::query(
            "INSERT INTO update_objects (server_id, id, name, version, size, sha256, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (server_id, id) DO UPDATE SET \
             name = excluded.name, version = excluded.version, size = excluded.size, \
             sha256 = excluded.sha256, published_at = excluded.published_at",
        )
        .bind(sid)
        .bind(&u.id)
        .bind(&u.name)
        .bind(i64_of(u.version))
        .bind(i64_of(u.size))
        .bind(&u.sha256)
        .bind(i64_of(u.published_at_unix)),
        Op::PutSecurityIssue(i) => sqlx::query(
            "INSERT INTO security_issues (server_id, device_id, kind, severity, opened_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server_id, device_id, kind) DO UPDATE SET \
             severity = excluded.severity, body = excluded.body",
        )
        .bind(sid)
        .bind(&i.device)
        .bind(&i.kind)
        .bind(i64::from(i.severity))
        .bind(i64_of(i.opened_at_unix))
        .bind(&i.body),
        Op::DeleteSecurityIssue { device, kind } => sqlx::query(
            "DELETE FROM security_issues WHERE server_id = $1 AND device_id = $2 AND kind = $3",
        )
        .bind(sid)
        .bind(device)
        .bind(kind),
        Op::AcknowledgeSecurityIssue {
            device,
            kind,
            by,
            at_unix,
        } => sqlx::query(
            "UPDATE security_issues SET acknowledged_at = $1, acknowledged_by = $2 \
             WHERE server_id = $3 AND device_id = $4 AND kind = $5",
        )
        .bind(i64_of(*at_unix))
        .bind(by)
        .bind(sid)
        .bind(device)
        .bind(kind),
        Op::PutAccount(a) => sqlx::query(
            "INSERT INTO accounts (server_id, name, role, password_hash, created_at, disabled) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server_id, name) DO UPDATE SET \
             role = excluded.role, password_hash = excluded.password_hash, \
             disabled = excluded.disabled",
        )
        .bind(sid)
        .bind(&a.name)
        .bind(a.role.as_str())
        .bind(&a.password_hash)
        .bind(i64_of(a.created_at_unix))
        .bind(i64::from(a.disabled)),
        Op::PutApiToken(t) => sqlx::query(
            "INSERT INTO api_tokens (server_id, id, account, token_sha256, label, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (server_id, id) DO UPDATE SET \
             revoked_at = excluded.revoked_at, label = excluded.label",
        )
        .bind(sid)
        .bind(&t.id)
        .bind(&t.account)
        .bind(&t.token_sha256)
        .bind(&t.label)
        .bind(i64_of(t.created_at_unix))
        .bind(t.revoked_at_unix.map(i64_of)),
        Op::PutMeta { key, value } => sqlx::query(
            "INSERT INTO server_meta (server_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (server_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(sid)
        .bind(key)
        .bind(value),
    };
    q.execute(conn).await.map(drop)
}

async fn put_device(
    conn: &mut AnyConnection,
    sid: &str,
    id: &str,
    d: &Device,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO devices (server_id, id, group_id, cert_sha256, cert_serial, enrolled_at, \
         last_seen, broadcast_domain, os_class, free_disk_bytes, enrolled_with, tags, \
         cert_expires_at, reserve_cert_sha256, reserve_cert_serial, reserve_cert_expires_at, \
         network_location) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (server_id, id) DO UPDATE SET group_id = excluded.group_id, \
         cert_sha256 = excluded.cert_sha256, cert_serial = excluded.cert_serial, \
         enrolled_at = excluded.enrolled_at, last_seen = excluded.last_seen, \
         broadcast_domain = excluded.broadcast_domain, os_class = excluded.os_class, \
         free_disk_bytes = excluded.free_disk_bytes, enrolled_with = excluded.enrolled_with, \
         tags = excluded.tags, cert_expires_at = excluded.cert_expires_at, \
         reserve_cert_sha256 = excluded.reserve_cert_sha256, \
         reserve_cert_serial = excluded.reserve_cert_serial, \
         reserve_cert_expires_at = excluded.reserve_cert_expires_at, \
         network_location = excluded.network_location",
    )
    .bind(sid)
    .bind(id)
    .bind(&d.group)
    .bind(&d.cert_sha256)
    .bind(&d.cert_serial)
    .bind(i64_of(d.enrolled_at_unix))
    .bind((d.last_seen_unix > 0).then(|| i64_of(d.last_seen_unix)))
    .bind(d.broadcast_domain.as_deref())
    .bind(d.os_class.as_deref())
    .bind(d.free_disk_bytes.map(i64_of))
    .bind(&d.enrolled_with)
    .bind(
        d.tags
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(","),
    )
    .bind((d.cert_expires_unix > 0).then(|| i64_of(d.cert_expires_unix)))
    .bind(d.reserve_cert.as_ref().map(|r| r.sha256.as_str()))
    .bind(d.reserve_cert.as_ref().map(|r| r.serial.as_str()))
    .bind(d.reserve_cert.as_ref().map(|r| i64_of(r.expires_unix)))
    .bind(d.network_location.as_deref())
    .execute(conn)
    .await
    .map(drop)
}

async fn put_gateway(
    conn: &mut AnyConnection,
    sid: &str,
    id: &str,
    gateway: &GatewayRegistration,
) -> Result<(), sqlx::Error> {
    let (kind, device, addr, names, cert) = match gateway {
        GatewayRegistration::RemoteOffice {
            device_id,
            certificate_sha256,
        } => (
            "remote_office",
            Some(device_id.clone()),
            None,
            None,
            Some(certificate_sha256.clone()).filter(|c| !c.is_empty()),
        ),
        GatewayRegistration::Dmz { addr, dns_names } => (
            "dmz",
            None,
            Some(addr.to_string()),
            Some(dns_names.join(" ")),
            None,
        ),
    };
    sqlx::query(
        "INSERT INTO gateways (server_id, id, kind, device_id, addr, dns_names, \
         cert_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (server_id, id) DO UPDATE SET kind = excluded.kind, \
         device_id = excluded.device_id, addr = excluded.addr, \
         dns_names = excluded.dns_names, cert_sha256 = excluded.cert_sha256",
    )
    .bind(sid)
    .bind(id)
    .bind(kind)
    .bind(device)
    .bind(addr)
    .bind(names)
    .bind(cert)
    .execute(conn)
    .await
    .map(drop)
}

/// A distribution point's scopes, in registration order (group scopes in the table that ties
/// them to their group).
async fn put_dp_scopes(
    conn: &mut AnyConnection,
    sid: &str,
    device: &str,
    scopes: &[String],
) -> Result<(), sqlx::Error> {
    clear_dp_scopes(conn, sid, device).await?;
    for (i, key) in scopes.iter().enumerate() {
        let sql = match crate::DpScope::parse(key) {
            Ok(crate::DpScope::Group(_)) => {
                "INSERT INTO dp_scopes (server_id, device_id, group_id, position) \
                 VALUES ($1, $2, $3, $4)"
            }
            _ => {
                "INSERT INTO dp_scope_refs (server_id, device_id, scope, position) \
                 VALUES ($1, $2, $3, $4)"
            }
        };
        sqlx::query(sql)
            .bind(sid)
            .bind(device)
            .bind(key)
            .bind(i as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn clear_dp_scopes(
    conn: &mut AnyConnection,
    sid: &str,
    device: &str,
) -> Result<(), sqlx::Error> {
    for table in ["dp_scopes", "dp_scope_refs"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE server_id = $1 AND device_id = $2"
        ))
        .bind(sid)
        .bind(device)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn insert_events(
    conn: &mut AnyConnection,
    sid: &str,
    events: &[EventRecord],
) -> Result<(), sqlx::Error> {
    let received = i64_of(unix(SystemTime::now()));
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        // `$n` placeholders, which both backends read (the `Any` query builder writes `?`,
        // which PostgreSQL does not).
        let mut sql = String::from(
            "INSERT INTO events (server_id, received_at, at_ms, device_id, device_seq, severity, kind, body) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 8;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            ));
        }
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(sid)
                .bind(received)
                .bind(e.at_unix_ms)
                .bind(e.device.as_deref())
                .bind(e.device_seq.map(i64_of))
                .bind(i64::from(e.severity))
                .bind(e.kind.as_str())
                .bind(e.body.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
