//! `apilb run`: wires the pieces together and owns the process lifecycle — start, reload of
//! the server list (SIGHUP or a settled change of the config file, read and recorded by
//! `reload`, on a task of its own so that no read holds the signals), and shutdown
//! (SIGTERM/SIGINT: stop accepting, drain for the grace period, then close what is left).
//!
//! Decides nothing about traffic or health itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, Phase};
use crate::config::Settings;
use crate::config::{self, Config, ServerSpec};
use crate::control::backend::{Backend, Backends, Removal, Source};
use crate::control::discovery::{self, Discovery};
use crate::control::health::{self, HealthContext};
use crate::metrics::Metrics;
use crate::proxy::connect::RaceSettings;
use crate::proxy::workers::Workers;
use crate::proxy::Proxy;
use crate::reload;
use crate::socket;

/// The servers and what runs for each: applying a new set starts the health checker (and
/// resolver) of every new server.
struct Fleet {
    backends: Arc<Backends>,
    health: Arc<HealthContext>,
    resolve_interval: Duration,
}

impl Fleet {
    fn apply(&self, set: &[(ServerSpec, Source)], removal: Removal) -> (usize, usize) {
        let change = self.backends.replace(set, removal);
        for b in &change.added {
            self.start_server_tasks(b);
        }
        (change.added.len(), change.removed.len())
    }

    fn start_server_tasks(&self, b: &Arc<Backend>) {
        tokio::spawn(health::run(b.clone(), self.health.clone()));
        if b.needs_resolution() {
            let b = b.clone();
            let every = self.resolve_interval;
            tokio::spawn(async move {
                let retired = b.retired().clone();
                loop {
                    tokio::select! {
                        () = retired.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = b.resolve().await {
                        tracing::warn!(server = %b.name, error = %e,
                            "re-resolution failed; keeping the last addresses");
                    }
                }
            });
        }
    }
}

fn seeds(cfg: &Config) -> Vec<(ServerSpec, Source)> {
    cfg.servers
        .iter()
        .map(|s| (s.clone(), Source::Seed))
        .collect()
}

/// Descriptors kept for everything but client connections: listeners, the admin endpoint
/// (up to 64 connections), health and discovery connections, the runtime's own.
const RESERVED_FDS: u64 = 128;

/// Raises the soft descriptor limit to the hard one (a container's soft limit is often
/// 1024) and returns the connection limit to use. Each client connection takes two
/// descriptors. A `--max-connections` the descriptor limit cannot hold is kept and warned
/// about when the operator gave it; the default is sized down to what the limit holds (a
/// common 20,000-descriptor limit would otherwise warn at default settings).
fn fit_nofile_limit(max_connections: usize, given: bool) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let mut current = lim.current.unwrap_or(u64::MAX);
    if current < lim.maximum.unwrap_or(u64::MAX) {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            current = lim.maximum.unwrap_or(u64::MAX);
        }
    }
    let need = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED_FDS);
    if current >= need {
        return max_connections;
    }
    let fits = usize::try_from(current.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(max_connections)
        .max(1);
    if given {
        tracing::warn!(
            limit = current,
            max_connections,
            needed = need,
            "the open-file limit cannot hold --max-connections; new connections beyond it are \
             closed. Raise LimitNOFILE (systemd) or the container runtime's limit, or lower \
             --max-connections to {fits}"
        );
        max_connections
    } else {
        tracing::info!(
            limit = current,
            max_connections = fits,
            "--max-connections sized to the open-file limit (two descriptors a connection)"
        );
        fits
    }
}

/// A setting that cannot work on this host, found at start (an address in use, not local,
/// or a port that needs privileges): exit code 2, like a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// The listener for `flag`'s address: inherited, or bound now. An address in use says what
/// to do about it.
fn bind(
    flag: &str,
    addr: SocketAddr,
    inherited: &mut Vec<std::net::TcpListener>,
    reuse_port: bool,
) -> anyhow::Result<std::net::TcpListener> {
    socket::take_or_listen(addr, inherited, reuse_port).map_err(|e| {
        let setting = |why: String| anyhow::Error::new(StartError(format!("{flag} {addr}: {why}")));
        match e.raw_os_error() {
            Some(libc::EADDRINUSE) if reuse_port => setting(format!(
                "the address is in use ({e}), and not by a process that shares it: \
                 --reuse-port shares an address only with another apilb started with \
                 --reuse-port too. Stop the process listening there first"
            )),
            Some(libc::EADDRINUSE) => setting(format!(
                "the address is in use ({e}): another process listens there (another \
                 apilb, or the proxy apilb replaces). Stop it first; for a handover that \
                 starts the new apilb before stopping the old one, start both with \
                 --reuse-port"
            )),
            Some(libc::EADDRNOTAVAIL) => {
                setting(format!("no interface of this host has that address ({e})"))
            }
            Some(libc::EACCES) => setting(format!(
                "permission denied ({e}): a port below 1024 needs CAP_NET_BIND_SERVICE"
            )),
            _ => anyhow::anyhow!("{flag} {addr}: cannot listen: {e}"),
        }
    })
}

