//! Active health checks: what apilb *observes* of each server. What an observation means is
//! `judge`'s call; whether a silent server's connections are closed is the set's
//! (`Backends::silent`).
//!
//! One persistent TLS connection per server, verified against the cluster CA. Over HTTP/2
//! (what kube-apiserver negotiates) a PING every `ping_interval` proves liveness — answered by
//! the apiserver's HTTP/2 stack without running a handler, authentication or etcd — and
//! `GET /readyz` every `readyz_interval` (±10% jitter, so a fleet of nodes never probes in
//! lockstep; every second while a server is not ready) carries readiness. A server that does
//! not negotiate h2 is checked with HTTP/1.1 keep-alive /readyz alone, which then is the
//! liveness probe too.
//!
//! Which observation leads to which state (the table is `judge`'s unit tests):
//!
//! | observation | state | its client connections |
//! |---|---|---|
//! | PING unanswered `fall` windows in a row; TCP connect, TLS or HTTP/2 handshake timed out `fall` times; no route to host | `down` (silent) | closed, once another ready server has answered a PING asked after the silence began |
//! | GOAWAY on the health connection; the health connection closed (FIN) or reset; connect refused | `draining` (said it is leaving) | left to the server to finish |
//! | `/readyz` non-2xx; `/readyz` timed out while PINGs are answered; TLS handshake failed; not HTTP | `not_ready` | left alone |
//! | `/readyz` 2xx (or 401/403, with a one-time warning) `rise` times | `ready` | — |
//! | a PING answered late, on the same connection, after `down` | back to where it was | — |
//!
//! Why: a server that goes silent is a dead host, a partition or a frozen process, and its
//! connections are dead too: closing them is what makes clients fail over in seconds instead
//! of client-go's 45. A server that *speaks* — kube-apiserver's graceful shutdown fails
//! `/readyz`, closes its listener, sends GOAWAY and lets open requests and watches finish — is
//! best left to finish, as nginx and HAProxy do. A PING window follows the server's own
//! round-trip time (`judge::Rtt`), never below `--health-ping-timeout`.
//!
//! Reconnects pause about a PING interval (with jitter) after every ended or failed
//! connection; the one exception is a single immediate reconnect after a GOAWAY, which is not
//! always a shutdown (`--goaway-chance` rebalancing): a 2xx `/readyz` on the new connection
//! brings the server back within about a second.
//!
//! Owns no client connection; acts only through `Backend` and `Backends`.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::sleep_until;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::HealthSettings;
use crate::control::backend::{Backend, Backends, State};
use crate::control::goaway;
use crate::control::judge::{describe, Cause, Judge, Observation};
use crate::socket;

mod cause;
use cause::{h2_cause, hyper_cause, io_cause};

/// How often /readyz is asked while a server is not ready (HAProxy's `fastinter`).
const FAST_INTERVAL: Duration = Duration::from_secs(1);
/// How long a silent server's health connection is kept for a late answer before it is
/// given up and dialled again, in health timeouts (4 s by default: a spike's late answer
/// comes within it; a dead peer's connection is not held while TCP backs off).
const LATE_ANSWER_TIMEOUTS: u32 = 2;
/// The most of a `/readyz` answer's body that is read (kube-apiserver's is a few KiB even
/// with `?verbose`); more is a protocol failure, never a buffer.
const READYZ_BODY_LIMIT: usize = 64 * 1024;

pub struct HealthContext {
    pub tls: Arc<ClientConfig>,
    pub settings: HealthSettings,
    pub tls_server_name: Option<String>,
    /// The set, for closing a silent server's connections once another one answers.
    pub set: Arc<Backends>,
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

/// How a check connection ended (or why none could be made).
#[derive(Debug)]
pub enum Ending {
    /// To be judged: the cause, and the detail (an OS or protocol error) for the log.
    Cause(Cause, String),
    /// The outstanding PING was never answered: silence already judged, connection given up.
    GaveUp,
}

impl Ending {
    fn of(cause: Cause, detail: impl Into<String>) -> Ending {
        Ending::Cause(cause, detail.into())
    }
}

/// One server's judge and the side effects of its verdicts.
struct Checker<'a> {
    b: &'a Arc<Backend>,
    set: &'a Backends,
    s: HealthSettings,
    judge: Judge,
    /// Answers seen on the current connection.
    answers: u32,
}

