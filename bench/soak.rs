//! The soak under faults (`bench/soak` builds and runs this; see bench/SOAK.md).
//!
//! apilb in front of three TLS stand-in apiservers (127.0.0.2–4) under mixed traffic —
//! kept-alive small requests over HTTP/1.1 and HTTP/2, long watch streams, uploads echoed
//! back and downloads, every byte verified, new connections — while a seeded, reproducible
//! fault schedule kills (then restarts), blackholes (iptables DROP in a chain of our own),
//! marks not ready (/readyz 500), freezes (SIGSTOP for seconds) and stalls (SIGSTOP for
//! under a second, which connections must ride out) servers and restores them, never more
//! than two at a time. apilb's RSS and descriptors are sampled every second.
//!
//! Afterwards every client-visible failure is classified against the fault log: a failure on
//! a connection that was pinned to a server at the instant that server was killed, frozen or
//! blackholed is one no L4 proxy can save; anything else is counted apart, with examples.
//! apilb's own verdicts are checked too: how fast it noticed each fault and took the server
//! back, state changes no fault explains, new connections sent to servers it held down.
//! apilb's own debug log says which server each client connection went to, so even a
//! connection that failed before its first answer is attributed.
//!
//! Exit status: 0 pass; 1 byte mismatch, apilb crash/panic, or leak (the reasons printed);
//! 2 the soak could not run (not root, no iptables, a setup step failed).
//!
//! Built as a `harness = false` bench target so that it can share the integration tests'
//! harness (`tests/common`), which needs the paths of the binaries Cargo builds.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use common::{Apilb, Pki, Standin, SERVER_NAME};

/// A stream on a dead server must be closed within this (the design's failover target).
const FAILOVER_TARGET: f64 = 3.0;
/// Descriptors apilb may hold at the end above the start (after traffic and faults stop).
const FD_MARGIN: i64 = 4;
/// RSS growth allowed from the middle third to the last third of the run.
const RSS_MARGIN_KIB: i64 = 2 * 1024;
const RSS_MARGIN_FRACTION: f64 = 0.10;
/// Interval of the watch streams' events.
const WATCH_INTERVAL_MS: u64 = 100;

type B = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------
// Command line

struct Args {
    seconds: u64,
    seed: u64,
    out: PathBuf,
}

fn usage() -> &'static str {
    "usage: bench/soak [--seconds N] [--seed S] [--out DIR]\n\
     \n  --seconds N  length of the run (default 600)\
     \n  --seed S     seed of the fault schedule and the traffic mix (default 1)\
     \n  --out DIR    where soak-latest.{md,json} go (default bench/results)\n"
}

fn parse_args() -> Result<Option<Args>, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // Plain `cargo bench` runs every bench target with only `--bench`: say how to run this
    // one instead of starting a 10-minute soak nobody asked for.
    if !raw.is_empty() && raw.iter().all(|a| a == "--bench") {
        println!("soak: run it with bench/soak [--seconds N] [--seed S] (needs root)");
        return Ok(None);
    }
    let mut a = Args {
        seconds: 600,
        seed: 1,
        out: PathBuf::from("bench/results"),
    };
    let mut it = raw.into_iter().filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--out" => a.out = PathBuf::from(value("--out")?),
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.seconds < 20 {
        return Err("--seconds must be at least 20 (warm-up, faults, quiet end)".into());
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------------------------------
// The fault schedule

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Blackhole,
    NotReady,
    Freeze,
    /// A sub-second SIGSTOP (a GC pause, a VM hiccup): connections must ride it out.
    Stall,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Blackhole => "blackhole",
            Kind::NotReady => "not_ready",
            Kind::Freeze => "freeze",
            Kind::Stall => "stall",
        }
    }
    /// Kills, freezes and blackholes leave the server's connections dead in the water.
    fn hard(self) -> bool {
        matches!(self, Kind::Kill | Kind::Blackhole | Kind::Freeze)
    }
}

#[derive(Debug, Clone)]
struct Fault {
    server: usize,
    kind: Kind,
    /// Planned start and length (seconds from the start of traffic).
    at: f64,
    dur: f64,
    /// When the fault was in force and when it was lifted, as executed.
    began: Option<f64>,
    ended: Option<f64>,
    note: String,
}

/// Seeded and reproducible: a fault starts every 1–5 s on a server that is not already
/// faulted or recovering, as long as at most one other is; each lasts 4–12 s (a stall
/// 0.2–1 s); kinds come from a shuffled bag so every kind shows up early. Nothing in the first 5 s, and every
/// fault is lifted 5 s before the end.
fn schedule(seed: u64, seconds: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let warmup = 5.0;
    let quiet_from = seconds - 5.0;
    let mut faults = Vec::new();
    // Until when each server is faulted, and until when it is left alone to recover.
    let mut faulted_until = [0.0f64; 3];
    let mut busy_until = [0.0f64; 3];
    let mut bag: Vec<Kind> = Vec::new();
    let mut t = warmup;
    loop {
        t += rng.random_range(1.0..5.0);
        if t + 4.0 > quiet_from {
            break;
        }
        let down = (0..3).filter(|&s| faulted_until[s] > t).count();
        let free: Vec<usize> = (0..3).filter(|&s| busy_until[s] <= t).collect();
        if down >= 2 || free.is_empty() {
            continue;
        }
        let server = free[rng.random_range(0..free.len())];
        if bag.is_empty() {
            bag = vec![
                Kind::Kill,
                Kind::Blackhole,
                Kind::NotReady,
                Kind::Freeze,
                Kind::Stall,
            ];
            bag.shuffle(&mut rng);
        }
        let kind = bag.pop().unwrap();
        let dur = if kind == Kind::Stall {
            rng.random_range(0.2..1.0f64)
        } else {
            rng.random_range(4.0..12.0f64).min(quiet_from - t)
        };
        faulted_until[server] = t + dur;
        busy_until[server] = t + dur + 3.0;
        faults.push(Fault {
            server,
            kind,
            at: t,
            dur,
            began: None,
            ended: None,
            note: String::new(),
        });
    }
    faults
}

// ---------------------------------------------------------------------------------------
// What the clients saw

#[derive(Default)]
struct ConnRec {
    kind: &'static str,
    port: u16,
    opened: f64,
    /// The stand-in's name, from /whoami or a watch event (or apilb's log, afterwards).
    server: Option<String>,
    /// When the client first saw the connection fail or close, and why.
    ended: Option<f64>,
    end_why: String,
    /// Closed by the client itself (a voluntary reconnect, the end of the run).
    by_client: bool,
    /// When something succeeded on it (responses, watch events).
    ok_times: Vec<f32>,
}

#[derive(Default, Clone)]
struct KindStats {
    ok: u64,
    failed: u64,
    bytes_up: u64,
    bytes_down: u64,
    latencies_ms: Vec<f32>,
}

struct Failure {
    conn: Option<usize>,
    op: &'static str,
    start: f64,
    at: f64,
    err: String,
}

struct Mismatch {
    conn: usize,
    op: &'static str,
    at: f64,
    what: String,
}

#[derive(Default)]
struct Recorder {
    conns: Mutex<Vec<ConnRec>>,
    stats: Mutex<HashMap<&'static str, KindStats>>,
    failures: Mutex<Vec<Failure>>,
    mismatches: Mutex<Vec<Mismatch>>,
    watch_events: AtomicU64,
}

struct Ctx {
    lb: SocketAddr,
    h1: TlsConnector,
    h2: TlsConnector,
    t0: Instant,
    stop: CancellationToken,
    rec: Recorder,
    seed: u64,
}

impl Ctx {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn new_conn(&self, kind: &'static str, port: u16) -> usize {
        let mut c = self.rec.conns.lock().unwrap();
        c.push(ConnRec {
            kind,
            port,
            opened: self.now(),
            ..ConnRec::default()
        });
        c.len() - 1
    }

    fn conn_ended(&self, id: usize, why: &str, by_client: bool) {
        let now = self.now();
        let mut c = self.rec.conns.lock().unwrap();
        let r = &mut c[id];
        if r.ended.is_none() {
            r.ended = Some(now);
            r.end_why = why.to_string();
            r.by_client = by_client;
        }
    }

    fn ok(&self, id: usize, op: &'static str, start: f64, up: u64, down: u64) {
        let now = self.now();
        self.rec.conns.lock().unwrap()[id].ok_times.push(now as f32);
        let mut s = self.rec.stats.lock().unwrap();
        let k = s.entry(op).or_default();
        k.ok += 1;
        k.bytes_up += up;
        k.bytes_down += down;
        k.latencies_ms.push(((now - start) * 1000.0) as f32);
    }

    /// Bytes that arrived on an operation that failed later still count as moved.
    fn fail(
        &self,
        id: Option<usize>,
        op: &'static str,
        start: f64,
        err: String,
        moved: (u64, u64),
    ) {
        let at = self.now();
        {
            let mut s = self.rec.stats.lock().unwrap();
            let k = s.entry(op).or_default();
            k.failed += 1;
            k.bytes_up += moved.0;
            k.bytes_down += moved.1;
        }
        if let Some(id) = id {
            self.conn_ended(id, &err, false);
        }
        self.rec.failures.lock().unwrap().push(Failure {
            conn: id,
            op,
            start,
            at,
            err,
        });
    }