/// The client listeners. Without `--listen` (flag or key), the sockets passed by a
/// supervisor (socket activation) are served as they are, whatever their addresses, and
/// the default address is bound only when none was passed. With `--listen`, a passed
/// socket that matches no listen address is an error: it would be held open unserved, its
/// clients waiting in its queue.
fn proxy_listeners(
    cfg: &Config,
    mut inherited: Vec<std::net::TcpListener>,
) -> anyhow::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
    let addr_of = |l: &std::net::TcpListener| {
        l.local_addr()
            .map_err(|e| anyhow::anyhow!("an inherited socket has no address: {e}"))
    };
    let mut out = Vec::new();
    if cfg.listen_given || inherited.is_empty() {
        for addr in &cfg.listen {
            out.push((
                *addr,
                bind("--listen", *addr, &mut inherited, cfg.reuse_port)?,
            ));
        }
        if let Some(l) = inherited.first() {
            let addr = addr_of(l)?;
            let listen: Vec<String> = cfg.listen.iter().map(ToString::to_string).collect();
            return Err(StartError(format!(
                "the supervisor passed a socket listening on {addr} (socket activation), \
                 which matches no --listen address ({}) nor --admin-listen {}: its clients \
                 would wait unserved. Add --listen {addr}, or remove it from the socket unit",
                listen.join(", "),
                cfg.admin_listen
            ))
            .into());
        }
        return Ok(out);
    }
    for l in inherited {
        let addr = addr_of(&l)?;
        if !addr.ip().is_loopback() && !cfg.allow_non_loopback {
            return Err(StartError(format!(
                "the supervisor passed a socket listening on {addr} (socket activation), not \
                 a loopback address: apilb would expose the apiserver path to the network. \
                 Listen on 127.0.0.1 or [::1] in the socket unit, or pass \
                 --allow-non-loopback if that is really meant"
            ))
            .into());
        }
        l.set_nonblocking(true)
            .with_context(|| format!("inherited socket on {addr}"))?;
        tracing::info!(%addr, "serving on an inherited socket (socket activation)");
        out.push((addr, l));
    }
    Ok(out)
}

