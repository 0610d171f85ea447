//! Listeners and the per-connection path: where a client connection is accepted, handed a
//! server (`balance` orders, `connect` races) and copied (`copy`), until it ends or its
//! server's token closes it.
//!
//! A connection is *silent* from its accept until its first flight is complete (a whole
//! TLS ClientHello, `hello`; or any first bytes that are not TLS): no server is connected
//! for it before that, so an idle or stalled client costs no server anything and cannot get
//! a server judged. A silent connection is closed after `client_hello_timeout`, and, at
//! `max_connections`, the oldest silent one is closed to make room for the new one, so a
//! flood of connections that never speak cannot lock out a client that speaks at once
//! (kubelet). Both are counted (`apilb_connections_rejected_total{reason}`).
//!
//! Holds under faults: beyond `max_connections`, with no silent connection to close, new
//! clients are closed and counted; accept errors (EMFILE and friends) back off; every log
//! line a client can cause is rate-limited (`log_limit`), saying how many were held back; a
//! connection one side has half-closed, or (if asked) one idle too long, is reset on both
//! sides and counted (`copy::Timeouts`); on shutdown the accept loops stop and `drain` waits
//! for live connections up to the grace.

pub mod balance;
pub mod connect;
pub mod copy;
pub mod hello;
pub mod splice;
pub mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::backend::Backends;
use crate::log_limit::LogLimit;
use crate::metrics::{Listener, Metrics, RejectReason, TimeoutKind};
use crate::socket;
use connect::RaceSettings;
use copy::{Ended, TimedOut, Timeouts};
use hello::Progress;

/// Per-kind limits of the log lines a client can cause.
#[derive(Default)]
struct LogLimits {
    accept_error: LogLimit,
    connection_limit: LogLimit,
    local_resources: LogLimit,
    no_server: LogLimit,
    hello_timeout: LogLimit,
    evicted: LogLimit,
}

/// Connections that have not yet sent their first flight, oldest first (by id), each with
/// the token that closes it.
#[derive(Default)]
struct Silent {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Silent {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock().insert(id, token.clone());
        (id, token)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest silent connection; false if there is none.
    fn evict_oldest(&self) -> bool {
        match self.lock().pop_first() {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Deregisters a silent connection however its wait ends.
struct SilentGuard<'a> {
    silent: &'a Silent,
    id: u64,
}

impl Drop for SilentGuard<'_> {
    fn drop(&mut self) {
        self.silent.remove(self.id);
    }
}

/// A client's first flight: the bytes read before any server is connected, and whether
/// they are a complete TLS ClientHello (which a live server always answers, so a server
/// silent after it may be raced against another).
struct FirstFlight {
    bytes: Vec<u8>,
    complete_hello: bool,
}

pub struct Proxy {
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    pub race: RaceSettings,
    pub max_connections: usize,
    /// When a connection that stopped moving is closed.
    pub timeouts: Timeouts,
    /// Every live client connection is a task of this tracker.
    pub tracker: TaskTracker,
    logs: LogLimits,
    silent: Silent,
}

impl Proxy {
    pub fn new(
        backends: Arc<Backends>,
        metrics: Arc<Metrics>,
        race: RaceSettings,
        max_connections: usize,
        timeouts: Timeouts,
    ) -> Proxy {
        Proxy {
            backends,
            metrics,
            race,
            max_connections,
            timeouts,
            tracker: TaskTracker::new(),
            logs: LogLimits::default(),
            silent: Silent::default(),
        }
    }

