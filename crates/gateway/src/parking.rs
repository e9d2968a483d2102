//! The tokio side of a warm pool ([`PoolBook`] counts): idle connections, each watched by its
//! own task while it waits, lent to devices and given back when their stream ends cleanly.
//!
//! A parked connection's task reads from it: the peer sends nothing on an idle pooled
//! connection, so end of stream, an error or any byte means it is gone, and it leaves the
//! pool at once (and a replacement is asked for). A connection also leaves after its idle
//! limit, so middleboxes that forget quiet connections never hold the pool's only ones. A
//! connection that died without a sign (no FIN, no RST) is caught by the caller's check when
//! it is taken: `TunnelOpen` must be answered within the claim timeout.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::peer::BoxStream;
use crate::pool::PoolBook;

/// Counters of every pool of a gateway together.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    /// Connections that arrived and were parked.
    pub parked: AtomicU64,
    /// Connections taken by devices (and found alive).
    pub claimed: AtomicU64,
    /// Idle connections that left: closed by the peer, broken, or past their idle limit.
    pub lost: AtomicU64,
    /// Connections taken but found dead (no answer to `TunnelOpen` in time, or an error).
    pub discarded: AtomicU64,
    /// Connections given back after a device's stream ended cleanly, and parked again.
    pub reused: AtomicU64,
}

type Claim = oneshot::Sender<BoxStream>;

struct Slot {
    id: u128,
    claim: oneshot::Sender<Claim>,
}

struct State {
    book: PoolBook,
    idle: VecDeque<Slot>,
    /// Slot numbers of connections given back (tickets and dials number the others).
    next_returned: u128,
}

/// One warm pool: the book, its idle connections, and a wake-up for whoever refills it.
pub(crate) struct Parking {
    state: Mutex<State>,
    /// How long a lent connection is expected back before it is replaced.
    grace: Duration,
    /// Notified whenever the pool may want more connections.
    pub refill: Notify,
    /// Cancelled when the pool ends (its signal session, the gateway): every parked
    /// connection is closed.
    pub closed: CancellationToken,
    counters: Arc<PoolCounters>,
}

/// A connection lent to a device: give it back with [`Parking::give_back`] or say it is gone
/// with [`Parking::not_returned`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lent(u64);

impl Parking {
    pub fn new(
        target: usize,
        grace: Duration,
        closed: CancellationToken,
        counters: Arc<PoolCounters>,
    ) -> Self {
        Parking {
            state: Mutex::new(State {
                book: PoolBook::new(target),
                idle: VecDeque::new(),
                next_returned: 1 << 127,
            }),
            grace,
            refill: Notify::new(),
            closed,
            counters,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the book (to set the target, note openings, handle its timer).
    pub fn with_book<T>(&self, f: impl FnOnce(&mut PoolBook) -> T) -> T {
        f(&mut self.state().book)
    }

    /// Parks `stream`, the arrival of opening `id`, until a device takes it or it is lost
    /// (this is the connection's task); `true` if a device took it. A stream that is not an
    /// opening under way is closed.
    pub async fn park(&self, id: u128, stream: BoxStream, idle_limit: Duration) -> bool {
        if !self.state().book.arrived(id) {
            return false;
        }
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        self.wait_idle(id, stream, idle_limit).await
    }

    /// Gives back a lent connection whose device stream ended cleanly, and parks it again
    /// (this is its task) if the pool takes it; `true` if a device took it again.
    pub async fn give_back(&self, lent: Lent, stream: BoxStream, idle_limit: Duration) -> bool {
        let id = {
            let mut st = self.state();
            if !st.book.returned(lent.0) {
                return false;
            }
            st.next_returned += 1;
            st.next_returned
        };
        self.counters.reused.fetch_add(1, Ordering::Relaxed);
        self.wait_idle(id, stream, idle_limit).await
    }

    async fn wait_idle(&self, id: u128, mut stream: BoxStream, idle_limit: Duration) -> bool {
        let (claim_tx, claim_rx) = oneshot::channel::<Claim>();
        self.state().idle.push_back(Slot {
            id,
            claim: claim_tx,
        });
        let mut probe = [0u8; 1];
        let claimed = tokio::select! {
            claim = claim_rx => claim.ok(),
            // Nothing may arrive on an idle pooled connection: whatever does ends it.
            _ = stream.read(&mut probe) => None,
            () = tokio::time::sleep(idle_limit) => None,
            () = self.closed.cancelled() => None,
        };
        if let Some(reply) = claimed {
            // Taken: the taker has already removed it from the pool.
            return reply.send(stream).is_ok();
        }
        let mut st = self.state();
        if let Some(i) = st.idle.iter().position(|s| s.id == id) {
            st.idle.remove(i);
            st.book.taken();
            drop(st);
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            self.refill.notify_one();
        }
        false
    }

    /// Lends the most recently parked idle connection, if any (the newest is the likeliest
    /// alive; the oldest age out).
    pub async fn take(&self) -> Option<(BoxStream, Lent)> {
        loop {
            let (slot, lent) = {
                let mut st = self.state();
                let slot = st.idle.pop_back()?;
                let lent = st.book.lend(Instant::now(), self.grace);
                (slot, Lent(lent))
            };
            let (tx, rx) = oneshot::channel();
            if slot.claim.send(tx).is_ok()
                && let Ok(stream) = rx.await
            {
                return Some((stream, lent));
            }
            // It left as it was taken.
            self.not_returned(lent);
        }
    }

    /// A lent connection will not come back: a replacement is asked for.
    pub fn not_returned(&self, lent: Lent) {
        self.state().book.not_returned(lent.0);
        self.refill.notify_one();
    }

    /// Counts a connection taken and found alive.
    pub fn claimed(&self) {
        self.counters.claimed.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection taken and found dead: counted, and not coming back.
    pub fn discarded(&self, lent: Lent) {
        self.counters.discarded.fetch_add(1, Ordering::Relaxed);
        self.not_returned(lent);
    }

    /// Idle connections now, and the most connections opening, idle and lent together so
    /// far.
    pub fn sizes(&self) -> (usize, usize) {
        let st = self.state();
        (st.book.idle(), st.book.high_water())
    }

    /// The book's next deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.state().book.poll_timeout()
    }
}
