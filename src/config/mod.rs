//! The `apilb run` configuration: the YAML file, the flags layered over it, the defaults,
//! and validation.
//!
//! Every flag of `apilb run` but `--config` and `--check` is also a key of the config file,
//! spelled the same way (`--ca-file` ⇔ `ca-file:`); flags win over the file. Validation happens here, once, and
//! every error names where the bad value came from (the flag, or the file and key) and how
//! to fix it. Nothing outside this module parses configuration; nothing in here does I/O
//! other than reading the config file.
//!
//! Reading the file is bounded ([`read_text`]): at most [`MAX_CONFIG_BYTES`], and for a
//! reload only a regular file, opened so that a FIFO or device at the path cannot block.
//! Where a list is expected a single value is accepted too (`server: 10.0.0.11:6443`), and a
//! misspelt key gets the nearest real one as its fix.
//!
//! Two types, on purpose: [`Settings`] is the configuration as given — one struct that is
//! both the flags (clap) and the file's shape (serde), every field optional — and
//! [`Config`] the validated form the runtime uses: typed, defaults applied, consistent. A
//! new setting is one field of `Settings` (its doc comment is the `--help` text, its name
//! the flag and the key), plus, when it means something at run time, a field of `Config`
//! and its check in `resolve`; the compiler then asks for its value in effect
//! ([`Config::effective`], which `/status`, `--check` and a reload's restart list read).
//!
//! The parts: this file holds the [`Config`], its defaults and the entry points ([`load`]
//! and its kin); `settings` the settings as given; `file` the config file's reading and
//! parsing; `check` the errors and the checks of single values; `resolve` the merge of
//! flags over the file and the validation. Callers use the names re-exported here, not the
//! parts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::logging::LogFormat;
use crate::server::DiscoveryMode;
pub use crate::server::ServerSpec;

mod check;
mod file;
mod resolve;
mod settings;

pub use check::{ConfigError, MAX_DURATION};
pub use file::{
    keys, nearest_key, parse_bytes, parse_file, read_file, read_text, ReadFor, MAX_CONFIG_BYTES,
};
pub use resolve::resolve;
pub use settings::{parse_duration, DurationArg, Settings};

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
    /// The settings in effect, by config-file key: what `/status` shows as `config`, what
    /// `--check` prints and the start logs, and what a reload compares. Written out as a
    /// [`Settings`], so the keys are its fields: durations as the file would (`2s`), paths
    /// as given, `null` for what is not set.
    pub fn effective(&self) -> BTreeMap<String, serde_json::Value> {
        let dur = |d: Duration| Some(DurationArg::Parsed(d));
        // Shown, not opened: a path that is not UTF-8 is shown as `display` shows it.
        let path = |p: Option<&PathBuf>| p.map(|p| PathBuf::from(p.display().to_string()));
        let list = |v: Vec<String>| Some(v);
        let (disc, h) = (self.discovery.as_ref(), &self.health);
        let shown = Settings {
            listen: list(self.listen.iter().map(ToString::to_string).collect()),
            allow_non_loopback: self.allow_non_loopback,
            server: list(self.servers.iter().map(ToString::to_string).collect()),
            ca_file: path(self.ca_file.as_ref()),
            health_client_cert: path(self.health_client_cert.as_ref()),
            health_client_key: path(self.health_client_key.as_ref()),
            health_insecure_skip_verify: self.health_insecure_skip_verify,
            health_tls_server_name: self.health_tls_server_name.clone(),
            admin_listen: Some(self.admin_listen.to_string()),
            reuse_port: self.reuse_port,
            config: None,
            check: false,
            log_format: Some(self.log_format),
            log_level: Some(self.log_level.clone()),
            connect_timeout: dur(self.connect_timeout),
            connect_race_delay: dur(self.connect_race_delay),
            client_hello_timeout: dur(self.client_hello_timeout),
            first_byte_timeout: dur(self.first_byte_timeout),
            replay_limit: Some(self.replay_limit),
            health_ping_interval: dur(h.ping_interval),
            health_ping_timeout: dur(h.ping_timeout),
            health_readyz_interval: dur(h.readyz_interval),
            health_timeout: dur(h.timeout),
            health_fall: Some(h.fall),
            health_rise: Some(h.rise),
            max_connections: Some(self.max_connections),
            workers: Some(self.workers),
            drain_grace: dur(self.drain_grace),
            half_closed_timeout: dur(self.half_closed_timeout),
            idle_timeout: dur(self.idle_timeout),
            ready_timeout: dur(self.ready_timeout),
            resolve_interval: dur(self.resolve_interval),
            discovery_kubeconfig: path(disc.map(|x| &x.kubeconfig)),
            discovery_interval: disc.and_then(|x| dur(x.interval)),
            discovery_mode: disc.map(|x| x.mode),
            discovery_removal_grace: disc.and_then(|x| dur(x.removal_grace)),
            state_dir: path(disc.map(|x| &x.state_dir)),
        };
        match serde_json::to_value(shown) {
            Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
            // Strings, numbers and lists only: nothing here fails to serialize.
            _ => BTreeMap::new(),
        }
    }

    /// The keys whose value differs between `self` and `newer` and that a reload does not
    /// apply (they need a restart), sorted.
    pub fn restart_needed(&self, newer: &Config) -> Vec<String> {
        let (a, b) = (self.effective(), newer.effective());
        a.into_iter()
            .filter(|(k, v)| !RELOADABLE_KEYS.contains(&k.as_str()) && b.get(k) != Some(v))
            .map(|(k, _)| k)
            .collect()
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

/// Builds the validated config from flags over the file (if any).
pub fn load(args: &Settings) -> Result<Config, ConfigError> {
    Ok(load_with_text(args)?.0)
}

/// As [`load`], also returning the file's bytes as read (to watch it for changes).
pub fn load_with_text(args: &Settings) -> Result<(Config, Option<Vec<u8>>), ConfigError> {
    match &args.config {
        Some(p) => {
            let bytes = read_text(p, ReadFor::Start)?;
            let cfg = resolve(args, parse_bytes(&bytes, p)?)?;
            Ok((cfg, Some(bytes)))
        }
        None => Ok((resolve(args, Settings::default())?, None)),
    }
}

/// The config from flags over the file's `bytes` (read once, elsewhere: a reload).
pub fn load_bytes(args: &Settings, bytes: &[u8]) -> Result<Config, ConfigError> {
    let path = args.config.as_deref().unwrap_or(Path::new("--config"));
    resolve(args, parse_bytes(bytes, path)?)
}

#[cfg(test)]
mod tests;
