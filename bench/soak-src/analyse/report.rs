//! The report as JSON, the reasons the run fails (each a sentence naming what and where),
//! and the per-operation totals. It words what the steps found; it finds nothing itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::failover::Failover;
use super::failures::{Failures, Retried};
use super::graceful::Shutdowns;
use super::leaks::Resources;
use super::resets::{Counters, Resets};
use super::routing::{Routing, Unexplained};
use super::verdicts::{lat_json, Verdicts};
use super::{percentile, r2, Facts, Findings, Run};
use crate::apilb_log::ApilbView;
use crate::schedule::{Fault, Kind};
use crate::traffic::record::{KindStats, Mismatch};
use crate::{FAILOVER_TARGET, FD_MARGIN, RSS_MARGIN_FRACTION, RSS_MARGIN_KIB};

/// Per-operation totals, the fault list and the faults by kind.
pub(crate) struct Totals {
    pub(crate) requests_ok: u64,
    pub(crate) requests_failed: u64,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    pub(crate) by_op: serde_json::Map<String, Value>,
    pub(crate) ops: Vec<&'static str>,
    pub(crate) fault_json: Vec<Value>,
    pub(crate) kinds_count: HashMap<&'static str, usize>,
}

/// Why the run fails: byte mismatches, requests cut, healthy streams reset, a crash or
/// panic, leaks. Empty: it passes.
pub(crate) fn fail_reasons(
    run: &Run<'_>,
    view: &ApilbView,
    found: &Findings,
    mismatches: &[Mismatch],
) -> Vec<String> {
    let Run {
        baseline,
        end,
        crashed,
        ..
    } = run;
    let Findings {
        failures: Failures { cut, .. },
        resets:
            Resets {
                healthy_closed,
                healthy_ended,
                healthy_reset,
                ..
            },
        resources:
            Resources {
                mid_rss,
                last_rss,
                rss_allowed,
                ..
            },
        ..
    } = found;
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
    if *healthy_reset > 0 {
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
            fail_reasons.push("could not sample apilb at the end".to_string());
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
    fail_reasons
}

/// Requests, bytes and latencies by operation; the faults as carried out.
pub(crate) fn totals(stats: &HashMap<&'static str, KindStats>, faults: &[Fault]) -> Totals {
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
    Totals {
        requests_ok,
        requests_failed,
        bytes_up,
        bytes_down,
        by_op,
        ops,
        fault_json,
        kinds_count,
    }
}

/// The whole report as JSON (`soak-latest.json`).
pub(crate) fn json(
    run: &Run<'_>,
    facts: &Facts<'_>,
    found: &mut Findings,
    totals: &Totals,
    mismatches: &[Mismatch],
    fail_reasons: &[String],
) -> Value {
    let conns = facts.conns;
    let pass = fail_reasons.is_empty();
    let verdicts = apilb_verdicts_json(facts, found);
    let Run {
        args,
        ctx,
        traffic_end,
        ..
    } = run;
    let Findings {
        verdicts: Verdicts { spike_reports, .. },
        ..
    } = &*found;
    let Totals {
        requests_ok,
        requests_failed,
        bytes_up,
        bytes_down,
        by_op,
        fault_json,
        kinds_count,
        ..
    } = totals;
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
        "failures": failures_json(found),
        "retried": retried_json(found),
        "graceful_shutdowns": graceful_shutdowns_json(facts, found),
        "healthy_streams_reset": healthy_streams_reset_json(found),
        "apilb_closes": apilb_closes_json(found),
        "spikes": spike_reports,
        "byte_mismatches": mismatches.len(),
        "mismatch_list": mismatches.iter().take(20).map(|m| json!({
            "op": m.op, "connection": m.conn, "t": m.at, "what": m.what,
        })).collect::<Vec<_>>(),
        "failover": failover_json(found),
        "faults": { "count": kinds_count, "list": fault_json },
        "apilb_verdicts": verdicts,
        "apilb": apilb_json(run, facts),
        "resources": resources_json(run, found),
    });
    report
}

/// Failures by class (`failures`).
fn failures_json(found: &Findings) -> Value {
    let other_count = found.failures.other.len();
    let Findings {
        failures:
            Failures {
                unsavable,
                unsavable_by,
                other,
                unsavable_examples,
                cut,
                raced_idle_close,
                ..
            },
        ..
    } = found;
    json!({
        "unsavable": unsavable,
        "unsavable_by_fault": unsavable_by,
        "cut_by_a_graceful_shutdown": cut.len(),
        "cut_list": cut.iter().take(30).collect::<Vec<_>>(),
        "posts_that_raced_a_leaving_servers_idle_close": raced_idle_close,
        "other": other_count,
        "other_list": other.iter().take(50).collect::<Vec<_>>(),
        "unsavable_examples": unsavable_examples,
    })
}

/// Requests the server never took (`retried`).
fn retried_json(found: &Findings) -> Value {
    let retried_total: u64 = found.retried.retried_by.values().sum();
    let Findings {
        retried:
            Retried {
                retried_by,
                retried_unexplained,
                ..
            },
        ..
    } = found;
    json!({
        "total": retried_total,
        "by_fault": retried_by,
        "with_no_fault_on_the_server": retried_unexplained,
    })
}

