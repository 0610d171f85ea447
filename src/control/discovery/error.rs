//! Why a discovery step failed, one type for the whole subsystem. Each variant's message is
//! what the log and `/status` (`last_error`) show; `result` is the metric label. It names
//! failures only; it never decides what to do about them.

use std::net::SocketAddr;

/// Why a discovery step failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery kubeconfig, or a file it names, is unusable (the message names it).
    #[error("{0}")]
    Credentials(String),
    /// An API answer is not the shape asked for.
    #[error("{0}")]
    Parse(String),
    /// The state file is unreadable, or cannot be written.
    #[error("{0}")]
    StateFile(String),
    /// The server asked has no resolved address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The name to verify the server against is not a TLS server name.
    #[error("`{name}` is not a TLS server name: {reason}")]
    ServerName { name: String, reason: String },
    /// The TCP connection to the server failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake with the server failed.
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, request).
    #[error("{0}")]
    Http(String),
    /// The answer's body could not be read (or is over the limit).
    #[error("reading the answer: {0}")]
    Body(String),
    /// No answer within the request timeout.
    #[error("{path} on {addr}: no answer within 5s")]
    Timeout { path: String, addr: SocketAddr },
    /// The apiserver refused the credentials.
    #[error("the discovery credentials were refused (401)")]
    Unauthorized,
    /// The apiserver answered a status discovery does not expect.
    #[error("{api}: the apiserver answered {code}")]
    Status { api: &'static str, code: u16 },
    /// No server in the set to ask.
    #[error("no server to ask")]
    NoServer,
    /// The answer lists no ready server.
    #[error("the {api} `kubernetes` lists no ready server")]
    Empty { api: &'static str },
}

impl DiscoveryError {
    /// The `result` label of the discovery attempts metric.
    pub fn result(&self) -> &'static str {
        match self {
            DiscoveryError::Empty { .. } => "empty",
            _ => "error",
        }
    }
}
