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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

pub use crate::config::DiscoverySettings;
use crate::control::backend::{Backend, Backends, Source, State};
use crate::metrics::Metrics;
pub use crate::server::DiscoveryMode as Mode;
use crate::server::ServerSpec;

const SLICE_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes";
const ENDPOINTS_PATH: &str = "/api/v1/namespaces/default/endpoints/kubernetes";
/// Largest API answer read (the `kubernetes` objects are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const STATE_FILE: &str = "servers.json";

/// The merge rules: seeds, the state file's servers and the discovered set → the set.
#[derive(Debug, Clone)]
pub struct ServerList {
    pub seeds: Vec<ServerSpec>,
    pub from_state: Vec<ServerSpec>,
    pub discovered: Option<Vec<ServerSpec>>,
    pub mode: Mode,
}

impl ServerList {
    pub fn effective(&self) -> Vec<(ServerSpec, Source)> {
        match (&self.discovered, self.mode) {
            (Some(found), Mode::Seed) if !found.is_empty() => found
                .iter()
                .map(|s| (s.clone(), Source::Discovered))
                .collect(),
            (_, Mode::Pin) => self
                .seeds
                .iter()
                .map(|s| (s.clone(), Source::Seed))
                .collect(),
            _ => {
                let mut out: Vec<(ServerSpec, Source)> = self
                    .seeds
                    .iter()
                    .map(|s| (s.clone(), Source::Seed))
                    .collect();
                for s in &self.from_state {
                    if !self.seeds.contains(s) {
                        out.push((s.clone(), Source::StateFile));
                    }
                }
                out
            }
        }
    }
}

// ----- API shapes (only the fields apilb reads) -----

#[derive(Deserialize)]
struct EndpointSlice {
    #[serde(rename = "addressType")]
    address_type: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct Port {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct Endpoints {
    #[serde(default)]
    subsets: Option<Vec<Subset>>,
}

#[derive(Deserialize)]
struct Subset {
    #[serde(default)]
    addresses: Option<Vec<EndpointAddress>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct EndpointAddress {
    ip: String,
}

fn https_port(ports: &[Port]) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .or_else(|| ports.first())
        .and_then(|p| p.port)
}

fn spec(ip: &str, port: u16) -> Option<ServerSpec> {
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    Some(ServerSpec {
        host: ip.to_string(),
        port,
    })
}

/// The servers of an EndpointSlice: ready endpoints (no condition = ready), its https port.
pub fn parse_endpoint_slice(body: &[u8]) -> Result<Vec<ServerSpec>, String> {
    let s: EndpointSlice =
        serde_json::from_slice(body).map_err(|e| format!("not an EndpointSlice: {e}"))?;
    if let Some(t) = &s.address_type {
        if t != "IPv4" && t != "IPv6" {
            return Err(format!("addressType {t} is not an IP family"));
        }
    }
    let port = https_port(s.ports.as_deref().unwrap_or_default())
        .ok_or("the EndpointSlice has no port")?;
    let mut out = Vec::new();
    for ep in s.endpoints.unwrap_or_default() {
        if ep.conditions.and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for a in &ep.addresses {
            if let Some(sp) = spec(a, port) {
                if !out.contains(&sp) {
                    out.push(sp);
                }
            }
        }
    }
    Ok(out)
}

/// The servers of the Endpoints object: ready addresses of each subset with its https port.
pub fn parse_endpoints(body: &[u8]) -> Result<Vec<ServerSpec>, String> {
    let e: Endpoints =
        serde_json::from_slice(body).map_err(|e| format!("not an Endpoints: {e}"))?;
    let mut out = Vec::new();
    for subset in e.subsets.unwrap_or_default() {
        let Some(port) = https_port(subset.ports.as_deref().unwrap_or_default()) else {
            continue;
        };
        for a in subset.addresses.unwrap_or_default() {
            if let Some(sp) = spec(&a.ip, port) {
                if !out.contains(&sp) {
                    out.push(sp);
                }
            }
        }
    }
    Ok(out)
}

// ----- state file -----

#[derive(Serialize, Deserialize)]
struct StateFile {
    servers: Vec<String>,
    /// Seconds since the Unix epoch of the discovery that produced it.
    updated: u64,
}

/// Loads the last discovered set. A missing file is an empty set; a corrupt one is warned
/// about and ignored, never fatal.
pub fn load_state(dir: &Path) -> Vec<ServerSpec> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the state file; starting from the seeds");
            return Vec::new();
        }
    };
    match parse_state(&text) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e,
                "corrupt state file ignored; starting from the seeds (it is rewritten at the next discovery)");
            Vec::new()
        }
    }
}

