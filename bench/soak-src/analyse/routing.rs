//! What apilb did with no fault to explain it: state changes and passive failure marks on
//! servers no fault was on, and new connections committed to a server it held down,
//! draining or not ready while one it held ready was alive.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{lifted, name, r2, Facts};
use crate::schedule::Kind;

/// State changes and passive marks no fault explains.
pub(crate) struct Unexplained {
    pub(crate) spurious: Vec<Value>,
    pub(crate) spurious_passive: Vec<Value>,
}

/// Where apilb sent new connections, against its own view.
pub(crate) struct Routing {
    pub(crate) misrouted: Vec<Value>,
    pub(crate) fallbacks: u64,
    pub(crate) stale_order: Vec<Value>,
    pub(crate) per_server: HashMap<String, u64>,
}

/// A server held down, draining or not ready while no fault was on it (outside a spike).
fn in_spike(facts: &Facts<'_>, t: f64) -> bool {
    facts
        .spikes
        .iter()
        .any(|f| t >= f.began.unwrap() - 0.1 && t <= lifted(f) + 2.5)
}

/// State changes and passive failure marks on servers no fault was on.
pub(crate) fn unexplained(facts: &Facts<'_>) -> Unexplained {
    let view = facts.view;
    let done = &facts.done;
    let in_spike = |t: f64| in_spike(facts, t);
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
    Unexplained {
        spurious,
        spurious_passive,
    }
}

/// New connections committed to a server apilb itself held down, draining or not ready.
pub(crate) fn new_connections(facts: &Facts<'_>) -> Routing {
    let view = facts.view;
    let conns = facts.conns;
    let faults = facts.faults;
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
    Routing {
        misrouted,
        fallbacks,
        stale_order,
        per_server,
    }
}