impl<'a> Checker<'a> {
    fn new(b: &'a Arc<Backend>, set: &'a Backends, s: HealthSettings) -> Checker<'a> {
        Checker {
            b,
            set,
            s,
            judge: Judge::new(s.fall, s.rise, s.ping_timeout, s.timeout),
            answers: 0,
        }
    }

    /// Judges `obs`, asked at `asked` (a PING's or request's send time, or when a connect
    /// began), and applies the verdict.
    fn apply(&mut self, obs: Observation, asked: Instant) -> State {
        let b = self.b;
        let v = self.judge.observe(b.state(), obs);
        b.observe(|o| o.last_check = Some(SystemTime::now()));
        if let Some(cause) = v.failure {
            b.count_failure(cause);
            tracing::debug!(server = %b.name, ?cause, "health check failed");
        }
        if v.warn_auth {
            if let Observation::Readyz(status) = obs {
                tracing::warn!(server = %b.name, status,
                    "/readyz refused the health check ({status}); treating the server as \
                     ready while it is reachable. Fix: give apilb a client certificate \
                     (--health-client-cert/--health-client-key), or allow anonymous \
                     access to /readyz (kube-apiserver --anonymous-auth with the default \
                     system:public-info-viewer binding)");
            }
        }
        if let Some((to, why)) = &v.to {
            self.set.set_state(b, *to, why);
        }
        let now = b.state();
        match obs {
            Observation::Answered { .. } => {
                self.answers += 1;
                if v.on_time {
                    b.clear_passive_failure(asked);
                    self.set.answered(b, asked);
                } else {
                    self.set.late(b, asked);
                    self.set.spoke(b);
                }
            }
            Observation::Readyz(status) => {
                self.answers += 1;
                self.set.spoke(b);
                b.observe(|o| o.readyz_status = Some(status));
                tracing::debug!(server = %b.name, status, "/readyz answered");
                if matches!(status, 200..=299 | 401 | 403) {
                    b.clear_passive_failure(asked);
                }
            }
            Observation::Unanswered => {
                self.set.late(b, asked);
                if now == State::Down {
                    self.set.silent(b, asked);
                }
            }
            Observation::ReadyzTimeout => {}
            Observation::Ended(cause) => {
                if cause.is_silence() {
                    if now == State::Down {
                        self.set.silent(b, asked);
                    }
                } else {
                    self.set.spoke(b);
                }
                // A failure that changed nothing still tells why a server that is not ready
                // stays so; a ready server keeps the reason it became ready for.
                if v.to.is_none() && !matches!(now, State::Ready | State::Unknown) {
                    b.observe(|o| o.reason = describe(cause));
                }
            }
        }
        now
    }
}

/// Checks one server until it leaves the set.
pub async fn run(b: Arc<Backend>, ctx: Arc<HealthContext>) {
    let mut c = Checker::new(&b, &ctx.set, ctx.settings);
    let retired = b.retired().clone();
    // One immediate reconnect after a GOAWAY; earned back by a connection that answered.
    let mut may_rush = true;
    loop {
        let asked = Instant::now();
        let attempt = tokio::select! {
            () = retired.cancelled() => return,
            r = connect(&b, &ctx) => r,
        };
        let rush = match attempt {
            Err(ending) => {
                end(&mut c, ending, asked);
                false
            }
            Ok(tls) => {
                ctx.set.spoke(&b);
                c.answers = 0;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let ending = tokio::select! {
                    () = retired.cancelled() => return,
                    e = check(tls, h2, &mut c) => e,
                };
                if c.answers > 0 {
                    may_rush = true;
                }
                let goaway = matches!(ending, Ending::Cause(Cause::goaway, _));
                end(&mut c, ending, asked);
                goaway && std::mem::replace(&mut may_rush, false)
            }
        };
        if !rush {
            tokio::select! {
                () = retired.cancelled() => return,
                () = tokio::time::sleep(jitter(ctx.settings.ping_interval)) => {}
            }
        }
    }
}

