//! The soak under faults (`bench/soak` builds and runs this; see bench/SOAK.md).
//!
//! apilb in front of three TLS stand-in apiservers (127.0.0.2–4, each behind a latency relay
//! on 127.0.0.5–7, which is what apilb is given) under mixed traffic — kept-alive small
//! requests over HTTP/1.1 and HTTP/2, long watch streams, uploads echoed back, downloads and
//! slow responses, every byte verified, new connections — while a seeded, reproducible fault
//! schedule kills (then restarts), blackholes (iptables DROP in a chain of our own), marks
//! not ready (/readyz 500), freezes (SIGSTOP for seconds), stalls (SIGSTOP for under a
//! second, which connections must ride out) and gracefully shuts down (SIGTERM: the
//! stand-in does kube-apiserver's sequence, with or without a shutdown delay, then is
//! restarted) servers, never more than two at a time, and slows every path at once (a
//! latency spike on all three relays). apilb's RSS and descriptors are sampled every second.
//!
//! Afterwards every client-visible failure is classified against the fault log: a failure on
//! a connection that was pinned to a server at the instant that server was killed, frozen or
//! blackholed is one no L4 proxy can save; a failure on a server shutting down gracefully is
//! a request cut in flight (there must be none); anything else is counted apart, with
//! examples. A stream that ended on a server that did not go silent, or that apilb closed
//! while its server was not silent, is a healthy stream reset (there must be none). apilb's
//! own verdicts are checked too: how fast it noticed each fault and took the server back,
//! state changes no fault explains, new connections sent to servers it held down.
//! apilb's own debug log says which server each client connection went to, so even a
//! connection that failed before its first answer is attributed.
//!
//! Exit status: 0 pass; 1 byte mismatch, a request cut by a graceful shutdown, a healthy
//! stream reset, apilb crash/panic, or leak (the reasons printed); 2 the soak could not run
//! (not root, no iptables, a setup step failed).
//!
//! Built as a `harness = false` bench target so that it can share the integration tests'
//! harness (`tests/common`), which needs the paths of the binaries Cargo builds.
//!
//! This file parses the arguments and runs the phases (start, baseline, traffic under
//! faults, settle, stop, analyse, report). `schedule` plans the faults and `faults` carries
//! them out; `traffic/` is the client load and its byte checks; `resources` samples apilb
//! and reads its admin endpoint; `transitions` polls apilb's `/status` for its servers'
//! state changes; `apilb_log` reads its log after the run; `analyse/` judges the run and
//! words the report.

#[path = "../../tests/common/mod.rs"]
mod common;

mod analyse;
mod apilb_log;
mod faults;
mod resources;
mod schedule;
mod traffic;
mod transitions;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::analyse::{analyse, Analysis};
use crate::apilb_log::read_apilb_log;
use crate::faults::{run_faults, Servers};
use crate::resources::{admin_get, admin_status, alive, counters, sample, wait_ready, Sample};
use crate::schedule::{schedule, Fault, Kind};
use crate::traffic::record::{Ctx, Recorder};
use crate::traffic::workers::{idle, keepalive, new_connections, slow, transfers, watcher};
use crate::transitions::Transitions;
use common::{iptables, Apilb, Pki, Relay, Standin};

/// A stream on a dead server must be closed within this (the design's failover target).
const FAILOVER_TARGET: f64 = 3.0;
/// Descriptors apilb may hold at the end above the start (after traffic and faults stop).
const FD_MARGIN: i64 = 4;
/// RSS growth allowed from the middle third to the last third of the run.
const RSS_MARGIN_KIB: i64 = 2 * 1024;
const RSS_MARGIN_FRACTION: f64 = 0.10;
/// Interval of the watch streams' events.
const WATCH_INTERVAL_MS: u64 = 100;
/// Latency a spike adds on every path, each way (every PING is late; none is lost).
const SPIKE_DELAY: f64 = 0.8;
/// apilb's default `--health-readyz-interval`: a not-ready fault shorter than this is seen
/// only when a /readyz happens to fall inside it.
const READYZ_INTERVAL: f64 = 30.0;
/// The longest a graceful shutdown may take (the stand-in's own limit is 60 s).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(70);

type B = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------
// Command line

struct Args {
    seconds: u64,
    seed: u64,
    out: PathBuf,
}

fn usage() -> &'static str {
    "usage: bench/soak [--seconds N] [--seed S] [--out DIR]\n\
     \n  --seconds N  length of the run (default 600)\
     \n  --seed S     seed of the fault schedule and the traffic mix (default 1)\
     \n  --out DIR    where soak-latest.{md,json} go (default bench/results)\n"
}

