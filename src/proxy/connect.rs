//! Getting a client connection a server that answers: connect racing, then first-byte
//! racing. Where passive failover happens.
//!
//! * **Connect racing.** Servers are tried in the order `balance` gave. A refused or failed
//!   connect moves on to the next server at once; a connect still pending after the race
//!   delay starts a parallel attempt on the next one; the first to connect wins and the
//!   others are dropped. A server whose connect failed is marked so that it gets no new
//!   connections until a health check passes.
//! * **First-byte racing.** A connected server is not yet committed. The caller (`proxy`)
//!   connects nothing before the client's first flight is in hand; if that is a complete
//!   TLS ClientHello and the server has not answered within the first-byte timeout,
//!   the client's bytes so far are replayed to a newly connected next server, and the first
//!   server to answer wins, and the silent one gets no new connections until a health check
//!   passes. Only bytes sent before any server byte are replayed, at most
//!   `replay_limit` of them; past that the connection is pinned to the servers it has. This
//!   saves connections that would go to a frozen apiserver (kernel accepts, process never
//!   answers), which connect racing cannot see. Anything else (non-TLS bytes, a hello
//!   larger than the replay limit) is pinned to the first server: silence after bytes a
//!   server may legitimately wait on says nothing about the server.
//!
//! Every server marked failed here is marked with what failed (`PassiveFailure`).
//!
//! Every attempt counts against its server's active connections while it lives, so
//! least-connections sees connections in progress too.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::control::backend::{Backend, ConnGuard, PassiveFailure};
use crate::metrics::Metrics;
use crate::proxy::copy::write_all;
use crate::socket;

#[derive(Debug, Clone, Copy)]
pub struct RaceSettings {
    pub connect_timeout: Duration,
    pub race_delay: Duration,
    pub first_byte_timeout: Duration,
    pub replay_limit: usize,
    /// A client that has not sent a complete ClientHello this long after the accept is
    /// closed. `None`: never.
    pub client_hello_timeout: Option<Duration>,
}

/// A connected server socket, counted against its server.
pub struct Upstream {
    pub stream: TcpStream,
    pub guard: ConnGuard,
}

impl Upstream {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.guard.backend
    }
}

/// The committed server: its socket, the token that closes the connection when the server
/// goes down, and the server's first bytes (already read, not yet sent to the client).
/// The client's bytes it was sent so far are already counted in its `bytes_to_server`.
pub struct Established {
    pub upstream: Upstream,
    pub token: CancellationToken,
    pub first_bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    #[error("no server could be connected")]
    NoServer,
    #[error("every server closed or went down before answering")]
    NoAnswer,
    #[error("client: {0}")]
    Client(io::Error),
    #[error("the client closed before the server answered")]
    ClientGone,
    #[error("out of local resources: {0}")]
    LocalResources(io::Error),
}

async fn attempt(backend: Arc<Backend>, timeout: Duration) -> (ConnGuard, io::Result<TcpStream>) {
    let guard = backend.claim();
    let mut addrs = backend.addrs();
    if addrs.is_empty() && backend.needs_resolution() {
        // Not resolved yet (a connection right at start): resolve now.
        let _ = backend.resolve().await;
        addrs = backend.addrs();
    }
    if addrs.is_empty() {
        backend.metrics.connect_error.inc();
        let e = io::Error::new(io::ErrorKind::NotFound, "no address resolved yet");
        return (guard, Err(e));
    }
    let start = Instant::now();
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    for addr in addrs.iter() {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                backend.metrics.connect_ok.inc();
                backend
                    .metrics
                    .connect_seconds
                    .observe(start.elapsed().as_secs_f64());
                socket::tune_upstream(&s);
                return (guard, Ok(s));
            }
            Ok(Err(e)) => {
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    backend.metrics.connect_refused.inc();
                } else {
                    backend.metrics.connect_error.inc();
                }
                last = e;
            }
            Err(_) => {
                backend.metrics.connect_timeout.inc();
                last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            }
        }
    }
    (guard, Err(last))
}

