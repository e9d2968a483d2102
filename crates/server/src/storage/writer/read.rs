//! Reads served by the writer thread: the snapshot loaded at start, counts, events and security issues.

use super::*;

impl Writer {
    pub(super) async fn read(&mut self, job: Job) {
        match job {
            Job::Load(reply) => {
                let _ = reply.send(self.load().await);
            }
            Job::Counts(reply) => {
                let _ = reply.send(self.counts().await);
            }
            Job::Issues(reply) => {
                let _ = reply.send(self.security_issues().await);
            }
            Job::ReadEvents(query, reply) => {
                let _ = reply.send(self.events(&query).await);
            }
            Job::Trim(now, reply) => {
                let _ = reply.send(self.trim_by_age(now).await);
            }
            Job::Raw(sql, reply) => {
                let err = self.query_error("running a statement");
                let r = self.conn.execute(sql.as_str()).await.map(drop).map_err(err);
                let _ = reply.send(r);
            }
            Job::PolicyObjects(kind, id, reply) => {
                let err = self.query_error("reading policy objects");
                let rows = sqlx::query(
                    "SELECT id, document FROM policy_objects WHERE server_id = $1 AND kind = $2 \
                     AND (CAST($3 AS TEXT) IS NULL OR id = $3) ORDER BY id",
                )
                .bind(&self.server_id)
                .bind(kind.as_str())
                .bind(id.as_deref())
                .fetch_all(&mut self.conn)
                .await
                .map_err(&err)
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get("id")?, r.try_get("document")?)))
                        .collect::<Result<Vec<(String, String)>, sqlx::Error>>()
                        .map_err(&err)
                });
                let _ = reply.send(rows);
            }
            Job::Flush(reply) => {
                while !self.touched.is_empty() {
                    self.flush_touched().await;
                }
                let _ = reply.send(Ok(()));
            }
            Job::Commit(..) | Job::Events(..) | Job::Touch(_) => {}
        }
    }

    pub(super) async fn security_issues(&mut self) -> Result<Vec<SecurityIssue>, ServerError> {
        let err = self.query_error("reading security issues");
        let mut issues = Vec::new();
        for r in sqlx::query(
            "SELECT device_id, kind, severity, opened_at, body, acknowledged_at, acknowledged_by \
             FROM security_issues WHERE server_id = $1 ORDER BY device_id, kind",
        )
        .bind(&self.server_id)
        .fetch_all(&mut self.conn)
        .await
        .map_err(&err)?
        {
            issues.push(SecurityIssue {
                device: r.try_get("device_id").map_err(&err)?,
                kind: r.try_get("kind").map_err(&err)?,
                severity: i32::try_from(r.try_get::<i64, _>("severity").map_err(&err)?)
                    .unwrap_or_default(),
                opened_at_unix: u64_of(r.try_get("opened_at").map_err(&err)?),
                body: r.try_get("body").map_err(&err)?,
                acknowledged_at_unix: r
                    .try_get::<Option<i64>, _>("acknowledged_at")
                    .map_err(&err)?
                    .map(u64_of),
                acknowledged_by: r.try_get("acknowledged_by").map_err(&err)?,
            });
        }
        Ok(issues)
    }

    pub(super) async fn counts(&mut self) -> Result<Counts, ServerError> {
        let err = self.query_error("counting rows");
        let sid = self.server_id.clone();
        let mut count = async |sql: &'static str| -> Result<u64, ServerError> {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(&sid)
                .fetch_one(&mut self.conn)
                .await
                .map_err(&err)?;
            Ok(u64_of(n))
        };
        Ok(Counts {
            devices: count("SELECT COUNT(*) FROM devices WHERE server_id = $1").await?,
            tokens: count("SELECT COUNT(*) FROM enrollment_tokens WHERE server_id = $1").await?,
            events: count("SELECT COUNT(*) FROM events WHERE server_id = $1").await?,
        })
    }

    pub(super) async fn events(
        &mut self,
        q: &super::super::EventQuery,
    ) -> Result<Vec<StoredEvent>, ServerError> {
        let err = self.query_error("reading events");
        // `CAST(.. AS TEXT) IS NULL` reads the same in both dialects: an absent filter.
        let rows = sqlx::query(
            "SELECT seq, device_id, device_seq, at_ms, severity, kind, body FROM events \
             WHERE server_id = $1 AND seq > $2 \
             AND (CAST($4 AS TEXT) IS NULL OR kind = $4) \
             AND (CAST($5 AS TEXT) IS NULL OR device_id = $5) \
             ORDER BY seq LIMIT $3",
        )
        .bind(&self.server_id)
        .bind(i64_of(q.after))
        .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
        .bind(q.kind.as_deref())
        .bind(q.device.as_deref())
        .fetch_all(&mut self.conn)
        .await
        .map_err(&err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: u64_of(r.try_get("seq")?),
                    event: EventRecord {
                        device: r.try_get("device_id")?,
                        device_seq: r.try_get::<Option<i64>, _>("device_seq")?.map(u64_of),
                        at_unix_ms: r.try_get("at_ms")?,
                        severity: i32::try_from(r.try_get::<i64, _>("severity")?)
                            .unwrap_or_default(),
                        kind: r.try_get("kind")?,
                        body: r.try_get("body")?,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&err)
    }

    pub(super) async fn load(&mut self) -> Result<Snapshot, ServerError> {
        let mut registry = self.load_registry().await?;
        // What loading applied is the state itself, not changes to commit.
        let _ = registry.take_journal();
        Ok(Snapshot {
            registry,
            epochs: self.load_epochs().await?,
            policy: self.load_policy().await?,
            updates: self.load_updates().await?,
            issues: self.security_issues().await?,
            meta: self.load_meta().await?,
            accounts: self.load_accounts().await?,
            api_tokens: self.load_api_tokens().await?,
            virtual_servers: self.load_virtual_servers().await?,
        })
    }

    /// The rows `sql` selects for this server (`$1` is its id).
    async fn rows(&mut self, sql: &'static str) -> Result<Vec<AnyRow>, ServerError> {
        let err = self.query_error("loading the server's state");
        sqlx::query(sql)
            .bind(&self.server_id)
            .fetch_all(&mut self.conn)
            .await
            .map_err(err)
    }

    /// Groups, devices, enrollment tokens, gateways and distribution point scopes.
    async fn load_registry(&mut self) -> Result<Registry, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut registry = Registry::new(&self.server_id)?;
        let rows = self
            .rows("SELECT id, name, parent FROM admin_groups WHERE server_id = $1")
            .await?;
        for r in &rows {
            registry.apply(Op::PutGroup {
                id: r.try_get("id").map_err(&err)?,
                group: Group {
                    name: r.try_get("name").map_err(&err)?,
                    parent: r.try_get("parent").map_err(&err)?,
                },
            });
        }
        let rows = self
            .rows(
                "SELECT id, group_id, cert_sha256, cert_serial, enrolled_at, last_seen, \
             broadcast_domain, os_class, free_disk_bytes, enrolled_with, tags, cert_expires_at, \
             reserve_cert_sha256, reserve_cert_serial, reserve_cert_expires_at, network_location \
             FROM devices \
             WHERE server_id = $1",
            )
            .await?;
        for r in &rows {
            let (id, device) = device_of(r).map_err(&err)?;
            registry.apply(Op::PutDevice { id, device });
        }
        let rows = self
            .rows(
                "SELECT token_sha256, group_id, device_id, expires_at FROM enrollment_tokens \
             WHERE server_id = $1",
            )
            .await?;
        for r in &rows {
            registry.apply(Op::PutToken {
                key: r.try_get("token_sha256").map_err(&err)?,
                token: TokenRecord {
                    group: r.try_get("group_id").map_err(&err)?,
                    device: r.try_get("device_id").map_err(&err)?,
                    expires_unix: u64_of(r.try_get("expires_at").map_err(&err)?),
                },
            });
        }
        let rows = self.rows("SELECT id, kind, device_id, addr, dns_names, cert_sha256 FROM gateways WHERE server_id = $1").await?;
        for r in &rows {
            let id: String = r.try_get("id").map_err(&err)?;
            let gateway = gateway_of(r).map_err(&err)?.ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("gateway {id:?}: unknown kind or bad address"),
                })
            })?;
            registry.apply(Op::PutGateway { id, gateway });
        }
        // Group scopes (which the database ties to their group) and the others, merged in
        // registration order.
        let rows = self
            .rows(
                "SELECT device_id, group_id AS scope, position FROM dp_scopes WHERE server_id = $1 \
             UNION ALL SELECT device_id, scope, position FROM dp_scope_refs \
             WHERE server_id = $1 ORDER BY device_id, position",
            )
            .await?;
        let mut dps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            dps.entry(r.try_get("device_id").map_err(&err)?)
                .or_default()
                .push(r.try_get("scope").map_err(&err)?);
        }
        for (device, scopes) in dps {
            registry.apply(Op::PutDpScopes { device, scopes });
        }
        Ok(registry)
    }

    /// The distribution point election epochs, by scope.
    async fn load_epochs(&mut self) -> Result<BTreeMap<String, u64>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut epochs = BTreeMap::new();
        for r in self
            .rows("SELECT scope, epoch FROM dp_epochs WHERE server_id = $1")
            .await?
        {
            epochs.insert(
                r.try_get("scope").map_err(&err)?,
                u64_of(r.try_get("epoch").map_err(&err)?),
            );
        }
        Ok(epochs)
    }

    /// The policy objects' documents, by kind and id.
    async fn load_policy(
        &mut self,
    ) -> Result<BTreeMap<(PolicyObjectKind, String), String>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut policy = BTreeMap::new();
        for r in self
            .rows("SELECT kind, id, document FROM policy_objects WHERE server_id = $1")
            .await?
        {
            let kind: String = r.try_get("kind").map_err(&err)?;
            let kind = PolicyObjectKind::parse(&kind).ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("policy object kind {kind:?}"),
                })
            })?;
            policy.insert(
                (kind, r.try_get("id").map_err(&err)?),
                r.try_get("document").map_err(&err)?,
            );
        }
        Ok(policy)
    }

    /// The published update objects.
    async fn load_updates(&mut self) -> Result<Vec<UpdateObject>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut updates = Vec::new();
        for r in self
            .rows(
                "SELECT id, name, version, size, sha256, published_at FROM update_objects \
             WHERE server_id = $1 ORDER BY id",
            )
            .await?
        {
            updates.push(UpdateObject {
                id: r.try_get("id").map_err(&err)?,
                name: r.try_get("name").map_err(&err)?,
                version: u64_of(r.try_get("version").map_err(&err)?),
                size: u64_of(r.try_get("size").map_err(&err)?),
                sha256: r.try_get("sha256").map_err(&err)?,
                published_at_unix: u64_of(r.try_get("published_at").map_err(&err)?),
            });
        }
        Ok(updates)
    }

    /// The server's key-value metadata.
    async fn load_meta(&mut self) -> Result<BTreeMap<String, String>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut meta = BTreeMap::new();
        for r in self
            .rows("SELECT key, value FROM server_meta WHERE server_id = $1")
            .await?
        {
            meta.insert(
                r.try_get("key").map_err(&err)?,
                r.try_get("value").map_err(&err)?,
            );
        }
        Ok(meta)
    }

    /// The administration accounts.
    async fn load_accounts(&mut self) -> Result<Vec<crate::Account>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut accounts = Vec::new();
        for r in self
            .rows(
                "SELECT name, role, password_hash, created_at, disabled FROM accounts \
             WHERE server_id = $1 ORDER BY name",
            )
            .await?
        {
            let name: String = r.try_get("name").map_err(&err)?;
            let role: String = r.try_get("role").map_err(&err)?;
            let role = crate::Role::parse(&role).ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("role {role:?} of account {name:?}"),
                })
            })?;
            let mut a = crate::Account::new(
                name,
                role,
                r.try_get("password_hash").map_err(&err)?,
                u64_of(r.try_get("created_at").map_err(&err)?),
            );
            a.disabled = r.try_get::<i64, _>("disabled").map_err(&err)? != 0;
            accounts.push(a);
        }
        Ok(accounts)
    }

    /// The API tokens.
    async fn load_api_tokens(&mut self) -> Result<Vec<crate::ApiToken>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut api_tokens = Vec::new();
        for r in self
            .rows(
                "SELECT id, account, token_sha256, label, created_at, revoked_at FROM api_tokens \
             WHERE server_id = $1 ORDER BY id",
            )
            .await?
        {
            api_tokens.push(crate::ApiToken {
                id: r.try_get("id").map_err(&err)?,
                account: r.try_get("account").map_err(&err)?,
                token_sha256: r.try_get("token_sha256").map_err(&err)?,
                label: r.try_get("label").map_err(&err)?,
                created_at_unix: u64_of(r.try_get("created_at").map_err(&err)?),
                revoked_at_unix: r
                    .try_get::<Option<i64>, _>("revoked_at")
                    .map_err(&err)?
                    .map(u64_of),
            });
        }
        Ok(api_tokens)
    }

    /// The virtual servers under this one.
    async fn load_virtual_servers(&mut self) -> Result<Vec<VirtualServerRecord>, ServerError> {
        let err = self.query_error("loading the server's state");
        let mut virtual_servers = Vec::new();
        for r in self
            .rows(
                "SELECT id, name, disabled, multicast_block, created_at FROM servers \
             WHERE parent = $1 ORDER BY id",
            )
            .await?
        {
            virtual_servers.push(VirtualServerRecord {
                id: r.try_get("id").map_err(&err)?,
                name: r.try_get("name").map_err(&err)?,
                disabled: r.try_get::<i64, _>("disabled").map_err(&err)? != 0,
                multicast_block: u32::try_from(
                    r.try_get::<Option<i64>, _>("multicast_block")
                        .map_err(&err)?
                        .unwrap_or(0),
                )
                .unwrap_or(0),
                created_at_unix: u64_of(r.try_get("created_at").map_err(&err)?),
            });
        }
        Ok(virtual_servers)
    }
}

