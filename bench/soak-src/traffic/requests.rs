//! The requests the clients make, each checking every byte it gets: `/whoami`, downloads,
//! uploads echoed back, slow responses and watch streams.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::traffic::client::{empty, Conn, Gen, GenBody};
use crate::traffic::record::{Ctx, Res};
use crate::traffic::send_error::SendError;
use crate::WATCH_INTERVAL_MS;

/// GET /whoami: a small request; learns (or checks) the connection's server.
pub(crate) async fn whoami(ctx: &Ctx, c: &mut Conn, op: &'static str) -> Res {
    let start = ctx.now();
    let work = async {
        let resp = c.send(c.req("GET", "/whoami", empty())).await?;
        if resp.status() != StatusCode::OK {
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::failed(format!("body: {e}")))?
            .to_bytes();
        Ok(body)
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(body)) => {
            let server = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["server"].as_str().map(str::to_string));
            match server {
                Some(s) if ["cp1", "cp2", "cp3"].contains(&s.as_str()) => {
                    ctx.saw_server(c.id, op, &s);
                    ctx.ok(c.id, op, start, 0, body.len() as u64);
                    Res::Ok
                }
                _ => {
                    ctx.mismatch(
                        c.id,
                        op,
                        format!("/whoami body {:?}", String::from_utf8_lossy(&body)),
                    );
                    Res::Failed
                }
            }
        }
        Ok(Err(e)) => ctx.send_failed(c.id, op, start, e),
        Err(_) => {
            ctx.fail(
                Some(c.id),
                op,
                start,
                "no answer within 10 s".into(),
                (0, 0),
            );
            Res::Failed
        }
    }
}

/// GET `path` answering `n` bytes of the /bytes pattern (byte i is i % 251), every byte
/// checked: `/bytes?n=N` (as fast as it goes) or `/slow?n=N&ms=M` (spread over M ms, a
/// request that is in flight for a while).
pub(crate) async fn fetch_pattern(
    ctx: &Ctx,
    c: &mut Conn,
    op: &'static str,
    path: String,
    n: u64,
    limit: Duration,
) -> Res {
    let start = ctx.now();
    let mut got = 0u64;
    let id = c.id;
    let mut mismatch = None;
    let work = async {
        let resp = c.send(c.req("GET", &path, empty())).await?;
        if resp.status() != StatusCode::OK {
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f =
                f.map_err(|e| SendError::failed(format!("body after {got} of {n} bytes: {e}")))?;
            if let Ok(data) = f.into_data() {
                if mismatch.is_none() {
                    if let Some(i) = data
                        .iter()
                        .enumerate()
                        .position(|(i, &b)| u64::from(b) != (got + i as u64) % 251)
                    {
                        mismatch = Some(format!(
                            "{path}: byte {} is {}, expected {}",
                            got + i as u64,
                            data[i],
                            (got + i as u64) % 251
                        ));
                    }
                }
                got += data.len() as u64;
            }
        }
        Ok(())
    };
    let r = tokio::time::timeout(limit, work).await;
    if let Some(m) = mismatch {
        ctx.mismatch(id, op, m);
        return Res::Failed;
    }
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, op, start, 0, got);
            Res::Ok
        }
        Ok(Ok(())) if got > n => {
            ctx.mismatch(id, op, format!("{path} returned {got} bytes"));
            Res::Failed
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                op,
                start,
                format!("ended after {got} of {n} bytes"),
                (0, got),
            );
            Res::Failed
        }
        Ok(Err(e)) if e.retry => ctx.send_failed(id, op, start, e),
        Ok(Err(e)) => {
            ctx.fail(Some(id), op, start, e.msg, (0, got));
            Res::Failed
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                op,
                start,
                format!("not done in {} s ({got} of {n} bytes)", limit.as_secs()),
                (0, got),
            );
            Res::Failed
        }
    }
}

/// GET /bytes?n=N, every byte checked.
pub(crate) async fn download(ctx: &Ctx, c: &mut Conn, n: u64) -> Res {
    fetch_pattern(
        ctx,
        c,
        "download",
        format!("/bytes?n={n}"),
        n,
        Duration::from_secs(60),
    )
    .await
}