fn end(c: &mut Checker<'_>, ending: Ending, asked: Instant) {
    match ending {
        Ending::Cause(cause, detail) => {
            tracing::debug!(server = %c.b.name, ?cause, %detail, "health connection ended");
            c.apply(Observation::Ended(cause), asked);
        }
        Ending::GaveUp => {
            tracing::debug!(server = %c.b.name, "no late answer either: health connection given up");
            c.apply(Observation::Ended(Cause::ping_timeout), asked);
        }
    }
}

/// One check connection over `io` (a server's decrypted stream: HTTP/2 when `h2`, else
/// HTTP/1.1), judged as `run` judges it, until it ends; returns how it ended. Whatever the
/// server sends, the check ends with a reason and a state, never a panic (the fuzz target
/// `readyz_answer` holds it to that).
pub async fn check_once<T>(io: T, h2: bool, b: &Arc<Backend>, s: HealthSettings) -> Ending
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let set = Backends::new(
        tokio_util::sync::CancellationToken::new(),
        Arc::new(crate::metrics::Metrics::new()),
    );
    let mut c = Checker::new(b, &set, s);
    let ending = check(io, h2, &mut c).await;
    let judged = match &ending {
        Ending::Cause(cause, detail) => Ending::Cause(*cause, detail.clone()),
        Ending::GaveUp => Ending::GaveUp,
    };
    end(&mut c, judged, Instant::now());
    ending
}

async fn check<T>(io: T, h2: bool, c: &mut Checker<'_>) -> Ending
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        check_h2(io, c).await
    } else {
        check_h1(io, c).await
    }
}

async fn connect(b: &Backend, ctx: &HealthContext) -> Result<TlsStream<TcpStream>, Ending> {
    if b.needs_resolution() {
        if let Err(e) = b.resolve().await {
            if b.addrs().is_empty() {
                return Err(Ending::of(Cause::unreachable, e.to_string()));
            }
            tracing::debug!(server = %b.name, error = %e, "keeping the last resolved addresses");
        }
    }
    let Some(addr) = b.addrs().first().copied() else {
        return Err(Ending::of(
            Cause::unreachable,
            format!("{} has no address", b.spec.host),
        ));
    };
    let name = crate::control::tls::server_name(&b.spec.host, ctx.tls_server_name.as_deref())
        .map_err(|e| Ending::of(Cause::tls, e.to_string()))?;
    let timeout = ctx.settings.timeout;
    let mut connected = false;
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            let cause = match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::ConnectionRefused, _) => Cause::refused,
                (io::ErrorKind::TimedOut, _) => Cause::connect_timeout,
                (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH)) => Cause::unreachable,
                _ => Cause::reset,
            };
            Ending::of(cause, format!("connect to {addr}: {e}"))
        })?;
        connected = true;
        socket::tune_upstream(&tcp);
        TlsConnector::from(ctx.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let cause = match e.kind() {
                    io::ErrorKind::InvalidData => Cause::tls,
                    _ => io_cause(&e),
                };
                Ending::of(cause, format!("TLS handshake with {addr}: {e}"))
            })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            let within = humantime::format_duration(timeout);
            Err(if connected {
                Ending::of(
                    Cause::handshake_timeout,
                    format!("no TLS handshake with {addr} within {within}"),
                )
            } else {
                Ending::of(
                    Cause::connect_timeout,
                    format!("no TCP connection to {addr} within {within}"),
                )
            })
        }
    }
}

/// A server whose address makes no `/readyz` URI (a host `ServerSpec` let through).
#[derive(Debug, thiserror::Error)]
#[error("bad /readyz URI for {spec}: {source}")]
struct ReadyzUriError {
    spec: String,
    source: http::uri::InvalidUri,
}

fn readyz_uri(b: &Backend) -> Result<Uri, ReadyzUriError> {
    format!("https://{}/readyz", b.spec)
        .parse()
        .map_err(|source| ReadyzUriError {
            spec: b.spec.to_string(),
            source,
        })
}

