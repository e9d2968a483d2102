//! A relayed stream carried in chunks, so the connection under it can carry the next device
//! once this one is done: each direction is a sequence of chunks (a 4-byte big-endian length,
//! then that many bytes) ended by an empty chunk, which stands for end of stream (a
//! half-close). When both directions have ended cleanly the connection is idle again, still
//! authenticated, and goes back to its warm pool instead of being closed: a short device
//! connection then costs no handshake anywhere, not even one to refill the pool.
//!
//! [`ChunkedLink`] is an ordinary `AsyncRead + AsyncWrite` for its user: reads give the
//! relayed bytes and end of stream at the empty chunk; writes are framed; `shutdown` sends
//! the empty chunk and leaves the connection open. A chunk longer than [`MAX_CHUNK`], or a
//! connection that ends inside a chunk, is an error, and such a link is never reused.
//!
//! ```
//! use outpost_gateway::chunked::ChunkedLink;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (a, b) = tokio::io::duplex(1024);
//! let (mut a, mut b) = (ChunkedLink::new(a), ChunkedLink::new(b));
//! a.write_all(b"hello").await.unwrap();
//! a.shutdown().await.unwrap(); // an empty chunk: end of this direction
//! let mut got = Vec::new();
//! b.read_to_end(&mut got).await.unwrap();
//! assert_eq!(got, b"hello");
//! b.shutdown().await.unwrap();
//! let mut rest = Vec::new();
//! a.read_to_end(&mut rest).await.unwrap();
//! // Both directions ended cleanly: the connection can carry another stream.
//! assert!(a.is_reusable() && b.is_reusable());
//! # });
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest chunk accepted or sent (64 KiB).
pub const MAX_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// `have` bytes of the next length read.
    Header { have: usize },
    /// Bytes of the current chunk still to come.
    Body { remaining: usize },
    /// The empty chunk came: end of stream.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    Open,
    /// The empty chunk is queued or being written.
    Ending,
    Ended,
}

/// A relayed stream in chunks over `S`. See the [module documentation](self).
#[derive(Debug)]
pub struct ChunkedLink<S> {
    inner: S,
    reading: Reading,
    header: [u8; 4],
    writing: Writing,
    /// The length of the chunk being written, and how much of it is out (4: all).
    head: [u8; 4],
    head_sent: usize,
    /// Bytes the chunk being written still owes its length.
    owed: usize,
    broken: bool,
}

impl<S> ChunkedLink<S> {
    /// Starts a chunked stream on `inner` (after both sides agreed to it).
    pub fn new(inner: S) -> Self {
        ChunkedLink {
            inner,
            reading: Reading::Header { have: 0 },
            header: [0; 4],
            writing: Writing::Open,
            head: [0; 4],
            head_sent: 4,
            owed: 0,
            broken: false,
        }
    }

    /// Whether both directions ended cleanly and everything was written: the connection
    /// under it can carry another stream.
    pub fn is_reusable(&self) -> bool {
        !self.broken
            && self.reading == Reading::Ended
            && self.writing == Writing::Ended
            && self.head_sent == 4
            && self.owed == 0
    }

    /// Whether the peer has ended its direction.
    pub fn read_ended(&self) -> bool {
        self.reading == Reading::Ended
    }

    /// Whether this side has ended its direction (the empty chunk is written).
    pub fn write_ended(&self) -> bool {
        self.writing == Writing::Ended
    }

