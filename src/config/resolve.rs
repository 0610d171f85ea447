//! The merge: flags over the config file, then the defaults, each value checked as it is
//! taken, into the [`Config`] `apilb run` works from.
//!
//! It must not read files (the caller passes the parsed [`FileConfig`]) nor print: every
//! failure is a [`ConfigError`] naming the flag or the file and key.

use std::path::PathBuf;
use std::time::Duration;

use super::check::{duration, flag_or_key, parse_listen};
use super::{
    defaults, Config, ConfigError, DiscoverySettings, FileConfig, HealthSettings, LogFormat,
    ServerSpec, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
};
use crate::cli::RunArgs;
use crate::server::DiscoveryMode;

/// Merges flags over the file config, applies defaults and validates.
pub fn resolve(args: &RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
    let fp = args.config.as_deref();
    let allow_non_loopback = args.allow_non_loopback || file.allow_non_loopback.unwrap_or(false);

    let (listen_vals, listen_flag) = if !args.listen.is_empty() {
        (args.listen.clone(), true)
    } else if let Some(l) = file.listen.clone() {
        (l, false)
    } else {
        (vec![DEFAULT_LISTEN.to_string()], true)
    };
    let listen_origin = flag_or_key(fp, listen_flag, "listen");
    let listen = parse_listen(&listen_vals, &listen_origin, allow_non_loopback)?;
    if listen.is_empty() {
        return Err(ConfigError {
            origin: listen_origin,
            message: "no listen address; write e.g. 127.0.0.1:6443".into(),
        });
    }

    let servers_from_flags = !args.server.is_empty();
    let server_vals = if servers_from_flags {
        args.server.clone()
    } else {
        file.server.clone().unwrap_or_default()
    };
    let server_origin = flag_or_key(fp, servers_from_flags, "server");
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

    let admin_given = args.admin_listen.is_some();
    let admin_val = args
        .admin_listen
        .clone()
        .or(file.admin_listen.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
    let admin_origin = flag_or_key(
        fp,
        admin_given || file.admin_listen.is_none(),
        "admin-listen",
    );
    let admin_listen = parse_listen(&[admin_val], &admin_origin, allow_non_loopback)?[0];

    let skip_verify =
        args.health_insecure_skip_verify || file.health_insecure_skip_verify.unwrap_or(false);
    let ca_file = args.ca_file.clone().or(file.ca_file.clone());
    if ca_file.is_none() && !skip_verify {
        return Err(ConfigError {
            origin: flag_or_key(fp, true, "ca-file"),
            message: "health checks verify each apiserver's certificate: give the cluster CA \
                      (e.g. --ca-file /etc/kubernetes/pki/ca.crt), or pass \
                      --health-insecure-skip-verify to skip verification"
                .into(),
        });
    }
    let cert = args
        .health_client_cert
        .clone()
        .or(file.health_client_cert.clone());
    let key = args
        .health_client_key
        .clone()
        .or(file.health_client_key.clone());
    if cert.is_some() != key.is_some() {
        let missing = if cert.is_none() {
            "health-client-cert"
        } else {
            "health-client-key"
        };
        return Err(ConfigError {
            origin: flag_or_key(fp, true, missing),
            message: "a client certificate needs both --health-client-cert and \
                      --health-client-key"
                .into(),
        });
    }

    let log_format = args
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    let log_level = args
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".to_string());

    use defaults as d;
    let health = HealthSettings {
        ping_interval: duration(
            args.health_ping_interval,
            file.health_ping_interval.as_ref(),
            fp,
            "health-ping-interval",
            d::PING_INTERVAL,
        )?,
        ping_timeout: duration(
            args.health_ping_timeout,
            file.health_ping_timeout.as_ref(),
            fp,
            "health-ping-timeout",
            d::PING_TIMEOUT,
        )?,
        readyz_interval: duration(
            args.health_readyz_interval,
            file.health_readyz_interval.as_ref(),
            fp,
            "health-readyz-interval",
            d::READYZ_INTERVAL,
        )?,
        timeout: duration(
            args.health_timeout,
            file.health_timeout.as_ref(),
            fp,
            "health-timeout",
            d::HEALTH_TIMEOUT,
        )?,
        fall: args.health_fall.or(file.health_fall).unwrap_or(d::FALL),
        rise: args.health_rise.or(file.health_rise).unwrap_or(d::RISE),
    };
    for (v, key) in [(health.fall, "health-fall"), (health.rise, "health-rise")] {
        if v == 0 {
            return Err(ConfigError {
                origin: flag_or_key(fp, true, key),
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
                origin: flag_or_key(fp, true, key),
                message: format!("{v:?} is too short; use at least 10ms"),
            });
        }
    }
    let max_connections = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(d::MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError {
            origin: flag_or_key(fp, args.max_connections.is_some(), "max-connections"),
            message: "must be at least 1".into(),
        });
    }
    let workers = args.workers.or(file.workers).unwrap_or(d::WORKERS);
    if !(1..=64).contains(&workers) {
        return Err(ConfigError {
            origin: flag_or_key(fp, args.workers.is_some(), "workers"),
            message: format!("{workers} is out of range; use 1 to 64 (one per core is plenty)"),
        });
    }
    let connect_timeout = duration(
        args.connect_timeout,
        file.connect_timeout.as_ref(),
        fp,
        "connect-timeout",
        d::CONNECT_TIMEOUT,
    )?;
    if connect_timeout.is_zero() {
        return Err(ConfigError {
            origin: flag_or_key(fp, true, "connect-timeout"),
            message: "must be more than 0".into(),
        });
    }

    Ok(Config {
        listen,
        listen_given: !args.listen.is_empty() || file.listen.is_some(),
        allow_non_loopback,
        servers,
        ca_file,
        health_client_cert: cert,
        health_client_key: key,
        health_insecure_skip_verify: skip_verify,
        health_tls_server_name: args
            .health_tls_server_name
            .clone()
            .or(file.health_tls_server_name.clone()),
        admin_listen,
        reuse_port: args.reuse_port || file.reuse_port.unwrap_or(false),
        log_format,
        log_level,
        connect_timeout,
        connect_race_delay: duration(
            args.connect_race_delay,
            file.connect_race_delay.as_ref(),
            fp,
            "connect-race-delay",
            d::CONNECT_RACE_DELAY,
        )?,
        first_byte_timeout: duration(
            args.first_byte_timeout,
            file.first_byte_timeout.as_ref(),
            fp,
            "first-byte-timeout",
            d::FIRST_BYTE_TIMEOUT,
        )?,
        client_hello_timeout: duration(
            args.client_hello_timeout,
            file.client_hello_timeout.as_ref(),
            fp,
            "client-hello-timeout",
            d::CLIENT_HELLO_TIMEOUT,
        )?,
        replay_limit: args
            .replay_limit
            .or(file.replay_limit)
            .unwrap_or(d::REPLAY_LIMIT),
        health,
        max_connections,
        max_connections_given: args.max_connections.is_some() || file.max_connections.is_some(),
        workers,
        drain_grace: duration(
            args.drain_grace,
            file.drain_grace.as_ref(),
            fp,
            "drain-grace",
            d::DRAIN_GRACE,
        )?,
        half_closed_timeout: duration(
            args.half_closed_timeout,
            file.half_closed_timeout.as_ref(),
            fp,
            "half-closed-timeout",
            d::HALF_CLOSED_TIMEOUT,
        )?,
        idle_timeout: duration(
            args.idle_timeout,
            file.idle_timeout.as_ref(),
            fp,
            "idle-timeout",
            d::IDLE_TIMEOUT,
        )?,
        ready_timeout: duration(
            args.ready_timeout,
            file.ready_timeout.as_ref(),
            fp,
            "ready-timeout",
            d::READY_TIMEOUT,
        )?,
        resolve_interval: duration(
            args.resolve_interval,
            file.resolve_interval.as_ref(),
            fp,
            "resolve-interval",
            d::RESOLVE_INTERVAL,
        )?,
        discovery: match args
            .discovery_kubeconfig
            .clone()
            .or(file.discovery_kubeconfig.clone())
        {
            None => None,
            Some(kubeconfig) => Some(DiscoverySettings {
                kubeconfig,
                interval: duration(
                    args.discovery_interval,
                    file.discovery_interval.as_ref(),
                    fp,
                    "discovery-interval",
                    d::DISCOVERY_INTERVAL,
                )?,
                mode: args
                    .discovery_mode
                    .or(file.discovery_mode)
                    .unwrap_or(DiscoveryMode::Seed),
                state_dir: args
                    .state_dir
                    .clone()
                    .or(file.state_dir.clone())
                    .unwrap_or_else(|| PathBuf::from(d::STATE_DIR)),
                removal_grace: duration(
                    args.discovery_removal_grace,
                    file.discovery_removal_grace.as_ref(),
                    fp,
                    "discovery-removal-grace",
                    d::DISCOVERY_REMOVAL_GRACE,
                )?,
            }),
        },
        config_file: args.config.clone(),
        servers_from_flags,
    })
}
