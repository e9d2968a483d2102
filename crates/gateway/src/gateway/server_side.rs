//! Connections from the server: its signal session (tickets, pool grants, connect requests) and the data connections it opens.

use super::*;

impl Shared {
    pub(super) async fn serve_signal(&self, tls: ServerLink, addr: SocketAddr) {
        let Some(server) = cert_fingerprint(tls.get_ref().1.peer_certificates()) else {
            return;
        };
        let limits = &self.config.limits;
        let mut framed = Framed::new(tls, MessageCodec::with_max_frame_len(limits.max_frame_len));
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        tracing::Span::current().record("session", session);
        let mut sig = SignalSession::gateway(
            &self.config.gateway_id,
            session,
            limits.handshake_timeout(),
            Duration::from_millis(limits.signal_dead_after_ms),
            Instant::now(),
        );
        let (tx, mut rx) = mpsc::channel(limits.max_pending.clamp(16, 4096));
        let write_limit = limits.handshake_timeout();
        let mut registered = false;
        let mut just_up = false;
        // The session's warm pool: sized once the server's hello says what it wants.
        let pool = Arc::new(Parking::new(
            0,
            limits.pool_reuse_grace(),
            self.shutdown.child_token(),
            self.pool_counters.clone(),
        ));
        let _close_pool = pool.closed.clone().drop_guard();
        let binding = Binding { session, server };
        let why = 'session: loop {
            // The pool tickets the session's pool wants, sent with the rest.
            if registered {
                self.grant_pool(&mut sig, &pool, binding);
            }
            if let Err(why) = self.flush_signal(&mut sig, &mut framed, write_limit).await {
                break 'session why;
            }
            while let Some(event) = sig.poll_event() {
                match event {
                    SignalEvent::Up { peer_id, .. } => {
                        let target = (sig.pool_size() as usize).min(limits.max_pooled);
                        pool.with_book(|b| b.set_target(target));
                        lock(&self.sessions).insert(
                            session,
                            SignalEntry {
                                tx: tx.clone(),
                                server,
                                pool: pool.clone(),
                            },
                        );
                        registered = true;
                        just_up = true;
                        self.counters
                            .signal_sessions_total
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "signal connection {session} from server {peer_id:?} at {addr} is up"
                        );
                    }
                    SignalEvent::ConnectRefusal(r) => {
                        let waiter = r
                            .ticket
                            .and_then(|t| lock(&self.tickets).cancel(t.as_u128()));
                        if let Some(Waiter::Device { tx, .. }) = waiter {
                            let code =
                                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified);
                            let _ = tx.send(Outcome::Refused(code, r.reason));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(end) = sig.end() {
                break end.to_string();
            }
            if std::mem::take(&mut just_up) {
                // Round again: the pool's first tickets go out now.
                continue;
            }
            let deadline = match (sig.poll_timeout(), pool.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                () = self.hard_stop.cancelled() => break "hard stop".to_string(),
                () = self.shutdown.cancelled() => sig.shut_down(),
                () = pool.refill.notified() => {}
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    sig.handle_timeout(now);
                    let late = pool.with_book(|b| b.handle_timeout(now));
                    let mut tickets = lock(&self.tickets);
                    for t in late {
                        tickets.cancel(t);
                    }
                }
                m = framed.next() => match m {
                    None => sig.handle_closed("closed by the server"),
                    Some(Err(e)) => sig.handle_closed(e.to_string()),
                    Some(Ok(m)) => sig.handle(Instant::now(), m),
                },
                out = rx.recv() => match out {
                    Some(Message::ConnectRequest(r)) => sig.request_connection(r),
                    Some(_) => {}
                    None => break "channel closed".into(),
                },
            }
        };
        if !registered {
            tracing::warn!("signal connection from {addr} ended before it was up: {why}");
        }
        // Order matters: stop new requests reaching this session, then fail those pending.
        drop(rx);
        self.end_signal(session, &pool);
        if registered {
            tracing::info!("signal connection {session} ended: {why}");
        }
    }