/// Parses the state file's text: the servers it lists, or why it is unusable.
pub fn parse_state(text: &[u8]) -> Result<Vec<ServerSpec>, String> {
    let parsed: StateFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    parsed
        .servers
        .iter()
        .map(|s| ServerSpec::parse(s))
        .collect()
}

fn save_state(dir: &Path, servers: &[ServerSpec]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let st = StateFile {
        servers: servers.iter().map(|s| s.to_string()).collect(),
        updated: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let body = serde_json::to_vec_pretty(&st).map_err(|e| e.to_string())?;
    // New files get mode 0600; the write is atomic (temp file, fsync, rename, fsync dir).
    crate::util::atomic_file::write_atomic(&dir.join(STATE_FILE), &body).map_err(|e| e.to_string())
}

// ----- credentials -----

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<ContextRef>>,
    #[serde(default)]
    clusters: Vec<Named<ClusterRef>>,
    #[serde(default)]
    users: Vec<Named<UserRef>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: Option<T>,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct ClusterRef {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "tls-server-name")]
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct UserRef {
    #[serde(rename = "client-certificate")]
    cert: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

/// What a discovery request needs, read fresh from the kubeconfig and the files it names.
pub struct Credentials {
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
    /// Name to verify the apiserver certificate against, when the kubeconfig gives one.
    server_name: Option<String>,
}

fn read_file(base: &Path, p: &Path, what: &str) -> Result<Vec<u8>, String> {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::fs::read(&full).map_err(|e| format!("{what} {}: {e}", full.display()))
}

fn b64(data: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("{what}: not base64: {e}"))
}

impl Credentials {
    /// Reads the current context's cluster CA and user credentials.
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let p = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{p}: cannot read the discovery kubeconfig: {e}"))?;
        let kc: Kubeconfig =
            yaml_serde::from_str(&text).map_err(|e| format!("{p}: not a kubeconfig: {e}"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = kc.current_context.clone().unwrap_or_default();
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| format!("{p}: current-context `{ctx_name}` not found in contexts"))?;
        let cluster_name = ctx.cluster.clone().unwrap_or_default();
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| format!("{p}: cluster `{cluster_name}` not found"))?;
        let user_name = ctx.user.clone().unwrap_or_default();
        let default_user = UserRef::default();
        let user = kc
            .users
            .iter()
            .find(|u| u.name == user_name)
            .and_then(|u| u.value.as_ref())
            .unwrap_or(&default_user);

        let ca_pem = match (&cluster.ca_data, &cluster.ca) {
            (Some(d), _) => b64(d, "certificate-authority-data")?,
            (None, Some(f)) => read_file(base, f, "certificate-authority")?,
            (None, None) => {
                return Err(format!(
                    "{p}: cluster `{cluster_name}` has no certificate-authority: discovery \
                     verifies the apiserver and needs the cluster CA"
                ))
            }
        };
        let roots =
            crate::control::tls::parse_certs(&format!("{p}: certificate-authority"), &ca_pem)?;
        let cert = match (&user.cert_data, &user.cert) {
            (Some(d), _) => Some(b64(d, "client-certificate-data")?),
            (None, Some(f)) => Some(read_file(base, f, "client-certificate")?),
            _ => None,
        };
        let key = match (&user.key_data, &user.key) {
            (Some(d), _) => Some(b64(d, "client-key-data")?),
            (None, Some(f)) => Some(read_file(base, f, "client-key")?),
            _ => None,
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => {
                let chain =
                    crate::control::tls::parse_certs(&format!("{p}: client-certificate"), &c)?;
                let key: PrivateKeyDer<'static> =
                    crate::control::tls::parse_key(&format!("{p}: client-key"), &k)?;
                Some((chain, key))
            }
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{p}: user `{user_name}` has a client certificate without its key (or the \
                     reverse)"
                ))
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                String::from_utf8_lossy(&read_file(base, f, "tokenFile")?)
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        if client.is_none() && token.is_none() {
            return Err(format!(
                "{p}: user `{user_name}` has neither a client certificate nor a token; \
                 discovery supports those two (exec plugins are not run)"
            ));
        }
        let tls = crate::control::tls::client_config_with(roots, client, &[b"http/1.1"])
            .map_err(|e| format!("{p}: {e}"))?;
        // The kubeconfig's tls-server-name, else its server's host unless it is loopback (a
        // rewritten kubeconfig points at apilb itself), else the server's own host.
        let server_name = cluster.tls_server_name.clone().or_else(|| {
            let url: http::Uri = cluster.server.as_deref()?.parse().ok()?;
            let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!loopback).then(|| host.to_string())
        });
        Ok(Credentials {
            tls,
            token,
            server_name,
        })
    }
}

