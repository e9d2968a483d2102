//! Serving one device connection: admission, Hello, then enrollment or the device's requests.

use super::*;

/// A device connection, framed.
type DeviceFramed = Framed<outpost_gateway::BoxStream, MessageCodec>;

impl AdminService {
    /// Serves one device connection until it closes.
    pub async fn serve(self: Arc<Self>, conn: DeviceConnection) {
        let peer = conn.peer.clone();
        let via = conn.via.clone();
        let enrolling = peer.channel == ChannelKind::Enrollment;
        // Until the registry knows its peer, a connection may send only small frames; an
        // enrolled device gets `max_frame_len` once it is known.
        let mut framed = Framed::new(
            conn.stream,
            MessageCodec::with_max_frame_len(self.config.max_enrollment_frame_len),
        );
        // Held until this enrollment connection ends.
        let place = if enrolling {
            match self
                .enrolling
                .admit_evicting_oldest(source_of(&peer.remote_addr))
            {
                Ok(p) => Some(p),
                Err(why) => {
                    self.stats.enroll_throttled.fetch_add(1, Ordering::Relaxed);
                    let reason = match why {
                        admission::Refused::SourceFull => format!(
                            "{} enrollment connections open from this address, the most served at once",
                            self.config.max_enrolling_per_source
                        ),
                        _ => format!(
                            "{} enrollment connections open, the most served at once",
                            self.config.max_enrolling
                        ),
                    };
                    let _ = tokio::time::timeout(
                        self.config.hello_timeout,
                        framed.send(refusal(RefusalCode::Overloaded, reason)),
                    )
                    .await;
                    return;
                }
            }
        } else {
            None
        };
        // A full enrollment pool evicts its oldest connection to make room for a new one.
        let evicted = place.as_ref().map(admission::Admission::eviction);
        let serving = self.serve_admitted(framed, peer, via, enrolling);
        match evicted {
            Some(token) => tokio::select! {
                () = serving => {}
                () = token.cancelled() => {
                    self.stats.enroll_throttled.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => serving.await,
        }
    }

    /// [`serve`](Self::serve) once the connection has its place: the Hello, then enrollment
    /// or the device's requests.
    pub(super) async fn serve_admitted(
        &self,
        mut framed: DeviceFramed,
        peer: outpost_gateway::DevicePeer,
        via: Via,
        enrolling: bool,
    ) {
        // An enrollment connection has one deadline for all it must send; a device's first
        // message has `hello_timeout`.
        let deadline = tokio::time::Instant::now()
            + if enrolling {
                self.config
                    .enrollment_timeout
                    .min(self.config.hello_timeout)
            } else {
                self.config.hello_timeout
            };
        if !self.greet(&mut framed, deadline).await {
            return;
        }
        if peer.channel == ChannelKind::Enrollment {
            self.serve_enrollment(&mut framed, &peer, deadline).await;
            return;
        }
        let Some(ctx) = self.authenticate(&mut framed, &peer, via).await else {
            return;
        };
        framed
            .codec_mut()
            .set_max_frame_len(self.config.max_frame_len);
        self.serve_device(framed, ctx).await;
    }

    /// The device's `Hello` before `deadline`, a version both speak, and the `HelloAck`.
    /// False (after a refusal where one is owed) when the connection is to be closed.
    async fn greet(&self, framed: &mut DeviceFramed, deadline: tokio::time::Instant) -> bool {
        let hello = match tokio::time::timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(Message::Hello(h)))) => h,
            _ => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let version = match VersionRange::new(hello.min_version, hello.max_version)
            .and_then(|v| negotiate(VersionRange::CURRENT, v))
        {
            Ok(v) => v,
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let _ = framed
                    .send(refusal(RefusalCode::VersionMismatch, e.to_string()))
                    .await;
                return false;
            }
        };
        let ack = HelloAck {
            version,
            role: Role::Server as i32,
            node_id: lock(&self.registry).instance_id.clone(),
        };
        framed.send(Message::from(ack)).await.is_ok()
    }

    /// The one request of an enrollment connection, answered before `deadline`.
    async fn serve_enrollment(
        &self,
        framed: &mut DeviceFramed,
        peer: &outpost_gateway::DevicePeer,
        deadline: tokio::time::Instant,
    ) {
        let reply = match tokio::time::timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(Message::EnrollRequest(_))))
                if !lock(&self.throttle)
                    .admit(&source_of(&peer.remote_addr).to_string(), Instant::now()) =>
            {
                self.stats.enroll_throttled.fetch_add(1, Ordering::Relaxed);
                refusal(
                    RefusalCode::Overloaded,
                    format!(
                        "too many failed enrollments from this address; retry after {} s",
                        self.config.enroll_failure_window.as_secs()
                    ),
                )
            }
            Ok(Some(Ok(Message::EnrollRequest(req)))) => {
                match self.enroll_routed(&req, &peer.remote_addr).await {
                    Ok(resp) => Message::from(resp),
                    Err(e) if e.is_retryable() => refusal(
                        refusal_code(&e),
                        format!("the server cannot record enrollments now; retry later ({e})"),
                    ),
                    Err(e) => refusal(refusal_code(&e), e.to_string()),
                }
            }
            _ => refusal(
                RefusalCode::ProtocolViolation,
                "only EnrollRequest is served on the enrollment channel".into(),
            ),
        };
        let _ = framed.send(reply).await;
    }

    /// Who an authenticated device is, from its certificate: known here, not disabled, its
    /// reserve certificate promoted if it presents it, not revoked. `None` (after the
    /// refusal) when it is not to be served.
    async fn authenticate(
        &self,
        framed: &mut DeviceFramed,
        peer: &outpost_gateway::DevicePeer,
        via: Via,
    ) -> Option<DeviceContext> {
        let ours = peer.virtual_server.as_deref() == self.virtual_server();
        if ours && self.is_disabled() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = framed.send(self.disabled_refusal()).await;
            return None;
        }
        // An authenticated device: who it is comes from its certificate (one bound to
        // another virtual server is never looked up here).
        let known = peer
            .cert_sha256
            .as_ref()
            .filter(|_| ours)
            .and_then(|fp| self.known(fp));
        // A device enrolled before serials were kept gets the serial of the certificate it
        // presents (the fingerprint matched, so it is that certificate).
        let Some((device_id, group, recorded_serial, fleet_size)) = known else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = framed
                .send(refusal(
                    RefusalCode::NotAuthorized,
                    format!("certificate {} is not enrolled here", peer.fingerprint()),
                ))
                .await;
            return None;
        };
        tracing::Span::current().record("device", device_id.as_str());
        // A device presenting its reserve certificate has switched to it: it becomes the
        // current one (committed before the device is served).
        let mut recorded_serial = recorded_serial;
        if let Some(fp) = &peer.cert_sha256
            && let Some(serial) = self.with_registry(|r| {
                r.device(&device_id)
                    .and_then(|d| d.reserve_cert.as_ref())
                    .filter(|rc| rc.sha256 == crate::registry::hex(fp))
                    .map(|rc| rc.serial.clone())
            })
        {
            match self
                .update_registry(|reg| Ok(reg.promote_reserve(&device_id, fp)))
                .await
            {
                Ok(_) => {
                    tracing::info!("switched to its reserve certificate (serial {serial})");
                    recorded_serial = serial;
                }
                Err(e) => {
                    tracing::warn!("its reserve certificate not recorded as current: {e}");
                    let _ = framed
                        .send(refusal(
                            RefusalCode::Overloaded,
                            format!("the server cannot record the certificate switch now; retry later ({e})"),
                        ))
                        .await;
                    return None;
                }
            }
        }
        // A device enrolled before serials were kept gets the serial of the certificate it
        // presents (the fingerprint matched, so it is that certificate).
        let serial = match (recorded_serial.is_empty(), &peer.cert_serial) {
            (true, Some(presented)) => {
                let recorded = self
                    .update_registry(|reg| Ok(reg.record_serial(&device_id, presented)))
                    .await;
                if let Err(e) = recorded {
                    tracing::warn!("cannot record its certificate serial: {e}");
                }
                presented.clone()
            }
            _ => recorded_serial,
        };
        // Revocation is checked here, for every path: a gateway in front of the device may
        // not know the revocation list.
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&serial)
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%via, "its certificate (serial {serial}) is revoked");
            let _ = framed
                .send(refusal(
                    RefusalCode::NotAuthorized,
                    format!("the certificate of {device_id:?} is revoked"),
                ))
                .await;
            return None;
        }
        Some(DeviceContext {
            device_id,
            group,
            via,
            fleet_size,
        })
    }

    /// Answers the device's requests and forwards pushes until the connection ends.
    async fn serve_device(&self, mut framed: DeviceFramed, ctx: DeviceContext) {
        let device_id = ctx.device_id.clone();
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(16);
        // The connection a device syncs on is the one pushes go to; a device may hold others
        // (fetching chunks) that never see a push.
        let mut syncing = false;

        loop {
            let reply = tokio::select! {
                pushed = rx.recv() => match pushed {
                    Some(m) => m,
                    None => break,
                },
                incoming = framed.next() => match incoming {
                    Some(Ok(m)) => {
                        if !syncing && matches!(m, Message::SyncRequest(_)) {
                            syncing = true;
                            lock(&self.online)
                                .insert(device_id.clone(), (conn_id, tx.clone(), ctx.via.clone()));
                        }
                        match self.answer(&ctx, m).await {
                        Some(r) => r,
                        None => continue,
                        }
                    }
                    _ => break,
                },
            };
            let closing = matches!(reply, Message::Refusal(_));
            if framed.send(reply).await.is_err() || closing {
                break;
            }
        }
        let mut online = lock(&self.online);
        if online
            .get(&device_id)
            .is_some_and(|(id, _, _)| *id == conn_id)
        {
            online.remove(&device_id);
        }
    }
}

