//! The soak under faults (`bench/soak` builds and runs this; see bench/SOAK.md).
//!
//! apilb in front of three TLS stand-in apiservers (127.0.0.2–4, each behind a latency relay
//! on 127.0.0.5–7, which is what apilb is given) under mixed traffic — kept-alive small
//! requests over HTTP/1.1 and HTTP/2, long watch streams, uploads echoed back, downloads and
//! slow responses, every byte verified, new connections — while a seeded, reproducible fault
//! schedule kills (then restarts), blackholes (iptables DROP in a chain of our own), marks
//! not ready (/readyz 500), freezes (SIGSTOP for seconds), stalls (SIGSTOP for under a
//! second, which connections must ride out) and gracefully shuts down (SIGTERM: the
//! stand-in does kube-apiserver's sequence, with or without a shutdown delay, then is
//! restarted) servers, never more than two at a time, and slows every path at once (a
//! latency spike on all three relays). apilb's RSS and descriptors are sampled every second.
//!
//! Afterwards every client-visible failure is classified against the fault log: a failure on
//! a connection that was pinned to a server at the instant that server was killed, frozen or
//! blackholed is one no L4 proxy can save; a failure on a server shutting down gracefully is
//! a request cut in flight (there must be none); anything else is counted apart, with
//! examples. A stream that ended on a server that did not go silent, or that apilb closed
//! while its server was not silent, is a healthy stream reset (there must be none). apilb's
//! own verdicts are checked too: how fast it noticed each fault and took the server back,
//! state changes no fault explains, new connections sent to servers it held down.
//! apilb's own debug log says which server each client connection went to, so even a
//! connection that failed before its first answer is attributed.
//!
//! Exit status: 0 pass; 1 byte mismatch, a request cut by a graceful shutdown, a healthy
//! stream reset, apilb crash/panic, or leak (the reasons printed); 2 the soak could not run
//! (not root, no iptables, a setup step failed).
//!
//! Built as a `harness = false` bench target so that it can share the integration tests'
//! harness (`tests/common`), which needs the paths of the binaries Cargo builds.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, VecDeque};
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

use common::{Apilb, Pki, Relay, Standin, SERVER_NAME};

/// A stream on a dead server must be closed within this (the design's failover target).
const FAILOVER_TARGET: f64 = 3.0;
/// Descriptors apilb may hold at the end above the start (after traffic and faults stop).
const FD_MARGIN: i64 = 4;
/// RSS growth allowed from the middle third to the last third of the run.
const RSS_MARGIN_KIB: i64 = 2 * 1024;
const RSS_MARGIN_FRACTION: f64 = 0.10;
/// Interval of the watch streams' events.
const WATCH_INTERVAL_MS: u64 = 100;
/// Latency a spike adds on every path, each way (every PING is late; none is lost).
const SPIKE_DELAY: f64 = 0.8;
/// apilb's default `--health-readyz-interval`: a not-ready fault shorter than this is seen
/// only when a /readyz happens to fall inside it.
const READYZ_INTERVAL: f64 = 30.0;
/// The longest a graceful shutdown may take (the stand-in's own limit is 60 s).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(70);

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
    /// SIGTERM to a `--graceful` stand-in (kube-apiserver's shutdown, with `delay` as its
    /// shutdown delay), then a restart on the same address once it has exited.
    Graceful,
    /// `delay` more latency each way on every path at once (all three relays).
    Spike,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Blackhole => "blackhole",
            Kind::NotReady => "not_ready",
            Kind::Freeze => "freeze",
            Kind::Stall => "stall",
            Kind::Graceful => "graceful",
            Kind::Spike => "spike",
        }
    }
    /// Kills, freezes and blackholes leave the server's connections dead in the water.
    fn hard(self) -> bool {
        matches!(self, Kind::Kill | Kind::Blackhole | Kind::Freeze)
    }
    /// Silence: nothing answers for longer than apilb's PING windows. The only faults that
    /// may have apilb close client connections.
    fn silent(self) -> bool {
        matches!(self, Kind::Blackhole | Kind::Freeze)
    }
    /// The state apilb's failure model gives a server under this fault ("silence closes,
    /// speech drains": a killed process's kernel refuses and resets, which is speech).
    fn expected_state(self) -> Option<&'static str> {
        match self {
            Kind::Blackhole | Kind::Freeze => Some("down"),
            Kind::Kill | Kind::Graceful => Some("draining"),
            Kind::NotReady => Some("not_ready"),
            Kind::Stall | Kind::Spike => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    /// The server (a spike is on every path; its `server` is 0 and means nothing).
    server: usize,
    kind: Kind,
    /// Planned start and length (seconds from the start of traffic).
    at: f64,
    dur: f64,
    /// Graceful: the shutdown delay (/readyz fails, then the listener closes). Spike: the
    /// latency added each way.
    delay: f64,
    /// When the fault was in force and when it was lifted, as executed.
    began: Option<f64>,
    ended: Option<f64>,
    /// Graceful: when the stand-in exited, and its exit status.
    exited: Option<f64>,
    exit_code: Option<i32>,
    note: String,
}

impl Fault {
    fn target(&self) -> String {
        if self.kind == Kind::Spike {
            "all".to_string()
        } else {
            format!("cp{}", self.server + 1)
        }
    }
    /// Graceful: when the listener closed (the shutdown delay after SIGTERM).
    fn listener_closed(&self) -> Option<f64> {
        self.began.map(|b| b + self.delay)
    }
    /// Graceful: until when the server was leaving (its exit, else its restart).
    fn gone(&self) -> Option<f64> {
        self.exited.or(self.ended)
    }
}

/// Seeded and reproducible: a fault starts every 1–5 s on a server that is not already
/// faulted or recovering, as long as at most one other is; each lasts 4–12 s (a stall
/// 0.2–1 s, a spike 1–2 s, a graceful shutdown its delay plus 2–6 s until the restart);
/// kinds come from a shuffled bag (a graceful shutdown twice, with and without a shutdown
/// delay) so every kind shows up early. A spike needs every server free and waits in the bag
/// for a slot where they are. Nothing in the first 5 s, and every fault is lifted 5 s before
/// the end.
fn schedule(seed: u64, seconds: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let warmup = 5.0;
    let quiet_from = seconds - 5.0;
    let mut faults = Vec::new();
    // Until when each server is faulted, and until when it is left alone to recover.
    let mut faulted_until = [0.0f64; 3];
    let mut busy_until = [0.0f64; 3];
    // (kind, with a shutdown delay)
    let mut bag: Vec<(Kind, bool)> = Vec::new();
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
        if bag.is_empty() {
            bag = vec![
                (Kind::Kill, false),
                (Kind::Blackhole, false),
                (Kind::NotReady, false),
                (Kind::Freeze, false),
                (Kind::Stall, false),
                (Kind::Graceful, false),
                (Kind::Graceful, true),
                (Kind::Spike, false),
            ];
            bag.shuffle(&mut rng);
        }
        let all_free = free.len() == 3 && down == 0;
        let Some(pick) = bag.iter().rposition(|(k, _)| all_free || *k != Kind::Spike) else {
            continue;
        };
        let (kind, delayed) = bag.remove(pick);
        let server = if kind == Kind::Spike {
            0
        } else {
            free[rng.random_range(0..free.len())]
        };
        let (dur, delay) = match kind {
            Kind::Stall => (rng.random_range(0.2..1.0f64), 0.0),
            Kind::Spike => (rng.random_range(1.0..2.0f64), SPIKE_DELAY),
            Kind::Graceful => {
                let delay = if delayed {
                    rng.random_range(2.0..4.0f64).min(quiet_from - t - 2.0)
                } else {
                    0.0
                };
                (
                    (delay + rng.random_range(2.0..6.0f64)).min(quiet_from - t),
                    delay,
                )
            }
            _ => (rng.random_range(4.0..12.0f64).min(quiet_from - t), 0.0),
        };
        let hit: Vec<usize> = if kind == Kind::Spike {
            vec![0, 1, 2]
        } else {
            vec![server]
        };
        for s in hit {
            faulted_until[s] = t + dur;
            busy_until[s] = t + dur + 3.0;
        }
        faults.push(Fault {
            server,
            kind,
            at: t,
            dur,
            delay,
            began: None,
            ended: None,
            exited: None,
            exit_code: None,
            note: String::new(),
        });
    }
    faults
}

// ---------------------------------------------------------------------------------------
// What the clients saw

