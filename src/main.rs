//! apilb: a node-local load balancer for the Kubernetes API server.
//!
//! CLI entry: parse, dispatch, and map errors to exit codes (anyhow at this edge only).
//! Exit codes: 0 success; 1 runtime failure (or, for `status`, no server ready);
//! 2 bad configuration or input (for `run`, also a listen address in use or not on this host).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use apilb::cli::{self, Cli, Command, KubeadmCommand};
use apilb::config::{self, LogFormat};
use apilb::node::kubeconfig::{self, cmd as kubeconfig_cmd};
use apilb::node::{kubeadm, kubespray, manifest};
use apilb::{admin, control::tls, logging, run};

/// The `--log-level` filter. A bare level applies to apilb; libraries stay at warn (their
/// debug output is a protocol trace). A full filter (`apilb=debug,h2=trace`) is used as given.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let directives = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,apilb={level}")
    };
    tracing_subscriber::EnvFilter::try_new(directives)
        .map_err(|e| format!("--log-level {level}: {e}; write one of error, warn, info, debug"))
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = log_filter(level)?;
    // A line stderr cannot take is dropped and counted (`logging`), never an error: with
    // internal errors on, tracing-subscriber would report a failed write with `eprintln!`,
    // which panics when stderr fails.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_writer(logging::Stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.event_format(logging::JsonLines).try_init(),
    }
    .map_err(|e| format!("cannot set up logging: {e}"))
}

/// `apilb: error: …` on stderr. A failing stderr (reader gone, disk full) is ignored:
/// `eprintln!` would panic, and under `panic = "abort"` turn the exit code into SIGABRT.
fn print_error(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "apilb: error: {msg}");
}

/// The main thread's runtime. For `apilb run` it carries the control plane only (health,
/// discovery, signals); client connections live on `workers`.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A panic ends the process whatever the build profile says: a release build has
/// panic = "abort", and the test build (profile ci, which must unwind for the test harness)
/// behaves the same, so the tests see what a node would. apilb half-working after a panic
/// (a worker's accept loop or a health checker gone, the rest running) is worse than a
/// dead apilb that its supervisor restarts.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            // The runtime and the SIGHUP handler come first: SIGHUP's default action ends the
            // process, and a reload asked for while apilb starts (systemd's ExecReload, a
            // config-management run) must not take the node's path to the API server down.
            // A SIGHUP from here on is kept, and served as a reload once apilb runs.
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    print_error(format_args!("cannot start the runtime: {e}"));
                    return ExitCode::from(1);
                }
            };
            let early = match rt.block_on(async { run::EarlySignals::install() }) {
                Ok(s) => s,
                Err(e) => {
                    print_error(format_args!("cannot handle SIGHUP: {e}"));
                    return ExitCode::from(1);
                }
            };
            let (cfg, file_bytes) = match config::load_with_text(&args) {
                Ok(c) => c,
                Err(e) => {
                    print_error(e);
                    return ExitCode::from(2);
                }
            };
            if args.check {
                return check(&cfg);
            }
            if let Err(e) = init_logging(cfg.log_format, &cfg.log_level) {
                print_error(e);
                return ExitCode::from(2);
            }
            // From here on no thread but the log writer's ever waits on stderr.
            logging::write_from_a_thread();
            let result = rt.block_on(run::run(*args, cfg, file_bytes, early));
            // A config read still stuck in a hung file system (a reload gave up on it) must
            // not hold the exit: dropping the runtime would wait for it.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            // The last lines out before the exit (and before the error below), unless
            // stderr is stalled.
            logging::flush(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Printed once: the log goes to stderr too.
                    print_error(format_args!("{e:#}"));
                    if e.downcast_ref::<tls::TlsError>().is_some()
                        || e.downcast_ref::<run::StartError>().is_some()
                    {
                        ExitCode::from(2)
                    } else {
                        ExitCode::from(1)
                    }
                }
            }
        }
        Command::Status(args) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    print_error(e);
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(admin::client::fetch(&args.admin_url)) {
                Ok(s) => {
                    let text = if args.json {
                        serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
                    } else {
                        admin::client::render(&s)
                    };
                    // A closed pipe (`apilb status | head`) is not an error worth a panic.
                    let _ = Write::write_all(&mut std::io::stdout(), text.as_bytes());
                    if s.ready {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    print_error(format_args!("{e:#}"));
                    ExitCode::from(1)
                }
            }
        }
        Command::Kubeconfig(cmd) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    print_error(e);
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(kubeconfig_cmd::run(cmd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => kubeconfig_error(e),
            }
        }
        Command::Manifest(args) => manifest_command(&args),
        Command::Kubeadm(KubeadmCommand::PostJoin(args)) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    print_error(e);
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(kubeadm::post_join(&args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => kubeconfig_error(e),
            }
        }
    }
}

/// `apilb run --check`: what a start checks before it binds anything (the config, the log
/// settings, the CA and client certificate), with the same messages; then the settings in
/// effect on stdout, as config-file keys.
fn check(cfg: &config::Config) -> ExitCode {
    if let Err(e) = log_filter(&cfg.log_level) {
        print_error(e);
        return ExitCode::from(2);
    }
    if let Err(e) = tls::client_config(cfg) {
        print_error(e);
        return ExitCode::from(2);
    }
    let mut out = String::from("# apilb run --check: OK. The settings in effect:\n");
    for (k, v) in cfg.effective() {
        out.push_str(&format!("{k}: {v}\n"));
    }
    match std::io::stdout().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(format_args!("cannot write to stdout: {e}"));
            ExitCode::from(1)
        }
    }
}

/// Bad kubeconfig input is exit code 2; anything else (apilb not ready, I/O) is 1.
fn kubeconfig_error(e: anyhow::Error) -> ExitCode {
    print_error(format_args!("{e:#}"));
    if e.downcast_ref::<kubeconfig::KubeconfigError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn manifest_command(args: &cli::ManifestArgs) -> ExitCode {
    let defaults = (
        std::path::Path::new(kubespray::DEFAULT_NGINX_CONF),
        std::path::Path::new(kubespray::DEFAULT_HAPROXY_CFG),
    );
    let plan = match manifest::plan(args, defaults) {
        Ok(p) => p,
        Err(e) => {
            print_error(e);
            return ExitCode::from(2);
        }
    };
    for w in &plan.warnings {
        let _ = writeln!(std::io::stderr(), "apilb: warning: {w}");
    }
    let mut command = vec!["apilb".to_string()];
    command.extend(std::env::args().skip(1));
    let command = manifest::shell_line(&command);
    let text = manifest::render(&plan, args, &command);
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(format_args!("cannot write the manifest: {e}"));
            ExitCode::from(1)
        }
    }
}
