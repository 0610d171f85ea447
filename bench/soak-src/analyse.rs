//! Turning the run's records into the report: failures classified against the fault log,
//! graceful shutdowns, healthy streams reset, failover, apilb's verdicts, resources, and the
//! JSON and Markdown. It reads; it changes nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::apilb_log::ApilbView;
use crate::resources::Sample;
use crate::schedule::{Fault, Kind};
use crate::traffic::client::UNANSWERED;
use crate::traffic::record::{ConnRec, Ctx, KindStats, Outcome};
use crate::{
    Args, FAILOVER_TARGET, FD_MARGIN, READYZ_INTERVAL, RSS_MARGIN_FRACTION, RSS_MARGIN_KIB,
};

pub(crate) fn percentile(v: &mut [f32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i])
}

pub(crate) fn median(mut v: Vec<i64>) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort();
    v[v.len() / 2]
}
pub(crate) struct Analysis {
    pub(crate) report: Value,
    pub(crate) fail_reasons: Vec<String>,
    pub(crate) markdown: String,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn analyse(
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