    fn mismatch(&self, id: usize, op: &'static str, what: String) {
        eprintln!("soak: BYTE MISMATCH on {op} (connection {id}): {what}");
        self.rec.mismatches.lock().unwrap().push(Mismatch {
            conn: id,
            op,
            at: self.now(),
            what,
        });
    }

    /// Records the server a connection answered from; a change mid-connection is a mismatch
    /// (an L4 proxy must never move an established connection).
    fn saw_server(&self, id: usize, op: &'static str, server: &str) {
        let prev = {
            let mut c = self.rec.conns.lock().unwrap();
            let r = &mut c[id];
            match &r.server {
                None => {
                    r.server = Some(server.to_string());
                    None
                }
                Some(s) if s == server => None,
                Some(s) => Some(s.clone()),
            }
        };
        if let Some(prev) = prev {
            self.mismatch(
                id,
                op,
                format!("answer from {server} on a connection pinned to {prev}"),
            );
        }
    }

    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Verified payloads

/// A seeded byte stream (xorshift64*): upload bodies, regenerated to check the echo.
#[derive(Clone)]
struct Gen {
    s: u64,
    word: [u8; 8],
    pos: usize,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            s: seed | 1,
            word: [0; 8],
            pos: 8,
        }
    }
    fn next_byte(&mut self) -> u8 {
        if self.pos == 8 {
            self.s ^= self.s >> 12;
            self.s ^= self.s << 25;
            self.s ^= self.s >> 27;
            self.word = self.s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            self.pos = 0;
        }
        let b = self.word[self.pos];
        self.pos += 1;
        b
    }
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_byte();
        }
    }
    /// Index of the first byte of `data` that differs from the stream.
    fn check(&mut self, data: &[u8]) -> Option<usize> {
        data.iter().position(|&b| b != self.next_byte())
    }
}

struct GenBody {
    gen: Gen,
    left: u64,
}

impl Body for GenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(64 * 1024) as usize;
        let mut v = vec![0u8; n];
        this.gen.fill(&mut v);
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

// ---------------------------------------------------------------------------------------
// Connections through apilb

enum Send {
    H1(hyper::client::conn::http1::SendRequest<B>),
    H2(hyper::client::conn::http2::SendRequest<B>),
}

struct Conn {
    id: usize,
    send: Send,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn req(&self, method: &str, path: &str, body: B) -> Request<B> {
        let b = Request::builder().method(method);
        let b = match self.send {
            Send::H1(_) => b.uri(path).header(http::header::HOST, SERVER_NAME),
            Send::H2(_) => b.uri(format!("https://{SERVER_NAME}{path}")),
        };
        b.body(body).unwrap()
    }

    async fn send(&mut self, req: Request<B>) -> Result<Response<Incoming>, String> {
        match &mut self.send {
            Send::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
            Send::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())
            }
        }
    }

    fn h2_handle(&self) -> Option<hyper::client::conn::http2::SendRequest<B>> {
        match &self.send {
            Send::H2(s) => Some(s.clone()),
            Send::H1(_) => None,
        }
    }

    /// Closes it from the client's side (a voluntary reconnect or the end of the run).
    fn close(self, ctx: &Ctx) {
        ctx.conn_ended(self.id, "closed by the client", true);
        self.driver.abort();
    }

    /// Drops it after a failure (already recorded, so its end time stands).
    fn abandon(self, ctx: &Ctx) {
        ctx.conn_ended(self.id, "abandoned by the client", true);
        self.driver.abort();
    }
}

fn empty() -> B {
    Empty::<Bytes>::new().boxed()
}

/// A new TLS connection through apilb, HTTP/1.1 or HTTP/2. A failure is recorded.
async fn open(ctx: &Arc<Ctx>, kind: &'static str, h2: bool) -> Option<Conn> {
    let start = ctx.now();
    let tcp = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(ctx.lb)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            ctx.fail(
                None,
                "connect",
                start,
                format!("TCP connect to apilb: {e}"),
                (0, 0),
            );
            return None;
        }
        Err(_) => {
            ctx.fail(
                None,
                "connect",
                start,
                "TCP connect to apilb timed out".into(),
                (0, 0),
            );
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
    let id = ctx.new_conn(kind, port);
    let connector = if h2 { &ctx.h2 } else { &ctx.h1 };
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let tls =
        match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("TLS handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
            Err(_) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    "TLS handshake timed out (10 s)".into(),
                    (0, 0),
                );
                return None;
            }
        };
    let io = TokioIo::new(tls);
    let c2 = ctx.clone();
    let (send, driver) = if h2 {
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
            Ok((s, conn)) => (
                Send::H2(s),
                tokio::spawn(async move {
                    let why = match conn.await {
                        Ok(()) => "closed".to_string(),
                        Err(e) => format!("connection: {e}"),
                    };
                    c2.conn_ended(id, &why, false);
                }),
            ),
            Err(e) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("HTTP/2 handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
        }
    } else {
        match hyper::client::conn::http1::handshake(io).await {
            Ok((s, conn)) => (
                Send::H1(s),
                tokio::spawn(async move {
                    let why = match conn.await {
                        Ok(()) => "closed".to_string(),
                        Err(e) => format!("connection: {e}"),
                    };
                    c2.conn_ended(id, &why, false);
                }),
            ),
            Err(e) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("HTTP/1.1 handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
        }
    };
    Some(Conn { id, send, driver })
}

/// GET /whoami: a small request; learns (or checks) the connection's server.
async fn whoami(ctx: &Ctx, c: &mut Conn, op: &'static str) -> bool {
    let start = ctx.now();
    let work = async {
        let resp = c.send(c.req("GET", "/whoami", empty())).await?;
        if resp.status() != StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(body)
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(body)) => {
            let server = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["server"].as_str().map(str::to_string));
            match server {
                Some(s) if ["cp1", "cp2", "cp3"].contains(&s.as_str()) => {
                    ctx.saw_server(c.id, op, &s);
                    ctx.ok(c.id, op, start, 0, body.len() as u64);
                    true
                }
                _ => {
                    ctx.mismatch(
                        c.id,
                        op,
                        format!("/whoami body {:?}", String::from_utf8_lossy(&body)),
                    );
                    false
                }
            }
        }
        Ok(Err(e)) => {
            ctx.fail(Some(c.id), op, start, e, (0, 0));
            false
        }
        Err(_) => {
            ctx.fail(
                Some(c.id),
                op,
                start,
                "no answer within 10 s".into(),
                (0, 0),
            );
            false
        }
    }
}

/// GET /bytes?n=N, every byte checked (byte i is i % 251).
async fn download(ctx: &Ctx, c: &mut Conn, n: u64) -> bool {
    let start = ctx.now();
    let mut got = 0u64;
    let id = c.id;
    let mut mismatch = None;
    let work = async {
        let resp = c
            .send(c.req("GET", &format!("/bytes?n={n}"), empty()))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("body after {got} of {n} bytes: {e}"))?;
            if let Ok(data) = f.into_data() {
                if mismatch.is_none() {
                    if let Some(i) = data
                        .iter()
                        .enumerate()
                        .position(|(i, &b)| u64::from(b) != (got + i as u64) % 251)
                    {
                        mismatch = Some(format!(
                            "/bytes?n={n}: byte {} is {}, expected {}",
                            got + i as u64,
                            data[i],
                            (got + i as u64) % 251
                        ));
                    }
                }
                got += data.len() as u64;
            }
        }
        Ok(())
    };
    let r = tokio::time::timeout(Duration::from_secs(60), work).await;
    if let Some(m) = mismatch {
        ctx.mismatch(id, "download", m);
        return false;
    }
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, "download", start, 0, got);
            true
        }
        Ok(Ok(())) if got > n => {
            ctx.mismatch(id, "download", format!("/bytes?n={n} returned {got} bytes"));
            false
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                "download",
                start,
                format!("ended after {got} of {n} bytes"),
                (0, got),
            );
            false
        }
        Ok(Err(e)) => {
            ctx.fail(Some(id), "download", start, e, (0, got));
            false
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                "download",
                start,
                format!("not done in 60 s ({got} of {n} bytes)"),
                (0, got),
            );
            false
        }
    }
}

/// POST /echo with a seeded body streamed up while the echo streams back, checked.
async fn upload(ctx: &Ctx, c: &mut Conn, n: u64, seed: u64) -> bool {
    let start = ctx.now();
    let id = c.id;
    let mut got = 0u64;
    let mut mismatch = None;
    let mut expect = Gen::new(seed);
    let body = GenBody {
        gen: Gen::new(seed),
        left: n,
    }
    .boxed();
    let mut req = c.req("POST", "/echo", body);
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, n.to_string().parse().unwrap());
    let work = async {
        let resp = c.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("echo after {got} of {n} bytes: {e}"))?;
            if let Ok(data) = f.into_data() {
                if mismatch.is_none() {
                    if got + data.len() as u64 > n {
                        mismatch = Some(format!("/echo of {n} bytes returned more"));
                    } else if let Some(i) = expect.check(&data) {
                        mismatch = Some(format!(
                            "/echo of {n} bytes: byte {} differs",
                            got + i as u64
                        ));
                    }
                }
                got += data.len() as u64;
            }
        }
        Ok(())
    };
    let r = tokio::time::timeout(Duration::from_secs(60), work).await;
    if let Some(m) = mismatch {
        ctx.mismatch(id, "upload", m);
        return false;
    }
    // What went up is at least what came back.
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, "upload", start, n, got);
            true
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("echo ended after {got} of {n} bytes"),
                (got, got),
            );
            false
        }
        Ok(Err(e)) => {
            ctx.fail(Some(id), "upload", start, e, (got, got));
            false
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("not done in 60 s ({got} of {n} bytes back)"),
                (got, got),
            );
            false
        }
    }
}