    /// Live client connections.
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Accepts on `listener` until `stop` is cancelled. Once this has returned, it takes no
    /// more connections: every one it took is in `tracker` (so `drain` sees it).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                // Stop first: when both are ready, a connection left in the kernel's queue
                // goes to the next process (socket activation), while one accepted now
                // would be served by a process that is stopping.
                biased;
                () = stop.cancelled() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((client, peer)) => {
                    backoff = Duration::from_millis(5);
                    self.metrics.accepted.inc();
                    if self.connections() >= self.max_connections && self.silent.evict_oldest() {
                        // Room made by closing a connection that has not spoken yet.
                        self.metrics.reject(RejectReason::evicted_silent);
                        self.logs.evicted.log(|suppressed| {
                            tracing::warn!(
                                limit = self.max_connections,
                                suppressed,
                                "connection limit reached; closing the oldest connection that \
                                 has not sent its ClientHello"
                            );
                        });
                    } else if self.connections() >= self.max_connections {
                        self.metrics.reject(RejectReason::connection_limit);
                        self.logs.connection_limit.log(|suppressed| {
                            tracing::warn!(
                                limit = self.max_connections,
                                suppressed,
                                "connection limit reached; closing new connections"
                            );
                        });
                        socket::reset_on_close(&client);
                        continue;
                    }
                    let me = self.clone();
                    // Registered as silent here, not in the task: a flood is accepted faster
                    // than its tasks first run, and each must be there to be evicted.
                    let silent = self.silent.register();
                    // The future itself, not an `async` block around it: a block would keep its
                    // own copy of the arguments for the connection's whole life.
                    self.tracker.spawn(me.handle(client, peer, silent));
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS…: do not spin; the listener stays usable.
                    self.metrics.accept_error(Listener::proxy);
                    self.logs.accept_error.log(|suppressed| {
                        tracing::error!(error = %e, retry_in = ?backoff, suppressed, "accept failed");
                    });
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Reads the client's first flight, connecting no server meanwhile. `None` if the
    /// connection ended (the client left, timed out, or was closed to make room).
    async fn first_flight(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
        (id, evict): (u64, CancellationToken),
    ) -> Option<FirstFlight> {
        let _registered = SilentGuard {
            silent: &self.silent,
            id,
        };
        let deadline = self
            .race
            .client_hello_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let limit = self.race.replay_limit.max(1);
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let ready = tokio::select! {
                r = client.readable() => r,
                () = evict.cancelled() => {
                    // Counted and logged where it was chosen (`serve`).
                    socket::reset_on_close(client);
                    return None;
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.metrics.reject(RejectReason::client_hello_timeout);
                    self.logs.hello_timeout.log(|suppressed| tracing::info!(client = %peer,
                        received = bytes.len(), suppressed,
                        "closing a client connection: no complete TLS ClientHello in time"));
                    socket::reset_on_close(client);
                    return None;
                }
            };
            if ready.is_err() {
                return None;
            }
            let mut buf = [0u8; 4096];
            let room = (limit - bytes.len()).min(buf.len());
            match client.try_read(&mut buf[..room]) {
                Ok(0) => return None,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
            match hello::progress(&bytes) {
                Progress::Complete => {
                    return Some(FirstFlight {
                        bytes,
                        complete_hello: true,
                    })
                }
                Progress::NotTls => {
                    return Some(FirstFlight {
                        bytes,
                        complete_hello: false,
                    })
                }
                // Larger than can be replayed: passed on, pinned to one server.
                Progress::Incomplete if bytes.len() >= limit => {
                    return Some(FirstFlight {
                        bytes,
                        complete_hello: false,
                    })
                }
                Progress::Incomplete => {}
            }
        }
    }

    /// From the accept to a committed server: the client's first flight, then connect and
    /// first-byte racing. `None` if the connection ended meanwhile (counted and logged).
    async fn setup(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
        silent: (u64, CancellationToken),
    ) -> Option<connect::Established> {
        let flight = self.first_flight(client, peer, silent).await?;
        let plan = balance::plan(&self.backends.snapshot());
        // Boxed apart: a connection that has not spoken yet (the most numerous kind in a
        // flood) then holds only the first flight's state, not the racing's.
        let establishing = Box::pin(connect::establish(
            client,
            flight.bytes,
            flight.complete_hello,
            plan.order,
            self.race,
            &self.metrics,
        ));
        match establishing.await {
            Ok(est) => Some(est),
            Err(e) => {
                use connect::EstablishError as E;
                match e {
                    E::Client(_) | E::ClientGone => {}
                    E::LocalResources(_) => {
                        self.metrics.reject(RejectReason::local_resources);
                        self.logs.local_resources.log(|suppressed| {
                            tracing::error!(client = %peer, cause = %e, suppressed,
                                "closing a new client connection: out of local resources");
                        });
                    }
                    E::NoServer | E::NoAnswer => {
                        self.metrics.reject(RejectReason::no_server);
                        self.logs.no_server.log(|suppressed| {
                            tracing::warn!(client = %peer, cause = %e, suppressed,
                                "no server for a client connection");
                        });
                    }
                }
                socket::reset_on_close(client);
                None
            }
        }
    }

    /// A connection's whole life, as the future its task runs. Not an `async fn`: the
    /// future of one keeps its arguments twice (as given and as moved into its body) for
    /// the connection's whole life, a block captures them once (`a_connection_task_is_small`).
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn handle(
        self: Arc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        silent: (u64, CancellationToken),
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // Boxed: setting up (the first flight, then connect and first-byte racing) is the
            // biggest state of a connection's life, and boxing it keeps it out of the task that
            // then sits idle for hours on a watch.
            let Some(mut est) = Box::pin(self.setup(&client, peer, silent)).await else {
                return;
            };
            let backend = est.upstream.backend().clone();
            tracing::debug!(client = %peer, server = %backend.name, "proxying");
            let m = &backend.metrics;
            // The server's first bytes (a TLS ServerHello and certificates: kilobytes) are
            // freed once written, not kept for the connection's life.
            let first = std::mem::take(&mut est.first_bytes);
            if copy::write_all(&client, &first).await.is_err() {
                return;
            }
            m.bytes_to_client.inc_by(first.len() as u64);
            drop(first);
            let server = &mut est.upstream.stream;
            let copying = copy::bidirectional(
                &mut client,
                server,
                &m.bytes_to_server,
                &m.bytes_to_client,
                &self.timeouts,
            );
            tokio::select! {
                r = copying => {
                    match r {
                        Ok(Ended::Closed((up, down))) => tracing::debug!(client = %peer,
                            server = %backend.name, bytes_to_server = up, bytes_to_client = down,
                            "connection closed"),
                        Ok(Ended::TimedOut(which, (up, down))) => {
                            self.metrics.timed_out(match which {
                                TimedOut::HalfClosed => TimeoutKind::half_closed,
                                TimedOut::Idle => TimeoutKind::idle,
                            });
                            tracing::debug!(client = %peer, server = %backend.name,
                                bytes_to_server = up, bytes_to_client = down, timeout = ?which,
                                "closing: the connection timed out");
                            socket::reset_on_close(&client);
                            socket::reset_on_close(server);
                        }
                        Err(e) => {
                            tracing::debug!(client = %peer, server = %backend.name, error = %e,
                                "connection ended with an error");
                            socket::reset_on_close(&client);
                        }
                    }
                }
                () = est.token.cancelled() => {
                    m.failover_closed.inc();
                    tracing::debug!(client = %peer, server = %backend.name,
                        "closing: its server is down or removed");
                    socket::reset_on_close(&client);
                    socket::reset_on_close(server);
                }
            }
        }
    }