fn parse_args() -> Result<Option<Args>, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // Plain `cargo bench` runs every bench target with only `--bench`: say how to run this
    // one instead of starting a 10-minute soak nobody asked for.
    if !raw.is_empty() && raw.iter().all(|a| a == "--bench") {
        println!("soak: run it with bench/soak [--seconds N] [--seed S] (needs root)");
        return Ok(None);
    }
    let mut a = Args {
        seconds: 600,
        seed: 1,
        out: PathBuf::from("bench/results"),
    };
    let mut it = raw.into_iter().filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            "--seed" => {
                a.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?;
            }
            "--out" => a.out = PathBuf::from(value("--out")?),
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.seconds < 20 {
        return Err("--seconds must be at least 20 (warm-up, faults, quiet end)".into());
    }
    Ok(Some(a))
}

fn tls_connector(pki: &Pki, alpn: &[u8]) -> TlsConnector {
    let mut cfg = (*pki.client_config(false)).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    if !rustix::process::geteuid().is_root() {
        eprintln!("soak: needs root (iptables blackholes, signals to its servers)");
        return ExitCode::from(2);
    }
    if iptables(&["-S", "INPUT"]).is_err() {
        eprintln!("soak: iptables does not work here; install it (apt-get install iptables)");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(soak(args))
}

/// The stand-ins, their relays and apilb, started; apilb holding every server ready.
struct Setup {
    lb: Apilb,
    servers: Arc<Servers>,
    ctx: Arc<Ctx>,
    /// apilb's server names (the relays' addresses) → the stand-ins' names.
    names: HashMap<String, String>,
}

/// Starts three stand-ins (each with the shutdown delay of its next graceful shutdown), a
/// latency relay in front of each, and apilb in front of the relays; waits until apilb's
/// `/status` holds every server ready. Err: what could not start.
async fn start(args: &Args, pki: &Pki, faults: &[Fault]) -> Result<Setup, &'static str> {
    // Each stand-in is started with the shutdown delay of its next graceful shutdown.
    let delays: Vec<VecDeque<f64>> = (0..3)
        .map(|i| {
            faults
                .iter()
                .filter(|f| f.kind == Kind::Graceful && f.server == i)
                .map(|f| f.delay)
                .collect()
        })
        .collect();
    let setup = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let s: Vec<Standin> = (0..3u8)
            .map(|i| {
                let delay = delays[usize::from(i)].front().copied().unwrap_or(0.0);
                Standin::start_graceful(
                    pki,
                    [127, 0, 0, 2 + i],
                    &format!("cp{}", i + 1),
                    Duration::from_secs_f64(delay),
                )
            })
            .collect();
        s
    }));
    let Ok(standins) = setup else {
        return Err("could not start the stand-in servers");
    };
    let direct: Vec<SocketAddr> = standins.iter().map(|s| s.addr).collect();
    // A latency relay in front of each (127.0.0.5–7: the test certificate holds them, and
    // apilb checks each server by its address): apilb knows the servers by the relays.
    let mut relays = Vec::new();
    for (i, a) in direct.iter().enumerate() {
        relays.push(Relay::start([127, 0, 0, 5 + i as u8], *a).await);
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let names: HashMap<String, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (a.to_string(), format!("cp{}", i + 1)))
        .collect();
    let lb = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut a: Vec<String> = Vec::new();
        for addr in &addrs {
            a.push("--server".into());
            a.push(addr.to_string());
        }
        a.push("--ca-file".into());
        a.push(pki.ca.display().to_string());
        Apilb::start_args(a, None)
    }));
    let Ok(lb) = lb else {
        return Err("apilb did not start");
    };
    // apilb's typed state: every server ready in its /status.
    if !wait_ready(&lb, &addrs, Duration::from_secs(10)).await {
        return Err("apilb's servers did not become ready (its /status) within 10 s");
    }
    let h1 = tls_connector(pki, b"http/1.1");
    let h2 = tls_connector(pki, b"h2");
    let servers = Arc::new(Servers {
        standins: standins.into_iter().map(Mutex::new).collect(),
        direct: direct.clone(),
        addrs: addrs.clone(),
        relays,
        holes: Mutex::new(HashMap::new()),
        frozen: Mutex::new(vec![false; 3]),
        delays: Mutex::new(delays),
        exits: Mutex::new(HashMap::new()),
        h1: h1.clone(),
    });
    let ctx = Arc::new(Ctx {
        lb: lb.listen,
        h1,
        h2,
        t0: Instant::now(),
        stop: CancellationToken::new(),
        rec: Recorder::default(),
        seed: args.seed,
    });
    Ok(Setup {
        lb,
        servers,
        ctx,
        names,
    })
}