/// One discovery answer.
#[derive(Debug)]
pub enum Answer {
    Servers(Vec<ServerSpec>, &'static str),
    Forbidden(String),
}

async fn get(server: &Backend, creds: &Credentials, path: &str) -> Result<(u16, Bytes), String> {
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| format!("{} has no address", server.name))?;
    let name = creds.server_name.as_deref().unwrap_or(&server.spec.host);
    let sni = ServerName::try_from(name.to_string())
        .map_err(|e| format!("`{name}` is not a TLS server name: {e}"))?;
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(creds.tls.clone())
            .connect(sni, tcp)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path)
            .header(http::header::HOST, server.spec.to_string())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("apilb/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &creds.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| format!("{path} on {addr}: no answer within 5s"))?
}

/// Asks `server` for the apiserver list: the EndpointSlice first, then the Endpoints.
pub async fn fetch(server: &Backend, creds: &Credentials) -> Result<Answer, String> {
    let (code, body) = get(server, creds, SLICE_PATH).await?;
    let slice_status = match code {
        200 => return parse_endpoint_slice(&body).map(|s| Answer::Servers(s, "EndpointSlice")),
        403 | 404 => code,
        401 => return Err("the discovery credentials were refused (401)".into()),
        other => return Err(format!("EndpointSlice: the apiserver answered {other}")),
    };
    let (code, body) = get(server, creds, ENDPOINTS_PATH).await?;
    match code {
        200 => parse_endpoints(&body).map(|s| Answer::Servers(s, "Endpoints")),
        403 => Ok(Answer::Forbidden(format!(
            "EndpointSlice answered {slice_status}, Endpoints answered 403"
        ))),
        other => Err(format!("Endpoints: the apiserver answered {other}")),
    }
}

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
    m.lock().unwrap_or_else(|e| e.into_inner())
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
                servers = ?from_state.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
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
                .map(|d| d.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        }
    }

    fn fail(&self, result: &'static str, why: String) {
        self.metrics.discovery_attempt(result);
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
            Err(e) => return self.fail("error", e),
        };
        let snapshot = backends.snapshot();
        let mut order: Vec<Arc<Backend>> = snapshot.iter().cloned().collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        order.sort_by_key(|b| match b.state() {
            State::Ready => 0,
            State::Unknown | State::NotReady | State::Draining => 1,
            State::Down => 2,
        });
        let mut answer = Err("no server to ask".to_string());
        for b in order.iter().take(3) {
            answer = fetch(b, &creds).await;
            if answer.is_ok() {
                break;
            }
        }
        let (found, api) = match answer {
            Err(e) => return self.fail("error", e),
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
            return self.fail(
                "empty",
                format!("the {api} `kubernetes` lists no ready server"),
            );
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
            sorted_new.sort_by_key(|s| s.to_string());
            let mut sorted_old = old.clone();
            sorted_old.sort_by_key(|s| s.to_string());
            let changed = l.discovered.is_none() || sorted_new != sorted_old;
            if changed {
                let added: Vec<String> = found
                    .iter()
                    .filter(|s| !old.contains(s))
                    .map(|s| s.to_string())
                    .collect();
                let removed: Vec<String> = old
                    .iter()
                    .filter(|s| !found.contains(s))
                    .map(|s| s.to_string())
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
