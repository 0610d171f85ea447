//! `apilb run`: wires the pieces together and owns the process lifecycle — start, reload of
//! the server list (SIGHUP or a change of the config file), and shutdown (SIGTERM/SIGINT:
//! stop accepting, drain for the grace period, then close what is left).
//!
//! Decides nothing about traffic or health itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::backend::{Backend, Backends};
use crate::cli::RunArgs;
use crate::config::{self, Config};
use crate::connect::RaceSettings;
use crate::health::{self, HealthContext};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::socket;

/// How often the config file is looked at for changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);

fn start_server_tasks(b: &Arc<Backend>, health: &Arc<HealthContext>, resolve_every: Duration) {
    tokio::spawn(health::run(b.clone(), health.clone()));
    if b.needs_resolution() {
        let b = b.clone();
        tokio::spawn(async move {
            let retired = b.retired().clone();
            loop {
                tokio::select! {
                    () = retired.cancelled() => return,
                    () = tokio::time::sleep(resolve_every) => {}
                }
                if let Err(e) = b.resolve().await {
                    tracing::warn!(server = %b.name, error = %e,
                        "re-resolution failed; keeping the last addresses");
                }
            }
        });
    }
}

fn apply_servers(backends: &Backends, cfg: &Config, health: &Arc<HealthContext>) -> (usize, usize) {
    let change = backends.replace(&cfg.servers);
    for b in &change.added {
        start_server_tasks(b, health, cfg.resolve_interval);
    }
    (change.added.len(), change.removed.len())
}

pub async fn run(args: RunArgs, cfg: Config) -> anyhow::Result<()> {
    let tls = crate::tls::client_config(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    // Cancelled only at the very end: closes every connection still open after the drain.
    let hard_stop = CancellationToken::new();
    // Cancelled at SIGTERM: listeners stop accepting.
    let stop_accepting = CancellationToken::new();
    let backends = Arc::new(Backends::new(hard_stop.clone(), metrics.clone()));
    let health = Arc::new(HealthContext {
        tls,
        settings: cfg.health,
        tls_server_name: cfg.health_tls_server_name.clone(),
    });

    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        let l = socket::listen(*addr).with_context(|| {
            format!("--listen {addr}: cannot listen (is another proxy already on this port?)")
        })?;
        listeners.push(l);
    }
    let admin_listener = socket::listen(cfg.admin_listen).with_context(|| {
        format!(
            "--admin-listen {}: cannot listen (choose another port)",
            cfg.admin_listen
        )
    })?;

    apply_servers(&backends, &cfg, &health);
    let proxy = Arc::new(Proxy::new(
        backends.clone(),
        metrics.clone(),
        RaceSettings {
            connect_timeout: cfg.connect_timeout,
            race_delay: cfg.connect_race_delay,
            first_byte_timeout: cfg.first_byte_timeout,
            replay_limit: cfg.replay_limit,
        },
        cfg.max_connections,
    ));
    for l in listeners {
        tokio::spawn(proxy.clone().serve(l, stop_accepting.clone()));
    }
    let admin = Arc::new(Admin {
        backends: backends.clone(),
        metrics: metrics.clone(),
        proxy: proxy.clone(),
        started: SystemTime::now(),
    });
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin.serve(admin_listener, admin_stop.clone()));
    tracing::info!(
        listen = ?cfg.listen,
        servers = ?cfg.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        admin = %cfg.admin_listen,
        version = env!("CARGO_PKG_VERSION"),
        "apilb started"
    );

    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut last_file = match &cfg.config_file {
        Some(p) => tokio::fs::read(p).await.ok(),
        None => None,
    };
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let signal_name = loop {
        let reload_cause = tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => "SIGHUP",
            _ = poll.tick(), if cfg.config_file.is_some() => {
                let Some(p) = &cfg.config_file else { continue };
                let now = tokio::fs::read(p).await.ok();
                if now == last_file {
                    continue;
                }
                last_file = now;
                "config file changed"
            }
        };
        reload(&args, &backends, &health, reload_cause);
    };

    let open = proxy.connections();
    tracing::info!(signal = signal_name, open_connections = open,
        grace = %humantime::format_duration(cfg.drain_grace), "stopping: draining connections");
    stop_accepting.cancel();
    let left = proxy.drain(cfg.drain_grace).await;
    if left > 0 {
        tracing::info!(
            closing = left,
            "drain grace over: closing the remaining connections"
        );
    }
    hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), proxy.tracker.wait()).await;
    admin_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

fn reload(args: &RunArgs, backends: &Backends, health: &Arc<HealthContext>, cause: &str) {
    let cfg = match config::load(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(cause, error = %e, "reload failed; keeping the current servers");
            return;
        }
    };
    let (added, removed) = apply_servers(backends, &cfg, health);
    tracing::info!(
        cause,
        added,
        removed,
        servers = ?cfg.servers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        pinned_by_flags = cfg.servers_from_flags,
        "reloaded the server list (other settings take effect on restart)"
    );
}
