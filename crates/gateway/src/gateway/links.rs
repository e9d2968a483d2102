//! Data links to the server: the warm pools, the tickets that open a link on demand, and dialling the server from a remote office.

use super::*;

impl Shared {
    /// Every warm pool a device may be served from, the next signal session's first.
    pub(super) fn pools(&self) -> Vec<Arc<Parking>> {
        if let Some(p) = &self.remote_pool {
            return vec![p.clone()];
        }
        let sessions = lock(&self.sessions);
        let mut pools: Vec<Arc<Parking>> = sessions.values().map(|e| e.pool.clone()).collect();
        if !pools.is_empty() {
            let n = pools.len();
            pools.rotate_left(self.round_robin.load(Ordering::Relaxed) % n);
        }
        pools
    }

    /// Idle connections now and the largest high water of any pool, live or ended.
    pub(super) fn pool_sizes(&self) -> (usize, usize) {
        let mut idle = 0;
        let mut high = self.pool_high_water.load(Ordering::Relaxed);
        for p in self.pools() {
            let (i, h) = p.sizes();
            idle += i;
            high = high.max(h);
        }
        (idle, high)
    }

    /// A pooled connection for `peer`, found alive: `TunnelOpen` answered by `TunnelAccept`
    /// within the claim timeout. Dead ones are discarded and the next is tried; `Ok(None)`
    /// when none is idle. A refusal from the server is the device's answer.
    pub(super) async fn pooled_link(
        &self,
        pools: &[Arc<Parking>],
        peer: &DevicePeer,
    ) -> Result<Option<Link>, (RefusalCode, String)> {
        let limit = self.config.limits.pool_claim_timeout();
        for pool in pools {
            while let Some((mut link, lent)) = pool.take().await {
                match tokio::time::timeout(limit, self.open_relay(&mut link, peer, true)).await {
                    Ok(Ok(reuse)) => {
                        pool.claimed();
                        let pool = pool.clone();
                        return Ok(Some(if reuse {
                            Link::Pooled {
                                link: ChunkedLink::new(link),
                                pool,
                                lent,
                            }
                        } else {
                            Link::PooledRaw { link, pool, lent }
                        }));
                    }
                    Ok(Err(Opening::Refused(code, reason))) => {
                        pool.claimed();
                        pool.not_returned(lent);
                        return Err((code, reason));
                    }
                    Ok(Err(Opening::Broken(why))) => {
                        pool.discarded(lent);
                        tracing::debug!("a pooled connection was dead ({why}); trying another");
                    }
                    Err(_) => {
                        pool.discarded(lent);
                        tracing::debug!(
                            "a pooled connection did not answer within {} ms; trying another",
                            limit.as_millis()
                        );
                    }
                }
            }
        }
        Ok(None)
    }

