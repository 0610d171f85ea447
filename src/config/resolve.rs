//! The merge: flags over the config file, then the defaults, each value checked as it is
//! taken, into the [`Config`] `apilb run` works from.
//!
//! [`resolve`] reads as the list of concerns, one function each (listen addresses, servers,
//! the admin address, the health checks' TLS, health timing, limits, connection timeouts,
//! discovery), in the order their errors are reported. A flag and its key share one field
//! name in `RunArgs` and `FileConfig`, so `pick!` and `dur!` take a setting by that name.
//!
//! It must not read files (the caller passes the parsed [`FileConfig`]) nor print: every
//! failure is a [`ConfigError`] naming the flag or the file and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{duration, flag_or_key, parse_listen};
use super::RunArgs;
use super::{
    defaults as d, Config, ConfigError, DiscoverySettings, FileConfig, HealthSettings, LogFormat,
    ServerSpec, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
};
use crate::server::DiscoveryMode;

/// The inputs of one merge: the flags, the file as written, and the file's path (if any)
/// to name it in errors.
struct Merge<'a> {
    args: &'a RunArgs,
    file: &'a FileConfig,
    fp: Option<&'a Path>,
}

/// The flag's value, else the key's (`None` if neither is given).
macro_rules! pick {
    ($m:expr, $field:ident) => {
        $m.args.$field.as_ref().or($m.file.$field.as_ref()).cloned()
    };
}

/// A duration setting: the flag's, else the key's parsed, else `$default`; checked.
macro_rules! dur {
    ($m:expr, $field:ident, $key:literal, $default:expr) => {
        duration(
            $m.args.$field,
            $m.file.$field.as_ref(),
            $m.fp,
            $key,
            $default,
        )?
    };
}

/// Merges flags over the file config, applies defaults and validates.
pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
    let m = Merge {
        args,
        file: &file,
        fp: args.config.as_deref(),
    };
    let allow_non_loopback = args.allow_non_loopback || file.allow_non_loopback.unwrap_or(false);
    let listen = listen(&m, allow_non_loopback)?;
    let (servers, servers_from_flags) = servers(&m)?;
    let admin_listen = admin_listen(&m, allow_non_loopback)?;
    let tls = health_tls(&m)?;
    let log_format = pick!(m, log_format).unwrap_or(LogFormat::Text);
    let log_level = pick!(m, log_level).unwrap_or_else(|| "info".to_string());
    let health = health(&m)?;
    let (max_connections, workers) = limits(&m)?;
    let timeouts = timeouts(&m)?;

    Ok(Config {
        listen,
        listen_given: !args.listen.is_empty() || file.listen.is_some(),
        allow_non_loopback,
        servers,
        ca_file: tls.ca_file,
        health_client_cert: tls.cert,
        health_client_key: tls.key,
        health_insecure_skip_verify: tls.skip_verify,
        health_tls_server_name: pick!(m, health_tls_server_name),
        admin_listen,
        reuse_port: args.reuse_port || file.reuse_port.unwrap_or(false),
        log_format,
        log_level,
        connect_timeout: timeouts.connect,
        connect_race_delay: timeouts.connect_race_delay,
        first_byte_timeout: timeouts.first_byte,
        client_hello_timeout: timeouts.client_hello,
        replay_limit: pick!(m, replay_limit).unwrap_or(d::REPLAY_LIMIT),
        health,
        max_connections,
        max_connections_given: args.max_connections.is_some() || file.max_connections.is_some(),
        workers,
        drain_grace: timeouts.drain_grace,
        half_closed_timeout: timeouts.half_closed,
        idle_timeout: timeouts.idle,
        ready_timeout: timeouts.ready,
        resolve_interval: timeouts.resolve_interval,
        discovery: discovery(&m)?,
        config_file: args.config.clone(),
        servers_from_flags,
    })
}

/// The listen addresses: the flags', else the key's, else [`DEFAULT_LISTEN`].
fn listen(m: &Merge, allow_non_loopback: bool) -> Result<Vec<SocketAddr>, ConfigError> {
    let (listen_vals, listen_flag) = if !m.args.listen.is_empty() {
        (m.args.listen.clone(), true)
    } else if let Some(l) = m.file.listen.clone() {
        (l, false)
    } else {
        (vec![DEFAULT_LISTEN.to_string()], true)
    };
    let listen_origin = flag_or_key(m.fp, listen_flag, "listen");
    let listen = parse_listen(&listen_vals, &listen_origin, allow_non_loopback)?;
    if listen.is_empty() {
        return Err(ConfigError {
            origin: listen_origin,
            message: "no listen address; write e.g. 127.0.0.1:6443".into(),
        });
    }
    Ok(listen)
}

