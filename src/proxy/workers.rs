//! Worker threads: where client connections live.
//!
//! Each worker is one OS thread running a single-threaded tokio runtime with its own accept
//! loop on every listener (a duplicate of the same socket: the kernel hands each new
//! connection to whichever worker accepts first, so a busy worker takes fewer). A
//! connection stays on the worker that accepted it for its whole life: its wake-ups never
//! cross threads, no task is stolen, and nothing is synchronised per byte. The control
//! plane (health checks, discovery, signals) runs on the main thread's runtime, the admin
//! endpoint on a thread of its own (`admin`).
//!
//! Why not tokio's multi-thread runtime: a proxied connection is woken once per read on
//! either side, and with work stealing each of those wake-ups may notify another worker
//! (a futex wake) and move the task between caches. On the two-core bench machine, where
//! the load generator and the backends share the cores, that cost apilb about a fifth of
//! its small-request throughput against nginx (whose workers are exactly this shape:
//! one event loop per process, a connection never leaves it). See bench/README.md.
//!
//! Owns the threads and the placement of connection tasks; decides nothing about traffic.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The worker threads. Dropping this stops them: tasks still on a worker are dropped
/// (their sockets closed), so drain first.
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `n` worker threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("apilb-worker-{i}"))
                .spawn(move || {
                    // The runtime drives every task placed on it while this waits.
                    let _ = rt.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// The workers' runtimes: whatever a task spawned on one of them spawns stays there.
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.workers.iter().map(|w| &w.handle)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_tasks_and_what_they_spawn_on_its_own_thread() {
        let workers = Workers::start(2).unwrap();
        let main_thread = std::thread::current().id();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, handle) in workers.handles().enumerate() {
            let tx = tx.clone();
            handle.spawn(async move {
                let outer = std::thread::current().id();
                let inner = tokio::spawn(async { std::thread::current().id() })
                    .await
                    .unwrap();
                let _ = tx.send((i, outer, inner));
            });
        }
        let mut seen = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1]);
        for (_, outer, inner) in &seen {
            assert_ne!(*outer, main_thread);
            assert_eq!(outer, inner, "a spawned task left its worker");
        }
        assert_ne!(seen[0].1, seen[1].1, "two workers share a thread");
        drop(workers); // joins: must not hang
    }
}