/// How an operation (a request, a transfer, a watch stream) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    /// Never taken by the server: its connection was already closed, or the server refused
    /// it (GOAWAY, REFUSED_STREAM, or an idempotent request's HTTP/1.1 connection closed
    /// before any answer). A client retries it on a new connection, as Go's transport does;
    /// the worker does just that.
    Retried,
    /// A watch stream the server ended cleanly (its final chunk, END_STREAM).
    Ended,
    /// A failure, but of a request the server never answered a byte of, that a client
    /// cannot retry (`UNANSWERED`).
    Unanswered,
}

#[derive(Clone, Copy)]
struct OpRec {
    start: f32,
    end: f32,
    outcome: Outcome,
}

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
    /// Every operation on it, with its outcome.
    ops: Vec<OpRec>,
}

#[derive(Default, Clone)]
struct KindStats {
    ok: u64,
    failed: u64,
    retried: u64,
    ended_by_server: u64,
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
    /// Requests retried (never taken by the server), with their connection and error.
    retries: Mutex<Vec<Failure>>,
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

/// What a request (or a transfer) came to, for the worker deciding what to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Res {
    Ok,
    Failed,
    /// Not taken by the server (see `Outcome::Retried`): reconnect and go on.
    Retry,
    /// A watch ended cleanly by its server: reconnect and go on.
    Ended,
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

    fn op_done(&self, id: usize, start: f64, outcome: Outcome) -> f64 {
        let now = self.now();
        let mut c = self.rec.conns.lock().unwrap();
        let r = &mut c[id];
        if matches!(outcome, Outcome::Ok | Outcome::Ended) {
            r.ok_times.push(now as f32);
        }
        r.ops.push(OpRec {
            start: start as f32,
            end: now as f32,
            outcome,
        });
        now
    }

    fn ok(&self, id: usize, op: &'static str, start: f64, up: u64, down: u64) {
        let now = self.op_done(id, start, Outcome::Ok);
        let mut s = self.rec.stats.lock().unwrap();
        let k = s.entry(op).or_default();
        k.ok += 1;
        k.bytes_up += up;
        k.bytes_down += down;
        k.latencies_ms.push(((now - start) * 1000.0) as f32);
    }

    /// A watch stream its server ended cleanly (a graceful shutdown): not a failure.
    fn ended_by_server(&self, id: usize, start: f64, down: u64) {
        self.op_done(id, start, Outcome::Ended);
        {
            let mut s = self.rec.stats.lock().unwrap();
            let k = s.entry("watch").or_default();
            k.ended_by_server += 1;
            k.bytes_down += down;
        }
        self.conn_ended(id, "watch ended cleanly by its server", false);
    }

    /// A request the server never took: not a failure; the worker reconnects.
    fn retried(&self, id: usize, op: &'static str, start: f64, err: String) {
        self.op_done(id, start, Outcome::Retried);
        self.rec
            .stats
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .retried += 1;
        self.conn_ended(
            id,
            &format!("closed by the server before it took a request: {err}"),
            false,
        );
        self.rec.retries.lock().unwrap().push(Failure {
            conn: Some(id),
            op,
            start,
            at: self.now(),
            err,
        });
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
            let outcome = if err.starts_with(UNANSWERED) {
                Outcome::Unanswered
            } else {
                Outcome::Failed
            };
            self.op_done(id, start, outcome);
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

    /// A send error: retried when the server never took the request, a failure otherwise.
    fn send_failed(&self, id: usize, op: &'static str, start: f64, e: SendError) -> Res {
        if e.retry {
            self.retried(id, op, start, e.msg);
            Res::Retry
        } else {
            self.fail(Some(id), op, start, e.msg, (0, 0));
            Res::Failed
        }
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

    async fn send(&mut self, req: Request<B>) -> Result<Response<Incoming>, SendError> {
        let idempotent = req.method() == http::Method::GET;
        let class = |e| SendError::of(e, idempotent);
        match &mut self.send {
            Send::H1(s) => {
                s.ready().await.map_err(class)?;
                s.send_request(req).await.map_err(class)
            }
            Send::H2(s) => {
                s.ready().await.map_err(class)?;
                s.send_request(req).await.map_err(class)
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

/// The start of the error of a non-idempotent request whose HTTP/1.1 connection the server
/// closed before any byte of an answer: the race with a server closing what it took for an
/// idle connection. Not retried (a client cannot know the server never took it), recorded
/// as a failure, and told apart by the analysis.
const UNANSWERED: &str = "no answer: the server closed the connection before any byte of one";

/// A request that got no response head, and whether the server provably never took it.
struct SendError {
    retry: bool,
    msg: String,
}

impl SendError {
    /// Never taken: the connection was already closed (`is_closed`) or closed before the
    /// request went out (`is_canceled`); HTTP/2 refused it (REFUSED_STREAM, or a stream
    /// above the last one a GOAWAY lets finish); or, for an idempotent request, HTTP/1.1's
    /// race with a server closing an idle connection (closed before any byte of an answer).
    /// Go's transport retries all of these on a new connection, and so do the workers.
    fn of(e: hyper::Error, idempotent: bool) -> SendError {
        let retry = e.is_closed()
            || e.is_canceled()
            || (idempotent && e.is_incomplete_message())
            || refused_by_h2(&e);
        let msg = if !idempotent && e.is_incomplete_message() {
            format!("{UNANSWERED} ({e})")
        } else {
            e.to_string()
        };
        SendError { retry, msg }
    }

    fn failed(msg: String) -> SendError {
        SendError { retry: false, msg }
    }
}

fn refused_by_h2(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = source {
        if let Some(h) = x.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = x.source();
    }
    false
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
async fn whoami(ctx: &Ctx, c: &mut Conn, op: &'static str) -> Res {
    let start = ctx.now();
    let work = async {
        let resp = c.send(c.req("GET", "/whoami", empty())).await?;
        if resp.status() != StatusCode::OK {
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::failed(format!("body: {e}")))?
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
                    Res::Ok
                }
                _ => {
                    ctx.mismatch(
                        c.id,
                        op,
                        format!("/whoami body {:?}", String::from_utf8_lossy(&body)),
                    );
                    Res::Failed
                }
            }
        }
        Ok(Err(e)) => ctx.send_failed(c.id, op, start, e),
        Err(_) => {
            ctx.fail(
                Some(c.id),
                op,
                start,
                "no answer within 10 s".into(),
                (0, 0),
            );
            Res::Failed
        }
    }
}

/// GET `path` answering `n` bytes of the /bytes pattern (byte i is i % 251), every byte
/// checked: `/bytes?n=N` (as fast as it goes) or `/slow?n=N&ms=M` (spread over M ms, a
/// request that is in flight for a while).
async fn fetch_pattern(
    ctx: &Ctx,
    c: &mut Conn,
    op: &'static str,
    path: String,
    n: u64,
    limit: Duration,
) -> Res {
    let start = ctx.now();
    let mut got = 0u64;
    let id = c.id;
    let mut mismatch = None;
    let work = async {
        let resp = c.send(c.req("GET", &path, empty())).await?;
        if resp.status() != StatusCode::OK {
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f =
                f.map_err(|e| SendError::failed(format!("body after {got} of {n} bytes: {e}")))?;
            if let Ok(data) = f.into_data() {
                if mismatch.is_none() {
                    if let Some(i) = data
                        .iter()
                        .enumerate()
                        .position(|(i, &b)| u64::from(b) != (got + i as u64) % 251)
                    {
                        mismatch = Some(format!(
                            "{path}: byte {} is {}, expected {}",
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
    let r = tokio::time::timeout(limit, work).await;
    if let Some(m) = mismatch {
        ctx.mismatch(id, op, m);
        return Res::Failed;
    }
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, op, start, 0, got);
            Res::Ok
        }
        Ok(Ok(())) if got > n => {
            ctx.mismatch(id, op, format!("{path} returned {got} bytes"));
            Res::Failed
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                op,
                start,
                format!("ended after {got} of {n} bytes"),
                (0, got),
            );
            Res::Failed
        }
        Ok(Err(e)) if e.retry => ctx.send_failed(id, op, start, e),
        Ok(Err(e)) => {
            ctx.fail(Some(id), op, start, e.msg, (0, got));
            Res::Failed
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                op,
                start,
                format!("not done in {} s ({got} of {n} bytes)", limit.as_secs()),
                (0, got),
            );
            Res::Failed
        }
    }
}

/// GET /bytes?n=N, every byte checked.
async fn download(ctx: &Ctx, c: &mut Conn, n: u64) -> Res {
    fetch_pattern(
        ctx,
        c,
        "download",
        format!("/bytes?n={n}"),
        n,
        Duration::from_secs(60),
    )
    .await
}

/// POST /echo with a seeded body streamed up while the echo streams back, checked.
async fn upload(ctx: &Ctx, c: &mut Conn, n: u64, seed: u64) -> Res {
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
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f =
                f.map_err(|e| SendError::failed(format!("echo after {got} of {n} bytes: {e}")))?;
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
        return Res::Failed;
    }
    // What went up is at least what came back.
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, "upload", start, n, got);
            Res::Ok
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("echo ended after {got} of {n} bytes"),
                (got, got),
            );
            Res::Failed
        }
        Ok(Err(e)) if e.retry => ctx.send_failed(id, "upload", start, e),
        Ok(Err(e)) => {
            ctx.fail(Some(id), "upload", start, e.msg, (got, got));
            Res::Failed
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("not done in 60 s ({got} of {n} bytes back)"),
                (got, got),
            );
            Res::Failed
        }
    }
}

