//! Active health checks: where a server's health is decided.
//!
//! One persistent TLS connection per server, verified against the cluster CA. Over HTTP/2
//! (what kube-apiserver negotiates) a PING every `ping_interval` proves liveness — answered by
//! the apiserver's HTTP/2 stack without running a handler, authentication or etcd — and
//! `GET /readyz` every `readyz_interval` (±10% jitter, so a fleet of nodes never probes in
//! lockstep; every second while a server is not ready) carries readiness. A server that does
//! not negotiate h2 is checked with HTTP/1.1 keep-alive /readyz alone, which then is the
//! liveness probe too.
//!
//! The verdicts (`Judge`):
//! * liveness failures — a PING unanswered within `ping_timeout`, connect/TLS failure or
//!   timeout, the check connection lost — count up; `fall` consecutive ones (one, while the
//!   server was never seen healthy) make it **down**, which closes every client connection
//!   pinned to it. One late PING never does;
//! * /readyz 2xx counts toward `rise` consecutive successes (one at startup) → **ready**;
//! * /readyz 401/403: reachable, so treated as ready, with a one-time warning naming the fix;
//! * any other /readyz answer, or a /readyz timeout over a live connection → **not ready** at
//!   once: it only steers new connections away, existing ones are left to the apiserver.
//!
//! Owns no client connection; acts only through `Backend::set_state`.

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

use crate::backend::{Backend, State};
use crate::config::HealthSettings;
use crate::socket;

/// How often /readyz is asked while a server is not ready (HAProxy's `fastinter`).
const FAST_INTERVAL: Duration = Duration::from_secs(1);

pub struct HealthContext {
    pub tls: Arc<ClientConfig>,
    pub settings: HealthSettings,
    pub tls_server_name: Option<String>,
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

/// The consecutive-result counters and the decisions they lead to.
struct Judge {
    live_failures: u32,
    ready_successes: u32,
    warned_auth: bool,
    fall: u32,
    rise: u32,
}

impl Judge {
    fn new(s: &HealthSettings) -> Judge {
        Judge {
            live_failures: 0,
            ready_successes: 0,
            warned_auth: false,
            fall: s.fall,
            rise: s.rise,
        }
    }

    fn live_failure(&mut self, b: &Backend, why: &str) {
        self.live_failures += 1;
        self.ready_successes = 0;
        let state = b.state();
        let fall = if state == State::Unknown {
            1
        } else {
            self.fall
        };
        b.observe(|o| o.last_check = Some(SystemTime::now()));
        if state == State::Down {
            b.observe(|o| o.reason = why.to_string());
        } else if self.live_failures >= fall {
            b.set_state(State::Down, why);
        } else {
            tracing::debug!(server = %b.name, failures = self.live_failures, cause = why,
                "liveness check failed");
        }
    }

    fn live_success(&mut self) {
        self.live_failures = 0;
    }

    fn readyz(&mut self, b: &Backend, status: u16) {
        self.live_failures = 0;
        b.observe(|o| {
            o.last_check = Some(SystemTime::now());
            o.readyz_status = Some(status);
        });
        let state = b.state();
        tracing::debug!(server = %b.name, status, "/readyz answered");
        match status {
            200..=299 | 401 | 403 => {
                if status >= 400 && !self.warned_auth {
                    self.warned_auth = true;
                    tracing::warn!(server = %b.name, status,
                        "/readyz refused the health check ({status}); treating the server as \
                         ready while it is reachable. Fix: give apilb a client certificate \
                         (--health-client-cert/--health-client-key), or allow anonymous \
                         access to /readyz (kube-apiserver --anonymous-auth with the default \
                         system:public-info-viewer binding)");
                }
                b.clear_passive_failure();
                self.ready_successes += 1;
                let need = if state == State::Unknown {
                    1
                } else {
                    self.rise
                };
                if state != State::Ready && self.ready_successes >= need {
                    let why = if status < 400 {
                        format!("/readyz answered {status}")
                    } else {
                        format!("reachable; /readyz answered {status} (readiness unknown)")
                    };
                    b.set_state(State::Ready, &why);
                }
            }
            _ => {
                self.ready_successes = 0;
                b.set_state(State::NotReady, &format!("/readyz answered {status}"));
            }
        }
    }

