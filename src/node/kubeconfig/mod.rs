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
//! * Writing the result safely ([`write_atomic`], [`backup`]) and showing it
//!   ([`unified_diff`], for `--dry-run`).
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

pub mod cmd;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use yaml_serde::{Mapping, Value};

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

    #[error("{}: {op}: {err}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
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

/// [`rewrite`] for the kubeconfig held as a string in `data[key]` of a ConfigMap
/// manifest; emits the whole ConfigMap (see the module docs for the metadata dropped).
pub fn rewrite_configmap(
    text: &str,
    source: &str,
    key: &str,
    opts: &RewriteOptions,
) -> Result<Outcome, KubeconfigError> {
    check_options(opts)?;
    in_configmap(text, source, key, |inner, inner_source| {
        rewrite(inner, inner_source, opts)
    })
}

/// [`restore`] for the kubeconfig held as a string in `data[key]` of a ConfigMap.
pub fn restore_configmap(
    text: &str,
    source: &str,
    key: &str,
    clusters: &ClusterSelector,
) -> Result<Outcome, KubeconfigError> {
    in_configmap(text, source, key, |inner, inner_source| {
        restore(inner, inner_source, clusters)
    })
}

/// Replaces `path` with `bytes` atomically: a temp file `.NAME.apilb-tmp-PID` is
/// created in the same directory with `O_EXCL`, given the original's mode and owner
/// (a new file gets 0600), written and fsynced, renamed over `path`, and the directory
/// is fsynced. If `path` is a symlink, its target is replaced. On any error before the
/// rename the temp file is removed and the original is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KubeconfigError> {
    let target = resolve_symlink(path)?;
    let owner = match fs::metadata(&target) {
        Ok(meta) => Some(Owner::of(&meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_err(&target, "read metadata", err)),
    };
    write_atomic_with(&target, bytes, owner, &|_| Ok(()))
}

/// Copies `path` to `<path>.apilb-backup` (atomically, with the same mode and owner)
/// and returns the backup's path. An older backup is replaced.
pub fn backup(path: &Path) -> Result<PathBuf, KubeconfigError> {
    let meta = fs::metadata(path).map_err(|e| io_err(path, "read metadata", e))?;
    let bytes = fs::read(path).map_err(|e| io_err(path, "read", e))?;
    let mut name = OsString::from(path.as_os_str());
    name.push(BACKUP_SUFFIX);
    let dest = PathBuf::from(name);
    write_atomic_with(&dest, &bytes, Some(Owner::of(&meta)), &|_| Ok(()))?;
    Ok(dest)
}

/// A unified diff (`--- label`, `+++ label`, `@@ -a,b +c,d @@` hunks with 3 lines of
/// context) from `old` to `new`; empty when they are equal.
pub fn unified_diff(label: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let ops = diff_lines(&a, &b);
    let mut out = format!("--- {label}\t(original)\n+++ {label}\t(new)\n");
    render_hunks(&mut out, &ops, &a, &b, 3);
    out
}

// ---------------------------------------------------------------------------------
// Document handling
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Rewrite,
    Restore,
}

enum Step {
    Changed(Change),
    Skipped(String),
}

fn check_options(opts: &RewriteOptions) -> Result<(), KubeconfigError> {
    if let Err(reason) = https_host(&opts.server) {
        return Err(KubeconfigError::InvalidOption {
            option: "--server",
            value: opts.server.clone(),
            reason: format!("{reason}; give an https URL such as {DEFAULT_SERVER}"),
        });
    }
    if let Some(name) = &opts.tls_server_name {
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(KubeconfigError::InvalidOption {
                option: "--tls-server-name",
                value: name.clone(),
                reason: "must be a host name or IP address, without scheme, port or spaces"
                    .to_string(),
            });
        }
    }
    Ok(())
}

fn parse_yaml(text: &str, source: &str) -> Result<Value, KubeconfigError> {
    yaml_serde::from_str::<Value>(text).map_err(|e| {
        let mut message = e.to_string();
        if let Some(at) = e.location().filter(|_| !message.contains(" line ")) {
            message.push_str(&format!(" at line {} column {}", at.line(), at.column()));
        }
        KubeconfigError::NotYaml {
            file: source.to_string(),
            message,
        }
    })
}

fn finish(
    doc: Value,
    source: &str,
    changes: Vec<Change>,
    skipped: Vec<String>,
    nothing: &str,
) -> Result<Outcome, KubeconfigError> {
    if changes.is_empty() {
        let reason = if skipped.is_empty() {
            format!("{source}: {nothing}")
        } else {
            format!("{source}: {nothing}: {}", skipped.join("; "))
        };
        return Ok(Outcome::Unchanged { reason });
    }
    let mut doc = doc;
    normalize_yaml11_bools(&mut doc);
    Ok(Outcome::Changed {
        text: emit_yaml(&doc),
        changes,
    })
}

/// client-go reads `insecure-skip-tls-verify: yes` (YAML 1.1) as `true`, yaml_serde as
/// the string "yes". A string in these boolean fields is invalid for client-go anyway,
/// so turning the YAML 1.1 words into booleans keeps the meaning when written back.
pub(crate) fn normalize_yaml11_bools(doc: &mut Value) {
    let Some(clusters) = doc.get_mut("clusters").and_then(Value::as_sequence_mut) else {
        return;
    };
    for entry in clusters {
        let Some(body) = entry.get_mut("cluster").and_then(Value::as_mapping_mut) else {
            continue;
        };
        for key in ["insecure-skip-tls-verify", "disable-compression"] {
            if let Some(slot) = body.get_mut(key) {
                // Exactly go-yaml v2's words: `tRue` stays a string there (the fuzz target
                // `kubeconfig` found it turned into a boolean).
                match slot.as_str() {
                    Some(
                        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True"
                        | "TRUE",
                    ) => *slot = Value::Bool(true),
                    Some(
                        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False"
                        | "FALSE",
                    ) => *slot = Value::Bool(false),
                    _ => {}
                }
            }
        }
    }
}

fn str_field<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn malformed(source: &str, field: String, problem: &str, fix: &str) -> KubeconfigError {
    KubeconfigError::Malformed {
        file: source.to_string(),
        field,
        problem: problem.to_string(),
        fix: fix.to_string(),
    }
}

/// The top-level mapping of a kubeconfig, after checking its shape.
fn kubeconfig_root<'a>(doc: &'a Value, source: &str) -> Result<&'a Mapping, KubeconfigError> {
    let not = |reason: String| KubeconfigError::NotKubeconfig {
        file: source.to_string(),
        reason,
    };
    let root = doc
        .as_mapping()
        .ok_or_else(|| not("the document is not a YAML mapping (is the file empty?)".into()))?;
    if let Some(kind) = root.get("kind") {
        match kind.as_str() {
            Some("Config") => {}
            Some("ConfigMap") => {
                return Err(not(format!(
                    "`kind` is ConfigMap; pass --configmap-key KEY to rewrite the kubeconfig it holds (kubeadm's kube-proxy ConfigMap uses {DEFAULT_CONFIGMAP_KEY})"
                )))
            }
            _ => {
                return Err(not(format!(
                    "`kind` is {}, expected Config",
                    describe(kind)
                )))
            }
        }
    }
    match root.get("clusters") {
        None | Some(Value::Null) => Err(not(
            "it has no `clusters` list; give the path of a kubeconfig such as /etc/kubernetes/kubelet.conf".into(),
        )),
        Some(Value::Sequence(seq)) if seq.is_empty() => {
            Err(not("its `clusters` list is empty; there is nothing to rewrite".into()))
        }
        Some(Value::Sequence(_)) => Ok(root),
        Some(other) => Err(not(format!(
            "`clusters` is {}, expected a list of {{name, cluster}} entries",
            describe(other)
        ))),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

fn cluster_names(root: &Mapping, source: &str) -> Result<Vec<String>, KubeconfigError> {
    named_entries(root, "clusters", "cluster", source)
}

/// The `name`s of the entries of a top-level list (`clusters`, `contexts`); every
/// entry must be a mapping with a non-empty string `name`, and names must be unique
/// (client-go rejects duplicates too).
fn named_entries(
    root: &Mapping,
    list: &str,
    body: &str,
    source: &str,
) -> Result<Vec<String>, KubeconfigError> {
    let seq = match root.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(seq)) => seq,
        Some(other) => {
            return Err(malformed(
                source,
                format!("`{list}`"),
                &format!("is {}", describe(other)),
                &format!("it must be a list of {{name, {body}}} entries"),
            ))
        }
    };
    let mut names: Vec<String> = Vec::with_capacity(seq.len());
    for (i, entry) in seq.iter().enumerate() {
        let name = entry
            .as_mapping()
            .and_then(|m| str_field(m, "name"))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                malformed(
                    source,
                    format!("{list}[{i}].name"),
                    "is missing or not a string",
                    &format!("every entry of `{list}` needs a name and a `{body}` mapping"),
                )
            })?;
        if names.iter().any(|n| n == name) {
            return Err(malformed(
                source,
                format!("{list}[{i}].name"),
                &format!("repeats the name \"{name}\""),
                "names must be unique (client-go refuses the file otherwise); rename or remove one",
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Indices into `clusters` selected by `selector`.
fn select_clusters(
    doc: &Value,
    source: &str,
    selector: &ClusterSelector,
    action: Action,
) -> Result<Vec<usize>, KubeconfigError> {
    let root = kubeconfig_root(doc, source)?;
    let names = cluster_names(root, source)?;
    let find = |wanted: &str, hint: String| {
        names
            .iter()
            .position(|n| n == wanted)
            .map(|i| vec![i])
            .ok_or_else(|| KubeconfigError::ClusterNotFound {
                file: source.to_string(),
                cluster: wanted.to_string(),
                clusters: names.clone(),
                hint,
            })
    };
    match selector {
        ClusterSelector::All => Ok((0..names.len()).collect()),
        ClusterSelector::Named(name) => find(name, "pass --cluster with one of them".into()),
        ClusterSelector::Current => {
            let current = str_field(root, "current-context").filter(|c| !c.is_empty());
            let Some(current) = current else {
                if action == Action::Restore {
                    // Restoring needs no choice: only clusters with a record change.
                    return Ok((0..names.len()).collect());
                }
                return Err(KubeconfigError::NoCurrentContext {
                    file: source.to_string(),
                    clusters: names.clone(),
                });
            };
            let contexts = named_entries(root, "contexts", "context", source)?;
            let pos = contexts.iter().position(|c| c == current).ok_or_else(|| {
                KubeconfigError::ContextNotFound {
                    file: source.to_string(),
                    context: current.to_string(),
                    contexts: contexts.clone(),
                }
            })?;
            let field = format!("contexts[{pos}] (\"{current}\").context.cluster");
            let cluster = root
                .get("contexts")
                .and_then(Value::as_sequence)
                .and_then(|s| s.get(pos))
                .and_then(|e| e.get("context"))
                .and_then(|c| c.get("cluster"))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    malformed(
                        source,
                        field.clone(),
                        "is missing or not a string",
                        "set it to the name of an entry of `clusters`, or pass --cluster NAME",
                    )
                })?;
            find(
                cluster,
                format!("{field} names it; fix the context or pass --cluster NAME"),
            )
        }
    }
}

/// The `name` and the `cluster` mapping of `clusters[idx]`.
fn cluster_body_mut<'a>(
    doc: &'a mut Value,
    source: &str,
    idx: usize,
) -> Result<(String, &'a mut Mapping), KubeconfigError> {
    let entry = doc
        .get_mut("clusters")
        .and_then(Value::as_sequence_mut)
        .and_then(|s| s.get_mut(idx))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| {
            malformed(
                source,
                format!("clusters[{idx}]"),
                "is not a mapping",
                "each entry needs `name` and `cluster`",
            )
        })?;
    let name = str_field(entry, "name").unwrap_or_default().to_string();
    match entry.get_mut("cluster") {
        Some(Value::Mapping(body)) => Ok((name, body)),
        _ => Err(malformed(
            source,
            format!("clusters[{idx}] (\"{name}\").cluster"),
            "is missing or not a mapping",
            "it must hold at least `server`",
        )),
    }
}

