//! The validation: flags merged over the config file ([`Settings`], field by field), then
//! the defaults, each value checked as it is taken, into the [`Config`] `apilb run` works
//! from.
//!
//! [`resolve`] reads as the list of concerns, in the order their errors are reported: the
//! listen addresses, servers, the admin address, the health checks' TLS, health timing,
//! limits, the timeouts (one line each), discovery; a concern with more than a default gets
//! a function. An error names the flag when the flag gave the value, else the file and key.
//!
//! It must not read files (the caller passes the parsed file) nor print: every failure is a
//! [`ConfigError`] naming the flag or the file and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use merge::Merge as _;

use super::check::{duration, flag_or_key, parse_listen};
use super::{
    defaults as d, Config, ConfigError, DiscoverySettings, DurationArg, HealthSettings, LogFormat,
    ServerSpec, Settings, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
};
use crate::server::DiscoveryMode;

/// One merge: the settings in effect (flags over the file), the flags alone (to tell which
/// values a flag gave), and the file's path (if any) to name it in errors.
struct Merge<'a> {
    set: Settings,
    flags: &'a Settings,
    fp: Option<&'a Path>,
}

impl Merge<'_> {
    /// Where a value came from, for an error: `--key`, or the file and key.
    fn origin(&self, from_flag: bool, key: &str) -> String {
        flag_or_key(self.fp, from_flag, key)
    }

    /// A duration setting, checked; `default` when neither the flag nor the key gives it.
    fn duration(
        &self,
        given: &Option<DurationArg>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        duration(given.as_ref(), self.fp, key, default)
    }
}

/// Merges the flags over the file, applies the defaults and validates.
pub fn resolve(flags: &Settings, file: Settings) -> Result<Config, ConfigError> {
    let mut set = flags.clone();
    set.merge(file);
    let m = Merge {
        set,
        flags,
        fp: flags.config.as_deref(),
    };
    let s = &m.set;
    let listen = listen(&m)?;
    let (servers, servers_from_flags) = servers(&m)?;
    let admin_listen = admin_listen(&m)?;
    health_tls(&m)?;
    let health = health(&m)?;
    let (max_connections, workers) = limits(&m)?;

    Ok(Config {
        listen,
        listen_given: s.listen.is_some(),
        allow_non_loopback: s.allow_non_loopback,
        servers,
        ca_file: s.ca_file.clone(),
        health_client_cert: s.health_client_cert.clone(),
        health_client_key: s.health_client_key.clone(),
        health_insecure_skip_verify: s.health_insecure_skip_verify,
        health_tls_server_name: s.health_tls_server_name.clone(),
        admin_listen,
        reuse_port: s.reuse_port,
        log_format: s.log_format.unwrap_or(LogFormat::Text),
        log_level: s.log_level.clone().unwrap_or_else(|| "info".to_string()),
        connect_timeout: connect_timeout(&m)?,
        connect_race_delay: m.duration(
            &s.connect_race_delay,
            "connect-race-delay",
            d::CONNECT_RACE_DELAY,
        )?,
        first_byte_timeout: m.duration(
            &s.first_byte_timeout,
            "first-byte-timeout",
            d::FIRST_BYTE_TIMEOUT,
        )?,
        client_hello_timeout: m.duration(
            &s.client_hello_timeout,
            "client-hello-timeout",
            d::CLIENT_HELLO_TIMEOUT,
        )?,
        replay_limit: s.replay_limit.unwrap_or(d::REPLAY_LIMIT),
        health,
        max_connections,
        max_connections_given: s.max_connections.is_some(),
        workers,
        drain_grace: m.duration(&s.drain_grace, "drain-grace", d::DRAIN_GRACE)?,
        half_closed_timeout: m.duration(
            &s.half_closed_timeout,
            "half-closed-timeout",
            d::HALF_CLOSED_TIMEOUT,
        )?,
        idle_timeout: m.duration(&s.idle_timeout, "idle-timeout", d::IDLE_TIMEOUT)?,
        ready_timeout: m.duration(&s.ready_timeout, "ready-timeout", d::READY_TIMEOUT)?,
        resolve_interval: m.duration(
            &s.resolve_interval,
            "resolve-interval",
            d::RESOLVE_INTERVAL,
        )?,
        discovery: discovery(&m)?,
        config_file: flags.config.clone(),
        servers_from_flags,
    })
}

/// The listen addresses: the flags', else the key's, else [`DEFAULT_LISTEN`].
fn listen(m: &Merge) -> Result<Vec<SocketAddr>, ConfigError> {
    let given = m.set.listen.clone();
    let origin = m.origin(m.flags.listen.is_some() || given.is_none(), "listen");
    let values = given.unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    let listen = parse_listen(&values, &origin, m.set.allow_non_loopback)?;
    if listen.is_empty() {
        return Err(ConfigError {
            origin,
            message: "no listen address; write e.g. 127.0.0.1:6443".into(),
        });
    }
    Ok(listen)
}

