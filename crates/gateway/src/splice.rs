//! Relaying bytes between two streams both ways, with backpressure (a fixed buffer per
//! direction: a slow side slows the other), half-close propagated (end of stream on one side
//! shuts down the writing half of the other), errors propagated (either side failing closes
//! both), and an idle timeout (no traffic either way for that long closes both).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    buf_size: usize,
    counters: [&AtomicU64; 2],
    activity: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buf_size];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: tell the other side no more bytes come this way.
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// Relays between `a` and `b` until both directions have ended, either side fails, or no
/// byte moves for `idle`. Also adds to `totals` as bytes move (so a relay that ends in an
/// error is counted too).
pub async fn splice<A, B>(
    a: A,
    b: B,
    buf_size: usize,
    idle: Duration,
    totals: Option<Arc<RelayCounters>>,
) -> std::io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Send,
    B: AsyncRead + AsyncWrite + Send,
{
    let counters = totals.unwrap_or_default();
    let local = RelayCounters::default();
    let activity = AtomicU64::new(0);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let up = pump(
        ar,
        bw,
        buf_size,
        [&local.a_to_b, &counters.a_to_b],
        &activity,
    );
    let down = pump(
        br,
        aw,
        buf_size,
        [&local.b_to_a, &counters.b_to_a],
        &activity,
    );
    let both = async { tokio::try_join!(up, down) };
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
