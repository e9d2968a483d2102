//! Serving devices: the TLS handshake on each device port, then relaying each to the server.

use super::*;

impl Shared {
    pub(super) async fn handle_main(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        handshake: Admission,
    ) {
        let deadline = self.handshake_deadline();
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(s)) => s,
            _ => {
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let alpn = offered_alpn(&start);
        let wants = |p: &[u8]| alpn.iter().any(|a| a == p);
        let dmz = self.config.mode.is_dmz();
        let tls = self.tls();
        if dmz && wants(ALPN_SIGNAL) {
            let cfg = tls.signal.clone();
            let tls = self
                .finish_handshake(start.into_stream(cfg), deadline)
                .await;
            drop(handshake);
            if let Some(tls) = tls {
                self.serve_signal(tls, addr).await;
            }
        } else if dmz && wants(ALPN_DATA) {
            let cfg = tls.data.clone();
            let tls = self
                .finish_handshake(start.into_stream(cfg), deadline)
                .await;
            drop(handshake);
            if let Some(tls) = tls {
                self.serve_data(tls, addr).await;
            }
        } else {
            let accept = start.into_stream(tls.agent.clone());
            let link = self
                .device_handshake(accept, deadline, addr, ChannelKind::Agent)
                .await;
            drop(handshake);
            // Authenticated: only now does the device take a slot.
            let (Some((tls, peer)), Some(permit)) = (link, self.device_slot()) else {
                return;
            };
            self.relay_device(tls, peer, permit, true, BytesMut::new())
                .await;
        }
    }

    /// Completes a device's TLS handshake and names the device by its certificate.
    pub(super) async fn device_handshake(
        &self,
        accept: tokio_rustls::Accept<TcpStream>,
        deadline: tokio::time::Instant,
        addr: SocketAddr,
        channel: ChannelKind,
    ) -> Option<(BoxStream, DevicePeer)> {
        let tls = self.finish_handshake(accept, deadline).await?;
        let peer = DevicePeer::from_certificates(
            tls.get_ref().1.peer_certificates(),
            addr.to_string(),
            channel,
        );
        Some((Box::new(tls), peer))
    }

