//! apilb's own log, read after the run (`ApilbView`): which server each client port went
//! to, the connections it closed for failover, health failures, passive marks and panic
//! mode, with times relative to the start of the run. The servers' state changes are not
//! read from the log: they come from apilb's `/status` (`transitions`), polled during the
//! run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::Value;

/// The client port → server map from apilb's "proxying" debug lines (with their times, as
/// ports are reused over a long run), and the ports apilb closed because their server went
/// down.
pub(crate) struct ApilbView {
    pub(crate) proxying: HashMap<u16, Vec<(f64, String)>>,
    /// Per client port: when apilb closed it because its server went silent, and the server
    /// (from the line itself: a port is soon reused, by a connection to another server).
    pub(crate) failover_closed: HashMap<u16, Vec<(f64, String)>>,
    /// Health observations that failed: (time, server name, cause).
    pub(crate) health_failures: Vec<(f64, String, String)>,
    /// "closing the connections of a silent server": (time, server, connections, witness).
    pub(crate) silent_closes: Vec<(f64, String, u64, String)>,
    /// "silent, but no other server has answered since": (time, server, connections kept).
    pub(crate) silent_kept: Vec<(f64, String, u64)>,
    pub(crate) panics: Vec<String>,
    /// apilb's `/status` transitions, in order, with `t` and `name` (`transitions`).
    pub(crate) state_changes: Vec<Value>,
    /// State changes the polls of `/status` missed (its ring turned over between two).
    pub(crate) state_changes_missed: u64,
    /// Per server name: (time, new state), in order.
    pub(crate) states: HashMap<String, Vec<(f64, String)>>,
    /// Passive failure marks: (time, server name, cause).
    pub(crate) passive_marks: Vec<(f64, String, String)>,
    pub(crate) panic_mode: Vec<f64>,
    pub(crate) warnings: usize,
    pub(crate) errors: Vec<String>,
    /// apilb's server names (the relays' addresses) → the stand-ins' names.
    pub(crate) names: HashMap<String, String>,
}

pub(crate) fn rel_time(v: &Value, wall0: SystemTime) -> f64 {
    v["timestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .map(|t| match t.duration_since(wall0) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
        .unwrap_or(f64::NAN)
}

/// The view: the log's lines, and the state changes `changes` (from `/status`, with the
/// count the polls missed).
pub(crate) fn read_apilb_log(
    logs: &[Value],
    changes: (Vec<Value>, u64),
    wall0: SystemTime,
    names: &HashMap<String, String>,
) -> ApilbView {
    let mut view = ApilbView {
        proxying: HashMap::new(),
        failover_closed: HashMap::new(),
        health_failures: Vec::new(),
        silent_closes: Vec::new(),
        silent_kept: Vec::new(),
        panics: Vec::new(),
        state_changes: Vec::new(),
        state_changes_missed: changes.1,
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
        } else if msg.starts_with("connect failed; no new connections") {
            if let Some(s) = v["server"].as_str().and_then(|s| names.get(s)) {
                let cause = v["cause"].as_str().unwrap_or("").to_string();
                view.passive_marks.push((t, s.clone(), cause));
            }
        } else if msg.starts_with("no server is ready: panic mode") {
            view.panic_mode.push(t);
        }
    }
    let t0 = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for c in changes.0 {
        if let (Some(n), Some(to), Some(ms)) =
            (c["name"].as_str(), c["to"].as_str(), c["unix_ms"].as_f64())
        {
            let t = ms / 1000.0 - t0;
            view.states
                .entry(n.to_string())
                .or_default()
                .push((t, to.to_string()));
        }
        view.state_changes.push(c);
    }
    view
}

impl ApilbView {
    pub(crate) fn name_of(&self, server: &str) -> String {
        self.names
            .get(server)
            .cloned()
            .unwrap_or_else(|| server.to_string())
    }
    /// The server apilb committed the client port to, around `t`.
    /// The first commit from `port` after the client opened its connection is that
    /// connection's (its port is its own while it is open; once closed, the port is soon
    /// reused by a connection that may go to another server). 50 ms for the two clocks.
    pub(crate) fn server_of(&self, port: u16, opened: f64, t: f64) -> Option<String> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .find(|(at, _)| *at >= opened - 0.05 && *at <= t + 0.5)
                .map(|(_, s)| s.clone())
        })
    }
    /// When apilb committed the connection from `port` (opened at `opened`), and to whom.
    pub(crate) fn proxied(&self, port: u16, opened: f64) -> Option<(f64, String)> {
        self.proxying.get(&port).and_then(|v| {
            v.iter()
                .find(|(at, _)| *at >= opened - 0.05 && *at <= opened + 15.0)
                .cloned()
        })
    }
    /// apilb's view of `server` at `t`.
    pub(crate) fn state_at(&self, server: &str, t: f64) -> &str {
        self.states
            .get(server)
            .and_then(|v| v.iter().rfind(|(at, _)| *at <= t))
            .map_or("unknown", |(_, s)| s.as_str())
    }
    pub(crate) fn closed_for_failover(&self, port: u16, from: f64, to: f64) -> bool {
        self.failover_closed
            .get(&port)
            .is_some_and(|v| v.iter().any(|(t, _)| *t >= from - 0.5 && *t <= to + 0.5))
    }
}
