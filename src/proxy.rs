//! Listeners and the per-connection path: where a client connection is accepted, handed a
//! server (`balance` orders, `connect` races) and copied (`copy`), until it ends or its
//! server's token closes it.
//!
//! Holds under faults: beyond `max_connections` new clients are closed and counted; accept
//! errors (EMFILE and friends) back off and are logged at most every few seconds; a
//! connection one side has half-closed, or (if asked) one idle too long, is reset on both
//! sides and counted (`copy::Timeouts`); on shutdown the accept loops stop and `drain` waits
//! for live connections up to the grace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backends;
use crate::connect::{self, RaceSettings};
use crate::copy::{Ended, Timeouts};
use crate::metrics::{Listener, Metrics, RejectReason};
use crate::{balance, copy, socket};

pub struct Proxy {
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    pub race: RaceSettings,
    pub max_connections: usize,
    /// When a connection that stopped moving is closed.
    pub timeouts: Timeouts,
    /// Every live client connection is a task of this tracker.
    pub tracker: TaskTracker,
    panic_mode: AtomicBool,
    last_accept_error_log: Mutex<Option<Instant>>,
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
            panic_mode: AtomicBool::new(false),
            last_accept_error_log: Mutex::new(None),
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
                    if self.connections() >= self.max_connections {
                        self.metrics.reject(RejectReason::connection_limit);
                        self.log_rate_limited(|| {
                            tracing::warn!(
                                limit = self.max_connections,
                                "connection limit reached; closing new connections"
                            )
                        });
                        socket::reset_on_close(&client);
                        continue;
                    }
                    let me = self.clone();
                    self.tracker
                        .spawn(async move { me.handle(client, peer).await });
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS…: do not spin; the listener stays usable.
                    self.metrics.accept_error(Listener::proxy);
                    self.log_rate_limited(
                        || tracing::error!(error = %e, retry_in = ?backoff, "accept failed"),
                    );
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn log_rate_limited(&self, log: impl FnOnce()) {
        let mut last = self
            .last_accept_error_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            *last = Some(Instant::now());
            log();
        }
    }

    fn note_panic_mode(&self, panic: bool) {
        if self.panic_mode.swap(panic, Ordering::Relaxed) != panic {
            self.metrics.panic_mode.set(i64::from(panic));
            if panic {
                tracing::warn!("no server is ready: panic mode, trying every server");
            } else {
                tracing::info!("a server is ready again: panic mode over");
            }
        }
    }

    pub(crate) async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let plan = balance::plan(&self.backends.snapshot());
        self.note_panic_mode(plan.panic);
        // Boxed: setting up is the biggest state of a connection's life, and boxing it keeps
        // it out of the task that then sits idle for hours on a watch.
        let establishing = Box::pin(connect::establish(
            &client,
            plan.order,
            self.race,
            &self.metrics,
        ));
        let mut est = match establishing.await {
            Ok(est) => est,
            Err(e) => {
                use connect::EstablishError as E;
                match e {
                    E::Client(_) | E::ClientGone => {}
                    E::LocalResources(_) => {
                        self.metrics.reject(RejectReason::local_resources);
                        self.log_rate_limited(|| {
                            tracing::error!(client = %peer, cause = %e,
                                "closing a new client connection: out of local resources")
                        });
                    }
                    E::NoServer | E::NoAnswer => {
                        self.metrics.reject(RejectReason::no_server);
                        tracing::warn!(client = %peer, cause = %e,
                            "no server for a client connection");
                    }
                }
                socket::reset_on_close(&client);
                return;
            }
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
                        self.metrics.timed_out(which);
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
    /// must hold no copy buffer (memory per idle connection is a product goal).
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
        let fut = proxy.handle(c, peer);
        let size = std::mem::size_of_val(&fut);
        assert!(size < 640, "connection task is {size} bytes");
    }
}