impl AdminService {
    /// The enrolled device whose certificate has this SHA-256: its id, group, certificate
    /// serial, and the fleet's size.
    pub(super) fn known(&self, sha256: &[u8; 32]) -> Option<(String, String, String, u64)> {
        let reg = lock(&self.registry);
        let fleet = reg.devices().len() as u64;
        reg.device_by_fingerprint(sha256).map(|(id, d)| {
            (
                id.to_string(),
                d.group.clone(),
                d.cert_serial.clone(),
                fleet,
            )
        })
    }

    /// The sync path of an authenticated connection, without the connection: the device
    /// found by its certificate's SHA-256, its last-seen time kept, the sync source's
    /// answer. `None` if no enrolled device has that certificate.
    pub fn sync_known(&self, sha256: &[u8; 32], req: &SyncRequest) -> Option<SyncResponse> {
        let (device_id, group, _, fleet_size) = self.known(sha256)?;
        let ctx = DeviceContext::new(device_id, group, Via::Direct, fleet_size);
        Some(self.answer_sync(&ctx, req))
    }

    pub(super) fn answer_sync(&self, ctx: &DeviceContext, r: &SyncRequest) -> SyncResponse {
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let disk = (r.free_disk_bytes > 0).then_some(r.free_disk_bytes);
        lock(&self.registry).touch(&ctx.device_id, now, disk);
        self.storage.touch(vec![(
            ctx.device_id.clone(),
            crate::registry::unix(now),
            disk,
        )]);
        self.sync.sync(ctx, r)
    }

