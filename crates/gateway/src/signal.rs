//! The signal session between the server and a DMZ gateway, as one sans-IO state machine
//! driven by both sides: the server dials and says `SignalHello`, the gateway answers
//! `SignalHelloAck` with a session id; then keepalives (the server sends one every interval,
//! either side answers the other's), connect requests from the gateway, refusals of them from
//! the server, tickets for the server's warm pool (asked for in the hello, granted by the
//! gateway with `PoolTickets`), and a `Refusal` when the gateway shuts down.
//!
//! Feed it what arrived ([`SignalSession::handle`]) and the time; send what
//! [`SignalSession::poll_transmit`] gives; act on [`SignalSession::poll_event`]; call
//! [`SignalSession::handle_timeout`] at [`SignalSession::poll_timeout`]. Once
//! [`SignalSession::end`] says why, the connection is closed.
//!
//! Deadline rules, the same for both sides: only what arrives from the peer moves the
//! silence deadline (writes do not); the server calls the gateway dead after three keepalive
//! intervals of silence, and gives its `SignalHelloAck` as long; the gateway waits its
//! handshake time for the `SignalHello`, then calls the server dead after three of the
//! intervals the server announced (never less than its own floor).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_gateway::signal::{End, Event, SignalSession};
//! let t0 = Instant::now();
//! let ka = Duration::from_millis(100);
//! let mut server = SignalSession::server("server-1", ka, 0, t0);
//! let mut gateway = SignalSession::gateway("gw-1", 7, Duration::from_secs(5), Duration::ZERO, t0);
//! // Carry what each says to the other.
//! while let Some(m) = server.poll_transmit() { gateway.handle(t0, m); }
//! while let Some(m) = gateway.poll_transmit() { server.handle(t0, m); }
//! assert!(matches!(server.poll_event(), Some(Event::Up { session_id: 7, .. })));
//! // Nothing more from the gateway: dead after three intervals.
//! server.handle_timeout(t0 + ka * 3 + Duration::from_millis(1));
//! assert!(matches!(server.end(), Some(End::Silent { .. })));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use outpost_wire::Message;
use outpost_wire::messages::{
    ConnectRefusal, ConnectRequest, Keepalive, PoolTickets, Refusal, RefusalCode, SignalHello,
    SignalHelloAck,
};

/// Why a signal session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// Nothing arrived from the peer for this long.
    Silent {
        /// The silence allowed.
        after: Duration,
    },
    /// The handshake's answer did not come in time.
    NoHandshake {
        /// What was waited for.
        waiting_for: &'static str,
        /// For how long.
        after: Duration,
    },
    /// The peer refused the session, or is shutting down.
    Refused {
        /// Its code.
        code: RefusalCode,
        /// Its reason.
        reason: String,
    },
    /// The peer sent a message that has no place here.
    Unexpected {
        /// The message's name.
        message: &'static str,
    },
    /// The connection closed or broke.
    Closed {
        /// What the transport said.
        reason: String,
    },
    /// This side shut the session down.
    ShutDown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Silent { after } => {
                write!(f, "nothing from the peer for {} ms", after.as_millis())
            }
            End::NoHandshake { waiting_for, after } => {
                write!(f, "no {waiting_for} within {} ms", after.as_millis())
            }
            End::Refused { code, reason } => write!(f, "refused ({code:?}): {reason}"),
            End::Unexpected { message } => {
                write!(f, "unexpected {message} on the signal connection")
            }
            End::Closed { reason } => write!(f, "connection closed: {reason}"),
            End::ShutDown => f.write_str("shut down"),
        }
    }
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake is done.
    Up {
        /// The session's id (the gateway's number for it).
        session_id: u64,
        /// The peer's id: the gateway's on the server side, the server's on the gateway's.
        peer_id: String,
    },
    /// (Server side) the gateway asks for a data connection.
    ConnectRequest(ConnectRequest),
    /// (Gateway side) the server will not open the data connection asked for.
    ConnectRefusal(ConnectRefusal),
    /// (Server side) tickets for warm-pool data connections.
    PoolTickets(PoolTickets),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Server: hello sent, waiting for the ack. Gateway: waiting for the hello.
    Handshake,
    Up,
    Ended,
}

