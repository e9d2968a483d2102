//! One function per group of subcommands: the requests each makes and what it prints.

use super::*;

pub(crate) async fn groups(api: &Api, g: Groups, j: bool) -> Result<(), Failure> {
    match g {
        Groups::List => print(
            &api.get("/api/v1/groups").await?,
            Show::Table("groups", &["id", "name", "parent"]),
            j,
        ),
        Groups::Create { id, name, parent } => {
            let body = json!({"id": id, "name": name, "parent": parent});
            print(
                &api.send("POST", "/api/v1/groups", body).await?,
                Show::Object,
                j,
            )
        }
        Groups::Rename { id, name } => {
            let path = format!("/api/v1/groups/{}", seg(&id));
            print(
                &api.send("PATCH", &path, json!({"name": name})).await?,
                Show::Object,
                j,
            )
        }
        Groups::Move { id, parent } => {
            let path = format!("/api/v1/groups/{}", seg(&id));
            print(
                &api.send("PATCH", &path, json!({"parent": parent})).await?,
                Show::Object,
                j,
            )
        }
        Groups::Delete { id } => {
            let path = format!("/api/v1/groups/{}", seg(&id));
            api.send("DELETE", &path, Value::Null).await?;
        }
    }
    Ok(())
}

pub(crate) async fn tokens(api: &Api, t: Tokens, j: bool) -> Result<(), Failure> {
    match t {
        Tokens::Issue {
            group,
            device,
            ttl_secs,
        } => {
            let body = json!({"group": group, "device": device, "ttl_secs": ttl_secs});
            let a = api.send("POST", "/api/v1/enrollment-tokens", body).await?;
            if j {
                print(&a, Show::Object, true);
            } else {
                println!("{}", a["token"].as_str().unwrap_or(""));
            }
        }
        Tokens::List => print(
            &api.get("/api/v1/enrollment-tokens").await?,
            Show::Table("tokens", &["id", "group", "device", "expires_unix"]),
            j,
        ),
        Tokens::Revoke { id } => {
            let path = format!("/api/v1/enrollment-tokens/{}", seg(&id));
            api.send("DELETE", &path, Value::Null).await?;
        }
    }
    Ok(())
}

pub(crate) async fn policies(api: &Api, p: Policies, j: bool) -> Result<(), Failure> {
    match p {
        Policies::List => print(
            &api.get("/api/v1/policies").await?,
            Show::Table("policies", &["id", "app", "group", "status"]),
            j,
        ),
        Policies::Show { id } => print(
            &api.get(&format!("/api/v1/policies/{}", seg(&id))).await?,
            Show::Object,
            j,
        ),
        Policies::Put { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure(format!("{}: {e}", file.display())))?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| Failure(format!("{}: {e}", file.display())))?;
            let id = doc["id"]
                .as_str()
                .ok_or_else(|| Failure(format!("{}: the policy has no \"id\"", file.display())))?;
            let path = format!("/api/v1/policies/{}", seg(id));
            print(&api.send("PUT", &path, doc.clone()).await?, Show::Object, j)
        }
        Policies::Delete { id } => {
            let path = format!("/api/v1/policies/{}", seg(&id));
            print(
                &api.send("DELETE", &path, Value::Null).await?,
                Show::Object,
                j,
            )
        }
        Policies::Status { id, status } => {
            let path = format!("/api/v1/policies/{}/status", seg(&id));
            let body = json!({"status": status.as_str()});
            print(&api.send("POST", &path, body).await?, Show::Object, j)
        }
    }
    Ok(())
}

pub(crate) async fn dps(api: &Api, d: Dps, j: bool) -> Result<(), Failure> {
    match d {
        Dps::List => print(
            &api.get("/api/v1/distribution-points").await?,
            Show::Table(
                "distribution_points",
                &[
                    "device",
                    "scope",
                    "role",
                    "epoch",
                    "multicast_group",
                    "free_disk_bytes",
                    "last_heartbeat_unix",
                    "devices_served",
                ],
            ),
            j,
        ),
        Dps::Assign { device, scope } => {
            let body = scope.body(&device);
            print(
                &api.send("POST", "/api/v1/distribution-points", body)
                    .await?,
                Show::Object,
                j,
            )
        }
        Dps::Unassign { device, scope } => {
            let path = format!(
                "/api/v1/distribution-points/{}/{}",
                seg(&device),
                seg(&scope.key())
            );
            api.send("DELETE", &path, Value::Null).await?;
        }
        Dps::Activate { device, scope } => {
            let path = format!(
                "/api/v1/distribution-points/{}/{}/activate",
                seg(&device),
                seg(&scope.key())
            );
            print(
                &api.send("POST", &path, Value::Null).await?,
                Show::Object,
                j,
            )
        }
    }
    Ok(())
}

