//! The `apilb run` configuration: the YAML file, the flags layered over it, the defaults,
//! and validation.
//!
//! Every flag of `apilb run` is also a key of the config file, spelled the same way
//! (`--ca-file` ⇔ `ca-file:`); flags win over the file. Validation happens here, once, and
//! every error names where the bad value came from (the flag, or the file and key) and how
//! to fix it. Nothing outside this module parses configuration; nothing in here does I/O
//! other than reading the config file.
//!
//! Reading the file is bounded ([`read_text`]): at most [`MAX_CONFIG_BYTES`], and for a
//! reload only a regular file, opened so that a FIFO or device at the path cannot block.
//! Where a list is expected a single value is accepted too (`server: 10.0.0.11:6443`), and a
//! misspelt key gets the nearest real one as its fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cli::RunArgs;
pub use crate::logging::LogFormat;
use crate::server::DiscoveryMode;
pub use crate::server::ServerSpec;

/// Default listen address: kubelet and kube-proxy are pointed at https://127.0.0.1:6443.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";
/// Default admin address. Chosen to collide with nothing a node already runs
/// (apiserver 6443, k3s supervisor 6444, KubePrism 7445, 8081, kubelet/kube-proxy 10248–10260,
/// node-exporter 9100, etcd 2379/2380, memberlist 7946).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:6447";

/// Every default in one place; `apilb run --help` prints these.
pub mod defaults {
    use std::time::Duration;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const CONNECT_RACE_DELAY: Duration = Duration::from_millis(200);
    pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_millis(500);
    pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
    pub const REPLAY_LIMIT: usize = 8 * 1024;
    pub const PING_INTERVAL: Duration = Duration::from_secs(1);
    pub const PING_TIMEOUT: Duration = Duration::from_millis(600);
    pub const READYZ_INTERVAL: Duration = Duration::from_secs(30);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const FALL: u32 = 3;
    pub const RISE: u32 = 2;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const WORKERS: usize = 2;
    pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
    /// Longer than kube-apiserver's default request timeout (`--request-timeout`, 60 s),
    /// so a response to a request sent before the client's FIN can still finish.
    pub const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(90);
    /// Off: a watch with no events is legitimately quiet for many minutes.
    pub const IDLE_TIMEOUT: Duration = Duration::ZERO;
    /// Well inside systemd's start timeout (90 s), short enough not to hold kubelet back
    /// long when no control plane answers.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);
    pub const DISCOVERY_REMOVAL_GRACE: Duration = Duration::from_secs(300);
    pub const STATE_DIR: &str = "/var/lib/apilb";
}

/// A list, or one value standing for a list of one (`server: 10.0.0.11:6443`).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<OneOrMany>::deserialize(d) {
        Ok(None) => Ok(None),
        Ok(Some(OneOrMany::One(s))) => Ok(Some(vec![s])),
        Ok(Some(OneOrMany::Many(v))) => Ok(Some(v)),
        Err(_) => Err(serde::de::Error::custom(
            "expected an address or a list of addresses, e.g. `[\"10.0.0.11:6443\", \"10.0.0.12:6443\"]`",
        )),
    }
}

/// The config file, as written. Every field optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default, deserialize_with = "one_or_many")]
    pub listen: Option<Vec<String>>,
    pub allow_non_loopback: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
    pub health_client_cert: Option<PathBuf>,
    pub health_client_key: Option<PathBuf>,
    pub health_insecure_skip_verify: Option<bool>,
    pub health_tls_server_name: Option<String>,
    pub admin_listen: Option<String>,
    pub reuse_port: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub connect_timeout: Option<String>,
    pub connect_race_delay: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub client_hello_timeout: Option<String>,
    pub replay_limit: Option<usize>,
    pub health_ping_interval: Option<String>,
    pub health_ping_timeout: Option<String>,
    pub health_readyz_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_fall: Option<u32>,
    pub health_rise: Option<u32>,
    pub max_connections: Option<usize>,
    pub workers: Option<usize>,
    pub drain_grace: Option<String>,
    pub half_closed_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub ready_timeout: Option<String>,
    pub resolve_interval: Option<String>,
    pub discovery_kubeconfig: Option<PathBuf>,
    pub discovery_interval: Option<String>,
    pub discovery_mode: Option<DiscoveryMode>,
    pub discovery_removal_grace: Option<String>,
    pub state_dir: Option<PathBuf>,
}

