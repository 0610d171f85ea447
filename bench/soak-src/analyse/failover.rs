//! Failover as clients saw it: every connection pinned to a server when it was killed,
//! frozen or blackholed must be closed within the failover target (or work again); and the
//! longest silence of a watch stream.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::percentile;
use super::{lifted, name, r2, Facts};
use crate::traffic::record::ConnRec;
use crate::FAILOVER_TARGET;

/// Connections pinned to a dead server, and how they ended.
pub(crate) struct Failover {
    pub(crate) pinned: u64,
    pub(crate) closed_in_time: u64,
    pub(crate) resumed: u64,
    pub(crate) hanging: Vec<Value>,
    pub(crate) close_latencies: HashMap<&'static str, Vec<f32>>,
    pub(crate) latency_table: serde_json::Map<String, Value>,
}

/// Every connection pinned to a server when it died: closed in time, resumed, or hanging.
pub(crate) fn pinned_to_dead_servers(facts: &Facts<'_>) -> Failover {
    let server_of = |c: &ConnRec, t: f64| facts.server_of(c, t);
    let conns = facts.conns;
    let hard = &facts.hard;
    let traffic_end = facts.traffic_end;
    // --- failover: every connection pinned to a server when it died.
    let mut pinned = 0u64;
    let mut closed_in_time = 0u64;
    let mut resumed = 0u64;
    let mut hanging: Vec<Value> = Vec::new();
    let mut close_latencies: HashMap<&'static str, Vec<f32>> = HashMap::new();
    for h in hard {
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
    Failover {
        pinned,
        closed_in_time,
        resumed,
        hanging,
        close_latencies,
        latency_table,
    }
}

/// The longest silence of any stream while it was open.
pub(crate) fn longest_watch_silence(conns: &[ConnRec]) -> f64 {
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
    max_gap
}