/// POST /echo with a seeded body streamed up while the echo streams back, checked.
pub(crate) async fn upload(ctx: &Ctx, c: &mut Conn, n: u64, seed: u64) -> Res {
    let start = ctx.now();
    let id = c.id;
    let mut got = 0u64;
    let mut mismatch = None;
    let mut expect = Gen::new(seed);
    let body = GenBody {
        gen: Gen::new(seed),
        left: n,
    }
    .boxed();
    let mut req = c.req("POST", "/echo", body);
    req.headers_mut()
        .insert(http::header::CONTENT_LENGTH, n.to_string().parse().unwrap());
    let work = async {
        let resp = c.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(SendError::failed(format!("status {}", resp.status())));
        }
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f =
                f.map_err(|e| SendError::failed(format!("echo after {got} of {n} bytes: {e}")))?;
            if let Ok(data) = f.into_data() {
                if mismatch.is_none() {
                    if got + data.len() as u64 > n {
                        mismatch = Some(format!("/echo of {n} bytes returned more"));
                    } else if let Some(i) = expect.check(&data) {
                        mismatch = Some(format!(
                            "/echo of {n} bytes: byte {} differs",
                            got + i as u64
                        ));
                    }
                }
                got += data.len() as u64;
            }
        }
        Ok(())
    };
    let r = tokio::time::timeout(Duration::from_secs(60), work).await;
    if let Some(m) = mismatch {
        ctx.mismatch(id, "upload", m);
        return Res::Failed;
    }
    // What went up is at least what came back.
    match r {
        Ok(Ok(())) if got == n => {
            ctx.ok(id, "upload", start, n, got);
            Res::Ok
        }
        Ok(Ok(())) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("echo ended after {got} of {n} bytes"),
                (got, got),
            );
            Res::Failed
        }
        Ok(Err(e)) if e.retry => ctx.send_failed(id, "upload", start, e),
        Ok(Err(e)) => {
            ctx.fail(Some(id), "upload", start, e.msg, (got, got));
            Res::Failed
        }
        Err(_) => {
            ctx.fail(
                Some(id),
                "upload",
                start,
                format!("not done in 60 s ({got} of {n} bytes back)"),
                (got, got),
            );
            Res::Failed
        }
    }
}

/// Follows GET /watch until `until` or the stop; every event checked (consecutive `seq`,
/// one server). `Res::Ok` when followed to the end, `Res::Ended` when the server ended it
/// cleanly (a graceful shutdown), else what went wrong (recorded).
pub(crate) async fn watch(ctx: &Ctx, c: &mut Conn, until: f64) -> Res {
    let start = ctx.now();
    let id = c.id;
    let path = format!("/watch?interval_ms={WATCH_INTERVAL_MS}");
    let req = c.req("GET", &path, empty());
    let resp = match c.send(req).await {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            ctx.fail(
                Some(id),
                "watch",
                start,
                format!("status {}", r.status()),
                (0, 0),
            );
            return Res::Failed;
        }
        Err(e) => return ctx.send_failed(id, "watch", start, e),
    };
    let mut body = resp.into_body();
    let mut line = Vec::new();
    let mut next_seq = 0u64;
    let mut bytes = 0u64;
    loop {
        let left = until - ctx.now();
        if left <= 0.0 || ctx.stop.is_cancelled() {
            ctx.ok(id, "watch", start, 0, bytes);
            return Res::Ok;
        }
        let frame = tokio::select! {
            () = ctx.stop.cancelled() => continue,
            r = tokio::time::timeout(Duration::from_secs_f64(left.min(10.0)), body.frame()) => r,
        };
        let data = match frame {
            Err(_) if ctx.now() >= until => continue,
            Err(_) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    "no event for 10 s".into(),
                    (0, bytes),
                );
                return Res::Failed;
            }
            // The final chunk (HTTP/1.1) or END_STREAM (HTTP/2): the server ended it, as
            // kube-apiserver ends its watches when it shuts down. A reset is an error below.
            Ok(None) => {
                ctx.ended_by_server(id, start, bytes);
                return Res::Ended;
            }
            Ok(Some(Err(e))) => {
                ctx.fail(
                    Some(id),
                    "watch",
                    start,
                    format!("stream after {next_seq} events: {e}"),
                    (0, bytes),
                );
                return Res::Failed;
            }
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        bytes += data.len() as u64;
        for &b in data.iter() {
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let v: Option<Value> = serde_json::from_slice(&line).ok();
            let seq = v.as_ref().and_then(|v| v["seq"].as_u64());
            let server = v
                .as_ref()
                .and_then(|v| v["server"].as_str().map(str::to_string));
            match (seq, server) {
                (Some(seq), Some(server)) if seq == next_seq => {
                    ctx.saw_server(id, "watch", &server);
                    ctx.rec.conns.lock().unwrap()[id]
                        .ok_times
                        .push(ctx.now() as f32);
                    ctx.rec.watch_events.fetch_add(1, Ordering::Relaxed);
                    next_seq += 1;
                }
                _ => {
                    ctx.mismatch(
                        id,
                        "watch",
                        format!(
                            "event {next_seq}: {:?}",
                            String::from_utf8_lossy(&line)
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ),
                    );
                    return Res::Failed;
                }
            }
            line.clear();
        }
    }
}