/// The validated configuration `apilb run` works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// `--listen` (flag or key) was given: without it, sockets passed by a supervisor are
    /// served instead of the default address.
    pub listen_given: bool,
    pub allow_non_loopback: bool,
    pub servers: Vec<ServerSpec>,
    pub ca_file: Option<PathBuf>,
    pub health_client_cert: Option<PathBuf>,
    pub health_client_key: Option<PathBuf>,
    pub health_insecure_skip_verify: bool,
    pub health_tls_server_name: Option<String>,
    pub admin_listen: SocketAddr,
    /// SO_REUSEPORT on the listeners apilb binds (`--reuse-port`): a handover only.
    pub reuse_port: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    pub connect_timeout: Duration,
    pub connect_race_delay: Duration,
    pub first_byte_timeout: Duration,
    /// Zero: off.
    pub client_hello_timeout: Duration,
    pub replay_limit: usize,
    pub health: HealthSettings,
    pub max_connections: usize,
    /// `--max-connections` was given (flag or key): then a limit the open-file limit cannot
    /// hold is warned about; the default is sized to the open-file limit instead.
    pub max_connections_given: bool,
    pub workers: usize,
    pub drain_grace: Duration,
    /// Once one direction of a connection ended, the other must end within this (0: never).
    pub half_closed_timeout: Duration,
    /// A connection that carried nothing for this long is closed (0: never).
    pub idle_timeout: Duration,
    /// Under systemd (`$NOTIFY_SOCKET`): READY=1 once a server is ready, or after this.
    pub ready_timeout: Duration,
    pub resolve_interval: Duration,
    /// Control-plane discovery, when `--discovery-kubeconfig` is given.
    pub discovery: Option<DiscoverySettings>,
    /// The config file this came from, watched for changes.
    pub config_file: Option<PathBuf>,
    /// True when `--server` flags pinned the list: reloads of the file keep it.
    pub servers_from_flags: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub readyz_interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

/// The keys a reload applies; every other changed key takes effect at the next start.
pub const RELOADABLE_KEYS: &[&str] = &["server"];

impl Config {
    /// The settings in effect, by config-file key: what `/status` shows as `config` and the
    /// start logs. Durations are written as the file would (`2s`), paths as given.
    pub fn effective(&self) -> std::collections::BTreeMap<&'static str, serde_json::Value> {
        use serde_json::Value as V;
        let d = |d: Duration| V::String(humantime::format_duration(d).to_string());
        let p = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| V::String(p.display().to_string()))
                .unwrap_or(V::Null)
        };
        let list = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
        let disc = self.discovery.as_ref();
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "listen",
            list(self.listen.iter().map(ToString::to_string).collect()),
        );
        m.insert("allow-non-loopback", V::Bool(self.allow_non_loopback));
        m.insert(
            "server",
            list(self.servers.iter().map(ToString::to_string).collect()),
        );
        m.insert("ca-file", p(&self.ca_file));
        m.insert("health-client-cert", p(&self.health_client_cert));
        m.insert("health-client-key", p(&self.health_client_key));
        m.insert(
            "health-insecure-skip-verify",
            V::Bool(self.health_insecure_skip_verify),
        );
        m.insert(
            "health-tls-server-name",
            self.health_tls_server_name
                .clone()
                .map(V::String)
                .unwrap_or(V::Null),
        );
        m.insert("admin-listen", V::String(self.admin_listen.to_string()));
        m.insert("reuse-port", V::Bool(self.reuse_port));
        m.insert(
            "log-format",
            V::String(
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .into(),
            ),
        );
        m.insert("log-level", V::String(self.log_level.clone()));
        m.insert("connect-timeout", d(self.connect_timeout));
        m.insert("connect-race-delay", d(self.connect_race_delay));
        m.insert("first-byte-timeout", d(self.first_byte_timeout));
        m.insert("replay-limit", V::from(self.replay_limit));
        m.insert("health-ping-interval", d(self.health.ping_interval));
        m.insert("health-ping-timeout", d(self.health.ping_timeout));
        m.insert("health-readyz-interval", d(self.health.readyz_interval));
        m.insert("health-timeout", d(self.health.timeout));
        m.insert("health-fall", V::from(self.health.fall));
        m.insert("health-rise", V::from(self.health.rise));
        m.insert("max-connections", V::from(self.max_connections));
        m.insert("workers", V::from(self.workers));
        m.insert("drain-grace", d(self.drain_grace));
        m.insert("half-closed-timeout", d(self.half_closed_timeout));
        m.insert("idle-timeout", d(self.idle_timeout));
        m.insert("ready-timeout", d(self.ready_timeout));
        m.insert("resolve-interval", d(self.resolve_interval));
        m.insert(
            "discovery-kubeconfig",
            p(&disc.map(|x| x.kubeconfig.clone())),
        );
        m.insert(
            "discovery-interval",
            disc.map(|x| d(x.interval)).unwrap_or(V::Null),
        );
        m.insert(
            "discovery-mode",
            disc.and_then(|x| clap::ValueEnum::to_possible_value(&x.mode))
                .map(|v| V::String(v.get_name().to_string()))
                .unwrap_or(V::Null),
        );
        m.insert(
            "discovery-removal-grace",
            disc.map(|x| d(x.removal_grace)).unwrap_or(V::Null),
        );
        m.insert("state-dir", p(&disc.map(|x| x.state_dir.clone())));
        m
    }

    /// The keys whose value differs between `self` and `newer` and that a reload does not
    /// apply (they need a restart), sorted.
    pub fn restart_needed(&self, newer: &Config) -> Vec<String> {
        let (a, b) = (self.effective(), newer.effective());
        a.iter()
            .filter(|(k, v)| !RELOADABLE_KEYS.contains(k) && b.get(*k) != Some(*v))
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

/// A configuration error: where the value came from, and what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

fn flag_or_key(file: Option<&Path>, flag_given: bool, key: &str) -> String {
    match (flag_given, file) {
        (true, _) | (false, None) => format!("--{key}"),
        (false, Some(f)) => format!("{}: key `{key}`", f.display()),
    }
}

/// The largest config file read: far beyond any real one (a few hundred bytes), small
/// enough that a wrong path (a log, an image) cannot take memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What a read of the config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFor {
    /// The start (and `--check`): anything readable, a pipe too (`--config <(…)`), since
    /// nothing is being served yet.
    Start,
    /// A reload while apilb serves: a regular file only, opened without blocking, so that a
    /// FIFO or a device put at the path is refused at once instead of holding the reload.
    Reload,
}

