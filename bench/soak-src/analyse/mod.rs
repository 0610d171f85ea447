//! Turning the run's records into the report, in named steps, each a module of one job:
//! failures classified against the fault log (`failures`), graceful shutdowns (`graceful`),
//! healthy streams reset and apilb's closes (`resets`), connections left hanging
//! (`failover`), apilb's own verdicts (`verdicts`, `routing`), apilb's resources (`leaks`),
//! and the JSON and Markdown (`report`, `markdown`). It reads what the run recorded; it
//! changes nothing and starts nothing.
//!
//! `Facts` holds what every step asks: the faults carried out, the connections, and who
//! explains what (which fault was on a connection's server, and until when).

mod failover;
mod failures;
mod graceful;
mod leaks;
mod markdown;
mod report;
mod resets;
mod routing;
mod verdicts;

use serde_json::Value;

use crate::apilb_log::ApilbView;
use crate::resources::Sample;
use crate::schedule::{Fault, Kind};
use crate::traffic::record::{ConnRec, Ctx};
use crate::Args;

pub(crate) fn percentile(v: &mut [f32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
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

/// What the run left behind, for the report.
pub(crate) struct Run<'a> {
    pub(crate) args: &'a Args,
    pub(crate) ctx: &'a Ctx,
    pub(crate) samples: &'a [Sample],
    pub(crate) traffic_end: f64,
    pub(crate) baseline: Sample,
    pub(crate) end: Option<Sample>,
    pub(crate) crashed: Option<String>,
    pub(crate) sigterm: String,
    pub(crate) metrics: Vec<String>,
}

/// What the steps found, each step's own record.
pub(crate) struct Findings {
    pub(crate) failures: failures::Failures,
    pub(crate) retried: failures::Retried,
    pub(crate) shutdowns: graceful::Shutdowns,
    pub(crate) resets: resets::Resets,
    pub(crate) counters: resets::Counters,
    pub(crate) failover: failover::Failover,
    pub(crate) max_gap: f64,
    pub(crate) verdicts: verdicts::Verdicts,
    pub(crate) unexplained: routing::Unexplained,
    pub(crate) routing: routing::Routing,
    pub(crate) resources: leaks::Resources,
}

/// Judges the run: each step over the records, then why it fails, the JSON and the Markdown.
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
    let failed = ctx.rec.failures.lock().unwrap();
    let retried = ctx.rec.retries.lock().unwrap();
    let mismatches = ctx.rec.mismatches.lock().unwrap();
    let stats = ctx.rec.stats.lock().unwrap().clone();
    let facts = Facts::new(view, faults, &conns, traffic_end);
    let run = Run {
        args,
        ctx,
        samples,
        traffic_end,
        baseline,
        end,
        crashed,
        sigterm,
        metrics,
    };
    let mut found = Findings {
        failures: failures::classify(&facts, &failed),
        retried: failures::retried(&facts, &retried),
        shutdowns: graceful::shutdowns(&facts),
        resets: resets::healthy_streams_reset(&facts),
        counters: resets::counters(view, &run.metrics),
        failover: failover::pinned_to_dead_servers(&facts),
        max_gap: failover::longest_watch_silence(&conns),
        verdicts: verdicts::against_the_fault_log(&facts),
        unexplained: routing::unexplained(&facts),
        routing: routing::new_connections(&facts),
        resources: leaks::resources(samples, traffic_end),
    };
    let fail_reasons = report::fail_reasons(&run, view, &found, &mismatches);
    let totals = report::totals(&stats, faults);
    let report = report::json(
        &run,
        &facts,
        &mut found,
        &totals,
        &mismatches,
        &fail_reasons,
    );
    let markdown = markdown::markdown(
        &run,
        &facts,
        &mut found,
        &totals,
        &report,
        &mismatches,
        &fail_reasons,
    );
    Analysis {
        report,
        fail_reasons,
        markdown,
    }
}

/// A time rounded to hundredths, for the report.
pub(crate) fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A stand-in's name from its index.
pub(crate) fn name(i: usize) -> String {
    format!("cp{}", i + 1)
}

/// When a fault was lifted (never, if it was not).
pub(crate) fn lifted(f: &Fault) -> f64 {
    f.ended.unwrap_or(f64::MAX)
}

/// What every step asks of the run: the faults carried out, the connections, and apilb's log.
pub(crate) struct Facts<'a> {
    pub(crate) view: &'a ApilbView,
    pub(crate) faults: &'a [Fault],
    pub(crate) conns: &'a [ConnRec],
    pub(crate) traffic_end: f64,
    /// The faults carried out.
    pub(crate) done: Vec<&'a Fault>,
    /// Kills, freezes and blackholes.
    pub(crate) hard: Vec<&'a Fault>,
    pub(crate) graceful: Vec<&'a Fault>,
    pub(crate) spikes: Vec<&'a Fault>,
}

impl<'a> Facts<'a> {
    fn new(
        view: &'a ApilbView,
        faults: &'a [Fault],
        conns: &'a [ConnRec],
        traffic_end: f64,
    ) -> Self {
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
        Facts {
            view,
            faults,
            conns,
            traffic_end,
            done,
            hard,
            graceful,
            spikes,
        }
    }

    /// The server of connection `c` around `t`: from its own answers, else apilb's log.
    pub(crate) fn server_of(&self, c: &ConnRec, t: f64) -> Option<String> {
        c.server
            .clone()
            .or_else(|| self.view.server_of(c.port, c.opened, t))
    }

    /// Until when a silent server (blackholed, frozen) was silent to apilb: the fault lifted
    /// (2 s margin), or, when later, apilb heard it again (a late PING answer, a new health
    /// connection): until then apilb may rightly close its connections.
    pub(crate) fn silent_until(&self, f: &Fault) -> f64 {
        let heard = self.view.states.get(&name(f.server)).and_then(|v| {
            v.iter()
                .find(|(t, s)| *t >= f.began.unwrap() && s != "down")
                .filter(|(t, _)| *t >= lifted(f))
                .map(|(t, _)| *t)
        });
        (lifted(f) + 2.0).max(heard.unwrap_or(0.0) + 0.5)
    }

    /// The nearest fault to `t`, for the reader.
    pub(crate) fn nearest(&self, t: f64) -> Option<String> {
        self.done
            .iter()
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
    }

    /// The fault on `server` that explains a connection ending (or an operation failing)
    /// because of what happened between `from` and `to`: a kill, freeze or blackhole until
    /// 2 s after it was lifted, a graceful shutdown from SIGTERM until 2 s after the process
    /// exited.
    pub(crate) fn explains(&self, server: &str, from: f64, to: f64) -> Option<&'a Fault> {
        self.done.iter().copied().find(|f| {
            let until = match f.kind {
                k if k.silent() => self.silent_until(f),
                k if k.hard() => lifted(f) + 2.0,
                Kind::Graceful => f.gone().unwrap_or(f64::MAX) + 2.0,
                _ => return false,
            };
            name(f.server) == server && to >= f.began.unwrap() - 0.05 && from <= until
        })
    }
}
