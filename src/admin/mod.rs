//! The loopback admin endpoint (HTTP/1.1): `/healthz` (the process is alive), `/readyz`
//! (200 only when at least one server is ready), `/metrics` (Prometheus text) and `/status`
//! (JSON: the process's phase, every server's state, cause, last check, latencies and
//! connections, the servers' recent state changes, the last reload of the configuration and
//! the settings in effect). Read-only: nothing here changes what the proxy does.
//!
//! Runs on a thread of its own with at most `MAX_CONNECTIONS` connections (more are
//! closed at once), so a flood of admin requests can delay neither the health checks (main
//! thread) nor client traffic (workers).

pub mod client;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::control::backend::{Backend, Backends};
use crate::control::discovery::{Discovery, DiscoveryStatus};
use crate::log_limit::LogLimit;
use crate::metrics::{Listener, Metrics};
use crate::proxy::Proxy;
use crate::reload::ReloadStatus;
use crate::transitions::Transition;

/// Most concurrent admin connections; more are closed at once (Prometheus, a probe and
/// `apilb status` need a handful).
pub const MAX_CONNECTIONS: usize = 64;
/// A failed accept is retried after this, doubling each time up to `ACCEPT_BACKOFF_MAX`…
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// …and logged at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Admin {
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    pub proxy: Arc<Proxy>,
    pub discovery: Option<Arc<Discovery>>,
    pub started: SystemTime,
    pub reload: Arc<crate::reload::State>,
    /// A `Phase`, set by the lifecycle (`run`) through `set_phase`.
    pub phase: AtomicU8,
}

/// Where the process is in its life (`/status` `phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Serving.
    Running = 0,
    /// SIGTERM or SIGINT: no new connections; open ones finish within the drain grace.
    Draining = 1,
    /// The drain is over: what is left is being closed, then the process exits.
    Closing = 2,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Closing => "closing",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Draining,
            2 => Phase::Closing,
            _ => Phase::Running,
        }
    }
}

/// `/status`, also read by `apilb status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// `running`, `draining` or `closing` (`Phase`).
    #[serde(default)]
    pub phase: String,
    pub ready: bool,
    pub version: String,
    pub uptime_seconds: u64,
    pub client_connections: usize,
    pub servers: Vec<ServerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// The last reload of the configuration, and what waits for a restart.
    #[serde(default)]
    pub reload: ReloadStatus,
    /// The settings in effect, by config-file key.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
    /// The servers' last state changes, oldest first, numbered (`seq`) so that a poller
    /// can tell the new ones and see a gap.
    #[serde(default)]
    pub transitions: Vec<Transition>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServerStatus {
    pub server: String,
    pub addresses: Vec<String>,
    pub state: String,
    pub reason: String,
    pub since_seconds: Option<u64>,
    pub last_check_seconds_ago: Option<f64>,
    pub ping_rtt_ms: Option<f64>,
    pub readyz_latency_ms: Option<f64>,
    pub readyz_status: Option<u16>,
    pub protocol: Option<String>,
    pub active_connections: usize,
    pub connect_failed: bool,
    #[serde(default)]
    pub source: String,
    /// Removed from the set (discovery); its connections are finishing.
    #[serde(default)]
    pub removed: bool,
}

fn ago(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64())
}

impl Admin {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn status(&self) -> Status {
        let mut all: Vec<Arc<Backend>> = self.backends.snapshot().iter().cloned().collect();
        all.extend(self.backends.removed());
        let servers = all
            .iter()
            .map(|b| {
                let o = b.observed();
                ServerStatus {
                    server: b.name.clone(),
                    addresses: b.addrs().iter().map(ToString::to_string).collect(),
                    state: b.state().as_str().to_string(),
                    reason: o.reason,
                    since_seconds: ago(o.since).map(|s| s as u64),
                    last_check_seconds_ago: ago(o.last_check),
                    ping_rtt_ms: o.ping_rtt.map(|d| d.as_secs_f64() * 1e3),
                    readyz_latency_ms: o.readyz_latency.map(|d| d.as_secs_f64() * 1e3),
                    readyz_status: o.readyz_status,
                    protocol: o.protocol.map(str::to_string),
                    active_connections: b.active(),
                    connect_failed: b.passive_failed(),
                    source: b.source().as_str().to_string(),
                    removed: b.is_removed(),
                }
            })
            .collect();
        let (reload, config) = self.reload.status();
        Status {
            phase: self.phase().as_str().to_string(),
            ready: self.backends.any_ready(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: ago(Some(self.started)).unwrap_or(0.0) as u64,
            client_connections: self.proxy.connections(),
            servers,
            discovery: self.discovery.as_ref().map(|d| d.status()),
            reload,
            config,
            transitions: self.metrics.transitions.recent(),
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |code: StatusCode, body: String, ctype: &'static str| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = code;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ctype),
            );
            r
        };
        const PLAIN: &str = "text/plain; charset=utf-8";
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), PLAIN);
        }
        match req.uri().path() {
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), PLAIN),
            "/readyz" => {
                if self.backends.any_ready() {
                    text(StatusCode::OK, "ok\n".into(), PLAIN)
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no server is ready\n".into(),
                        PLAIN,
                    )
                }
            }
            "/metrics" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry) {
                    Ok(()) => text(
                        StatusCode::OK,
                        out,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), PLAIN),
                }
            }
            "/status" => match serde_json::to_string_pretty(&self.status()) {
                Ok(s) => text(StatusCode::OK, s + "\n", "application/json"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), PLAIN),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /metrics /status\n".into(),
                PLAIN,
            ),
        }
    }

    /// Serves on a thread of its own ("apilb-admin", a single-threaded runtime) until
    /// `stop` is cancelled: however many requests come, they never delay the health checks
    /// on the main thread. The listener is registered here, so an error is returned at once.
    pub fn start(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _in = rt.enter();
            TcpListener::from_std(listener)?
        };
        std::thread::Builder::new()
            .name("apilb-admin".into())
            .spawn(move || rt.block_on(self.serve(listener, stop)))
    }

    /// Serves until `stop` is cancelled. A failed accept (out of descriptors: the client
    /// waits in the listen queue) is retried after a backoff growing to a second, counted,
    /// and logged at most every few seconds, as the proxy's accept loop does.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let accept_log = LogLimit::new(ACCEPT_LOG_EVERY);
        let full_log = LogLimit::new(ACCEPT_LOG_EVERY);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => r,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    stream
                }
                Err(e) => {
                    self.metrics.accept_error(Listener::admin);
                    accept_log.log(|suppressed| {
                        tracing::warn!(error = %e, retry_in = ?backoff, suppressed,
                            "admin accept failed");
                    });
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Full: closed at once, not queued (a flood must not grow without bound).
                self.metrics.admin_rejected.inc();
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
                full_log.log(|suppressed| {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        suppressed,
                        "admin endpoint at its connection limit; closing new connections"
                    );
                });
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _slot = permit;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = me.respond(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(io, svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection");
                }
            });
        }
    }
}