/// Reads the config file's bytes, bounded by [`MAX_CONFIG_BYTES`]; errors name the file and
/// the fix.
pub fn read_text(path: &Path, read_for: ReadFor) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = |message: String| ConfigError {
        origin: path.display().to_string(),
        message,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    if read_for == ReadFor::Reload {
        // Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK returns at once.
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open
        .open(path)
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    let ft = meta.file_type();
    if !ft.is_file() && (read_for == ReadFor::Reload || ft.is_dir()) {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(err(format!(
            "the config file is {kind}, not a regular file; put a regular file there \
             (write it to a temporary file next to it, then rename it over the path)"
        )));
    }
    if ft.is_file() && meta.len() > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "the config file is {} bytes, more than the {MAX_CONFIG_BYTES} a config file may \
             have; check --config",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read the config file: {e}; check --config")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!(
            "the config file has more than the {MAX_CONFIG_BYTES} bytes a config file may \
             have; check --config"
        )));
    }
    Ok(bytes)
}

/// Reads and parses a config file (as at start).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let bytes = read_text(path, ReadFor::Start)?;
    parse_bytes(&bytes, path)
}

/// Parses a config file's bytes (`path` names it in errors).
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<FileConfig, ConfigError> {
    let origin = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
        origin: origin.clone(),
        message: format!("the config file is not UTF-8 text ({e}); write it as YAML text"),
    })?;
    parse_file(text, origin)
}

/// Every key of the config file: the long names of `apilb run`'s flags but `--config`.
pub fn keys() -> Vec<String> {
    use clap::Args;
    RunArgs::augment_args(clap::Command::new("run"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "check"))
        .map(str::to_string)
        .collect()
}

