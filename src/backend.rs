//! A control plane as apilb knows it (`Backend`): identity, resolved addresses, health state,
//! live-connection count and the cancellation token every client connection pinned to it
//! watches; and the set of them (`Backends`), swapped whole and atomically (ArcSwap) so
//! readers on the accept path never lock.
//!
//! This module records state; it does not decide it (`health` does) and does not choose
//! among servers (`balance` does). The one side effect here is the one the design rests on:
//! a transition to `Down`, or removal from the set, cancels the server's token, which closes
//! every client connection proxied to it at once (O(1) for the health checker; each
//! connection's copy loop selects on the token).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio_util::sync::CancellationToken;

use crate::config::ServerSpec;
use crate::metrics::{Metrics, ServerMetrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not checked yet (startup): eligible, but does not make apilb ready.
    Unknown = 0,
    Ready = 1,
    /// Reachable, but /readyz failed: no new connections, existing ones untouched.
    NotReady = 2,
    /// Unreachable: no new connections, existing ones closed.
    Down = 3,
}

impl State {
    pub const ALL: [State; 4] = [State::Unknown, State::Ready, State::NotReady, State::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Ready => "ready",
            State::NotReady => "not_ready",
            State::Down => "down",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Ready,
            2 => State::NotReady,
            3 => State::Down,
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

/// What happens to the connections of servers that leave the set.
#[derive(Debug, Clone, Copy)]
pub enum Removal {
    /// Closed at once (an operator's reload).
    Close,
    /// Left to finish until the server goes down or the grace ends; no new connections
    /// (the cluster's own list changed: control planes are being replaced, gracefully).
    Drain(Duration),
}

/// What the health checker last saw, for /status.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub reason: String,
    pub since: Option<SystemTime>,
    pub last_check: Option<SystemTime>,
    pub ping_rtt: Option<Duration>,
    pub readyz_latency: Option<Duration>,
    pub readyz_status: Option<u16>,
    pub protocol: Option<&'static str>,
}

pub struct Backend {
    pub spec: ServerSpec,
    /// `host:port` as configured: the label in logs, metrics and /status.
    pub name: String,
    addrs: ArcSwap<Vec<SocketAddr>>,
    state: AtomicU8,
    /// Set when a client connect to it failed; cleared by the next good health check.
    passive_failed: AtomicBool,
    active: AtomicUsize,
    /// Parent of nothing: cloned by each connection at commit, cancelled on `Down`.
    conns: Mutex<CancellationToken>,
    /// Cancelled when apilb stops for good; every per-server token is its child.
    root: CancellationToken,
    /// Cancelled when the server leaves the set: its health checker and resolver stop.
    retired: CancellationToken,
    observed: Mutex<Observed>,
    source: Mutex<Source>,
    /// Removed from the set, its connections left to finish.
    draining: AtomicBool,
    pub metrics: ServerMetrics,
    registry: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data
    // (status text, a token) is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend {
    pub fn new(
        spec: ServerSpec,
        root: &CancellationToken,
        registry: Arc<Metrics>,
        initial: State,
    ) -> Backend {
        let name = spec.to_string();
        let addrs = match spec.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, spec.port)],
            Err(_) => Vec::new(),
        };
        let metrics = registry.for_server(&name);
        registry.set_state(&name, initial.as_str());
        Backend {
            spec,
            name,
            addrs: ArcSwap::from_pointee(addrs),
            state: AtomicU8::new(initial as u8),
            passive_failed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            conns: Mutex::new(root.child_token()),
            root: root.clone(),
            retired: root.child_token(),
            observed: Mutex::new(Observed {
                reason: "not checked yet".into(),
                since: Some(SystemTime::now()),
                ..Observed::default()
            }),
            source: Mutex::new(Source::Seed),
            draining: AtomicBool::new(false),
            metrics,
            registry,
        }
    }

    pub fn source(&self) -> Source {
        *lock(&self.source)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// True when the host is a name (not an IP literal) and must be resolved.
    pub fn needs_resolution(&self) -> bool {
        self.spec.host.parse::<IpAddr>().is_err()
    }

    /// Resolves the host name again; keeps the old addresses when resolution fails.
    pub async fn resolve(&self) -> Result<(), String> {
        if !self.needs_resolution() {
            return Ok(());
        }
        let target = (self.spec.host.as_str(), self.spec.port);
        match tokio::net::lookup_host(target).await {
            Ok(it) => {
                let mut found: Vec<SocketAddr> = it.collect();
                found.dedup();
                if found.is_empty() {
                    return Err(format!("{} resolved to no address", self.spec.host));
                }
                if *self.addrs.load_full() != found {
                    tracing::info!(server = %self.name, addresses = ?found, "resolved");
                    self.addrs.store(Arc::new(found));
                }
                Ok(())
            }
            Err(e) => Err(format!("cannot resolve {}: {e}", self.spec.host)),
        }
    }

    pub fn passive_failed(&self) -> bool {
        self.passive_failed.load(Ordering::Relaxed)
    }

    /// A client connect to this server failed: keep new connections away until a health
    /// check passes again.
    pub fn mark_passive_failure(&self, why: &str) {
        if !self.passive_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(server = %self.name, cause = why,
                "connect failed; no new connections until a health check passes");
        }
    }

    pub fn clear_passive_failure(&self) {
        self.passive_failed.store(false, Ordering::Relaxed);
    }

    /// Moves to `new`, logging the change once with its cause. Entering `Down` closes every
    /// client connection pinned to this server. Returns the previous state.
    pub fn set_state(&self, new: State, reason: &str) -> State {
        let old = State::from_u8(self.state.swap(new as u8, Ordering::AcqRel));
        {
            let mut o = lock(&self.observed);
            o.reason = reason.to_string();
            if old != new {
                o.since = Some(SystemTime::now());
            }
        }
        if old == new {
            return old;
        }
        self.registry.set_state(&self.name, new.as_str());
        let (from, to) = (old.as_str(), new.as_str());
        match new {
            State::Ready => {
                tracing::info!(server = %self.name, from, to, cause = reason, "server state changed")
            }
            State::Down => {
                let open = self.active();
                tracing::warn!(server = %self.name, from, to, cause = reason,
                    closing_connections = open, "server state changed");
                self.close_connections();
            }
            _ => {
                tracing::warn!(server = %self.name, from, to, cause = reason, "server state changed")
            }
        }
        old
    }

    /// Cancels the token every connection pinned here watches, and installs a fresh one for
    /// connections made from now on.
    fn close_connections(&self) {
        let old = std::mem::replace(&mut *lock(&self.conns), self.root.child_token());
        old.cancel();
    }

    /// The token a connection committed to this server watches.
    pub fn conn_token(&self) -> CancellationToken {
        lock(&self.conns).clone()
    }

    pub fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    /// Removes the server: its checker stops and its connections close.
    pub fn retire(&self) {
        self.retired.cancel();
        tracing::info!(server = %self.name, closing_connections = self.active(),
            "server removed from the set");
        self.close_connections();
        self.registry.remove_server(&self.name);
    }

    pub fn observe(&self, f: impl FnOnce(&mut Observed)) {
        f(&mut lock(&self.observed));
    }

    pub fn observed(&self) -> Observed {
        lock(&self.observed).clone()
    }

    /// Counts a connection (attempt or established) against this server until dropped.
    pub fn claim(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        ConnGuard {
            backend: self.clone(),
        }
    }
}

