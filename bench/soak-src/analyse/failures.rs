//! Client-visible failures classified against the fault log: on a connection pinned to a
//! server as it was killed, frozen or blackholed (no L4 proxy can save those), cut in flight
//! by a graceful shutdown (there must be none), or other; and requests the server never
//! took (retried), by the fault that explains them.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{lifted, name, r2, Facts};
use crate::traffic::record::{ConnRec, Failure};
use crate::traffic::send_error::UNANSWERED;

/// Failures by class, with examples.
pub(crate) struct Failures {
    pub(crate) unsavable: u64,
    pub(crate) unsavable_by: HashMap<&'static str, u64>,
    pub(crate) other: Vec<Value>,
    pub(crate) unsavable_examples: Vec<Value>,
    pub(crate) cut: Vec<Value>,
    pub(crate) raced_idle_close: Vec<Value>,
}

/// Requests the server never took, by the fault on their server.
pub(crate) struct Retried {
    pub(crate) retried_by: HashMap<&'static str, u64>,
    pub(crate) retried_unexplained: Vec<Value>,
}

/// Classifies every failure: unsavable, cut by a graceful shutdown, or other.
pub(crate) fn classify(facts: &Facts<'_>, failures: &[Failure]) -> Failures {
    let server_of = |c: &ConnRec, t: f64| facts.server_of(c, t);
    let nearest = |t: f64| facts.nearest(t);
    let view = facts.view;
    let conns = facts.conns;
    let hard = &facts.hard;
    let graceful = &facts.graceful;
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
    Failures {
        unsavable,
        unsavable_by,
        other,
        unsavable_examples,
        cut,
        raced_idle_close,
    }
}

/// Requests the server never took (retried on a new connection), by what explains them.
pub(crate) fn retried(facts: &Facts<'_>, retries: &[Failure]) -> Retried {
    let server_of = |c: &ConnRec, t: f64| facts.server_of(c, t);
    let nearest = |t: f64| facts.nearest(t);
    let explains = |s: &str, from: f64, to: f64| facts.explains(s, from, to);
    let conns = facts.conns;
    let explains_end = |server: &str, t: f64| explains(server, t, t);
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
    Retried {
        retried_by,
        retried_unexplained,
    }
}