/// Follows GET /watch until `until` or the stop; every event checked (consecutive `seq`,
/// one server). Returns false when the stream failed (recorded).
async fn watch(
    ctx: &Ctx,
    c: &mut Conn,
    h2: Option<hyper::client::conn::http2::SendRequest<B>>,
    until: f64,
) -> bool {
    let start = ctx.now();
    let id = c.id;
    let path = format!("/watch?interval_ms={WATCH_INTERVAL_MS}");
    let req = c.req("GET", &path, empty());
    let sent = match h2 {
        Some(mut s) => match s.ready().await {
            Ok(()) => s.send_request(req).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        None => c.send(req).await,
    };
    let resp = match sent {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            ctx.fail(
                Some(id),
                "watch",
                start,
                format!("status {}", r.status()),
                (0, 0),
            );
            return false;
        }
        Err(e) => {
            ctx.fail(Some(id), "watch", start, e, (0, 0));
            return false;
        }
    };
    let mut body = resp.into_body();
    let mut line = Vec::new();
    let mut next_seq = 0u64;
    let mut bytes = 0u64;
    loop {
        let left = until - ctx.now();
        if left <= 0.0 || ctx.stop.is_cancelled() {
            ctx.ok(id, "watch", start, 0, bytes);
            return true;
        }
        let frame = tokio::select! {
            () = ctx.stop.cancelled() => continue,
            r = tokio::time::timeout(Duration::from_secs_f64(left.min(10.0)), body.frame()) => r,
        };
        let data = match frame {
            Err(_) if ctx.now() >= until => continue,
            Err(_) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    "no event for 10 s".into(),
                    (0, bytes),
                );
                return false;
            }
            Ok(None) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    format!("stream ended after {next_seq} events"),
                    (0, bytes),
                );
                return false;
            }
            Ok(Some(Err(e))) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    format!("stream after {next_seq} events: {e}"),
                    (0, bytes),
                );
                return false;
            }
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        bytes += data.len() as u64;
        for &b in data.iter() {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let v: Option<Value> = serde_json::from_slice(&line).ok();
            let seq = v.as_ref().and_then(|v| v["seq"].as_u64());
            let server = v
                .as_ref()
                .and_then(|v| v["server"].as_str().map(str::to_string));
            match (seq, server) {
                (Some(seq), Some(server)) if seq == next_seq => {
                    ctx.saw_server(id, "watch", &server);
                    ctx.rec.conns.lock().unwrap()[id]
                        .ok_times
                        .push(ctx.now() as f32);
                    ctx.rec.watch_events.fetch_add(1, Ordering::Relaxed);
                    next_seq += 1;
                }
                _ => {
                    ctx.mismatch(
                        id,
                        "watch",
                        format!(
                            "event {next_seq}: {:?}",
                            String::from_utf8_lossy(&line)
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ),
                    );
                    return false;
                }
            }
            line.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Traffic

fn worker_rng(seed: u64, worker: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ worker)
}

/// Log-uniform between `lo` and `hi` bytes.
fn size(rng: &mut StdRng, lo: f64, hi: f64) -> u64 {
    rng.random_range(lo.ln()..hi.ln()).exp() as u64
}