/// One connection counted against a server (least-connections reads the count).
pub struct ConnGuard {
    pub backend: Arc<Backend>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        self.backend.metrics.active.dec();
    }
}

/// The current set of servers. Replaced whole; readers take a snapshot without locking.
pub struct Backends {
    current: ArcSwap<Vec<Arc<Backend>>>,
    /// Servers removed from the set whose connections are still finishing.
    draining: Arc<Mutex<Vec<Arc<Backend>>>>,
    root: CancellationToken,
    metrics: Arc<Metrics>,
}

pub struct Change {
    pub added: Vec<Arc<Backend>>,
    pub removed: Vec<Arc<Backend>>,
}

impl Backends {
    pub fn new(root: CancellationToken, metrics: Arc<Metrics>) -> Backends {
        Backends {
            current: ArcSwap::from_pointee(Vec::new()),
            draining: Arc::new(Mutex::new(Vec::new())),
            root,
            metrics,
        }
    }

    pub fn snapshot(&self) -> Guard<Arc<Vec<Arc<Backend>>>> {
        self.current.load()
    }

    /// Servers removed but still finishing their connections.
    pub fn draining(&self) -> Vec<Arc<Backend>> {
        lock(&self.draining).clone()
    }

    /// Makes `specs` the set: servers that stay keep their state and connections; new ones
    /// start unknown in the first set and not ready afterwards (they take traffic once a
    /// health check passes); removed ones are closed or drained as `removal` says.
    pub fn replace(&self, specs: &[(ServerSpec, Source)], removal: Removal) -> Change {
        let old = self.current.load_full();
        let initial = if old.is_empty() {
            State::Unknown
        } else {
            State::NotReady
        };
        let mut next = Vec::with_capacity(specs.len());
        let mut added = Vec::new();
        for (spec, source) in specs {
            let back_from_drain = {
                let mut d = lock(&self.draining);
                d.iter()
                    .position(|b| &b.spec == spec)
                    .map(|i| d.swap_remove(i))
            };
            let b = match (old.iter().find(|b| &b.spec == spec), back_from_drain) {
                (Some(b), _) => b.clone(),
                (None, Some(b)) => {
                    b.draining.store(false, Ordering::Relaxed);
                    b
                }
                (None, None) => {
                    let b = Arc::new(Backend::new(
                        spec.clone(),
                        &self.root,
                        self.metrics.clone(),
                        initial,
                    ));
                    if initial == State::NotReady {
                        b.observe(|o| o.reason = "new: waiting for its first health checks".into());
                    }
                    added.push(b.clone());
                    b
                }
            };
            *lock(&b.source) = *source;
            next.push(b);
        }
        let removed: Vec<Arc<Backend>> = old
            .iter()
            .filter(|b| !specs.iter().any(|(s, _)| s == &b.spec))
            .cloned()
            .collect();
        self.current.store(Arc::new(next));
        for b in &removed {
            match removal {
                Removal::Close => b.retire(),
                Removal::Drain(grace) => self.drain(b.clone(), grace),
            }
        }
        Change { added, removed }
    }

