//! A control plane as apilb knows it (`Backend`): identity, resolved addresses, health state,
//! live-connection count and the cancellation token every client connection pinned to it
//! watches; and the set of them (`Backends`), swapped whole and atomically (ArcSwap) so
//! readers on the accept path never lock.
//!
//! This module records state; it does not decide it (`judge` does, from what `health` sees)
//! and does not choose among servers (`balance` does). The one side effect here is the one
//! the design rests on: cancelling a server's token closes every client connection proxied
//! to it at once (O(1) for the health checker; each connection's copy loop selects on the
//! token). That happens in two cases only:
//! * the server went **silent** (`Down`) *and* another ready server has since answered a
//!   PING on time, asked after the silence began (`Backends::silent`, `Backends::answered`):
//!   closing needs somewhere to go, and a network hiccup on every path is not a dead server;
//! * the server was removed from the set by the operator (`retire`).
//!
//! A server that *says* it is leaving (`Draining`, `NotReady`) keeps its connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ServerMetrics};
use crate::server::ServerSpec;
pub use crate::server::{Source, State};

/// Why a server's host name could not be resolved again (its last addresses are kept).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
}

/// What a client connection saw a server fail at (passive failover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveFailure {
    /// The TCP connect failed, timed out, or lost a connect race.
    Connect,
    /// Connected, but no answer to a complete ClientHello within `--first-byte-timeout`.
    FirstByteTimeout,
    /// Connected, then closed or reset before answering the client.
    ClosedBeforeAnswer,
    /// Connected, but writing the client's bytes to it failed.
    WriteFailed,
}

impl PassiveFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            PassiveFailure::Connect => "connect",
            PassiveFailure::FirstByteTimeout => "first_byte_timeout",
            PassiveFailure::ClosedBeforeAnswer => "closed_before_answer",
            PassiveFailure::WriteFailed => "write_failed",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            PassiveFailure::Connect => "connect failed",
            PassiveFailure::FirstByteTimeout => "no answer to a client's hello in time",
            PassiveFailure::ClosedBeforeAnswer => "closed a client connection before answering",
            PassiveFailure::WriteFailed => "could not take a client's bytes",
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

/// A server's current silence: since when, and whether its connections were closed for it
/// (once per silence).
#[derive(Debug, Default, Clone, Copy)]
struct Silence {
    since: Option<Instant>,
    closed: bool,
}