/// Errors that say this process (not the server) is out of resources.
pub fn local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Connect racing over `candidates` (consumed from the front). Returns the first server that
/// connects, and what is left to try. A server still connecting when another one won, after
/// at least a race delay, is marked as failed: it is slow or unreachable.
pub async fn connect_race(
    mut candidates: VecDeque<Arc<Backend>>,
    s: RaceSettings,
) -> (Result<Upstream, EstablishError>, VecDeque<Arc<Backend>>) {
    let Some(first) = candidates.pop_front() else {
        return (Err(EstablishError::NoServer), candidates);
    };
    // The first attempt runs inline (most connections need no other); racing attempts run
    // as tasks of their own.
    let mut pending: Vec<(Arc<Backend>, Instant)> = vec![(first.clone(), Instant::now())];
    let inline = attempt(first, s.connect_timeout);
    tokio::pin!(inline);
    let mut inline_done = false;
    let mut set = JoinSet::new();
    let delay = tokio::time::sleep(s.race_delay);
    tokio::pin!(delay);
    loop {
        let (guard, result) = tokio::select! {
            r = &mut inline, if !inline_done => {
                inline_done = true;
                r
            }
            Some(done) = set.join_next() => match done {
                Ok(r) => r,
                // An attempt task panicked or was aborted: nothing to learn from it.
                Err(_) => {
                    if inline_done && set.is_empty() && candidates.is_empty() {
                        return (Err(EstablishError::NoServer), candidates);
                    }
                    continue;
                }
            },
            () = &mut delay, if !candidates.is_empty() => {
                if let Some(b) = candidates.pop_front() {
                    pending.push((b.clone(), Instant::now()));
                    set.spawn(attempt(b, s.connect_timeout));
                }
                delay.as_mut().reset(tokio::time::Instant::now() + s.race_delay);
                continue;
            }
        };
        pending.retain(|(b, _)| !Arc::ptr_eq(b, &guard.backend));
        match result {
            Ok(stream) => {
                for (slow, since) in &pending {
                    if since.elapsed() >= s.race_delay {
                        slow.metrics.connect_lost_race.inc();
                        slow.mark_passive_failure(
                            PassiveFailure::Connect,
                            &format!(
                                "connect not done after {}; another server won the race",
                                humantime::format_duration(s.race_delay)
                            ),
                        );
                    }
                }
                return (Ok(Upstream { stream, guard }), candidates);
            }
            Err(e) if local_exhaustion(&e) => {
                // Our own descriptors or memory ran out: no server is at fault, and every
                // other attempt would fail the same way.
                return (Err(EstablishError::LocalResources(e)), candidates);
            }
            Err(e) => {
                guard
                    .backend
                    .mark_passive_failure(PassiveFailure::Connect, &e.to_string());
                tracing::debug!(server = %guard.backend.name, error = %e, "connect failed");
                // A failed attempt moves on at once.
                if let Some(b) = candidates.pop_front() {
                    pending.push((b.clone(), Instant::now()));
                    set.spawn(attempt(b, s.connect_timeout));
                    delay
                        .as_mut()
                        .reset(tokio::time::Instant::now() + s.race_delay);
                } else if inline_done && set.is_empty() {
                    return (Err(EstablishError::NoServer), candidates);
                }
            }
        }
    }
}

struct Racer {
    up: Upstream,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
}

impl Racer {
    fn new(up: Upstream) -> Racer {
        let token = up.backend().conn_token();
        Racer {
            cancelled: Box::pin(token.clone().cancelled_owned()),
            token,
            up,
        }
    }
}

enum Event {
    Client,
    Server(usize),
    Cancelled(usize),
    FirstByteTimeout,
    Connected(Result<Upstream, EstablishError>, VecDeque<Arc<Backend>>),
}

type PendingConnect = Pin<
    Box<dyn Future<Output = (Result<Upstream, EstablishError>, VecDeque<Arc<Backend>>)> + Send>,
>;

