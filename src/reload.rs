//! Reloads of `apilb run`'s config file while apilb serves: reading the file without
//! letting it hold the control plane, waiting for a changed file to settle before applying
//! it, and the record of the last reload that `/status` and `/metrics` show.
//!
//! - **Bounded reads.** A reload reads the file on the blocking pool, never on the control
//!   thread (health checks, signals), and waits at most [`READ_TIMEOUT`] for it; the read
//!   itself takes only a regular file of at most `config::MAX_CONFIG_BYTES`, opened so that
//!   a FIFO at the path is refused at once (`config::read_text`). A read that never returns
//!   (a hung network file system) is not started again until it does.
//! - **Settling.** A change seen by polling is applied only once the file has read the same
//!   for [`SETTLE`]: an editor or a config-management tool rewriting the file in place
//!   (truncate, write part, write the rest) is never applied half-written. SIGHUP reads and
//!   applies at once: the operator says the file is complete.
//! - **The record.** Outcome, cause, time and error of the last reload, counts, the keys a
//!   reload did not apply (they need a restart), and the settings in effect.
//!
//! Owns none of the applying: `run` decides what a new server list does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{self, ReadFor};

/// How often the config file is read to look for a change.
pub const POLL: Duration = Duration::from_millis(500);
/// A changed file is applied once it has read the same for this long.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The longest a reload waits for the file to be read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One read of the file: its bytes, or the error (naming the file and the fix).
pub type Outcome = Result<Vec<u8>, String>;

/// Reads the config file for reloads, off the control thread and bounded in time.
pub struct Reader {
    path: PathBuf,
    /// A read that did not return within [`READ_TIMEOUT`]; none starts until it has.
    stuck: Option<tokio::task::JoinHandle<Result<Vec<u8>, config::ConfigError>>>,
}

impl Reader {
    pub fn new(path: PathBuf) -> Reader {
        Reader { path, stuck: None }
    }

    pub async fn read(&mut self) -> Outcome {
        let shown = self.path.display().to_string();
        if let Some(h) = &self.stuck {
            if !h.is_finished() {
                return Err(format!(
                    "{shown}: an earlier read of the config file has not returned yet; the \
                     file system that holds it does not answer"
                ));
            }
            self.stuck = None;
        }
        let path = self.path.clone();
        let mut task =
            tokio::task::spawn_blocking(move || config::read_text(&path, ReadFor::Reload));
        match tokio::time::timeout(READ_TIMEOUT, &mut task).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("{shown}: the read of the config file failed: {e}")),
            Err(_) => {
                self.stuck = Some(task);
                Err(format!(
                    "{shown}: the config file could not be read within {}; the file system \
                     that holds it does not answer",
                    humantime::format_duration(READ_TIMEOUT)
                ))
            }
        }
    }
}

/// Decides when a change seen by polling is applied: once it has read the same for
/// [`SETTLE`].
pub struct Settle {
    /// The last outcome acted on (applied, or reported as a failure).
    acted_on: Outcome,
    /// A different outcome, and when it was first read.
    pending: Option<(Outcome, Instant)>,
}

impl Settle {
    pub fn new(acted_on: Outcome) -> Settle {
        Settle {
            acted_on,
            pending: None,
        }
    }

    /// A polled read at `now`: the outcome to act on once a change has settled.
    pub fn observe(&mut self, read: Outcome, now: Instant) -> Option<Outcome> {
        if read == self.acted_on {
            self.pending = None;
            return None;
        }
        match &self.pending {
            Some((p, since)) if *p == read => {
                if now.duration_since(*since) >= SETTLE {
                    self.pending = None;
                    self.acted_on = read.clone();
                    return Some(read);
                }
            }
            _ => self.pending = Some((read, now)),
        }
        None
    }

    /// A read acted on at once (SIGHUP).
    pub fn acted_on(&mut self, read: Outcome) {
        self.acted_on = read;
        self.pending = None;
    }

    /// Since when a change has been waiting to settle.
    pub fn pending_since(&self) -> Option<Instant> {
        self.pending.as_ref().map(|(_, t)| *t)
    }
}

#[derive(Debug, Default)]
struct Record {
    file: Option<String>,
    watched: bool,
    ok: u64,
    failed: u64,
    last: Option<(SystemTime, String, Option<String>)>,
    last_success: Option<SystemTime>,
    restart_needed: Vec<String>,
    pending_since: Option<SystemTime>,
    config: BTreeMap<String, serde_json::Value>,
}

/// The reload record, shared by the reloader and the admin endpoint.
#[derive(Debug, Default)]
pub struct State(Mutex<Record>);