    fn readyz_timeout(&mut self, b: &Backend) {
        self.ready_successes = 0;
        if b.state() != State::Down {
            b.set_state(State::NotReady, "/readyz timed out");
        }
    }

    fn next_readyz(&self, b: &Backend, s: &HealthSettings) -> Instant {
        let every = if b.state() == State::Ready {
            s.readyz_interval
        } else {
            FAST_INTERVAL.min(s.readyz_interval)
        };
        Instant::now() + jitter(every)
    }
}

/// Checks one server until it leaves the set.
pub async fn run(b: Arc<Backend>, ctx: Arc<HealthContext>) {
    let mut judge = Judge::new(&ctx.settings);
    let retired = b.retired().clone();
    loop {
        let attempt = tokio::select! {
            () = retired.cancelled() => return,
            r = connect(&b, &ctx) => r,
        };
        let ended = match attempt {
            Err(why) => {
                judge.live_failure(&b, &why);
                // Retry a failed server about once per PING interval.
                tokio::select! {
                    () = retired.cancelled() => return,
                    () = tokio::time::sleep(jitter(ctx.settings.ping_interval)) => {}
                }
                continue;
            }
            Ok(tls) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                tokio::select! {
                    () = retired.cancelled() => return,
                    why = check(tls, h2, &b, ctx.settings, &mut judge) => why,
                }
            }
        };
        judge.live_failure(&b, &ended);
    }
}

/// One check connection over `io` (a server's decrypted stream: HTTP/2 when `h2`, else
/// HTTP/1.1), judged as `run` judges it, until it ends; returns why it ended. Whatever the
/// server sends, the check ends with a reason and a state, never a panic (the fuzz target
/// `readyz_answer` holds it to that).
pub async fn check_once<T>(io: T, h2: bool, b: &Backend, s: HealthSettings) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    check(io, h2, b, s, &mut Judge::new(&s)).await
}

/// One check connection, judged by `judge`, until it ends; returns why it ended.
async fn check<T>(io: T, h2: bool, b: &Backend, s: HealthSettings, judge: &mut Judge) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        check_h2(io, b, s, judge).await
    } else {
        check_h1(io, b, s, judge).await
    }
}

async fn connect(b: &Backend, ctx: &HealthContext) -> Result<TlsStream<TcpStream>, String> {
    if b.needs_resolution() {
        if let Err(e) = b.resolve().await {
            if b.addrs().is_empty() {
                return Err(e);
            }
            tracing::debug!(server = %b.name, error = %e, "keeping the last resolved addresses");
        }
    }
    let addr = *b
        .addrs()
        .first()
        .ok_or_else(|| format!("{} has no address", b.spec.host))?;
    let name = crate::tls::server_name(&b.spec.host, ctx.tls_server_name.as_deref())?;
    let timeout = ctx.settings.timeout;
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        socket::tune_upstream(&tcp);
        TlsConnector::from(ctx.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no TCP/TLS connection to {addr} within {}",
            humantime::format_duration(timeout)
        )),
    }
}

fn readyz_uri(b: &Backend) -> Result<Uri, String> {
    format!("https://{}/readyz", b.spec)
        .parse()
        .map_err(|e| format!("bad /readyz URI for {}: {e}", b.spec))
}