/// One signal session, either side.
#[derive(Debug)]
pub struct SignalSession {
    side: Side,
    phase: Phase,
    /// This side's id (server id or gateway id).
    own_id: String,
    /// Gateway side: the id this session gets.
    session_id: u64,
    /// Server side: the keepalive interval; gateway side: the server's, once announced.
    keepalive: Duration,
    /// Server side: the warm pool asked for; gateway side: what the server asked, once
    /// announced.
    pool_size: u32,
    /// Silence allowed once up.
    dead_after: Duration,
    /// Gateway side: the least silence allowed, whatever the server announces.
    dead_floor: Duration,
    /// The handshake's deadline.
    handshake_until: Instant,
    handshake_limit: Duration,
    last_heard: Instant,
    next_keepalive: Option<Instant>,
    seq: u64,
    transmit: VecDeque<Message>,
    events: VecDeque<Event>,
    end: Option<End>,
}

impl SignalSession {
    /// The server's side, which has just connected at `now`: it says `SignalHello` with its
    /// id, keepalive interval and the warm pool it wants (`pool_size` idle data connections;
    /// 0: none), and waits three intervals for the ack.
    pub fn server(server_id: &str, keepalive: Duration, pool_size: u32, now: Instant) -> Self {
        let dead_after = keepalive * 3;
        let mut s = SignalSession {
            side: Side::Server,
            phase: Phase::Handshake,
            own_id: server_id.into(),
            session_id: 0,
            keepalive,
            pool_size,
            dead_after,
            dead_floor: Duration::ZERO,
            handshake_until: now + dead_after,
            handshake_limit: dead_after,
            last_heard: now,
            next_keepalive: None,
            seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            end: None,
        };
        s.transmit.push_back(Message::from(SignalHello {
            server_id: server_id.into(),
            keepalive_ms: u32::try_from(keepalive.as_millis()).unwrap_or(u32::MAX),
            pool_size,
        }));
        s
    }

    /// The gateway's side of a connection the server opened at `now`: it waits
    /// `handshake` for the `SignalHello`, answers with `session_id`, and from then calls the
    /// server dead after three of its announced intervals (at least `dead_floor`).
    pub fn gateway(
        gateway_id: &str,
        session_id: u64,
        handshake: Duration,
        dead_floor: Duration,
        now: Instant,
    ) -> Self {
        SignalSession {
            side: Side::Gateway,
            phase: Phase::Handshake,
            own_id: gateway_id.into(),
            session_id,
            keepalive: Duration::ZERO,
            pool_size: 0,
            dead_after: dead_floor,
            dead_floor,
            handshake_until: now + handshake,
            handshake_limit: handshake,
            last_heard: now,
            next_keepalive: None,
            seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            end: None,
        }
    }

