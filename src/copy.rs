//! Bidirectional byte copy between a client and its server, with half-close and byte
//! counters.
//!
//! Both directions run concurrently; when one side reaches EOF the other keeps flowing and
//! the EOF is passed on as a write shutdown (half-close). An error in either direction ends
//! both. Memory is the point of the shape: the copy is a hand-written future polling socket
//! readiness directly (no stored readiness futures), and its read buffer lives on the stack
//! inside `poll` only, so an idle connection holds no copy buffer at all — a few hundred
//! bytes of state. Bytes are copied to the heap only when the writer cannot take everything
//! at once, and freed as soon as they are written. This module never decides when a
//! connection must close early: the caller selects this against its cancellation.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::socket;

/// Bytes read per system call. On the stack, inside `poll` only, never initialised.
const CHUNK: usize = 64 * 1024;

/// Bytes moved each way: (client → server, server → client).
pub type Moved = (u64, u64);

/// Copies until both directions have seen EOF, or either fails.
pub fn bidirectional<'a>(
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    to_server: &'a Counter,
    to_client: &'a Counter,
) -> Bidirectional<'a> {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    Bidirectional {
        up: OneWay::new(client_read, server_write, to_server),
        down: OneWay::new(server_read, client_write, to_client),
    }
}

pub struct Bidirectional<'a> {
    up: OneWay<'a>,
    down: OneWay<'a>,
}

impl Future for Bidirectional<'_> {
    type Output = io::Result<Moved>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let up = self.up.poll_copy(cx)?;
        let down = self.down.poll_copy(cx)?;
        match (up, down) {
            (Poll::Ready(a), Poll::Ready(b)) => Poll::Ready(Ok((a, b))),
            _ => Poll::Pending,
        }
    }
}

/// One direction: read what is there, write what the peer takes now, and keep (on the heap)
/// only what it could not take. Reads go through tokio's `poll_read`, which knows that a
/// short read drained the socket and so saves the `EAGAIN` read a readiness loop would make;
/// the buffer is uninitialised stack memory (no 64 KiB memset per read).
struct OneWay<'a> {
    src: ReadHalf<'a>,
    dst: WriteHalf<'a>,
    counter: &'a Counter,
    /// Read but not yet written; empty (no allocation) almost always.
    pending: Vec<u8>,
    written: usize,
    total: u64,
    done: bool,
}

impl<'a> OneWay<'a> {
    fn new(src: ReadHalf<'a>, dst: WriteHalf<'a>, counter: &'a Counter) -> OneWay<'a> {
        OneWay {
            src,
            dst,
            counter,
            pending: Vec::new(),
            written: 0,
            total: 0,
            done: false,
        }
    }

    fn poll_copy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        loop {
            while self.written < self.pending.len() {
                let n =
                    ready!(Pin::new(&mut self.dst).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            let mut buf = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut self.src).poll_read(cx, &mut rb))?;
            let data = rb.filled();
            let n = data.len();
            if n == 0 {
                socket::shutdown_write(self.dst.as_ref());
                self.done = true;
                return Poll::Ready(Ok(self.total));
            }
            self.total += n as u64;
            self.counter.inc_by(n as u64);
            let dst: &TcpStream = self.dst.as_ref();
            let mut written = 0;
            while written < n {
                match dst.try_write(&data[written..]) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if written < n {
                self.pending = data[written..].to_vec();
            }
        }
    }
}

/// Writes all of `bytes`, waiting for the socket when it is full.
pub async fn write_all(dst: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        dst.writable().await?;
        match dst.try_write(&bytes[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client_app <-> [client_side | proxy | server_side] <-> server_app
    #[tokio::test]
    async fn exact_bytes_and_half_close() {
        let (mut client_app, mut client_side) = pair().await;
        let (mut server_side, mut server_app) = pair().await;
        let (cu, cd) = (Counter::default(), Counter::default());
        let (up, down) = (cu.clone(), cd.clone());
        let proxy = tokio::spawn(async move {
            bidirectional(&mut client_side, &mut server_side, &up, &down).await
        });
        let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&sent).await.unwrap();
            client_app.shutdown().await.unwrap(); // half-close
            let mut back = Vec::new();
            client_app.read_to_end(&mut back).await.unwrap();
            back
        });
        // The server sees every byte, then EOF (the half-close passed through)…
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        // …and can still answer after it.
        server_app.write_all(b"answer after EOF").await.unwrap();
        server_app.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"answer after EOF");
        let moved = proxy.await.unwrap().unwrap();
        assert_eq!(moved, (payload.len() as u64, 16));
        assert_eq!(cu.get(), payload.len() as u64);
        assert_eq!(cd.get(), 16);
    }
}