/// `/status`'s `reload`: the last reload and what it left waiting for a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// The config file (`--config`), if any.
    pub file: Option<String>,
    /// Changes of the file are picked up without a SIGHUP (a regular file at start).
    pub watched: bool,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Reloads refused since start (the settings in effect were kept).
    pub failures: u64,
    /// `ok` or `failed`; none before the first reload.
    pub last_result: Option<String>,
    /// `SIGHUP` or `config file changed`.
    pub last_cause: Option<String>,
    /// Why the last reload was refused, naming the file and the fix.
    pub last_error: Option<String>,
    pub last_seconds_ago: Option<f64>,
    /// Since the last successful reload, or the start.
    pub last_success_seconds_ago: Option<f64>,
    /// Keys changed in the file that a reload does not apply: they take effect at the next
    /// start.
    #[serde(default)]
    pub restart_needed: Vec<String>,
    /// A change of the file has been seen and waits to settle.
    pub pending_change_seconds_ago: Option<f64>,
}

fn ago(t: Option<SystemTime>) -> Option<f64> {
    t.map(|t| t.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

impl State {
    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        // A poisoned lock only means a panic elsewhere, which ends the process anyway.
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// At start: the file, whether it is watched, and the settings in effect.
    pub fn started(
        &self,
        file: Option<String>,
        watched: bool,
        config: BTreeMap<String, serde_json::Value>,
    ) {
        self.with(|r| {
            r.file = file;
            r.watched = watched;
            r.last_success = Some(SystemTime::now());
            r.config = config;
        });
    }

    pub fn succeeded(
        &self,
        cause: &str,
        restart_needed: Vec<String>,
        config: BTreeMap<String, serde_json::Value>,
    ) {
        let now = SystemTime::now();
        self.with(|r| {
            r.ok += 1;
            r.last = Some((now, cause.to_string(), None));
            r.last_success = Some(now);
            r.restart_needed = restart_needed;
            r.config = config;
        });
    }

    pub fn failed(&self, cause: &str, error: String) {
        self.with(|r| {
            r.failed += 1;
            r.last = Some((SystemTime::now(), cause.to_string(), Some(error)));
        });
    }

    pub fn set_pending(&self, since: Option<Instant>) {
        let at = since.map(|t| SystemTime::now() - t.elapsed());
        self.with(|r| r.pending_since = at);
    }

    pub fn status(&self) -> (ReloadStatus, BTreeMap<String, serde_json::Value>) {
        self.with(|r| {
            let st = ReloadStatus {
                file: r.file.clone(),
                watched: r.watched,
                reloads: r.ok,
                failures: r.failed,
                last_result: r
                    .last
                    .as_ref()
                    .map(|(_, _, e)| if e.is_some() { "failed" } else { "ok" }.to_string()),
                last_cause: r.last.as_ref().map(|(_, c, _)| c.clone()),
                last_error: r.last.as_ref().and_then(|(_, _, e)| e.clone()),
                last_seconds_ago: ago(r.last.as_ref().map(|(t, _, _)| *t)),
                last_success_seconds_ago: ago(r.last_success),
                restart_needed: r.restart_needed.clone(),
                pending_change_seconds_ago: ago(r.pending_since),
            };
            (st, r.config.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_acted_on_only_once_it_has_settled() {
        let t0 = Instant::now();
        let mut s = Settle::new(Ok(b"a".to_vec()));
        assert_eq!(s.observe(Ok(b"a".to_vec()), t0), None);
        // Half-written, then complete before it settled: the half is never acted on.
        assert_eq!(s.observe(Ok(b"ab".to_vec()), t0), None);
        assert_eq!(s.observe(Ok(b"ab".to_vec()), t0 + SETTLE / 2), None);
        assert_eq!(s.observe(Ok(b"abc".to_vec()), t0 + SETTLE), None);
        assert_eq!(s.pending_since(), Some(t0 + SETTLE));
        assert_eq!(
            s.observe(Ok(b"abc".to_vec()), t0 + SETTLE * 2),
            Some(Ok(b"abc".to_vec()))
        );
        assert_eq!(s.pending_since(), None);
        assert_eq!(s.observe(Ok(b"abc".to_vec()), t0 + SETTLE * 3), None);
        // A failing read settles too, and is reported once.
        let e: Outcome = Err("gone".into());
        assert_eq!(s.observe(e.clone(), t0 + SETTLE * 3), None);
        assert_eq!(s.observe(e.clone(), t0 + SETTLE * 4), Some(e.clone()));
        assert_eq!(s.observe(e, t0 + SETTLE * 5), None);
        // SIGHUP: acted on at once; the same content later is no change.
        s.acted_on(Ok(b"x".to_vec()));
        assert_eq!(s.observe(Ok(b"x".to_vec()), t0 + SETTLE * 6), None);
    }
}