/// A /readyz over HTTP/2: its status, or the error that ended it (None: timed out).
async fn readyz_h2(
    sender: h2::client::SendRequest<Bytes>,
    uri: Uri,
    timeout: Duration,
) -> Result<u16, Option<h2::Error>> {
    let work = async {
        let mut sender = sender.ready().await?;
        // Cannot fail: the URI is already parsed.
        let req = Request::get(uri)
            .body(())
            .map_err(|_| h2::Error::from(h2::Reason::INTERNAL_ERROR))?;
        let (resp, _) = sender.send_request(req, true)?;
        let resp = resp.await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok::<_, h2::Error>(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(Some),
        Err(_) => Err(None),
    }
}

/// HTTP/2: PING for liveness, /readyz for readiness, frames watched for GOAWAY.
async fn check_h2<T>(io: T, c: &mut Checker<'_>) -> Ending
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let b = c.b;
    let s = c.s;
    let uri = match readyz_uri(b) {
        Ok(u) => u,
        Err(e) => return Ending::of(Cause::protocol, e.to_string()),
    };
    let (io, goaway) = goaway::watch(io);
    let (sender, mut conn) = match tokio::time::timeout(s.timeout, h2::client::handshake(io)).await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return Ending::of(
                h2_cause(&e, goaway.is_set()),
                format!("HTTP/2 handshake: {e}"),
            )
        }
        Err(_) => return Ending::of(Cause::handshake_timeout, "HTTP/2 handshake timed out"),
    };
    let Some(mut ping) = conn.ping_pong() else {
        return Ending::of(Cause::protocol, "HTTP/2 PING unavailable");
    };
    b.observe(|o| o.protocol = Some("h2"));
    type Probe =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, Option<h2::Error>>> + Send>>;
    let mut readyz: Option<(Probe, Instant)> = None;
    let mut next_readyz = Instant::now();
    let mut next_ping = Instant::now() + s.ping_interval;
    let mut ping_sent: Option<Instant> = None;
    let mut ping_deadline = Instant::now();

    loop {
        tokio::select! {
            // Answers are judged before the end of the connection they came on.
            biased;
            res = async { match readyz.as_mut() { Some((f, _)) => f.await, None => std::future::pending().await } } => {
                let asked = readyz.take().map_or_else(Instant::now, |(_, t)| t);
                match res {
                    Ok(status) => {
                        let latency = asked.elapsed();
                        b.metrics.readyz_seconds.observe(latency.as_secs_f64());
                        b.observe(|o| o.readyz_latency = Some(latency));
                        c.apply(Observation::Readyz(status), asked);
                    }
                    Err(None) => {
                        c.apply(Observation::ReadyzTimeout, asked);
                    }
                    Err(Some(e)) => {
                        return Ending::of(h2_cause(&e, goaway.is_set()),
                            format!("/readyz request failed: {e}"));
                    }
                }
                let every = if b.state() == State::Ready {
                    s.readyz_interval
                } else {
                    FAST_INTERVAL.min(s.readyz_interval)
                };
                next_readyz = Instant::now() + jitter(every);
            }
            pong = std::future::poll_fn(|cx| ping.poll_pong(cx)), if ping_sent.is_some() => {
                if let Err(e) = pong {
                    return Ending::of(h2_cause(&e, goaway.is_set()), format!("HTTP/2 PING failed: {e}"));
                }
                let sent = ping_sent.take().unwrap_or_else(Instant::now);
                let rtt = sent.elapsed();
                b.metrics.ping_seconds.observe(rtt.as_secs_f64());
                b.observe(|o| o.ping_rtt = Some(rtt));
                c.apply(Observation::Answered { rtt }, sent);
                next_ping = (sent + s.ping_interval).max(Instant::now());
            }
            () = goaway.wait() => {
                return Ending::of(Cause::goaway, "GOAWAY on the health connection");
            }
            r = &mut conn => {
                return match r {
                    Ok(()) if goaway.is_set() => Ending::of(Cause::goaway, "GOAWAY, then closed"),
                    Ok(()) => Ending::of(Cause::closed, "health connection closed by the server"),
                    Err(e) => Ending::of(h2_cause(&e, goaway.is_set()),
                        format!("health connection lost: {e}")),
                };
            }
            () = sleep_until(next_readyz.into()), if readyz.is_none() => {
                readyz = Some((Box::pin(readyz_h2(sender.clone(), uri.clone(), s.timeout)), Instant::now()));
            }
            () = sleep_until(ping_deadline.into()), if ping_sent.is_some() => {
                let sent = ping_sent.unwrap_or_else(Instant::now);
                c.apply(Observation::Unanswered, sent);
                if sent.elapsed() >= s.timeout * LATE_ANSWER_TIMEOUTS {
                    return Ending::GaveUp;
                }
                // Still outstanding: a late answer is an answer.
                ping_deadline = Instant::now() + c.judge.window();
            }
            () = sleep_until(next_ping.into()), if ping_sent.is_none() => {
                if let Err(e) = ping.send_ping(h2::Ping::opaque()) {
                    return Ending::of(h2_cause(&e, goaway.is_set()), format!("HTTP/2 PING failed: {e}"));
                }
                let now = Instant::now();
                ping_sent = Some(now);
                ping_deadline = now + c.judge.window();
            }
        }
    }
}

