//! The report as Markdown (`soak-latest.md`): the summary table, the per-operation table,
//! the first failures of each class, and the fault schedule as carried out.

use std::sync::atomic::Ordering;

use serde_json::Value;

use super::failover::Failover;
use super::failures::{Failures, Retried};
use super::graceful::Shutdowns;
use super::leaks::Resources;
use super::report::Totals;
use super::resets::{Counters, Resets};
use super::routing::{Routing, Unexplained};
use super::verdicts::{lat_md, Verdicts};
use super::{percentile, Facts, Findings, Run};
use crate::schedule::Kind;
use crate::traffic::record::Mismatch;
use crate::{FD_MARGIN, READYZ_INTERVAL};

/// The Markdown report.
pub(crate) fn markdown(
    run: &Run<'_>,
    facts: &Facts<'_>,
    found: &mut Findings,
    totals: &Totals,
    report: &Value,
    mismatches: &[Mismatch],
    fail_reasons: &[String],
) -> String {
    let faults = facts.faults;
    let mut rows = traffic_rows(run, facts, found, totals, mismatches);
    rows.extend(apilb_rows(run, facts, found));
    let Run { args, .. } = run;
    let Findings {
        failures: Failures { other, cut, .. },
        resets:
            Resets {
                healthy_closed,
                healthy_ended,
                ..
            },
        failover: Failover { hanging, .. },
        verdicts: Verdicts { other_verdict, .. },
        ..
    } = &*found;
    let Totals { ops, .. } = totals;
    let pass = fail_reasons.is_empty();
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
    md.push_str("| measure | value |\n|---|---|\n");
    for (k, v) in rows {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str(
        "\n| operation | ok | failed | retried | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n",
    );
    for op in ops {
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
    list(&mut md, "Cut by a graceful shutdown", cut);
    list(&mut md, "Healthy streams closed by apilb", healthy_closed);
    list(
        &mut md,
        "Healthy streams ended with no fault to explain it",
        healthy_ended,
    );
    list(&mut md, "Other failures", other);
    list(&mut md, "Left hanging", hanging);
    list(
        &mut md,
        "Noticed as another state than the failure model gives",
        other_verdict,
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
    md
}

/// The summary rows on traffic, failures, graceful shutdowns, resets and failover.
fn traffic_rows(
    run: &Run<'_>,
    facts: &Facts<'_>,
    found: &mut Findings,
    totals: &Totals,
    mismatches: &[Mismatch],
) -> Vec<(String, String)> {
    let (_view, conns, faults, graceful) = (facts.view, facts.conns, facts.faults, &facts.graceful);
    let other_count = found.failures.other.len();
    let retried_total: u64 = found.retried.retried_by.values().sum();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let Run { ctx, .. } = run;
    let Findings {
        failures:
            Failures {
                unsavable,
                unsavable_by,
                other: _,
                cut,
                raced_idle_close,
                ..
            },
        retried: Retried { retried_by, .. },
        shutdowns:
            Shutdowns {
                shutdowns: _,
                in_flight_at_close,
                in_flight_at_close_intact,
                in_flight_during,
                in_flight_during_intact,
                watches_ended_clean,
                retried_on_leaving,
                reached_after_close,
                exit_secs,
                ..
            },
        resets:
            Resets {
                closed_by_apilb,
                healthy_closed,
                healthy_ended,
                healthy_reset,
                ..
            },
        counters: Counters {
            metric_closed_total,
            ..
        },
        failover:
            Failover {
                pinned,
                closed_in_time,
                resumed,
                hanging,
                close_latencies,
                ..
            },
        max_gap,
        verdicts: Verdicts {
            detect,
            spike_reports,
            ..
        },
        ..
    } = found;
    let Totals {
        requests_ok,
        requests_failed,
        bytes_up,
        bytes_down,
        kinds_count,
        ..
    } = totals;
    let mut kinds: Vec<_> = kinds_count.iter().collect();
    kinds.sort();
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
            format!("{:.1} MiB / {:.1} MiB", mib(*bytes_up), mib(*bytes_down)),
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
    ]
}

/// The summary rows on apilb's verdicts and resources.
fn apilb_rows(run: &Run<'_>, facts: &Facts<'_>, found: &mut Findings) -> Vec<(String, String)> {
    let view = facts.view;
    let detect_md = lat_md(&mut found.verdicts.detect);
    let recover_md = lat_md(&mut found.verdicts.recover);
    let Run {
        baseline,
        end,
        crashed,
        sigterm,
        ..
    } = run;
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
                ..
            },
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
    vec![
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
                *rss_max as f64 / 1024.0,
                end.map_or("-".into(), |e| format!("{:.1}", e.rss_kib as f64 / 1024.0))
            ),
        ),
        (
            "apilb RSS median, middle third → last third".into(),
            format!(
                "{:.1} → {:.1} MiB (allowed ≤ {:.1}); slope over the last two thirds {:+.0} KiB/min",
                *mid_rss as f64 / 1024.0,
                *last_rss as f64 / 1024.0,
                *rss_allowed as f64 / 1024.0,
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
    ]
}
