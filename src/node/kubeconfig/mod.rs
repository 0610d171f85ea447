//! `apilb kubeconfig rewrite|restore`: point a node's kubeconfigs at the local apilb.
//!
//! # What this module owns
//!
//! * Rewriting the `server` of one, a named, or every cluster of a kubeconfig to the
//!   local apilb endpoint ([`DEFAULT_SERVER`]), and putting it back ([`rewrite`],
//!   [`restore`]).
//! * The same for a kubeconfig embedded as a string in a ConfigMap, such as kubeadm's
//!   `kube-system/kube-proxy` ConfigMap under the key `kubeconfig.conf`
//!   ([`rewrite_configmap`], [`restore_configmap`]).
//! * Writing the result safely ([`write_atomic`], [`backup`], over
//!   [`crate::util::atomic_file`]).
//!
//! The parts: `document` (parsing, selecting clusters, writing back), `cluster` (the
//! rewrite of one cluster), `record` (the extension that remembers the original),
//! `configmap` (the ConfigMap wrapper) and `cmd` (the command around it all).
//!
//! # What it must not do
//!
//! It does no network I/O and starts no processes: it never talks to an API server and
//! never runs `kubectl`; the caller (the CLI) reads the input, prints messages, and
//! decides whether to write. It never panics on any input: every problem with the
//! input is a [`KubeconfigError`] whose message names the file, the field, and the fix.
//!
//! # The rewrite
//!
//! For each selected cluster (the current context's cluster, a named one, or all):
//!
//! * `server` becomes the new endpoint (default `https://127.0.0.1:6443`).
//! * `tls-server-name` is set to the *original* server's host (IPv6 brackets stripped),
//!   because kubeadm's apiserver certificate has no `127.0.0.1` SAN but always holds
//!   the host the node was joined with. An existing `tls-server-name` is kept; an
//!   explicit [`RewriteOptions::tls_server_name`] wins over both.
//! * The original values are recorded in the cluster's `extensions` list, so that
//!   [`restore`] can put everything back exactly and a second rewrite is a no-op:
//!
//! ```yaml
//! extensions:
//! - name: apilb.io/original-server
//!   extension:
//!     apiVersion: apilb.io/v1
//!     kind: OriginalServer
//!     server: https://10.0.0.10:6443   # the server before the rewrite
//!     tlsServerNameAdded: true         # restore removes tls-server-name
//!     tlsServerName: old.example       # only when an explicit option replaced one
//! ```
//!
//! client-go (kubelet, kube-proxy, kubectl) decodes `extensions[].extension` as a
//! `runtime.RawExtension` and keeps its raw JSON; giving it `apiVersion`/`kind` makes
//! it a well-formed runtime object. The tests run the real `kubectl` on every
//! rewritten golden file: `config view` loads it and shows the record, `config view
//! --minify --raw` shows the new server and tls-server-name, and after a `kubectl
//! config set-context` has rewritten the file the record is still there and
//! [`restore`] still works.
//!
//! # Format caveats
//!
//! The document is parsed into a `yaml_serde::Value` and written back in kubectl's
//! block style: every field and the key order are kept, but **comments, blank lines,
//! anchors and quoting style are lost**, and JSON input comes out as YAML. Strings are
//! quoted wherever a YAML 1.1 reader (client-go's) could take them for a boolean or
//! number (`"no"`, `"1e3"`). Restore gives a document equal to the original as data,
//! not byte for byte (an originally empty `extensions: []` is dropped).
//!
//! # ConfigMap mode
//!
//! The input is `kubectl get cm NAME -o yaml`; `data[KEY]` is rewritten as above and
//! the ConfigMap is emitted with the server-populated metadata (`resourceVersion`,
//! `uid`, `creationTimestamp`, `managedFields`, `selfLink`, `generation`) removed, so
//! the output is a manifest for `kubectl apply -f -` (or `replace -f -`): a stale
//! `resourceVersion` makes the update fail with a conflict, and `managedFields` and the
//! rest are server bookkeeping that should not be sent back. The price is that the
//! update does not detect a concurrent edit of the ConfigMap; it changes one field of
//! an object that is rarely edited, so last-writer-wins is acceptable. Annotations
//! (including `kubectl.kubernetes.io/last-applied-configuration`) and labels are kept.
//! Note that `kubeadm upgrade` re-renders the kube-proxy ConfigMap, undoing the rewrite.
//!
//! # Restore
//!
//! [`ClusterSelector::All`] restores every cluster that carries a record and ignores
//! the others; a file without any record gives [`Outcome::Unchanged`] ("nothing to
//! restore"), not an error.