/// The values recorded in the apilb extension of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    server: String,
    tls_added: bool,
    tls_original: Option<String>,
}

impl Record {
    fn to_value(&self) -> Value {
        let mut ext = Mapping::new();
        ext.insert("apiVersion".into(), EXTENSION_API_VERSION.into());
        ext.insert("kind".into(), EXTENSION_KIND.into());
        ext.insert("server".into(), self.server.as_str().into());
        ext.insert("tlsServerNameAdded".into(), Value::Bool(self.tls_added));
        if let Some(tls) = &self.tls_original {
            ext.insert("tlsServerName".into(), tls.as_str().into());
        }
        let mut named = Mapping::new();
        named.insert("name".into(), EXTENSION_NAME.into());
        named.insert("extension".into(), Value::Mapping(ext));
        Value::Mapping(named)
    }
}

fn is_our_extension(entry: &Value) -> bool {
    entry.get("name").and_then(Value::as_str) == Some(EXTENSION_NAME)
}

/// Reads the apilb record of a cluster body, if any.
fn read_record(
    body: &Mapping,
    source: &str,
    field: &str,
) -> Result<Option<Record>, KubeconfigError> {
    let seq = match body.get("extensions") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Sequence(seq)) => seq,
        Some(other) => {
            return Err(malformed(
                source,
                format!("{field}.extensions"),
                &format!("is {}", describe(other)),
                "it must be a list of {name, extension} entries",
            ))
        }
    };
    let Some((i, entry)) = seq.iter().enumerate().find(|(_, e)| is_our_extension(e)) else {
        return Ok(None);
    };
    let at = format!("{field}.extensions[{i}].extension");
    let fix = format!(
        "the apilb record is damaged: put the original server back by hand and delete the `{EXTENSION_NAME}` entry"
    );
    let ext = entry
        .get("extension")
        .and_then(Value::as_mapping)
        .ok_or_else(|| malformed(source, at.clone(), "is missing or not a mapping", &fix))?;
    let server = str_field(ext, "server")
        .filter(|s| https_host(s).is_ok())
        .ok_or_else(|| {
            malformed(
                source,
                format!("{at}.server"),
                "is missing or not an https URL",
                &fix,
            )
        })?;
    let tls_added = match ext.get("tlsServerNameAdded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(malformed(
                source,
                format!("{at}.tlsServerNameAdded"),
                "is not a boolean",
                &fix,
            ))
        }
    };
    let tls_original = match ext.get("tlsServerName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(malformed(
                source,
                format!("{at}.tlsServerName"),
                "is not a string",
                &fix,
            ))
        }
    };
    Ok(Some(Record {
        server: server.to_string(),
        tls_added,
        tls_original,
    }))
}

/// Replaces the apilb record of `body` (or appends one).
fn write_record(body: &mut Mapping, record: &Record) {
    let value = record.to_value();
    match body.get_mut("extensions") {
        Some(Value::Sequence(seq)) => {
            if let Some(slot) = seq.iter_mut().find(|e| is_our_extension(e)) {
                *slot = value;
            } else {
                seq.push(value);
            }
        }
        _ => {
            body.insert("extensions".into(), Value::Sequence(vec![value]));
        }
    }
}

/// Removes every apilb record of `body`, and `extensions` if that leaves it empty.
fn remove_record(body: &mut Mapping) {
    let now_empty = match body.get_mut("extensions") {
        Some(Value::Sequence(seq)) => {
            seq.retain(|e| !is_our_extension(e));
            seq.is_empty()
        }
        _ => false,
    };
    if now_empty {
        body.shift_remove("extensions");
    }
}

/// Sets `key` in place if present, else inserts it right after `after` (or at the end),
/// so `tls-server-name` lands next to `server` and key order is otherwise kept.
fn set_after(map: &mut Mapping, after: &str, key: &str, value: Value) {
    if let Some(slot) = map.get_mut(key) {
        *slot = value;
        return;
    }
    if !map.contains_key(after) {
        map.insert(key.into(), value);
        return;
    }
    let old = std::mem::take(map);
    let mut value = Some(value);
    for (k, v) in old {
        let is_after = k.as_str() == Some(after);
        map.insert(k, v);
        if is_after {
            if let Some(v) = value.take() {
                map.insert(key.into(), v);
            }
        }
    }
}

fn current_server(body: &Mapping, source: &str, field: &str) -> Result<String, KubeconfigError> {
    match body.get("server") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(KubeconfigError::MissingServer {
            file: source.to_string(),
            field: format!("{field}.server"),
        }),
    }
}

fn current_tls(
    body: &Mapping,
    source: &str,
    field: &str,
) -> Result<Option<String>, KubeconfigError> {
    match body.get("tls-server-name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(malformed(
            source,
            format!("{field}.tls-server-name"),
            &format!("is {}", describe(other)),
            "it must be a host name string; fix or remove it",
        )),
    }
}

fn rewrite_cluster(
    body: &mut Mapping,
    source: &str,
    field: &str,
    name: &str,
    opts: &RewriteOptions,
) -> Result<Step, KubeconfigError> {
    let server = current_server(body, source, field)?;
    let tls = current_tls(body, source, field)?;
    let record = read_record(body, source, field)?;
    let proxied = body
        .get("proxy-url")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty());
    if proxied && server != opts.server && is_loopback_url(&opts.server) {
        return Err(KubeconfigError::ProxyUrl {
            file: source.to_string(),
            field: format!("{field}.proxy-url"),
            server: opts.server.clone(),
        });
    }

    let Some(mut record) = record else {
        // First rewrite of this cluster.
        let host = https_host(&server).map_err(|reason| KubeconfigError::InvalidServer {
            file: source.to_string(),
            field: format!("{field}.server"),
            server: server.clone(),
            reason,
        })?;
        if server == opts.server {
            return Ok(Step::Skipped(format!(
                "cluster \"{name}\" already uses {server} (no original server to record)"
            )));
        }
        let new_tls = opts
            .tls_server_name
            .clone()
            .or_else(|| tls.clone())
            .unwrap_or(host);
        let record = Record {
            server: server.clone(),
            tls_added: tls.is_none(),
            tls_original: tls.clone().filter(|t| *t != new_tls),
        };
        body.insert("server".into(), opts.server.as_str().into());
        set_after(body, "server", "tls-server-name", new_tls.as_str().into());
        write_record(body, &record);
        return Ok(Step::Changed(Change {
            cluster: name.to_string(),
            from: server,
            to: opts.server.clone(),
            tls_server_name: Some(new_tls),
        }));
    };

    // Already rewritten: re-point the server or apply an explicit tls-server-name, but
    // keep the recorded original values.
    let mut new_tls = tls.clone();
    if let Some(wanted) = &opts.tls_server_name {
        if tls.as_deref() != Some(wanted.as_str()) {
            if !record.tls_added && record.tls_original.is_none() {
                match &tls {
                    Some(old) => record.tls_original = Some(old.clone()),
                    None => record.tls_added = true,
                }
            }
            new_tls = Some(wanted.clone());
        }
    }
    if new_tls.is_none() {
        // Someone deleted it since; the original host is what the certificate holds.
        new_tls = https_host(&record.server).ok();
        record.tls_added = true;
    }
    if server == opts.server && new_tls == tls {
        return Ok(Step::Skipped(format!(
            "cluster \"{name}\" already rewritten (server {server}, original {} recorded in extension {EXTENSION_NAME})",
            record.server
        )));
    }
    body.insert("server".into(), opts.server.as_str().into());
    if let Some(t) = &new_tls {
        set_after(body, "server", "tls-server-name", t.as_str().into());
    }
    write_record(body, &record);
    Ok(Step::Changed(Change {
        cluster: name.to_string(),
        from: server,
        to: opts.server.clone(),
        tls_server_name: new_tls,
    }))
}