/// Follows GET /watch until `until` or the stop; every event checked (consecutive `seq`,
/// one server). `Res::Ok` when followed to the end, `Res::Ended` when the server ended it
/// cleanly (a graceful shutdown), else what went wrong (recorded).
async fn watch(ctx: &Ctx, c: &mut Conn, until: f64) -> Res {
    let start = ctx.now();
    let id = c.id;
    let path = format!("/watch?interval_ms={WATCH_INTERVAL_MS}");
    let req = c.req("GET", &path, empty());
    let resp = match c.send(req).await {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            ctx.fail(
                Some(id),
                "watch",
                start,
                format!("status {}", r.status()),
                (0, 0),
            );
            return Res::Failed;
        }
        Err(e) => return ctx.send_failed(id, "watch", start, e),
    };
    let mut body = resp.into_body();
    let mut line = Vec::new();
    let mut next_seq = 0u64;
    let mut bytes = 0u64;
    loop {
        let left = until - ctx.now();
        if left <= 0.0 || ctx.stop.is_cancelled() {
            ctx.ok(id, "watch", start, 0, bytes);
            return Res::Ok;
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
                return Res::Failed;
            }
            // The final chunk (HTTP/1.1) or END_STREAM (HTTP/2): the server ended it, as
            // kube-apiserver ends its watches when it shuts down. A reset is an error below.
            Ok(None) => {
                ctx.ended_by_server(id, start, bytes);
                return Res::Ended;
            }
            Ok(Some(Err(e))) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    format!("stream after {next_seq} events: {e}"),
                    (0, bytes),
                );
                return Res::Failed;
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
                    return Res::Failed;
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

/// After an operation that did not succeed: a retried request or a cleanly ended watch
/// reconnects at once (the connection is gone, nothing failed); a failure backs off first.
async fn after(ctx: &Ctx, c: Conn, r: Res, backoff: Duration) {
    c.abandon(ctx);
    if r == Res::Failed {
        ctx.sleep(backoff).await;
    }
}

