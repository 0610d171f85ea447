//! The shared vocabulary of apilb's parts: a server as the operator wrote it
//! ([`ServerSpec`]), its state ([`State`]), where it came from ([`Source`]), why a check
//! failed ([`Cause`]) and how discovery treats the configured servers ([`DiscoveryMode`]).
//!
//! A leaf: it imports nothing of the crate, so the data plane, the control plane, the
//! metrics and the settings can all speak of servers without importing each other.

use std::fmt;

use prometheus_client::encoding::EncodeLabelValue;
use serde::{Deserialize, Serialize};

/// A control plane as the operator wrote it: `host:port`, `[v6]:port` or `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ServerSpec {
    /// Parses `host:port`. Errors are plain text; the caller says where the value came from.
    pub fn parse(s: &str) -> Result<ServerSpec, String> {
        let s = s.trim();
        let s = s
            .strip_prefix("https://")
            .map(|r| r.trim_end_matches('/'))
            .unwrap_or(s);
        if s.is_empty() {
            return Err("empty server address; write HOST:PORT, e.g. 10.0.0.11:6443".into());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: missing `]` in IPv6 address; write [ADDR]:PORT"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("`{s}`: missing port; write [{h}]:6443"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "`{s}`: `{h}` is not an IPv6 address; brackets are for IPv6 only"
                ));
            }
            (h.to_string(), port)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("`{s}`: missing port; write {s}:6443"))?;
            if h.contains(':') {
                return Err(format!(
                    "`{s}`: IPv6 addresses need brackets; write [{h}]:{p}"
                ));
            }
            (h.to_string(), p)
        };
        if host.is_empty() {
            return Err(format!("`{s}`: missing host; write HOST:PORT"));
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.contains(':') && !host.chars().all(name_char) {
            return Err(format!(
                "`{s}`: `{host}` is not a host name or IP address; write HOST:PORT, \
                 e.g. 10.0.0.11:6443"
            ));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}`: port `{port}` is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(format!("`{s}`: port 0 is not allowed"));
        }
        Ok(ServerSpec { host, port })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not checked yet (startup): eligible, but does not make apilb ready.
    Unknown = 0,
    Ready = 1,
    /// Reachable, but /readyz failed: no new connections, existing ones untouched.
    NotReady = 2,
    /// Silent (no answer to PING, connect or handshake): no new connections; existing ones
    /// closed once another server is ready to take them.
    Down = 3,
    /// Said it is leaving (GOAWAY, FIN, reset, refused): no new connections, existing ones
    /// left to the server to finish.
    Draining = 4,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Unknown,
        State::Ready,
        State::NotReady,
        State::Down,
        State::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Ready => "ready",
            State::NotReady => "not_ready",
            State::Down => "down",
            State::Draining => "draining",
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::Ready,
            2 => State::NotReady,
            3 => State::Down,
            4 => State::Draining,
            _ => State::Unknown,
        }
    }
}

/// Where a server in the set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Seed,
    Discovered,
    StateFile,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Seed => "seed",
            Source::Discovered => "discovered",
            Source::StateFile => "state file",
        }
    }
}

/// Why a check failed: the label of `apilb_health_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Cause {
    /// A PING (HTTP/2) or /readyz (HTTP/1.1) unanswered for a whole window. Silence.
    ping_timeout,
    /// TCP connect not done within the health timeout. Silence.
    connect_timeout,
    /// TLS or HTTP/2 handshake not done within the health timeout. Silence.
    handshake_timeout,
    /// No route to the host (nothing answers ARP/NDP). Silence.
    unreachable,
    /// The server sent GOAWAY on the health connection. Speech.
    goaway,
    /// The server closed the health connection (FIN). Speech.
    closed,
    /// The health connection was reset or failed. Speech.
    reset,
    /// The server's kernel refused the connect. Speech.
    refused,
    /// The TLS handshake failed with an answer (certificate, alert).
    tls,
    /// The server answered something apilb cannot read as HTTP.
    protocol,
    /// `/readyz` answered non-2xx (other than 401/403).
    readyz_status,
    /// `/readyz` unanswered within the health timeout while PINGs are answered.
    readyz_timeout,
    /// An answer larger than apilb reads: a response head over hyper's limit, or a
    /// `/readyz` body over 64 KiB. Alive, not judged ready.
    oversized,
}

impl Cause {
    pub const ALL: [Cause; 13] = [
        Cause::ping_timeout,
        Cause::connect_timeout,
        Cause::handshake_timeout,
        Cause::unreachable,
        Cause::goaway,
        Cause::closed,
        Cause::reset,
        Cause::refused,
        Cause::tls,
        Cause::protocol,
        Cause::readyz_status,
        Cause::readyz_timeout,
        Cause::oversized,
    ];

    /// Silence: nobody answers. The only causes that can close pinned connections.
    pub fn is_silence(self) -> bool {
        matches!(
            self,
            Cause::ping_timeout
                | Cause::connect_timeout
                | Cause::handshake_timeout
                | Cause::unreachable
        )
    }

    /// Speech: the server (or its kernel) said it is going.
    pub fn is_leaving(self) -> bool {
        matches!(
            self,
            Cause::goaway | Cause::closed | Cause::reset | Cause::refused
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// Seeds until discovery succeeds, then the discovered set.
    Seed,
    /// Always the seeds; discovery only reports.
    Pin,
}
