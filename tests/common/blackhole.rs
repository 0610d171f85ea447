//! A kernel blackhole for the failover tests: iptables DROP rules for one TCP address, in a
//! chain of its own hooked into INPUT, removed on drop. Owns the iptables rules only.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static CHAIN_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A kernel blackhole: every packet to or from a TCP address is silently dropped (iptables
/// DROP in INPUT, in a chain of its own). Removed on drop.
pub struct Blackhole {
    chain: String,
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Blackhole {
    pub fn new(target: SocketAddr) -> Blackhole {
        let chain = format!(
            "APILB-T{}-{}",
            std::process::id(),
            CHAIN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (ip, port) = (target.ip().to_string(), target.port().to_string());
        assert!(
            iptables(&["-N", &chain]),
            "iptables is needed for the blackhole tests (run as root, with iptables installed)"
        );
        let bh = Blackhole { chain };
        let c = bh.chain.as_str();
        assert!(iptables(&[
            "-A", c, "-p", "tcp", "-d", &ip, "--dport", &port, "-j", "DROP"
        ]));
        assert!(iptables(&[
            "-A", c, "-p", "tcp", "-s", &ip, "--sport", &port, "-j", "DROP"
        ]));
        assert!(iptables(&["-I", "INPUT", "-j", c]));
        bh
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let c = self.chain.as_str();
        iptables(&["-D", "INPUT", "-j", c]);
        iptables(&["-F", c]);
        iptables(&["-X", c]);
    }
}