/// HTTP/1.1 keep-alive: /readyz is both the liveness and the readiness probe.
async fn check_h1<T>(io: T, c: &mut Checker<'_>) -> Ending
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Empty, Limited};
    let b = c.b;
    let s = c.s;
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) =
        match tokio::time::timeout(s.timeout, hyper::client::conn::http1::handshake(io)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Ending::of(Cause::protocol, format!("HTTP/1.1 handshake: {e}")),
            Err(_) => return Ending::of(Cause::handshake_timeout, "HTTP/1.1 handshake timed out"),
        };
    b.observe(|o| o.protocol = Some("http/1.1"));
    tokio::pin!(conn);
    let authority = b.spec.to_string();
    let ended = |r: Result<(), hyper::Error>| match r {
        Ok(()) => Ending::of(Cause::closed, "health connection closed by the server"),
        Err(e) => Ending::of(hyper_cause(&e), format!("health connection lost: {e}")),
    };
    loop {
        let asked = Instant::now();
        let req = match Request::get("/readyz")
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => return Ending::of(Cause::protocol, format!("bad /readyz request: {e}")),
        };
        let probe = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Ending::of(hyper_cause(&e), format!("/readyz request failed: {e}")))?;
            let status = resp.status().as_u16();
            Limited::new(resp.into_body(), READYZ_BODY_LIMIT)
                .collect()
                .await
                .map_err(|e| {
                    let cause = match e.downcast_ref::<hyper::Error>() {
                        Some(h) => hyper_cause(h),
                        None => Cause::oversized, // over READYZ_BODY_LIMIT
                    };
                    Ending::of(cause, format!("/readyz body: {e}"))
                })?;
            Ok::<_, Ending>(status)
        };
        tokio::pin!(probe);
        let mut deadline = asked + s.timeout;
        let res = loop {
            tokio::select! {
                // An answer is judged before the end of the connection it came on.
                biased;
                r = &mut probe => break r,
                r = &mut conn => {
                    // The connection may have ended because of what it read for the probe
                    // (a response head too large): the probe's error says what happened,
                    // the connection's end only that it closed.
                    if let std::task::Poll::Ready(Err(ending)) =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(probe.as_mut(), cx))).await
                    {
                        return ending;
                    }
                    return ended(r);
                }
                () = sleep_until(deadline.into()) => {
                    c.apply(Observation::Unanswered, asked);
                    if asked.elapsed() >= s.timeout * LATE_ANSWER_TIMEOUTS {
                        return Ending::GaveUp;
                    }
                    deadline = Instant::now() + s.timeout;
                }
            }
        };
        match res {
            Ok(status) => {
                let latency = asked.elapsed();
                b.metrics.readyz_seconds.observe(latency.as_secs_f64());
                b.observe(|o| o.readyz_latency = Some(latency));
                c.apply(Observation::Answered { rtt: latency }, asked);
                c.apply(Observation::Readyz(status), asked);
            }
            Err(ending) => return ending,
        }
        let every = if b.state() == State::Ready {
            s.readyz_interval
        } else {
            FAST_INTERVAL.min(s.readyz_interval)
        };
        let next = Instant::now() + jitter(every);
        tokio::select! {
            r = &mut conn => return ended(r),
            () = sleep_until(next.into()) => {}
        }
    }
}