    pub(super) async fn answer(&self, ctx: &DeviceContext, m: Message) -> Option<Message> {
        Some(match m {
            Message::RenewRequest(r) => match self.renew(&ctx.device_id, &r).await {
                Ok(resp) => Message::from(resp),
                Err(e) => refusal(refusal_code(&e), format!("no reserve certificate: {e}")),
            },
            Message::SyncRequest(r) => {
                if !r.device_id.is_empty() && r.device_id != ctx.device_id {
                    return Some(refusal(
                        RefusalCode::NotAuthorized,
                        format!(
                            "the certificate belongs to {:?}, not {:?}",
                            ctx.device_id, r.device_id
                        ),
                    ));
                }
                Message::from(self.answer_sync(ctx, &r))
            }
            Message::EventBatch(b) => {
                let up_to_id = b.events.iter().map(|e| e.id).max().unwrap_or(0);
                let n = b.events.len() as u64;
                let rows = b
                    .events
                    .iter()
                    .map(|e| EventRecord::from_agent(&ctx.device_id, e))
                    .collect();
                // Acknowledged only once stored: an agent keeps what is not acknowledged.
                if let Err(e) = self.storage.record_events(rows).await {
                    tracing::error!("events not stored: {e}");
                    return Some(refusal(
                        RefusalCode::Overloaded,
                        format!("events not stored; send them again later ({e})"),
                    ));
                }
                self.stats.events.fetch_add(n, Ordering::Relaxed);
                Message::from(EventAck { up_to_id })
            }
            Message::ChunkRequest(c) => {
                let len = c.length.min(self.config.max_chunk);
                match self.objects.read(&c.object_id, c.offset, len) {
                    Some((data, total)) => {
                        self.stats
                            .bytes_served
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        Message::from(ChunkResponse {
                            object_id: c.object_id,
                            offset: c.offset,
                            data,
                            total_size: total,
                        })
                    }
                    None => refusal(
                        RefusalCode::NotFound,
                        format!("no object {:?}", c.object_id),
                    ),
                }
            }
            Message::Keepalive(k) if !k.reply => Message::from(Keepalive {
                seq: k.seq,
                reply: true,
            }),
            Message::Keepalive(_) | Message::EventAck(_) => return None,
            other => refusal(
                RefusalCode::ProtocolViolation,
                format!("{} is not served here", other.message_type().name()),
            ),
        })
    }
}