fn restore_cluster(
    body: &mut Mapping,
    source: &str,
    field: &str,
    name: &str,
) -> Result<Step, KubeconfigError> {
    let Some(record) = read_record(body, source, field)? else {
        return Ok(Step::Skipped(format!(
            "cluster \"{name}\" has no {EXTENSION_NAME} record (never rewritten by apilb)"
        )));
    };
    let from = str_field(body, "server").unwrap_or_default().to_string();
    body.insert("server".into(), record.server.as_str().into());
    if record.tls_added {
        body.shift_remove("tls-server-name");
    } else if let Some(tls) = &record.tls_original {
        set_after(body, "server", "tls-server-name", tls.as_str().into());
    }
    remove_record(body);
    Ok(Step::Changed(Change {
        cluster: name.to_string(),
        from,
        to: record.server,
        tls_server_name: str_field(body, "tls-server-name").map(str::to_string),
    }))
}

/// The host of an `https://` URL, IPv6 brackets stripped; `Err` says what is wrong.
fn https_host(url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("it has no scheme (https://)".into());
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("the scheme is {scheme}, not https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let Some((host, tail)) = after.split_once(']') else {
            return Err("the IPv6 host has no closing ]".into());
        };
        if !tail.is_empty() && !tail.starts_with(':') {
            return Err("unexpected text after the IPv6 host".into());
        }
        (host, tail.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if host.chars().any(|c| c.is_whitespace()) {
        return Err("the host contains whitespace".into());
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "the port \"{port}\" is not a number from 1 to 65535"
            ));
        }
    }
    Ok(host.to_string())
}

fn is_loopback_url(url: &str) -> bool {
    https_host(url).is_ok_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn in_configmap(
    text: &str,
    source: &str,
    key: &str,
    apply: impl FnOnce(&str, &str) -> Result<Outcome, KubeconfigError>,
) -> Result<Outcome, KubeconfigError> {
    let mut doc = parse_yaml(text, source)?;
    let not = |reason: String| KubeconfigError::NotConfigMap {
        file: source.to_string(),
        reason,
    };
    let root = doc
        .as_mapping_mut()
        .ok_or_else(|| not("the document is not a YAML mapping".into()))?;
    match str_field(root, "kind") {
        Some("ConfigMap") => {}
        Some("Config") => {
            return Err(not(
                "`kind` is Config, i.e. a plain kubeconfig; drop --configmap-key".into(),
            ))
        }
        Some(other) => return Err(not(format!("`kind` is {other}, expected ConfigMap"))),
        None => {
            return Err(not(
                "it has no `kind: ConfigMap`; give the output of `kubectl -n kube-system get cm kube-proxy -o yaml`".into(),
            ))
        }
    }
    let missing = |keys: Vec<String>| KubeconfigError::MissingConfigMapKey {
        file: source.to_string(),
        key: key.to_string(),
        keys,
    };
    let data = match root.get_mut("data") {
        Some(Value::Mapping(data)) => data,
        _ => return Err(missing(Vec::new())),
    };
    let keys: Vec<String> = data
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let inner = match data.get(key) {
        None => return Err(missing(keys)),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(malformed(
                source,
                format!("data.{key}"),
                &format!("is {}", describe(other)),
                "ConfigMap data values are strings holding the kubeconfig",
            ))
        }
    };
    let inner_source = format!("{source} (data.{key})");
    match apply(&inner, &inner_source)? {
        Outcome::Unchanged { reason } => Ok(Outcome::Unchanged { reason }),
        Outcome::Changed { text, changes } => {
            // Keep the string's trailing-newline style (kubeadm writes `|-`).
            let text = if inner.ends_with('\n') {
                text
            } else {
                text.trim_end_matches('\n').to_string()
            };
            data.insert(key.into(), Value::String(text));
            if let Some(Value::Mapping(meta)) = root.get_mut("metadata") {
                for field in SERVER_POPULATED_METADATA {
                    meta.shift_remove(*field);
                }
            }
            Ok(Outcome::Changed {
                text: emit_yaml(&doc),
                changes,
            })
        }
    }
}

// ---------------------------------------------------------------------------------
// YAML output
// ---------------------------------------------------------------------------------
//
// yaml_serde's emitter writes YAML 1.2 and leaves strings such as `on`, `no`, `y` or
// `1_000` unquoted, which the YAML 1.1 parser of client-go (sigs.k8s.io/yaml) reads as
// booleans or numbers. So the document is written here, in kubectl's block style, and
// a string is left plain only when both yaml_serde and a YAML 1.1 reader see a string.

/// Writes `doc` as a block-style YAML document ending in a newline. Also used by
/// `manifest` for the static pod, which client-go's YAML 1.1 reader (the kubelet's) reads.
pub(crate) fn emit_yaml(doc: &Value) -> String {
    let mut out = String::new();
    match doc {
        Value::Mapping(m) if !m.is_empty() => emit_mapping(&mut out, m, 0, false),
        Value::Sequence(s) if !s.is_empty() => emit_sequence(&mut out, s, 0, false),
        other => {
            emit_inline(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// `inline`: the first entry continues a line already holding `- `.
fn emit_mapping(out: &mut String, map: &Mapping, indent: usize, inline: bool) {
    for (n, (key, value)) in map.iter().enumerate() {
        if n > 0 || !inline {
            push_indent(out, indent);
        }
        let key_text = match key {
            Value::String(k) => scalar_string(k),
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => flow(key),
            other => {
                let mut t = String::new();
                emit_inline(&mut t, other, indent + 2);
                t
            }
        };
        // An implicit key is one line of at most 1024 characters; a longer one takes the
        // explicit `? key` form (found by the `kubeconfig` fuzz target).
        if key_text.len() > 1000 || key_text.contains('\n') {
            out.push_str("? ");
            out.push_str(&key_text);
            if !key_text.ends_with('\n') {
                out.push('\n');
            }
            push_indent(out, indent);
        } else {
            out.push_str(&key_text);
        }
        out.push(':');
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                emit_mapping(out, m, indent + 2, false);
            }
            // kubectl style: a list inside a mapping is not indented.
            Value::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                emit_sequence(out, s, indent, false);
            }
            other => {
                out.push(' ');
                emit_inline(out, other, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn emit_sequence(out: &mut String, seq: &[Value], indent: usize, inline: bool) {
    for (n, item) in seq.iter().enumerate() {
        if n > 0 || !inline {
            push_indent(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Mapping(m) if !m.is_empty() => emit_mapping(out, m, indent + 2, true),
            Value::Sequence(s) if !s.is_empty() => emit_sequence(out, s, indent + 2, true),
            other => {
                emit_inline(out, other, indent + 2);
                out.push('\n');
            }
        }
    }
}

/// A scalar, an empty collection, a tagged value, or a multi-line string as a literal
/// block whose lines are indented by `indent`.
fn emit_inline(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::String(s) => {
            if let Some(header) = literal_header(s) {
                out.push_str(header);
                for line in s.split_terminator('\n') {
                    out.push('\n');
                    if !line.is_empty() {
                        push_indent(out, indent);
                        out.push_str(line);
                    }
                }
            } else {
                out.push_str(&scalar_string(s));
            }
        }
        other => out.push_str(&flow(other)),
    }
}

/// Flow style: scalars, `[...]`, `{...}`, strings always double-quoted unless plain-safe.
fn flow(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            // Flow indicators end a plain scalar inside `[...]`/`{...}` (found by the
            // `kubeconfig` fuzz target).
            if s.contains(['\n', ',', '[', ']', '{', '}']) {
                double_quoted(s)
            } else {
                scalar_string(s)
            }
        }
        Value::Sequence(seq) => {
            let items: Vec<String> = seq.iter().map(flow).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Tagged(t) => format!("{} {}", tag_text(&t.tag), flow(&t.value)),
    }
}

/// A tag as YAML source. yaml_serde prints the non-specific tag `!` as `!!`, which is not
/// a tag at all (found by the `kubeconfig` fuzz target).
fn tag_text(tag: &yaml_serde::value::Tag) -> String {
    match tag.to_string() {
        t if t == "!!" => "!".to_string(),
        t => t,
    }
}

/// The literal block header for `s`, or `None` if it is better double-quoted.
fn literal_header(s: &str) -> Option<&'static str> {
    if !s.contains('\n') {
        return None;
    }
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
    };
    if s.chars().any(unsafe_char) {
        return None;
    }
    // Indentation is detected from the first non-empty line; whitespace-only lines
    // and a leading space or tab would confuse it.
    let mut lines = s.split_terminator('\n');
    if lines.clone().any(|l| !l.is_empty() && l.trim().is_empty()) {
        return None;
    }
    match lines.find(|l| !l.is_empty()) {
        None => return None,
        Some(first) if first.starts_with([' ', '\t']) => return None,
        Some(_) => {}
    }
    Some(if !s.ends_with('\n') {
        "|-"
    } else if s.ends_with("\n\n") {
        "|+"
    } else {
        "|"
    })
}

/// A single-line string: plain when unambiguous, else double-quoted.
fn scalar_string(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        double_quoted(s)
    }
}

fn plain_is_safe(s: &str) -> bool {
    if s.is_empty() || s.contains(['\n', '\r', '"', '\'', '\\']) {
        return false;
    }
    if s.chars()
        .any(|c| c.is_control() || !(c.is_ascii_graphic() || c == ' '))
    {
        return false;
    }
    // What yaml_serde (YAML 1.2) reads back must be this very string...
    match yaml_serde::from_str::<Value>(s) {
        Ok(Value::String(back)) if back == s => {}
        _ => return false,
    }
    // ...and so must a YAML 1.1 reader (client-go's sigs.k8s.io/yaml).
    !yaml11_non_string(s)
}

/// True if a YAML 1.1 parser (go-yaml v2) may resolve the plain scalar `s` to
/// something other than a string. Errs on the side of quoting.
fn yaml11_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "<<", "=", ".inf",
        "+.inf", "-.inf", ".nan",
    ];
    let lower = s.to_ascii_lowercase();
    if WORDS.contains(&lower.as_str()) {
        return true;
    }
    let Some(first) = s.chars().next() else {
        return true;
    };
    if !(first.is_ascii_digit() || matches!(first, '-' | '+' | '.')) {
        return false;
    }
    let body = lower.trim_start_matches(['-', '+']);
    let digits: String = body.chars().filter(|c| *c != '_').collect();
    let radix = |p: &str, ok: fn(&char) -> bool| {
        digits
            .strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| ok(&c)))
    };
    digits.parse::<f64>().is_ok()
        || radix("0x", char::is_ascii_hexdigit)
        || radix("0o", |c| c.is_digit(8))
        || radix("0b", |c| matches!(c, '0' | '1'))
        // sexagesimal (190:20:30) and timestamps (2001-12-14t21:59:43.10-05:00)
        || (body.contains(':') && body.chars().all(|c| c.is_ascii_digit() || matches!(c, ':' | '.' | '_')))
        || (body.len() >= 8
            && body.as_bytes().get(4) == Some(&b'-')
            && body.chars().take(4).all(|c| c.is_ascii_digit()))
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Owner {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(meta: &fs::Metadata) -> Owner {
        Owner {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

fn io_err(path: &Path, op: &'static str, err: io::Error) -> KubeconfigError {
    KubeconfigError::Io {
        path: path.to_path_buf(),
        op,
        err,
    }
}

fn resolve_symlink(path: &Path) -> Result<PathBuf, KubeconfigError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| io_err(path, "resolve symlink", e))
        }
        _ => Ok(path.to_path_buf()),
    }
}

