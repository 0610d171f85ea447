//! The settings of `apilb run` as given on the command line (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::duration;
use crate::logging::LogFormat;

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Address to listen on (repeatable). Loopback only unless --allow-non-loopback.
    /// [default: the sockets passed by systemd (socket activation), else 127.0.0.1:6443]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,

    /// Allow --listen / --admin-listen on a non-loopback address.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// A control plane, HOST:PORT (repeatable). Host names are re-resolved periodically.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Vec<String>,

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
    pub reuse_port: bool,

    /// YAML config file; its keys are these flags' names. Flags win. Reloaded on SIGHUP, and
    /// once a change has settled (2 s without a further change). The server list is applied
    /// by a reload; other keys take effect at the next start.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the flags, the config file and the certificates as a start would, print the
    /// settings in effect, and exit: 0 when apilb would start with them, 2 with the error it
    /// would print. Binds, connects and changes nothing.
    #[arg(long)]
    pub check: bool,

    /// Log format. [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log level or tracing filter (error, warn, info, debug). [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Timeout of each connect attempt to a server. [default: 2s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub connect_timeout: Option<Duration>,

    /// A connect not done after this starts a parallel attempt on the next server.
    /// [default: 200ms]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub connect_race_delay: Option<Duration>,

    /// A client connection that has not sent a complete TLS ClientHello this long after it
    /// was accepted is closed (no server is connected before it has). 0: never.
    /// [default: 10s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub client_hello_timeout: Option<Duration>,

    /// A server silent this long after the client spoke gets the client's first bytes
    /// replayed to the next server; the first to answer wins. [default: 500ms]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub first_byte_timeout: Option<Duration>,

    /// Most client bytes kept for replay before the first server byte; past it the
    /// connection is pinned. [default: 8192]
    #[arg(long, value_name = "BYTES")]
    pub replay_limit: Option<usize>,

    /// HTTP/2 PING interval of the health connection (liveness). [default: 1s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub health_ping_interval: Option<Duration>,

    /// The shortest window a PING gets before it counts as unanswered; the window follows
    /// the server's own round-trip time (srtt + 4·rttvar) above it. [default: 600ms]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub health_ping_timeout: Option<Duration>,

    /// GET /readyz interval (±10% jitter; 1s while a server is not ready). [default: 30s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub health_readyz_interval: Option<Duration>,

    /// Timeout of the health connection's connect + TLS, and of each /readyz. [default: 2s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub health_timeout: Option<Duration>,

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
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub drain_grace: Option<Duration>,

    /// Once one side of a connection has ended (FIN), the other must end within this or
    /// the connection is closed; 0 turns it off. [default: 90s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub half_closed_timeout: Option<Duration>,

    /// A connection that carried nothing either way for this long is closed; 0 turns it
    /// off. Watches are quiet for minutes when nothing changes. [default: 0s (off)]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,

    /// Under systemd (Type=notify): apilb reports itself started once a server is ready,
    /// or after this long without one (then serving in panic mode). [default: 10s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub ready_timeout: Option<Duration>,

    /// How often host names in --server are resolved again. [default: 30s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub resolve_interval: Option<Duration>,

    /// Follow the cluster's own list of apiservers (the `kubernetes` EndpointSlice or
    /// Endpoints), read with this kubeconfig's credentials (e.g. /etc/kubernetes/kubelet.conf).
    /// --server values become seeds.
    #[arg(long, value_name = "FILE")]
    pub discovery_kubeconfig: Option<PathBuf>,

    /// How often to discover (±10% jitter). [default: 30s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub discovery_interval: Option<Duration>,

    /// seed: balance over the discovered set once discovery succeeds; pin: keep the
    /// --server list and only report what the cluster says. [default: seed]
    #[arg(long, value_enum)]
    pub discovery_mode: Option<crate::server::DiscoveryMode>,

    /// A discovered server that disappears keeps its open connections this long (or until it
    /// goes down). [default: 5m]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub discovery_removal_grace: Option<Duration>,

    /// Where the last discovered set is kept across restarts. [default: /var/lib/apilb]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}