/// Ctrl-C / SIGTERM end the run early (with the report and full cleanup).
fn stop_on_signals(stop: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut a), Ok(mut b)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! { _ = a.recv() => {}, _ = b.recv() => {} }
        eprintln!("soak: interrupted; stopping early");
        stop.cancel();
    });
}

/// The client mix (bench/SOAK.md's table), each worker looping until the run stops.
fn spawn_workers(ctx: &Arc<Ctx>) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    let mut wid = 0u64;
    for _ in 0..6 {
        wid += 1;
        workers.spawn(keepalive(ctx.clone(), wid, false));
    }
    for _ in 0..3 {
        wid += 1;
        workers.spawn(keepalive(ctx.clone(), wid, true));
    }
    for _ in 0..6 {
        wid += 1;
        workers.spawn(watcher(ctx.clone(), wid));
    }
    for _ in 0..12 {
        wid += 1;
        workers.spawn(idle(ctx.clone(), wid));
    }
    for share in [0.0, 1.0, 0.5] {
        wid += 1;
        workers.spawn(transfers(ctx.clone(), wid, share));
    }
    for _ in 0..2 {
        wid += 1;
        workers.spawn(new_connections(ctx.clone(), wid));
    }
    for _ in 0..4 {
        wid += 1;
        workers.spawn(slow(ctx.clone(), wid));
    }
    workers
}

/// Samples apilb every second until the end of the run (or a crash, or a stop), and keeps
/// its servers' state changes: the samples after `baseline`, and what crashed.
async fn sample_run(
    ctx: &Ctx,
    lb: &Apilb,
    baseline: Sample,
    seconds: f64,
    transitions: &Transitions,
) -> (Vec<Sample>, Option<String>) {
    let mut samples = vec![baseline];
    let mut crashed = None;
    let mut next_print = 10.0;
    loop {
        if !ctx.sleep(Duration::from_secs(1)).await {
            break;
        }
        if !alive(lb.pid()) {
            crashed = Some(format!("apilb (pid {}) exited during the run", lb.pid()));
            break;
        }
        if let Some(s) = sample(ctx, lb).await {
            if s.t >= next_print {
                next_print += 10.0;
                let failed = ctx.rec.failures.lock().unwrap().len();
                println!(
                    "soak: {:7.2}s  apilb rss {:.1} MiB, {} fds, {} client connections; {} failures so far",
                    s.t,
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.conns,
                    failed
                );
            }
            samples.push(s);
        }
        transitions.poll(lb).await;
        if ctx.now() >= seconds {
            break;
        }
    }
    (samples, crashed)
}

/// The end: traffic stopped, every fault lifted. Waits (bounded) for apilb to hold every
/// server ready (its /status) and to close what it had open, then samples: the end sample
/// (None if apilb is gone, which sets `crashed`).
async fn settle(
    ctx: &Ctx,
    lb: &Apilb,
    baseline: Sample,
    samples: &mut Vec<Sample>,
    crashed: &mut Option<String>,
    transitions: &Transitions,
) -> Option<Sample> {
    let mut end = None;
    if crashed.is_none() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = admin_status(lb).await;
            let ready = status.as_ref().is_some_and(|v| {
                v["servers"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|s| s["state"] == "ready"))
            });
            transitions.poll(lb).await;
            let s = sample(ctx, lb).await;
            if let Some(s) = s {
                samples.push(s);
                end = Some(s);
                if ready && s.conns == 0 && s.fds <= baseline.fds {
                    break;
                }
            }
            if Instant::now() > deadline || !alive(lb.pid()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !alive(lb.pid()) {
            *crashed = Some(format!("apilb (pid {}) exited after the run", lb.pid()));
            end = None;
        }
    }
    end
}

