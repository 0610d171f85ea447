//! A delaying TCP relay: latency on one path (every byte delayed each way by the delay set
//! when it is read), with nothing lost and nothing reordered. Stops on drop. Owns the relay
//! only; it knows nothing of TLS or HTTP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP relay on `listen` to `target` that delays every byte, each way, by the delay set at
/// the moment it is read (0 at first): latency on a path, with nothing lost and nothing
/// reordered. Stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When the last delayed byte is due.
    last_due: Arc<Mutex<Option<tokio::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(listen: [u8; 4], target: SocketAddr) -> Relay {
        let l = tokio::net::TcpListener::bind(SocketAddr::from((listen, 0)))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let last_due = Arc::new(Mutex::new(None));
        let d = (delay_ms.clone(), last_due.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let d = d.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, d.clone()), pump(sr, cw, d));
                });
            }
        });
        Relay {
            addr,
            delay_ms,
            last_due,
            task,
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once every byte delayed so far has been delivered.
    pub async fn settled(&self) {
        loop {
            let due = *self.last_due.lock().unwrap();
            let Some(due) = due else { return };
            tokio::time::sleep_until(due).await;
            if *self.last_due.lock().unwrap() == Some(due) {
                return;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type DelayShared = (
    Arc<std::sync::atomic::AtomicU64>,
    Arc<Mutex<Option<tokio::time::Instant>>>,
);

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (delay_ms, last_due): DelayShared,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let ms = delay_ms.load(Ordering::Relaxed);
                    let at = tokio::time::Instant::now() + Duration::from_millis(ms);
                    if ms > 0 {
                        let mut due = last_due.lock().unwrap();
                        *due = Some(due.map_or(at, |d| d.max(at)));
                    }
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