    /// The connection under it.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn fail<T>(&mut self, kind: io::ErrorKind, what: &str) -> Poll<io::Result<T>> {
        self.broken = true;
        Poll::Ready(Err(io::Error::new(kind, what.to_string())))
    }

    /// What one write to the connection took: a write that took nothing, or failed,
    /// breaks the link.
    fn took(&mut self, written: io::Result<usize>) -> io::Result<usize> {
        match written {
            Ok(0) => {
                self.broken = true;
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection took no bytes",
                ))
            }
            Ok(k) => Ok(k),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> ChunkedLink<S> {
    /// Writes the rest of the current chunk's length.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.head_sent < 4 {
            match Pin::new(&mut self.inner).poll_write(cx, &self.head[self.head_sent..]) {
                Poll::Ready(Ok(0)) => {
                    return self.fail(io::ErrorKind::WriteZero, "the connection took no bytes");
                }
                Poll::Ready(Ok(n)) => self.head_sent += n,
                Poll::Ready(Err(e)) => {
                    self.broken = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChunkedLink<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.reading {
                Reading::Ended => return Poll::Ready(Ok(())),
                Reading::Header { have } => {
                    let mut head = ReadBuf::new(&mut this.header[have..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut head))?;
                    let n = head.filled().len();
                    if n == 0 {
                        return this.fail(
                            io::ErrorKind::UnexpectedEof,
                            "the connection ended before the stream's last chunk",
                        );
                    }
                    let have = have + n;
                    if have < 4 {
                        this.reading = Reading::Header { have };
                        continue;
                    }
                    let len = u32::from_be_bytes(this.header) as usize;
                    this.reading = match len {
                        0 => Reading::Ended,
                        l if l > MAX_CHUNK => {
                            return this
                                .fail(io::ErrorKind::InvalidData, "a chunk longer than 64 KiB");
                        }
                        l => Reading::Body { remaining: l },
                    };
                }
                Reading::Body { remaining } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = remaining.min(buf.remaining());
                    let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return this.fail(
                            io::ErrorKind::UnexpectedEof,
                            "the connection ended inside a chunk",
                        );
                    }
                    buf.advance(n);
                    this.reading = if n == remaining {
                        Reading::Header { have: 0 }
                    } else {
                        Reading::Body {
                            remaining: remaining - n,
                        }
                    };
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChunkedLink<S> {
    /// Writes `data` as (the rest of) a chunk, its length and bytes in one vectored write
    /// when the connection takes them so: no copy of the relayed bytes.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.writing != Writing::Open {
            return this.fail(io::ErrorKind::BrokenPipe, "this side's stream has ended");
        }
        loop {
            ready!(this.poll_head(cx))?;
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if this.owed > 0 {
                let n = this.owed.min(data.len());
                let r = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..n]));
                let k = this.took(r)?;
                this.owed -= k;
                return Poll::Ready(Ok(k));
            }
            let n = data.len().min(MAX_CHUNK);
            let head = (n as u32).to_be_bytes();
            let bufs = [io::IoSlice::new(&head), io::IoSlice::new(&data[..n])];
            let r = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs));
            let k = this.took(r)?;
            // The chunk is committed from its first byte on.
            this.head = head;
            this.head_sent = k.min(4);
            let sent = k.saturating_sub(4);
            this.owed = n - sent;
            if sent > 0 {
                return Poll::Ready(Ok(sent));
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_head(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Ends this direction with the empty chunk; the connection stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.writing == Writing::Open {
            ready!(this.poll_head(cx))?;
            if this.owed > 0 {
                return this.fail(
                    io::ErrorKind::InvalidInput,
                    "shut down inside a chunk: its bytes were never all written",
                );
            }
            this.head = [0; 4];
            this.head_sent = 0;
            this.writing = Writing::Ending;
        }
        if this.writing == Writing::Ending {
            ready!(this.poll_head(cx))?;
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            this.writing = Writing::Ended;
        }
        Poll::Ready(Ok(()))
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChunkedLink<S> {
    /// After its stream's user is done (cleanly or not): ends this direction if it has not
    /// ended, and reads the peer's direction to its end, discarding at most `max_drain`
    /// bytes, all within `limit`. `true` if the link is then reusable. A device that went
    /// away without a clean close therefore costs its connection nothing, as long as the
    /// other side ends its direction promptly.
    pub async fn settle(&mut self, limit: std::time::Duration, max_drain: usize) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.broken {
            return false;
        }
        let work = async {
            if !self.write_ended() {
                self.shutdown().await?;
            }
            let mut scratch = [0u8; 4096];
            let mut drained = 0;
            while !self.read_ended() && drained <= max_drain {
                drained += self.read(&mut scratch).await?;
            }
            Ok::<(), io::Error>(())
        };
        matches!(tokio::time::timeout(limit, work).await, Ok(Ok(()))) && self.is_reusable()
    }
}

/// A chunked link handed to a user who only drops it when done (the server's device
/// service): it comes back through the receiver [`Lending::new`] returns, to be made idle
/// again if both directions ended cleanly.
#[derive(Debug)]
pub struct Lending<S> {
    link: Option<ChunkedLink<S>>,
    back: Option<tokio::sync::oneshot::Sender<ChunkedLink<S>>>,
}

impl<S> Lending<S> {
    /// Lends `link`; the receiver gets it back when the lending is dropped.
    pub fn new(link: ChunkedLink<S>) -> (Self, tokio::sync::oneshot::Receiver<ChunkedLink<S>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Lending {
                link: Some(link),
                back: Some(tx),
            },
            rx,
        )
    }

    fn link(&mut self) -> io::Result<&mut ChunkedLink<S>> {
        self.link
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the link was given back"))
    }
}

