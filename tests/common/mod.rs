//! Test harness, one job per file: the PKI made at test time (`pki`), stand-in apiservers
//! (`standin`), the `apilb run` process whose JSON log lines are events the tests wait on
//! (`apilb`), small TLS clients (`client`), traffic held in flight (`streams`), kernel
//! blackholes (`blackhole`), delaying relays (`relay`) and the run-every-suggested-fix check
//! (`fixes`). Everything a test starts or creates is stopped or removed on drop. Test files
//! `use common::*;`: everything is re-exported here but `fixes`, which only the
//! `suggested_fixes*` tests use, as `common::fixes::*`.
#![allow(dead_code)]

mod apilb;
mod blackhole;
mod client;
pub mod fixes;
mod pki;
mod relay;
mod standin;
mod streams;

use std::net::{SocketAddr, TcpListener};

/// kill(2): sends `sig` to `pid`; 0 or -1, as kill(2) returns.
pub fn send_signal(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes two integers and no pointer; a wrong pid or signal is an error
    // return, not undefined behaviour.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig)
    }
}

// Each test binary uses a part of the harness: the re-exports it leaves unused are fine.
#[allow(unused_imports)]
pub use self::{apilb::*, blackhole::*, client::*, pki::*, relay::*, standin::*, streams::*};

/// A port free on every one of `ips` (control planes share the apiserver port).
pub fn free_port_on_all(ips: &[[u8; 4]]) -> u16 {
    for _ in 0..50 {
        let port = free_port(ips[0]).port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::from((*ip, port))).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A free TCP port on `ip` (bound and released; the OS will not hand it out again soon).
pub fn free_port(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    l.local_addr().unwrap()
}