/// A kept-alive connection making a small request every 50–150 ms; HTTP/2 ones also carry
/// a watch stream, as a kubelet's connection does.
async fn keepalive(ctx: Arc<Ctx>, wid: u64, h2: bool) {
    let mut rng = worker_rng(ctx.seed, wid);
    let kind = if h2 { "keepalive-h2" } else { "keepalive-h1" };
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, kind, h2).await else {
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !whoami(&ctx, &mut c, "request").await {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut watch_task = c.h2_handle().map(|s| {
            let ctx = ctx.clone();
            let id = c.id;
            tokio::spawn(async move {
                // The watch shares the connection's record; it needs no Conn of its own.
                let mut shell = Conn {
                    id,
                    send: Send::H2(s.clone()),
                    driver: tokio::spawn(async {}),
                };
                watch(&ctx, &mut shell, Some(s), f64::MAX).await
            })
        });
        let ok = loop {
            let pause = Duration::from_millis(rng.random_range(50..150));
            if !ctx.sleep(pause).await {
                break true;
            }
            if watch_task.as_ref().is_some_and(|t| t.is_finished()) {
                break false;
            }
            if !whoami(&ctx, &mut c, "request").await {
                break false;
            }
        };
        if let Some(t) = watch_task.take() {
            if ok {
                let _ = t.await;
            } else {
                t.abort();
            }
        }
        if ok {
            c.close(&ctx);
        } else {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Mostly idle HTTP/2 connections (a node's many agents): a request every 2–5 s. Only apilb
/// closing them tells such a client that its server died.
async fn idle(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "idle-h2", true).await else {
            ctx.sleep(Duration::from_millis(500)).await;
            continue;
        };
        let ok = loop {
            if !whoami(&ctx, &mut c, "request").await {
                break false;
            }
            if !ctx
                .sleep(Duration::from_millis(rng.random_range(2000..5000)))
                .await
            {
                break true;
            }
        };
        if ok {
            c.close(&ctx);
        } else {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Watch streams on their own HTTP/1.1 connections, reopened after 10–40 s (as an
/// apiserver's watch timeout would) or at once when they fail.
async fn watcher(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "watch", false).await else {
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !whoami(&ctx, &mut c, "request").await {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        }
        let until = ctx.now() + rng.random_range(10.0..40.0);
        if watch(&ctx, &mut c, None, until).await {
            c.close(&ctx);
        } else {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Uploads and downloads on kept-alive connections (1–5 transfers each), verified.
async fn transfers(ctx: Arc<Ctx>, wid: u64, upload_share: f64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.3);
        let Some(mut c) = open(&ctx, "transfer", h2).await else {
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        };
        if !whoami(&ctx, &mut c, "request").await {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut ok = true;
        for _ in 0..rng.random_range(1..=5) {
            if ctx.stop.is_cancelled() {
                break;
            }
            ok = if rng.random_bool(upload_share) {
                let n = size(&mut rng, 16e3, 4e6);
                upload(&ctx, &mut c, n, rng.random()).await
            } else {
                let n = size(&mut rng, 16e3, 16e6);
                download(&ctx, &mut c, n).await
            };
            if !ok {
                break;
            }
            ctx.sleep(Duration::from_millis(rng.random_range(50..300)))
                .await;
        }
        if ok {
            c.close(&ctx);
        } else {
            c.abandon(&ctx);
            ctx.sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A new connection for every request, as a restarting client or a CLI would.
async fn new_connections(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.5);
        if let Some(mut c) = open(&ctx, "new", h2).await {
            if whoami(&ctx, &mut c, "new-connection").await {
                c.close(&ctx);
            } else {
                c.abandon(&ctx);
            }
        }
        ctx.sleep(Duration::from_millis(rng.random_range(50..150)))
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// Faults

/// A kernel blackhole of one TCP address: DROP in INPUT (loopback packets pass INPUT both
/// ways), in a chain named after this process so that bench/soak can remove leftovers.
struct Blackhole {
    chain: String,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Blackhole {
    fn new(target: SocketAddr, n: usize) -> Result<Blackhole, String> {
        let chain = format!("APILB-SOAK-{}-{n}", std::process::id());
        iptables(&["-N", &chain])?;
        let bh = Blackhole { chain };
        let (ip, port) = (target.ip().to_string(), target.port().to_string());
        let c = bh.chain.as_str();
        iptables(&[
            "-A", c, "-p", "tcp", "-d", &ip, "--dport", &port, "-j", "DROP",
        ])?;
        iptables(&[
            "-A", c, "-p", "tcp", "-s", &ip, "--sport", &port, "-j", "DROP",
        ])?;
        iptables(&["-I", "INPUT", "-j", c])?;
        Ok(bh)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let c = self.chain.as_str();
        let _ = iptables(&["-D", "INPUT", "-j", c]);
        let _ = iptables(&["-F", c]);
        let _ = iptables(&["-X", c]);
    }
}

struct Servers {
    standins: Vec<Mutex<Standin>>,
    addrs: Vec<SocketAddr>,
    holes: Mutex<HashMap<usize, Blackhole>>,
    frozen: Mutex<Vec<bool>>,
    h1: TlsConnector,
}

impl Servers {
    async fn set_readyz(&self, i: usize, status: u16) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            match self.try_set_readyz(i, status).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "PUT /-/readyz?status={status} on cp{}: {last}",
            i + 1
        ))
    }

    async fn try_set_readyz(&self, i: usize, status: u16) -> Result<(), String> {
        let work = async {
            let tcp = TcpStream::connect(self.addrs[i])
                .await
                .map_err(|e| e.to_string())?;
            let tls = self
                .h1
                .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (mut s, conn) = hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::put(format!("/-/readyz?status={status}"))
                .header(http::header::HOST, SERVER_NAME)
                .body(empty())
                .unwrap();
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status() == StatusCode::OK {
                Ok(())
            } else {
                Err(format!("status {}", resp.status()))
            }
        };
        tokio::time::timeout(Duration::from_secs(3), work)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    fn restart(&self, i: usize) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.standins[i]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .restart()
            }));
            match r {
                Ok(()) => return Ok(()),
                Err(p) => {
                    last = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("restarting cp{}: {last}", i + 1))
    }

    fn signal(&self, i: usize, sig: i32) -> Result<(), String> {
        let pid = self.standins[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pid();
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "kill({pid}, {sig}): {}",
                io::Error::last_os_error()
            ))
        }
    }

    async fn begin(&self, f: &Fault, n: usize) -> Result<(), String> {
        let i = f.server;
        match f.kind {
            Kind::Kill => {
                let mut s = self.standins[i].lock().unwrap_or_else(|e| e.into_inner());
                s.kill();
                Ok(())
            }
            Kind::Blackhole => {
                let bh = tokio::task::block_in_place(|| Blackhole::new(self.addrs[i], n))?;
                self.holes.lock().unwrap().insert(i, bh);
                Ok(())
            }
            Kind::NotReady => self.set_readyz(i, 500).await,
            Kind::Freeze | Kind::Stall => {
                self.signal(i, libc::SIGSTOP)?;
                self.frozen.lock().unwrap()[i] = true;
                Ok(())
            }
        }
    }

    async fn end(&self, f: &Fault) -> Result<(), String> {
        let i = f.server;
        match f.kind {
            Kind::Kill => tokio::task::block_in_place(|| self.restart(i)),
            Kind::Blackhole => {
                let bh = self.holes.lock().unwrap().remove(&i);
                tokio::task::block_in_place(|| drop(bh));
                Ok(())
            }
            Kind::NotReady => self.set_readyz(i, 200).await,
            Kind::Freeze | Kind::Stall => {
                self.frozen.lock().unwrap()[i] = false;
                self.signal(i, libc::SIGCONT)
            }
        }
    }

    /// Lifts whatever is still in force (an interrupted run): thaw, unblackhole, restart.
    fn restore_all(&self) {
        self.holes.lock().unwrap().clear();
        let frozen = std::mem::take(&mut *self.frozen.lock().unwrap());
        for (i, f) in frozen.iter().enumerate() {
            if *f {
                let _ = self.signal(i, libc::SIGCONT);
            }
        }
    }
}

/// Runs the schedule; returns it with what was executed, and when.
async fn run_faults(ctx: Arc<Ctx>, servers: Arc<Servers>, mut faults: Vec<Fault>) -> Vec<Fault> {
    // Start and end events in time order.
    let mut events: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        events.push((f.at, i, true));
        events.push((f.at + f.dur, i, false));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    for (at, i, start) in events {
        let wait = at - ctx.now();
        if wait > 0.0 && !ctx.sleep(Duration::from_secs_f64(wait)).await {
            break;
        }
        let f = faults[i].clone();
        let name = format!("cp{}", f.server + 1);
        if start {
            let r = servers.begin(&f, i).await;
            let now = ctx.now();
            match r {
                Ok(()) => {
                    faults[i].began = Some(now);
                    println!(
                        "soak: {now:7.2}s  {:<9} {name} for {:.1}s",
                        f.kind.as_str(),
                        f.dur
                    );
                }
                Err(e) => {
                    eprintln!(
                        "soak: {now:7.2}s  could not {} {name}: {e}",
                        f.kind.as_str()
                    );
                    faults[i].note = e;
                }
            }
        } else if faults[i].began.is_some() {
            let r = servers.end(&f).await;
            let now = ctx.now();
            faults[i].ended = Some(now);
            match r {
                Ok(()) => println!("soak: {now:7.2}s  restored  {name} ({})", f.kind.as_str()),
                Err(e) => {
                    eprintln!("soak: {now:7.2}s  could not restore {name}: {e}");
                    faults[i].note = e;
                }
            }
        }
    }
    // Interrupted: lift what is still in force.
    for f in faults.iter_mut() {
        if f.began.is_some() && f.ended.is_none() {
            let _ = servers.end(f).await;
            f.ended = Some(ctx.now());
        }
    }
    faults
}

// ---------------------------------------------------------------------------------------
// apilb's resources

#[derive(Clone, Copy)]
struct Sample {
    t: f64,
    rss_kib: i64,
    fds: i64,
    conns: i64,
}

fn rss_kib(pid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn fds(pid: i32) -> Option<i64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64)
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

async fn admin_get(lb: &Apilb, path: &str) -> Option<String> {
    let work = async {
        let mut s = TcpStream::connect(lb.admin).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let (code, body) = common::parse_response(&out);
        (code == 200).then_some(body)
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
}

async fn admin_status(lb: &Apilb) -> Option<Value> {
    serde_json::from_str(&admin_get(lb, "/status").await?).ok()
}

/// apilb's failover counters from /metrics, as `name{labels} value` lines.
fn counters(metrics: &str) -> Vec<String> {
    const KEEP: [&str; 6] = [
        "apilb_connections_accepted_total",
        "apilb_connections_rejected_total",
        "apilb_connect_attempts_total",
        "apilb_failover_closed_connections_total",
        "apilb_first_byte_replays_total",
        "apilb_bytes_total",
    ];
    metrics
        .lines()
        .filter(|l| KEEP.iter().any(|k| l.starts_with(k)))
        .map(str::to_string)
        .collect()
}

async fn sample(ctx: &Ctx, lb: &Apilb) -> Option<Sample> {
    let pid = lb.pid();
    let conns = admin_status(lb)
        .await
        .and_then(|v| v["client_connections"].as_i64())
        .unwrap_or(-1);
    Some(Sample {
        t: ctx.now(),
        rss_kib: rss_kib(pid)?,
        fds: fds(pid)?,
        conns,
    })
}

// ---------------------------------------------------------------------------------------
// Analysis

fn percentile(v: &mut [f32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i])
}

fn median(mut v: Vec<i64>) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort();
    v[v.len() / 2]
}

/// The client port → server map from apilb's "proxying" debug lines (with their times, as
/// ports are reused over a long run), and the ports apilb closed because their server went
/// down.
struct ApilbView {
    proxying: HashMap<u16, Vec<(f64, String)>>,
    failover_closed: HashMap<u16, Vec<f64>>,
    panics: Vec<String>,
    state_changes: Vec<Value>,
    /// Per server name: (time, new state), in order.
    states: HashMap<String, Vec<(f64, String)>>,
    /// Passive failure marks: (time, server name, cause).
    passive_marks: Vec<(f64, String, String)>,
    panic_mode: Vec<f64>,
    warnings: usize,
    errors: Vec<String>,
}

fn rel_time(v: &Value, wall0: SystemTime) -> f64 {
    v["timestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .map(|t| match t.duration_since(wall0) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
        .unwrap_or(f64::NAN)
}

fn read_apilb_log(logs: &[Value], wall0: SystemTime, names: &HashMap<String, String>) -> ApilbView {
    let mut view = ApilbView {
        proxying: HashMap::new(),
        failover_closed: HashMap::new(),
        panics: Vec::new(),
        state_changes: Vec::new(),
        states: HashMap::new(),
        passive_marks: Vec::new(),
        panic_mode: Vec::new(),
        warnings: 0,
        errors: Vec::new(),
    };
    let port_of = |v: &Value| {
        v["client"]
            .as_str()
            .and_then(|c| c.parse::<SocketAddr>().ok())
            .map(|a| a.port())
    };
    for v in logs {
        if let Value::String(s) = v {
            if s.contains("panicked") || s.contains("RUST_BACKTRACE") {
                view.panics.push(s.clone());
            }
            continue;
        }
        let msg = v["message"].as_str().unwrap_or("");
        match v["level"].as_str() {
            Some("WARN") => view.warnings += 1,
            Some("ERROR") => view.errors.push(v.to_string()),
            _ => {}
        }
        let t = rel_time(v, wall0);
        if msg == "proxying" {
            if let (Some(p), Some(s)) = (port_of(v), v["server"].as_str()) {
                let name = names.get(s).cloned().unwrap_or_else(|| s.to_string());
                view.proxying.entry(p).or_default().push((t, name));
            }
        } else if msg.starts_with("closing: its server is down") {
            if let Some(p) = port_of(v) {
                view.failover_closed.entry(p).or_default().push(t);
            }
        } else if msg == "server state changed" {
            let mut c = v.clone();
            c["t"] = json!((t * 100.0).round() / 100.0);
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                c["name"] = json!(s);
                let to = v["to"].as_str().unwrap_or("").to_string();
                view.states.entry(s.clone()).or_default().push((t, to));
            }
            view.state_changes.push(c);
        } else if msg.starts_with("connect failed; no new connections") {
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                let cause = v["cause"].as_str().unwrap_or("").to_string();
                view.passive_marks.push((t, s.clone(), cause));
            }
        } else if msg.starts_with("no server is ready: panic mode") {
            view.panic_mode.push(t);
        }
    }
    view
}

impl ApilbView {
    /// The server apilb committed the client port to, around `t`.
    fn server_of(&self, port: u16, opened: f64, t: f64) -> Option<String> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .rfind(|(at, _)| *at >= opened - 0.5 && *at <= t + 0.5)
                .map(|(_, s)| s.clone())
        })
    }
    /// When apilb committed the connection from `port` (opened at `opened`), and to whom.
    fn proxied(&self, port: u16, opened: f64) -> Option<(f64, String)> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .find(|(at, _)| *at >= opened - 0.5 && *at <= opened + 15.0)
                .cloned()
        })
    }
    /// apilb's view of `server` at `t`.
    fn state_at(&self, server: &str, t: f64) -> &str {
        self.states
            .get(server)
            .and_then(|v| v.iter().rfind(|(at, _)| *at <= t))
            .map_or("unknown", |(_, s)| s.as_str())
    }
    fn closed_for_failover(&self, port: u16, from: f64, to: f64) -> bool {
        self.failover_closed
            .get(&port)
            .is_some_and(|v| v.iter().any(|t| *t >= from - 0.5 && *t <= to + 0.5))
    }
}