async fn readyz_h2(
    sender: h2::client::SendRequest<Bytes>,
    uri: Uri,
    timeout: Duration,
) -> Result<(u16, Duration), Option<String>> {
    let start = Instant::now();
    let work = async {
        let mut sender = sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(uri).body(()).map_err(|e| e.to_string())?;
        let (resp, _) = sender.send_request(req, true).map_err(|e| e.to_string())?;
        let resp = resp.await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) => Ok((status, start.elapsed())),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// HTTP/2: PING for liveness, /readyz for readiness. Returns why the connection ended.
async fn check_h2<T>(tls: T, b: &Backend, s: HealthSettings, judge: &mut Judge) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let uri = match readyz_uri(b) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let (sender, mut conn) = match tokio::time::timeout(s.timeout, h2::client::handshake(tls)).await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return format!("HTTP/2 handshake: {e}"),
        Err(_) => return "HTTP/2 handshake timed out".to_string(),
    };
    let Some(mut ping) = conn.ping_pong() else {
        return "HTTP/2 PING unavailable".to_string();
    };
    b.observe(|o| o.protocol = Some("h2"));
    type Probe = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(u16, Duration), Option<String>>> + Send>,
    >;
    let mut readyz: Option<Probe> = None;
    let mut next_readyz = Instant::now();
    let mut next_ping = Instant::now() + s.ping_interval;
    let mut ping_sent: Option<Instant> = None;
    let mut ping_deadline = Instant::now();

    loop {
        tokio::select! {
            r = &mut conn => {
                return match r {
                    Ok(()) => "health connection closed by the server".to_string(),
                    Err(e) => format!("health connection lost: {e}"),
                };
            }
            res = async { match readyz.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                readyz = None;
                match res {
                    Ok((status, latency)) => {
                        b.metrics.readyz_seconds.observe(latency.as_secs_f64());
                        b.observe(|o| o.readyz_latency = Some(latency));
                        judge.readyz(b, status);
                    }
                    Err(None) => judge.readyz_timeout(b),
                    Err(Some(e)) => return format!("/readyz request failed: {e}"),
                }
                next_readyz = judge.next_readyz(b, &s);
            }
            () = sleep_until(next_readyz.into()), if readyz.is_none() => {
                readyz = Some(Box::pin(readyz_h2(sender.clone(), uri.clone(), s.timeout)));
            }
            pong = std::future::poll_fn(|cx| ping.poll_pong(cx)), if ping_sent.is_some() => {
                if let Err(e) = pong {
                    return format!("HTTP/2 PING failed: {e}");
                }
                let sent = ping_sent.take().unwrap_or_else(Instant::now);
                let rtt = sent.elapsed();
                b.metrics.ping_seconds.observe(rtt.as_secs_f64());
                b.observe(|o| o.ping_rtt = Some(rtt));
                judge.live_success();
                next_ping = sent + s.ping_interval;
            }
            () = sleep_until(ping_deadline.into()), if ping_sent.is_some() => {
                let why = format!(
                    "no answer to HTTP/2 PING within {}",
                    humantime::format_duration(s.ping_timeout)
                );
                judge.live_failure(b, &why);
                if b.state() == State::Down {
                    return why;
                }
                // The PING is still outstanding: give it another window.
                ping_deadline = Instant::now() + s.ping_timeout;
            }
            () = sleep_until(next_ping.into()), if ping_sent.is_none() => {
                if let Err(e) = ping.send_ping(h2::Ping::opaque()) {
                    return format!("HTTP/2 PING failed: {e}");
                }
                let now = Instant::now();
                ping_sent = Some(now);
                ping_deadline = now + s.ping_timeout;
            }
        }
    }
}

/// HTTP/1.1 keep-alive: /readyz is both the liveness and the readiness probe.
async fn check_h1<T>(tls: T, b: &Backend, s: HealthSettings, judge: &mut Judge) -> String
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Empty};
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) =
        match tokio::time::timeout(s.timeout, hyper::client::conn::http1::handshake(io)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return format!("HTTP/1.1 handshake: {e}"),
            Err(_) => return "HTTP/1.1 handshake timed out".to_string(),
        };
    b.observe(|o| o.protocol = Some("http/1.1"));
    tokio::pin!(conn);
    let authority = b.spec.to_string();
    loop {
        let start = Instant::now();
        let req = match Request::get("/readyz")
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => return format!("bad /readyz request: {e}"),
        };
        let probe = async {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(status)
        };
        let res = tokio::select! {
            r = &mut conn => return match r {
                Ok(()) => "health connection closed by the server".to_string(),
                Err(e) => format!("health connection lost: {e}"),
            },
            r = tokio::time::timeout(s.timeout, probe) => r,
        };
        match res {
            Ok(Ok(status)) => {
                let latency = start.elapsed();
                b.metrics.readyz_seconds.observe(latency.as_secs_f64());
                b.observe(|o| o.readyz_latency = Some(latency));
                judge.readyz(b, status);
            }
            Ok(Err(e)) => return format!("/readyz request failed: {e}"),
            Err(_) => return "/readyz timed out".to_string(),
        }
        let next = judge.next_readyz(b, &s);
        tokio::select! {
            r = &mut conn => return match r {
                Ok(()) => "health connection closed by the server".to_string(),
                Err(e) => format!("health connection lost: {e}"),
            },
            () = sleep_until(next.into()) => {}
        }
    }
}
