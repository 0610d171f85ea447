//! Healthy streams reset: connections apilb closed while their server was not silent, and
//! connections that ended on a server no fault explains; and apilb's own counters of what
//! it closed (`/metrics`), which must agree with its per-connection log lines.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{name, r2, Facts};
use crate::apilb_log::ApilbView;
use crate::schedule::Fault;
use crate::traffic::record::{ConnRec, Outcome};

/// Streams apilb closed, and healthy ones reset.
pub(crate) struct Resets {
    pub(crate) closed_by_apilb: u64,
    pub(crate) closed_by_apilb_per_server: HashMap<String, u64>,
    pub(crate) healthy_closed: Vec<Value>,
    pub(crate) silent_close_events: Vec<Value>,
    pub(crate) healthy_ended: Vec<Value>,
    pub(crate) healthy_reset: usize,
}

/// apilb's failover and health-failure counters from `/metrics` at the end.
pub(crate) struct Counters {
    pub(crate) metric_closed: HashMap<String, u64>,
    pub(crate) metric_closed_total: u64,
    pub(crate) health_failures_by_cause: HashMap<String, u64>,
}

/// Healthy streams reset, and every connection apilb closed for failover.
pub(crate) fn healthy_streams_reset(facts: &Facts<'_>) -> Resets {
    let server_of = |c: &ConnRec, t: f64| facts.server_of(c, t);
    let nearest = |t: f64| facts.nearest(t);
    let explains = |s: &str, from: f64, to: f64| facts.explains(s, from, to);
    let silent_until = |f: &Fault| facts.silent_until(f);
    let view = facts.view;
    let conns = facts.conns;
    let done = &facts.done;
    let traffic_end = facts.traffic_end;
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
    Resets {
        closed_by_apilb,
        closed_by_apilb_per_server,
        healthy_closed,
        silent_close_events,
        healthy_ended,
        healthy_reset,
    }
}

/// apilb's counters at the end: connections closed per server, health failures by cause.
pub(crate) fn counters(view: &ApilbView, metrics: &[String]) -> Counters {
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
    Counters {
        metric_closed,
        metric_closed_total,
        health_failures_by_cause,
    }
}
