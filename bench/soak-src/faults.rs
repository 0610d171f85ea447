//! The injected faults, carried out on the servers: kill, kernel blackhole (iptables, in
//! chains of our own), freeze and stall (SIGSTOP), not ready (/readyz 500), graceful
//! shutdown (SIGTERM, then a restart) and latency spikes (the relays); and lifting them. It
//! acts and logs when; it judges nothing.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::{send_signal, Blackhole, Relay, Standin, SERVER_NAME};
use crate::schedule::{Fault, Kind};
use crate::traffic::client::empty;
use crate::traffic::record::Ctx;
use crate::{B, SHUTDOWN_WAIT};

pub(crate) struct Servers {
    pub(crate) standins: Vec<Mutex<Standin>>,
    /// The stand-ins' own addresses (for `PUT /-/readyz`).
    pub(crate) direct: Vec<SocketAddr>,
    /// The relays in front of them: the servers as apilb knows them (blackholes go here).
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) relays: Vec<Relay>,
    pub(crate) holes: Mutex<HashMap<usize, Blackhole>>,
    pub(crate) frozen: Mutex<Vec<bool>>,
    /// Per server, the shutdown delays of its graceful shutdowns to come, in order: each
    /// (re)start gives the stand-in the next one (`--shutdown-delay` is fixed per process).
    pub(crate) delays: Mutex<Vec<VecDeque<f64>>>,
    /// Graceful shutdowns under way: the wait for the process's exit.
    pub(crate) exits: Mutex<HashMap<usize, tokio::task::JoinHandle<Exit>>>,
    pub(crate) h1: TlsConnector,
}

/// When a stand-in exited, and its exit status.
pub(crate) type Exit = (Instant, Option<i32>);

/// What lifting a fault found (a graceful shutdown's exit).
#[derive(Default)]
pub(crate) struct Lifted {
    pub(crate) exited: Option<Exit>,
}