/// Signal handlers installed before anything else `apilb run` does (see `main`): the default
/// action of SIGHUP, SIGTERM or SIGINT would end the process during start-up (a SIGTERM
/// between the admin endpoint's first answer and the main loop was a kill, not a drain).
pub struct EarlySignals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl EarlySignals {
    /// Must run inside the runtime. From here on a SIGHUP is kept until the main loop
    /// serves it as a reload.
    pub fn install() -> std::io::Result<EarlySignals> {
        Ok(EarlySignals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

pub async fn run(
    args: Settings,
    mut cfg: Config,
    file_bytes: Option<Vec<u8>>,
    early: EarlySignals,
) -> anyhow::Result<()> {
    cfg.max_connections = fit_nofile_limit(cfg.max_connections, cfg.max_connections_given);
    let tls = crate::control::tls::client_config(&cfg)?;
    let metrics = Arc::new(Metrics::build(cfg.discovery.is_some()));
    // Cancelled only at the very end: closes every connection still open after the drain.
    let hard_stop = CancellationToken::new();
    // Cancelled at SIGTERM: listeners stop accepting.
    let stop_accepting = CancellationToken::new();
    let backends = Arc::new(Backends::new(hard_stop.clone(), metrics.clone()));
    let health = Arc::new(HealthContext {
        tls,
        settings: cfg.health,
        tls_server_name: cfg.health_tls_server_name.clone(),
        set: backends.clone(),
    });

    // Before any thread starts: this unsets the LISTEN_* variables (sd_listen_fds(3)).
    let mut inherited = socket::inherited();
    let admin_listener = bind(
        "--admin-listen",
        cfg.admin_listen,
        &mut inherited,
        cfg.reuse_port,
    )?;
    let listeners = proxy_listeners(&cfg, inherited)?;
    let listen_addrs: Vec<SocketAddr> = listeners.iter().map(|(a, _)| *a).collect();
    let fleet = Arc::new(Fleet {
        backends: backends.clone(),
        health,
        resolve_interval: cfg.resolve_interval,
    });
    let discovery = cfg
        .discovery
        .clone()
        .map(|d| Arc::new(Discovery::new(d, cfg.servers.clone(), metrics.clone())));
    match &discovery {
        Some(d) => fleet.apply(&d.effective(), Removal::Close),
        None => fleet.apply(&seeds(&cfg), Removal::Close),
    };
    let discovery_stop = CancellationToken::new();
    if let (Some(d), Some(settings)) = (&discovery, &cfg.discovery) {
        let f = fleet.clone();
        let grace = settings.removal_grace;
        let apply: discovery::Apply = Arc::new(move |set: &[(ServerSpec, Source)]| {
            f.apply(set, Removal::Drain(grace));
        });
        tokio::spawn(
            d.clone()
                .run(backends.clone(), apply, discovery_stop.clone()),
        );
    }
    let proxy = Arc::new(Proxy::new(
        backends.clone(),
        metrics.clone(),
        RaceSettings {
            connect_timeout: cfg.connect_timeout,
            race_delay: cfg.connect_race_delay,
            first_byte_timeout: cfg.first_byte_timeout,
            replay_limit: cfg.replay_limit,
            client_hello_timeout: Some(cfg.client_hello_timeout).filter(|d| !d.is_zero()),
        },
        cfg.max_connections,
        crate::proxy::copy::Timeouts {
            half_closed: Some(cfg.half_closed_timeout).filter(|d| !d.is_zero()),
            idle: Some(cfg.idle_timeout).filter(|d| !d.is_zero()),
        },
    ));
    // Every worker accepts on every listener; connections live on the worker that took them.
    let workers = Workers::start(cfg.workers).context("cannot start the worker threads")?;
    let accept_loops = TaskTracker::new();
    for (addr, l) in &listeners {
        for (i, worker) in workers.handles().enumerate() {
            let copy = l
                .try_clone()
                .with_context(|| format!("--listen {addr}: cannot share the socket"))?;
            let (proxy, stop, addr) = (proxy.clone(), stop_accepting.clone(), *addr);
            accept_loops.spawn_on(
                async move {
                    // Registered with this worker's runtime: accepts land here.
                    match tokio::net::TcpListener::from_std(copy) {
                        Ok(l) => proxy.serve(l, stop).await,
                        Err(e) => {
                            tracing::error!(worker = i, %addr, error = %e, "worker cannot accept here");
                        }
                    }
                },
                worker,
            );
        }
    }
    drop(listeners);
    // Watched only when a regular file: a pipe (`--config <(…)`) is read once, at start.
    let watched = cfg
        .config_file
        .as_ref()
        .is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()));
    let reload_state = Arc::new(reload::State::default());
    reload_state.started(
        cfg.config_file.as_ref().map(|p| p.display().to_string()),
        watched,
        cfg.effective(),
    );
    metrics.config_loaded(None);
    let admin = Arc::new(Admin {
        backends: backends.clone(),
        metrics: metrics.clone(),
        proxy: proxy.clone(),
        discovery: discovery.clone(),
        started: SystemTime::now(),
        reload: reload_state.clone(),
        phase: std::sync::atomic::AtomicU8::new(Phase::Running as u8),
    });
    let admin_stop = CancellationToken::new();
    let admin_thread = admin
        .clone()
        .start(admin_listener, admin_stop.clone())
        .with_context(|| format!("--admin-listen {}: cannot serve", cfg.admin_listen))?;
    tracing::info!(
        listen = ?listen_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        servers = ?cfg.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        admin = %cfg.admin_listen,
        version = env!("CARGO_PKG_VERSION"),
        "apilb started"
    );
    tracing::info!(
        config = %serde_json::Value::Object(cfg.effective().into_iter().collect()),
        "settings in effect"
    );

    let ready = tokio::spawn(crate::notify::ready(backends.clone(), cfg.ready_timeout));

    let (mut sigterm, mut sigint) = (early.terminate, early.interrupt);
    let reloader = tokio::spawn(
        Reloader {
            args,
            fleet: fleet.clone(),
            discovery: discovery.clone(),
            state: reload_state,
            metrics: metrics.clone(),
            current: cfg.clone(),
        }
        .run(early.hangup, file_bytes, watched),
    );

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    reloader.abort();
    admin.set_phase(Phase::Draining);

    let open = proxy.connections();
    tracing::info!(signal = signal_name, open_connections = open,
        grace = %humantime::format_duration(cfg.drain_grace), "stopping: draining connections");
    ready.abort();
    crate::notify::stopping();
    stop_accepting.cancel();
    discovery_stop.cancel();
    // The workers see the cancellation on their own threads, and one may be accepting a
    // connection right now. Drain only once every accept loop has returned: a connection
    // taken after the drain had looked (and found nothing) was cut by the hard stop below,
    // a restart that reset a client. What is still in the kernel's queue then is left there,
    // for the next process when the socket is inherited.
    accept_loops.close();
    accept_loops.wait().await;
    let left = proxy.drain(cfg.drain_grace).await;
    admin.set_phase(Phase::Closing);
    if left > 0 {
        tracing::info!(
            closing = left,
            "drain grace over: closing the remaining connections"
        );
    }
    hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), proxy.tracker.wait()).await;
    admin_stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::task::spawn_blocking(move || admin_thread.join()),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves reloads until aborted: SIGHUP at once, a change of the file once it settled.
