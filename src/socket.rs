//! Socket options, in one place: listeners, client sockets, upstream sockets.
//!
//! Upstream sockets get TCP keepalive and TCP_USER_TIMEOUT so that a silent peer (a host
//! that vanished between two health checks) errors within seconds rather than the kernel's
//! default of minutes; both sides get TCP_NODELAY (apiserver traffic is request/response).
//! Failing to set an option is logged at debug and never fails a connection.
//!
//! Options cost a system call each, per connection: client sockets inherit TCP_NODELAY from
//! their listener (set once there), and upstream sockets get five (no TCP_KEEPCNT: under
//! TCP_USER_TIMEOUT the kernel closes a keepalive-probed connection by the user timeout,
//! not by the probe count).

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpStream;

/// Keepalive probes start after this much silence on an upstream connection…
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// …are repeated this often…
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// …and the first probe to go out once the peer has been silent this long kills the
/// connection (probes at 5, 7, 9, 11 s: closed at 11 s); so does data unacknowledged this
/// long. With TCP_USER_TIMEOUT set the kernel ignores TCP_KEEPCNT, so it is not set.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening socket with SO_REUSEADDR (a restarted apilb binds at once, whatever is left
/// in TIME_WAIT) and, for IPv6, IPV6_V6ONLY (127.0.0.1:6443 and [::1]:6443 are separate
/// listeners). Exclusive unless `reuse_port`: with SO_REUSEPORT any process of the same
/// user that also sets it could bind the same address and take a share of kubelet's
/// connections, so it is set only for an explicit handover (`--reuse-port`, on both the old
/// and the new apilb).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    nodelay_for_accepted(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// TCP_NODELAY on a listener: Linux copies it into every socket the listener accepts, so
/// client connections need no option call of their own.
fn nodelay_for_accepted(listener: &Socket) {
    if let Err(e) = listener.set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on listener");
    }
}

pub fn tune_upstream(s: &TcpStream) {
    let sock = SockRef::from(s);
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
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

/// Listening sockets passed by a supervisor (systemd socket activation, sd_listen_fds(3):
/// `LISTEN_FDS` descriptors from 3, for this process only if `LISTEN_PID` is its pid). They
/// outlive apilb, so a restart refuses no connection: new ones wait in the kernel's queue.
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are unset whatever they said, so nothing
/// started later takes them for its own; call this before any thread starts.
pub fn inherited() -> Vec<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let for_us =
        std::env::var("LISTEN_PID").is_ok_and(|pid| pid.trim() == std::process::id().to_string());
    let count = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let n: i32 = match count.and_then(|v| v.trim().parse().ok()) {
        Some(n) if for_us && n > 0 => n,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    // LISTEN_FDS comes from the environment: a huge count must not overflow the range.
    for fd in 3..n.saturating_add(3) {
        // SAFETY: F_GETFD takes no pointer and only reads the descriptor's flags; on a
        // descriptor that is not open it fails with EBADF and touches nothing.
        #[allow(unsafe_code)]
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            tracing::warn!(
                listen_fds = n,
                fd,
                "LISTEN_FDS counts more descriptors than are open; the rest are ignored"
            );
            break;
        }
        // SAFETY: the supervisor hands these descriptors to this process (sd_listen_fds
        // protocol), the descriptor is open (checked above), and nothing else in the process
        // owns it: each is taken once, here, and LISTEN_FDS is removed from the environment.
        #[allow(unsafe_code)]
        let sock = unsafe { Socket::from_raw_fd(fd) };
        let is_listener = sock.r#type().ok() == Some(Type::STREAM)
            && matches!(sock.domain(), Ok(d) if d == Domain::IPV4 || d == Domain::IPV6)
            && sock.is_listener().unwrap_or(false);
        if !is_listener {
            tracing::warn!(
                fd,
                "inherited descriptor is not a listening TCP socket; ignored"
            );
            std::mem::forget(sock);
            continue;
        }
        let _ = sock.set_cloexec(true);
        out.push(sock.into());
    }
    out
}

/// The listener for `addr` (non-blocking): an inherited socket bound there, or a new one
/// (`listen`).
pub fn take_or_listen(
    addr: SocketAddr,
    inherited: &mut Vec<std::net::TcpListener>,
    reuse_port: bool,
) -> std::io::Result<std::net::TcpListener> {
    if let Some(i) = inherited
        .iter()
        .position(|l| l.local_addr().ok() == Some(addr))
    {
        let l = inherited.swap_remove(i);
        l.set_nonblocking(true)?;
        nodelay_for_accepted(&SockRef::from(&l));
        tracing::info!(%addr, "serving on an inherited socket (socket activation)");
        return Ok(l);
    }
    listen(addr, reuse_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn with_reuse_port_a_second_instance_can_bind_while_the_first_drains() {
        let first = listen("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let first = TcpListener::from_std(first).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen(addr, true).expect("SO_REUSEPORT on both lets the new process bind");
        let second = TcpListener::from_std(second).unwrap();
        drop(first);
        let c = TcpStream::connect(addr).await.unwrap();
        let (_s, peer) = second.accept().await.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
    }

    #[test]
    fn the_bind_is_exclusive_unless_both_share() {
        let first = listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = first.local_addr().unwrap();
        for reuse_port in [false, true] {
            let e = listen(addr, reuse_port).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{reuse_port}");
        }
        let shared = listen("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let e = listen(shared.local_addr().unwrap(), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
    }

    /// Client sockets get TCP_NODELAY from their listener, not from a call of their own.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l =
            TcpListener::from_std(listen("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.nodelay().unwrap());
        drop((c, s));
        // Not the default: a plain listener's accepted sockets have it off.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = plain.accept().await.unwrap();
        assert!(!s.nodelay().unwrap());
    }

    /// Keepalive without TCP_KEEPCNT (redundant under TCP_USER_TIMEOUT).
    #[tokio::test]
    async fn upstream_options() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune_upstream(&c);
        let s = SockRef::from(&c);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    #[test]
    fn a_port_held_without_reuseport_is_an_error() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listen(other.local_addr().unwrap(), true).is_err());
    }
}
