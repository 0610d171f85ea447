//! Control-plane discovery: follows the cluster's own list of apiservers (the `kubernetes`
//! EndpointSlice, or the `kubernetes` Endpoints where slices are not served or not allowed),
//! merges it with the configured seeds, and persists it so a restart without the API still
//! knows every control plane.
//!
//! Owns: reading the node's credentials from a kubeconfig (client certificate, token or
//! token file; re-read every round, so kubelet's certificate rotation is picked up), the
//! request straight to a ready server (never through apilb's own listener), parsing the two
//! API shapes, the merge rules (`ServerList`) and the state file. It never changes a server's
//! health; the set it produces is applied by the caller, which starts new servers not ready
//! (they take traffic only after their checks pass) and drains removed ones.
//!
//! Merge rules, chosen so that discovery can never cut a node off:
//! * seeds (flags or config file) are what apilb starts with, plus the last discovered set
//!   from the state file;
//! * once discovery succeeds (mode `seed`), the discovered set is what apilb balances over;
//! * an empty, unparseable or failed answer changes nothing;
//! * mode `pin` keeps the seeds and only reports what the cluster says.
//!
//! Authorization: the Node authorizer lets a node identity `get` Endpoints (a long-standing
//! rule in `NodeRules`, kept for in-tree volume plugins and marked TODO to restrict) but
//! grants nothing on EndpointSlices, so on a default cluster the slice answers 403 and the
//! Endpoints fallback succeeds. `manifests/discovery-rbac.yaml` grants the slice read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use crate::config::DiscoverySettings;
use crate::control::backend::{Backend, Backends, Source, State};
use crate::metrics::Metrics;
pub use crate::server::DiscoveryMode as Mode;
use crate::server::ServerSpec;

mod credentials;
mod error;
mod fetch;
mod merge;
mod state_file;

pub use credentials::Credentials;
pub use error::DiscoveryError;
pub use fetch::{fetch, parse_endpoint_slice, parse_endpoints, Answer};
pub use merge::ServerList;
use state_file::save_state;
pub use state_file::{load_state, parse_state, STATE_FILE};

/// What /status shows about discovery.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    pub mode: String,
    pub last_success_seconds_ago: Option<f64>,
    pub last_error: Option<String>,
    pub api: Option<String>,
    pub discovered: Vec<String>,
}

/// Applies a new server set (the caller starts checkers, drains removed servers).
pub type Apply = Arc<dyn Fn(&[(ServerSpec, Source)]) + Send + Sync>;