fn temp_path(target: &Path) -> Result<PathBuf, KubeconfigError> {
    let name = target.file_name().ok_or_else(|| {
        io_err(
            target,
            "choose a temp file",
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".apilb-tmp-{}", std::process::id()));
    Ok(target.with_file_name(tmp))
}

fn open_exclusive(tmp: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
    };
    match open() {
        // A leftover of an earlier run with the same pid (e.g. before a reboot).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        other => other,
    }
}

/// The body of [`write_atomic`]; `before_rename` lets tests inject a failure.
fn write_atomic_with(
    target: &Path,
    bytes: &[u8],
    owner: Option<Owner>,
    before_rename: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<(), KubeconfigError> {
    let tmp = temp_path(target)?;
    let mut file = open_exclusive(&tmp).map_err(|e| io_err(&tmp, "create temp file", e))?;
    let result = (|| -> Result<(), KubeconfigError> {
        // A new file (no original) keeps our uid/gid and gets 0600: kubeconfigs hold
        // credentials.
        let mode = owner.map_or(0o600, |o| o.mode);
        if let Some(owner) = owner {
            let meta = file
                .metadata()
                .map_err(|e| io_err(&tmp, "read metadata", e))?;
            if meta.uid() != owner.uid || meta.gid() != owner.gid {
                // SAFETY: fchown on a file descriptor we own; no memory is shared.
                let rc = unsafe { libc::fchown(file.as_raw_fd(), owner.uid, owner.gid) };
                if rc != 0 {
                    return Err(io_err(&tmp, "copy owner", io::Error::last_os_error()));
                }
            }
        }
        // After fchown, which may clear set-id bits.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&tmp, "copy mode", e))?;
        file.write_all(bytes)
            .map_err(|e| io_err(&tmp, "write", e))?;
        file.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
        before_rename(&tmp).map_err(|e| io_err(&tmp, "prepare rename", e))?;
        fs::rename(&tmp, target).map_err(|e| io_err(target, "rename temp file over", e))
    })();
    drop(file);
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        io_err(
            dir,
            "fsync directory (the new file is in place but may not survive a crash)",
            e,
        )
    })
}

// ---------------------------------------------------------------------------------
// Diff
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// Above this many LCS cells the middle of the diff is shown as delete-all/insert-all.
const MAX_LCS_CELLS: usize = 4_000_000;

fn diff_lines(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<Op> = (0..prefix).map(|i| Op::Equal(i, i)).collect();
    let (n, m) = (ma.len(), mb.len());
    if n.saturating_add(1).saturating_mul(m.saturating_add(1)) > MAX_LCS_CELLS {
        ops.extend((0..n).map(|i| Op::Delete(prefix + i)));
        ops.extend((0..m).map(|j| Op::Insert(prefix + j)));
    } else {
        // lcs[i * (m + 1) + j] = length of the LCS of ma[i..] and mb[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && ma[i] == mb[j] {
                ops.push(Op::Equal(prefix + i, prefix + j));
                i += 1;
                j += 1;
            } else if j < m && (i == n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j]) {
                ops.push(Op::Insert(prefix + j));
                j += 1;
            } else {
                ops.push(Op::Delete(prefix + i));
                i += 1;
            }
        }
        // Show deletions before insertions within a run of changes, as diff(1) does.
        let mut k = 0;
        while k < ops.len() {
            let end = ops[k..]
                .iter()
                .position(|o| matches!(o, Op::Equal(..)))
                .map_or(ops.len(), |p| k + p);
            ops[k..end].sort_by_key(|o| matches!(o, Op::Insert(_)));
            k = end + 1;
        }
    }
    let (sa, sb) = (a.len() - suffix, b.len() - suffix);
    ops.extend((0..suffix).map(|k| Op::Equal(sa + k, sb + k)));
    ops
}

