//! The settings of `apilb run` as given: [`Settings`], one struct that is both the flags
//! (clap) and the config file's shape (serde). A field's doc comment is its `--help` text,
//! and its name, in kebab case, both the flag (`--ca-file`) and the file's key (`ca-file:`).
//! `--config` and `--check` are flags only: not keys of the file.
//!
//! Every field is optional (an `Option`, or a `bool` that only `true` or the flag sets), so
//! that "given" can be told from "default", and the flags are layered over the file by one
//! field-wise merge ([`Merge`], derived: a flag given wins). Where a list is expected the
//! file takes one value too (`server: 10.0.0.11:6443`); `key:` with no value is "not given".
//! Durations are humantime (`500ms`, `2s`, `1m`): a flag is parsed by clap, which refuses
//! a bad one; a key is kept as written ([`DurationArg`]) so that `resolve` names the file
//! and key when it is not a duration. Written out (serde), the same struct is the settings
//! in effect by key (`Config::effective`: `/status`, `--check`, what a reload compares).
//!
//! It owns the shape only: it must not apply defaults nor judge values. That is `resolve`,
//! which turns the merged settings into the validated [`Config`](super::Config). The two
//! stay separate types on purpose: the runtime form is typed (socket addresses, server
//! specs, durations), complete (defaults applied) and consistent (a client certificate with
//! its key, discovery settings only with a kubeconfig), which no form anyone writes is.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use merge::Merge;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::logging::LogFormat;

/// Parses a humantime duration given on the command line; the error says how to write one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 500ms, 2s or 1m"))
}

/// A duration setting: parsed (a flag, or a value in effect), or as written in the config
/// file (`resolve` parses it and names the key when it is not a duration). Either is
/// written out as the file would have it (`1m 30s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationArg {
    Parsed(Duration),
    Written(String),
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(DurationArg::Written)
    }
}

impl Serialize for DurationArg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DurationArg::Parsed(d) => s.collect_str(&humantime::format_duration(*d)),
            DurationArg::Written(w) => s.serialize_str(w),
        }
    }
}

fn duration_flag(s: &str) -> Result<DurationArg, String> {
    parse_duration(s).map(DurationArg::Parsed)
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

/// A switch in the file: `true`, `false`, or no value (not given: `false`).
fn switch<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Option::<bool>::deserialize(d).map(Option::unwrap_or_default)
}