/// Connect racing, then first-byte racing, for one client connection whose first flight
/// (`hello`: the bytes read before any server was connected) is already in hand. With
/// `raceable` (a complete TLS ClientHello, which a live server always answers) a server
/// that stays silent is raced against the next; otherwise the connection is pinned to the
/// first server that connects, and no server is judged by its silence (the client may be
/// the one that has not said enough).
pub async fn establish(
    client: &TcpStream,
    hello: Vec<u8>,
    raceable: bool,
    order: Vec<Arc<Backend>>,
    s: RaceSettings,
    metrics: &Metrics,
) -> Result<Established, EstablishError> {
    let (first, rest) = connect_race(order.into(), s).await;
    let first = first?;
    let mut candidates = Some(rest);
    let mut racers = vec![Racer::new(first)];
    let mut replay: Vec<u8> = Vec::new();
    let mut pinned = !raceable;
    let mut client_eof = false;
    let mut pending: Option<PendingConnect> = None;
    let mut timer = Box::pin(tokio::time::sleep(Duration::from_secs(86_400)));
    let mut timer_armed = false;
    let mut client_bytes = hello.len() as u64;
    if !hello.is_empty() {
        if write_all(&racers[0].up.stream, &hello).await.is_err() {
            let r = racers.swap_remove(0);
            r.up.backend()
                .mark_passive_failure(PassiveFailure::WriteFailed, "write failed");
        }
        if !pinned {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + s.first_byte_timeout);
            timer_armed = true;
            replay = hello;
        }
    }

    loop {
        if racers.is_empty() {
            // Everyone we were waiting on failed. Start over on what is left, if we still
            // can replay what the client said.
            let left = candidates.as_ref().is_some_and(|c| !c.is_empty());
            if pending.is_none() && (pinned || !left) {
                return Err(EstablishError::NoAnswer);
            }
            if pending.is_none() {
                if let Some(c) = candidates.take() {
                    pending = Some(Box::pin(connect_race(c, s)));
                }
            }
        }
        let can_race = !pinned
            && !replay.is_empty()
            && pending.is_none()
            && candidates.as_ref().is_some_and(|c| !c.is_empty());
        let event = poll_fn(|cx| {
            if let Some(p) = pending.as_mut() {
                if let Poll::Ready((up, rest)) = p.as_mut().poll(cx) {
                    pending = None;
                    return Poll::Ready(Event::Connected(up, rest));
                }
            }
            for (i, r) in racers.iter_mut().enumerate() {
                if r.cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Cancelled(i));
                }
                if r.up.stream.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(Event::Server(i));
                }
            }
            if !client_eof && client.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Event::Client);
            }
            if can_race && timer_armed && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::FirstByteTimeout);
            }
            Poll::Pending
        })
        .await;

        match event {
            Event::Client => {
                // Read into a stack buffer and keep only what arrived: the buffer must not
                // live across the awaits below (it would sit in every connection's task).
                let read = {
                    let mut buf = [0u8; 4096];
                    client.try_read(&mut buf).map(|n| buf[..n].to_vec())
                };
                match read {
                    Ok(bytes) if bytes.is_empty() => {
                        client_eof = true;
                        for r in &racers {
                            socket::shutdown_write(&r.up.stream);
                        }
                    }
                    Ok(bytes) => {
                        client_bytes += bytes.len() as u64;
                        if !pinned {
                            if replay.len() + bytes.len() > s.replay_limit {
                                pinned = true;
                                replay = Vec::new();
                            } else {
                                if replay.is_empty() {
                                    timer
                                        .as_mut()
                                        .reset(tokio::time::Instant::now() + s.first_byte_timeout);
                                    timer_armed = true;
                                }
                                replay.extend_from_slice(&bytes);
                            }
                        }
                        let mut i = 0;
                        while i < racers.len() {
                            if write_all(&racers[i].up.stream, &bytes).await.is_err() {
                                let r = racers.swap_remove(i);
                                r.up.backend().mark_passive_failure(
                                    PassiveFailure::WriteFailed,
                                    "write failed",
                                );
                            } else {
                                i += 1;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(EstablishError::Client(e)),
                }
            }
            Event::Server(i) => {
                let mut buf = [0u8; 16 * 1024];
                match racers[i].up.stream.try_read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let winner = racers.swap_remove(i);
                        // Every live racer was sent all the client said (as it came, or
                        // replayed): counted for the one committed to, once.
                        winner
                            .up
                            .backend()
                            .metrics
                            .bytes_to_server
                            .inc_by(client_bytes);
                        return Ok(Established {
                            token: winner.token,
                            upstream: winner.up,
                            first_bytes: buf[..n].to_vec(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    other if client_eof => {
                        // The client left and the server closed in turn: a normal end.
                        let _ = other;
                        return Err(EstablishError::ClientGone);
                    }
                    other => {
                        let r = racers.swap_remove(i);
                        let why = match other {
                            Err(e) => e.to_string(),
                            _ => "closed before answering".to_string(),
                        };
                        tracing::debug!(server = %r.up.backend().name, cause = %why,
                            "server failed before its first byte");
                        r.up.backend()
                            .mark_passive_failure(PassiveFailure::ClosedBeforeAnswer, &why);
                    }
                }
            }
            Event::Cancelled(i) => {
                racers.swap_remove(i);
            }
            Event::FirstByteTimeout => {
                timer_armed = false;
                // Frozen means failed: a server that connected but did not answer the client
                // in time gets no new connections until a health check passes.
                for r in &racers {
                    r.up.backend().mark_passive_failure(
                        PassiveFailure::FirstByteTimeout,
                        &format!(
                            "no answer to a client within {}",
                            humantime::format_duration(s.first_byte_timeout)
                        ),
                    );
                }
                if let Some(mut c) = candidates.take() {
                    crate::proxy::balance::rank(c.make_contiguous());
                    pending = Some(Box::pin(connect_race(c, s)));
                }
            }
            Event::Connected(up, rest) => {
                candidates = Some(rest);
                if let Ok(up) = up {
                    if pinned {
                        // The client said too much meanwhile to replay: not usable.
                        drop(up);
                    } else if write_all(&up.stream, &replay).await.is_ok() {
                        metrics.replayed.inc();
                        tracing::debug!(server = %up.backend().name, bytes = replay.len(),
                            "replayed the client's first bytes to the next server");
                        if client_eof {
                            socket::shutdown_write(&up.stream);
                        }
                        racers.push(Racer::new(up));
                        timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + s.first_byte_timeout);
                        timer_armed = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Connect racing and first-byte racing against loopback servers of the test's own.
    use super::*;
    use crate::server::{ServerSpec, State};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn settings() -> RaceSettings {
        RaceSettings {
            connect_timeout: Duration::from_secs(2),
            race_delay: Duration::from_millis(200),
            first_byte_timeout: Duration::from_millis(100),
            replay_limit: 16 * 1024,
            client_hello_timeout: None,
        }
    }

    fn backend(port: u16, metrics: &Arc<Metrics>) -> Arc<Backend> {
        let spec = ServerSpec::parse(&format!("127.0.0.1:{port}")).unwrap();
        Arc::new(Backend::new(
            spec,
            &CancellationToken::new(),
            metrics.clone(),
            State::Ready,
        ))
    }

    /// The apilb side of a client connection.
    async fn client_side() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, _) = l.accept().await.unwrap();
        (client, ours)
    }

    /// A server that reads `expect` bytes, hands them over, then answers `answer` (or, with
    /// `None`, never answers).
    async fn server(
        expect: usize,
        answer: Option<&'static [u8]>,
    ) -> (u16, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; expect];
            s.read_exact(&mut got).await.unwrap();
            let _ = tx.send(got);
            match answer {
                Some(a) => s.write_all(a).await.unwrap(),
                None => std::future::pending::<()>().await,
            }
            std::future::pending::<()>().await;
        });
        (port, rx)
    }

    /// A port with nothing listening: connects are refused at once.
    async fn refusing_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_refused_server_is_passed_over_and_marked() {
        let m = Arc::new(Metrics::new());
        let refused = backend(refusing_port().await, &m);
        let (port, got) = server(4, Some(b"pong")).await;
        let good = backend(port, &m);
        let (_client, ours) = client_side().await;
        let e = establish(
            &ours,
            b"ping".to_vec(),
            false,
            vec![refused.clone(), good.clone()],
            settings(),
            &m,
        )
        .await
        .expect("the second server answers");
        assert!(Arc::ptr_eq(e.upstream.backend(), &good));
        assert_eq!(e.first_bytes, b"pong");
        assert_eq!(good.metrics.bytes_to_server.get(), 4);
        assert_eq!(got.await.unwrap(), b"ping");
        assert!(refused.passive_failed(), "the refusing server is marked");
        assert!(!good.passive_failed());
    }

    #[tokio::test]
    async fn a_silent_first_server_loses_the_first_byte_race() {
        let m = Arc::new(Metrics::new());
        let hello = b"\x16\x03\x01 a complete hello".to_vec();
        let (silent_port, silent_got) = server(hello.len(), None).await;
        let (port, replayed) = server(hello.len(), Some(b"\x16\x03\x03 answer")).await;
        let silent = backend(silent_port, &m);
        let good = backend(port, &m);
        let (_client, ours) = client_side().await;
        let e = establish(
            &ours,
            hello.clone(),
            true,
            vec![silent.clone(), good.clone()],
            settings(),
            &m,
        )
        .await
        .expect("the second server answers");
        assert!(Arc::ptr_eq(e.upstream.backend(), &good));
        assert_eq!(e.first_bytes, b"\x16\x03\x03 answer");
        assert_eq!(
            good.metrics.bytes_to_server.get(),
            hello.len() as u64,
            "the replayed hello is counted, for the server committed to"
        );
        assert_eq!(silent.metrics.bytes_to_server.get(), 0);
        // Both servers got the hello: the first as sent, the second as replayed.
        assert_eq!(silent_got.await.unwrap(), hello);
        assert_eq!(replayed.await.unwrap(), hello);
        assert!(silent.passive_failed(), "the silent server is marked");
        assert_eq!(m.replayed.get(), 1);
    }
}
