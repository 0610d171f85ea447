//! What apilb tells its service manager (sd_notify(3), over `$NOTIFY_SOCKET`, through the
//! `sd-notify` crate): `READY=1` once a server is ready — or, after `--ready-timeout`, once
//! serving in panic mode is the best apilb can do, so that a node whose control planes are
//! all unreachable still starts its kubelet — and `STOPPING=1` when the drain begins. With
//! `Type=notify`, systemd then starts the units ordered after apilb (kubelet) only once
//! apilb can carry their traffic.
//!
//! Nothing happens without `$NOTIFY_SOCKET` (not under systemd, a static pod). A failed
//! send is logged and never fatal. Owns no state of its own; reads `Backends`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::control::backend::Backends;

/// How often the set is looked at while waiting for a ready server (at most the
/// `--ready-timeout`, at start only).
const READY_POLL: Duration = Duration::from_millis(20);

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>], what: &str) {
    match sd_notify::notify(states) {
        Ok(()) => tracing::debug!(what, "told the service manager"),
        Err(e) => tracing::warn!(what, error = %e,
            "cannot tell the service manager ($NOTIFY_SOCKET)"),
    }
}

/// Sends `READY=1` once a server is ready, or once `wait` has passed without one.
pub async fn ready(backends: Arc<Backends>, wait: Duration) {
    if !enabled() {
        return;
    }
    let start = Instant::now();
    let status = loop {
        if backends.any_ready() {
            break "serving: a server is ready".to_string();
        }
        if start.elapsed() >= wait {
            break format!(
                "serving in panic mode: no server ready after {}",
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(READY_POLL).await;
    };
    send(
        &[NotifyState::Ready, NotifyState::Status(&status)],
        "READY=1",
    );
}

/// Sends `STOPPING=1`: the drain has begun.
pub fn stopping() {
    if enabled() {
        send(
            &[
                NotifyState::Stopping,
                NotifyState::Status("stopping: draining connections"),
            ],
            "STOPPING=1",
        );
    }
}