pub struct Discovery {
    settings: DiscoverySettings,
    list: Mutex<ServerList>,
    last_success: Mutex<Option<SystemTime>>,
    last_error: Mutex<Option<String>>,
    api: Mutex<Option<&'static str>>,
    forbidden_logged: AtomicBool,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Discovery {
    pub fn new(
        settings: DiscoverySettings,
        seeds: Vec<ServerSpec>,
        metrics: Arc<Metrics>,
    ) -> Discovery {
        let from_state = load_state(&settings.state_dir);
        if !from_state.is_empty() {
            tracing::info!(file = %settings.state_dir.join(STATE_FILE).display(),
                servers = ?from_state.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "loaded the last discovered servers");
        }
        Discovery {
            list: Mutex::new(ServerList {
                seeds,
                from_state,
                discovered: None,
                mode: settings.mode,
            }),
            settings,
            last_success: Mutex::new(None),
            last_error: Mutex::new(None),
            api: Mutex::new(None),
            forbidden_logged: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn effective(&self) -> Vec<(ServerSpec, Source)> {
        lock(&self.list).effective()
    }

    /// New seeds (a reload); returns the set to apply.
    pub fn set_seeds(&self, seeds: Vec<ServerSpec>) -> Vec<(ServerSpec, Source)> {
        let mut l = lock(&self.list);
        l.seeds = seeds;
        l.effective()
    }

    pub fn status(&self) -> DiscoveryStatus {
        DiscoveryStatus {
            mode: match self.settings.mode {
                Mode::Seed => "seed".into(),
                Mode::Pin => "pin".into(),
            },
            last_success_seconds_ago: lock(&self.last_success)
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs_f64()),
            last_error: lock(&self.last_error).clone(),
            api: lock(&self.api).map(str::to_string),
            discovered: lock(&self.list)
                .discovered
                .as_ref()
                .map(|d| d.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        }
    }

    fn fail(&self, why: DiscoveryError) {
        self.metrics.discovery_attempt(why.result());
        let why = why.to_string();
        let mut last = lock(&self.last_error);
        if last.as_deref() != Some(why.as_str()) {
            tracing::warn!(error = %why, "discovery failed; keeping the current servers");
        }
        *last = Some(why);
    }

    /// Runs one round against a ready server; applies and persists a changed set.
    pub async fn round(&self, backends: &Backends, apply: &Apply) {
        let creds = match Credentials::load(&self.settings.kubeconfig) {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let snapshot = backends.snapshot();
        let mut order: Vec<Arc<Backend>> = snapshot.iter().cloned().collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        order.sort_by_key(|b| match b.state() {
            State::Ready => 0,
            State::Unknown | State::NotReady | State::Draining => 1,
            State::Down => 2,
        });
        let mut answer = Err(DiscoveryError::NoServer);
        for b in order.iter().take(3) {
            answer = fetch(b, &creds).await;
            if answer.is_ok() {
                break;
            }
        }
        let (found, api) = match answer {
            Err(e) => return self.fail(e),
            Ok(Answer::Forbidden(what)) => {
                self.metrics.discovery_attempt("forbidden");
                if !self.forbidden_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(detail = %what,
                        "discovery is not allowed for this identity; keeping the current \
                         servers. Fix: kubectl apply -f manifests/discovery-rbac.yaml (lets \
                         group system:nodes get the `kubernetes` EndpointSlice and Endpoints)");
                }
                *lock(&self.last_error) = Some(format!("forbidden: {what}"));
                return;
            }
            Ok(Answer::Servers(found, api)) => (found, api),
        };
        if found.is_empty() {
            return self.fail(DiscoveryError::Empty { api });
        }
        self.metrics.discovery_attempt("ok");
        self.metrics.discovery_success_now();
        tracing::debug!(api, servers = found.len(), "discovery round done");
        *lock(&self.last_success) = Some(SystemTime::now());
        *lock(&self.last_error) = None;
        *lock(&self.api) = Some(api);
        let (changed, set) = {
            let mut l = lock(&self.list);
            let old = l.discovered.clone().unwrap_or_default();
            let mut sorted_new = found.clone();
            sorted_new.sort_by_key(ToString::to_string);
            let mut sorted_old = old.clone();
            sorted_old.sort_by_key(ToString::to_string);
            let changed = l.discovered.is_none() || sorted_new != sorted_old;
            if changed {
                let added: Vec<String> = found
                    .iter()
                    .filter(|s| !old.contains(s))
                    .map(ToString::to_string)
                    .collect();
                let removed: Vec<String> = old
                    .iter()
                    .filter(|s| !found.contains(s))
                    .map(ToString::to_string)
                    .collect();
                tracing::info!(api, ?added, ?removed, mode = ?l.mode,
                    "discovered control planes changed");
                l.discovered = Some(found.clone());
            }
            (changed, l.effective())
        };
        if changed {
            match save_state(&self.settings.state_dir, &found) {
                Ok(()) => tracing::debug!(
                    file = %self.settings.state_dir.join(STATE_FILE).display(),
                    "saved the discovered servers"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot persist the discovered servers"),
            }
            apply(&set);
        }
    }

    /// Discovers every `interval` (±10%) until `stop`.
    pub async fn run(
        self: Arc<Self>,
        backends: Arc<Backends>,
        apply: Apply,
        stop: tokio_util::sync::CancellationToken,
    ) {
        // The first round soon after start, once health checks had a moment.
        let mut wait = Duration::from_millis(500);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            self.round(&backends, &apply).await;
            wait = self.settings.interval.mul_f64(rand::random_range(0.9..1.1));
        }
    }
}

#[cfg(test)]
mod tests;
