//! Bidirectional byte copy between a client and its server, with half-close, byte
//! counters, and the two timeouts of a stream that stopped moving.
//!
//! Both directions run concurrently; when one side reaches EOF the other keeps flowing and
//! the EOF is passed on as a write shutdown (half-close). An error in either direction ends
//! both. Memory is the point of the shape: the copy is a hand-written future polling socket
//! readiness directly (no stored readiness futures), and its read buffer lives on the stack
//! inside `poll` only, so an idle connection holds no copy buffer at all — a few hundred
//! bytes of state. Bytes are copied to the heap only when the writer cannot take everything
//! at once, and freed as soon as they are written.
//!
//! Timeouts (`Timeouts`, HAProxy's `timeout client-fin`/`server-fin` and `timeout tunnel`):
//! once one direction has ended, the other must end within `half_closed`, or the copy ends
//! as timed out (a peer that never closes its side would hold the connection, its slot and
//! two descriptors forever); with `idle`, a stream on which nothing was read either way for
//! that long ends too. The timer is on the heap and exists only while one of them can fire:
//! after a half-close, or for every connection when an idle timeout is set. It is re-armed
//! lazily (activity only moves a timestamp; the timer, when it fires, looks again), so
//! traffic costs no timer operations. The caller closes what timed out, and selects this
//! against its own cancellation (failover, shutdown).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::socket;

/// Bytes read per system call. On the stack, inside `poll` only, never initialised.
const CHUNK: usize = 64 * 1024;

/// Bytes moved each way: (client → server, server → client).
pub type Moved = (u64, u64);

/// When a stream that stopped moving is ended. `None`: never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Once one direction has ended, the other must end within this.
    pub half_closed: Option<Duration>,
    /// Nothing read in either direction for this long.
    pub idle: Option<Duration>,
}

/// Which timeout ended a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    HalfClosed,
    Idle,
}

/// How a copy ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions saw EOF.
    Closed(Moved),
    /// A timeout fired; the caller closes both sockets.
    TimedOut(TimedOut, Moved),
}

/// Copies until both directions have seen EOF, either fails, or a timeout fires.
pub fn bidirectional<'a>(
    client: &'a mut TcpStream,
    server: &'a mut TcpStream,
    to_server: &'a Counter,
    to_client: &'a Counter,
    timeouts: &'a Timeouts,
) -> Bidirectional<'a> {
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    Bidirectional {
        up: OneWay::new(client_read, server_write, to_server),
        down: OneWay::new(server_read, client_write, to_client),
        timeouts,
        timer: None,
        half_closed_at: None,
        last_active: timeouts.idle.map(|_| Instant::now()),
    }
}

pub struct Bidirectional<'a> {
    up: OneWay<'a>,
    down: OneWay<'a>,
    timeouts: &'a Timeouts,
    /// Armed only while a timeout can fire; boxed, so that an idle connection's state holds
    /// no timer unless one is asked for.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the first direction ended.
    half_closed_at: Option<Instant>,
    /// When something was last read (kept only with an idle timeout).
    last_active: Option<Instant>,
}

impl Bidirectional<'_> {
    fn moved(&self) -> Moved {
        (self.up.total, self.down.total)
    }

    /// The earliest deadline, and which timeout it is.
    fn deadline(&self) -> Option<(Instant, TimedOut)> {
        let half = self
            .timeouts
            .half_closed
            .zip(self.half_closed_at)
            .map(|(d, at)| (at + d, TimedOut::HalfClosed));
        let idle = self
            .timeouts
            .idle
            .zip(self.last_active)
            .map(|(d, at)| (at + d, TimedOut::Idle));
        match (half, idle) {
            (Some(h), Some(i)) => Some(if i.0 < h.0 { i } else { h }),
            (h, i) => h.or(i),
        }
    }

    /// Pending until the earliest deadline has passed; then which one it was.
    fn poll_timeouts(&mut self, cx: &mut Context<'_>) -> Poll<TimedOut> {
        loop {
            let Some((deadline, which)) = self.deadline() else {
                return Poll::Pending;
            };
            let timer = match &mut self.timer {
                Some(t) => {
                    // Only ever moved earlier here; a later deadline is seen when it fires.
                    if deadline < t.deadline() {
                        t.as_mut().reset(deadline);
                    }
                    t
                }
                None => self
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            ready!(timer.as_mut().poll(cx));
            if deadline <= Instant::now() {
                return Poll::Ready(which);
            }
            // Activity moved the deadline on since the timer was set: set it again.
            timer.as_mut().reset(deadline);
        }
    }
}

impl Future for Bidirectional<'_> {
    type Output = io::Result<Ended>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let before = this.up.total + this.down.total;
        let up = this.up.poll_copy(cx)?;
        let down = this.down.poll_copy(cx)?;
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(Ended::Closed(this.moved())));
        }
        if this.timeouts.half_closed.is_none() && this.timeouts.idle.is_none() {
            return Poll::Pending;
        }
        if this.timeouts.idle.is_some() && this.up.total + this.down.total != before {
            this.last_active = Some(Instant::now());
        }
        if this.timeouts.half_closed.is_some()
            && this.half_closed_at.is_none()
            && (up.is_ready() || down.is_ready())
        {
            this.half_closed_at = Some(Instant::now());
        }
        let which = ready!(this.poll_timeouts(cx));
        Poll::Ready(Ok(Ended::TimedOut(which, this.moved())))
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
            let none = Timeouts::default();
            bidirectional(&mut client_side, &mut server_side, &up, &down, &none).await
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
        let ended = proxy.await.unwrap().unwrap();
        assert_eq!(ended, Ended::Closed((payload.len() as u64, 16)));
        assert_eq!(cu.get(), payload.len() as u64);
        assert_eq!(cd.get(), 16);
    }
}
