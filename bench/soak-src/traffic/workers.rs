//! The client workers: the mix of kept-alive, idle, watching, transferring, slow and
//! new-connection clients, each looping until the run stops and reconnecting as client-go
//! would.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::traffic::client::{open, Conn, Send};
use crate::traffic::record::{Ctx, Res};
use crate::traffic::requests::{download, fetch_pattern, upload, watch, whoami};

pub(crate) fn worker_rng(seed: u64, worker: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ worker)
}

/// Log-uniform between `lo` and `hi` bytes.
pub(crate) fn size(rng: &mut StdRng, lo: f64, hi: f64) -> u64 {
    rng.random_range(lo.ln()..hi.ln()).exp() as u64
}

/// After an operation that did not succeed: a retried request or a cleanly ended watch
/// reconnects at once (the connection is gone, nothing failed); a failure backs off first.
pub(crate) async fn after(ctx: &Ctx, c: Conn, r: Res, backoff: Duration) {
    c.abandon(ctx);
    if r == Res::Failed {
        ctx.sleep(backoff).await;
    }
}

/// A kept-alive connection making a small request every 50–150 ms; HTTP/2 ones also carry
/// a watch stream, as a kubelet's connection does.
pub(crate) async fn keepalive(ctx: Arc<Ctx>, wid: u64, h2: bool) {
    let mut rng = worker_rng(ctx.seed, wid);
    let kind = if h2 { "keepalive-h2" } else { "keepalive-h1" };
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, kind, h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = whoami(&ctx, &mut c, "request").await;
        if r != Res::Ok {
            after(&ctx, c, r, backoff).await;
            continue;
        }
        let mut watch_task = c.h2_handle().map(|s| {
            let ctx = ctx.clone();
            let id = c.id;
            tokio::spawn(async move {
                // The watch shares the connection's record; it needs no Conn of its own.
                let mut shell = Conn {
                    id,
                    send: Send::H2(s),
                    driver: tokio::spawn(async {}),
                };
                watch(&ctx, &mut shell, f64::MAX).await
            })
        });
        let r = loop {
            let pause = Duration::from_millis(rng.random_range(50..150));
            if !ctx.sleep(pause).await {
                break Res::Ok;
            }
            if let Some(t) = watch_task.take_if(|t| t.is_finished()) {
                // The watch ended: cleanly by its server, or it failed (recorded).
                break t.await.unwrap_or(Res::Failed);
            }
            let r = whoami(&ctx, &mut c, "request").await;
            if r != Res::Ok {
                break r;
            }
        };
        if let Some(t) = watch_task.take() {
            if r == Res::Failed {
                t.abort();
            } else {
                // The run's end, or a request the server refused (GOAWAY): the watch runs
                // to its own end, which the server gives it.
                let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Mostly idle HTTP/2 connections (a node's many agents): a request every 2–5 s. Only apilb
/// closing them tells such a client that its server died.
pub(crate) async fn idle(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(500);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "idle-h2", true).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = loop {
            let r = whoami(&ctx, &mut c, "request").await;
            if r != Res::Ok {
                break r;
            }
            if !ctx
                .sleep(Duration::from_millis(rng.random_range(2000..5000)))
                .await
            {
                break Res::Ok;
            }
        };
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Watch streams on their own HTTP/1.1 connections, reopened after 10–40 s (as an
/// apiserver's watch timeout would), at once when their server ends them, and after a short
/// pause when they fail.
pub(crate) async fn watcher(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let Some(mut c) = open(&ctx, "watch", false).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let r = whoami(&ctx, &mut c, "request").await;
        if r != Res::Ok {
            after(&ctx, c, r, backoff).await;
            continue;
        }
        let until = ctx.now() + rng.random_range(10.0..40.0);
        let r = watch(&ctx, &mut c, until).await;
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Uploads and downloads on kept-alive connections (1–5 transfers each), verified.
pub(crate) async fn transfers(ctx: Arc<Ctx>, wid: u64, upload_share: f64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.3);
        let Some(mut c) = open(&ctx, "transfer", h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let mut r = whoami(&ctx, &mut c, "request").await;
        if r == Res::Ok {
            for _ in 0..rng.random_range(1..=5) {
                if ctx.stop.is_cancelled() {
                    break;
                }
                r = if rng.random_bool(upload_share) {
                    let n = size(&mut rng, 16e3, 4e6);
                    upload(&ctx, &mut c, n, rng.random()).await
                } else {
                    let n = size(&mut rng, 16e3, 16e6);
                    download(&ctx, &mut c, n).await
                };
                if r != Res::Ok {
                    break;
                }
                ctx.sleep(Duration::from_millis(rng.random_range(50..300)))
                    .await;
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// Slow responses on kept-alive connections (half HTTP/2): `GET /slow`, 32 KiB–1 MiB spread
/// over 1–6 s, every byte checked, 1–4 per connection. Something is nearly always in flight
/// on every server, so a graceful shutdown has requests to finish.
pub(crate) async fn slow(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    let backoff = Duration::from_millis(100);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.5);
        let Some(mut c) = open(&ctx, "slow", h2).await else {
            ctx.sleep(backoff).await;
            continue;
        };
        let mut r = whoami(&ctx, &mut c, "request").await;
        if r == Res::Ok {
            for _ in 0..rng.random_range(1..=4) {
                if ctx.stop.is_cancelled() {
                    break;
                }
                let n = size(&mut rng, 32.0 * 1024.0, 1024.0 * 1024.0);
                let ms = rng.random_range(1000..6000u64);
                let path = format!("/slow?n={n}&ms={ms}");
                r = fetch_pattern(&ctx, &mut c, "slow", path, n, Duration::from_secs(60)).await;
                if r != Res::Ok {
                    break;
                }
            }
        }
        if r == Res::Ok {
            c.close(&ctx);
        } else {
            after(&ctx, c, r, backoff).await;
        }
    }
}

/// A new connection for every request, as a restarting client or a CLI would.
pub(crate) async fn new_connections(ctx: Arc<Ctx>, wid: u64) {
    let mut rng = worker_rng(ctx.seed, wid);
    while !ctx.stop.is_cancelled() {
        let h2 = rng.random_bool(0.5);
        if let Some(mut c) = open(&ctx, "new", h2).await {
            if whoami(&ctx, &mut c, "new-connection").await == Res::Ok {
                c.close(&ctx);
            } else {
                c.abandon(&ctx);
            }
        }
        ctx.sleep(Duration::from_millis(rng.random_range(50..150)))
            .await;
    }
}