/// apilb's counters from /metrics, then its stop on SIGTERM (reported, not judged).
async fn stop_apilb(lb: &mut Apilb, crashed: &Option<String>) -> (Vec<String>, String) {
    let metrics = if crashed.is_none() {
        admin_get(lb, "/metrics")
            .await
            .map(|m| counters(&m))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let sigterm = if crashed.is_none() {
        lb.signal(libc::SIGTERM);
        match std::panic::catch_unwind(AssertUnwindSafe(|| lb.wait_exit(Duration::from_secs(15)))) {
            Ok(Some(code)) => format!("exited {code}"),
            Ok(None) => "killed by a signal".to_string(),
            Err(_) => "still running after 15 s".to_string(),
        }
    } else {
        "-".to_string()
    };
    (metrics, sigterm)
}

/// Writes soak-latest.{json,md} and apilb's notable log lines to `--out`, and prints the
/// Markdown.
fn write_outputs(args: &Args, analysis: &Analysis, lb: &Apilb) {
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("soak: cannot create {}: {e}", args.out.display());
    }
    let json_path = args.out.join("soak-latest.json");
    let md_path = args.out.join("soak-latest.md");
    let log_path = args.out.join("soak-latest-apilb-events.jsonl");
    let _ = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&analysis.report).unwrap() + "\n",
    );
    let _ = std::fs::write(&md_path, &analysis.markdown);
    // apilb's info lines and above, and its health checker's debug lines (what each check
    // saw), for the reader; not its per-connection debug lines.
    let notable: String = lb
        .logs()
        .iter()
        .filter(|v| {
            !matches!(v["level"].as_str(), Some("DEBUG" | "TRACE"))
                || v["target"] == "apilb::control::health"
        })
        .map(|v| v.to_string() + "\n")
        .collect();
    let _ = std::fs::write(&log_path, notable);
    println!("\n{}", analysis.markdown);
    println!(
        "soak: wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        log_path.display()
    );
}

/// The run's phases: start, baseline, traffic under faults, settle, stop, analyse, report.
async fn soak(args: Args) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let seconds = args.seconds as f64;
    let faults = schedule(args.seed, seconds);
    let Setup {
        lb,
        servers,
        ctx,
        names,
    } = match start(&args, &pki, &faults).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let wall0 = SystemTime::now();
    println!(
        "soak: apilb {} in front of cp1 {} cp2 {} cp3 {} (through relays {} {} {}); {} s, seed {}, {} faults planned",
        lb.listen,
        servers.direct[0],
        servers.direct[1],
        servers.direct[2],
        servers.addrs[0],
        servers.addrs[1],
        servers.addrs[2],
        args.seconds,
        args.seed,
        faults.len()
    );

    // The start: idle apilb, its servers ready, before any client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(baseline) = sample(&ctx, &lb).await else {
        eprintln!("soak: cannot read apilb's /proc entries");
        return ExitCode::from(2);
    };
    stop_on_signals(ctx.stop.clone());

    let mut workers = spawn_workers(&ctx);
    let fault_task = tokio::spawn(run_faults(ctx.clone(), servers.clone(), faults.clone()));
    let transitions = Transitions::default();
    let (mut samples, mut crashed) = sample_run(&ctx, &lb, baseline, seconds, &transitions).await;
    let traffic_end = ctx.now();
    ctx.stop.cancel();
    while workers.join_next().await.is_some() {}
    let faults = match fault_task.await {
        Ok(f) => f,
        Err(_) => faults,
    };
    servers.restore_all();
    println!("soak: {traffic_end:7.2}s  traffic stopped; every fault lifted");
    let end = settle(
        &ctx,
        &lb,
        baseline,
        &mut samples,
        &mut crashed,
        &transitions,
    )
    .await;
    transitions.poll(&lb).await;
    let mut lb = lb;
    let (metrics, sigterm) = stop_apilb(&mut lb, &crashed).await;
    let view = read_apilb_log(
        &lb.logs(),
        transitions.changes(wall0, &names),
        wall0,
        &names,
    );
    let interrupted = crashed.is_none() && traffic_end < seconds - 1.0;
    let mut analysis = analyse(
        &args,
        &ctx,
        &faults,
        &samples,
        &view,
        traffic_end,
        baseline,
        end,
        crashed,
        sigterm,
        metrics,
    );

    analysis.report["interrupted"] = json!(interrupted);
    if interrupted {
        analysis.markdown = analysis.markdown.replacen(
            "\n\n",
            &format!("\n\n**Interrupted** at {traffic_end:.1} s: a partial run.\n\n"),
            1,
        );
    }
    write_outputs(&args, &analysis, &lb);
    drop(lb);
    drop(servers);
    if analysis.fail_reasons.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        for r in &analysis.fail_reasons {
            eprintln!("soak: FAIL: {r}");
        }
        ExitCode::from(1)
    }
}