/// The control planes, each once, and whether `--server` flags gave them.
fn servers(m: &Merge) -> Result<(Vec<ServerSpec>, bool), ConfigError> {
    let servers_from_flags = !m.args.server.is_empty();
    let server_vals = if servers_from_flags {
        m.args.server.clone()
    } else {
        m.file.server.clone().unwrap_or_default()
    };
    let server_origin = flag_or_key(m.fp, servers_from_flags, "server");
    let mut servers = Vec::new();
    for v in &server_vals {
        let spec = ServerSpec::parse(v).map_err(|message| ConfigError {
            origin: server_origin.clone(),
            message,
        })?;
        if servers.contains(&spec) {
            return Err(ConfigError {
                origin: server_origin.clone(),
                message: format!("`{spec}` is listed twice; list each control plane once"),
            });
        }
        servers.push(spec);
    }
    if servers.is_empty() {
        return Err(ConfigError {
            origin: server_origin,
            message: "no servers: give each control plane as --server HOST:PORT (repeatable), \
                      or list them under `server:` in the config file"
                .into(),
        });
    }
    Ok((servers, servers_from_flags))
}

/// The admin endpoint's address, loopback unless allowed otherwise.
fn admin_listen(m: &Merge, allow_non_loopback: bool) -> Result<SocketAddr, ConfigError> {
    let admin_given = m.args.admin_listen.is_some();
    let admin_val = pick!(m, admin_listen).unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    let admin_origin = flag_or_key(
        m.fp,
        admin_given || m.file.admin_listen.is_none(),
        "admin-listen",
    );
    Ok(parse_listen(&[admin_val], &admin_origin, allow_non_loopback)?[0])
}

/// How the health checks verify the servers and present themselves.
struct HealthTls {
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    skip_verify: bool,
}

/// The health checks' TLS: a CA unless verification is skipped, a client certificate and
/// key both or neither.
fn health_tls(m: &Merge) -> Result<HealthTls, ConfigError> {
    let skip_verify =
        m.args.health_insecure_skip_verify || m.file.health_insecure_skip_verify.unwrap_or(false);
    let ca_file = pick!(m, ca_file);
    if ca_file.is_none() && !skip_verify {
        return Err(ConfigError {
            origin: flag_or_key(m.fp, true, "ca-file"),
            message: "health checks verify each apiserver's certificate: give the cluster CA \
                      (e.g. --ca-file /etc/kubernetes/pki/ca.crt), or pass \
                      --health-insecure-skip-verify to skip verification"
                .into(),
        });
    }
    let cert = pick!(m, health_client_cert);
    let key = pick!(m, health_client_key);
    if cert.is_some() != key.is_some() {
        let missing = if cert.is_none() {
            "health-client-cert"
        } else {
            "health-client-key"
        };
        return Err(ConfigError {
            origin: flag_or_key(m.fp, true, missing),
            message: "a client certificate needs both --health-client-cert and \
                      --health-client-key"
                .into(),
        });
    }
    Ok(HealthTls {
        ca_file,
        cert,
        key,
        skip_verify,
    })
}

/// The health checks' timing: fall and rise at least 1, every interval at least 10ms.
fn health(m: &Merge) -> Result<HealthSettings, ConfigError> {
    let health = HealthSettings {
        ping_interval: dur!(
            m,
            health_ping_interval,
            "health-ping-interval",
            d::PING_INTERVAL
        ),
        ping_timeout: dur!(
            m,
            health_ping_timeout,
            "health-ping-timeout",
            d::PING_TIMEOUT
        ),
        readyz_interval: dur!(
            m,
            health_readyz_interval,
            "health-readyz-interval",
            d::READYZ_INTERVAL
        ),
        timeout: dur!(m, health_timeout, "health-timeout", d::HEALTH_TIMEOUT),
        fall: pick!(m, health_fall).unwrap_or(d::FALL),
        rise: pick!(m, health_rise).unwrap_or(d::RISE),
    };
    for (v, key) in [(health.fall, "health-fall"), (health.rise, "health-rise")] {
        if v == 0 {
            return Err(ConfigError {
                origin: flag_or_key(m.fp, true, key),
                message: "must be at least 1".into(),
            });
        }
    }
    for (v, key) in [
        (health.ping_interval, "health-ping-interval"),
        (health.ping_timeout, "health-ping-timeout"),
        (health.readyz_interval, "health-readyz-interval"),
        (health.timeout, "health-timeout"),
    ] {
        if v < Duration::from_millis(10) {
            return Err(ConfigError {
                origin: flag_or_key(m.fp, true, key),
                message: format!("{v:?} is too short; use at least 10ms"),
            });
        }
    }
    Ok(health)
}

