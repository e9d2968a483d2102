//! Relaying bytes between two streams both ways, with backpressure (a fixed buffer per
//! direction: a slow side slows the other), half-close propagated (end of stream on one side
//! shuts down the writing half of the other), errors propagated (either side failing closes
//! both), and an idle timeout (no traffic either way for that long closes both).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes carried by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Per-relay counters shared with whoever wants to watch progress.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Bytes from the first stream to the second.
    pub a_to_b: AtomicU64,
    /// Bytes from the second stream to the first.
    pub b_to_a: AtomicU64,
}

/// A stream that counts the bytes read from it into two counters and bumps an activity
/// counter, so the relay can report progress and notice idleness without a lock.
struct Counted<'a, S> {
    inner: S,
    counters: [&'a AtomicU64; 2],
    activity: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            for c in self.counters {
                c.fetch_add(n, Ordering::Relaxed);
            }
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Relays between `a` and `b` until both directions have ended, either side fails, or no
/// byte moves for `idle`. Also adds to `totals` as bytes move (so a relay that ends in an
/// error is counted too).
///
/// Both directions are driven from one task without splitting the streams (no lock around
/// a TLS session), each through its own `buf_size` buffer; a write side is flushed when its
/// reader has nothing more at the moment, and shut down when its reader reaches the end.
pub async fn splice<A, B>(
    a: A,
    b: B,
    buf_size: usize,
    idle: Duration,
    totals: Option<Arc<RelayCounters>>,
) -> std::io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let totals = totals.unwrap_or_default();
    let local = RelayCounters::default();
    let activity = AtomicU64::new(0);
    let mut a = Counted {
        inner: a,
        counters: [&local.a_to_b, &totals.a_to_b],
        activity: &activity,
    };
    let mut b = Counted {
        inner: b,
        counters: [&local.b_to_a, &totals.b_to_a],
        activity: &activity,
    };
    let both = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buf_size, buf_size);
    let watchdog = async {
        let mut seen = activity.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = activity.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        r = both => r.map(|_| ()),
        () = watchdog => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no traffic for {} ms", idle.as_millis()))),
    }?;
    Ok(Relayed {
        a_to_b: local.a_to_b.load(Ordering::Relaxed),
        b_to_a: local.b_to_a.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_propagates_half_close() {
        let (mut client, a) = tokio::io::duplex(4096);
        let (b, mut server) = tokio::io::duplex(4096);
        let relay = tokio::spawn(splice(a, b, 1024, Duration::from_secs(30), None));
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            // The other direction still works after our half-close.
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data, "client to server, then end of stream");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let r = relay.await.unwrap().unwrap();
        assert_eq!(
            r,
            Relayed {
                a_to_b: 100_000,
                b_to_a: 22
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_closed() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let err = splice(a, b, 64, Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