/// How far before a silence began a witness's own PINGs must all have been on time.
const WITNESS_LOOKBACK: Duration = Duration::from_secs(2);

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
    /// Set when a client connect to it failed or it lost a first-byte race; cleared by the
    /// next good health check made after that.
    passive_failed: AtomicBool,
    passive_failed_at: Mutex<Option<Instant>>,
    /// Since when it has been silent, and whether its connections were closed for it.
    silence: Mutex<Silence>,
    /// When the newest PING it answered on time was sent.
    answered_on_time: Mutex<Option<Instant>>,
    /// When the newest PING it answered late, or not within its window, was sent.
    late: Mutex<Option<Instant>>,
    active: AtomicUsize,
    /// Parent of nothing: cloned by each connection at commit; cancelled to close them all.
    conns: Mutex<CancellationToken>,
    /// Cancelled when apilb stops for good; every per-server token is its child.
    root: CancellationToken,
    /// Cancelled when the server leaves the set: its health checker and resolver stop.
    retired: CancellationToken,
    observed: Mutex<Observed>,
    source: Mutex<Source>,
    /// Removed from the set, its connections left to finish.
    removed: AtomicBool,
    pub metrics: ServerMetrics,
    registry: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data
    // (status text, a token) is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            passive_failed_at: Mutex::new(None),
            silence: Mutex::new(Silence::default()),
            answered_on_time: Mutex::new(None),
            late: Mutex::new(None),
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
            removed: AtomicBool::new(false),
            metrics,
            registry,
        }
    }

    pub fn source(&self) -> Source {
        *lock(&self.source)
    }

    /// Removed from the set (by discovery), its connections finishing.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
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
    pub async fn resolve(&self) -> Result<(), ResolveError> {
        if !self.needs_resolution() {
            return Ok(());
        }
        let target = (self.spec.host.as_str(), self.spec.port);
        match tokio::net::lookup_host(target).await {
            Ok(it) => {
                let mut found: Vec<SocketAddr> = it.collect();
                found.dedup();
                if found.is_empty() {
                    return Err(ResolveError::NoAddress {
                        host: self.spec.host.clone(),
                    });
                }
                if *self.addrs.load_full() != found {
                    tracing::info!(server = %self.name, addresses = ?found, "resolved");
                    self.addrs.store(Arc::new(found));
                }
                Ok(())
            }
            Err(source) => Err(ResolveError::Lookup {
                host: self.spec.host.clone(),
                source,
            }),
        }
    }

    pub fn passive_failed(&self) -> bool {
        self.passive_failed.load(Ordering::Relaxed)
    }

    /// A client connect to this server failed, or it did not answer a client in time: keep
    /// new connections away until a health check passes again. Logged once per failure
    /// spell, with what failed (`failure`, typed) and the detail (`cause`).
    pub fn mark_passive_failure(&self, failure: PassiveFailure, why: &str) {
        *lock(&self.passive_failed_at) = Some(Instant::now());
        if !self.passive_failed.swap(true, Ordering::Relaxed) {
            tracing::warn!(server = %self.name, failure = failure.as_str(), cause = why,
                "{}; no new connections until a health check passes", failure.describe());
        }
    }

    /// A health check asked at `asked` passed: a passive failure seen before then is over.
    pub fn clear_passive_failure(&self, asked: Instant) {
        let mut at = lock(&self.passive_failed_at);
        if at.is_none_or(|t| t <= asked) {
            *at = None;
            self.passive_failed.store(false, Ordering::Relaxed);
        }
    }

    /// Moves to `new`, logging the change once with its cause. Returns the previous state.
    /// Closes nothing: closing the connections of a silent server is `Backends::silent`'s
    /// call.
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
        self.registry.state_transition(&self.name, new.as_str());
        let (from, to) = (old.as_str(), new.as_str());
        self.registry.transitions.push(&self.name, from, to, reason);
        match new {
            State::Ready => {
                tracing::info!(server = %self.name, from, to, cause = reason, "server state changed");
            }
            _ => {
                tracing::warn!(server = %self.name, from, to, cause = reason, "server state changed");
            }
        }
        old
    }

    /// Cancels the token every connection pinned here watches, and installs a fresh one for
    /// connections made from now on.
    pub fn close_connections(&self) {
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

    /// Whether this server proves the path to the control planes works for a silence that
    /// began at `since`: it is ready, it answered on time a PING asked after `since`, and no
    /// PING of its own asked from `WITNESS_LOOKBACK` before `since` on was late. A delay on
    /// every path makes every server late together, and when it ends the first on-time answer
    /// of one server can come before the late answer of another still in the pipe: such a
    /// server is no witness.
    fn witnesses(&self, since: Instant) -> bool {
        let answered = lock(&self.answered_on_time).is_some_and(|a| a > since);
        let clean = lock(&self.late).is_none_or(|l| l + WITNESS_LOOKBACK < since);
        self.state() == State::Ready && answered && clean
    }

    /// Counts a failed health observation by cause.
    pub fn count_failure(&self, cause: crate::server::Cause) {
        self.registry.health_failure(&self.name, cause);
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
    removed: Arc<Mutex<Vec<Arc<Backend>>>>,
    root: CancellationToken,
    metrics: Arc<Metrics>,
    /// Panic mode: no server in the set is ready or unchecked. Changed, logged and exported
    /// (`apilb_panic_mode`) here, when a state or the set changes, never by a client.
    panic: AtomicBool,
}

pub struct Change {
    pub added: Vec<Arc<Backend>>,
    pub removed: Vec<Arc<Backend>>,
}

impl Backends {
    pub fn new(root: CancellationToken, metrics: Arc<Metrics>) -> Backends {
        Backends {
            current: ArcSwap::from_pointee(Vec::new()),
            removed: Arc::new(Mutex::new(Vec::new())),
            root,
            metrics,
            panic: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> Guard<Arc<Vec<Arc<Backend>>>> {
        self.current.load()
    }

    /// Servers removed but still finishing their connections.
    pub fn removed(&self) -> Vec<Arc<Backend>> {
        lock(&self.removed).clone()
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
                let mut d = lock(&self.removed);
                d.iter()
                    .position(|b| &b.spec == spec)
                    .map(|i| d.swap_remove(i))
            };
            let b = match (old.iter().find(|b| &b.spec == spec), back_from_drain) {
                (Some(b), _) => b.clone(),
                (None, Some(b)) => {
                    b.removed.store(false, Ordering::Relaxed);
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
        self.note_panic_mode();
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
        b.removed.store(true, Ordering::Relaxed);
        tracing::info!(server = %b.name, open_connections = b.active(),
            grace = %humantime::format_duration(grace), "server left the set: draining");
        lock(&self.removed).push(b.clone());
        let list = self.removed.clone();
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
                if !b.is_removed() {
                    return; // back in the set
                }
            }
            if b.is_removed() {
                lock(&list).retain(|x| !Arc::ptr_eq(x, &b));
                b.retire();
            }
        });
    }

    /// Moves `b` to `new` (`Backend::set_state`) and notes whether the set entered or left
    /// panic mode. Returns the previous state.
    pub fn set_state(&self, b: &Backend, new: State, reason: &str) -> State {
        let old = b.set_state(new, reason);
        if old != new {
            self.note_panic_mode();
        }
        old
    }

    /// Panic mode is on while no server in the set is ready or unchecked (a set with no
    /// servers is not in panic: there is nothing to try). Logged once when entered or left.
    fn note_panic_mode(&self) {
        let set = self.snapshot();
        let panic = !set.is_empty()
            && !set
                .iter()
                .any(|b| matches!(b.state(), State::Ready | State::Unknown));
        if self.panic.swap(panic, Ordering::AcqRel) != panic {
            self.metrics.panic_mode.set(i64::from(panic));
            if panic {
                tracing::warn!("no server is ready: panic mode, trying every server");
            } else {
                tracing::info!("a server is ready again: panic mode over");
            }
        }
    }

    pub fn in_panic_mode(&self) -> bool {
        self.panic.load(Ordering::Acquire)
    }

    pub fn any_ready(&self) -> bool {
        self.snapshot().iter().any(|b| b.state() == State::Ready)
    }

    /// `b` went silent at `since` and is down. Its pinned connections are closed now if
    /// another ready server has answered a PING on time that was asked after `since`;
    /// otherwise they are kept until one does (`answered`) or `b` speaks again (`spoke`).
    /// Closing into a set where nothing is known to be alive helps no client, and a delay on
    /// every path looks like silence on every server at once.
    pub fn silent(&self, b: &Arc<Backend>, since: Instant) {
        let since = {
            let mut s = lock(&b.silence);
            if s.closed {
                return;
            }
            *s.since.get_or_insert(since)
        };
        let witness = self
            .snapshot()
            .iter()
            .find(|other| !Arc::ptr_eq(other, b) && other.witnesses(since))
            .map(|other| other.name.clone());
        match witness {
            Some(w) => Self::close_silent(b, &w),
            None => tracing::debug!(server = %b.name, open_connections = b.active(),
                "silent, but no other server has answered since: keeping its connections \
                 until one does"),
        }
    }

    /// `b` answered on time a PING asked at `asked`: it is live, and every silent server whose
    /// silence began before `asked` can now have its connections closed (if `b` is ready).
    pub fn answered(&self, b: &Arc<Backend>, asked: Instant) {
        *lock(&b.silence) = Silence::default();
        {
            let mut a = lock(&b.answered_on_time);
            if a.is_none_or(|t| t < asked) {
                *a = Some(asked);
            }
        }
        for other in self.snapshot().iter() {
            if Arc::ptr_eq(other, b) || other.state() != State::Down {
                continue;
            }
            let s = *lock(&other.silence);
            if !s.closed && s.since.is_some_and(|since| b.witnesses(since)) {
                Self::close_silent(other, &b.name);
            }
        }
    }

    /// `b` answered a PING asked at `asked` late, or let it go past its window.
    pub fn late(&self, b: &Backend, asked: Instant) {
        let mut l = lock(&b.late);
        if l.is_none_or(|t| t < asked) {
            *l = Some(asked);
        }
    }

    /// `b` answered (a connect, a handshake, a late PING): not silent any more, so nothing
    /// pending is closed.
    pub fn spoke(&self, b: &Backend) {
        *lock(&b.silence) = Silence::default();
    }

    fn close_silent(b: &Backend, witness: &str) {
        lock(&b.silence).closed = true;
        let open = b.active();
        if open > 0 {
            tracing::warn!(server = %b.name, closing_connections = open, answered = witness,
                "closing the connections of a silent server; another server is answering");
        }
        b.close_connections();
    }
}

#[cfg(test)]
mod tests;
