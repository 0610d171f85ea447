//! A kernel blackhole for the failover tests and the soak: iptables DROP rules for one TCP
//! address, both ways, in a chain of its own hooked into INPUT (loopback packets pass INPUT
//! both ways), removed on drop. Owns the iptables rules only.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static CHAIN_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A kernel blackhole: every packet to or from a TCP address is silently dropped (iptables
/// DROP in INPUT, in a chain of its own). Removed on drop.
pub struct Blackhole {
    chain: String,
}

/// Runs `iptables` (waiting up to 5 s for its lock); the error names the command and says
/// what iptables said.
pub fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Blackhole {
    /// A blackhole in a chain named after this test process; panics if iptables fails.
    pub fn new(target: SocketAddr) -> Blackhole {
        let chain = format!(
            "APILB-T{}-{}",
            std::process::id(),
            CHAIN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Blackhole::in_chain(target, chain).unwrap_or_else(|e| {
            panic!(
                "{e}; iptables is needed for the blackhole tests (run as root, with iptables installed)"
            )
        })
    }

    /// A blackhole in the chain `chain` (created here; it must not exist yet). On an error,
    /// whatever was made is removed again.
    pub fn in_chain(target: SocketAddr, chain: String) -> Result<Blackhole, String> {
        iptables(&["-N", &chain])?;
        let bh = Blackhole { chain };
        let (ip, port) = (target.ip().to_string(), target.port().to_string());
        let c = bh.chain.as_str();
        iptables(&[
            "-A", c, "-p", "tcp", "-d", &ip, "--dport", &port, "-j", "DROP",
        ])?;
        iptables(&[
            "-A", c, "-p", "tcp", "-s", &ip, "--sport", &port, "-j", "DROP",
        ])?;
        iptables(&["-I", "INPUT", "-j", c])?;
        Ok(bh)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let c = self.chain.as_str();
        let _ = iptables(&["-D", "INPUT", "-j", c]);
        let _ = iptables(&["-F", c]);
        let _ = iptables(&["-X", c]);
    }
}