    /// Why the session ended, once it has: the driver closes the connection.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Whether the handshake is done and the session not ended.
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// The warm pool asked for: on the server side what it asks, on the gateway side what
    /// the server asked in its hello (0 before it).
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// The silence allowed from the peer now.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next event for the driver, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (`None` once ended).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Ended => None,
            Phase::Handshake => Some(self.handshake_until),
            Phase::Up => {
                let dead = self.last_heard + self.dead_after;
                Some(self.next_keepalive.map_or(dead, |k| k.min(dead)))
            }
        }
    }

    /// Handles the timers due at `now`: the handshake's and the silence deadline, and the
    /// server's keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Ended => {}
            Phase::Handshake => {
                if now >= self.handshake_until {
                    let waiting_for = match self.side {
                        Side::Server => "SignalHelloAck",
                        Side::Gateway => "SignalHello",
                    };
                    self.finish(End::NoHandshake {
                        waiting_for,
                        after: self.handshake_limit,
                    });
                }
            }
            Phase::Up => {
                if now >= self.last_heard + self.dead_after {
                    self.finish(End::Silent {
                        after: self.dead_after,
                    });
                    return;
                }
                if let Some(k) = self.next_keepalive
                    && now >= k
                {
                    self.seq += 1;
                    self.transmit.push_back(Message::from(Keepalive {
                        seq: self.seq,
                        reply: false,
                    }));
                    self.next_keepalive = Some(now + self.keepalive);
                }
            }
        }
    }

    /// Handles a message from the peer, arrived at `now`.
    pub fn handle(&mut self, now: Instant, m: Message) {
        if self.phase == Phase::Ended {
            return;
        }
        self.last_heard = now;
        match (self.side, self.phase, m) {
            (Side::Server, Phase::Handshake, Message::SignalHelloAck(a)) => {
                self.phase = Phase::Up;
                self.next_keepalive = Some(now + self.keepalive);
                self.events.push_back(Event::Up {
                    session_id: a.session_id,
                    peer_id: a.gateway_id,
                });
            }
            (Side::Gateway, Phase::Handshake, Message::SignalHello(h)) => {
                self.keepalive = Duration::from_millis(u64::from(h.keepalive_ms));
                self.pool_size = h.pool_size;
                self.dead_after = self.dead_floor.max(self.keepalive * 3);
                self.phase = Phase::Up;
                self.transmit.push_back(Message::from(SignalHelloAck {
                    gateway_id: self.own_id.clone(),
                    session_id: self.session_id,
                }));
                self.events.push_back(Event::Up {
                    session_id: self.session_id,
                    peer_id: h.server_id,
                });
            }
            (_, _, Message::Refusal(r)) => self.finish(End::Refused {
                code: RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                reason: r.reason,
            }),
            (_, Phase::Up, Message::Keepalive(k)) => {
                if !k.reply {
                    self.transmit.push_back(Message::from(Keepalive {
                        seq: k.seq,
                        reply: true,
                    }));
                }
            }
            (Side::Server, Phase::Up, Message::ConnectRequest(r)) => {
                self.events.push_back(Event::ConnectRequest(r));
            }
            (Side::Gateway, Phase::Up, Message::ConnectRefusal(r)) => {
                self.events.push_back(Event::ConnectRefusal(r));
            }
            (Side::Server, Phase::Up, Message::PoolTickets(t)) => {
                self.events.push_back(Event::PoolTickets(t));
            }
            (_, _, other) => self.finish(End::Unexpected {
                message: other.message_type().name(),
            }),
        }
    }

    /// The connection closed or broke (a read error, the end of the stream).
    pub fn handle_closed(&mut self, reason: impl Into<String>) {
        if self.phase != Phase::Ended {
            self.finish(End::Closed {
                reason: reason.into(),
            });
        }
    }

    /// (Gateway side) asks the server for a data connection.
    pub fn request_connection(&mut self, req: ConnectRequest) {
        if self.phase == Phase::Up {
            self.transmit.push_back(Message::from(req));
        }
    }

    /// (Gateway side) grants the server tickets for warm-pool data connections.
    pub fn grant_pool(&mut self, tickets: PoolTickets) {
        if self.phase == Phase::Up && self.side == Side::Gateway {
            self.transmit.push_back(Message::from(tickets));
        }
    }

    /// (Server side) tells the gateway a data connection will not be opened.
    pub fn refuse_connection(&mut self, refusal: ConnectRefusal) {
        if self.phase == Phase::Up {
            self.transmit.push_back(Message::from(refusal));
        }
    }

    /// Shuts the session down: the gateway says so first (`Refusal` `ShuttingDown`, to be
    /// sent before closing); the server just closes.
    pub fn shut_down(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.side == Side::Gateway {
            self.transmit.push_back(Message::from(Refusal {
                code: RefusalCode::ShuttingDown as i32,
                reason: "gateway shutting down".into(),
            }));
        }
        self.finish(End::ShutDown);
    }

    fn finish(&mut self, end: End) {
        self.phase = Phase::Ended;
        self.next_keepalive = None;
        self.end = Some(end);
    }
}