    /// Waits until every client connection has ended, or `grace` has passed. Returns the
    /// connections still open.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of an idle proxied connection is allocated once, at its largest state: it
    /// must hold no copy buffer (memory per idle connection is a product goal). tokio's
    /// task cell is the future plus 96 bytes, rounded up to 128: at 528 bytes or less the
    /// cell takes 640 (it took 896 when `handle` was an `async fn` spawned in a block).
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let metrics = Arc::new(Metrics::new());
        let backends = Arc::new(Backends::new(CancellationToken::new(), metrics.clone()));
        let proxy = Arc::new(Proxy::new(
            backends,
            metrics,
            RaceSettings {
                connect_timeout: Duration::from_secs(1),
                race_delay: Duration::from_millis(200),
                first_byte_timeout: Duration::from_millis(500),
                replay_limit: 8192,
                client_hello_timeout: Some(Duration::from_secs(10)),
            },
            10,
            Timeouts {
                half_closed: Some(Duration::from_secs(1)),
                idle: Some(Duration::from_secs(1)),
            },
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let peer = c.local_addr().unwrap();
        let silent = proxy.silent.register();
        let fut = proxy
            .tracker
            .track_future(proxy.clone().handle(c, peer, silent));
        let size = size_of_val(&fut);
        assert!(size <= 528, "connection task's future is {size} bytes");
        // Until its first flight is in, a connection holds the setup's box: the racing that
        // follows is boxed apart (it took the whole 1,392 bytes when it was not).
        let c2 = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let setup = proxy.setup(&c2, peer, proxy.silent.register());
        let size = size_of_val(&setup);
        assert!(size <= 704, "a silent connection's setup is {size} bytes");
    }
}
