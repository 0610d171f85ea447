//! apilb's resources and admin endpoint, sampled during the run: RSS, descriptors,
//! liveness, `/status` and `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::common::{admin_get_at, Apilb};
use crate::traffic::record::Ctx;

#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) rss_kib: i64,
    pub(crate) fds: i64,
    pub(crate) conns: i64,
}

pub(crate) fn rss_kib(pid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn fds(pid: i32) -> Option<i64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64)
}

/// Alive and not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// GET `path` on apilb's admin endpoint: the body of a 200 answer, None otherwise (or after
/// 2 s).
pub(crate) async fn admin_get(lb: &Apilb, path: &str) -> Option<String> {
    let (code, body) = tokio::time::timeout(Duration::from_secs(2), admin_get_at(lb.admin, path))
        .await
        .ok()?
        .ok()?;
    (code == 200).then_some(body)
}

pub(crate) async fn admin_status(lb: &Apilb) -> Option<Value> {
    serde_json::from_str(&admin_get(lb, "/status").await?).ok()
}

/// apilb's failover counters from /metrics, as `name{labels} value` lines.
pub(crate) fn counters(metrics: &str) -> Vec<String> {
    const KEEP: [&str; 8] = [
        "apilb_connections_accepted_total",
        "apilb_connections_rejected_total",
        "apilb_connect_attempts_total",
        "apilb_failover_closed_connections_total",
        "apilb_health_failures_total",
        "apilb_first_byte_replays_total",
        "apilb_bytes_total",
        "apilb_log_write_errors_total",
    ];
    metrics
        .lines()
        .filter(|l| KEEP.iter().any(|k| l.starts_with(k)))
        .map(str::to_string)
        .collect()
}

pub(crate) async fn sample(ctx: &Ctx, lb: &Apilb) -> Option<Sample> {
    let pid = lb.pid();
    let conns = admin_status(lb)
        .await
        .and_then(|v| v["client_connections"].as_i64())
        .unwrap_or(-1);
    Some(Sample {
        t: ctx.now(),
        rss_kib: rss_kib(pid)?,
        fds: fds(pid)?,
        conns,
    })
}

/// Whether apilb's `/status` holds every one of `servers` (by address) ready.
pub(crate) async fn all_ready(lb: &Apilb, servers: &[SocketAddr]) -> bool {
    let Some(status) = admin_status(lb).await else {
        return false;
    };
    let Some(list) = status["servers"].as_array() else {
        return false;
    };
    servers.iter().all(|addr| {
        let addr = addr.to_string();
        list.iter().any(|s| {
            s["state"] == "ready"
                && s["addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == addr.as_str()))
        })
    })
}

/// Polls apilb's `/status` until it holds every one of `servers` ready; false after
/// `timeout`.
pub(crate) async fn wait_ready(lb: &Apilb, servers: &[SocketAddr], timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if all_ready(lb, servers).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