/// `(max_connections, workers)`: at least one connection, 1 to 64 workers.
fn limits(m: &Merge) -> Result<(usize, usize), ConfigError> {
    let max_connections = pick!(m, max_connections).unwrap_or(d::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError {
            origin: flag_or_key(m.fp, m.args.max_connections.is_some(), "max-connections"),
            message: "must be at least 1".into(),
        });
    }
    let workers = pick!(m, workers).unwrap_or(d::WORKERS);
    if !(1..=64).contains(&workers) {
        return Err(ConfigError {
            origin: flag_or_key(m.fp, m.args.workers.is_some(), "workers"),
            message: format!("{workers} is out of range; use 1 to 64 (one per core is plenty)"),
        });
    }
    Ok((max_connections, workers))
}

/// The connection and process timeouts.
struct Timeouts {
    connect: Duration,
    connect_race_delay: Duration,
    first_byte: Duration,
    client_hello: Duration,
    drain_grace: Duration,
    half_closed: Duration,
    idle: Duration,
    ready: Duration,
    resolve_interval: Duration,
}

/// The connection and process timeouts; a connect timeout of 0 is refused.
fn timeouts(m: &Merge) -> Result<Timeouts, ConfigError> {
    let connect = dur!(m, connect_timeout, "connect-timeout", d::CONNECT_TIMEOUT);
    if connect.is_zero() {
        return Err(ConfigError {
            origin: flag_or_key(m.fp, true, "connect-timeout"),
            message: "must be more than 0".into(),
        });
    }
    Ok(Timeouts {
        connect,
        connect_race_delay: dur!(
            m,
            connect_race_delay,
            "connect-race-delay",
            d::CONNECT_RACE_DELAY
        ),
        first_byte: dur!(
            m,
            first_byte_timeout,
            "first-byte-timeout",
            d::FIRST_BYTE_TIMEOUT
        ),
        client_hello: dur!(
            m,
            client_hello_timeout,
            "client-hello-timeout",
            d::CLIENT_HELLO_TIMEOUT
        ),
        drain_grace: dur!(m, drain_grace, "drain-grace", d::DRAIN_GRACE),
        half_closed: dur!(
            m,
            half_closed_timeout,
            "half-closed-timeout",
            d::HALF_CLOSED_TIMEOUT
        ),
        idle: dur!(m, idle_timeout, "idle-timeout", d::IDLE_TIMEOUT),
        ready: dur!(m, ready_timeout, "ready-timeout", d::READY_TIMEOUT),
        resolve_interval: dur!(m, resolve_interval, "resolve-interval", d::RESOLVE_INTERVAL),
    })
}

/// Discovery, when a kubeconfig is given (flag or key); its other settings are read only then.
fn discovery(m: &Merge) -> Result<Option<DiscoverySettings>, ConfigError> {
    let Some(kubeconfig) = pick!(m, discovery_kubeconfig) else {
        return Ok(None);
    };
    Ok(Some(DiscoverySettings {
        kubeconfig,
        interval: dur!(
            m,
            discovery_interval,
            "discovery-interval",
            d::DISCOVERY_INTERVAL
        ),
        mode: pick!(m, discovery_mode).unwrap_or(DiscoveryMode::Seed),
        state_dir: pick!(m, state_dir).unwrap_or_else(|| PathBuf::from(d::STATE_DIR)),
        removal_grace: dur!(
            m,
            discovery_removal_grace,
            "discovery-removal-grace",
            d::DISCOVERY_REMOVAL_GRACE
        ),
    }))
}