pub(crate) async fn gateways(api: &Api, g: Gateways, j: bool) -> Result<(), Failure> {
    match g {
        Gateways::List => print(
            &api.get("/api/v1/gateways").await?,
            Show::Table(
                "gateways",
                &[
                    "id",
                    "kind",
                    "source",
                    "addr",
                    "device",
                    "signal_up",
                    "devices_relayed",
                ],
            ),
            j,
        ),
        Gateways::AddDmz {
            id,
            addr,
            dns_names,
        } => {
            let body = json!({"id": id, "kind": "dmz", "addr": addr, "dns_names": dns_names});
            print(
                &api.send("POST", "/api/v1/gateways", body).await?,
                Show::Object,
                j,
            )
        }
        Gateways::AddRemoteOffice {
            id,
            device,
            certificate,
        } => {
            let pem = std::fs::read_to_string(&certificate)
                .map_err(|e| Failure(format!("{}: {e}", certificate.display())))?;
            let body = json!({"id": id, "kind": "remote_office", "device": device,
                              "certificate_pem": pem});
            print(
                &api.send("POST", "/api/v1/gateways", body).await?,
                Show::Object,
                j,
            )
        }
        Gateways::Remove { id } => {
            let path = format!("/api/v1/gateways/{}", seg(&id));
            api.send("DELETE", &path, Value::Null).await?;
        }
    }
    Ok(())
}

pub(crate) async fn updates(api: &Api, u: Updates, j: bool) -> Result<(), Failure> {
    match u {
        Updates::List => print(
            &api.get("/api/v1/updates").await?,
            Show::Table(
                "updates",
                &["id", "name", "version", "size", "devices_holding", "sha256"],
            ),
            j,
        ),
        Updates::Upload {
            id,
            file,
            name,
            version,
        } => {
            let data =
                std::fs::read(&file).map_err(|e| Failure(format!("{}: {e}", file.display())))?;
            let path = format!(
                "/api/v1/updates/{}{}",
                seg(&id),
                query(&[("name", Some(name)), ("version", Some(version.to_string()))])
            );
            let (_, a) = api
                .call("PUT", &path, "application/octet-stream", data)
                .await?;
            print(&a, Show::Object, j)
        }
        Updates::Import {
            id,
            path,
            name,
            version,
        } => {
            let body = json!({"path": path, "name": name, "version": version});
            let p = format!("/api/v1/updates/{}/import", seg(&id));
            print(&api.send("POST", &p, body).await?, Show::Object, j)
        }
    }
    Ok(())
}

pub(crate) async fn issues(api: &Api, i: Issues, j: bool) -> Result<(), Failure> {
    match i {
        Issues::List {
            device,
            acknowledged,
        } => {
            let q = query(&[
                ("device", device),
                ("acknowledged", acknowledged.map(|a| a.to_string())),
                ("limit", Some("1000".into())),
            ]);
            print(
                &api.get(&format!("/api/v1/security-issues{q}")).await?,
                Show::Table(
                    "security_issues",
                    &[
                        "device",
                        "kind",
                        "severity",
                        "opened_at_unix",
                        "acknowledged_by",
                        "body",
                    ],
                ),
                j,
            )
        }
        Issues::Ack { device, kind } => {
            let path = format!(
                "/api/v1/security-issues/{}/{}/acknowledge",
                seg(&device),
                seg(&kind)
            );
            print(
                &api.send("POST", &path, Value::Null).await?,
                Show::Object,
                j,
            )
        }
    }
    Ok(())
}

pub(crate) async fn accounts(api: &Api, a: Accounts, j: bool) -> Result<(), Failure> {
    match a {
        Accounts::List => print(
            &api.get("/api/v1/accounts").await?,
            Show::Table("accounts", &["name", "role", "disabled", "created_at_unix"]),
            j,
        ),
        Accounts::Create { name, role } => {
            let password = read_password("password")?;
            let body = json!({"name": name, "role": role, "password": password});
            print(
                &api.send("POST", "/api/v1/accounts", body).await?,
                Show::Object,
                j,
            )
        }
        Accounts::Set {
            name,
            role,
            disabled,
            password,
        } => {
            let password = if password {
                Some(read_password("password")?)
            } else {
                None
            };
            let body = json!({"role": role, "disabled": disabled, "password": password});
            let path = format!("/api/v1/accounts/{}", seg(&name));
            print(&api.send("PATCH", &path, body).await?, Show::Object, j)
        }
    }
    Ok(())
}

