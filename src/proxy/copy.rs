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
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::proxy::splice::{self, Pipe};
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
///
/// Bulk: once `SPLICE_AFTER` bytes have gone this way and a read brings at least
/// `BULK_READ`, the direction splices (`splice`): socket → pipe → socket in the kernel,
/// with a pipe taken from the pool only while bytes are in it. It goes back to reading when
/// a burst ends small (the socket drained after less than `BULK_READ`), so a watch that once
/// carried a large event does not pay splice's extra calls on every small one.
struct OneWay<'a> {
    src: ReadHalf<'a>,
    dst: WriteHalf<'a>,
    counter: &'a Counter,
    /// Read but not yet written; empty (no allocation) almost always.
    pending: Box<[u8]>,
    written: usize,
    total: u64,
    mode: Mode,
    /// Spliced in and not yet out; `None` (no pipe held) whenever it would be empty.
    pipe: Option<Pipe>,
}

/// How a direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Through the stack buffer; splices once bulk is seen.
    Read,
    /// Spliced; the bytes of the current burst so far.
    Splice { burst: u32 },
    /// Through the stack buffer for good: splice failed as unsupported.
    ReadOnly,
    /// End of stream seen and passed on.
    Done,
}

/// Bytes that must have gone one way before it may splice…
pub const SPLICE_AFTER: u64 = 256 * 1024;
/// …and the least a read must bring to count as bulk (a burst that ends with less goes
/// back to reading).
const BULK_READ: usize = 16 * 1024;
const BULK_BURST: u32 = BULK_READ as u32;

impl<'a> OneWay<'a> {
    fn new(src: ReadHalf<'a>, dst: WriteHalf<'a>, counter: &'a Counter) -> OneWay<'a> {
        OneWay {
            src,
            dst,
            counter,
            pending: Box::default(),
            written: 0,
            total: 0,
            mode: Mode::Read,
            pipe: None,
        }
    }

    fn poll_copy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if self.mode == Mode::Done {
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
                self.pending = Box::default();
                self.written = 0;
            }
            ready!(self.poll_drain_pipe(cx))?;
            if let Mode::Splice { burst } = self.mode {
                match ready!(self.poll_fill_pipe(cx)) {
                    Ok(Fill::Moved(0)) => return Poll::Ready(Ok(self.end_of_stream())),
                    Ok(Fill::Moved(n)) => {
                        self.mode = Mode::Splice {
                            burst: burst.saturating_add(u32::try_from(n).unwrap_or(u32::MAX)),
                        };
                        self.count(n);
                        crate::metrics::spliced_bytes().inc_by(n as u64);
                        continue;
                    }
                    Ok(Fill::NoPipe) => self.mode = Mode::Read,
                    Ok(Fill::Drained) => {
                        // Drained: the burst is over; back to reading if it was small.
                        self.mode = if burst < BULK_BURST {
                            Mode::Read
                        } else {
                            Mode::Splice { burst: 0 }
                        };
                        return Poll::Pending;
                    }
                    Err(e) if splice::unsupported(&e) => {
                        tracing::debug!(error = %e, "splice unsupported; copying instead");
                        self.pipe = None;
                        self.mode = Mode::ReadOnly;
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let mut buf = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut self.src).poll_read(cx, &mut rb))?;
            let data = rb.filled();
            let n = data.len();
            if n == 0 {
                return Poll::Ready(Ok(self.end_of_stream()));
            }
            self.count(n);
            if self.mode == Mode::Read && n >= BULK_READ && self.total >= SPLICE_AFTER {
                self.mode = Mode::Splice { burst: 0 };
            }
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
                self.pending = data[written..].into();
            }
        }
    }

    fn count(&mut self, n: usize) {
        self.total += n as u64;
        self.counter.inc_by(n as u64);
    }

    /// EOF read (nothing pending, no pipe): passed on as a half-close.
    fn end_of_stream(&mut self) -> u64 {
        self.pipe = None;
        socket::shutdown_write(self.dst.as_ref());
        self.mode = Mode::Done;
        self.total
    }

    /// Splices what the pipe holds into `dst`; ready once it is empty and given back.
    fn poll_drain_pipe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(pipe) = &mut self.pipe else {
            return Poll::Ready(Ok(()));
        };
        let dst: &TcpStream = self.dst.as_ref();
        while !pipe.is_empty() {
            ready!(dst.poll_write_ready(cx))?;
            match dst.try_io(Interest::WRITABLE, || pipe.drain(dst)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.pipe = None;
        Poll::Ready(Ok(()))
    }

    /// Splices what `src` has into a pipe taken from the pool. Once `src` is drained the
    /// pipe is given back.
    fn poll_fill_pipe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Fill>> {
        let src: &TcpStream = self.src.as_ref();
        loop {
            ready!(src.poll_read_ready(cx))?;
            let pipe = match self.pipe.take().or_else(splice::take) {
                Some(p) => self.pipe.insert(p),
                None => return Poll::Ready(Ok(Fill::NoPipe)),
            };
            match src.try_io(Interest::READABLE, || pipe.fill(src)) {
                Ok(n) => return Poll::Ready(Ok(Fill::Moved(n))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pipe = None;
                    // Readiness was cleared: this registers for more (or finds it came).
                    if src.poll_read_ready(cx).is_pending() {
                        return Poll::Ready(Ok(Fill::Drained));
                    }
                }
                Err(e) => {
                    self.pipe = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

/// What a splice from the source did.
enum Fill {
    /// Bytes into the pipe; 0 at end of stream.
    Moved(usize),
    /// The source has nothing now (the waker is registered); no pipe is held.
    Drained,
    /// No pipe to be had (`splice::MAX_PIPES` open, or out of descriptors).
    NoPipe,
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
        let spliced_before = crate::metrics::spliced_bytes().get();
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
        // Past the threshold the bulk went through pipes (the counter is process-wide:
        // only this test moves that much here).
        let spliced = crate::metrics::spliced_bytes().get() - spliced_before;
        assert!(spliced > 0, "nothing spliced");
        assert!(spliced <= payload.len() as u64 - SPLICE_AFTER, "{spliced}");
    }
}