mod cluster;
pub mod cmd;
mod configmap;
mod document;
mod record;

use std::io;
use std::path::{Path, PathBuf};

use crate::util::atomic_file::{self, AtomicFileError, Backup};
use cluster::*;
pub use configmap::{restore_configmap, rewrite_configmap};
#[cfg(feature = "testing")]
pub(crate) use document::normalize_yaml11_bools;
use document::*;
use record::*;

/// The endpoint apilb listens on on every node.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";
/// `name` of the NamedExtension that records the original server.
pub const EXTENSION_NAME: &str = "apilb.io/original-server";
/// `apiVersion` of the recorded extension object.
pub const EXTENSION_API_VERSION: &str = "apilb.io/v1";
/// `kind` of the recorded extension object.
pub const EXTENSION_KIND: &str = "OriginalServer";
/// The ConfigMap key kubeadm's kube-proxy ConfigMap keeps its kubeconfig under.
pub const DEFAULT_CONFIGMAP_KEY: &str = "kubeconfig.conf";
/// Appended to a file's path by [`backup`].
pub const BACKUP_SUFFIX: &str = ".apilb-backup";

/// Metadata fields the API server fills in; dropped from an emitted ConfigMap.
const SERVER_POPULATED_METADATA: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generation",
];

/// Which clusters of a kubeconfig to act on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClusterSelector {
    /// The cluster of `current-context` (what kubelet and kube-proxy use).
    #[default]
    Current,
    /// The `clusters[]` entry with this name.
    Named(String),
    /// Every cluster. For [`restore`], every cluster that carries an apilb record;
    /// this is what `apilb kubeconfig restore` (which has no cluster flag) should pass.
    All,
}

/// What [`rewrite`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteOptions {
    /// The new `server`; must be an `https://` URL.
    pub server: String,
    /// Which clusters to rewrite.
    pub clusters: ClusterSelector,
    /// `tls-server-name` to set instead of the original server's host.
    pub tls_server_name: Option<String>,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        RewriteOptions {
            server: DEFAULT_SERVER.to_string(),
            clusters: ClusterSelector::Current,
            tls_server_name: None,
        }
    }
}

/// One cluster's change, for the CLI to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The cluster's `name`.
    pub cluster: String,
    /// `server` before.
    pub from: String,
    /// `server` after.
    pub to: String,
    /// `tls-server-name` after (`None`: the field is absent).
    pub tls_server_name: Option<String>,
}

/// `cluster "NAME": FROM -> TO (tls-server-name X)`, for the CLI's report.
impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster \"{}\": {} -> {}",
            self.cluster, self.from, self.to
        )?;
        match &self.tls_server_name {
            Some(name) => write!(f, " (tls-server-name {name})"),
            None => write!(f, " (no tls-server-name)"),
        }
    }
}

/// The result of a rewrite or restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new document (write it, or diff it for `--dry-run`) and what changed.
    Changed { text: String, changes: Vec<Change> },
    /// Nothing to do, e.g. "already rewritten" or "nothing to restore"; not an error.
    Unchanged { reason: String },
}