    pub(super) async fn finish_handshake(
        &self,
        accept: tokio_rustls::Accept<TcpStream>,
        deadline: tokio::time::Instant,
    ) -> Option<ServerLink> {
        let why = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::debug!("TLS handshake failed: {why}");
        self.counters
            .handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(super) async fn handle_device_port(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        port: DevicePort,
        handshake: Admission,
    ) {
        let deadline = self.handshake_deadline();
        let tls = self.tls();
        let (channel, cfg) = match port {
            DevicePort::Mobile => (ChannelKind::Mobile, tls.mobile.clone()),
            DevicePort::MobileUnauthenticated => (
                ChannelKind::MobileUnauthenticated,
                tls.mobile_unauthenticated.clone(),
            ),
            DevicePort::WebConsole => {
                return self
                    .handle_web_console(tcp, addr, handshake, deadline)
                    .await;
            }
        };
        let Some(cfg) = cfg else {
            return;
        };
        let accept = TlsAcceptor::from(cfg).accept(tcp);
        let link = self.device_handshake(accept, deadline, addr, channel).await;
        // Authenticated by now (on the port without client authentication nobody is, so
        // such a peer keeps its handshake place, bounded per source, for as long as it is
        // relayed); only now does the device take a slot.
        let unknown = (channel == ChannelKind::MobileUnauthenticated).then_some(handshake);
        let (Some((stream, peer)), Some(permit)) = (link, self.device_slot()) else {
            return;
        };
        self.relay_device(stream, peer, (permit, unknown), true, BytesMut::new())
            .await;
    }

    /// A Web Console client: nothing is opened toward the server until it has sent its first
    /// bytes, which must come before `deadline`; then it takes a tunnel place (bounded in
    /// all and per source) and those bytes go first through the tunnel.
    pub(super) async fn handle_web_console(
        &self,
        mut tcp: TcpStream,
        addr: SocketAddr,
        handshake: Admission,
        deadline: tokio::time::Instant,
    ) {
        let mut first = BytesMut::with_capacity(self.config.limits.relay_buffer.min(16 * 1024));
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                self.counters
                    .consoles_silent
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        drop(handshake);
        let permit = match self.console_tunnels.try_admit(addr.ip()) {
            Ok(p) => p,
            Err(_) => {
                self.counters
                    .refused_consoles
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let peer = DevicePeer::anonymous(addr.to_string(), ChannelKind::WebConsole);
        self.relay_device(Box::new(tcp), peer, permit, false, first)
            .await;
    }

    /// Relays an admitted device to the server; `first` (what a Web Console client sent
    /// before its tunnel was opened) goes to the server first. `place` (a device slot or a
    /// tunnel place) is held until the relay ends.
    pub(super) async fn relay_device<P>(
        &self,
        mut device: BoxStream,
        peer: DevicePeer,
        place: P,
        speaks_wire: bool,
        first: BytesMut,
    ) {
        self.counters
            .devices_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.counters.devices_active.fetch_add(1, Ordering::Relaxed);
        // A warm connection if one is idle (checked alive first), else one opened for this
        // device.
        let pools = self.pools();
        let link: Result<Link, (RefusalCode, String)> = match self.pooled_link(&pools, &peer).await
        {
            Err(refused) => Err(refused),
            Ok(Some(pooled)) => Ok(pooled),
            Ok(None) => match &self.remote {
                None => self
                    .request_data_link(&peer)
                    .await
                    .map(|l| Link::Raw(Box::new(l))),
                Some(ro) => self
                    .open_tunnel(ro, &peer)
                    .await
                    .map(|l| Link::Raw(Box::new(l))),
            },
        };
        let link = match link {
            Ok(mut link) if !first.is_empty() => {
                let limit = self.config.limits.handshake_timeout();
                match tokio::time::timeout(limit, link.write_all(&first)).await {
                    Ok(Ok(())) => Ok(link),
                    _ => {
                        link.gone();
                        Err((
                            RefusalCode::ServerUnreachable,
                            "the tunnel did not take the client's first bytes".to_string(),
                        ))
                    }
                }
            }
            other => other,
        };
        // A pooled connection whose stream ended in chunks is given back after the relay.
        let mut give_back = None;
        match link {
            Ok(Link::Raw(link)) => self.relay(device, link).await,
            Ok(Link::Pooled {
                mut link,
                pool,
                lent,
            }) => {
                self.relay(device, &mut link).await;
                give_back = Some((link, pool, lent));
            }
            Ok(Link::PooledRaw { link, pool, lent }) => {
                self.relay(device, link).await;
                pool.not_returned(lent);
            }
            Err((code, reason)) => {
                match code {
                    RefusalCode::Overloaded => &self.counters.refused_overloaded,
                    _ => &self.counters.refused_unreachable,
                }
                .fetch_add(1, Ordering::Relaxed);
                tracing::info!("refusing {} ({}): {reason}", peer.remote_addr, peer.subject);
                if speaks_wire {
                    let refusal = Refusal {
                        code: code as i32,
                        reason,
                    };
                    let write = async {
                        write_message(&mut device, refusal).await?;
                        device.shutdown().await?;
                        Ok::<(), GatewayError>(())
                    };
                    let _ =
                        tokio::time::timeout(self.config.limits.handshake_timeout(), write).await;
                }
            }
        }
        drop(place);
        self.counters.devices_active.fetch_sub(1, Ordering::Relaxed);
        let Some((mut link, pool, lent)) = give_back else {
            return;
        };
        // However the device left (many close without a TLS close_notify), the connection
        // is reusable once both its directions have ended; this task then watches it idle.
        if link
            .settle(self.config.limits.pool_claim_timeout(), MAX_DRAIN)
            .await
        {
            let idle = self.config.limits.pool_idle();
            tokio::select! {
                _ = pool.give_back(lent, link.into_inner(), idle) => {}
                () = self.hard_stop.cancelled() => {}
            }
        } else {
            pool.not_returned(lent);
        }
    }

    /// Relays until both sides are done, counting how it ended.
    pub(super) async fn relay<L>(&self, device: BoxStream, link: L)
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let limits = &self.config.limits;
        let relay = splice(
            device,
            link,
            limits.relay_buffer,
            limits.idle_timeout(),
            Some(self.relayed.clone()),
        );
        tokio::select! {
            r = relay => match r {
                Ok(_) => { self.counters.relays_finished.fetch_add(1, Ordering::Relaxed); }
                Err(e) => {
                    tracing::debug!("relay ended: {e}");
                    self.counters.relay_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            () = self.hard_stop.cancelled() => {
                self.counters.relay_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