    /// Sends what the session has to say, each write bounded (a server that stops reading
    /// must not hold the session past its deadlines); a goodbye gets a second. `Err` with
    /// the reason when the session is over.
    async fn flush_signal(
        &self,
        sig: &mut SignalSession,
        framed: &mut Framed<ServerLink, MessageCodec>,
        write_limit: Duration,
    ) -> Result<(), String> {
        while let Some(m) = sig.poll_transmit() {
            let ty = m.message_type().name();
            let limit = if sig.end().is_some() {
                Duration::from_secs(1)
            } else {
                write_limit
            };
            let until = sig
                .poll_timeout()
                .map_or(Instant::now() + limit, |t| t.min(Instant::now() + limit));
            tokio::select! {
                () = self.hard_stop.cancelled() => return Err("hard stop".to_string()),
                r = tokio::time::timeout_at(until.into(), framed.send(m)) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("writing {ty} failed: {e}")),
                    Err(_) if sig.end().is_some() => return Ok(()),
                    Err(_) => {
                        sig.handle_timeout(Instant::now());
                        if sig.end().is_none() {
                            return Err(format!(
                                "the server did not take {ty} within {} ms",
                                limit.as_millis()
                            ));
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// Forgets an ended session: devices waiting on its tickets are refused, its pool's
    /// high water kept.
    fn end_signal(&self, session: u64, pool: &Parking) {
        lock(&self.sessions).remove(&session);
        let orphans = lock(&self.tickets).drop_session(session);
        for (_, w) in orphans {
            if let Waiter::Device { tx, .. } = w {
                let _ = tx.send(Outcome::Refused(
                    RefusalCode::ServerUnreachable,
                    "the signal connection to the server was lost".into(),
                ));
            }
        }
        // Its parked connections close with it (the guard), and its high water is kept.
        self.pool_high_water
            .fetch_max(pool.sizes().1, Ordering::Relaxed);
    }

    /// Grants the server the pool tickets its session's pool wants now.
    pub(super) fn grant_pool(&self, sig: &mut SignalSession, pool: &Parking, binding: Binding) {
        let wanted = pool.with_book(|b| b.wanted());
        if wanted == 0 {
            return;
        }
        let now = Instant::now();
        let mut granted = Vec::with_capacity(wanted);
        let ttl = {
            let mut tickets = lock(&self.tickets);
            for _ in 0..wanted {
                let Some(value) = random_u128() else { break };
                match tickets.issue(value, binding, now, Waiter::Pool) {
                    Ok(expires) => {
                        pool.with_book(|b| b.opening(value, expires));
                        granted.push(Ticket::from_u128(value));
                    }
                    // Devices waiting come first: the pool waits for room.
                    Err(_) => break,
                }
            }
            tickets.ttl()
        };
        if granted.is_empty() {
            return;
        }
        sig.grant_pool(PoolTickets {
            tickets: granted,
            expires_in_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        });
    }

    pub(super) async fn serve_data(&self, mut tls: ServerLink, addr: SocketAddr) {
        let Some(server) = cert_fingerprint(tls.get_ref().1.peer_certificates()) else {
            return;
        };
        let limits = &self.config.limits;
        let first = tokio::time::timeout(
            limits.handshake_timeout(),
            read_message(&mut tls, limits.max_frame_len),
        )
        .await;
        let (ticket, session) = match first {
            Ok(Ok(Message::DataAttach(d))) => match d.ticket {
                Some(t) => (t, d.session_id),
                None => return,
            },
            _ => {
                tracing::warn!("{addr} opened a data connection without DataAttach");
                return;
            }
        };
        let redeemed = lock(&self.tickets).redeem(
            ticket.as_u128(),
            Binding { session, server },
            Instant::now(),
        );
        match redeemed {
            Ok(Waiter::Pool) => {
                // A warm-pool connection: parked (its task is this one) until a device takes
                // it; nothing is answered until then.
                let pool = lock(&self.sessions).get(&session).map(|e| e.pool.clone());
                if let Some(pool) = pool {
                    self.counters
                        .data_connections
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = pool.park(ticket.as_u128(), Box::new(tls), limits.pool_idle()) => {}
                        () = self.hard_stop.cancelled() => {}
                    }
                }
            }
            Ok(Waiter::Device { tx, peer }) => {
                let ack = DataAttachAck {
                    ticket: Some(ticket),
                    peer: Some(peer),
                };
                let written = tokio::select! {
                    () = self.hard_stop.cancelled() => false,
                    r = tokio::time::timeout(limits.handshake_timeout(), write_message(&mut tls, ack)) => {
                        matches!(r, Ok(Ok(())))
                    }
                };
                if !written {
                    let _ = tx.send(Outcome::Refused(
                        RefusalCode::ServerUnreachable,
                        "the data connection failed".into(),
                    ));
                    return;
                }
                self.counters
                    .data_connections
                    .fetch_add(1, Ordering::Relaxed);
                // If the device gave up meanwhile, the link is dropped (closed) here.
                let _ = tx.send(Outcome::Link(Box::new(tls)));
            }
            Err(why) => {
                tracing::warn!("refused ticket from {addr}: {why:?}");
                let refusal = Refusal {
                    code: RefusalCode::BadTicket as i32,
                    reason: format!("ticket refused: {why:?}"),
                };
                let _ = tokio::time::timeout(limits.handshake_timeout(), async {
                    write_message(&mut tls, refusal).await?;
                    tls.shutdown().await?;
                    Ok::<(), GatewayError>(())
                })
                .await;
            }
        }
    }
}
