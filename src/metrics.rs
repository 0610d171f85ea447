//! The Prometheus registry and apilb's typed metric families (prometheus-client).
//!
//! Owns metric names, help texts and label sets. Hot paths never look a label set up: each
//! `Backend` keeps the handles of its own series (`ServerMetrics`), taken once when the
//! server joins the set and removed when it leaves. This module does no I/O; the admin
//! endpoint encodes the registry (and with it `process_metrics`, which reads `/proc`).

use std::sync::LazyLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerResult {
    pub server: String,
    pub result: ConnectResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectResult {
    ok,
    refused,
    timeout,
    error,
    /// Still connecting after the race delay when another server's connect won.
    lost_race,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerDirection {
    pub server: String,
    pub direction: Direction,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    to_server,
    to_client,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerCheck {
    pub server: String,
    pub check: Check,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Check {
    ping,
    readyz,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerCause {
    pub server: String,
    pub cause: crate::server::Cause,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerState {
    pub server: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerTransition {
    pub server: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryResult {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: &'static str,
    pub arch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: ReloadResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    ok,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: RejectReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// `--max-connections` reached.
    connection_limit,
    /// Every server failed to connect.
    no_server,
    /// apilb itself ran out of descriptors or memory.
    local_resources,
    /// No complete TLS ClientHello within `--client-hello-timeout` of the accept.
    client_hello_timeout,
    /// At `--max-connections`, the oldest connection that had not yet sent its ClientHello
    /// was closed to make room for a new one.
    evicted_silent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabel {
    pub timeout: TimeoutKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TimeoutKind {
    /// One direction ended and the other did not within `--half-closed-timeout`.
    half_closed,
    /// Nothing moved either way for `--idle-timeout`.
    idle,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: Listener,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Listener {
    /// The client listeners (`--listen`).
    proxy,
    /// The admin endpoint (`--admin-listen`).
    admin,
}

/// Every metric family apilb exports.
pub struct Metrics {
    pub registry: Registry,
    pub server_state: Family<ServerState, Gauge>,
    pub state_transitions: Family<ServerTransition, Counter>,
    pub active: Family<ServerLabel, Gauge>,
    pub connect_attempts: Family<ServerResult, Counter>,
    pub connect_seconds: Family<ServerLabel, Histogram, fn() -> Histogram>,
    pub bytes: Family<ServerDirection, Counter>,
    pub check_seconds: Family<ServerCheck, Histogram, fn() -> Histogram>,
    pub failover_closed: Family<ServerLabel, Counter>,
    pub health_failures: Family<ServerCause, Counter>,
    pub accepted: Counter,
    pub rejected: Family<Reason, Counter>,
    pub timed_out: Family<TimeoutLabel, Counter>,
    pub accept_errors: Family<ListenerLabel, Counter>,
    pub admin_rejected: Counter,
    pub panic_mode: Gauge,
    pub replayed: Counter,
    pub discovery_attempts: Family<DiscoveryResult, Counter>,
    pub discovery_last_success: Gauge,
    pub config_reloads: Family<ReloadLabel, Counter>,
    pub config_last_reload_success: Gauge,
    pub config_last_reload_successful: Gauge,
    /// The last state changes, for `/status` (not a metric family: a record).
    pub transitions: crate::transitions::Transitions,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~8 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, discovery's included.
    pub fn new() -> Metrics {
        Self::build(true)
    }

    /// The families of a process: `discovery` says whether control-plane discovery runs
    /// (without it its families are not exported at all). Also the process's own:
    /// `apilb_build_info` and the standard `process_*` metrics (unprefixed, as every
    /// Prometheus client names them).
    pub fn build(discovery: bool) -> Metrics {
        let mut root = Registry::default();
        root.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("apilb");
        let build_info = Family::<BuildInfo, Gauge>::default();
        build_info
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
                arch: std::env::consts::ARCH,
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with apilb's version and the CPU architecture it was built for",
            build_info,
        );
        // Process-wide, not a field: logging starts before any registry exists (`logging`).
        registry.register(
            "log_write_errors",
            "Log lines dropped because stderr could not take them (its reader gone, disk full)",
            crate::logging::write_errors().clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because 1,024 were already waiting for stderr (its reader \
             alive but not reading): apilb never waits on its log",
            crate::logging::lines_dropped().clone(),
        );
        registry.register(
            "spliced_bytes",
            "Bytes of bulk transfers moved by splice(2), kernel to kernel, rather than through \
             apilb's memory (both directions, all servers; also counted in apilb_bytes)",
            spliced_bytes().clone(),
        );
        registry.register(
            "splice_pipes",
            "Pipes open for splice(2): held by transfers with bytes in flight, or pooled empty",
            pipes_open().clone(),
        );
        let m = Metrics {
            server_state: Family::default(),
            state_transitions: Family::default(),
            active: Family::default(),
            connect_attempts: Family::default(),
            connect_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            bytes: Family::default(),
            check_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            failover_closed: Family::default(),
            health_failures: Family::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            timed_out: Family::default(),
            accept_errors: Family::default(),
            admin_rejected: Counter::default(),
            panic_mode: Gauge::default(),
            replayed: Counter::default(),
            discovery_attempts: Family::default(),
            discovery_last_success: Gauge::default(),
            config_reloads: Family::default(),
            config_last_reload_success: Gauge::default(),
            config_last_reload_successful: Gauge::default(),
            transitions: crate::transitions::Transitions::default(),
            registry: Registry::default(),
        };
        registry.register(
            "server_state",
            "1 for the state each server is in (ready, not_ready, draining, down, unknown)",
            m.server_state.clone(),
        );
        registry.register(
            "server_active_connections",
            "Client connections currently proxied to each server",
            m.active.clone(),
        );
        registry.register(
            "connect_attempts",
            "Connect attempts to servers, by result: ok, refused, timeout, error, or lost_race \
             (still connecting after the race delay when another server's connect won)",
            m.connect_attempts.clone(),
        );
        registry.register(
            "connect_duration_seconds",
            "Time to establish a TCP connection to a server",
            m.connect_seconds.clone(),
        );
        registry.register(
            "bytes",
            "Bytes proxied, by server and direction",
            m.bytes.clone(),
        );
        registry.register(
            "health_check_duration_seconds",
            "Latency of health checks (HTTP/2 PING round trip, GET /readyz)",
            m.check_seconds.clone(),
        );
        registry.register(
            "server_state_transitions",
            "Changes of a server's state, by server and the state entered (ready, not_ready, \
             draining, down, unknown); counts a change even if it lasted less than a scrape",
            m.state_transitions.clone(),
        );
        registry.register(
            "failover_closed_connections",
            "Client connections closed because their server went silent or was removed",
            m.failover_closed.clone(),
        );
        registry.register(
            "health_failures",
            "Failed health observations, by server and cause: silence (ping_timeout, \
             connect_timeout, handshake_timeout, unreachable), leaving (goaway, closed, reset, \
             refused), and tls, protocol, readyz_status, readyz_timeout, oversized",
            m.health_failures.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Client connections closed without being proxied, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Client connections closed by a timeout: half_closed (one side ended, the other \
             did not within --half-closed-timeout) or idle (nothing moved for --idle-timeout)",
            m.timed_out.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (out of descriptors or memory), by listener (proxy, admin); each \
             is retried after a backoff of up to a second, and logged at most every 5 s",
            m.accept_errors.clone(),
        );
        registry.register(
            "admin_connections_rejected",
            "Admin endpoint connections closed at once because 64 were already open",
            m.admin_rejected.clone(),
        );
        registry.register(
            "panic_mode",
            "1 while no server is ready and every server is tried anyway",
            m.panic_mode.clone(),
        );
        registry.register(
            "first_byte_replays",
            "Connections whose first client bytes were replayed to another server because \
             the first one did not answer",
            m.replayed.clone(),
        );
        if discovery {
            registry.register(
                "discovery_attempts",
                "Control-plane discovery rounds, by result (ok, empty, forbidden, error)",
                m.discovery_attempts.clone(),
            );
            registry.register(
                "discovery_last_success_timestamp_seconds",
                "Unix time of the last successful control-plane discovery",
                m.discovery_last_success.clone(),
            );
        }
        registry.register(
            "config_reloads",
            "Reloads of the configuration (SIGHUP or a change of the config file), by result: \
             ok, or failed (the settings in effect were kept)",
            m.config_reloads.clone(),
        );
        for result in [ReloadResult::ok, ReloadResult::failed] {
            let _ = m.config_reloads.get_or_create(&ReloadLabel { result });
        }
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload of the configuration, or of the start",
            m.config_last_reload_success.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last reload of the configuration (or the start) succeeded, 0 if it failed",
            m.config_last_reload_successful.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }

    /// A reload's (or the start's) outcome.
    pub fn config_loaded(&self, result: Option<ReloadResult>) {
        if let Some(result) = result {
            self.config_reloads
                .get_or_create(&ReloadLabel { result })
                .inc();
        }
        let ok = result != Some(ReloadResult::failed);
        self.config_last_reload_successful.set(i64::from(ok));
        if ok {
            self.config_last_reload_success.set(unix_now());
        }
    }

    /// The handles of one server's series.
    pub fn for_server(&self, server: &str) -> ServerMetrics {
        let s = || server.to_string();
        let res = |result| ServerResult {
            server: s(),
            result,
        };
        ServerMetrics {
            active: self
                .active
                .get_or_create_owned(&ServerLabel { server: s() }),
            connect_ok: self
                .connect_attempts
                .get_or_create_owned(&res(ConnectResult::ok)),
            connect_refused: self
                .connect_attempts
                .get_or_create_owned(&res(ConnectResult::refused)),
            connect_timeout: self
                .connect_attempts
                .get_or_create_owned(&res(ConnectResult::timeout)),
            connect_error: self
                .connect_attempts
                .get_or_create_owned(&res(ConnectResult::error)),
            connect_lost_race: self
                .connect_attempts
                .get_or_create_owned(&res(ConnectResult::lost_race)),
            connect_seconds: self
                .connect_seconds
                .get_or_create_owned(&ServerLabel { server: s() }),
            bytes_to_server: self.bytes.get_or_create_owned(&ServerDirection {
                server: s(),
                direction: Direction::to_server,
            }),
            bytes_to_client: self.bytes.get_or_create_owned(&ServerDirection {
                server: s(),
                direction: Direction::to_client,
            }),
            ping_seconds: self.check_seconds.get_or_create_owned(&ServerCheck {
                server: s(),
                check: Check::ping,
            }),
            readyz_seconds: self.check_seconds.get_or_create_owned(&ServerCheck {
                server: s(),
                check: Check::readyz,
            }),
            failover_closed: self
                .failover_closed
                .get_or_create_owned(&ServerLabel { server: s() }),
        }
    }

    /// Publishes a server's state as a one-hot gauge set.
    pub fn set_state(&self, server: &str, state: &'static str) {
        for st in crate::server::State::ALL {
            let v = i64::from(st.as_str() == state);
            self.server_state
                .get_or_create(&ServerState {
                    server: server.to_string(),
                    state: st.as_str(),
                })
                .set(v);
        }
    }

    /// Counts a change of `server`'s state into `to`.
    pub fn state_transition(&self, server: &str, to: &'static str) {
        self.state_transitions
            .get_or_create(&ServerTransition {
                server: server.to_string(),
                to,
            })
            .inc();
    }

    /// Drops every series of a server that left the set.
    pub fn remove_server(&self, server: &str) {
        let s = || server.to_string();
        self.active.remove(&ServerLabel { server: s() });
        self.connect_seconds.remove(&ServerLabel { server: s() });
        self.failover_closed.remove(&ServerLabel { server: s() });
        for cause in crate::server::Cause::ALL {
            self.health_failures
                .remove(&ServerCause { server: s(), cause });
        }
        for result in [
            ConnectResult::ok,
            ConnectResult::refused,
            ConnectResult::timeout,
            ConnectResult::error,
            ConnectResult::lost_race,
        ] {
            self.connect_attempts.remove(&ServerResult {
                server: s(),
                result,
            });
        }
        for direction in [Direction::to_server, Direction::to_client] {
            self.bytes.remove(&ServerDirection {
                server: s(),
                direction,
            });
        }
        for check in [Check::ping, Check::readyz] {
            self.check_seconds
                .remove(&ServerCheck { server: s(), check });
        }
        for st in crate::server::State::ALL {
            self.server_state.remove(&ServerState {
                server: s(),
                state: st.as_str(),
            });
            self.state_transitions.remove(&ServerTransition {
                server: s(),
                to: st.as_str(),
            });
        }
    }

    pub fn discovery_attempt(&self, result: &'static str) {
        self.discovery_attempts
            .get_or_create(&DiscoveryResult { result })
            .inc();
    }

    pub fn discovery_success_now(&self) {
        self.discovery_last_success.set(unix_now());
    }

    pub fn health_failure(&self, server: &str, cause: crate::server::Cause) {
        self.health_failures
            .get_or_create(&ServerCause {
                server: server.to_string(),
                cause,
            })
            .inc();
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn accept_error(&self, listener: Listener) {
        self.accept_errors
            .get_or_create(&ListenerLabel { listener })
            .inc();
    }

    pub fn timed_out(&self, timeout: TimeoutKind) {
        self.timed_out
            .get_or_create(&TimeoutLabel { timeout })
            .inc();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One server's metric handles, held by its `Backend`.
#[derive(Clone)]
pub struct ServerMetrics {
    pub active: Gauge,
    pub connect_ok: Counter,
    pub connect_refused: Counter,
    pub connect_timeout: Counter,
    pub connect_error: Counter,
    pub connect_lost_race: Counter,
    pub connect_seconds: Histogram,
    pub bytes_to_server: Counter,
    pub bytes_to_client: Counter,
    pub ping_seconds: Histogram,
    pub readyz_seconds: Histogram,
    pub failover_closed: Counter,
}

static SPLICED: LazyLock<Counter> = LazyLock::new(Counter::default);
static PIPES: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// Bytes moved by splice(2) rather than through user space (both directions, all servers):
/// process-wide, as the pipe pool is.
pub fn spliced_bytes() -> &'static Counter {
    &SPLICED
}

/// Pipes open now for splicing, in use or pooled.
pub fn pipes_open() -> &'static Gauge {
    &PIPES
}
