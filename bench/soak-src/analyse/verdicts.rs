//! apilb's verdicts against the fault log and its failure model ("silence closes, speech
//! drains"): how fast it gave each fault the state the model gives it, and took the server
//! back; faults it never noticed; state changes on sub-second stalls and latency spikes.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::percentile;
use super::{lifted, name, r2, Facts};
use crate::schedule::Kind;
use crate::READYZ_INTERVAL;

/// Detection and recovery times, and verdicts the model does not give.
pub(crate) struct Verdicts {
    pub(crate) detect: HashMap<&'static str, Vec<f32>>,
    pub(crate) recover: HashMap<&'static str, Vec<f32>>,
    pub(crate) never_detected: Vec<String>,
    pub(crate) never_recovered: Vec<String>,
    pub(crate) other_verdict: Vec<Value>,
    pub(crate) not_ready_unseen: u64,
    pub(crate) stall_flips: Vec<Value>,
    pub(crate) spike_flips: Vec<Value>,
    pub(crate) spike_reports: Vec<Value>,
}

/// Detection (fault → the state the failure model gives it) and recovery (lifted → ready).
pub(crate) fn against_the_fault_log(facts: &Facts<'_>) -> Verdicts {
    let view = facts.view;
    let done = &facts.done;
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
    for f in done {
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
    Verdicts {
        detect,
        recover,
        never_detected,
        never_recovered,
        other_verdict,
        not_ready_unseen,
        stall_flips,
        spike_flips,
        spike_reports,
    }
}

/// Detection or recovery times by fault kind, for the JSON: n, p50, max.
pub(crate) fn lat_json(m: &mut HashMap<&'static str, Vec<f32>>) -> Value {
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
}

/// Detection or recovery times by fault kind, for the Markdown: p50 / max.
pub(crate) fn lat_md(m: &mut HashMap<&'static str, Vec<f32>>) -> String {
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
}
