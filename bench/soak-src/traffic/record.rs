//! What the clients saw: per connection and per operation, outcomes, failures, mismatches
//! and counters (`Recorder`), and the shared context of the traffic (`Ctx`). It records;
//! it judges nothing (that is `analyse`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::traffic::send_error::{SendError, UNANSWERED};

/// How an operation (a request, a transfer, a watch stream) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
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
pub(crate) struct OpRec {
    pub(crate) start: f32,
    pub(crate) end: f32,
    pub(crate) outcome: Outcome,
}

#[derive(Default)]
pub(crate) struct ConnRec {
    pub(crate) kind: &'static str,
    pub(crate) port: u16,
    pub(crate) opened: f64,
    /// The stand-in's name, from /whoami or a watch event (or apilb's log, afterwards).
    pub(crate) server: Option<String>,
    /// When the client first saw the connection fail or close, and why.
    pub(crate) ended: Option<f64>,
    pub(crate) end_why: String,
    /// Closed by the client itself (a voluntary reconnect, the end of the run).
    pub(crate) by_client: bool,
    /// When something succeeded on it (responses, watch events).
    pub(crate) ok_times: Vec<f32>,
    /// Every operation on it, with its outcome.
    pub(crate) ops: Vec<OpRec>,
}

#[derive(Default, Clone)]
pub(crate) struct KindStats {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) ended_by_server: u64,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) latencies_ms: Vec<f32>,
}

pub(crate) struct Failure {
    pub(crate) conn: Option<usize>,
    pub(crate) op: &'static str,
    pub(crate) start: f64,
    pub(crate) at: f64,
    pub(crate) err: String,
}

pub(crate) struct Mismatch {
    pub(crate) conn: usize,
    pub(crate) op: &'static str,
    pub(crate) at: f64,
    pub(crate) what: String,
}

#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) conns: Mutex<Vec<ConnRec>>,
    pub(crate) stats: Mutex<HashMap<&'static str, KindStats>>,
    pub(crate) failures: Mutex<Vec<Failure>>,
    /// Requests retried (never taken by the server), with their connection and error.
    pub(crate) retries: Mutex<Vec<Failure>>,
    pub(crate) mismatches: Mutex<Vec<Mismatch>>,
    pub(crate) watch_events: AtomicU64,
}

pub(crate) struct Ctx {
    pub(crate) lb: SocketAddr,
    pub(crate) h1: TlsConnector,
    pub(crate) h2: TlsConnector,
    pub(crate) t0: Instant,
    pub(crate) stop: CancellationToken,
    pub(crate) rec: Recorder,
    pub(crate) seed: u64,
}

/// What a request (or a transfer) came to, for the worker deciding what to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Res {
    Ok,
    Failed,
    /// Not taken by the server (see `Outcome::Retried`): reconnect and go on.
    Retry,
    /// A watch ended cleanly by its server: reconnect and go on.
    Ended,
}

impl Ctx {
    pub(crate) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(crate) fn new_conn(&self, kind: &'static str, port: u16) -> usize {
        let mut c = self.rec.conns.lock().unwrap();
        c.push(ConnRec {
            kind,
            port,
            opened: self.now(),
            ..ConnRec::default()
        });
        c.len() - 1
    }

    pub(crate) fn conn_ended(&self, id: usize, why: &str, by_client: bool) {
        let now = self.now();
        let mut c = self.rec.conns.lock().unwrap();
        let r = &mut c[id];
        if r.ended.is_none() {
            r.ended = Some(now);
            r.end_why = why.to_string();
            r.by_client = by_client;
        }
    }

    pub(crate) fn op_done(&self, id: usize, start: f64, outcome: Outcome) -> f64 {
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

    pub(crate) fn ok(&self, id: usize, op: &'static str, start: f64, up: u64, down: u64) {
        let now = self.op_done(id, start, Outcome::Ok);
        let mut s = self.rec.stats.lock().unwrap();
        let k = s.entry(op).or_default();
        k.ok += 1;
        k.bytes_up += up;
        k.bytes_down += down;
        k.latencies_ms.push(((now - start) * 1000.0) as f32);
    }

    /// A watch stream its server ended cleanly (a graceful shutdown): not a failure.
    pub(crate) fn ended_by_server(&self, id: usize, start: f64, down: u64) {
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
    pub(crate) fn retried(&self, id: usize, op: &'static str, start: f64, err: String) {
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
    pub(crate) fn fail(
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
    pub(crate) fn send_failed(&self, id: usize, op: &'static str, start: f64, e: SendError) -> Res {
        if e.retry {
            self.retried(id, op, start, e.msg);
            Res::Retry
        } else {
            self.fail(Some(id), op, start, e.msg, (0, 0));
            Res::Failed
        }
    }

    pub(crate) fn mismatch(&self, id: usize, op: &'static str, what: String) {
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
    pub(crate) fn saw_server(&self, id: usize, op: &'static str, server: &str) {
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

    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}