pub(crate) async fn virtual_servers(api: &Api, v: VirtualServers, j: bool) -> Result<(), Failure> {
    match v {
        VirtualServers::List => print(
            &api.get("/api/v1/virtual-servers").await?,
            Show::Table(
                "virtual_servers",
                &[
                    "id",
                    "name",
                    "disabled",
                    "devices",
                    "online",
                    "multicast_first",
                ],
            ),
            j,
        ),
        VirtualServers::Create { id, name } => print(
            &api.send(
                "POST",
                "/api/v1/virtual-servers",
                json!({"id": id, "name": name}),
            )
            .await?,
            Show::Object,
            j,
        ),
        VirtualServers::Set { id, name, disabled } => {
            let path = format!("/api/v1/virtual-servers/{}", seg(&id));
            let body = json!({"name": name, "disabled": disabled});
            print(&api.send("PATCH", &path, body).await?, Show::Object, j)
        }
        VirtualServers::Delete { id } => {
            let path = format!("/api/v1/virtual-servers/{}", seg(&id));
            print(
                &api.send("DELETE", &path, Value::Null).await?,
                Show::Object,
                j,
            )
        }
    }
    Ok(())
}

pub(crate) async fn api_tokens(api: &Api, t: ApiTokens, j: bool) -> Result<(), Failure> {
    match t {
        ApiTokens::List => print(
            &api.get("/api/v1/api-tokens").await?,
            Show::Table(
                "api_tokens",
                &[
                    "id",
                    "account",
                    "label",
                    "created_at_unix",
                    "revoked_at_unix",
                ],
            ),
            j,
        ),
        ApiTokens::Issue { label } => {
            let a = api
                .send("POST", "/api/v1/api-tokens", json!({"label": label}))
                .await?;
            if j {
                print(&a, Show::Object, true);
            } else {
                println!("{}", a["token"].as_str().unwrap_or(""));
            }
        }
        ApiTokens::Revoke { id } => {
            let path = format!("/api/v1/api-tokens/{}", seg(&id));
            api.send("DELETE", &path, Value::Null).await?;
        }
    }
    Ok(())
}

pub(crate) async fn devices(api: &Api, d: Devices, j: bool) -> Result<(), Failure> {
    let path = |id: &str, rest: &str| format!("/api/v1/devices/{}{rest}", seg(id));
    match d {
        Devices::List(f) => {
            let columns: &[&str] = &["id", "group", "online", "last_seen_unix", "tags"];
            let mut after = f.after.clone();
            let mut all = Vec::new();
            loop {
                let q = query(&[
                    ("limit", Some(f.limit.to_string())),
                    ("after", after.clone()),
                    ("group", f.group.clone()),
                    ("tag", f.tag.clone()),
                    ("online", f.online.map(|v| v.to_string())),
                    ("seen_since", f.seen_since.map(|v| v.to_string())),
                    ("seen_before", f.seen_before.map(|v| v.to_string())),
                    ("dp", f.dp.map(|v| v.to_string())),
                    ("issue", f.issue.map(|v| v.to_string())),
                ]);
                let page = api.get(&format!("/api/v1/devices{q}")).await?;
                if let Some(rows) = page["devices"].as_array() {
                    all.extend(rows.iter().cloned());
                }
                after = page["next"].as_str().map(str::to_string);
                if after.is_none() || f.one_page {
                    let out = json!({"devices": all, "next": after});
                    print(&out, Show::Table("devices", columns), j);
                    return Ok(());
                }
            }
        }
        Devices::Show { id } => print(&api.get(&path(&id, "")).await?, Show::Object, j),
        Devices::Move { id, group } => print(
            &api.send("POST", &path(&id, "/move"), json!({"group": group}))
                .await?,
            Show::Object,
            j,
        ),
        Devices::Tag { id, tags } => print(
            &api.send("PATCH", &path(&id, ""), json!({"tags": tags}))
                .await?,
            Show::Object,
            j,
        ),
        Devices::Locate { id, location, .. } => print(
            &api.send(
                "PATCH",
                &path(&id, ""),
                json!({"network_location": location}),
            )
            .await?,
            Show::Object,
            j,
        ),
        Devices::Remove { id } => {
            api.send("DELETE", &path(&id, ""), Value::Null).await?;
        }
        Devices::Settings { id } => {
            print(&api.get(&path(&id, "/settings")).await?, Show::Object, j)
        }
        Devices::Explain {
            id,
            app,
            path: setting,
        } => {
            let q = query(&[("app", app), ("path", setting)]);
            let v = api
                .get(&path(&id, &format!("/settings/explain{q}")))
                .await?;
            if j {
                print(&v, Show::Object, true);
            } else {
                print_explanations(&v);
            }
        }
    }
    Ok(())
}