/// The key nearest to `unknown`, if one is near enough to be the one meant: a few letters
/// apart, `_` for `-`, or the key with a word more or less (`drain-grace-period`).
pub fn nearest_key(unknown: &str) -> Option<String> {
    let wanted = unknown.trim_start_matches('-').replace('_', "-");
    keys()
        .into_iter()
        .filter_map(|k| {
            let d = strsim::damerau_levenshtein(&wanted, &k);
            let words = wanted.len() >= 4
                && (wanted.starts_with(&format!("{k}-")) || k.starts_with(&format!("{wanted}-")));
            (d <= 2.max(k.len() / 4) || words).then_some((d, k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Parses the text of a config file; `origin` (its path) names it in errors.
pub fn parse_file(text: &str, origin: String) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    yaml_serde::from_str(text).map_err(|e| {
        let full = e.to_string();
        let at = e
            .location()
            .map(|l| format!("line {}: ", l.line()))
            .unwrap_or_default();
        // serde's own wording: "unknown field `servers`, expected one of `listen`, …".
        let unknown = full
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_string());
        let message = match unknown {
            Some(key) => match nearest_key(&key) {
                Some(near) => format!("{at}unknown key `{key}`; did you mean `{near}`?"),
                None => format!(
                    "{at}unknown key `{key}`; the keys are the `apilb run` flag names \
                     without the dashes in front (see `apilb run --help`)"
                ),
            },
            None => format!("invalid config: {full}"),
        };
        ConfigError { origin, message }
    })
}

/// Builds the validated config from flags over the file (if any).
pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
    Ok(load_with_text(args)?.0)
}

/// As [`load`], also returning the file's bytes as read (to watch it for changes).
pub fn load_with_text(args: &RunArgs) -> Result<(Config, Option<Vec<u8>>), ConfigError> {
    match &args.config {
        Some(p) => {
            let bytes = read_text(p, ReadFor::Start)?;
            let cfg = resolve(args, parse_bytes(&bytes, p)?)?;
            Ok((cfg, Some(bytes)))
        }
        None => Ok((resolve(args, FileConfig::default())?, None)),
    }
}

/// The config from flags over the file's `bytes` (read once, elsewhere: a reload).
pub fn load_bytes(args: &RunArgs, bytes: &[u8]) -> Result<Config, ConfigError> {
    let path = args.config.as_deref().unwrap_or(Path::new("--config"));
    resolve(args, parse_bytes(bytes, path)?)
}

/// The longest any duration setting may be: a century (`100y`, humantime's years of 365.25
/// days), far beyond any sensible value and far below what the clock arithmetic holds
/// (`Instant + Duration` and the ±10% jitter panic on overflow, and `panic = "abort"` makes
/// that a crash at the next connection or health check).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

fn duration(
    flag: Option<Duration>,
    file_val: Option<&String>,
    file: Option<&Path>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = match (flag, file_val) {
        (Some(d), _) => d,
        (None, None) => return Ok(default),
        (None, Some(s)) => humantime::parse_duration(s).map_err(|e| ConfigError {
            origin: flag_or_key(file, false, key),
            message: format!("`{s}` is not a duration ({e}); write e.g. 500ms, 2s or 1m"),
        })?,
    };
    if d > MAX_DURATION {
        return Err(ConfigError {
            origin: flag_or_key(file, flag.is_some(), key),
            message: format!(
                "{} is too long; use at most 100 years",
                humantime::format_duration(d)
            ),
        });
    }
    Ok(d)
}

fn parse_listen(
    values: &[String],
    origin: &str,
    allow_non_loopback: bool,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for v in values {
        let addr: SocketAddr = v.trim().parse().map_err(|_| ConfigError {
            origin: origin.to_string(),
            message: format!(
                "`{v}` is not an IP:PORT address; write e.g. 127.0.0.1:6443 or [::1]:6443"
            ),
        })?;
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(ConfigError {
                origin: origin.to_string(),
                message: format!(
                    "`{addr}` is not a loopback address: apilb would expose the apiserver path \
                     to the network. Listen on 127.0.0.1 or [::1], or pass \
                     --allow-non-loopback if that is really meant"
                ),
            });
        }
        out.push(addr);
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(v: &[&str]) -> RunArgs {
        let mut full = vec!["apilb", "run"];
        full.extend_from_slice(v);
        match crate::cli::Cli::try_parse_from(full) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Run(a),
                ..
            }) => *a,
            Ok(_) => panic!("not run"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn server_spec_forms() {
        assert_eq!(
            ServerSpec::parse("10.0.0.1:6443").unwrap(),
            ServerSpec {
                host: "10.0.0.1".into(),
                port: 6443
            }
        );
        assert_eq!(ServerSpec::parse("[fd00::1]:6443").unwrap().host, "fd00::1");
        assert_eq!(
            ServerSpec::parse("https://cp.example.com:6443/")
                .unwrap()
                .to_string(),
            "cp.example.com:6443"
        );
        // `[[[]:6443` and `[cp1]:6443` were accepted and did not print back (state_file fuzz).
        for bad in [
            "",
            "cp1",
            "fd00::1:6443",
            "cp:0",
            "cp:x",
            "[::1",
            ":6443",
            "[[[]:6443",
            "[cp1]:6443",
            "cp\"1:6443",
            "cp1%eth0:6443",
        ] {
            assert!(ServerSpec::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_apply() {
        let c = load(&args(&["--server", "127.0.0.2:6443", "--ca-file", "/x"])).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:6443".parse().unwrap()]);
        assert_eq!(c.admin_listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        assert_eq!(c.connect_race_delay, defaults::CONNECT_RACE_DELAY);
        assert_eq!(c.health.fall, defaults::FALL);
        assert_eq!(c.workers, defaults::WORKERS);
        assert_eq!(c.half_closed_timeout, Duration::from_secs(90));
        assert_eq!(c.idle_timeout, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = load(&args(&["--ca-file", "/x"])).unwrap_err();
        assert_eq!(e.origin, "--server");
        assert!(e.message.contains("--server HOST:PORT"));
        let e = load(&args(&["--server", "cp1"])).unwrap_err();
        assert_eq!(e.origin, "--server");
        let e = load(&args(&["--server", "a:1"])).unwrap_err();
        assert_eq!(e.origin, "--ca-file");
        let e = load(&args(&[
            "--server",
            "a:1",
            "--health-insecure-skip-verify",
            "--listen",
            "0.0.0.0:6443",
        ]))
        .unwrap_err();
        assert_eq!(e.origin, "--listen");
        assert!(e.message.contains("--allow-non-loopback"));
        for n in ["0", "65"] {
            let e = load(&args(&[
                "--server",
                "a:1",
                "--ca-file",
                "/x",
                "--workers",
                n,
            ]))
            .unwrap_err();
            assert_eq!(e.origin, "--workers");
            assert!(e.message.contains("1 to 64"), "{}", e.message);
        }
        let c = load(&args(&[
            "--server",
            "a:1",
            "--ca-file",
            "/x",
            "--workers",
            "1",
        ]))
        .unwrap();
        assert_eq!(c.workers, 1);
    }

    #[test]
    fn file_keys_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "server: [\"127.0.0.2:6443\", \"127.0.0.3:6443\"]\nca-file: /ca\nconnect-race-delay: 50ms\nhealth-fall: 3\n",
        )
        .unwrap();
        let ps = p.to_str().unwrap();
        let c = load(&args(&["--config", ps, "--health-fall", "4"])).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.connect_race_delay, Duration::from_millis(50));
        assert_eq!(c.health.fall, 4);
        assert!(!c.servers_from_flags);

        std::fs::write(&p, "servers: [a:1]\n").unwrap();
        let e = load(&args(&["--config", ps])).unwrap_err();
        assert_eq!(e.origin, ps);
        assert!(
            e.message
                .contains("unknown key `servers`; did you mean `server`?"),
            "{}",
            e.message
        );

        std::fs::write(&p, "server: [a:1]\nca-file: /ca\ndrain-grace: soon\n").unwrap();
        let e = load(&args(&["--config", ps])).unwrap_err();
        assert!(e.origin.contains("drain-grace"), "{}", e.origin);
        assert!(e.message.contains("not a duration"));

        // Past the cap: once accepted, and a panic (Instant overflow) at the next connection.
        std::fs::write(
            &p,
            "server: [a:1]\nca-file: /ca\nconnect-race-delay: 300000000000y\n",
        )
        .unwrap();
        let e = load(&args(&["--config", ps])).unwrap_err();
        assert!(e.origin.contains("connect-race-delay"), "{}", e.origin);
        assert!(e.message.contains("too long"), "{}", e.message);
    }

    #[test]
    fn durations_past_a_century_are_refused() {
        let base = ["--server", "a:1", "--ca-file", "/x"];
        for flag in [
            "--connect-timeout",
            "--connect-race-delay",
            "--first-byte-timeout",
            "--health-ping-interval",
            "--health-ping-timeout",
            "--health-readyz-interval",
            "--health-timeout",
            "--drain-grace",
            "--half-closed-timeout",
            "--idle-timeout",
            "--ready-timeout",
            "--resolve-interval",
            "--discovery-interval",
            "--discovery-removal-grace",
        ] {
            let mut v = base.to_vec();
            v.extend([
                "--discovery-kubeconfig",
                "/k",
                flag,
                "18446744073709551615s",
            ]);
            let e = load(&args(&v)).unwrap_err();
            assert_eq!(e.origin, flag);
            assert!(e.message.contains("too long"), "{flag}: {}", e.message);
            v.pop();
            v.push("100y");
            assert!(load(&args(&v)).is_ok(), "{flag} 100y refused");
        }
    }
}

/// Discovery as configured: where the kubeconfig is, how often to ask, and the merge mode.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub kubeconfig: PathBuf,
    pub interval: Duration,
    pub mode: DiscoveryMode,
    pub state_dir: PathBuf,
    pub removal_grace: Duration,
}