/// Everything that can go wrong; each message names the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("{file}: not valid YAML: {message}; fix the syntax (a kubeconfig is a YAML mapping with apiVersion, clusters, contexts, users)")]
    NotYaml { file: String, message: String },

    #[error("{file}: not a kubeconfig: {reason}")]
    NotKubeconfig { file: String, reason: String },

    #[error("{file}: `current-context` is not set, so it is unclear which cluster to rewrite; pass --cluster NAME (clusters in this file: {}) or --all-clusters", list(.clusters))]
    NoCurrentContext { file: String, clusters: Vec<String> },

    #[error("{file}: `current-context` is \"{context}\" but no entry of `contexts` has that name (contexts in this file: {}); fix current-context or pass --cluster NAME", list(.contexts))]
    ContextNotFound {
        file: String,
        context: String,
        contexts: Vec<String>,
    },

    #[error("{file}: no entry of `clusters` is named \"{cluster}\" (clusters in this file: {}); {hint}", list(.clusters))]
    ClusterNotFound {
        file: String,
        cluster: String,
        clusters: Vec<String>,
        hint: String,
    },

    #[error("{file}: {field} is missing or empty; add the API server URL (e.g. server: https://10.0.0.10:6443) and run again")]
    MissingServer { file: String, field: String },

    #[error("{file}: {field} is \"{server}\": {reason}; it must be an https URL such as https://10.0.0.10:6443 (apilb fronts TLS API servers only)")]
    InvalidServer {
        file: String,
        field: String,
        server: String,
        reason: String,
    },

    #[error("{file}: {field} is set, so the client would reach {server} through that proxy, i.e. on the proxy's own host; remove proxy-url from this cluster (apilb dials the API servers itself) or leave the cluster out with --cluster NAME")]
    ProxyUrl {
        file: String,
        field: String,
        server: String,
    },

    #[error("invalid option {option} \"{value}\": {reason}")]
    InvalidOption {
        option: &'static str,
        value: String,
        reason: String,
    },

    #[error("{file}: {field} {problem}; {fix}")]
    Malformed {
        file: String,
        field: String,
        problem: String,
        fix: String,
    },

    #[error("{file}: not a ConfigMap: {reason}")]
    NotConfigMap { file: String, reason: String },

    #[error("{file}: the ConfigMap has no `data.{key}` (keys in data: {}); pass --configmap-key with one of them", list(.keys))]
    MissingConfigMapKey {
        file: String,
        key: String,
        keys: Vec<String>,
    },

    /// Reading the input failed (a missing or unreadable file is bad input: exit code 2).
    /// Writing failures are [`AtomicFileError`]s instead: the input was fine.
    #[error("{}: {op}: {err}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        err: io::Error,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

// ---------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------

/// Rewrites the selected clusters of the kubeconfig `text`. `source` names the input
/// in messages (a path, or `-` for stdin).
pub fn rewrite(
    text: &str,
    source: &str,
    opts: &RewriteOptions,
) -> Result<Outcome, KubeconfigError> {
    check_options(opts)?;
    let mut doc = parse_yaml(text, source)?;
    let indices = select_clusters(&doc, source, &opts.clusters, Action::Rewrite)?;
    let mut changes = Vec::new();
    let mut skipped = Vec::new();
    for idx in indices {
        let (name, body) = cluster_body_mut(&mut doc, source, idx)?;
        let field = format!("clusters[{idx}] (\"{name}\").cluster");
        match rewrite_cluster(body, source, &field, &name, opts)? {
            Step::Changed(change) => changes.push(change),
            Step::Skipped(why) => skipped.push(why),
        }
    }
    finish(doc, source, changes, skipped, "nothing to rewrite")
}

/// Undoes [`rewrite`] on the selected clusters: puts the recorded server back, removes
/// `tls-server-name` if the rewrite added it, and removes the record. A file that was
/// never rewritten gives [`Outcome::Unchanged`] ("nothing to restore").
pub fn restore(
    text: &str,
    source: &str,
    clusters: &ClusterSelector,
) -> Result<Outcome, KubeconfigError> {
    let mut doc = parse_yaml(text, source)?;
    let indices = select_clusters(&doc, source, clusters, Action::Restore)?;
    let mut changes = Vec::new();
    let mut skipped = Vec::new();
    for idx in indices {
        let (name, body) = cluster_body_mut(&mut doc, source, idx)?;
        let field = format!("clusters[{idx}] (\"{name}\").cluster");
        match restore_cluster(body, source, &field, &name)? {
            Step::Changed(change) => changes.push(change),
            Step::Skipped(why) => skipped.push(why),
        }
    }
    finish(doc, source, changes, skipped, "nothing to restore")
}

/// Replaces `path` with `bytes` atomically, keeping its mode and owner (see
/// [`crate::util::atomic_file::write_atomic`]); the original is untouched on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicFileError> {
    atomic_file::write_atomic(path, bytes)
}

/// Copies `path` to `<path>.apilb-backup` (atomically, with the same mode and owner). An
/// older backup with other content is moved to `<path>.apilb-backup.UNIXTIME` first.
pub fn backup(path: &Path) -> Result<Backup, AtomicFileError> {
    atomic_file::backup(path, BACKUP_SUFFIX)
}

#[cfg(test)]
mod tests;
