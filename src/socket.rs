//! Socket options, in one place: listeners, client sockets, upstream sockets.
//!
//! Upstream sockets get TCP keepalive and TCP_USER_TIMEOUT so that a silent peer (a host
//! that vanished between two health checks) errors within seconds rather than the kernel's
//! default of minutes; both sides get TCP_NODELAY (apiserver traffic is request/response).
//! Failing to set an option is logged at debug and never fails a connection.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Keepalive probes start after this much silence on an upstream connection…
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// …are repeated this often…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// …and this many unanswered probes kill the connection (5 + 3×2 = 11 s).
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Data unacknowledged this long kills the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening socket with SO_REUSEADDR (a restarted apilb binds at once) and, for IPv6,
/// IPV6_V6ONLY (127.0.0.1:6443 and [::1]:6443 are separate listeners).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

pub fn tune_client(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on client socket");
    }
}

pub fn tune_upstream(s: &TcpStream) {
    let sock = SockRef::from(s);
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let results = [
        sock.set_tcp_nodelay(true),
        sock.set_tcp_keepalive(&ka),
        sock.set_tcp_user_timeout(Some(USER_TIMEOUT)),
    ];
    for r in results {
        if let Err(e) = r {
            tracing::debug!(error = %e, "upstream socket option");
        }
    }
}

/// Makes the next close send RST instead of FIN: used when apilb closes a client connection
/// on purpose (failover), so the client notices at once rather than on its next read.
pub fn reset_on_close(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Shuts down the write side (propagates a half-close).
pub fn shutdown_write(s: &TcpStream) {
    let _ = SockRef::from(s).shutdown(std::net::Shutdown::Write);
}
