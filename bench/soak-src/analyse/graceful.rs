//! Graceful shutdowns: what was in flight on the leaving server, and what became of it
//! (completed, ended cleanly, retried, cut), and new connections apilb gave it after its
//! listener had closed.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{lifted, name, r2, Facts};
use crate::traffic::record::{ConnRec, Outcome};

/// What the graceful shutdowns came to, in sum and one by one.
pub(crate) struct Shutdowns {
    pub(crate) shutdowns: Vec<Value>,
    pub(crate) in_flight_at_close: u64,
    pub(crate) in_flight_at_close_intact: u64,
    pub(crate) in_flight_during: u64,
    pub(crate) in_flight_during_intact: u64,
    pub(crate) watches_ended_clean: u64,
    pub(crate) retried_on_leaving: u64,
    pub(crate) reached_after_close: u64,
    pub(crate) exit_secs: Vec<f32>,
}

/// What was in flight on each server shutting down gracefully, and what became of it.
pub(crate) fn shutdowns(facts: &Facts<'_>) -> Shutdowns {
    let server_of = |c: &ConnRec, t: f64| facts.server_of(c, t);
    let view = facts.view;
    let conns = facts.conns;
    let graceful = &facts.graceful;
    let traffic_end = facts.traffic_end;
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
    for g in graceful {
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
    Shutdowns {
        shutdowns,
        in_flight_at_close,
        in_flight_at_close_intact,
        in_flight_during,
        in_flight_during_intact,
        watches_ended_clean,
        retried_on_leaving,
        reached_after_close,
        exit_secs,
    }
}