/// `apilb run`'s flags, and the config file's keys.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize, Merge)]
// `expecting`: what a file that is not a map of keys has always been told.
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[serde(expecting = "struct FileConfig")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct Settings {
    /// Address to listen on (repeatable). Loopback only unless --allow-non-loopback.
    /// [default: the sockets passed by systemd (socket activation), else 127.0.0.1:6443]
    #[arg(long, value_name = "ADDR:PORT")]
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Option<Vec<String>>,

    /// Allow --listen / --admin-listen on a non-loopback address.
    #[arg(long)]
    #[serde(deserialize_with = "switch")]
    #[merge(strategy = merge::bool::overwrite_false)]
    pub allow_non_loopback: bool,

    /// A control plane, HOST:PORT (repeatable). Host names are re-resolved periodically.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(deserialize_with = "one_or_many")]
    pub server: Option<Vec<String>>,

    /// CA bundle that signs the apiserver certificates (health checks verify against it).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate for health checks (when anonymous /readyz is disabled).
    #[arg(long, value_name = "FILE")]
    pub health_client_cert: Option<PathBuf>,

    /// Key of --health-client-cert.
    #[arg(long, value_name = "FILE")]
    pub health_client_key: Option<PathBuf>,

    /// Do not verify apiserver certificates in health checks (client traffic is never touched).
    #[arg(long)]
    #[serde(deserialize_with = "switch")]
    #[merge(strategy = merge::bool::overwrite_false)]
    pub health_insecure_skip_verify: bool,

    /// Name to verify the apiserver certificate against in health checks. [default: the
    /// server's host]
    #[arg(long, value_name = "NAME")]
    pub health_tls_server_name: Option<String>,

    /// Admin endpoint (/healthz /readyz /metrics /status). [default: 127.0.0.1:6447]
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<String>,

    /// Bind the listeners with SO_REUSEPORT, so that another apilb started with this flag
    /// can bind the same addresses: for an upgrade that starts the new process before
    /// stopping the old. Without it a second process on the same address is refused.
    #[arg(long)]
    #[serde(deserialize_with = "switch")]
    #[merge(strategy = merge::bool::overwrite_false)]
    pub reuse_port: bool,

    /// YAML config file; its keys are these flags' names. Flags win. Reloaded on SIGHUP, and
    /// once a change has settled (2 s without a further change). The server list is applied
    /// by a reload; other keys take effect at the next start.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    #[merge(skip)]
    pub config: Option<PathBuf>,

    /// Check the flags, the config file and the certificates as a start would, print the
    /// settings in effect, and exit: 0 when apilb would start with them, 2 with the error it
    /// would print. Binds, connects and changes nothing.
    #[arg(long)]
    #[serde(skip)]
    #[merge(skip)]
    pub check: bool,

    /// Log format. [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log level or tracing filter (error, warn, info, debug). [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Timeout of each connect attempt to a server. [default: 2s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub connect_timeout: Option<DurationArg>,

    /// A connect not done after this starts a parallel attempt on the next server.
    /// [default: 200ms]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub connect_race_delay: Option<DurationArg>,

    /// A client connection that has not sent a complete TLS ClientHello this long after it
    /// was accepted is closed (no server is connected before it has). 0: never.
    /// [default: 10s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub client_hello_timeout: Option<DurationArg>,

    /// A server silent this long after the client spoke gets the client's first bytes
    /// replayed to the next server; the first to answer wins. [default: 500ms]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub first_byte_timeout: Option<DurationArg>,

    /// Most client bytes kept for replay before the first server byte; past it the
    /// connection is pinned. [default: 8192]
    #[arg(long, value_name = "BYTES")]
    pub replay_limit: Option<usize>,

    /// HTTP/2 PING interval of the health connection (liveness). [default: 1s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub health_ping_interval: Option<DurationArg>,

    /// The shortest window a PING gets before it counts as unanswered; the window follows
    /// the server's own round-trip time (srtt + 4·rttvar) above it. [default: 600ms]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub health_ping_timeout: Option<DurationArg>,

    /// GET /readyz interval (±10% jitter; 1s while a server is not ready). [default: 30s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub health_readyz_interval: Option<DurationArg>,

    /// Timeout of the health connection's connect + TLS, and of each /readyz. [default: 2s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub health_timeout: Option<DurationArg>,

    /// Consecutive silent PING windows (or connect/handshake timeouts) that mark a server
    /// down; its connections are then closed once another server answers. [default: 3]
    #[arg(long, value_name = "N")]
    pub health_fall: Option<u32>,

    /// Consecutive good /readyz answers that bring a server back. [default: 2]
    #[arg(long, value_name = "N")]
    pub health_rise: Option<u32>,

    /// Most concurrent client connections; new ones beyond it are closed and counted.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Threads that carry client connections (each accepts on every listener and keeps the
    /// connections it accepted). [default: 2]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// On SIGTERM/SIGINT: stop accepting, let connections run this long, then close.
    /// [default: 5s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub drain_grace: Option<DurationArg>,

    /// Once one side of a connection has ended (FIN), the other must end within this or
    /// the connection is closed; 0 turns it off. [default: 90s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub half_closed_timeout: Option<DurationArg>,

    /// A connection that carried nothing either way for this long is closed; 0 turns it
    /// off. Watches are quiet for minutes when nothing changes. [default: 0s (off)]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub idle_timeout: Option<DurationArg>,

    /// Under systemd (Type=notify): apilb reports itself started once a server is ready,
    /// or after this long without one (then serving in panic mode). [default: 10s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub ready_timeout: Option<DurationArg>,

    /// How often host names in --server are resolved again. [default: 30s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub resolve_interval: Option<DurationArg>,

    /// Follow the cluster's own list of apiservers (the `kubernetes` EndpointSlice or
    /// Endpoints), read with this kubeconfig's credentials (e.g. /etc/kubernetes/kubelet.conf).
    /// --server values become seeds.
    #[arg(long, value_name = "FILE")]
    pub discovery_kubeconfig: Option<PathBuf>,

    /// How often to discover (±10% jitter). [default: 30s]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub discovery_interval: Option<DurationArg>,

    /// seed: balance over the discovered set once discovery succeeds; pin: keep the
    /// --server list and only report what the cluster says. [default: seed]
    #[arg(long, value_enum)]
    pub discovery_mode: Option<crate::server::DiscoveryMode>,

    /// A discovered server that disappears keeps its open connections this long (or until it
    /// goes down). [default: 5m]
    #[arg(long, value_parser = duration_flag, value_name = "DURATION")]
    pub discovery_removal_grace: Option<DurationArg>,

    /// Where the last discovered set is kept across restarts. [default: /var/lib/apilb]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}