    /// No new connections (it left the set); existing ones run until the server goes down,
    /// they all end, or `grace` passes. Then the server is retired.
    fn drain(&self, b: Arc<Backend>, grace: Duration) {
        b.draining.store(true, Ordering::Relaxed);
        tracing::info!(server = %b.name, open_connections = b.active(),
            grace = %humantime::format_duration(grace), "server left the set: draining");
        lock(&self.draining).push(b.clone());
        let list = self.draining.clone();
        tokio::spawn(async move {
            let down = b.conn_token();
            let deadline = tokio::time::sleep(grace);
            tokio::pin!(deadline);
            // Connections ending is not signalled; look once a second.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    () = down.cancelled() => break,
                    _ = tick.tick() => if b.active() == 0 { break },
                }
                if !b.is_draining() {
                    return; // back in the set
                }
            }
            if b.is_draining() {
                lock(&list).retain(|x| !Arc::ptr_eq(x, &b));
                b.retire();
            }
        });
    }

    pub fn any_ready(&self) -> bool {
        self.snapshot().iter().any(|b| b.state() == State::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ServerSpec {
        ServerSpec::parse(s).unwrap()
    }

    #[test]
    fn down_cancels_pinned_connections_and_installs_a_fresh_token() {
        let root = CancellationToken::new();
        let b = Backend::new(
            spec("127.0.0.2:1"),
            &root,
            Arc::new(Metrics::new()),
            State::Unknown,
        );
        let pinned = b.conn_token();
        b.set_state(State::NotReady, "readyz 500");
        assert!(
            !pinned.is_cancelled(),
            "not-ready must leave connections alone"
        );
        b.set_state(State::Down, "ping timeout");
        assert!(pinned.is_cancelled());
        assert!(!b.conn_token().is_cancelled());
    }

    #[test]
    fn replace_keeps_survivors_and_retires_the_removed() {
        let root = CancellationToken::new();
        let set = Backends::new(root, Arc::new(Metrics::new()));
        let seed = |s: &str| (spec(s), Source::Seed);
        set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.3:1")], Removal::Close);
        let first = set.snapshot()[0].clone();
        let second = set.snapshot()[1].clone();
        let pinned = second.conn_token();
        first.set_state(State::Ready, "ok");
        let ch = set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.4:1")], Removal::Close);
        assert_eq!(ch.added.len(), 1);
        assert_eq!(ch.removed.len(), 1);
        assert!(Arc::ptr_eq(&set.snapshot()[0], &first));
        assert_eq!(set.snapshot()[0].state(), State::Ready);
        assert!(pinned.is_cancelled());
        assert!(second.retired().is_cancelled());
        // Added later: not eligible until its health checks pass.
        assert_eq!(set.snapshot()[1].state(), State::NotReady);
    }

    #[tokio::test]
    async fn drained_servers_keep_connections_until_they_end() {
        let root = CancellationToken::new();
        let set = Backends::new(root, Arc::new(Metrics::new()));
        let seed = |s: &str| (spec(s), Source::Seed);
        set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.3:1")], Removal::Close);
        let leaving = set.snapshot()[1].clone();
        let conn = leaving.claim();
        let pinned = leaving.conn_token();
        set.replace(
            &[seed("127.0.0.2:1")],
            Removal::Drain(Duration::from_secs(3600)),
        );
        assert_eq!(set.snapshot().len(), 1, "no new connections to it");
        assert!(!pinned.is_cancelled(), "its connection stays");
        assert!(leaving.is_draining());
        assert_eq!(set.draining().len(), 1);
        drop(conn);
        leaving.retired().cancelled().await;
        assert!(set.draining().is_empty());
    }

    #[test]
    fn guard_counts() {
        let root = CancellationToken::new();
        let b = Arc::new(Backend::new(
            spec("127.0.0.2:1"),
            &root,
            Arc::new(Metrics::new()),
            State::Unknown,
        ));
        let g1 = b.claim();
        let g2 = b.claim();
        assert_eq!(b.active(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.active(), 0);
    }
}