impl<S> Drop for Lending<S> {
    fn drop(&mut self) {
        if let (Some(link), Some(back)) = (self.link.take(), self.back.take()) {
            // Nobody waiting for it: it is closed here.
            let _ = back.send(link);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lending<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.link()?).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lending<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.link()?).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.link()?).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.link()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the write sizes and the transport's buffer, the reader gets exactly the
        /// bytes written, end of stream where the writer shut down, and the link is reusable:
        /// a second stream on the same connection arrives intact too.
        #[test]
        fn chunks_carry_every_byte_and_the_connection_twice(
            data in proptest::collection::vec(any::<u8>(), 0..150_000),
            second in proptest::collection::vec(any::<u8>(), 0..5_000),
            // Pipes shorter than a chunk's 4-byte length are drawn often.
            pipe in prop_oneof![1usize..8, 1usize..100_000],
            writes in proptest::collection::vec(1usize..100_000, 1..20),
        ) {
            // Bounded: a link that stops moving bytes fails the case instead of hanging.
            run(async { tokio::time::timeout(std::time::Duration::from_secs(20), async {
                let (a, b) = tokio::io::duplex(pipe);
                let (mut a, mut b) = (ChunkedLink::new(a), ChunkedLink::new(b));
                for payload in [&data, &second] {
                    let sent = payload.clone();
                    let sizes = writes.clone();
                    let writer = async move {
                        let mut rest = &sent[..];
                        let mut i = 0;
                        while !rest.is_empty() {
                            let n = sizes[i % sizes.len()].min(rest.len());
                            a.write_all(&rest[..n]).await.unwrap();
                            rest = &rest[n..];
                            i += 1;
                        }
                        a.shutdown().await.unwrap();
                        // The other direction's end reaches the writer (read while the
                        // reader writes it: a pipe shorter than a chunk's length needs both).
                        let mut nothing = Vec::new();
                        a.read_to_end(&mut nothing).await.unwrap();
                        (a, nothing)
                    };
                    let reader = async move {
                        let mut got = Vec::new();
                        b.read_to_end(&mut got).await.unwrap();
                        b.shutdown().await.unwrap();
                        (b, got)
                    };
                    let ((a2, nothing), (b2, got)) = tokio::join!(writer, reader);
                    prop_assert_eq!(&got, payload);
                    prop_assert!(nothing.is_empty());
                    prop_assert!(a2.is_reusable() && b2.is_reusable());
                    a = ChunkedLink::new(a2.into_inner());
                    b = ChunkedLink::new(b2.into_inner());
                }
                Ok(())
            }).await })
            .map_err(|_| TestCaseError::fail("the link stopped moving bytes"))??;
        }
    }

    #[test]
    fn an_oversized_chunk_or_a_cut_stream_is_an_error_and_never_reusable() {
        run(async {
            let (mut raw, b) = tokio::io::duplex(1024);
            let mut b = ChunkedLink::new(b);
            raw.write_all(&((MAX_CHUNK as u32) + 1).to_be_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 16];
            let e = b.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(!b.is_reusable());

            let (mut raw, b) = tokio::io::duplex(1024);
            let mut b = ChunkedLink::new(b);
            raw.write_all(&10u32.to_be_bytes()).await.unwrap();
            raw.write_all(b"abc").await.unwrap();
            drop(raw);
            let mut got = Vec::new();
            let e = b.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(got, b"abc");
            assert!(!b.is_reusable());
        });
    }
}
