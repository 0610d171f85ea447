//! Watches the bytes a server sends on the HTTP/2 health connection for a GOAWAY frame.
//!
//! A GOAWAY is the server saying it is leaving (kube-apiserver sends one on every connection
//! when it shuts down) or rebalancing (`--goaway-chance`). The h2 crate reports it only once
//! the connection has ended, and then not apart from a plain FIN; reading the frame headers
//! as they pass lets the health checker stop new connections to the server within
//! milliseconds. Reads headers only, never changes or holds a byte.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// HTTP/2 frame type of GOAWAY (RFC 9113 §6.8).
const GOAWAY: u8 = 0x7;
/// Length of an HTTP/2 frame header.
const HEADER: usize = 9;

/// Set once a GOAWAY frame has been seen.
#[derive(Default)]
pub struct Seen {
    seen: AtomicBool,
    notify: Notify,
}

impl Seen {
    pub fn is_set(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    /// Completes once a GOAWAY has been seen (at once if it already was).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }

    fn set(&self) {
        self.seen.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Frame boundaries in the server-to-client byte stream.
#[derive(Default)]
struct Frames {
    head: [u8; HEADER],
    have: usize,
    skip: usize,
}

impl Frames {
    /// Consumes `buf`; true when a GOAWAY frame header was in it.
    fn feed(&mut self, mut buf: &[u8]) -> bool {
        let mut goaway = false;
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (HEADER - self.have).min(buf.len());
            self.head[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            buf = &buf[n..];
            if self.have == HEADER {
                let len = usize::from(self.head[0]) << 16
                    | usize::from(self.head[1]) << 8
                    | usize::from(self.head[2]);
                goaway |= self.head[3] == GOAWAY;
                self.skip = len;
                self.have = 0;
            }
        }
        goaway
    }
}

/// `io` with its incoming HTTP/2 frames watched for GOAWAY.
pub struct Watched<T> {
    io: T,
    frames: Frames,
    seen: Arc<Seen>,
}

pub fn watch<T>(io: T) -> (Watched<T>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    (
        Watched {
            io,
            frames: Frames::default(),
            seen: seen.clone(),
        },
        seen,
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        let r = Pin::new(&mut me.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if me.frames.feed(&buf.filled()[before..]) {
                me.seen.set();
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        // A payload that holds the GOAWAY type byte must not be mistaken for a header.
        f.extend(std::iter::repeat_n(GOAWAY, payload));
        f
    }

    #[test]
    fn finds_goaway_only_in_frame_headers_at_any_split() {
        let mut stream = frame(0x4, 18); // SETTINGS
        stream.extend(frame(0x6, 8)); // PING
        stream.extend(frame(0x0, 300)); // DATA full of 0x07
        let before_goaway = stream.len();
        stream.extend(frame(GOAWAY, 8));
        for split in 1..stream.len() {
            let mut f = Frames::default();
            let mut seen_at = None;
            for (i, chunk) in stream.chunks(split).enumerate() {
                if f.feed(chunk) && seen_at.is_none() {
                    seen_at = Some((i + 1) * split);
                }
            }
            let at = seen_at.unwrap_or_else(|| panic!("missed at split {split}"));
            assert!(at > before_goaway + 3, "false GOAWAY at split {split}");
        }
    }

    #[tokio::test]
    async fn signals_through_the_reader() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, client) = tokio::io::duplex(1024);
        let (mut watched, seen) = watch(client);
        server.write_all(&frame(0x4, 6)).await.unwrap();
        let mut buf = [0u8; 64];
        let _ = watched.read(&mut buf).await.unwrap();
        assert!(!seen.is_set());
        server.write_all(&frame(GOAWAY, 8)).await.unwrap();
        let _ = watched.read(&mut buf).await.unwrap();
        seen.wait().await;
        assert!(seen.is_set());
    }
}