struct Reloader {
    args: Settings,
    fleet: Arc<Fleet>,
    discovery: Option<Arc<Discovery>>,
    state: Arc<reload::State>,
    metrics: Arc<Metrics>,
    /// The settings in effect: the start's, with the server list of the last reload.
    current: Config,
}

impl Reloader {
    async fn run(mut self, mut sighup: Signal, file_bytes: Option<Vec<u8>>, watched: bool) {
        let mut reader = self.args.config.clone().map(reload::Reader::new);
        let mut settle = reload::Settle::new(Ok(file_bytes.unwrap_or_default()));
        let mut poll = tokio::time::interval(reload::POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sighup.recv() => {
                    let read = match reader.as_mut() {
                        Some(r) => r.read().await,
                        None => Ok(Vec::new()),
                    };
                    settle.acted_on(read.clone());
                    self.apply(read, "SIGHUP");
                }
                _ = poll.tick(), if watched => {
                    let Some(r) = reader.as_mut() else { continue };
                    let read = r.read().await;
                    let settled = settle.observe(read, std::time::Instant::now());
                    if let Some(read) = settled {
                        self.apply(read, "config file changed");
                    }
                }
            }
            self.state.set_pending(settle.pending_since());
        }
    }

    fn apply(&mut self, read: reload::Outcome, cause: &str) {
        let loaded = read.and_then(|bytes| match &self.args.config {
            Some(_) => config::load_bytes(&self.args, &bytes).map_err(|e| e.to_string()),
            None => config::load(&self.args).map_err(|e| e.to_string()),
        });
        let cfg = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cause, error = %e, "reload failed; keeping the current settings");
                self.metrics
                    .config_loaded(Some(crate::metrics::ReloadResult::failed));
                self.state.failed(cause, e);
                return;
            }
        };
        let mut cfg = cfg;
        if !cfg.max_connections_given && !self.current.max_connections_given {
            // The default, sized to the open-file limit at start (`fit_nofile_limit`).
            cfg.max_connections = self.current.max_connections;
        }
        let restart_needed = self.current.restart_needed(&cfg);
        let set = match &self.discovery {
            Some(d) => d.set_seeds(cfg.servers.clone()),
            None => seeds(&cfg),
        };
        let (added, removed) = self.fleet.apply(&set, Removal::Close);
        self.current.servers = cfg.servers.clone();
        tracing::info!(
            cause,
            added,
            removed,
            servers = ?set.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>(),
            pinned_by_flags = cfg.servers_from_flags,
            "reloaded the server list"
        );
        if !restart_needed.is_empty() {
            tracing::warn!(
                cause,
                keys = ?restart_needed,
                "changed settings not applied by a reload; they take effect at the next start"
            );
        }
        self.metrics
            .config_loaded(Some(crate::metrics::ReloadResult::ok));
        self.state
            .succeeded(cause, restart_needed, self.current.effective());
    }
}