pub(super) fn device_of(r: &AnyRow) -> Result<(String, Device), sqlx::Error> {
    Ok((
        r.try_get("id")?,
        Device {
            group: r.try_get("group_id")?,
            cert_sha256: r.try_get("cert_sha256")?,
            cert_serial: r.try_get("cert_serial")?,
            enrolled_at_unix: u64_of(r.try_get("enrolled_at")?),
            last_seen_unix: r.try_get::<Option<i64>, _>("last_seen")?.map_or(0, u64_of),
            broadcast_domain: r.try_get("broadcast_domain")?,
            os_class: r.try_get("os_class")?,
            free_disk_bytes: r.try_get::<Option<i64>, _>("free_disk_bytes")?.map(u64_of),
            enrolled_with: r.try_get("enrolled_with")?,
            tags: r
                .try_get::<String, _>("tags")?
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            cert_expires_unix: r
                .try_get::<Option<i64>, _>("cert_expires_at")?
                .map_or(0, u64_of),
            reserve_cert: match (
                r.try_get::<Option<String>, _>("reserve_cert_sha256")?,
                r.try_get::<Option<String>, _>("reserve_cert_serial")?,
                r.try_get::<Option<i64>, _>("reserve_cert_expires_at")?,
            ) {
                (Some(sha256), Some(serial), Some(expires)) => Some(ReserveCertificate {
                    sha256,
                    serial,
                    expires_unix: u64_of(expires),
                }),
                _ => None,
            },
            network_location: r.try_get("network_location")?,
        },
    ))
}

pub(super) fn gateway_of(r: &AnyRow) -> Result<Option<GatewayRegistration>, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(match kind.as_str() {
        "remote_office" => {
            let cert: Option<String> = r.try_get("cert_sha256")?;
            r.try_get::<Option<String>, _>("device_id")?
                .map(|device_id| GatewayRegistration::RemoteOffice {
                    device_id,
                    certificate_sha256: cert.unwrap_or_default(),
                })
        }
        "dmz" => {
            let addr: Option<String> = r.try_get("addr")?;
            let names: Option<String> = r.try_get("dns_names")?;
            addr.and_then(|a| a.parse().ok())
                .map(|addr| GatewayRegistration::Dmz {
                    addr,
                    dns_names: names
                        .unwrap_or_default()
                        .split(' ')
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .collect(),
                })
        }
        _ => None,
    })
}