/// The control planes, each once, and whether `--server` flags gave them.
fn servers(m: &Merge) -> Result<(Vec<ServerSpec>, bool), ConfigError> {
    let from_flags = m.flags.server.is_some();
    let origin = m.origin(from_flags, "server");
    let mut servers = Vec::new();
    for v in m.set.server.iter().flatten() {
        let spec = ServerSpec::parse(v).map_err(|message| ConfigError {
            origin: origin.clone(),
            message,
        })?;
        if servers.contains(&spec) {
            return Err(ConfigError {
                origin: origin.clone(),
                message: format!("`{spec}` is listed twice; list each control plane once"),
            });
        }
        servers.push(spec);
    }
    if servers.is_empty() {
        return Err(ConfigError {
            origin,
            message: "no servers: give each control plane as --server HOST:PORT (repeatable), \
                      or list them under `server:` in the config file"
                .into(),
        });
    }
    Ok((servers, from_flags))
}

/// The admin endpoint's address, loopback unless allowed otherwise.
fn admin_listen(m: &Merge) -> Result<SocketAddr, ConfigError> {
    let given = m.set.admin_listen.clone();
    let origin = m.origin(
        m.flags.admin_listen.is_some() || given.is_none(),
        "admin-listen",
    );
    let value = given.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    Ok(parse_listen(&[value], &origin, m.set.allow_non_loopback)?[0])
}

/// The health checks' TLS: a CA unless verification is skipped, a client certificate and
/// key both or neither.
fn health_tls(m: &Merge) -> Result<(), ConfigError> {
    let s = &m.set;
    if s.ca_file.is_none() && !s.health_insecure_skip_verify {
        return Err(ConfigError {
            origin: m.origin(true, "ca-file"),
            message: "health checks verify each apiserver's certificate: give the cluster CA \
                      (e.g. --ca-file /etc/kubernetes/pki/ca.crt), or pass \
                      --health-insecure-skip-verify to skip verification"
                .into(),
        });
    }
    if s.health_client_cert.is_some() != s.health_client_key.is_some() {
        let missing = if s.health_client_cert.is_none() {
            "health-client-cert"
        } else {
            "health-client-key"
        };
        return Err(ConfigError {
            origin: m.origin(true, missing),
            message: "a client certificate needs both --health-client-cert and \
                      --health-client-key"
                .into(),
        });
    }
    Ok(())
}

/// The health checks' timing: fall and rise at least 1, every interval at least 10ms.
fn health(m: &Merge) -> Result<HealthSettings, ConfigError> {
    let s = &m.set;
    let health = HealthSettings {
        ping_interval: m.duration(
            &s.health_ping_interval,
            "health-ping-interval",
            d::PING_INTERVAL,
        )?,
        ping_timeout: m.duration(
            &s.health_ping_timeout,
            "health-ping-timeout",
            d::PING_TIMEOUT,
        )?,
        readyz_interval: m.duration(
            &s.health_readyz_interval,
            "health-readyz-interval",
            d::READYZ_INTERVAL,
        )?,
        timeout: m.duration(&s.health_timeout, "health-timeout", d::HEALTH_TIMEOUT)?,
        fall: s.health_fall.unwrap_or(d::FALL),
        rise: s.health_rise.unwrap_or(d::RISE),
    };
    for (v, key) in [(health.fall, "health-fall"), (health.rise, "health-rise")] {
        if v == 0 {
            return Err(ConfigError {
                origin: m.origin(true, key),
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
                origin: m.origin(true, key),
                message: format!("{v:?} is too short; use at least 10ms"),
            });
        }
    }
    Ok(health)
}

/// `(max_connections, workers)`: at least one connection, 1 to 64 workers.
fn limits(m: &Merge) -> Result<(usize, usize), ConfigError> {
    let max_connections = m.set.max_connections.unwrap_or(d::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError {
            origin: m.origin(m.flags.max_connections.is_some(), "max-connections"),
            message: "must be at least 1".into(),
        });
    }
    let workers = m.set.workers.unwrap_or(d::WORKERS);
    if !(1..=64).contains(&workers) {
        return Err(ConfigError {
            origin: m.origin(m.flags.workers.is_some(), "workers"),
            message: format!("{workers} is out of range; use 1 to 64 (one per core is plenty)"),
        });
    }
    Ok((max_connections, workers))
}

/// The connect timeout: more than 0.
fn connect_timeout(m: &Merge) -> Result<Duration, ConfigError> {
    let connect = m.duration(
        &m.set.connect_timeout,
        "connect-timeout",
        d::CONNECT_TIMEOUT,
    )?;
    if connect.is_zero() {
        return Err(ConfigError {
            origin: m.origin(true, "connect-timeout"),
            message: "must be more than 0".into(),
        });
    }
    Ok(connect)
}

/// Discovery, when a kubeconfig is given (flag or key); its other settings are read only then.
fn discovery(m: &Merge) -> Result<Option<DiscoverySettings>, ConfigError> {
    let s = &m.set;
    let Some(kubeconfig) = s.discovery_kubeconfig.clone() else {
        return Ok(None);
    };
    Ok(Some(DiscoverySettings {
        kubeconfig,
        interval: m.duration(
            &s.discovery_interval,
            "discovery-interval",
            d::DISCOVERY_INTERVAL,
        )?,
        mode: s.discovery_mode.unwrap_or(DiscoveryMode::Seed),
        state_dir: s
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(d::STATE_DIR)),
        removal_grace: m.duration(
            &s.discovery_removal_grace,
            "discovery-removal-grace",
            d::DISCOVERY_REMOVAL_GRACE,
        )?,
    }))
}