impl Servers {
    pub(crate) async fn set_readyz(&self, i: usize, status: u16) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            match self.try_set_readyz(i, status).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "PUT /-/readyz?status={status} on cp{}: {last}",
            i + 1
        ))
    }

    pub(crate) async fn try_set_readyz(&self, i: usize, status: u16) -> Result<(), String> {
        let work = async {
            let tcp = TcpStream::connect(self.direct[i])
                .await
                .map_err(|e| e.to_string())?;
            let tls = self
                .h1
                .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let (mut s, conn) = hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = Request::put(format!("/-/readyz?status={status}"))
                .header(http::header::HOST, SERVER_NAME)
                .body(empty())
                .unwrap();
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status() == StatusCode::OK {
                Ok(())
            } else {
                Err(format!("status {}", resp.status()))
            }
        };
        tokio::time::timeout(Duration::from_secs(3), work)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    /// The shutdown delay the next process of server `i` gets.
    pub(crate) fn next_delay(&self, i: usize) -> Duration {
        let d = self.delays.lock().unwrap()[i].front().copied();
        Duration::from_secs_f64(d.unwrap_or(0.0))
    }

    pub(crate) fn restart(&self, i: usize) -> Result<(), String> {
        let delay = self.next_delay(i);
        let mut last = String::new();
        for _ in 0..5 {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let mut s = self.standins[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.graceful = Some(delay);
                s.restart();
            }));
            match r {
                Ok(()) => return Ok(()),
                Err(p) => {
                    last = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
                        .unwrap_or_default();
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("restarting cp{}: {last}", i + 1))
    }

    pub(crate) fn signal(&self, i: usize, sig: i32) -> Result<(), String> {
        let pid = self.standins[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pid();
        if send_signal(pid, sig) == 0 {
            Ok(())
        } else {
            Err(format!(
                "kill({pid}, {sig}): {}",
                io::Error::last_os_error()
            ))
        }
    }

    /// SIGTERM to a `--graceful` stand-in; its exit is waited for off the fault loop.
    pub(crate) fn terminate(&self, f: &Fault) -> Result<(), String> {
        let i = f.server;
        let delay = self.delays.lock().unwrap()[i].pop_front();
        if delay != Some(f.delay) {
            return Err(format!(
                "cp{} runs with shutdown delay {delay:?}, the schedule says {}",
                i + 1,
                f.delay
            ));
        }
        let child = self.standins[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take_process();
        let Some(mut child) = child else {
            return Err(format!("cp{} is not running", i + 1));
        };
        // Signalled before it is handed to the waiter, which alone reaps it.
        if send_signal(child.id() as i32, libc::SIGTERM) != 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("SIGTERM to cp{}: {e}", i + 1));
        }
        let waiter = tokio::task::spawn_blocking(move || {
            let status = child.wait().ok().and_then(|s| s.code());
            (Instant::now(), status)
        });
        self.exits.lock().unwrap().insert(i, waiter);
        Ok(())
    }

    pub(crate) async fn begin(&self, f: &Fault, n: usize) -> Result<(), String> {
        let i = f.server;
        match f.kind {
            Kind::Kill => {
                let mut s = self.standins[i]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.kill();
                Ok(())
            }
            Kind::Blackhole => {
                let bh = tokio::task::block_in_place(|| {
                    // Named after this process, so that bench/soak can remove leftovers.
                    Blackhole::in_chain(
                        self.addrs[i],
                        format!("APILB-SOAK-{}-{n}", std::process::id()),
                    )
                })?;
                self.holes.lock().unwrap().insert(i, bh);
                Ok(())
            }
            Kind::NotReady => self.set_readyz(i, 500).await,
            Kind::Freeze | Kind::Stall => {
                self.signal(i, libc::SIGSTOP)?;
                self.frozen.lock().unwrap()[i] = true;
                Ok(())
            }
            Kind::Graceful => self.terminate(f),
            Kind::Spike => {
                for r in &self.relays {
                    r.set_delay(Duration::from_secs_f64(f.delay));
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn end(&self, f: &Fault) -> Result<Lifted, String> {
        let i = f.server;
        let mut lifted = Lifted::default();
        match f.kind {
            Kind::Kill => tokio::task::block_in_place(|| self.restart(i))?,
            Kind::Blackhole => {
                let bh = self.holes.lock().unwrap().remove(&i);
                tokio::task::block_in_place(|| drop(bh));
            }
            Kind::NotReady => self.set_readyz(i, 200).await?,
            Kind::Freeze | Kind::Stall => {
                self.frozen.lock().unwrap()[i] = false;
                self.signal(i, libc::SIGCONT)?;
            }
            Kind::Graceful => {
                // Restarted once it has exited: the shutdown is its own to finish.
                let waiter = self.exits.lock().unwrap().remove(&i);
                if let Some(w) = waiter {
                    match tokio::time::timeout(SHUTDOWN_WAIT, w).await {
                        Ok(Ok(exit)) => lifted.exited = Some(exit),
                        Ok(Err(e)) => return Err(format!("waiting for cp{}: {e}", i + 1)),
                        Err(_) => {
                            return Err(format!(
                                "cp{} did not exit within {SHUTDOWN_WAIT:?} of SIGTERM",
                                i + 1
                            ))
                        }
                    }
                }
                tokio::task::block_in_place(|| self.restart(i))?;
            }
            Kind::Spike => {
                for r in &self.relays {
                    r.set_delay(Duration::ZERO);
                }
            }
        }
        Ok(lifted)
    }

    /// Lifts whatever is still in force (an interrupted run): thaw, unblackhole, no latency.
    pub(crate) fn restore_all(&self) {
        self.holes.lock().unwrap().clear();
        for r in &self.relays {
            r.set_delay(Duration::ZERO);
        }
        let frozen = std::mem::take(&mut *self.frozen.lock().unwrap());
        for (i, f) in frozen.iter().enumerate() {
            if *f {
                let _ = self.signal(i, libc::SIGCONT);
            }
        }
    }
}

/// Runs the schedule; returns it with what was executed, and when.
pub(crate) async fn run_faults(
    ctx: Arc<Ctx>,
    servers: Arc<Servers>,
    mut faults: Vec<Fault>,
) -> Vec<Fault> {
    // Start and end events in time order.
    let mut events: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        events.push((f.at, i, true));
        events.push((f.at + f.dur, i, false));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let rel = |t: Instant| t.saturating_duration_since(ctx.t0).as_secs_f64();
    for (at, i, start) in events {
        let wait = at - ctx.now();
        if wait > 0.0 && !ctx.sleep(Duration::from_secs_f64(wait)).await {
            break;
        }
        let f = faults[i].clone();
        let name = f.target();
        if start {
            let r = servers.begin(&f, i).await;
            let now = ctx.now();
            match r {
                Ok(()) => {
                    faults[i].began = Some(now);
                    let how = match f.kind {
                        Kind::Graceful => format!(", shutdown delay {:.1}s", f.delay),
                        Kind::Spike => format!(", +{:.1}s each way", f.delay),
                        _ => String::new(),
                    };
                    println!(
                        "soak: {now:7.2}s  {:<9} {name} for {:.1}s{how}",
                        f.kind.as_str(),
                        f.dur
                    );
                }
                Err(e) => {
                    eprintln!(
                        "soak: {now:7.2}s  could not {} {name}: {e}",
                        f.kind.as_str()
                    );
                    faults[i].note = e;
                }
            }
        } else if faults[i].began.is_some() {
            let r = servers.end(&f).await;
            let now = ctx.now();
            faults[i].ended = Some(now);
            match r {
                Ok(lifted) => {
                    let mut how = String::new();
                    if let Some((t, code)) = lifted.exited {
                        faults[i].exited = Some(rel(t));
                        faults[i].exit_code = code;
                        how = format!(
                            ", exited {:.2}s after SIGTERM with {code:?}",
                            rel(t) - faults[i].began.unwrap_or(0.0)
                        );
                    }
                    println!(
                        "soak: {now:7.2}s  restored  {name} ({}{how})",
                        f.kind.as_str()
                    );
                }
                Err(e) => {
                    eprintln!("soak: {now:7.2}s  could not restore {name}: {e}");
                    faults[i].note = e;
                }
            }
        }
    }
    // Interrupted: lift what is still in force.
    for f in faults.iter_mut() {
        if f.began.is_some() && f.ended.is_none() {
            if let Ok(Lifted {
                exited: Some((t, code)),
            }) = servers.end(f).await
            {
                f.exited = Some(rel(t));
                f.exit_code = code;
            }
            f.ended = Some(ctx.now());
        }
    }
    faults
}