/// Graceful shutdowns (`graceful`).
fn graceful_shutdowns_json(facts: &Facts<'_>, found: &Findings) -> Value {
    let graceful = &facts.graceful;
    let Findings {
        shutdowns:
            Shutdowns {
                shutdowns,
                in_flight_at_close,
                in_flight_at_close_intact,
                in_flight_during,
                in_flight_during_intact,
                watches_ended_clean,
                retried_on_leaving,
                reached_after_close,
                ..
            },
        ..
    } = found;
    json!({
        "count": graceful.len(),
        "in_flight_at_listener_close": in_flight_at_close,
        "in_flight_at_listener_close_intact": in_flight_at_close_intact,
        "in_flight_during_shutdown": in_flight_during,
        "in_flight_during_shutdown_intact": in_flight_during_intact,
        "watches_ended_cleanly": watches_ended_clean,
        "requests_never_taken_retried": retried_on_leaving,
        "new_connections_after_listener_closed": reached_after_close,
        "list": shutdowns,
    })
}

/// Healthy streams reset (`resets`).
fn healthy_streams_reset_json(found: &Findings) -> Value {
    let Findings {
        resets:
            Resets {
                healthy_closed,
                healthy_ended,
                healthy_reset,
                ..
            },
        ..
    } = found;
    json!({
        "total": healthy_reset,
        "closed_by_apilb_while_not_silent": healthy_closed,
        "ended_with_no_fault_on_their_server": healthy_ended.iter().take(50).collect::<Vec<_>>(),
        "ended_with_no_fault_count": healthy_ended.len(),
    })
}

/// apilb's failover closes, its log against its counter (`resets`).
fn apilb_closes_json(found: &Findings) -> Value {
    let Findings {
        resets:
            Resets {
                closed_by_apilb,
                closed_by_apilb_per_server,
                silent_close_events,
                ..
            },
        counters:
            Counters {
                metric_closed,
                metric_closed_total,
                ..
            },
        ..
    } = found;
    json!({
        "connections_closed_log": closed_by_apilb,
        "connections_closed_log_per_server": closed_by_apilb_per_server,
        "connections_closed_metric": metric_closed_total,
        "connections_closed_metric_per_server": metric_closed,
        "silent_server_closes": silent_close_events,
    })
}

/// Connections pinned to a dead server (`failover`).
fn failover_json(found: &Findings) -> Value {
    let Findings {
        failover:
            Failover {
                pinned,
                closed_in_time,
                resumed,
                hanging,
                latency_table,
                ..
            },
        max_gap,
        ..
    } = found;
    json!({
        "connections_pinned_to_a_dead_server": pinned,
        "closed_within_target": closed_in_time,
        "resumed_after_a_short_fault": resumed,
        "left_hanging": hanging.len(),
        "hanging_list": hanging.iter().take(30).collect::<Vec<_>>(),
        "close_after_fault_seconds": latency_table,
        "longest_watch_silence_seconds": (*max_gap * 100.0).round() / 100.0,
    })
}

/// apilb's verdicts (`verdicts`, `routing`).
fn apilb_verdicts_json(facts: &Facts<'_>, found: &mut Findings) -> Value {
    let view = facts.view;
    let detect_json = lat_json(&mut found.verdicts.detect);
    let recover_json = lat_json(&mut found.verdicts.recover);
    let Findings {
        counters: Counters {
            health_failures_by_cause,
            ..
        },
        verdicts:
            Verdicts {
                never_detected,
                never_recovered,
                other_verdict,
                not_ready_unseen,
                stall_flips,
                spike_flips,
                ..
            },
        unexplained:
            Unexplained {
                spurious,
                spurious_passive,
                ..
            },
        routing:
            Routing {
                misrouted,
                fallbacks,
                stale_order,
                per_server,
                ..
            },
        ..
    } = found;
    json!({
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
    })
}

/// apilb's crash, panics, log and stop.
fn apilb_json(run: &Run<'_>, facts: &Facts<'_>) -> Value {
    let view = facts.view;
    let Run {
        crashed,
        sigterm,
        metrics,
        ..
    } = run;
    json!({
        "crashed": crashed,
        "panics": view.panics,
        "warnings": view.warnings,
        "errors": view.errors.iter().take(20).collect::<Vec<_>>(),
        "state_changes": view.state_changes,
        "state_changes_missed_by_the_status_polls": view.state_changes_missed,
        "sigterm": sigterm,
        "metrics_at_end": metrics,
    })
}

/// apilb's resources (`leaks`).
fn resources_json(run: &Run<'_>, found: &Findings) -> Value {
    let Run {
        samples,
        baseline,
        end,
        ..
    } = run;
    let Findings {
        resources:
            Resources {
                mid_rss,
                last_rss,
                rss_allowed,
                rss_max,
                slope_kib_per_min,
                fds_max,
                ..
            },
        ..
    } = found;
    json!({
        "start": { "rss_kib": baseline.rss_kib, "fds": baseline.fds },
        "end": end.map(|e| json!({ "rss_kib": e.rss_kib, "fds": e.fds, "client_connections": e.conns })),
        "rss_kib_max": rss_max,
        "fds_max": fds_max,
        "rss_kib_median_middle_third": mid_rss,
        "rss_kib_median_last_third": last_rss,
        "rss_kib_allowed_last_third": rss_allowed,
        "rss_kib_per_minute_slope_last_two_thirds": (*slope_kib_per_min * 10.0).round() / 10.0,
        "fd_margin": FD_MARGIN,
        "samples": samples.iter().map(|s| json!([(s.t * 10.0).round() / 10.0, s.rss_kib, s.fds, s.conns])).collect::<Vec<_>>(),
        "samples_columns": ["t", "rss_kib", "fds", "client_connections"],
    })
}