    /// Opens a relayed stream for `peer` on `link` (a pooled connection, or a tunnel just
    /// dialled): `TunnelOpen`, answered by `TunnelAccept` or a `Refusal`. With `reuse` the
    /// stream is asked to go in chunks; `Ok(true)` if the server agreed.
    pub(super) async fn open_relay<S>(
        &self,
        link: &mut S,
        peer: &DevicePeer,
        reuse: bool,
    ) -> Result<bool, Opening>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let open = TunnelOpen {
            peer: Some(peer.to_wire()),
            gateway_id: self.config.gateway_id.clone(),
            reuse,
        };
        write_message(link, open)
            .await
            .map_err(|e| Opening::Broken(e.to_string()))?;
        match read_message(link, self.config.limits.max_frame_len).await {
            Ok(Message::TunnelAccept(a)) => Ok(reuse && a.reuse),
            Ok(Message::Refusal(r)) => Err(Opening::Refused(
                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                r.reason,
            )),
            Ok(other) => Err(Opening::Broken(format!(
                "the server answered TunnelOpen with {}",
                other.message_type().name()
            ))),
            Err(e) => Err(Opening::Broken(e.to_string())),
        }
    }

    pub(super) fn pick_session(&self) -> Option<(u64, mpsc::Sender<Message>, [u8; 32])> {
        let sessions = lock(&self.sessions);
        if sessions.is_empty() {
            return None;
        }
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % sessions.len();
        let (id, e) = sessions.iter().nth(i)?;
        Some((*id, e.tx.clone(), e.server))
    }

    pub(super) async fn request_data_link(
        &self,
        peer: &DevicePeer,
    ) -> Result<ServerLink, (RefusalCode, String)> {
        let Some((session, signal, server)) = self.pick_session() else {
            return Err((
                RefusalCode::ServerUnreachable,
                "no signal connection to the Administration Server is up".into(),
            ));
        };
        let Some(ticket) = random_u128() else {
            return Err((
                RefusalCode::Internal,
                "the random source failed; no ticket issued".into(),
            ));
        };
        let (tx, rx) = oneshot::channel();
        let wire_peer = peer.to_wire();
        let ttl = Duration::from_millis(self.config.limits.ticket_ttl_ms);
        let issued = lock(&self.tickets).issue(
            ticket,
            Binding { session, server },
            Instant::now(),
            Waiter::Device {
                tx,
                peer: wire_peer.clone(),
            },
        );
        match issued {
            Ok(_) => {}
            Err(IssueError::Full { max_pending }) => {
                return Err((
                    RefusalCode::Overloaded,
                    format!("{max_pending} devices already wait for the server"),
                ));
            }
            Err(_) => {
                return Err((RefusalCode::Internal, "ticket collision".into()));
            }
        }
        let request = ConnectRequest {
            ticket: Some(Ticket::from_u128(ticket)),
            peer: Some(wire_peer),
            expires_in_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        };
        if signal.try_send(request.into()).is_err() {
            lock(&self.tickets).cancel(ticket);
            return Err((
                RefusalCode::ServerUnreachable,
                "the signal connection is closing or congested".into(),
            ));
        }
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(Outcome::Link(link))) => Ok(*link),
            Ok(Ok(Outcome::Refused(code, reason))) => Err((code, reason)),
            Ok(Err(_)) => Err((
                RefusalCode::ServerUnreachable,
                "the signal connection closed".into(),
            )),
            Err(_) => {
                lock(&self.tickets).cancel(ticket);
                Err((
                    RefusalCode::ServerUnreachable,
                    format!(
                        "no data connection from the server within {} ms",
                        ttl.as_millis()
                    ),
                ))
            }
        }
    }

    /// Dials the server (remote-office mode): TCP and TLS, within the handshake timeout.
    pub(super) async fn dial_server(
        &self,
        ro: &RemoteOffice,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (RefusalCode, String)> {
        let unreachable = |e: String| (RefusalCode::ServerUnreachable, e);
        let dial = async {
            let tcp = TcpStream::connect(ro.addr)
                .await
                .map_err(|e| unreachable(format!("cannot connect to {}: {e}", ro.addr)))?;
            let _ = tcp.set_nodelay(true);
            let config = self.tls().tunnel.clone().ok_or_else(|| {
                (
                    RefusalCode::Internal,
                    "no tunnel configuration in remote-office mode".to_string(),
                )
            })?;
            TlsConnector::from(config)
                .connect(ro.name.clone(), tcp)
                .await
                .map_err(|e| unreachable(format!("TLS with {} failed: {e}", ro.addr)))
        };
        tokio::time::timeout(self.config.limits.handshake_timeout(), dial)
            .await
            .unwrap_or_else(|_| Err(unreachable("the server did not answer in time".into())))
    }

    /// A tunnel dialled for one device (remote-office mode, no pooled one idle).
    pub(super) async fn open_tunnel(
        &self,
        ro: &RemoteOffice,
        peer: &DevicePeer,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (RefusalCode, String)> {
        let open = async {
            let mut tls = self.dial_server(ro).await?;
            self.open_relay(&mut tls, peer, false)
                .await
                .map_err(Opening::into_refusal)?;
            Ok(tls)
        };
        let r = tokio::time::timeout(self.config.limits.handshake_timeout(), open)
            .await
            .unwrap_or_else(|_| {
                Err((
                    RefusalCode::ServerUnreachable,
                    "the server did not answer in time".into(),
                ))
            });
        if r.is_ok() {
            self.counters
                .data_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Keeps the remote-office pool full: dials the server whenever the pool wants more,
    /// parks each tunnel until a device takes it, and after a failed dial waits the jittered
    /// backoff before dialling again.
    pub(super) async fn keep_remote_pool(self: Arc<Self>, pool: Arc<Parking>) {
        if self.remote.is_none() {
            return;
        }
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
            outpost_wire::backoff::seed_for(&self.config.gateway_id),
        );
        let (done_tx, mut done_rx) = mpsc::channel::<bool>(64);
        let mut next_id: u128 = 0;
        let mut retry_at: Option<Instant> = None;
        let limit = self.config.limits.handshake_timeout();
        loop {
            let now = Instant::now();
            pool.with_book(|b| b.handle_timeout(now));
            if retry_at.is_some_and(|t| t <= now) {
                retry_at = None;
            }
            let waiting = retry_at.is_some();
            let wanted = if waiting {
                0
            } else {
                pool.with_book(|b| b.wanted())
            };
            for _ in 0..wanted {
                next_id += 1;
                let id = next_id;
                pool.with_book(|b| b.opening(id, now + limit + Duration::from_secs(1)));
                let (this, pool, done) = (self.clone(), pool.clone(), done_tx.clone());
                self.tracker.spawn(
                    async move {
                        let Some(ro) = this.remote.as_ref() else {
                            return;
                        };
                        let dialled = tokio::select! {
                            () = pool.closed.cancelled() => return,
                            r = this.dial_server(ro) => r,
                        };
                        match dialled {
                            Ok(tls) => {
                                this.counters
                                    .data_connections
                                    .fetch_add(1, Ordering::Relaxed);
                                let parked = Instant::now();
                                let taken = pool
                                    .park(id, Box::new(tls), this.config.limits.pool_idle())
                                    .await;
                                // A tunnel the server closes at once (it refuses this gateway,
                                // or is shutting down) is a failed dial: the next waits the
                                // backoff instead of redialling in a loop.
                                let held = taken || parked.elapsed() >= Duration::from_secs(1);
                                let _ = done.send(held).await;
                            }
                            Err((_, why)) => {
                                pool.with_book(|b| b.failed(id));
                                tracing::warn!("warm pool: {why}");
                                let _ = done.send(false).await;
                            }
                        }
                    }
                    .instrument(tracing::Span::current()),
                );
            }
            // The book's next deadline, or the end of the backoff, whichever comes first.
            let deadline = match (retry_at, pool.poll_timeout()) {
                (Some(r), Some(b)) => Some(r.min(b)),
                (r, b) => r.or(b),
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = pool.refill.notified() => {}
                () = sleep_until(deadline) => {}
                ok = done_rx.recv() => match ok {
                    Some(true) => backoff.reset(),
                    Some(false) => {
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                    None => return,
                },
            }
        }
    }
}