/// A kept-alive connection making a small request every 50–150 ms; HTTP/2 ones also carry
/// a watch stream, as a kubelet's connection does.
async fn keepalive(ctx: Arc<Ctx>, wid: u64, h2: bool) {
    let mut rng = worker_rng(ctx.seed, wid);
    let kind = if h2 { "keepalive-h2" } else { "keepalive-h1" };
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, kind, h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = whoami(&ctx, &mut c, "request").await;
        if r != Res::Ok {
            after(&ctx, c, r, backoff).await;
            continue;
        }
        let mut watch_task = c.h2_handle().map(|s| {
            let ctx = ctx.clone();
            let id = c.id;
            tokio::spawn(async move {
                // The watch shares the connection's record; it needs no Conn of its own.
                let mut shell = Conn {
                    id,
                    send: Send::H2(s),
                    driver: tokio::spawn(async {}),
                };
                watch(&ctx, &mut shell, f64::MAX).await
            })
        });
        let r = loop {
            let pause = Duration::from_millis(rng.random_range(50..150));
            if !ctx.sleep(pause).await {
                break Res::Ok;
            }
            if let Some(t) = watch_task.take_if(|t| t.is_finished()) {
                // The watch ended: cleanly by its server, or it failed (recorded).
                break t.await.unwrap_or(Res::Failed);
            }
            let r = whoami(&ctx, &mut c, "request").await;
            if r != Res::Ok {
                break r;
            }
        };
        if let Some(t) = watch_task.take() {
            if r == Res::Failed {
                t.abort();
            } else {
                // The run's end, or a request the server refused (GOAWAY): the watch runs
                // to its own end, which the server gives it.
                let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Mostly idle HTTP/2 connections (a node's many agents): a request every 2–5 s. Only apilb
/// closing them tells such a client that its server died.
async fn idle(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(500);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "idle-h2", true).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = loop {
            let r = whoami(&ctx, &mut c, "request").await;
            if r != Res::Ok {
                break r;
            }
            if !ctx
                .sleep(Duration::from_millis(rng.random_range(2000..5000)))
                .await
            {
                break Res::Ok;
            }
        };
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Watch streams on their own HTTP/1.1 connections, reopened after 10–40 s (as an
/// apiserver's watch timeout would), at once when their server ends them, and after a short
/// pause when they fail.
async fn watcher(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "watch", false).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = whoami(&ctx, &mut c, "request").await;
        if r != Res::Ok {
            after(&ctx, c, r, backoff).await;
            continue;
        }
        let until = ctx.now() + rng.random_range(10.0..40.0);
        let r = watch(&ctx, &mut c, until).await;
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Uploads and downloads on kept-alive connections (1–5 transfers each), verified.
async fn transfers(ctx: Arc<Ctx>, wid: u64, upload_share: f64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.3);
        let Some(mut c) = open(&ctx, "transfer", h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let mut r = whoami(&ctx, &mut c, "request").await;
        if r == Res::Ok {
            for _ in 0..rng.random_range(1..=5) {
                if ctx.stop.is_cancelled() {
                    break;
                }
                r = if rng.random_bool(upload_share) {
                    let n = size(&mut rng, 16e3, 4e6);
                    upload(&ctx, &mut c, n, rng.random()).await
                } else {
                    let n = size(&mut rng, 16e3, 16e6);
                    download(&ctx, &mut c, n).await
                };
                if r != Res::Ok {
                    break;
                }
                ctx.sleep(Duration::from_millis(rng.random_range(50..300)))
                    .await;
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Slow responses on kept-alive connections (half HTTP/2): `GET /slow`, 32 KiB–1 MiB spread
/// over 1–6 s, every byte checked, 1–4 per connection. Something is nearly always in flight
/// on every server, so a graceful shutdown has requests to finish.
async fn slow(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.5);
        let Some(mut c) = open(&ctx, "slow", h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let mut r = whoami(&ctx, &mut c, "request").await;
        if r == Res::Ok {
            for _ in 0..rng.random_range(1..=4) {
                if ctx.stop.is_cancelled() {
                    break;
                }
                let n = size(&mut rng, 32.0 * 1024.0, 1024.0 * 1024.0);
                let ms = rng.random_range(1000..6000u64);
                let path = format!("/slow?n={n}&ms={ms}");
                r = fetch_pattern(&ctx, &mut c, "slow", path, n, Duration::from_secs(60)).await;
                if r != Res::Ok {
                    break;
                }
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// A new connection for every request, as a restarting client or a CLI would.
async fn new_connections(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.5);
        if let Some(mut c) = open(&ctx, "new", h2).await {
            if whoami(&ctx, &mut c, "new-connection").await == Res::Ok {
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
    /// The stand-ins' own addresses (for `PUT /-/readyz`).
    direct: Vec<SocketAddr>,
    /// The relays in front of them: the servers as apilb knows them (blackholes go here).
    addrs: Vec<SocketAddr>,
    relays: Vec<Relay>,
    holes: Mutex<HashMap<usize, Blackhole>>,
    frozen: Mutex<Vec<bool>>,
    /// Per server, the shutdown delays of its graceful shutdowns to come, in order: each
    /// (re)start gives the stand-in the next one (`--shutdown-delay` is fixed per process).
    delays: Mutex<Vec<VecDeque<f64>>>,
    /// Graceful shutdowns under way: the wait for the process's exit.
    exits: Mutex<HashMap<usize, tokio::task::JoinHandle<Exit>>>,
    h1: TlsConnector,
}

/// When a stand-in exited, and its exit status.
type Exit = (Instant, Option<i32>);

/// What lifting a fault found (a graceful shutdown's exit).
#[derive(Default)]
struct Lifted {
    exited: Option<Exit>,
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
            let tcp = TcpStream::connect(self.direct[i])
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

    /// The shutdown delay the next process of server `i` gets.
    fn next_delay(&self, i: usize) -> Duration {
        let d = self.delays.lock().unwrap()[i].front().copied();
        Duration::from_secs_f64(d.unwrap_or(0.0))
    }

    fn restart(&self, i: usize) -> Result<(), String> {
        let delay = self.next_delay(i);
        let mut last = String::new();
        for _ in 0..5 {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut s = self.standins[i].lock().unwrap_or_else(|e| e.into_inner());
                s.graceful = Some(delay);
                s.restart()
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

    /// SIGTERM to a `--graceful` stand-in; its exit is waited for off the fault loop.
    fn terminate(&self, f: &Fault) -> Result<(), String> {
        let i = f.server;
        let delay = self.delays.lock().unwrap()[i].pop_front();
        if delay != Some(f.delay) {
            return Err(format!(
                "cp{} runs with shutdown delay {delay:?}, the schedule says {}",
                i + 1,
                f.delay
            ));
        }
        let child = self.standins[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_process();
        let Some(mut child) = child else {
            return Err(format!("cp{} is not running", i + 1));
        };
        // Signalled before it is handed to the waiter, which alone reaps it.
        if unsafe { libc::kill(child.id() as i32, libc::SIGTERM) } != 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("SIGTERM to cp{}: {e}", i + 1));
        }
        let waiter = tokio::task::spawn_blocking(move || {
            let status = child.wait().ok().and_then(|s| s.code());
            (Instant::now(), status)
        });
        self.exits.lock().unwrap().insert(i, waiter);
        Ok(())
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
            Kind::Graceful => self.terminate(f),
            Kind::Spike => {
                for r in &self.relays {
                    r.set_delay(Duration::from_secs_f64(f.delay));
                }
                Ok(())
            }
        }
    }

    async fn end(&self, f: &Fault) -> Result<Lifted, String> {
        let i = f.server;
        let mut lifted = Lifted::default();
        match f.kind {
            Kind::Kill => tokio::task::block_in_place(|| self.restart(i))?,
            Kind::Blackhole => {
                let bh = self.holes.lock().unwrap().remove(&i);
                tokio::task::block_in_place(|| drop(bh));
            }
            Kind::NotReady => self.set_readyz(i, 200).await?,
            Kind::Freeze | Kind::Stall => {
                self.frozen.lock().unwrap()[i] = false;
                self.signal(i, libc::SIGCONT)?
            }
            Kind::Graceful => {
                // Restarted once it has exited: the shutdown is its own to finish.
                let waiter = self.exits.lock().unwrap().remove(&i);
                if let Some(w) = waiter {
                    match tokio::time::timeout(SHUTDOWN_WAIT, w).await {
                        Ok(Ok(exit)) => lifted.exited = Some(exit),
                        Ok(Err(e)) => return Err(format!("waiting for cp{}: {e}", i + 1)),
                        Err(_) => {
                            return Err(format!(
                                "cp{} did not exit within {SHUTDOWN_WAIT:?} of SIGTERM",
                                i + 1
                            ))
                        }
                    }
                }
                tokio::task::block_in_place(|| self.restart(i))?
            }
            Kind::Spike => {
                for r in &self.relays {
                    r.set_delay(Duration::ZERO);
                }
            }
        }
        Ok(lifted)
    }

    /// Lifts whatever is still in force (an interrupted run): thaw, unblackhole, no latency.
    fn restore_all(&self) {
        self.holes.lock().unwrap().clear();
        for r in &self.relays {
            r.set_delay(Duration::ZERO);
        }
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
    let rel = |t: Instant| t.saturating_duration_since(ctx.t0).as_secs_f64();
    for (at, i, start) in events {
        let wait = at - ctx.now();
        if wait > 0.0 && !ctx.sleep(Duration::from_secs_f64(wait)).await {
            break;
        }
        let f = faults[i].clone();
        let name = f.target();
        if start {
            let r = servers.begin(&f, i).await;
            let now = ctx.now();
            match r {
                Ok(()) => {
                    faults[i].began = Some(now);
                    let how = match f.kind {
                        Kind::Graceful => format!(", shutdown delay {:.1}s", f.delay),
                        Kind::Spike => format!(", +{:.1}s each way", f.delay),
                        _ => String::new(),
                    };
                    println!(
                        "soak: {now:7.2}s  {:<9} {name} for {:.1}s{how}",
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
                Ok(lifted) => {
                    let mut how = String::new();
                    if let Some((t, code)) = lifted.exited {
                        faults[i].exited = Some(rel(t));
                        faults[i].exit_code = code;
                        how = format!(
                            ", exited {:.2}s after SIGTERM with {code:?}",
                            rel(t) - faults[i].began.unwrap_or(0.0)
                        );
                    }
                    println!(
                        "soak: {now:7.2}s  restored  {name} ({}{how})",
                        f.kind.as_str()
                    )
                }
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
            if let Ok(Lifted {
                exited: Some((t, code)),
            }) = servers.end(f).await
            {
                f.exited = Some(rel(t));
                f.exit_code = code;
            }
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
    const KEEP: [&str; 8] = [
        "apilb_connections_accepted_total",
        "apilb_connections_rejected_total",
        "apilb_connect_attempts_total",
        "apilb_failover_closed_connections_total",
        "apilb_health_failures_total",
        "apilb_first_byte_replays_total",
        "apilb_bytes_total",
        "apilb_log_write_errors_total",
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
    /// Per client port: when apilb closed it because its server went silent, and the server
    /// (from the line itself: a port is soon reused, by a connection to another server).
    failover_closed: HashMap<u16, Vec<(f64, String)>>,
    /// Health observations that failed: (time, server name, cause).
    health_failures: Vec<(f64, String, String)>,
    /// "closing the connections of a silent server": (time, server, connections, witness).
    silent_closes: Vec<(f64, String, u64, String)>,
    /// "silent, but no other server has answered since": (time, server, connections kept).
    silent_kept: Vec<(f64, String, u64)>,
    panics: Vec<String>,
    state_changes: Vec<Value>,
    /// Per server name: (time, new state), in order.
    states: HashMap<String, Vec<(f64, String)>>,
    /// Passive failure marks: (time, server name, cause).
    passive_marks: Vec<(f64, String, String)>,
    panic_mode: Vec<f64>,
    warnings: usize,
    errors: Vec<String>,
    /// apilb's server names (the relays' addresses) → the stand-ins' names.
    names: HashMap<String, String>,
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
        health_failures: Vec::new(),
        silent_closes: Vec::new(),
        silent_kept: Vec::new(),
        panics: Vec::new(),
        state_changes: Vec::new(),
        states: HashMap::new(),
        passive_marks: Vec::new(),
        panic_mode: Vec::new(),
        warnings: 0,
        errors: Vec::new(),
        names: names.clone(),
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
                let s = v["server"].as_str().unwrap_or("");
                let s = names.get(s).cloned().unwrap_or_else(|| s.to_string());
                view.failover_closed.entry(p).or_default().push((t, s));
            }
        } else if msg == "health check failed" {
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                let cause = v["cause"].as_str().unwrap_or("").to_string();
                view.health_failures.push((t, s.clone(), cause));
            }
        } else if msg.starts_with("closing the connections of a silent server") {
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                let n = v["closing_connections"].as_u64().unwrap_or(0);
                let w = v["answered"].as_str().unwrap_or("");
                let w = names.get(w).cloned().unwrap_or_else(|| w.to_string());
                view.silent_closes.push((t, s.clone(), n, w));
            }
        } else if msg.starts_with("silent, but no other server has answered") {
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                let n = v["open_connections"].as_u64().unwrap_or(0);
                view.silent_kept.push((t, s.clone(), n));
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
    fn name_of(&self, server: &str) -> String {
        self.names
            .get(server)
            .cloned()
            .unwrap_or_else(|| server.to_string())
    }
    /// The server apilb committed the client port to, around `t`.
    /// The first commit from `port` after the client opened its connection is that
    /// connection's (its port is its own while it is open; once closed, the port is soon
    /// reused by a connection that may go to another server). 50 ms for the two clocks.
    fn server_of(&self, port: u16, opened: f64, t: f64) -> Option<String> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .find(|(at, _)| *at >= opened - 0.05 && *at <= t + 0.5)
                .map(|(_, s)| s.clone())
        })
    }
    /// When apilb committed the connection from `port` (opened at `opened`), and to whom.
    fn proxied(&self, port: u16, opened: f64) -> Option<(f64, String)> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .find(|(at, _)| *at >= opened - 0.05 && *at <= opened + 15.0)
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
            .is_some_and(|v| v.iter().any(|(t, _)| *t >= from - 0.5 && *t <= to + 0.5))
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
    let retries = ctx.rec.retries.lock().unwrap();
    let mismatches = ctx.rec.mismatches.lock().unwrap();
    let stats = ctx.rec.stats.lock().unwrap().clone();
    let r2 = |x: f64| (x * 100.0).round() / 100.0;

    let server_of = |c: &ConnRec, t: f64| -> Option<String> {
        c.server
            .clone()
            .or_else(|| view.server_of(c.port, c.opened, t))
    };
    let name = |i: usize| format!("cp{}", i + 1);
    let done: Vec<&Fault> = faults.iter().filter(|f| f.began.is_some()).collect();
    let hard: Vec<&Fault> = done.iter().copied().filter(|f| f.kind.hard()).collect();
    let graceful: Vec<&Fault> = done
        .iter()
        .copied()
        .filter(|f| f.kind == Kind::Graceful)
        .collect();
    let spikes: Vec<&Fault> = done
        .iter()
        .copied()
        .filter(|f| f.kind == Kind::Spike)
        .collect();
    let lifted = |f: &Fault| f.ended.unwrap_or(f64::MAX);
    // Until when a silent server (blackholed, frozen) was silent to apilb: the fault lifted
    // (2 s margin), or, when later, apilb heard it again (a late PING answer, a new health
    // connection): until then apilb may rightly close its connections.
    let silent_until = |f: &Fault| {
        let heard = view.states.get(&name(f.server)).and_then(|v| {
            v.iter()
                .find(|(t, s)| *t >= f.began.unwrap() && s != "down")
                .filter(|(t, _)| *t >= lifted(f))
                .map(|(t, _)| *t)
        });
        (lifted(f) + 2.0).max(heard.unwrap_or(0.0) + 0.5)
    };
    // The nearest fault to `t`, for the reader.
    let nearest = |t: f64| -> Option<String> {
        done.iter()
            .min_by(|a, b| {
                (a.began.unwrap() - t)
                    .abs()
                    .total_cmp(&(b.began.unwrap() - t).abs())
            })
            .map(|near| {
                format!(
                    "{} {} at {:.2}s (lifted {:.2}s)",
                    near.kind.as_str(),
                    near.target(),
                    near.began.unwrap(),
                    near.ended.unwrap_or(f64::NAN)
                )
            })
    };
    // The fault on `server` that explains a connection ending (or an operation failing)
    // because of what happened between `from` and `to`: a kill, freeze or blackhole until 2 s
    // after it was lifted, a graceful shutdown from SIGTERM until 2 s after the process
    // exited.
    let explains = |server: &str, from: f64, to: f64| -> Option<&Fault> {
        done.iter().copied().find(|f| {
            let until = match f.kind {
                k if k.silent() => silent_until(f),
                k if k.hard() => lifted(f) + 2.0,
                Kind::Graceful => f.gone().unwrap_or(f64::MAX) + 2.0,
                _ => return false,
            };
            name(f.server) == server && to >= f.began.unwrap() - 0.05 && from <= until
        })
    };
    let explains_end = |server: &str, t: f64| explains(server, t, t);

    // --- failures: unsavable (pinned to a server at the instant it died), cut by a graceful
    // shutdown (in flight on a server as it shut down gracefully), or other.
    let mut unsavable = 0u64;
    let mut unsavable_by: HashMap<&'static str, u64> = HashMap::new();
    let mut other: Vec<Value> = Vec::new();
    let mut unsavable_examples: Vec<Value> = Vec::new();
    let mut cut: Vec<Value> = Vec::new();
    // Uploads (POST) sent just as their server, shutting down, closed the connection it took
    // for idle: it never took them, but a client cannot know that and does not retry them.
    // kube-apiserver's shutdown (Go's http.Server.Shutdown) has the same race; no proxy
    // causes it (apilb closes nothing of a leaving server, and would reset, not close).
    let mut raced_idle_close: Vec<Value> = Vec::new();
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
                let until = lifted(h) + 2.0;
                name(h.server) == *s && opened <= began && f.at >= began - 0.05 && f.at <= until
            })
        });
        // In flight during a graceful shutdown of its server: started before the process
        // exited, failed after SIGTERM.
        let leaving = server.as_ref().and_then(|s| {
            graceful.iter().find(|g| {
                let gone = g.gone().unwrap_or(f64::MAX);
                name(g.server) == *s
                    && f.conn.is_some()
                    && opened <= gone
                    && f.start <= gone + 0.05
                    && f.at >= g.began.unwrap() - 0.05
            })
        });
        let failover_closed = port != 0 && view.closed_for_failover(port, f.start, f.at);
        let mut d = json!({
            "t": r2(f.at),
            "op": f.op,
            "connection": kind,
            "client_port": port,
            "server": server,
            "opened": r2(opened),
            "op_started": r2(f.start),
            "error": f.err,
            "closed_by_apilb_failover": failover_closed,
        });
        if let Some(h) = fault {
            unsavable += 1;
            *unsavable_by.entry(h.kind.as_str()).or_default() += 1;
            if unsavable_examples.len() < 10 {
                d["fault"] = json!(format!("{} {}", h.kind.as_str(), name(h.server)));
                unsavable_examples.push(d);
            }
        } else if let Some(g) = leaving {
            if f.err.starts_with(UNANSWERED) {
                d["fault"] = json!(format!("graceful {}", name(g.server)));
                raced_idle_close.push(d);
                continue;
            }
            d["fault"] = json!(format!(
                "graceful {} (SIGTERM {:.2}s, listener closed {:.2}s, exited {})",
                name(g.server),
                g.began.unwrap(),
                g.listener_closed().unwrap(),
                g.exited.map_or("-".into(), |e| format!("{e:.2}s"))
            ));
            cut.push(d);
        } else {
            d["nearest_fault"] = json!(nearest(f.at));
            other.push(d);
        }
    }

    // --- requests the server never took (retried on a new connection), by what explains them.
    let mut retried_by: HashMap<&'static str, u64> = HashMap::new();
    let mut retried_unexplained: Vec<Value> = Vec::new();
    for r in retries.iter() {
        let Some(id) = r.conn else { continue };
        let c = &conns[id];
        // The connection was gone (closed, or told to go away) before the request found out.
        let ended = c.ended.unwrap_or(r.at).min(r.at);
        let server = server_of(c, r.at);
        let why = server
            .as_deref()
            .and_then(|s| explains_end(s, ended))
            .map_or("no fault", |f| f.kind.as_str());
        *retried_by.entry(why).or_default() += 1;
        if why == "no fault" && retried_unexplained.len() < 20 {
            retried_unexplained.push(json!({
                "t": r2(r.at), "op": r.op, "connection": c.kind, "client_port": c.port,
                "server": server, "error": r.err, "nearest_fault": nearest(r.at),
            }));
        }
    }

    // --- graceful shutdowns: what was in flight on the leaving server, and what became of it.
    let mut shutdowns: Vec<Value> = Vec::new();
    let mut in_flight_at_close = 0u64;
    let mut in_flight_at_close_intact = 0u64;
    let mut in_flight_during = 0u64;
    let mut in_flight_during_intact = 0u64;
    let mut watches_ended_clean = 0u64;
    let mut retried_on_leaving = 0u64;
    let mut reached_after_close = 0u64;
    let mut exit_secs: Vec<f32> = Vec::new();
    for g in &graceful {
        let s = name(g.server);
        let (began, close) = (g.began.unwrap(), g.listener_closed().unwrap());
        let gone = g.gone().unwrap_or(traffic_end);
        let mut at_close: HashMap<&'static str, u64> = HashMap::new();
        let mut during: HashMap<&'static str, u64> = HashMap::new();
        let mut ended_clean = 0u64;
        let mut retried = 0u64;
        let mut reached = Vec::new();
        for c in conns.iter() {
            if c.opened > gone {
                continue;
            }
            let pinned_here = |t: f64| server_of(c, t).as_deref() == Some(s.as_str());
            for op in &c.ops {
                let (start, stop) = (f64::from(op.start), f64::from(op.end));
                if start > gone + 0.05 || stop < began - 0.05 || !pinned_here(stop) {
                    continue;
                }
                let outcome = match op.outcome {
                    Outcome::Ok => "completed",
                    Outcome::Ended => "watch ended cleanly",
                    Outcome::Failed => "cut",
                    Outcome::Retried => "never taken (retried)",
                    Outcome::Unanswered => "never taken (an upload that raced the idle close)",
                };
                *during.entry(outcome).or_default() += 1;
                if start < close && stop > close {
                    *at_close.entry(outcome).or_default() += 1;
                }
                if op.outcome == Outcome::Ended {
                    ended_clean += 1;
                }
                if op.outcome == Outcome::Retried {
                    retried += 1;
                }
            }
            // A new connection that apilb gave it after its listener had closed.
            if c.opened > close + 0.05 && c.opened < lifted(g) {
                if let Some((t, srv)) = view.proxied(c.port, c.opened) {
                    if srv == s && t < lifted(g) {
                        reached.push(json!({"opened": r2(c.opened), "committed": r2(t), "client_port": c.port}));
                    }
                }
            }
        }
        let intact = |m: &HashMap<&'static str, u64>| {
            m.get("completed").copied().unwrap_or(0)
                + m.get("watch ended cleanly").copied().unwrap_or(0)
        };
        let taken = |m: &HashMap<&'static str, u64>| {
            m.iter()
                .filter(|(k, _)| !k.starts_with("never taken"))
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        in_flight_at_close += taken(&at_close);
        in_flight_at_close_intact += intact(&at_close);
        in_flight_during += taken(&during);
        in_flight_during_intact += intact(&during);
        watches_ended_clean += ended_clean;
        retried_on_leaving += retried;
        reached_after_close += reached.len() as u64;
        if let Some(e) = g.exited {
            exit_secs.push((e - began) as f32);
        }
        shutdowns.push(json!({
            "server": s,
            "shutdown_delay_s": r2(g.delay),
            "sigterm": r2(began),
            "listener_closed": r2(close),
            "exited": g.exited.map(r2),
            "exit_code": g.exit_code,
            "restarted": g.ended.map(r2),
            "in_flight_at_listener_close": at_close,
            "in_flight_during_shutdown": during,
            "watches_ended_cleanly": ended_clean,
            "requests_never_taken_retried": retried,
            "new_connections_after_listener_closed": reached,
            "apilb_draining_after_listener_close_s": view
                .states
                .get(&s)
                .and_then(|v| v.iter().find(|(t, st)| *t >= began - 0.1 && st == "draining"))
                .map(|(t, _)| r2((t - close).max(0.0))),
            "note": g.note,
        }));
    }

    // --- healthy streams reset: (a) closed by apilb while their server was not silent
    // (apilb may close only a blackholed or frozen server's connections, until it hears it
    // again), (b) ended, not by the client, on a server no kill, freeze, blackhole or
    // graceful shutdown explains.
    let silent_at = |server: &str, t: f64| {
        done.iter().any(|f| {
            f.kind.silent()
                && name(f.server) == server
                && t >= f.began.unwrap() - 0.1
                && t <= silent_until(f)
        })
    };
    let mut closed_by_apilb = 0u64;
    let mut closed_by_apilb_per_server: HashMap<String, u64> = HashMap::new();
    let mut healthy_closed: Vec<Value> = Vec::new();
    let mut ports: Vec<(&u16, &Vec<(f64, String)>)> = view.failover_closed.iter().collect();
    ports.sort_by_key(|(p, _)| **p);
    for (port, closes) in ports {
        for (t, server) in closes {
            let (t, s) = (*t, server.clone());
            closed_by_apilb += 1;
            *closed_by_apilb_per_server.entry(s.clone()).or_default() += 1;
            if !silent_at(&s, t) {
                healthy_closed.push(json!({
                    "t": r2(t), "client_port": port, "server": server,
                    "nearest_fault": nearest(t),
                }));
            }
        }
    }
    let silent_close_events: Vec<Value> = view
        .silent_closes
        .iter()
        .map(|(t, s, n, w)| {
            json!({"t": r2(*t), "server": s, "connections": n, "witness": w,
                   "on_a_silent_server": silent_at(s, *t)})
        })
        .collect();
    let mut healthy_ended: Vec<Value> = Vec::new();
    for c in conns.iter() {
        let Some(e) = c.ended else { continue };
        if c.by_client || e >= traffic_end {
            continue;
        }
        let Some(server) = server_of(c, e) else {
            continue;
        };
        // What ended it: the operation that failed on it (a client timeout fires up to 10 s
        // after what caused it; a watch may have been open for long before), else the moment
        // it ended.
        let from = c
            .ops
            .last()
            .filter(|o| {
                matches!(o.outcome, Outcome::Failed | Outcome::Retried)
                    && (f64::from(o.end) - e).abs() < 0.5
            })
            .map_or(e, |o| f64::from(o.start).max(e - 10.5));
        if explains(&server, from, e).is_none() {
            healthy_ended.push(json!({
                "t": r2(e), "connection": c.kind, "client_port": c.port, "server": server,
                "opened": r2(c.opened), "why": c.end_why,
                "closed_by_apilb_failover": view.closed_for_failover(c.port, c.opened, e),
                "nearest_fault": nearest(e),
            }));
        }
    }
    let healthy_reset = healthy_closed.len() + healthy_ended.len();
    // The per-server counter in /metrics must agree with the per-connection log lines.
    let metric_closed: HashMap<String, u64> = metrics
        .iter()
        .filter(|l| l.starts_with("apilb_failover_closed_connections_total{"))
        .filter_map(|l| {
            let server = l.split("server=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((view.name_of(server), n))
        })
        .collect();
    let metric_closed_total: u64 = metric_closed.values().sum();
    let health_failures_by_cause: HashMap<String, u64> = {
        let mut m: HashMap<String, u64> = HashMap::new();
        for l in metrics
            .iter()
            .filter(|l| l.starts_with("apilb_health_failures_total{"))
        {
            let cause = l
                .split("cause=\"")
                .nth(1)
                .and_then(|x| x.split('"').next())
                .unwrap_or("?");
            let n = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            *m.entry(cause.to_string()).or_default() += n;
        }
        m
    };

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
            let lifted = lifted(h);
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
                "fault_at": r2(began),
                "connection": c.kind,
                "client_port": c.port,
                "opened": r2(c.opened),
                "closed_after_s": c.ended.map(|e| r2(e - began)),
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
                "p50_s": r2(percentile(v, 0.5)),
                "max_s": r2(percentile(v, 1.0)),
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
    // Detection (fault → the state the failure model gives it) and recovery (lifted → ready).
    let mut detect: HashMap<&'static str, Vec<f32>> = HashMap::new();
    let mut recover: HashMap<&'static str, Vec<f32>> = HashMap::new();
    let mut never_detected: Vec<String> = Vec::new();
    let mut never_recovered: Vec<String> = Vec::new();
    let mut other_verdict: Vec<Value> = Vec::new();
    let mut not_ready_unseen = 0u64;
    // A sub-second stall must flip nothing ("one late PING never does").
    let mut stall_flips: Vec<Value> = Vec::new();
    let mut spike_flips: Vec<Value> = Vec::new();
    let mut spike_reports: Vec<Value> = Vec::new();
    let in_spike = |t: f64| {
        spikes
            .iter()
            .any(|f| t >= f.began.unwrap() - 0.1 && t <= lifted(f) + 2.5)
    };
    for f in &done {
        let (began, lifted) = (f.began.unwrap(), lifted(f));
        let n = name(f.server);
        match f.kind {
            Kind::Stall => {
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
            Kind::Spike => {
                // Every late byte is delivered within `delay` of the lift.
                let until = lifted + f.delay + 1.7;
                let late = view
                    .health_failures
                    .iter()
                    .filter(|(t, _, cause)| *t >= began && *t <= until && cause == "ping_timeout")
                    .count();
                let kept: Vec<Value> = view
                    .silent_kept
                    .iter()
                    .filter(|(t, _, _)| *t >= began && *t <= until)
                    .map(|(t, s, n)| json!({"t": r2(*t), "server": s, "connections_kept": n}))
                    .collect();
                let flips: Vec<Value> = view
                    .state_changes
                    .iter()
                    .filter(|c| {
                        let t = c["t"].as_f64().unwrap_or(f64::NAN);
                        t >= began - 0.1 && t <= until
                    })
                    .cloned()
                    .collect();
                let closed = view
                    .failover_closed
                    .values()
                    .flatten()
                    .filter(|(t, _)| *t >= began && *t <= until)
                    .count();
                spike_flips.extend(flips.iter().filter(|c| c["to"] != "ready").cloned());
                spike_reports.push(json!({
                    "at": r2(began), "seconds": r2(lifted - began), "added_each_way_s": f.delay,
                    "late_pings": late, "state_changes": flips,
                    "silent_servers_kept_for_lack_of_a_witness": kept,
                    "connections_closed_by_apilb": closed,
                }));
                continue;
            }
            _ => {}
        }
        let Some(expected) = f.kind.expected_state() else {
            continue;
        };
        // A graceful shutdown is heard when its listener closes (GOAWAY, refused connects);
        // during the shutdown delay only /readyz, every 30 s, can tell.
        let from = if f.kind == Kind::Graceful {
            f.listener_closed().unwrap()
        } else {
            began
        };
        let changes = view.states.get(&n).cloned().unwrap_or_default();
        let label = format!("{} {} at {:.2}s", f.kind.as_str(), n, began);
        let window = |t: f64| t >= began - 0.1 && t <= lifted + 0.5;
        match changes.iter().find(|(t, s)| window(*t) && s == expected) {
            Some((t, _)) => detect
                .entry(f.kind.as_str())
                .or_default()
                .push((t - from).max(0.0) as f32),
            None => {
                let saw: Vec<&String> = changes
                    .iter()
                    .filter(|(t, s)| window(*t) && s != "ready")
                    .map(|(_, s)| s)
                    .collect();
                if !saw.is_empty() {
                    other_verdict.push(json!({"fault": label, "expected": expected, "saw": saw}));
                } else if f.kind == Kind::NotReady && lifted - began < READYZ_INTERVAL {
                    not_ready_unseen += 1;
                } else {
                    // Noticed only after the lift (say so: a slow verdict, not none)?
                    let late = changes
                        .iter()
                        .find(|(t, s)| *t > lifted + 0.5 && *t <= lifted + 10.0 && s == expected)
                        .map_or(String::new(), |(t, _)| {
                            format!(
                                " (lifted {lifted:.2}s; {expected} only at {t:.2}s, {:.2}s after the fault began)",
                                t - began
                            )
                        });
                    never_detected.push(format!("{label}{late}"));
                }
            }
        }
        // Back ready after the lift, if apilb had taken it out at all.
        let was_out = changes.iter().any(|(t, s)| window(*t) && s != "ready");
        if was_out {
            match changes.iter().find(|(t, s)| *t >= lifted && s == "ready") {
                Some((t, _)) => recover
                    .entry(f.kind.as_str())
                    .or_default()
                    .push((t - lifted) as f32),
                None => never_recovered.push(label),
            }
        }
    }
    // A server held down, draining or not ready while no fault was on it.
    let mut spurious: Vec<Value> = Vec::new();
    for c in &view.state_changes {
        let (Some(n), Some(to), Some(t)) = (c["name"].as_str(), c["to"].as_str(), c["t"].as_f64())
        else {
            continue;
        };
        if to == "ready" || to == "unknown" || in_spike(t) {
            continue;
        }
        let explained = done.iter().any(|f| {
            name(f.server) == n
                && !matches!(f.kind, Kind::Stall | Kind::Spike)
                && t >= f.began.unwrap() - 0.1
                && t <= lifted(f) + 2.0
        });
        if !explained {
            spurious.push(c.clone());
        }
    }
    // Passive marks (a client connect failed, or lost a first-byte race) on servers no fault
    // was on. A stalled server, or a spike on every path, is slow to answer a ClientHello:
    // marks then are right.
    let spurious_passive: Vec<Value> = view
        .passive_marks
        .iter()
        .filter(|(t, n, _)| {
            !in_spike(*t)
                && !done.iter().any(|f| {
                    name(f.server) == *n
                        && (f.kind.hard() || matches!(f.kind, Kind::Graceful | Kind::Stall))
                        && *t >= f.began.unwrap() - 0.1
                        && *t <= lifted(f) + 3.0
                })
        })
        .map(|(t, n, cause)| json!({"t": r2(*t), "server": n, "cause": cause}))
        .collect();

    // New connections committed to a server apilb itself held down, draining or not ready
    // (outside panic mode): the balancer must never do that.
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
        let out = |s: &str| matches!(s, "down" | "not_ready" | "draining");
        if out(before) && before == after && !in_panic {
            // By design the servers apilb does not hold ready are tried after those it does
            // (so a client fails only when every server failed): that is a fallback when
            // every server it held ready was in fact dead or stalled, a misroute otherwise.
            // The order is made when the client connects: judge by apilb's view then (a
            // replay after the first-byte timeout follows that order, not a newer view).
            let dead = |i: usize, from: f64, to: f64| {
                faults.iter().any(|f| {
                    f.server == i
                        && (f.kind.hard() || f.kind == Kind::Stall || f.kind == Kind::Graceful)
                        && f.began.is_some_and(|b| b <= to)
                        && f.ended.is_none_or(|e| e >= from)
                })
            };
            let held_ready_alive = (0..3)
                .any(|i| view.state_at(&name(i), c.opened) == "ready" && !dead(i, c.opened, at));
            if !held_ready_alive {
                fallbacks += 1;
                // Did a server become ready (and alive) between the order and the commit?
                let ready_by_then: Vec<String> = (0..3)
                    .filter(|&i| {
                        name(i) != server
                            && view.state_at(&name(i), c.opened) != "ready"
                            && view.state_at(&name(i), at) == "ready"
                            && !dead(i, at, at)
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
    if !cut.is_empty() {
        fail_reasons.push(format!(
            "{} request(s) in flight on a server shutting down gracefully were cut; first: {}",
            cut.len(),
            cut[0]
        ));
    }
    if healthy_reset > 0 {
        let first = healthy_closed.first().or(healthy_ended.first()).unwrap();
        fail_reasons.push(format!(
            "{healthy_reset} healthy stream(s) reset ({} closed by apilb while their server was \
             not silent, {} ended on a server no fault explains); first: {first}",
            healthy_closed.len(),
            healthy_ended.len()
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
                "retried": k.retried,
                "ended_by_server": k.ended_by_server,
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
                "server": f.target(),
                "kind": f.kind.as_str(),
                "planned_at": r2(f.at),
                "planned_seconds": r2(f.dur),
                "delay_s": (f.kind == Kind::Graceful || f.kind == Kind::Spike).then_some(r2(f.delay)),
                "began": f.began.map(r2),
                "lifted": f.ended.map(r2),
                "exited": f.exited.map(r2),
                "exit_code": f.exit_code,
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
    let retried_total: u64 = retried_by.values().sum();
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
            "cut_by_a_graceful_shutdown": cut.len(),
            "cut_list": cut.iter().take(30).collect::<Vec<_>>(),
            "posts_that_raced_a_leaving_servers_idle_close": raced_idle_close,
            "other": other_count,
            "other_list": other.iter().take(50).collect::<Vec<_>>(),
            "unsavable_examples": unsavable_examples,
        },
        "retried": {
            "total": retried_total,
            "by_fault": retried_by,
            "with_no_fault_on_the_server": retried_unexplained,
        },
        "graceful_shutdowns": {
            "count": graceful.len(),
            "in_flight_at_listener_close": in_flight_at_close,
            "in_flight_at_listener_close_intact": in_flight_at_close_intact,
            "in_flight_during_shutdown": in_flight_during,
            "in_flight_during_shutdown_intact": in_flight_during_intact,
            "watches_ended_cleanly": watches_ended_clean,
            "requests_never_taken_retried": retried_on_leaving,
            "new_connections_after_listener_closed": reached_after_close,
            "list": shutdowns,
        },
        "healthy_streams_reset": {
            "total": healthy_reset,
            "closed_by_apilb_while_not_silent": healthy_closed,
            "ended_with_no_fault_on_their_server": healthy_ended.iter().take(50).collect::<Vec<_>>(),
            "ended_with_no_fault_count": healthy_ended.len(),
        },
        "apilb_closes": {
            "connections_closed_log": closed_by_apilb,
            "connections_closed_log_per_server": closed_by_apilb_per_server,
            "connections_closed_metric": metric_closed_total,
            "connections_closed_metric_per_server": metric_closed,
            "silent_server_closes": silent_close_events,
        },
        "spikes": spike_reports,
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
            "noticed_as_another_state_than_the_model_gives": other_verdict,
            "not_ready_unseen_shorter_than_a_readyz_interval": not_ready_unseen,
            "state_changes_during_a_latency_spike": spike_flips,
            "health_failures_by_cause": health_failures_by_cause,
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
            "requests ok / failed / retried (the server never took them)".into(),
            format!("{requests_ok} / {requests_failed} / {retried_total}"),
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
            "**requests in flight on a server shutting down gracefully that were cut**".into(),
            format!(
                "**{}** (in flight during the {} shutdowns: {in_flight_during}, intact {in_flight_during_intact}; at the listener's close: {in_flight_at_close}, intact {in_flight_at_close_intact})",
                cut.len(),
                graceful.len()
            ),
        ),
        (
            "graceful shutdowns: watches ended cleanly / requests the leaving server never took (retried; and uploads that raced its idle close, not retryable) / new connections it got after its listener closed".into(),
            format!(
                "{watches_ended_clean} / {retried_on_leaving} ({}) / {reached_after_close}",
                raced_idle_close.len()
            ),
        ),
        (
            "graceful shutdowns: SIGTERM to exit (p50 / max); apilb draining after the listener closed (p50 / max)".into(),
            format!(
                "{:.2} / {:.2} s; {}",
                percentile(&mut exit_secs.clone(), 0.5),
                percentile(&mut exit_secs.clone(), 1.0),
                detect
                    .get_mut("graceful")
                    .map_or("-".to_string(), |v| format!("{:.2} / {:.2} s", percentile(v, 0.5), percentile(v, 1.0)))
            ),
        ),
        (
            "**healthy streams reset** (closed by apilb while their server was not silent / ended on a server no fault explains)".into(),
            format!("**{healthy_reset}** ({} / {})", healthy_closed.len(), healthy_ended.len()),
        ),
        (
            "connections apilb closed (log / `apilb_failover_closed_connections_total`), all on a blackholed or frozen server".into(),
            format!(
                "{closed_by_apilb} / {metric_closed_total}, {}",
                if healthy_closed.is_empty() { "yes" } else { "**no**" }
            ),
        ),
        (
            "latency spikes (+0.8 s each way on every path): late PINGs / state changes / silent servers kept for want of a witness / connections closed".into(),
            {
                let sum = |k: &str| spike_reports.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
                let len = |k: &str| spike_reports.iter().map(|r| r[k].as_array().map_or(0, Vec::len)).sum::<usize>();
                format!(
                    "{} spikes: {} / {} / {} / {}",
                    spike_reports.len(),
                    sum("late_pings"),
                    len("state_changes"),
                    len("silent_servers_kept_for_lack_of_a_witness"),
                    sum("connections_closed_by_apilb")
                )
            },
        ),
        (
            "requests retried, by the fault on their server".into(),
            {
                let mut u: Vec<_> = retried_by.iter().collect();
                u.sort();
                u.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
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
        ("apilb noticed the fault after (p50 / max; graceful: from the listener's close)".into(), detect_md),
        ("apilb had it ready again after the fault was lifted (p50 / max)".into(), recover_md),
        (
            "faults apilb never noticed / noticed as another state than the model gives / servers never back ready".into(),
            format!("{} / {} / {}", never_detected.len(), other_verdict.len(), never_recovered.len()),
        ),
        (
            format!("not-ready faults apilb did not see (shorter than its /readyz interval, {READYZ_INTERVAL:.0} s: by design)"),
            not_ready_unseen.to_string(),
        ),
        (
            "apilb health check failures by cause".into(),
            {
                let mut u: Vec<_> = health_failures_by_cause.iter().filter(|(_, n)| **n > 0).collect();
                u.sort();
                u.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "state changes with no fault on the server / on a sub-second stall / passive marks on a healthy server".into(),
            format!("{} / {} / {}", spurious.len(), stall_flips.len(), spurious_passive.len()),
        ),
        (
            "new connections sent to a server apilb held down, draining or not ready, while one it held ready was alive / fallbacks when none was (of which: another became ready before the commit)".into(),
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
        "\n| operation | ok | failed | retried | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n",
    );
    for op in &ops {
        let v = &report["requests"]["by_op"][*op];
        if *op == "watch" {
            // A watch's "latency" is how long it was followed: not worth a column.
            md.push_str(&format!(
                "| watch streams (ok: followed to their end, or ended cleanly by their server: {}) | {} | {} | {} | - | - | - |\n",
                v["ended_by_server"], v["ok"].as_u64().unwrap_or(0) + v["ended_by_server"].as_u64().unwrap_or(0), v["failed"], v["retried"]
            ));
            continue;
        }
        md.push_str(&format!(
            "| {op} | {} | {} | {} | {} | {} | {} |\n",
            v["ok"], v["failed"], v["retried"], v["p50_ms"], v["p99_ms"], v["max_ms"]
        ));
    }
    let list = |md: &mut String, title: &str, items: &[Value]| {
        if !items.is_empty() {
            md.push_str(&format!("\n{title} (first 10):\n\n"));
            for o in items.iter().take(10) {
                md.push_str(&format!("- `{o}`\n"));
            }
        }
    };
    list(&mut md, "Cut by a graceful shutdown", &cut);
    list(&mut md, "Healthy streams closed by apilb", &healthy_closed);
    list(
        &mut md,
        "Healthy streams ended with no fault to explain it",
        &healthy_ended,
    );
    list(&mut md, "Other failures", &other);
    list(&mut md, "Left hanging", &hanging);
    list(
        &mut md,
        "Noticed as another state than the failure model gives",
        &other_verdict,
    );
    md.push_str(
        "\nFault schedule:\n\n| server | fault | at (s) | lifted (s) | detail |\n|---|---|---|---|---|\n",
    );
    for f in faults {
        let detail = match f.kind {
            Kind::Graceful => format!(
                "shutdown delay {:.1} s; exited {}{}",
                f.delay,
                f.exited.map_or("-".into(), |e| format!("{e:.2} s")),
                f.exit_code.map_or(String::new(), |c| format!(" ({c})"))
            ),
            Kind::Spike => format!("+{:.1} s each way, every path", f.delay),
            _ => String::new(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            f.target(),
            f.kind.as_str(),
            f.began.map_or("not done".into(), |t| format!("{t:.2}")),
            f.ended.map_or("-".into(), |t| format!("{t:.2}")),
            if f.note.is_empty() {
                detail
            } else {
                format!("{detail} {}", f.note)
            }
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
    let seconds = args.seconds as f64;
    let faults = schedule(args.seed, seconds);
    // Each stand-in is started with the shutdown delay of its next graceful shutdown.
    let delays: Vec<VecDeque<f64>> = (0..3)
        .map(|i| {
            faults
                .iter()
                .filter(|f| f.kind == Kind::Graceful && f.server == i)
                .map(|f| f.delay)
                .collect()
        })
        .collect();
    let setup = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let s: Vec<Standin> = (0..3u8)
            .map(|i| {
                let delay = delays[usize::from(i)].front().copied().unwrap_or(0.0);
                Standin::start_graceful(
                    &pki,
                    [127, 0, 0, 2 + i],
                    &format!("cp{}", i + 1),
                    Duration::from_secs_f64(delay),
                )
            })
            .collect();
        s
    }));
    let Ok(standins) = setup else {
        eprintln!("soak: could not start the stand-in servers");
        return ExitCode::from(2);
    };
    let direct: Vec<SocketAddr> = standins.iter().map(|s| s.addr).collect();
    // A latency relay in front of each (127.0.0.5–7: the test certificate holds them, and
    // apilb checks each server by its address): apilb knows the servers by the relays.
    let mut relays = Vec::new();
    for (i, a) in direct.iter().enumerate() {
        relays.push(Relay::start([127, 0, 0, 5 + i as u8], *a).await);
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let names: HashMap<String, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (a.to_string(), format!("cp{}", i + 1)))
        .collect();
    let lb = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut a: Vec<String> = Vec::new();
        for addr in &addrs {
            a.push("--server".into());
            a.push(addr.to_string());
        }
        a.push("--ca-file".into());
        a.push(pki.ca.display().to_string());
        let lb = Apilb::start_args(a, None);
        for addr in &addrs {
            lb.wait_state(0, *addr, "ready", Duration::from_secs(10));
        }
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
        direct: direct.clone(),
        addrs: addrs.clone(),
        relays,
        holes: Mutex::new(HashMap::new()),
        frozen: Mutex::new(vec![false; 3]),
        delays: Mutex::new(delays),
        exits: Mutex::new(HashMap::new()),
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
    println!(
        "soak: apilb {} in front of cp1 {} cp2 {} cp3 {} (through relays {} {} {}); {} s, seed {}, {} faults planned",
        lb.listen,
        direct[0],
        direct[1],
        direct[2],
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
    for _ in 0..4 {
        wid += 1;
        workers.spawn(slow(ctx.clone(), wid));
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
    // apilb's info lines and above, and its health checker's debug lines (what each check
    // saw), for the reader; not its per-connection debug lines.
    let notable: String = lb
        .logs()
        .iter()
        .filter(|v| {
            !matches!(v["level"].as_str(), Some("DEBUG") | Some("TRACE"))
                || v["target"] == "apilb::health"
        })
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