struct Analysis {
    report: Value,
    fail_reasons: Vec<String>,
    markdown: String,
}

#[allow(clippy::too_many_arguments)]
fn analyse(
    args: &Args,
    ctx: &Ctx,
    faults: &[Fault],
    samples: &[Sample],
    view: &ApilbView,
    traffic_end: f64,
    baseline: Sample,
    end: Option<Sample>,
    crashed: Option<String>,
    sigterm: String,
    metrics: Vec<String>,
) -> Analysis {
    let conns = ctx.rec.conns.lock().unwrap();
    let failures = ctx.rec.failures.lock().unwrap();
    let mismatches = ctx.rec.mismatches.lock().unwrap();
    let stats = ctx.rec.stats.lock().unwrap().clone();

    let server_of = |c: &ConnRec, t: f64| -> Option<String> {
        c.server
            .clone()
            .or_else(|| view.server_of(c.port, c.opened, t))
    };
    let hard: Vec<&Fault> = faults
        .iter()
        .filter(|f| f.kind.hard() && f.began.is_some())
        .collect();
    let name = |i: usize| format!("cp{}", i + 1);

    // --- failures: unsavable (pinned to a server at the instant it died) or not.
    let mut unsavable = 0u64;
    let mut unsavable_by: HashMap<&'static str, u64> = HashMap::new();
    let mut other: Vec<Value> = Vec::new();
    let mut unsavable_examples: Vec<Value> = Vec::new();
    for f in failures.iter() {
        let (server, opened, kind, port) = match f.conn {
            Some(id) => {
                let c = &conns[id];
                (server_of(c, f.at), c.opened, c.kind, c.port)
            }
            None => (None, f.start, "-", 0),
        };
        let fault = server.as_ref().and_then(|s| {
            hard.iter().find(|h| {
                let began = h.began.unwrap();
                let until = h.ended.unwrap_or(f64::MAX) + 2.0;
                name(h.server) == *s && opened <= began && f.at >= began - 0.05 && f.at <= until
            })
        });
        let failover_closed = port != 0 && view.closed_for_failover(port, f.start, f.at);
        let detail = json!({
            "t": (f.at * 100.0).round() / 100.0,
            "op": f.op,
            "connection": kind,
            "client_port": port,
            "server": server,
            "opened": (opened * 100.0).round() / 100.0,
            "op_started": (f.start * 100.0).round() / 100.0,
            "error": f.err,
            "closed_by_apilb_failover": failover_closed,
        });
        match fault {
            Some(h) => {
                unsavable += 1;
                *unsavable_by.entry(h.kind.as_str()).or_default() += 1;
                if unsavable_examples.len() < 10 {
                    let mut d = detail;
                    d["fault"] = json!(format!("{} {}", h.kind.as_str(), name(h.server)));
                    unsavable_examples.push(d);
                }
            }
            None => {
                let mut d = detail;
                // The nearest fault, for the reader.
                if let Some(near) = faults.iter().filter(|x| x.began.is_some()).min_by(|a, b| {
                    (a.began.unwrap() - f.at)
                        .abs()
                        .total_cmp(&(b.began.unwrap() - f.at).abs())
                }) {
                    d["nearest_fault"] = json!(format!(
                        "{} {} at {:.2}s (lifted {:.2}s)",
                        near.kind.as_str(),
                        name(near.server),
                        near.began.unwrap(),
                        near.ended.unwrap_or(f64::NAN)
                    ));
                }
                other.push(d);
            }
        }
    }

    // --- failover: every connection pinned to a server when it died.
    let mut pinned = 0u64;
    let mut closed_in_time = 0u64;
    let mut resumed = 0u64;
    let mut hanging: Vec<Value> = Vec::new();
    let mut close_latencies: HashMap<&'static str, Vec<f32>> = HashMap::new();
    for h in &hard {
        let began = h.began.unwrap();
        if began + FAILOVER_TARGET > traffic_end {
            continue;
        }
        for c in conns.iter() {
            let Some(server) = server_of(c, began) else {
                continue;
            };
            if server != name(h.server) || c.opened > began || c.ended.is_some_and(|e| e < began) {
                continue;
            }
            // Closed by the client before the deadline for reasons of its own: no verdict.
            if c.by_client && c.ended.is_some_and(|e| e <= began + FAILOVER_TARGET) {
                continue;
            }
            pinned += 1;
            let deadline = began + FAILOVER_TARGET;
            if let Some(e) = c.ended.filter(|e| *e <= deadline) {
                closed_in_time += 1;
                close_latencies
                    .entry(h.kind.as_str())
                    .or_default()
                    .push((e - began) as f32);
                continue;
            }
            let lifted = h.ended.unwrap_or(f64::MAX);
            let works_again = c
                .ok_times
                .iter()
                .any(|t| f64::from(*t) > lifted && f64::from(*t) <= deadline);
            if works_again {
                resumed += 1;
                continue;
            }
            if let Some(e) = c.ended {
                close_latencies
                    .entry(h.kind.as_str())
                    .or_default()
                    .push((e - began) as f32);
            }
            hanging.push(json!({
                "fault": format!("{} {}", h.kind.as_str(), name(h.server)),
                "fault_at": (began * 100.0).round() / 100.0,
                "connection": c.kind,
                "client_port": c.port,
                "opened": (c.opened * 100.0).round() / 100.0,
                "closed_after_s": c.ended.map(|e| ((e - began) * 100.0).round() / 100.0),
                "why": c.end_why,
            }));
        }
    }
    let mut latency_table = serde_json::Map::new();
    for (k, v) in close_latencies.iter_mut() {
        latency_table.insert(
            k.to_string(),
            json!({
                "n": v.len(),
                "p50_s": (percentile(v, 0.5) * 100.0).round() / 100.0,
                "max_s": (percentile(v, 1.0) * 100.0).round() / 100.0,
            }),
        );
    }

    // --- watch gaps (longest silence of any stream while it was open).
    let mut max_gap = 0.0f64;
    for c in conns
        .iter()
        .filter(|c| c.kind == "watch" || c.kind == "keepalive-h2")
    {
        let mut prev = None;
        for t in &c.ok_times {
            if let Some(p) = prev {
                max_gap = max_gap.max(f64::from(*t) - p);
            }
            prev = Some(f64::from(*t));
        }
    }

    // --- apilb's verdicts against the fault log.
    // Detection (fault → down/not_ready) and recovery (lifted → ready) per fault.
    let mut detect: HashMap<&'static str, Vec<f32>> = HashMap::new();
    let mut recover: HashMap<&'static str, Vec<f32>> = HashMap::new();
    let mut never_detected: Vec<String> = Vec::new();
    let mut never_recovered: Vec<String> = Vec::new();
    // A sub-second stall must flip nothing ("one late PING never does").
    let mut stall_flips: Vec<Value> = Vec::new();
    for f in faults.iter().filter(|f| f.began.is_some()) {
        let (began, lifted) = (f.began.unwrap(), f.ended.unwrap_or(f64::MAX));
        let n = name(f.server);
        if f.kind == Kind::Stall {
            for c in &view.state_changes {
                let t = c["t"].as_f64().unwrap_or(f64::NAN);
                if c["name"] == n.as_str()
                    && c["to"] != "ready"
                    && t >= began - 0.1
                    && t <= lifted + 2.0
                {
                    let mut c = c.clone();
                    c["stall"] = json!(format!("{:.2}s at {began:.2}s", lifted - began));
                    stall_flips.push(c);
                }
            }
            continue;
        }
        let bad = if f.kind.hard() { "down" } else { "not_ready" };
        let changes = view.states.get(&n).cloned().unwrap_or_default();
        let label = format!("{} {} at {:.2}s", f.kind.as_str(), n, began);
        match changes
            .iter()
            .find(|(t, s)| *t >= began - 0.1 && *t <= lifted + 0.5 && s == bad)
        {
            Some((t, _)) => detect
                .entry(f.kind.as_str())
                .or_default()
                .push((t - began).max(0.0) as f32),
            None => never_detected.push(label.clone()),
        }
        match changes.iter().find(|(t, s)| *t >= lifted && s == "ready") {
            Some((t, _)) => recover
                .entry(f.kind.as_str())
                .or_default()
                .push((t - lifted) as f32),
            None => never_recovered.push(label),
        }
    }
    // A server held down or not ready while no fault was on it.
    let mut spurious: Vec<Value> = Vec::new();
    for c in &view.state_changes {
        let (Some(n), Some(to), Some(t)) = (c["name"].as_str(), c["to"].as_str(), c["t"].as_f64())
        else {
            continue;
        };
        if to == "ready" || to == "unknown" {
            continue;
        }
        let explained = faults.iter().any(|f| {
            name(f.server) == n
                && f.kind != Kind::Stall
                && f.began.is_some_and(|b| t >= b - 0.1)
                && f.ended.is_none_or(|e| t <= e + 2.0)
        });
        if !explained {
            spurious.push(c.clone());
        }
    }
    // Passive marks (a client connect failed) on servers no fault was on.
    let spurious_passive: Vec<Value> = view
        .passive_marks
        .iter()
        .filter(|(t, n, _)| {
            !faults.iter().any(|f| {
                name(f.server) == *n
                    && f.kind.hard()
                    && f.began.is_some_and(|b| *t >= b - 0.1)
                    && f.ended.is_none_or(|e| *t <= e + 3.0)
            })
        })
        .map(|(t, n, cause)| json!({"t": (t * 100.0).round() / 100.0, "server": n, "cause": cause}))
        .collect();
    // New connections committed to a server apilb itself held down or not ready (outside
    // panic mode): the balancer must never do that.
    let mut misrouted: Vec<Value> = Vec::new();
    let mut fallbacks = 0u64;
    let mut stale_order: Vec<Value> = Vec::new();
    let mut per_server: HashMap<String, u64> = HashMap::new();
    for c in conns.iter() {
        let Some((at, server)) = view.proxied(c.port, c.opened) else {
            continue;
        };
        *per_server.entry(server.clone()).or_default() += 1;
        let before = view.state_at(&server, c.opened - 0.05);
        let after = view.state_at(&server, at);
        let in_panic = view.panic_mode.iter().any(|p| (*p - at).abs() < 5.0);
        if (before == "down" || before == "not_ready") && before == after && !in_panic {
            // By design the servers apilb does not hold ready are tried after those it does
            // (so a client fails only when every server failed): that is a fallback when
            // every server it held ready was in fact dead or stalled, a misroute otherwise.
            // The order is made when the client connects: judge by apilb's view then (a
            // replay after the first-byte timeout follows that order, not a newer view).
            let held_ready_alive = (0..3).any(|i| {
                view.state_at(&name(i), c.opened) == "ready"
                    && !faults.iter().any(|f| {
                        f.server == i
                            && (f.kind.hard() || f.kind == Kind::Stall)
                            && f.began.is_some_and(|b| b <= at)
                            && f.ended.is_none_or(|e| e >= c.opened)
                    })
            });
            if !held_ready_alive {
                fallbacks += 1;
                // Did a server become ready (and alive) between the order and the commit?
                let ready_by_then: Vec<String> = (0..3)
                    .filter(|&i| {
                        name(i) != server
                            && view.state_at(&name(i), c.opened) != "ready"
                            && view.state_at(&name(i), at) == "ready"
                            && !faults.iter().any(|f| {
                                f.server == i
                                    && (f.kind.hard() || f.kind == Kind::Stall)
                                    && f.began.is_some_and(|b| b <= at)
                                    && f.ended.is_none_or(|e| e >= at)
                            })
                    })
                    .map(name)
                    .collect();
                if !ready_by_then.is_empty() {
                    stale_order.push(json!({
                        "connection": c.kind, "client_port": c.port, "server": server,
                        "apilb_state": before,
                        "opened": (c.opened * 100.0).round() / 100.0,
                        "committed": (at * 100.0).round() / 100.0,
                        "ready_by_then": ready_by_then,
                    }));
                }
                continue;
            }
            misrouted.push(json!({
                "connection": c.kind, "client_port": c.port, "server": server,
                "opened": (c.opened * 100.0).round() / 100.0,
                "committed": (at * 100.0).round() / 100.0, "apilb_state": before,
            }));
        }
    }
    let lat_json = |m: &mut HashMap<&'static str, Vec<f32>>| {
        let mut o = serde_json::Map::new();
        for (k, v) in m.iter_mut() {
            o.insert(
                k.to_string(),
                json!({
                    "n": v.len(),
                    "p50_s": (percentile(v, 0.5) * 100.0).round() / 100.0,
                    "max_s": (percentile(v, 1.0) * 100.0).round() / 100.0,
                }),
            );
        }
        Value::Object(o)
    };
    let lat_md = |m: &mut HashMap<&'static str, Vec<f32>>| {
        let mut l: Vec<_> = m.iter_mut().collect();
        l.sort_by_key(|(k, _)| *k);
        l.into_iter()
            .map(|(k, v)| {
                format!(
                    "{k} {:.2} / {:.2} s",
                    percentile(v, 0.5),
                    percentile(v, 1.0)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let detect_json = lat_json(&mut detect);
    let recover_json = lat_json(&mut recover);
    let detect_md = lat_md(&mut detect);
    let recover_md = lat_md(&mut recover);

    // --- resources
    let run: Vec<&Sample> = samples.iter().filter(|s| s.t <= traffic_end).collect();
    let third = traffic_end / 3.0;
    let mid: Vec<i64> = run
        .iter()
        .filter(|s| s.t > third && s.t <= 2.0 * third)
        .map(|s| s.rss_kib)
        .collect();
    let last: Vec<i64> = run
        .iter()
        .filter(|s| s.t > 2.0 * third)
        .map(|s| s.rss_kib)
        .collect();
    let (mid_rss, last_rss) = (median(mid), median(last));
    let rss_allowed = mid_rss + RSS_MARGIN_KIB + (mid_rss as f64 * RSS_MARGIN_FRACTION) as i64;
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // Least-squares slope of RSS over the last two thirds (reported, not judged).
    let tail: Vec<(f64, f64)> = run
        .iter()
        .filter(|s| s.t > third)
        .map(|s| (s.t, s.rss_kib as f64))
        .collect();
    let slope_kib_per_min = {
        let n = tail.len() as f64;
        let (mx, my) = (
            tail.iter().map(|p| p.0).sum::<f64>() / n,
            tail.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let num: f64 = tail.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let den: f64 = tail.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if n >= 3.0 && den > 0.0 {
            num / den * 60.0
        } else {
            0.0
        }
    };
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);

    let mut fail_reasons = Vec::new();
    if !mismatches.is_empty() {
        fail_reasons.push(format!(
            "{} byte mismatch(es); first: {} on connection {} at {:.2}s: {}",
            mismatches.len(),
            mismatches[0].op,
            mismatches[0].conn,
            mismatches[0].at,
            mismatches[0].what
        ));
    }
    if let Some(c) = &crashed {
        fail_reasons.push(format!("apilb crashed: {c}"));
    }
    if !view.panics.is_empty() {
        fail_reasons.push(format!("apilb panicked: {}", view.panics[0]));
    }
    match end {
        Some(e) if e.fds > baseline.fds + FD_MARGIN => fail_reasons.push(format!(
            "descriptor leak: apilb holds {} descriptors after traffic stopped and every fault \
             was lifted, {} at the start (allowed: +{FD_MARGIN})",
            e.fds, baseline.fds
        )),
        Some(_) => {}
        None if crashed.is_none() => {
            fail_reasons.push("could not sample apilb at the end".to_string())
        }
        None => {}
    }
    if last_rss > rss_allowed {
        fail_reasons.push(format!(
            "memory growth: median RSS {} KiB in the last third, {} KiB in the middle third \
             (allowed: +{} KiB + {:.0}%)",
            last_rss,
            mid_rss,
            RSS_MARGIN_KIB,
            RSS_MARGIN_FRACTION * 100.0
        ));
    }

    let total = |f: fn(&KindStats) -> u64| stats.values().map(f).sum::<u64>();
    let requests_ok = total(|k| k.ok);
    let requests_failed = total(|k| k.failed);
    let bytes_up = total(|k| k.bytes_up);
    let bytes_down = total(|k| k.bytes_down);
    let mut by_op = serde_json::Map::new();
    let mut ops: Vec<_> = stats.keys().copied().collect();
    ops.sort();
    for op in &ops {
        let mut k = stats[op].clone();
        by_op.insert(
            op.to_string(),
            json!({
                "ok": k.ok,
                "failed": k.failed,
                "bytes_up": k.bytes_up,
                "bytes_down": k.bytes_down,
                "p50_ms": (percentile(&mut k.latencies_ms, 0.5) * 10.0).round() / 10.0,
                "p99_ms": (percentile(&mut k.latencies_ms, 0.99) * 10.0).round() / 10.0,
                "max_ms": (percentile(&mut k.latencies_ms, 1.0) * 10.0).round() / 10.0,
            }),
        );
    }
    let fault_json: Vec<Value> = faults
        .iter()
        .map(|f| {
            json!({
                "server": name(f.server),
                "kind": f.kind.as_str(),
                "planned_at": (f.at * 100.0).round() / 100.0,
                "planned_seconds": (f.dur * 100.0).round() / 100.0,
                "began": f.began.map(|t| (t * 100.0).round() / 100.0),
                "lifted": f.ended.map(|t| (t * 100.0).round() / 100.0),
                "note": f.note,
            })
        })
        .collect();
    let mut kinds_count: HashMap<&str, usize> = HashMap::new();
    for f in faults.iter().filter(|f| f.began.is_some()) {
        *kinds_count.entry(f.kind.as_str()).or_default() += 1;
    }
    let pass = fail_reasons.is_empty();
    let other_count = other.len();
    let report = json!({
        "pass": pass,
        "fail_reasons": fail_reasons,
        "seconds": args.seconds,
        "seed": args.seed,
        "traffic_seconds": (traffic_end * 10.0).round() / 10.0,
        "failover_target_seconds": FAILOVER_TARGET,
        "requests": {
            "ok": requests_ok,
            "failed": requests_failed,
            "by_op": by_op,
            "connections_opened": conns.len(),
            "watch_events": ctx.rec.watch_events.load(Ordering::Relaxed),
        },
        "bytes": { "client_to_apilb": bytes_up, "apilb_to_client": bytes_down },
        "failures": {
            "unsavable": unsavable,
            "unsavable_by_fault": unsavable_by,
            "other": other_count,
            "other_list": other.iter().take(50).collect::<Vec<_>>(),
            "unsavable_examples": unsavable_examples,
        },
        "byte_mismatches": mismatches.len(),
        "mismatch_list": mismatches.iter().take(20).map(|m| json!({
            "op": m.op, "connection": m.conn, "t": m.at, "what": m.what,
        })).collect::<Vec<_>>(),
        "failover": {
            "connections_pinned_to_a_dead_server": pinned,
            "closed_within_target": closed_in_time,
            "resumed_after_a_short_fault": resumed,
            "left_hanging": hanging.len(),
            "hanging_list": hanging.iter().take(30).collect::<Vec<_>>(),
            "close_after_fault_seconds": latency_table,
            "longest_watch_silence_seconds": (max_gap * 100.0).round() / 100.0,
        },
        "faults": { "count": kinds_count, "list": fault_json },
        "apilb_verdicts": {
            "detected_after_seconds": detect_json,
            "back_ready_after_lift_seconds": recover_json,
            "never_detected": never_detected,
            "never_back_ready": never_recovered,
            "state_changes_without_a_fault": spurious,
            "state_changes_on_a_sub_second_stall": stall_flips,
            "passive_marks_without_a_fault": spurious_passive,
            "connections_sent_to_a_server_held_down_or_not_ready": misrouted.len(),
            "misrouted_list": misrouted.iter().take(30).collect::<Vec<_>>(),
            "fallbacks_to_a_server_not_held_ready_as_every_ready_one_was_dead": fallbacks,
            "fallbacks_while_another_server_had_become_ready_since_the_order_was_made": stale_order,
            "connections_per_server": per_server,
            "panic_mode_entered": view.panic_mode.len(),
        },
        "apilb": {
            "crashed": crashed,
            "panics": view.panics,
            "warnings": view.warnings,
            "errors": view.errors.iter().take(20).collect::<Vec<_>>(),
            "state_changes": view.state_changes,
            "sigterm": sigterm,
            "metrics_at_end": metrics,
        },
        "resources": {
            "start": { "rss_kib": baseline.rss_kib, "fds": baseline.fds },
            "end": end.map(|e| json!({ "rss_kib": e.rss_kib, "fds": e.fds, "client_connections": e.conns })),
            "rss_kib_max": rss_max,
            "fds_max": fds_max,
            "rss_kib_median_middle_third": mid_rss,
            "rss_kib_median_last_third": last_rss,
            "rss_kib_allowed_last_third": rss_allowed,
            "rss_kib_per_minute_slope_last_two_thirds": (slope_kib_per_min * 10.0).round() / 10.0,
            "fd_margin": FD_MARGIN,
            "samples": samples.iter().map(|s| json!([(s.t * 10.0).round() / 10.0, s.rss_kib, s.fds, s.conns])).collect::<Vec<_>>(),
            "samples_columns": ["t", "rss_kib", "fds", "client_connections"],
        },
    });

    // --- Markdown
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut md = String::new();
    md.push_str(&format!(
        "# apilb soak: {} s, seed {}\n\n**{}**{}\n\n",
        args.seconds,
        args.seed,
        if pass { "PASS" } else { "FAIL" },
        if pass {
            String::new()
        } else {
            format!(": {}", fail_reasons.join("; "))
        }
    ));
    let mut kinds: Vec<_> = kinds_count.iter().collect();
    kinds.sort();
    md.push_str("| measure | value |\n|---|---|\n");
    let rows: Vec<(String, String)> =
        vec![
        (
            "faults injected".into(),
            format!(
                "{} ({})",
                faults.iter().filter(|f| f.began.is_some()).count(),
                kinds
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            "requests ok / failed".into(),
            format!("{requests_ok} / {requests_failed}"),
        ),
        ("connections opened".into(), conns.len().to_string()),
        (
            "watch events received".into(),
            ctx.rec.watch_events.load(Ordering::Relaxed).to_string(),
        ),
        (
            "bytes moved (up / down)".into(),
            format!("{:.1} MiB / {:.1} MiB", mib(bytes_up), mib(bytes_down)),
        ),
        (
            "failures no L4 proxy can save (pinned to a server as it died)".into(),
            format!("{unsavable} ({})", {
                let mut u: Vec<_> = unsavable_by.iter().collect();
                u.sort();
                u.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        ("**other failures**".into(), format!("**{other_count}**")),
        (
            "**byte mismatches**".into(),
            format!("**{}**", mismatches.len()),
        ),
        (
            "connections pinned to a dead server: closed within 3 s / resumed / **left hanging**"
                .into(),
            format!(
                "{pinned}: {closed_in_time} / {resumed} / **{}**",
                hanging.len()
            ),
        ),
        ("time to close them after the fault (p50 / max)".into(), {
            let mut l: Vec<_> = close_latencies.iter_mut().collect();
            l.sort_by_key(|(k, _)| *k);
            l.into_iter()
                .map(|(k, v)| {
                    format!(
                        "{k} {:.2} / {:.2} s",
                        percentile(v, 0.5),
                        percentile(v, 1.0)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }),
        (
            "longest silence of a watch stream".into(),
            format!("{max_gap:.2} s"),
        ),
        ("apilb noticed the fault after (p50 / max)".into(), detect_md),
        ("apilb had it ready again after the fault was lifted (p50 / max)".into(), recover_md),
        (
            "faults apilb never noticed / servers never back ready".into(),
            format!("{} / {}", never_detected.len(), never_recovered.len()),
        ),
        (
            "state changes with no fault on the server / on a sub-second stall / passive marks on a healthy server".into(),
            format!("{} / {} / {}", spurious.len(), stall_flips.len(), spurious_passive.len()),
        ),
        (
            "new connections sent to a server apilb held down or not ready, while one it held ready was alive / fallbacks when none was (of which: another became ready before the commit)".into(),
            format!("{} / {fallbacks} ({})", misrouted.len(), stale_order.len()),
        ),
        (
            "times apilb entered panic mode (no server it held ready; a lifted fault not yet seen)".into(),
            view.panic_mode.len().to_string(),
        ),
        (
            "apilb RSS start / max / end".into(),
            format!(
                "{:.1} / {:.1} / {} MiB",
                baseline.rss_kib as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                end.map_or("-".into(), |e| format!("{:.1}", e.rss_kib as f64 / 1024.0))
            ),
        ),
        (
            "apilb RSS median, middle third → last third".into(),
            format!(
                "{:.1} → {:.1} MiB (allowed ≤ {:.1}); slope over the last two thirds {:+.0} KiB/min",
                mid_rss as f64 / 1024.0,
                last_rss as f64 / 1024.0,
                rss_allowed as f64 / 1024.0,
                slope_kib_per_min
            ),
        ),
        (
            "apilb descriptors start / max / end".into(),
            format!(
                "{} / {} / {} (allowed end ≤ {})",
                baseline.fds,
                fds_max,
                end.map_or("-".into(), |e| e.fds.to_string()),
                baseline.fds + FD_MARGIN
            ),
        ),
        (
            "apilb crashed / panicked".into(),
            format!(
                "{} / {}",
                if crashed.is_some() { "yes" } else { "no" },
                if view.panics.is_empty() { "no" } else { "yes" }
            ),
        ),
        ("apilb on SIGTERM at the end".into(), sigterm.clone()),
    ];
    for (k, v) in rows {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str(
        "\n| operation | ok | failed | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    for op in &ops {
        let v = &report["requests"]["by_op"][*op];
        if *op == "watch" {
            // A watch's "latency" is how long it was followed: not worth a column.
            md.push_str(&format!(
                "| watch streams | {} | {} | - | - | - |\n",
                v["ok"], v["failed"]
            ));
            continue;
        }
        md.push_str(&format!(
            "| {op} | {} | {} | {} | {} | {} |\n",
            v["ok"], v["failed"], v["p50_ms"], v["p99_ms"], v["max_ms"]
        ));
    }
    if other_count > 0 {
        md.push_str("\nOther failures (first 10):\n\n");
        for o in other.iter().take(10) {
            md.push_str(&format!("- `{o}`\n"));
        }
    }
    if !hanging.is_empty() {
        md.push_str("\nLeft hanging (first 10):\n\n");
        for o in hanging.iter().take(10) {
            md.push_str(&format!("- `{o}`\n"));
        }
    }
    md.push_str(
        "\nFault schedule:\n\n| server | fault | at (s) | lifted (s) |\n|---|---|---|---|\n",
    );
    for f in faults {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            name(f.server),
            f.kind.as_str(),
            f.began.map_or("not done".into(), |t| format!("{t:.2}")),
            f.ended.map_or("-".into(), |t| format!("{t:.2}"))
        ));
    }
    md.push_str("\n![apilb RSS and descriptors](soak-latest.png)\n");
    Analysis {
        report,
        fail_reasons,
        markdown: md,
    }
}

// ---------------------------------------------------------------------------------------

fn tls_connector(pki: &Pki, alpn: &[u8]) -> TlsConnector {
    let mut cfg = (*pki.client_config(false)).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("soak: needs root (iptables blackholes, signals to its servers)");
        return ExitCode::from(2);
    }
    if iptables(&["-S", "INPUT"]).is_err() {
        eprintln!("soak: iptables does not work here; install it (apt-get install iptables)");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(soak(args))
}

async fn soak(args: Args) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let setup = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let s: Vec<Standin> = (0..3u8)
            .map(|i| Standin::start(&pki, [127, 0, 0, 2 + i], &format!("cp{}", i + 1)))
            .collect();
        s
    }));
    let Ok(standins) = setup else {
        eprintln!("soak: could not start the stand-in servers");
        return ExitCode::from(2);
    };
    let addrs: Vec<SocketAddr> = standins.iter().map(|s| s.addr).collect();
    let names: HashMap<String, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (a.to_string(), format!("cp{}", i + 1)))
        .collect();
    let lb = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let refs: Vec<&Standin> = standins.iter().collect();
        let lb = Apilb::start(&pki, &refs, &[]);
        lb.wait_all_ready(&refs);
        lb
    }));
    let Ok(lb) = lb else {
        eprintln!("soak: apilb did not start or its servers did not become ready");
        return ExitCode::from(2);
    };
    let h1 = tls_connector(&pki, b"http/1.1");
    let h2 = tls_connector(&pki, b"h2");
    let servers = Arc::new(Servers {
        standins: standins.into_iter().map(Mutex::new).collect(),
        addrs: addrs.clone(),
        holes: Mutex::new(HashMap::new()),
        frozen: Mutex::new(vec![false; 3]),
        h1: h1.clone(),
    });
    let ctx = Arc::new(Ctx {
        lb: lb.listen,
        h1,
        h2,
        t0: Instant::now(),
        stop: CancellationToken::new(),
        rec: Recorder::default(),
        seed: args.seed,
    });
    let wall0 = SystemTime::now();
    let seconds = args.seconds as f64;
    let faults = schedule(args.seed, seconds);
    println!(
        "soak: apilb {} in front of cp1 {} cp2 {} cp3 {}; {} s, seed {}, {} faults planned",
        lb.listen,
        addrs[0],
        addrs[1],
        addrs[2],
        args.seconds,
        args.seed,
        faults.len()
    );

    // The start: idle apilb, its servers ready, before any client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(baseline) = sample(&ctx, &lb).await else {
        eprintln!("soak: cannot read apilb's /proc entries");
        return ExitCode::from(2);
    };

    // Ctrl-C / SIGTERM end the run early (with the report and full cleanup).
    {
        let stop = ctx.stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut a), Ok(mut b)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = a.recv() => {}, _ = b.recv() => {} }
            eprintln!("soak: interrupted; stopping early");
            stop.cancel();
        });
    }

    let mut workers = tokio::task::JoinSet::new();
    let mut wid = 0u64;
    for _ in 0..6 {
        wid += 1;
        workers.spawn(keepalive(ctx.clone(), wid, false));
    }
    for _ in 0..3 {
        wid += 1;
        workers.spawn(keepalive(ctx.clone(), wid, true));
    }
    for _ in 0..6 {
        wid += 1;
        workers.spawn(watcher(ctx.clone(), wid));
    }
    for _ in 0..12 {
        wid += 1;
        workers.spawn(idle(ctx.clone(), wid));
    }
    for share in [0.0, 1.0, 0.5] {
        wid += 1;
        workers.spawn(transfers(ctx.clone(), wid, share));
    }
    for _ in 0..2 {
        wid += 1;
        workers.spawn(new_connections(ctx.clone(), wid));
    }
    let fault_task = tokio::spawn(run_faults(ctx.clone(), servers.clone(), faults.clone()));

    // Sample every second until the end (or a crash).
    let mut samples = vec![baseline];
    let mut crashed = None;
    let mut next_print = 10.0;
    loop {
        if !ctx.sleep(Duration::from_secs(1)).await {
            break;
        }
        if !alive(lb.pid()) {
            crashed = Some(format!("apilb (pid {}) exited during the run", lb.pid()));
            break;
        }
        if let Some(s) = sample(&ctx, &lb).await {
            if s.t >= next_print {
                next_print += 10.0;
                let failed = ctx.rec.failures.lock().unwrap().len();
                println!(
                    "soak: {:7.2}s  apilb rss {:.1} MiB, {} fds, {} client connections; {} failures so far",
                    s.t,
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.conns,
                    failed
                );
            }
            samples.push(s);
        }
        if ctx.now() >= seconds {
            break;
        }
    }
    let traffic_end = ctx.now();
    ctx.stop.cancel();
    while workers.join_next().await.is_some() {}
    let faults = match fault_task.await {
        Ok(f) => f,
        Err(_) => faults,
    };
    servers.restore_all();
    println!("soak: {traffic_end:7.2}s  traffic stopped; every fault lifted");

    // The end: traffic stopped, every fault lifted. Wait (bounded) for apilb to see every
    // server ready and to close what it had open, then sample.
    let mut end = None;
    if crashed.is_none() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = admin_status(&lb).await;
            let ready = status.as_ref().is_some_and(|v| {
                v["servers"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|s| s["state"] == "ready"))
            });
            let s = sample(&ctx, &lb).await;
            if let Some(s) = s {
                samples.push(s);
                end = Some(s);
                if ready && s.conns == 0 && s.fds <= baseline.fds {
                    break;
                }
            }
            if Instant::now() > deadline || !alive(lb.pid()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !alive(lb.pid()) {
            crashed = Some(format!("apilb (pid {}) exited after the run", lb.pid()));
            end = None;
        }
    }

    let metrics = if crashed.is_none() {
        admin_get(&lb, "/metrics")
            .await
            .map(|m| counters(&m))
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    // A clean stop is part of the verdict's evidence (reported, not judged).
    let mut lb = lb;
    let sigterm = if crashed.is_none() {
        lb.signal(libc::SIGTERM);
        match std::panic::catch_unwind(AssertUnwindSafe(|| lb.wait_exit(Duration::from_secs(15)))) {
            Ok(Some(code)) => format!("exited {code}"),
            Ok(None) => "killed by a signal".to_string(),
            Err(_) => "still running after 15 s".to_string(),
        }
    } else {
        "-".to_string()
    };
    let view = read_apilb_log(&lb.logs(), wall0, &names);
    let interrupted = crashed.is_none() && traffic_end < seconds - 1.0;
    let mut analysis = analyse(
        &args,
        &ctx,
        &faults,
        &samples,
        &view,
        traffic_end,
        baseline,
        end,
        crashed,
        sigterm,
        metrics,
    );

    analysis.report["interrupted"] = json!(interrupted);
    if interrupted {
        analysis.markdown = analysis.markdown.replacen(
            "\n\n",
            &format!("\n\n**Interrupted** at {traffic_end:.1} s: a partial run.\n\n"),
            1,
        );
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("soak: cannot create {}: {e}", args.out.display());
    }
    let json_path = args.out.join("soak-latest.json");
    let md_path = args.out.join("soak-latest.md");
    let log_path = args.out.join("soak-latest-apilb-events.jsonl");
    let _ = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&analysis.report).unwrap() + "\n",
    );
    let _ = std::fs::write(&md_path, &analysis.markdown);
    // apilb's warnings and errors (not its per-connection debug lines), for the reader.
    let notable: String = lb
        .logs()
        .iter()
        .filter(|v| !matches!(v["level"].as_str(), Some("DEBUG") | Some("TRACE")))
        .map(|v| v.to_string() + "\n")
        .collect();
    let _ = std::fs::write(&log_path, notable);
    println!("\n{}", analysis.markdown);
    println!(
        "soak: wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        log_path.display()
    );
    drop(lb);
    drop(servers);
    if analysis.fail_reasons.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        for r in &analysis.fail_reasons {
            eprintln!("soak: FAIL: {r}");
        }
        ExitCode::from(1)
    }
}