fn render_hunks(out: &mut String, ops: &[Op], a: &[&str], b: &[&str], context: usize) {
    // Lines of a and b consumed before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut oa, mut ob) = (0usize, 0usize);
    for op in ops {
        pos.push((oa, ob));
        match op {
            Op::Equal(..) => {
                oa += 1;
                ob += 1;
            }
            Op::Delete(_) => oa += 1,
            Op::Insert(_) => ob += 1,
        }
    }
    pos.push((oa, ob));

    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Equal(..)))
        .map(|(k, _)| k)
        .collect();
    let mut c = 0;
    while c < changed.len() {
        let first = changed[c];
        let mut last = first;
        c += 1;
        while c < changed.len() && changed[c] - last <= 2 * context + 1 {
            last = changed[c];
            c += 1;
        }
        let start = first.saturating_sub(context);
        let end = (last + context + 1).min(ops.len());
        let (a0, b0) = pos[start];
        let (a1, b1) = pos[end];
        let range = |s: usize, n: usize| match n {
            0 => format!("{s},0"),
            1 => format!("{}", s + 1),
            _ => format!("{},{n}", s + 1),
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a0, a1 - a0),
            range(b0, b1 - b0)
        ));
        for op in &ops[start..end] {
            let (mark, line) = match *op {
                Op::Equal(i, _) => (' ', a[i]),
                Op::Delete(i) => ('-', a[i]),
                Op::Insert(j) => ('+', b[j]),
            };
            out.push(mark);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    // Each golden: (name, input, expected output, how it is rewritten).
    enum Mode {
        Plain(RewriteOptions),
        ConfigMap(&'static str, RewriteOptions),
    }

    fn golden_cases() -> Vec<(&'static str, &'static str, &'static str, Mode)> {
        let def = RewriteOptions::default;
        let all = || RewriteOptions {
            clusters: ClusterSelector::All,
            ..RewriteOptions::default()
        };
        vec![
            (
                "kubeadm-kubelet",
                include_str!("../../../tests/data/kubeconfig/kubeadm-kubelet.yaml"),
                include_str!("../../../tests/data/kubeconfig/kubeadm-kubelet.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "kubeadm-kubelet-dns",
                include_str!("../../../tests/data/kubeconfig/kubeadm-kubelet-dns.yaml"),
                include_str!("../../../tests/data/kubeconfig/kubeadm-kubelet-dns.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "kubespray-kubelet",
                include_str!("../../../tests/data/kubeconfig/kubespray-kubelet.yaml"),
                include_str!("../../../tests/data/kubeconfig/kubespray-kubelet.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "kubespray-kube-proxy",
                include_str!("../../../tests/data/kubeconfig/kubespray-kube-proxy.yaml"),
                include_str!("../../../tests/data/kubeconfig/kubespray-kube-proxy.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "k3s-agent-kubelet",
                include_str!("../../../tests/data/kubeconfig/k3s-agent-kubelet.yaml"),
                include_str!("../../../tests/data/kubeconfig/k3s-agent-kubelet.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "ipv6-kubelet",
                include_str!("../../../tests/data/kubeconfig/ipv6-kubelet.yaml"),
                include_str!("../../../tests/data/kubeconfig/ipv6-kubelet.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "multi-cluster",
                include_str!("../../../tests/data/kubeconfig/multi-cluster.yaml"),
                include_str!("../../../tests/data/kubeconfig/multi-cluster.rewritten.yaml"),
                Mode::Plain(def()),
            ),
            (
                "multi-cluster.all-clusters",
                include_str!("../../../tests/data/kubeconfig/multi-cluster.yaml"),
                include_str!(
                    "../../../tests/data/kubeconfig/multi-cluster.all-clusters.rewritten.yaml"
                ),
                Mode::Plain(all()),
            ),
            (
                "kubeadm-kube-proxy-configmap",
                include_str!("../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml"),
                include_str!(
                    "../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.rewritten.yaml"
                ),
                Mode::ConfigMap(DEFAULT_CONFIGMAP_KEY, def()),
            ),
        ]
    }

    fn run_rewrite(input: &str, mode: &Mode) -> Result<Outcome, KubeconfigError> {
        match mode {
            Mode::Plain(opts) => rewrite(input, "in.yaml", opts),
            Mode::ConfigMap(key, opts) => rewrite_configmap(input, "in.yaml", key, opts),
        }
    }

    fn run_restore(input: &str, mode: &Mode) -> Result<Outcome, KubeconfigError> {
        match mode {
            Mode::Plain(_) => restore(input, "in.yaml", &ClusterSelector::All),
            Mode::ConfigMap(key, _) => {
                restore_configmap(input, "in.yaml", key, &ClusterSelector::All)
            }
        }
    }

    fn changed(outcome: Outcome) -> (String, Vec<Change>) {
        match outcome {
            Outcome::Changed { text, changes } => (text, changes),
            Outcome::Unchanged { reason } => panic!("expected a change, got: {reason}"),
        }
    }

    fn unchanged(outcome: Outcome) -> String {
        match outcome {
            Outcome::Unchanged { reason } => reason,
            Outcome::Changed { text, .. } => panic!("expected no change, got:\n{text}"),
        }
    }

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).unwrap()
    }

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kubeconfig")
    }

    /// Compares with the goldens; `APILB_UPDATE_GOLDENS=1` rewrites them instead
    /// (review the diff before committing).
    #[test]
    fn goldens_match() {
        let update = std::env::var_os("APILB_UPDATE_GOLDENS").is_some();
        let mut failures = Vec::new();
        for (name, input, expected, mode) in golden_cases() {
            let (text, _) = changed(run_rewrite(input, &mode).unwrap());
            if update {
                fs::write(golden_dir().join(format!("{name}.rewritten.yaml")), &text).unwrap();
            } else if text != expected {
                failures.push(format!(
                    "{name}:\n{}",
                    unified_diff(&format!("{name}.rewritten.yaml"), expected, &text)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "goldens differ:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn rewrite_then_restore_round_trips_and_is_idempotent() {
        for (name, input, _, mode) in golden_cases() {
            let (once, changes) = changed(run_rewrite(input, &mode).unwrap());
            assert!(!changes.is_empty(), "{name}");
            let reason = unchanged(run_rewrite(&once, &mode).unwrap());
            assert!(reason.contains("already rewritten"), "{name}: {reason}");
            let (back, restored) = changed(run_restore(&once, &mode).unwrap());
            assert_eq!(restored.len(), changes.len(), "{name}");
            let expected = match &mode {
                Mode::Plain(_) => yaml(input),
                Mode::ConfigMap(..) => {
                    // Metadata filled in by the server is dropped on purpose.
                    let mut v = yaml(input);
                    let meta = v.get_mut("metadata").unwrap().as_mapping_mut().unwrap();
                    for f in SERVER_POPULATED_METADATA {
                        meta.shift_remove(*f);
                    }
                    v
                }
            };
            assert_eq!(yaml(&back), expected, "{name}: restore differs");
            if let Mode::ConfigMap(key, _) = &mode {
                let inner_back = yaml(yaml(&back)["data"][*key].as_str().unwrap());
                let inner_orig = yaml(yaml(input)["data"][*key].as_str().unwrap());
                assert_eq!(inner_back, inner_orig, "{name}: embedded kubeconfig");
            }
            let reason = unchanged(run_restore(&back, &mode).unwrap());
            assert!(reason.contains("nothing to restore"), "{name}: {reason}");
        }
    }

    #[test]
    fn restore_keeps_key_order() {
        let input = include_str!("../../../tests/data/kubeconfig/kubeadm-kubelet.yaml");
        let (once, _) = changed(rewrite(input, "f", &RewriteOptions::default()).unwrap());
        let (back, _) = changed(restore(&once, "f", &ClusterSelector::All).unwrap());
        let again = emit_yaml(&yaml(input));
        assert_eq!(back, again);
    }

    const SIMPLE: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    certificate-authority-data: QUJD
    server: https://10.0.0.10:6443
contexts:
- name: kubelet@kubernetes
  context:
    cluster: kubernetes
    user: kubelet
current-context: kubelet@kubernetes
users:
- name: kubelet
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
";

    /// Found by the `kubeconfig` fuzz target: the non-specific tag `!` was written as `!!`.
    #[test]
    fn a_non_specific_tag_survives_a_rewrite() {
        let input = SIMPLE.replace(
            "  user:\n    client-certificate",
            "  user: !\n    client-certificate",
        );
        let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        let again = rewrite(&text, "f", &RewriteOptions::default()).unwrap();
        assert!(matches!(again, Outcome::Unchanged { .. }), "{text}");
        assert_eq!(yaml(&input)["users"], yaml(&text)["users"]);
    }

    /// Found by the `kubeconfig` fuzz target: a flow key holding `[` was written plain.
    #[test]
    fn flow_indicators_in_a_flow_key_are_quoted() {
        let input = SIMPLE.replace(
            "    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem",
            "    {\"a,b\": 1}: null",
        );
        let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        assert_eq!(yaml(&input)["users"], yaml(&text)["users"], "{text}");
    }

    /// Found by the `kubeconfig` fuzz target: a key over 1024 characters was written as an
    /// implicit key, which YAML does not allow.
    #[test]
    fn a_long_key_is_written_explicitly() {
        let long = "k".repeat(1500);
        for value in ["1", "{a: 1}", "[1, 2]", "\n      x: 1", "\n    - x"] {
            let input = SIMPLE.replace(
                "    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem",
                &format!("    ? {long}\n    : {value}"),
            );
            let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
            assert_eq!(yaml(&input)["users"], yaml(&text)["users"], "{text}");
        }
    }

    fn cluster0(text: &str) -> Value {
        yaml(text)["clusters"][0]["cluster"].clone()
    }

    #[test]
    fn change_displays_for_the_cli() {
        let c = Change {
            cluster: "kubernetes".into(),
            from: "https://10.0.0.10:6443".into(),
            to: DEFAULT_SERVER.into(),
            tls_server_name: Some("10.0.0.10".into()),
        };
        assert_eq!(
            c.to_string(),
            "cluster \"kubernetes\": https://10.0.0.10:6443 -> https://127.0.0.1:6443 (tls-server-name 10.0.0.10)"
        );
    }

    #[test]
    fn rewrite_sets_server_tls_name_and_record() {
        let (text, changes) = changed(rewrite(SIMPLE, "f", &RewriteOptions::default()).unwrap());
        assert_eq!(
            changes,
            vec![Change {
                cluster: "kubernetes".into(),
                from: "https://10.0.0.10:6443".into(),
                to: DEFAULT_SERVER.into(),
                tls_server_name: Some("10.0.0.10".into()),
            }]
        );
        let c = cluster0(&text);
        assert_eq!(c["server"], DEFAULT_SERVER);
        assert_eq!(c["tls-server-name"], "10.0.0.10");
        let ext = &c["extensions"][0];
        assert_eq!(ext["name"], EXTENSION_NAME);
        assert_eq!(ext["extension"]["apiVersion"], EXTENSION_API_VERSION);
        assert_eq!(ext["extension"]["kind"], EXTENSION_KIND);
        assert_eq!(ext["extension"]["server"], "https://10.0.0.10:6443");
        assert_eq!(ext["extension"]["tlsServerNameAdded"], true);
        // tls-server-name sits right after server.
        let keys: Vec<_> = c.as_mapping().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                Value::from("certificate-authority-data"),
                "server".into(),
                "tls-server-name".into(),
                "extensions".into()
            ]
        );
    }

    #[test]
    fn explicit_tls_server_name_is_used_and_restored_away() {
        let opts = RewriteOptions {
            tls_server_name: Some("kubernetes.default.svc".into()),
            ..RewriteOptions::default()
        };
        let (text, changes) = changed(rewrite(SIMPLE, "f", &opts).unwrap());
        assert_eq!(
            changes[0].tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );
        assert_eq!(cluster0(&text)["tls-server-name"], "kubernetes.default.svc");
        let (back, _) = changed(restore(&text, "f", &ClusterSelector::Current).unwrap());
        assert_eq!(yaml(&back), yaml(SIMPLE));
    }

    #[test]
    fn existing_tls_server_name_is_kept() {
        let input = SIMPLE.replace(
            "    server: https://10.0.0.10:6443\n",
            "    server: https://10.0.0.10:6443\n    tls-server-name: api.example.internal\n",
        );
        let (text, changes) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        assert_eq!(
            changes[0].tls_server_name.as_deref(),
            Some("api.example.internal")
        );
        let c = cluster0(&text);
        assert_eq!(c["tls-server-name"], "api.example.internal");
        assert_eq!(c["extensions"][0]["extension"]["tlsServerNameAdded"], false);
        assert!(c["extensions"][0]["extension"]
            .get("tlsServerName")
            .is_none());
        let (back, _) = changed(restore(&text, "f", &ClusterSelector::All).unwrap());
        assert_eq!(yaml(&back), yaml(&input));
    }

    #[test]
    fn explicit_tls_server_name_replacing_existing_one_is_restored() {
        let input = SIMPLE.replace(
            "    server: https://10.0.0.10:6443\n",
            "    server: https://10.0.0.10:6443\n    tls-server-name: old.example\n",
        );
        let opts = RewriteOptions {
            tls_server_name: Some("new.example".into()),
            ..RewriteOptions::default()
        };
        let (text, _) = changed(rewrite(&input, "f", &opts).unwrap());
        let c = cluster0(&text);
        assert_eq!(c["tls-server-name"], "new.example");
        assert_eq!(
            c["extensions"][0]["extension"]["tlsServerName"],
            "old.example"
        );
        let (back, _) = changed(restore(&text, "f", &ClusterSelector::All).unwrap());
        assert_eq!(yaml(&back), yaml(&input));
    }

    #[test]
    fn rewriting_to_another_server_keeps_the_original_record() {
        let (once, _) = changed(rewrite(SIMPLE, "f", &RewriteOptions::default()).unwrap());
        let opts = RewriteOptions {
            server: "https://127.0.0.1:16443".into(),
            ..RewriteOptions::default()
        };
        let (twice, changes) = changed(rewrite(&once, "f", &opts).unwrap());
        assert_eq!(changes[0].from, DEFAULT_SERVER);
        let c = cluster0(&twice);
        assert_eq!(c["server"], "https://127.0.0.1:16443");
        assert_eq!(
            c["extensions"][0]["extension"]["server"],
            "https://10.0.0.10:6443"
        );
        assert_eq!(c["extensions"].as_sequence().unwrap().len(), 1);
        let (back, _) = changed(restore(&twice, "f", &ClusterSelector::All).unwrap());
        assert_eq!(yaml(&back), yaml(SIMPLE));
    }

    #[test]
    fn other_extensions_are_kept() {
        let input = SIMPLE.replace(
            "    server: https://10.0.0.10:6443\n",
            "    server: https://10.0.0.10:6443\n    extensions:\n    - name: cluster_info\n      extension:\n        provider: minikube.sigs.k8s.io\n",
        );
        let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        let exts = cluster0(&text)["extensions"].clone();
        assert_eq!(exts.as_sequence().unwrap().len(), 2);
        assert_eq!(exts[0]["name"], "cluster_info");
        let (back, _) = changed(restore(&text, "f", &ClusterSelector::All).unwrap());
        assert_eq!(yaml(&back), yaml(&input));
    }

    #[test]
    fn restore_reads_a_record_reordered_by_kubectl() {
        // kubectl writes keys in alphabetical order: `extension` before `name`.
        let rewritten = "\
apiVersion: v1
clusters:
- cluster:
    extensions:
    - extension:
        apiVersion: apilb.io/v1
        kind: OriginalServer
        server: https://10.0.0.10:6443
        tlsServerNameAdded: true
      name: apilb.io/original-server
    server: https://127.0.0.1:6443
    tls-server-name: 10.0.0.10
  name: kubernetes
contexts: null
current-context: ''
kind: Config
";
        let (back, changes) = changed(restore(rewritten, "f", &ClusterSelector::Current).unwrap());
        assert_eq!(changes[0].to, "https://10.0.0.10:6443");
        assert_eq!(changes[0].tls_server_name, None);
        let c = cluster0(&back);
        assert_eq!(c.as_mapping().unwrap().len(), 1);
        assert_eq!(c["server"], "https://10.0.0.10:6443");
    }

    #[test]
    fn already_at_target_is_unchanged() {
        let input = SIMPLE.replace("https://10.0.0.10:6443", DEFAULT_SERVER);
        let reason = unchanged(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        assert!(reason.contains("already uses"), "{reason}");
    }

    #[test]
    fn named_and_all_selectors() {
        let input = include_str!("../../../tests/data/kubeconfig/multi-cluster.yaml");
        let opts = RewriteOptions {
            clusters: ClusterSelector::Named("staging".into()),
            ..RewriteOptions::default()
        };
        let (text, changes) = changed(rewrite(input, "f", &opts).unwrap());
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].cluster, "staging");
        // Restoring only another cluster finds nothing to do.
        let other = ClusterSelector::Named("production".into());
        let reason = unchanged(restore(&text, "f", &other).unwrap());
        assert!(reason.contains("nothing to restore"), "{reason}");
    }

    #[test]
    fn configmap_drops_server_metadata_and_keeps_other_data() {
        let input =
            include_str!("../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
        let (text, changes) = changed(
            rewrite_configmap(
                input,
                "cm.yaml",
                DEFAULT_CONFIGMAP_KEY,
                &RewriteOptions::default(),
            )
            .unwrap(),
        );
        assert_eq!(changes.len(), 1);
        let cm = yaml(&text);
        let meta = cm["metadata"].as_mapping().unwrap();
        for f in SERVER_POPULATED_METADATA {
            assert!(!meta.contains_key(*f), "{f} kept");
        }
        assert_eq!(cm["metadata"]["name"], "kube-proxy");
        assert_eq!(
            cm["data"]["config.conf"],
            yaml(input)["data"]["config.conf"]
        );
        let inner = yaml(cm["data"][DEFAULT_CONFIGMAP_KEY].as_str().unwrap());
        assert_eq!(inner["clusters"][0]["cluster"]["server"], DEFAULT_SERVER);
        assert_eq!(
            inner["clusters"][0]["cluster"]["certificate-authority"],
            "/var/lib/kube-proxy/ca.crt"
        );
    }

    // --- errors -------------------------------------------------------------------

    fn err(r: Result<Outcome, KubeconfigError>) -> KubeconfigError {
        match r {
            Err(e) => e,
            Ok(o) => panic!("expected an error, got {o:?}"),
        }
    }

    #[test]
    fn error_not_yaml() {
        let e = err(rewrite(
            "clusters: [\n  - {",
            "bad.conf",
            &RewriteOptions::default(),
        ));
        assert!(matches!(e, KubeconfigError::NotYaml { .. }), "{e:?}");
        assert!(e.to_string().starts_with("bad.conf: not valid YAML"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn error_not_a_kubeconfig() {
        for input in [
            "",
            "just a string",
            "apiVersion: v1\nkind: Config\n",
            "clusters: 3\n",
            "clusters: []\n",
            "kind: Pod\nclusters: []\n",
        ] {
            let e = err(rewrite(input, "x.conf", &RewriteOptions::default()));
            assert!(
                matches!(e, KubeconfigError::NotKubeconfig { .. }),
                "{input:?}: {e:?}"
            );
            assert!(e.to_string().starts_with("x.conf: not a kubeconfig"), "{e}");
        }
        let e = err(rewrite(
            "kind: Config\nclusters: [1]\n",
            "x.conf",
            &RewriteOptions::default(),
        ));
        assert!(matches!(e, KubeconfigError::Malformed { .. }), "{e:?}");
        assert!(e.to_string().contains("clusters[0].name"), "{e}");
        let cm = include_str!("../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
        let e = err(rewrite(cm, "cm.yaml", &RewriteOptions::default()));
        assert!(e.to_string().contains("--configmap-key"), "{e}");
    }

    #[test]
    fn error_no_current_context_lists_clusters() {
        let input = SIMPLE.replace("current-context: kubelet@kubernetes\n", "");
        let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
        assert!(
            matches!(e, KubeconfigError::NoCurrentContext { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("current-context") && msg.contains("--cluster NAME"),
            "{msg}"
        );
        assert!(msg.contains("kubernetes"), "{msg}");
        // Restore does not need it.
        let (once, _) = changed(
            rewrite(
                &input,
                "k",
                &RewriteOptions {
                    clusters: ClusterSelector::Named("kubernetes".into()),
                    ..RewriteOptions::default()
                },
            )
            .unwrap(),
        );
        changed(restore(&once, "k", &ClusterSelector::Current).unwrap());
    }

    #[test]
    fn error_context_not_found() {
        let input = SIMPLE.replace(
            "current-context: kubelet@kubernetes",
            "current-context: nope",
        );
        let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
        assert!(
            matches!(e, KubeconfigError::ContextNotFound { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("kubelet@kubernetes"), "{e}");
    }

    #[test]
    fn error_cluster_not_found_lists_names() {
        let input = include_str!("../../../tests/data/kubeconfig/multi-cluster.yaml");
        let opts = RewriteOptions {
            clusters: ClusterSelector::Named("nope".into()),
            ..RewriteOptions::default()
        };
        let e = err(rewrite(input, "m.conf", &opts));
        assert!(
            matches!(e, KubeconfigError::ClusterNotFound { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("\"nope\"") && msg.contains("production, staging"),
            "{msg}"
        );
        // A context naming a missing cluster.
        let input = SIMPLE.replace("    cluster: kubernetes", "    cluster: gone");
        let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
        assert!(
            matches!(e, KubeconfigError::ClusterNotFound { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("contexts[0]"), "{e}");
    }

    #[test]
    fn error_missing_server() {
        let input = SIMPLE.replace("    server: https://10.0.0.10:6443\n", "");
        let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
        assert!(matches!(e, KubeconfigError::MissingServer { .. }), "{e:?}");
        assert!(e.to_string().contains(".cluster.server"), "{e}");
    }

    #[test]
    fn error_server_not_https() {
        for bad in [
            "http://10.0.0.10:8080",
            "10.0.0.10:6443",
            "https://",
            "https://[fd00::1:6443",
            "https://h:99999",
        ] {
            let input = SIMPLE.replace("https://10.0.0.10:6443", bad);
            let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
            assert!(
                matches!(e, KubeconfigError::InvalidServer { .. }),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains(".cluster.server"), "{e}");
        }
        let opts = RewriteOptions {
            server: "http://127.0.0.1:6443".into(),
            ..RewriteOptions::default()
        };
        let e = err(rewrite(SIMPLE, "k.conf", &opts));
        assert!(
            matches!(
                e,
                KubeconfigError::InvalidOption {
                    option: "--server",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn error_proxy_url_with_local_target() {
        let input = SIMPLE.replace(
            "    server: https://10.0.0.10:6443\n",
            "    server: https://10.0.0.10:6443\n    proxy-url: socks5://proxy:1080\n",
        );
        let e = err(rewrite(&input, "k.conf", &RewriteOptions::default()));
        assert!(matches!(e, KubeconfigError::ProxyUrl { .. }), "{e:?}");
        assert!(e.to_string().contains(".cluster.proxy-url"), "{e}");
        let remote = RewriteOptions {
            server: "https://lb.example.internal:6443".into(),
            ..RewriteOptions::default()
        };
        changed(rewrite(&input, "k.conf", &remote).unwrap());
    }

    #[test]
    fn error_configmap_without_key() {
        let cm = include_str!("../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
        let e = err(rewrite_configmap(
            cm,
            "cm.yaml",
            "kubelet.conf",
            &RewriteOptions::default(),
        ));
        assert!(
            matches!(e, KubeconfigError::MissingConfigMapKey { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("data.kubelet.conf") && msg.contains("kubeconfig.conf"),
            "{msg}"
        );
        let e = err(rewrite_configmap(
            SIMPLE,
            "k.conf",
            "kubeconfig.conf",
            &RewriteOptions::default(),
        ));
        assert!(matches!(e, KubeconfigError::NotConfigMap { .. }), "{e:?}");
        // An error inside the embedded kubeconfig names the key.
        let broken = cm.replace("server: https://", "server: http://");
        let e = err(rewrite_configmap(
            &broken,
            "cm.yaml",
            DEFAULT_CONFIGMAP_KEY,
            &RewriteOptions::default(),
        ));
        assert!(
            e.to_string().starts_with("cm.yaml (data.kubeconfig.conf):"),
            "{e}"
        );
    }

    #[test]
    fn error_damaged_record() {
        let (once, _) = changed(rewrite(SIMPLE, "f", &RewriteOptions::default()).unwrap());
        let damaged = once.replace("server: https://10.0.0.10:6443", "server: 42");
        let e = err(restore(&damaged, "f", &ClusterSelector::All));
        assert!(matches!(e, KubeconfigError::Malformed { .. }), "{e:?}");
        assert!(
            e.to_string().contains("extensions[0].extension.server"),
            "{e}"
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "---\n---\n",
            "- a\n- b\n",
            "clusters:\n- name: a\n",
            "clusters:\n- name: a\n  cluster: []\n",
            "clusters:\n- name: a\n  cluster: {server: [1]}\n",
            "clusters:\n- name: a\n  cluster: {server: 'https://a', extensions: 5}\n",
            "clusters:\n- name: a\n  cluster: {server: 'https://a', tls-server-name: 5}\n",
            "clusters:\n- {name: a, cluster: {server: 'https://a'}}\n- {name: a, cluster: {}}\n",
            "clusters:\n- {name: a, cluster: {server: 'https://a'}}\ncontexts: 7\ncurrent-context: x\n",
            "clusters:\n- {name: a, cluster: {server: 'https://a'}}\ncontexts: [{name: x}]\ncurrent-context: x\n",
            "clusters:\n- {name: a, cluster: {server: 'https://a', extensions: [{name: apilb.io/original-server}]}}\n",
            "clusters: !tag [1]\n",
            "kind: ConfigMap\ndata: 3\n",
            "kind: ConfigMap\ndata: {kubeconfig.conf: [1]}\n",
            "kind: ConfigMap\ndata: {kubeconfig.conf: ''}\n",
        ];
        let all = RewriteOptions {
            clusters: ClusterSelector::All,
            ..RewriteOptions::default()
        };
        for input in odd {
            for opts in [&RewriteOptions::default(), &all] {
                let _ = rewrite(input, "f", opts);
                let _ = rewrite_configmap(input, "f", "kubeconfig.conf", opts);
            }
            let _ = restore(input, "f", &ClusterSelector::All);
            let _ = restore(input, "f", &ClusterSelector::Current);
            let _ = restore_configmap(input, "f", "kubeconfig.conf", &ClusterSelector::All);
        }
        for url in [
            "https://[",
            "https://[]",
            "https://@",
            "https://a:b:c",
            "https://a:",
            "HTTPS://A",
        ] {
            let _ = https_host(url);
        }
    }

    #[test]
    fn https_host_parses() {
        assert_eq!(https_host("https://10.0.0.10:6443").unwrap(), "10.0.0.10");
        assert_eq!(https_host("https://[fd00::10]:6443").unwrap(), "fd00::10");
        assert_eq!(https_host("https://[fd00::10]").unwrap(), "fd00::10");
        assert_eq!(
            https_host("https://k8s-api.example.internal").unwrap(),
            "k8s-api.example.internal"
        );
        assert_eq!(
            https_host("HTTPS://rancher.example/k8s/clusters/c-1").unwrap(),
            "rancher.example"
        );
        assert!(https_host("https://a:b:c").is_err());
    }

    // --- YAML output ----------------------------------------------------------------

    const TRICKY: &[&str] = &[
        "on",
        "No",
        "y",
        "N",
        "off",
        "yes",
        "true",
        "null",
        "~",
        "",
        " lead",
        "trail ",
        "1e3",
        "0x1F",
        "0o17",
        "0b101",
        "1_000",
        "012",
        "+1",
        "-2.5",
        ".5",
        ".inf",
        "-.inf",
        ".nan",
        "1:20",
        "190:20:30",
        "2024-05-14T09:21:37Z",
        "2024-05-14",
        "a: b",
        "a #b",
        "#c",
        "- x",
        "-",
        "? x",
        "[a]",
        "{a}",
        "*a",
        "&a",
        "!a",
        "|",
        ">",
        "%x",
        "@x",
        "`x",
        "'q'",
        "\"q\"",
        "back\\slash",
        "tab\there",
        "cr\rlf",
        "bell\u{7}",
        "é",
        "日本",
        "\u{2028}",
        "x:",
        "=",
        "<<",
        "10.0.0.10",
        "fd00::10",
        "2001:db8::5",
        "::1",
        "https://127.0.0.1:6443",
        "system:node:worker-1",
        "0s",
        "3f9a",
        "a\nb",
        "a\nb\n",
        "a\n\n",
        "\n",
        "\na",
        " a\nb",
        "a\n \nb",
        "a\n\tb\n",
        "--- x",
        "...",
        "a\r\nb",
    ];

    #[test]
    fn emitted_yaml_reads_back_identically() {
        let mut doc = Mapping::new();
        let mut seq = Vec::new();
        for (i, s) in TRICKY.iter().enumerate() {
            doc.insert(Value::from(*s), Value::from(*s));
            doc.insert(Value::from(format!("k{i}")), Value::from(*s));
            seq.push(Value::from(*s));
        }
        doc.insert("seq".into(), Value::Sequence(seq.clone()));
        doc.insert(
            "nested".into(),
            Value::Sequence(vec![Value::Sequence(seq), Value::Mapping(Mapping::new())]),
        );
        doc.insert(
            "numbers".into(),
            yaml("[1, -2, 2.5, 1.0e10, .inf, true, null]"),
        );
        doc.insert("tagged".into(), yaml("!custom {a: 1}"));
        doc.insert(yaml("[1, 2]"), "complex key".into());
        let doc = Value::Mapping(doc);
        let text = emit_yaml(&doc);
        assert_eq!(yaml(&text), doc, "{text}");
        for (name, input, _, _) in golden_cases() {
            assert_eq!(yaml(&emit_yaml(&yaml(input))), yaml(input), "{name}");
        }
    }

    #[test]
    fn yaml11_ambiguous_strings_are_quoted() {
        for s in [
            "on",
            "No",
            "y",
            "OFF",
            "1_000",
            "1:20",
            "0b11",
            "2024-05-14",
            "+.inf",
            "1e3",
        ] {
            assert_eq!(scalar_string(s), format!("\"{s}\""), "{s}");
        }
        for s in [
            "10.0.0.10",
            "fd00::10",
            "kubernetes",
            "system:node:w1",
            "0s",
            "/var/lib/x.pem",
            "LS0t+/=",
        ] {
            assert_eq!(scalar_string(s), s, "{s}");
        }
    }

    #[test]
    fn yaml11_bool_words_in_bool_fields_become_booleans() {
        let input = SIMPLE.replace(
            "    server: https://10.0.0.10:6443\n",
            "    server: https://10.0.0.10:6443\n    insecure-skip-tls-verify: yes\n",
        );
        let (text, _) = changed(rewrite(&input, "f", &RewriteOptions::default()).unwrap());
        assert_eq!(cluster0(&text)["insecure-skip-tls-verify"], true);
        assert!(text.contains("insecure-skip-tls-verify: true\n"), "{text}");
    }

    #[test]
    fn never_panics_on_mangled_goldens() {
        let all = RewriteOptions {
            clusters: ClusterSelector::All,
            ..RewriteOptions::default()
        };
        for (_, input, expected, _) in golden_cases() {
            for doc in [input, expected] {
                let lines: Vec<&str> = doc.split_inclusive('\n').collect();
                for k in 0..lines.len() {
                    let without: String = lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != k)
                        .map(|(_, l)| *l)
                        .collect();
                    let prefix: String = lines[..k].concat();
                    for text in [without, prefix] {
                        let _ = rewrite(&text, "f", &RewriteOptions::default());
                        let _ = rewrite(&text, "f", &all);
                        let _ = restore(&text, "f", &ClusterSelector::All);
                        let _ = rewrite_configmap(&text, "f", DEFAULT_CONFIGMAP_KEY, &all);
                        let _ = restore_configmap(
                            &text,
                            "f",
                            DEFAULT_CONFIGMAP_KEY,
                            &ClusterSelector::All,
                        );
                    }
                }
            }
        }
    }

    // --- files ----------------------------------------------------------------------

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".apilb-tmp-"))
            .collect()
    }

    #[test]
    fn write_atomic_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode_of(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"newer").unwrap();
        assert_eq!(mode_of(&path), 0o640);
        let meta = fs::metadata(&path).unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert!(leftovers(dir.path()).is_empty());
        // A new file is private.
        let fresh = dir.path().join("fresh.conf");
        write_atomic(&fresh, b"x").unwrap();
        assert_eq!(mode_of(&fresh), 0o600);
    }

    #[test]
    fn write_atomic_copies_owner_when_root() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return; // chown to another user needs root; covered where tests run as root
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "old").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        write_atomic(&path, b"new").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        let b = backup(&path).unwrap();
        let meta = fs::metadata(&b).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[test]
    fn write_atomic_failure_leaves_original_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "original").unwrap();
        let owner = Owner::of(&fs::metadata(&path).unwrap());
        let e = write_atomic_with(&path, b"new", Some(owner), &|tmp| {
            assert!(tmp.exists(), "temp file should exist before the rename");
            Err(io::Error::other("injected"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("injected"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "original");
        assert!(leftovers(dir.path()).is_empty());

        // A real failure that happens even as root: the rename target is a non-empty
        // directory.
        let target = dir.path().join("dir.conf");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        let e = write_atomic(&target, b"new").unwrap_err();
        assert!(
            matches!(
                e,
                KubeconfigError::Io {
                    op: "rename temp file over",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "x");
        assert!(leftovers(dir.path()).is_empty());

        // A stale temp file from an earlier run is replaced, not followed.
        let stale = temp_path(&path).unwrap();
        fs::write(&stale, "stale").unwrap();
        write_atomic(&path, b"fresh").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "fresh");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn write_atomic_follows_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.conf");
        let link = dir.path().join("link.conf");
        fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), "new");
    }

    #[test]
    fn backup_copies_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.conf");
        fs::write(&path, "original").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let b = backup(&path).unwrap();
        assert_eq!(b, dir.path().join("kubelet.conf.apilb-backup"));
        assert_eq!(fs::read_to_string(&b).unwrap(), "original");
        assert_eq!(mode_of(&b), 0o600);
        let e = backup(&dir.path().join("missing.conf")).unwrap_err();
        assert!(matches!(e, KubeconfigError::Io { .. }), "{e:?}");
    }

    // --- diff -----------------------------------------------------------------------

    #[test]
    fn diff_format() {
        assert_eq!(unified_diff("f", "a\n", "a\n"), "");
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n12\nthirteen\n";
        let expected = "\
--- f\t(original)
+++ f\t(new)
@@ -2,7 +2,7 @@
 2
 3
 4
-5
+five
 6
 7
 8
@@ -10,3 +10,4 @@
 10
 11
 12
+thirteen
";
        assert_eq!(unified_diff("f", old, new), expected);
        // Changes close together share a hunk.
        let new2 = "1\nx\n3\n4\n5\n6\n7\ny\n9\n10\n11\n12\n";
        let d = unified_diff("f", old, new2);
        assert_eq!(d.matches("@@ -").count(), 1, "{d}");
        assert!(d.contains("@@ -1,11 +1,11 @@"), "{d}");
        // Missing trailing newline and empty sides.
        assert_eq!(
            unified_diff("f", "a", "b"),
            "--- f\t(original)\n+++ f\t(new)\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n"
        );
        assert_eq!(
            unified_diff("f", "", "a\n"),
            "--- f\t(original)\n+++ f\t(new)\n@@ -0,0 +1 @@\n+a\n"
        );
    }

    #[test]
    fn diff_applies_with_patch_semantics() {
        // Applying the hunks' - and + lines in order reconstructs both sides.
        let input = include_str!("../../../tests/data/kubeconfig/multi-cluster.yaml");
        let all = RewriteOptions {
            clusters: ClusterSelector::All,
            ..RewriteOptions::default()
        };
        let (new, _) = changed(rewrite(input, "f", &all).unwrap());
        let d = unified_diff("multi-cluster.yaml", input, &new);
        assert!(d.starts_with(
            "--- multi-cluster.yaml\t(original)\n+++ multi-cluster.yaml\t(new)\n@@ -"
        ));
        let ops = diff_lines(
            &input.split_inclusive('\n').collect::<Vec<_>>(),
            &new.split_inclusive('\n').collect::<Vec<_>>(),
        );
        let a: Vec<&str> = input.split_inclusive('\n').collect();
        let b: Vec<&str> = new.split_inclusive('\n').collect();
        let mut old_side = String::new();
        let mut new_side = String::new();
        for op in ops {
            match op {
                Op::Equal(i, j) => {
                    old_side.push_str(a[i]);
                    new_side.push_str(b[j]);
                }
                Op::Delete(i) => old_side.push_str(a[i]),
                Op::Insert(j) => new_side.push_str(b[j]),
            }
        }
        assert_eq!(old_side, input);
        assert_eq!(new_side, new);
    }

    // --- kubectl --------------------------------------------------------------------

    /// Runs kubectl (`$KUBECTL` or `kubectl` on PATH). Fails, never skips, when it is
    /// missing: this test is the proof that client-go accepts the extension shape.
    fn kubectl(args: &[&str]) -> String {
        let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} ({e}); install kubectl (e.g. apt-get install kubernetes-client) or set KUBECTL — this test must not be skipped")
            });
        assert!(
            out.status.success(),
            "{bin} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn find_cluster(view: &Value, name: &str) -> Value {
        view["clusters"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("cluster {name} missing from kubectl output"))["cluster"]
            .clone()
    }

    #[test]
    fn kubectl_reads_quoted_yaml11_words_as_strings() {
        let input = "\
apiVersion: v1
kind: Config
clusters:
- name: \"on\"
  cluster:
    server: https://10.0.0.10:6443
    insecure-skip-tls-verify: yes
contexts:
- name: \"y\"
  context:
    cluster: \"on\"
    namespace: \"no\"
    user: \"1e3\"
current-context: \"y\"
users:
- name: \"1e3\"
  user:
    token: \"0x1F\"
";
        let (text, _) = changed(rewrite(input, "f", &RewriteOptions::default()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ambiguous.conf");
        fs::write(&path, &text).unwrap();
        let p = path.to_str().unwrap();
        let view = yaml(&kubectl(&[
            "--kubeconfig",
            p,
            "config",
            "view",
            "--raw",
            "-o",
            "yaml",
        ]));
        let c = find_cluster(&view, "on");
        assert_eq!(c["server"], DEFAULT_SERVER);
        assert_eq!(c["insecure-skip-tls-verify"], true);
        assert_eq!(view["contexts"][0]["context"]["namespace"], "no");
        assert_eq!(view["users"][0]["name"], "1e3");
        assert_eq!(view["users"][0]["user"]["token"], "0x1F");
    }

    #[test]
    fn kubectl_loads_rewritten_goldens() {
        let dir = tempfile::tempdir().unwrap();
        for (name, input, _, mode) in golden_cases() {
            let (text, changes) = changed(run_rewrite(input, &mode).unwrap());
            let kubeconfig = match &mode {
                Mode::Plain(_) => text.clone(),
                Mode::ConfigMap(key, _) => yaml(&text)["data"][*key].as_str().unwrap().to_string(),
            };
            let path = dir.path().join(format!("{name}.conf"));
            fs::write(&path, &kubeconfig).unwrap();
            let p = path.to_str().unwrap();
            kubectl(&["--kubeconfig", p, "config", "view"]);
            let view = yaml(&kubectl(&[
                "--kubeconfig",
                p,
                "config",
                "view",
                "--raw",
                "-o",
                "yaml",
            ]));
            for change in &changes {
                let c = find_cluster(&view, &change.cluster);
                assert_eq!(c["server"], change.to.as_str(), "{name}");
                assert_eq!(
                    c["tls-server-name"].as_str(),
                    change.tls_server_name.as_deref(),
                    "{name}"
                );
                let ours = c["extensions"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|e| is_our_extension(e))
                    .unwrap_or_else(|| panic!("{name}: kubectl dropped the extension"));
                assert_eq!(ours["extension"]["server"], change.from.as_str(), "{name}");
                assert_eq!(ours["extension"]["kind"], EXTENSION_KIND, "{name}");
            }
            if matches!(
                mode,
                Mode::Plain(RewriteOptions {
                    clusters: ClusterSelector::Current,
                    ..
                }) | Mode::ConfigMap(..)
            ) {
                let mini = yaml(&kubectl(&[
                    "--kubeconfig",
                    p,
                    "config",
                    "view",
                    "--minify",
                    "--raw",
                ]));
                let c = &mini["clusters"][0]["cluster"];
                assert_eq!(c["server"], DEFAULT_SERVER, "{name}");
                assert_eq!(
                    c["tls-server-name"].as_str(),
                    changes[0].tls_server_name.as_deref(),
                    "{name}"
                );
            }
            // A kubectl write of the file keeps our record, and restore still works.
            let ctx = yaml(&kubeconfig)["current-context"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !ctx.is_empty() {
                kubectl(&[
                    "--kubeconfig",
                    p,
                    "config",
                    "set-context",
                    &ctx,
                    "--namespace=kube-system",
                ]);
                let written = fs::read_to_string(&path).unwrap();
                let (back, restored) =
                    changed(restore(&written, p, &ClusterSelector::All).unwrap());
                assert_eq!(restored.len(), changes.len(), "{name}");
                fs::write(&path, &back).unwrap();
                let view = yaml(&kubectl(&[
                    "--kubeconfig",
                    p,
                    "config",
                    "view",
                    "--raw",
                    "-o",
                    "yaml",
                ]));
                for change in &changes {
                    let c = find_cluster(&view, &change.cluster);
                    assert_eq!(c["server"], change.from.as_str(), "{name}");
                    assert!(c.get("extensions").is_none(), "{name}");
                }
            }
        }
    }
}
