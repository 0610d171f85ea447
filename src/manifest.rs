//! `apilb manifest`: renders what runs apilb on a node — a static pod for
//! `/etc/kubernetes/manifests/apilb.yaml`, or (`--systemd`) a systemd unit,
//! `apilb.service`, and (`--socket`) the socket unit that goes with it, `apilb.socket`.
//!
//! # What this module owns
//!
//! * Turning the manifest flags (or, with `--from-kubespray`, what [`crate::kubespray`]
//!   read from the node's nginx-proxy or HAProxy config) into `apilb run` arguments. The
//!   values are validated by [`crate::config::resolve`], the same code `apilb run` uses, so
//!   a rendered manifest never holds arguments `apilb run` would refuse.
//! * The static pod: `kube-system`, `hostNetwork`, `system-node-critical`, `dnsPolicy:
//!   Default` (apilb must not depend on cluster DNS, which needs the apiserver path it
//!   provides), small requests and no limits (a memory limit on the node's only path to the
//!   apiserver turns a spike into an outage), liveness on admin `/healthz` (the process
//!   answers; never the servers' state, so an outage of every control plane does not
//!   restart apilb in a loop) and readiness on admin `/readyz`, both on the admin address.
//!   Least privilege: uid/gid 65532, non-root, read-only root filesystem, every capability
//!   dropped, no privilege escalation, seccomp `RuntimeDefault`. Port 6443 is above 1024,
//!   so binding it needs no capability. The CA and client certificate are mounted
//!   read-only from the host at the same paths (`hostPath` of type `File`: a missing file
//!   stops the pod with a clear event instead of mounting an empty directory). The health
//!   client certificate and key are mounted by their directory instead (`Directory`): the
//!   kubelet rotates `kubelet-client-current.pem` by pointing the symlink at a new file,
//!   which a file mount would never show. The image is required (`--image`): no public
//!   image exists, so only the operator knows the name the node's runtime has it under.
//! * The systemd unit: `Restart=always` with no start limit, ordered before kubelet and
//!   k3s-agent and wanted by them, `DynamicUser` with an empty capability set and the
//!   usual sandboxing. The certificate files are passed with `LoadCredential=`, so they
//!   are read by systemd (as root) whatever their permissions, and apilb reads copies in
//!   `%d` (systemd ≥ 248).
//! * The socket unit: one `ListenStream=` per `--listen` address and one for
//!   `--admin-listen`, which `apilb run` takes over by address (`LISTEN_FDS`), so the same
//!   flags give a unit and a socket that match.
//!
//! The YAML is built as a `yaml_serde::Value` and written by the kubeconfig module's
//! emitter, which quotes every string a YAML 1.1 reader (the kubelet's) could take for a
//! number or boolean. Output is deterministic: the `manifests/` examples are compared to it
//! byte for byte.
//!
//! # What it must not do
//!
//! No I/O except reading kubespray's file when asked; it never writes files (the operator
//! redirects the output), never talks to the cluster and never checks that the node's
//! files exist (rendering may happen elsewhere). Errors name the flag or file and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use yaml_serde::{Mapping, Value};

use crate::cli::{ManifestArgs, RunArgs};
use crate::config::{self, ConfigError, FileConfig, ServerSpec};
use crate::kubespray::{self, KubesprayError, LocalProxy};

/// The example image reference errors and help show.
pub const EXAMPLE_IMAGE: &str = concat!("registry.example.com/apilb:", env!("CARGO_PKG_VERSION"));
/// The image `scripts/build-image` builds by default (to import on a node).
pub const LOCAL_IMAGE: &str = concat!("localhost/apilb:", env!("CARGO_PKG_VERSION"));
/// Where kubeadm keeps the cluster CA.
pub const KUBEADM_CA: &str = "/etc/kubernetes/pki/ca.crt";
/// Where kubespray keeps the cluster CA (`kube_cert_dir`; /etc/kubernetes/pki links to it).
pub const KUBESPRAY_CA: &str = "/etc/kubernetes/ssl/ca.crt";
/// Where the systemd unit expects the binary.
pub const DEFAULT_BINARY: &str = "/usr/local/bin/apilb";
/// The uid and gid apilb runs as in the image and the static pod (distroless "nonroot").
pub const UID: u32 = 65532;
/// Where kubeadm's kubelet keeps its (rotated) client certificate.
pub const KUBELET_PKI: &str = "/var/lib/kubelet/pki";

/// Discovery's files on the node.
#[derive(Debug, Clone)]
pub struct DiscoveryPlan {
    pub kubeconfig: PathBuf,
    pub cert_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// Everything that can go wrong; all of it is bad input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kubespray(#[from] KubesprayError),
    #[error("--image {image:?}: {reason}; write e.g. {EXAMPLE_IMAGE}")]
    Image { image: String, reason: String },
    #[error(
        "--image is required for the static pod: no public apilb image exists, so name it as \
         the node's container runtime has it: --image {LOCAL_IMAGE} once `scripts/build-image \
         --oci apilb.tar` is imported on the node with `ctr -n k8s.io images import \
         apilb.tar`, or e.g. --image {EXAMPLE_IMAGE} pushed to your registry (README: \
         Installing on a node). Or pass --systemd to run the binary as a systemd service"
    )]
    ImageRequired,
}

/// What gets rendered: validated, ready to write.
#[derive(Debug, Clone)]
pub struct Plan {
    pub listen: Vec<SocketAddr>,
    pub servers: Vec<ServerSpec>,
    pub ca_file: PathBuf,
    pub health_client: Option<(PathBuf, PathBuf)>,
    pub admin_listen: SocketAddr,
    /// Passed on to `apilb run`.
    pub allow_non_loopback: bool,
    /// The static pod's image; `None` only for the systemd and socket units.
    pub image: Option<String>,
    pub binary: PathBuf,
    /// Where the servers came from, when not from --server.
    pub source: Option<LocalProxy>,
    /// Control-plane discovery, when asked for.
    pub discovery: Option<DiscoveryPlan>,
    /// Warnings for standard error.
    pub warnings: Vec<String>,
}

/// Builds the plan from the flags. `kubespray_defaults` are the nginx and HAProxy paths
/// looked at by `--from-kubespray` when neither `--nginx-conf` nor `--haproxy-cfg` is given.
pub fn plan(a: &ManifestArgs, kubespray_defaults: (&Path, &Path)) -> Result<Plan, ManifestError> {
    // clap's `requires` counts a bool flag's default as given, so these are checked here.
    // --binary is accepted with --socket too, so the unit and the socket render from the
    // same flags.
    for (given, flag, needs, has) in [
        (
            a.nginx_conf.is_some(),
            "--nginx-conf",
            "--from-kubespray",
            a.from_kubespray,
        ),
        (
            a.haproxy_cfg.is_some(),
            "--haproxy-cfg",
            "--from-kubespray",
            a.from_kubespray,
        ),
        (
            a.binary.is_some(),
            "--binary",
            "--systemd",
            a.systemd || a.socket,
        ),
    ] {
        if given && !has {
            return Err(ConfigError {
                origin: flag.to_string(),
                message: format!("only means something with {needs}; add {needs}"),
            }
            .into());
        }
    }
    let source = if a.from_kubespray {
        // With --listen given, kubespray's listen addresses are not needed, and a problem
        // with them (the fix those errors suggest is --listen) is no error.
        Some(kubespray::discover(
            a.nginx_conf.as_deref(),
            a.haproxy_cfg.as_deref(),
            kubespray_defaults.0,
            kubespray_defaults.1,
            !a.listen.is_empty(),
        )?)
    } else {
        if a.server.is_empty() {
            // config::resolve would suggest a config file, which `apilb manifest` has not.
            return Err(ConfigError {
                origin: "--server".into(),
                message: "no servers: give each control plane as --server HOST:PORT \
                          (repeatable), or take them from kubespray's nginx-proxy or HAProxy \
                          on this node with --from-kubespray"
                    .into(),
            }
            .into());
        }
        None
    };
    let (servers, listen) = match &source {
        Some(lp) => (
            lp.servers.iter().map(ToString::to_string).collect(),
            if a.listen.is_empty() {
                lp.listen.iter().map(ToString::to_string).collect()
            } else {
                a.listen.clone()
            },
        ),
        None => (a.server.clone(), a.listen.clone()),
    };
    let default_ca = if source.is_some() {
        KUBESPRAY_CA
    } else {
        KUBEADM_CA
    };
    let ca_file = a
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_ca));
    let run = RunArgs {
        listen,
        allow_non_loopback: a.allow_non_loopback,
        server: servers,
        ca_file: Some(ca_file.clone()),
        health_client_cert: a.health_client_cert.clone(),
        health_client_key: a.health_client_key.clone(),
        admin_listen: a.admin_listen.clone(),
        discovery_kubeconfig: a.discovery_kubeconfig.clone(),
        state_dir: a.state_dir.clone(),
        ..RunArgs::default()
    };
    let cfg = config::resolve(&run, FileConfig::default())?;
    let discovery = cfg.discovery.as_ref().map(|d| DiscoveryPlan {
        kubeconfig: d.kubeconfig.clone(),
        cert_dir: a
            .discovery_cert_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(KUBELET_PKI)),
        state_dir: d.state_dir.clone(),
    });
    for (flag, p) in [
        ("--ca-file", Some(&ca_file)),
        ("--health-client-cert", a.health_client_cert.as_ref()),
        ("--health-client-key", a.health_client_key.as_ref()),
        (
            "--discovery-kubeconfig",
            discovery.as_ref().map(|d| &d.kubeconfig),
        ),
        (
            "--discovery-cert-dir",
            discovery.as_ref().map(|d| &d.cert_dir),
        ),
        ("--state-dir", discovery.as_ref().map(|d| &d.state_dir)),
    ] {
        if let Some(p) = p {
            check_path(flag, p)?;
        }
    }
    if cfg.listen.contains(&cfg.admin_listen) {
        return Err(ConfigError {
            origin: "--admin-listen".into(),
            message: format!(
                "`{}` is also a --listen address; give the admin endpoint a port of its own",
                cfg.admin_listen
            ),
        }
        .into());
    }
    let unit = a.systemd || a.socket;
    let image = match &a.image {
        Some(image) => {
            check_image(image).map_err(|reason| ManifestError::Image {
                image: image.clone(),
                reason,
            })?;
            Some(image.clone())
        }
        None if unit => None,
        None => return Err(ManifestError::ImageRequired),
    };
    if !unit {
        // The static pod mounts their directories (the kubelet rotates its client
        // certificate by re-pointing a symlink): a directory near the root would put much
        // of the host into the pod.
        for (flag, p) in [
            ("--health-client-cert", a.health_client_cert.as_ref()),
            ("--health-client-key", a.health_client_key.as_ref()),
        ] {
            if let Some(p) = p {
                check_mounted_dir(flag, p)?;
            }
        }
    }

    let mut warnings = Vec::new();
    if let Some(lp) = &source {
        warnings.extend(lp.notes.iter().cloned());
    }
    if let Some(low) = cfg.listen.iter().find(|l| l.port() < 1024) {
        warnings.push(format!(
            "--listen {low}: ports below 1024 need CAP_NET_BIND_SERVICE, which the static pod \
             and the unit drop; apilb will fail to bind unless \
             net.ipv4.ip_unprivileged_port_start allows it"
        ));
    }
    if discovery.is_some() {
        warnings.push(
            "--discovery-kubeconfig: to read the kubelet's root-only client key, apilb runs as \
             uid 0 with every capability dropped (a root-owned 0600 file is readable by its \
             owner without CAP_DAC_OVERRIDE); the kubelet's certificate directory is mounted \
             read-only"
                .to_string(),
        );
    }
    if cfg.health_client_key.is_some() && !a.systemd && discovery.is_none() {
        warnings.push(format!(
            "--health-client-key: the static pod runs as uid {UID}, so the key file on the node \
             must be readable by that uid (a root-only 0600 key is not). Copy it and `chown \
             {UID}` the copy, or use the systemd unit (--systemd), which passes it as a \
             credential"
        ));
    }
    Ok(Plan {
        listen: cfg.listen,
        servers: cfg.servers,
        ca_file,
        health_client: cfg.health_client_cert.zip(cfg.health_client_key),
        admin_listen: cfg.admin_listen,
        allow_non_loopback: a.allow_non_loopback,
        image,
        binary: a
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY)),
        source,
        discovery,
        warnings,
    })
}

fn check_path(flag: &'static str, p: &Path) -> Result<(), ConfigError> {
    if !p.is_absolute() {
        return Err(ConfigError {
            origin: flag.to_string(),
            message: format!(
                "`{}` is a relative path; the manifest runs elsewhere, so give the absolute path \
                 of the file on the node",
                p.display()
            ),
        });
    }
    if p.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
        return Err(ConfigError {
            origin: flag.to_string(),
            message: format!(
                "`{}` is not valid UTF-8 or holds control characters; rename the file",
                p.display()
            ),
        });
    }
    Ok(())
}

/// An image reference as the container runtimes parse it: `[HOST[:PORT]/]NAME[:TAG][@DIGEST]`
/// with a lowercase NAME. Returns what is wrong.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("an image reference has no spaces and is not empty".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty()
                && alg
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!(
                "`@{d}` is not a digest; a digest reads @sha256:<64 hex digits>"
            ));
        }
    }
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = (1..=128).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !t.starts_with(['.', '-']);
        if !ok {
            return Err(format!(
                "the tag `{t}` may hold only letters, digits, `_`, `.` and `-` (at most 128)"
            ));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // A first part with a `.` or `:`, or `localhost`, is a registry host.
    if parts.len() > 1
        && (parts[0].contains(['.', ':']) || parts[0] == "localhost")
        && parts[0]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    {
        parts.remove(0);
    }
    for part in parts {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(format!(
                "the repository part `{part}` must be lowercase letters and digits, separated \
                 by `.`, `_` or `-`"
            ));
        }
    }
    Ok(())
}

/// The static pod mounts `p`'s directory: refuse `/` and top-level directories.
fn check_mounted_dir(flag: &'static str, p: &Path) -> Result<(), ConfigError> {
    let depth = p
        .parent()
        .map(|d| {
            d.components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .count()
        })
        .unwrap_or(0);
    if depth < 2 {
        return Err(ConfigError {
            origin: flag.to_string(),
            message: format!(
                "the static pod mounts the directory of `{}` read-only (so it sees a \
                 certificate the kubelet rotates), and `{}` is too much of the host to mount; \
                 keep the file in a directory of its own, e.g. /etc/apilb/{}",
                p.display(),
                p.parent().unwrap_or(Path::new("/")).display(),
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "client.pem".into())
            ),
        });
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `apilb run` arguments. `files` maps the CA / client cert / key to the paths apilb sees.
fn run_args<'p>(
    plan: &'p Plan,
    mut files: impl FnMut(&'static str, &'p Path) -> String,
) -> Vec<String> {
    let mut args = vec!["run".to_string()];
    if plan.allow_non_loopback {
        args.push("--allow-non-loopback".to_string());
    }
    for l in &plan.listen {
        args.push(format!("--listen={l}"));
    }
    for s in &plan.servers {
        args.push(format!("--server={s}"));
    }
    args.push(format!("--ca-file={}", files("ca.crt", &plan.ca_file)));
    if let Some((cert, key)) = &plan.health_client {
        args.push(format!(
            "--health-client-cert={}",
            files("health-client.crt", cert)
        ));
        args.push(format!(
            "--health-client-key={}",
            files("health-client.key", key)
        ));
    }
    args.push(format!("--admin-listen={}", plan.admin_listen));
    if let Some(d) = &plan.discovery {
        args.push(format!(
            "--discovery-kubeconfig={}",
            path_str(&d.kubeconfig)
        ));
        args.push(format!("--state-dir={}", path_str(&d.state_dir)));
    }
    args
}

/// The lines that open either output: what it is, how it was rendered, from what.
fn header(plan: &Plan, what: &[&str], command: &str) -> String {
    let mut out = String::new();
    for line in what {
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str(&format!("# Rendered by: {command}\n"));
    if let Some(lp) = &plan.source {
        out.push_str(&format!(
            "# Servers and listen addresses from kubespray's {}: {}\n",
            lp.kind,
            lp.file.display()
        ));
    }
    out
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn n(v: u64) -> Value {
    Value::Number(v.into())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn probe(plan: &Plan, path: &str, period: u64, failures: u64) -> Value {
    map(vec![
        (
            "httpGet",
            map(vec![
                ("host", s(plan.admin_listen.ip().to_string())),
                ("port", n(plan.admin_listen.port().into())),
                ("path", s(path)),
            ]),
        ),
        ("periodSeconds", n(period)),
        ("timeoutSeconds", n(2)),
        ("failureThreshold", n(failures)),
    ])
}

/// The static pod, as YAML. `command` is the command line shown in the header.
pub fn static_pod(plan: &Plan, command: &str) -> String {
    // (name, host path, hostPath type, read-only). The health client certificate and key
    // by their directory: the kubelet rotates kubelet-client-current.pem by re-pointing the
    // symlink, and a file mount keeps showing the file it pointed at when the pod started.
    let mut dirs: Vec<(&str, &Path, &str, bool)> = Vec::new();
    if let Some((cert, key)) = &plan.health_client {
        for (name, p) in [("health-client", cert), ("health-client-key", key)] {
            if let Some(dir) = p.parent() {
                dirs.push((name, dir, "Directory", true));
            }
        }
    }
    if let Some(d) = &plan.discovery {
        dirs.push(("kubelet-pki", &d.cert_dir, "Directory", true));
        dirs.push(("state", &d.state_dir, "DirectoryOrCreate", false));
    }
    let mut files: Vec<(&str, &Path, &str, bool)> = vec![("ca", &plan.ca_file, "File", true)];
    if let Some(d) = &plan.discovery {
        files.push(("discovery-kubeconfig", &d.kubeconfig, "File", true));
    }
    // Files first (the CA leads, as it always has), then directories; one mount per path,
    // and none for a file a mounted directory already holds.
    let mut host: Vec<(&str, &Path, &str, bool)> = Vec::new();
    for f in files {
        if !dirs.iter().any(|d| f.1.starts_with(d.1)) {
            host.push(f);
        }
    }
    for d in dirs {
        match host.iter_mut().find(|h| h.1 == d.1) {
            // One mount, writable if either needs it (the state directory).
            Some(h) => h.3 &= d.3,
            None => host.push(d),
        }
    }
    let mounts = host
        .iter()
        .map(|(name, p, _, ro)| {
            map(vec![
                ("name", s(*name)),
                ("mountPath", s(path_str(p))),
                ("readOnly", Value::Bool(*ro)),
            ])
        })
        .collect();
    let volumes = host
        .iter()
        .map(|(name, p, kind, _)| {
            map(vec![
                ("name", s(*name)),
                (
                    "hostPath",
                    map(vec![("path", s(path_str(p))), ("type", s(*kind))]),
                ),
            ])
        })
        .collect();
    // Discovery reads the kubelet's root-only key: uid 0, but still without any capability.
    let uid: u64 = if plan.discovery.is_some() {
        0
    } else {
        UID.into()
    };
    let args = run_args(plan, |_, p| path_str(p))
        .into_iter()
        .map(s)
        .collect();
    let container = map(vec![
        ("name", s("apilb")),
        // plan() refuses a static pod without an image.
        ("image", s(plan.image.clone().unwrap_or_default())),
        ("imagePullPolicy", s("IfNotPresent")),
        ("args", Value::Sequence(args)),
        (
            "resources",
            map(vec![(
                "requests",
                map(vec![("cpu", s("25m")), ("memory", s("32Mi"))]),
            )]),
        ),
        ("livenessProbe", probe(plan, "/healthz", 10, 3)),
        ("readinessProbe", probe(plan, "/readyz", 5, 2)),
        (
            "securityContext",
            map(vec![
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                (
                    "capabilities",
                    map(vec![("drop", Value::Sequence(vec![s("ALL")]))]),
                ),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ]);
    let pod = map(vec![
        ("apiVersion", s("v1")),
        ("kind", s("Pod")),
        (
            "metadata",
            map(vec![
                ("name", s("apilb")),
                ("namespace", s("kube-system")),
                (
                    "labels",
                    map(vec![
                        ("app.kubernetes.io/name", s("apilb")),
                        ("k8s-app", s("apilb")),
                    ]),
                ),
            ]),
        ),
        (
            "spec",
            map(vec![
                ("hostNetwork", Value::Bool(true)),
                ("dnsPolicy", s("Default")),
                ("priorityClassName", s("system-node-critical")),
                ("terminationGracePeriodSeconds", n(15)),
                (
                    "securityContext",
                    map(vec![
                        ("runAsNonRoot", Value::Bool(uid != 0)),
                        ("runAsUser", n(uid)),
                        ("runAsGroup", n(uid)),
                        ("seccompProfile", map(vec![("type", s("RuntimeDefault"))])),
                    ]),
                ),
                ("containers", Value::Sequence(vec![container])),
                ("volumes", Value::Sequence(volumes)),
            ]),
        ),
    ]);
    let mut out = header(
        plan,
        &[
            "apilb: node-local load balancer for the Kubernetes API server, as a static pod.",
            "Install: save as /etc/kubernetes/manifests/apilb.yaml on the node (the kubelet starts it",
            "without the API). Check: apilb status --admin-url http://ADMIN",
        ],
        command,
    )
    .replace("ADMIN", &plan.admin_listen.to_string());
    out.push_str(&crate::kubeconfig::emit_yaml(&pod));
    out
}

/// An argument of a unit's command line: `%` and `$` escaped, quoted when needed.
fn systemd_arg(a: &str) -> String {
    let escaped = a.replace('%', "%%").replace('$', "$$");
    let plain = escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+[]%$".contains(c));
    if plain && !escaped.is_empty() {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The systemd unit. `command` is the command line shown in the header.
pub fn systemd_unit(plan: &Plan, command: &str) -> String {
    let mut creds: Vec<(&'static str, &Path)> = Vec::new();
    let args = run_args(plan, |name, p| {
        creds.push((name, p));
        format!("%d/{name}")
    });
    let mut out = header(
        plan,
        &[
            "apilb: node-local load balancer for the Kubernetes API server, as a systemd service.",
            "Install: save as /etc/systemd/system/apilb.service, then",
            "  systemctl daemon-reload && systemctl enable --now apilb",
        ],
        command,
    );
    out.push_str(
        "\n[Unit]\n\
         Description=apilb: node-local load balancer for the Kubernetes API server\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         Before=kubelet.service k3s-agent.service\n\
         # Never give up restarting: this is the node's path to the API server.\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         Type=notify\n",
    );
    // apilb reads the credential copies; a changed file takes effect on restart. The path
    // runs to the end of the line (no quoting); only specifiers need escaping.
    for (name, p) in &creds {
        out.push_str(&format!(
            "LoadCredential={name}:{}\n",
            path_str(p).replace('%', "%%")
        ));
    }
    out.push_str(&format!(
        "ExecStart={}",
        systemd_arg(&path_str(&plan.binary))
    ));
    for a in &args {
        // %d/… (credential paths) must stay a specifier; everything else is escaped.
        let rendered = match a.split_once("=%d/") {
            Some((flag, name)) => format!("{flag}=%d/{name}"),
            None => systemd_arg(a),
        };
        out.push_str(" \\\n    ");
        out.push_str(&rendered);
    }
    out.push_str(
        "\nExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=always\n\
         RestartSec=1\n\
         # Client connections: two descriptors each, up to --max-connections (10000).\n\
         LimitNOFILE=65536\n\
         # Killed last under memory pressure, like a system-node-critical pod.\n\
         OOMScoreAdjust=-900\n\
         \n\
         # Least privilege: a transient user, no capabilities (6443 is above 1024), read-only\n\
         # system, network sockets only.\n\
         DynamicUser=yes\n\
         # /var/lib/apilb, writable by that user: --state-dir (discovery) keeps its list there.\n\
         StateDirectory=apilb\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectProc=invisible\n\
         ProcSubset=pid\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RemoveIPC=yes\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged\n\
         UMask=0077\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target kubelet.service k3s-agent.service\n",
    );
    if plan.discovery.is_some() {
        // The kubelet's client key is root-only and rotates in place: read it as its owner
        // (uid 0) with an empty capability set, rather than a copy that would go stale.
        out = out.replace(
            "DynamicUser=yes\n",
            "# Discovery reads the kubelet's root-only, rotating key: uid 0, no capability.\n\
             User=root\n",
        );
    }
    out
}

/// The systemd socket unit for [`systemd_unit`] of the same plan: `apilb run` serves on an
/// inherited socket whose address matches a `--listen` or the `--admin-listen` address.
pub fn socket_unit(plan: &Plan, command: &str) -> String {
    let mut out = header(
        plan,
        &[
            "apilb: the listening sockets of apilb.service (systemd socket activation). systemd",
            "holds them, so `systemctl restart apilb` or a binary upgrade refuses no connection:",
            "new ones wait in the kernel's queue until the new process accepts them.",
            "Install: save as /etc/systemd/system/apilb.socket next to apilb.service (rendered",
            "from the same flags with --systemd instead of --socket), then",
            "  systemctl daemon-reload && systemctl enable --now apilb.socket apilb.service",
        ],
        command,
    );
    out.push_str(
        "\n[Unit]\n\
         Description=apilb listening sockets (node-local Kubernetes API load balancer)\n\
         Before=kubelet.service k3s-agent.service\n\
         \n\
         [Socket]\n\
         # --listen: client connections\n",
    );
    for l in &plan.listen {
        out.push_str(&format!("ListenStream={l}\n"));
    }
    out.push_str(&format!(
        "# --admin-listen: probes, metrics, apilb status\nListenStream={}\n",
        plan.admin_listen
    ));
    if plan
        .listen
        .iter()
        .chain([&plan.admin_listen])
        .any(SocketAddr::is_ipv6)
    {
        out.push_str(
            "# IPv6 sockets take IPv6 only, as apilb's own listeners do (IPV6_V6ONLY).\n\
             BindIPv6Only=ipv6-only\n",
        );
    }
    out.push_str(
        "Service=apilb.service\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n",
    );
    out
}

/// What the flags ask for: the socket unit, the systemd unit or the static pod.
pub fn render(plan: &Plan, a: &ManifestArgs, command: &str) -> String {
    if a.socket {
        socket_unit(plan, command)
    } else if a.systemd {
        systemd_unit(plan, command)
    } else {
        static_pod(plan, command)
    }
}

/// A command line as a POSIX shell reads it back (for the header).
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let safe = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
            if safe {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn margs(v: &[&str]) -> ManifestArgs {
        let mut full = vec!["apilb", "manifest"];
        full.extend_from_slice(v);
        match crate::cli::Cli::try_parse_from(full) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Manifest(a),
            }) => *a,
            Ok(_) => panic!("not manifest"),
            Err(e) => panic!("{e}"),
        }
    }

    fn nowhere() -> (&'static Path, &'static Path) {
        (
            Path::new("/nonexistent/nginx.conf"),
            Path::new("/nonexistent/haproxy.cfg"),
        )
    }

    fn pod_of(v: &[&str]) -> (String, Value) {
        let mut v = v.to_vec();
        if !v.contains(&"--image") {
            v.extend(["--image", EXAMPLE_IMAGE]);
        }
        let p = plan(&margs(&v), nowhere()).unwrap();
        let text = static_pod(&p, "apilb manifest");
        let doc = yaml_serde::from_str(&text).unwrap();
        (text, doc)
    }

    #[test]
    fn manifest_with_discovery_mounts_the_node_credentials_and_state() {
        let (_, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--discovery-kubeconfig",
            "/etc/kubernetes/kubelet.conf",
        ]);
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--discovery-kubeconfig=/etc/kubernetes/kubelet.conf"));
        assert!(args.contains(&"--state-dir=/var/lib/apilb"));
        let vols = spec["volumes"].as_sequence().unwrap();
        let vol = |path: &str| {
            vols.iter()
                .find(|v| v["hostPath"]["path"] == path)
                .unwrap_or_else(|| panic!("no volume for {path}"))
        };
        assert_eq!(
            vol("/etc/kubernetes/kubelet.conf")["hostPath"]["type"],
            "File"
        );
        assert_eq!(vol("/var/lib/kubelet/pki")["hostPath"]["type"], "Directory");
        assert_eq!(
            vol("/var/lib/apilb")["hostPath"]["type"],
            "DirectoryOrCreate"
        );
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let ro = |path: &str| {
            mounts.iter().find(|m| m["mountPath"] == path).unwrap()["readOnly"]
                .as_bool()
                .unwrap()
        };
        assert!(ro("/etc/kubernetes/kubelet.conf"));
        assert!(ro("/var/lib/kubelet/pki"));
        assert!(!ro("/var/lib/apilb"));
        // Root to read the kubelet's 0600 key, but with no capability at all.
        assert_eq!(spec["securityContext"]["runAsUser"], 0);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

        let p = plan(
            &margs(&[
                "--server",
                "10.0.0.1:6443",
                "--systemd",
                "--discovery-kubeconfig",
                "/etc/kubernetes/kubelet.conf",
            ]),
            nowhere(),
        )
        .unwrap();
        let unit = systemd_unit(&p, "apilb manifest --systemd");
        assert!(unit.contains("User=root\n"));
        assert!(!unit.contains("DynamicUser=yes"));
        assert!(unit.contains("CapabilityBoundingSet=\n"));
        assert!(unit.contains("--discovery-kubeconfig=/etc/kubernetes/kubelet.conf"));
        let e = plan(
            &margs(&[
                "--server",
                "10.0.0.1:6443",
                "--discovery-kubeconfig",
                "kubelet.conf",
            ]),
            nowhere(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--discovery-kubeconfig"), "{e}");
    }

    #[test]
    fn manifest_static_pod_has_every_required_field() {
        let (_, pod) = pod_of(&["--server", "10.0.0.1:6443", "--server", "cp2:6443"]);
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["namespace"], "kube-system");
        let spec = &pod["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["priorityClassName"], "system-node-critical");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &spec["containers"][0];
        assert_eq!(c["image"], EXAMPLE_IMAGE);
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "run",
                "--listen=127.0.0.1:6443",
                "--server=10.0.0.1:6443",
                "--server=cp2:6443",
                "--ca-file=/etc/kubernetes/pki/ca.crt",
                "--admin-listen=127.0.0.1:6447"
            ]
        );
        assert_eq!(c["resources"]["requests"]["cpu"], "25m");
        assert!(c["resources"]["limits"].is_null());
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(c[probe]["httpGet"]["host"], "127.0.0.1");
            assert_eq!(c[probe]["httpGet"]["port"], 6447);
            assert_eq!(c[probe]["httpGet"]["path"], path);
        }
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        assert_eq!(
            c["volumeMounts"][0]["mountPath"],
            "/etc/kubernetes/pki/ca.crt"
        );
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            spec["volumes"][0]["hostPath"]["path"],
            "/etc/kubernetes/pki/ca.crt"
        );
        assert_eq!(spec["volumes"][0]["hostPath"]["type"], "File");
        assert_eq!(spec["volumes"].as_sequence().unwrap().len(), 1);
    }

    #[test]
    fn manifest_client_cert_mounts_and_custom_admin() {
        let (text, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--listen",
            "[::1]:6443",
            "--admin-listen",
            "[::1]:7447",
            "--health-client-cert",
            "/var/lib/kubelet/pki/kubelet-client-current.pem",
            "--health-client-key",
            "/var/lib/kubelet/pki/kubelet-client-current.pem",
            "--image",
            "registry.example.com/apilb:v1",
        ]);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["host"], "::1");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], 7447);
        assert_eq!(c["image"], "registry.example.com/apilb:v1");
        // cert and key are one file: its directory is one volume, one mount.
        assert_eq!(c["volumeMounts"].as_sequence().unwrap().len(), 2);
        assert_eq!(pod["spec"]["volumes"].as_sequence().unwrap().len(), 2);
        assert_eq!(c["volumeMounts"][1]["mountPath"], "/var/lib/kubelet/pki");
        assert!(text
            .contains("- --health-client-key=/var/lib/kubelet/pki/kubelet-client-current.pem\n"));
        assert!(text.contains("- --listen=[::1]:6443\n"), "{text}");
    }

    #[test]
    fn manifest_warns_about_key_permissions_and_low_ports() {
        let key = [
            "--server",
            "10.0.0.1:6443",
            "--health-client-cert",
            "/etc/apilb/c.pem",
            "--health-client-key",
            "/etc/apilb/k.pem",
            "--image",
            EXAMPLE_IMAGE,
        ];
        let p = plan(&margs(&key), nowhere()).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("uid 65532") && p.warnings[0].contains("--systemd"));
        let mut systemd = key.to_vec();
        systemd.push("--systemd");
        assert!(plan(&margs(&systemd), nowhere())
            .unwrap()
            .warnings
            .is_empty());
        let p = plan(
            &margs(&[
                "--server",
                "10.0.0.1:6443",
                "--listen",
                "127.0.0.1:443",
                "--image",
                EXAMPLE_IMAGE,
            ]),
            nowhere(),
        )
        .unwrap();
        assert!(
            p.warnings.len() == 1 && p.warnings[0].contains("CAP_NET_BIND_SERVICE"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn manifest_invalid_input_names_the_flag() {
        let e = plan(&margs(&["--server", "cp1"]), nowhere()).unwrap_err();
        assert!(e.to_string().starts_with("--server:"), "{e}");
        let e = plan(&margs(&[]), nowhere()).unwrap_err().to_string();
        assert!(
            e.contains("no servers")
                && e.contains("--from-kubespray")
                && !e.contains("config file"),
            "{e}"
        );
        let e = plan(
            &margs(&["--server", "a:1", "--listen", "0.0.0.0:6443"]),
            nowhere(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--allow-non-loopback"), "{e}");
        let e = plan(
            &margs(&["--server", "a:1", "--ca-file", "ca.crt"]),
            nowhere(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--ca-file") && e.to_string().contains("absolute"));
        let e = plan(&margs(&["--server", "a:1", "--image", "a b"]), nowhere()).unwrap_err();
        assert!(e.to_string().contains("--image"), "{e}");
        let e = plan(&margs(&["--from-kubespray"]), nowhere()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nginx.conf"), "{e}");
        for (bad, flag) in [
            (&["--nginx-conf", "/x"][..], "--nginx-conf"),
            (&["--server", "a:1", "--binary", "/b"], "--binary"),
        ] {
            let e = plan(&margs(bad), nowhere()).unwrap_err();
            assert!(e.to_string().starts_with(&format!("{flag}: only")), "{e}");
        }
        // clap refuses the contradictory ones.
        for bad in [
            &["--from-kubespray", "--server", "a:1"][..],
            &["--nginx-conf", "/x", "--server", "a:1"],
            &["--nginx-conf", "/x", "--haproxy-cfg", "/y"],
            &["--server", "a:1", "--health-client-cert", "/c"],
        ] {
            let mut full = vec!["apilb", "manifest"];
            full.extend_from_slice(bad);
            assert!(crate::cli::Cli::try_parse_from(full).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_static_pod_requires_a_valid_image() {
        let e = plan(&margs(&["--server", "10.0.0.1:6443"]), nowhere()).unwrap_err();
        assert!(matches!(e, ManifestError::ImageRequired), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("--image is required")
                && msg.contains(&format!("--image {EXAMPLE_IMAGE}"))
                && msg.contains(&format!("--image {LOCAL_IMAGE}"))
                && msg.contains("scripts/build-image")
                && msg.contains("--systemd"),
            "{msg}"
        );
        // The units run the binary: no image needed.
        for unit in ["--systemd", "--socket"] {
            let p = plan(&margs(&["--server", "10.0.0.1:6443", unit]), nowhere()).unwrap();
            assert!(p.image.is_none());
        }
        for good in [
            "apilb:0.1.0",
            "yes",
            "registry.example.com/apilb:0.1.0",
            "localhost:5000/team/apilb",
            "[fd00::1]:5000/apilb:v1",
            "registry.example.com/apilb@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "not empty"),
            ("a b", "no spaces"),
            ("Apilb:0.1.0", "`Apilb`"),
            ("registry.example.com/Team/apilb", "`Team`"),
            ("apilb:", "tag ``"),
            ("apilb:-x", "tag `-x`"),
            ("a//b", "part ``"),
            ("apilb@sha256:xyz", "not a digest"),
        ] {
            let e = check_image(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            let e = plan(&margs(&["--server", "a:1", "--image", bad]), nowhere()).unwrap_err();
            assert!(
                e.to_string().starts_with("--image ") && e.to_string().contains(EXAMPLE_IMAGE),
                "{e}"
            );
        }
    }

    #[test]
    fn manifest_allow_non_loopback_is_passed_on() {
        let (_, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--listen",
            "0.0.0.0:6443",
            "--admin-listen",
            "0.0.0.0:6447",
            "--allow-non-loopback",
        ]);
        let args = &pod["spec"]["containers"][0]["args"];
        assert_eq!(args[1], "--allow-non-loopback");
        assert_eq!(args[2], "--listen=0.0.0.0:6443");
        let p = plan(
            &margs(&[
                "--systemd",
                "--server",
                "10.0.0.1:6443",
                "--listen",
                "0.0.0.0:6443",
                "--allow-non-loopback",
            ]),
            nowhere(),
        )
        .unwrap();
        assert!(systemd_unit(&p, "x").contains("    run \\\n    --allow-non-loopback \\\n"));
        // Without it, the default stays loopback only.
        let (_, pod) = pod_of(&["--server", "10.0.0.1:6443"]);
        assert!(!format!("{:?}", pod).contains("allow-non-loopback"));
    }

    #[test]
    fn manifest_health_client_files_are_mounted_by_directory() {
        let vols = |pod: &Value| -> Vec<(String, String, bool)> {
            let c = &pod["spec"]["containers"][0];
            pod["spec"]["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .zip(c["volumeMounts"].as_sequence().unwrap())
                .map(|(v, m)| {
                    assert_eq!(v["name"], m["name"]);
                    assert_eq!(v["hostPath"]["path"], m["mountPath"]);
                    (
                        v["hostPath"]["path"].as_str().unwrap().to_string(),
                        v["hostPath"]["type"].as_str().unwrap().to_string(),
                        m["readOnly"].as_bool().unwrap(),
                    )
                })
                .collect()
        };
        let v = |p: &str, t: &str, ro: bool| (p.to_string(), t.to_string(), ro);
        // kubelet's rotating certificate: its directory, read-only, never the symlink itself.
        let current = "/var/lib/kubelet/pki/kubelet-client-current.pem";
        let (text, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--health-client-cert",
            current,
            "--health-client-key",
            current,
        ]);
        assert_eq!(
            vols(&pod),
            [
                v("/etc/kubernetes/pki/ca.crt", "File", true),
                v("/var/lib/kubelet/pki", "Directory", true)
            ]
        );
        assert!(text.contains(&format!("- --health-client-cert={current}\n")));
        // Two directories; a CA inside a mounted directory needs no mount of its own.
        let (_, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--ca-file",
            "/etc/apilb/ca.crt",
            "--health-client-cert",
            "/etc/apilb/client.crt",
            "--health-client-key",
            "/etc/apilb/private/client.key",
        ]);
        assert_eq!(
            vols(&pod),
            [
                v("/etc/apilb", "Directory", true),
                v("/etc/apilb/private", "Directory", true)
            ]
        );
        // With discovery, the kubelet's directory is mounted once.
        let (_, pod) = pod_of(&[
            "--server",
            "10.0.0.1:6443",
            "--health-client-cert",
            current,
            "--health-client-key",
            current,
            "--discovery-kubeconfig",
            "/etc/kubernetes/kubelet.conf",
        ]);
        assert_eq!(
            vols(&pod),
            [
                v("/etc/kubernetes/pki/ca.crt", "File", true),
                v("/etc/kubernetes/kubelet.conf", "File", true),
                v("/var/lib/kubelet/pki", "Directory", true),
                v("/var/lib/apilb", "DirectoryOrCreate", false)
            ]
        );
        // A directory near the root is refused for the pod (not for the unit's credentials).
        for (cert, dir) in [("/client.pem", "/"), ("/etc/client.pem", "/etc")] {
            let args = [
                "--server",
                "10.0.0.1:6443",
                "--image",
                EXAMPLE_IMAGE,
                "--health-client-cert",
                cert,
                "--health-client-key",
                "/etc/apilb/k.pem",
            ];
            let e = plan(&margs(&args), nowhere()).unwrap_err().to_string();
            assert!(
                e.starts_with("--health-client-cert:")
                    && e.contains(&format!("`{dir}` is too much"))
                    && e.contains("/etc/apilb/client.pem"),
                "{e}"
            );
            let mut unit = args.to_vec();
            unit.push("--systemd");
            assert!(plan(&margs(&unit), nowhere()).is_ok());
        }
    }

    #[test]
    fn manifest_socket_unit_listens_where_the_unit_does() {
        let p = plan(
            &margs(&["--socket", "--server", "10.0.0.1:6443"]),
            nowhere(),
        )
        .unwrap();
        let u = socket_unit(&p, "apilb manifest --socket");
        let listens: Vec<&str> = u
            .lines()
            .filter_map(|l| l.strip_prefix("ListenStream="))
            .collect();
        assert_eq!(listens, ["127.0.0.1:6443", "127.0.0.1:6447"]);
        assert!(!u.contains("BindIPv6Only"));
        for line in ["Service=apilb.service\n", "WantedBy=sockets.target\n"] {
            assert!(u.contains(line), "{line:?} in\n{u}");
        }
        // Exclusive: nothing else may join the port systemd holds for apilb.
        assert!(!u.contains("ReusePort"), "{u}");
        let p = plan(
            &margs(&[
                "--socket",
                "--server",
                "10.0.0.1:6443",
                "--listen",
                "127.0.0.1:6443",
                "--listen",
                "[::1]:6443",
                "--admin-listen",
                "[::1]:7447",
                "--binary",
                "/opt/apilb",
            ]),
            nowhere(),
        )
        .unwrap();
        let u = socket_unit(&p, "x");
        let listens: Vec<&str> = u
            .lines()
            .filter_map(|l| l.strip_prefix("ListenStream="))
            .collect();
        assert_eq!(listens, ["127.0.0.1:6443", "[::1]:6443", "[::1]:7447"]);
        assert!(u.contains("\nBindIPv6Only=ipv6-only\n"));
        // One of the two units per rendering.
        assert!(crate::cli::Cli::try_parse_from([
            "apilb",
            "manifest",
            "--socket",
            "--systemd",
            "--server",
            "a:1"
        ])
        .is_err());
        // The admin endpoint on a listen address would collide in the socket unit too.
        let e = plan(
            &margs(&[
                "--socket",
                "--server",
                "a:1",
                "--admin-listen",
                "127.0.0.1:6443",
            ]),
            nowhere(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--admin-listen:"), "{e}");
    }

    #[test]
    fn manifest_yaml11_sensitive_strings_are_quoted() {
        let (text, pod) = pod_of(&["--server", "10.0.0.1:6443", "--image", "yes"]);
        assert!(text.contains("image: \"yes\""), "{text}");
        assert_eq!(pod["spec"]["containers"][0]["image"], "yes");
    }

    #[test]
    fn manifest_systemd_unit() {
        let p = plan(
            &margs(&[
                "--systemd",
                "--server",
                "10.0.0.1:6443",
                "--ca-file",
                "/etc/apilb/my ca%.crt",
                "--health-client-cert",
                "/c.pem",
                "--health-client-key",
                "/k.pem",
            ]),
            nowhere(),
        )
        .unwrap();
        let u = systemd_unit(&p, "apilb manifest --systemd");
        for line in [
            "Restart=always\n",
            "RestartSec=1\n",
            "Before=kubelet.service k3s-agent.service\n",
            "WantedBy=multi-user.target kubelet.service k3s-agent.service\n",
            "DynamicUser=yes\n",
            "NoNewPrivileges=yes\n",
            "ProtectSystem=strict\n",
            "ProtectHome=yes\n",
            "CapabilityBoundingSet=\n",
            "LoadCredential=ca.crt:/etc/apilb/my ca%%.crt\n",
            "LoadCredential=health-client.key:/k.pem\n",
            "ExecStart=/usr/local/bin/apilb \\\n    run \\\n",
            "    --ca-file=%d/ca.crt \\\n",
            "    --health-client-key=%d/health-client.key \\\n",
            "    --admin-listen=127.0.0.1:6447\n",
        ] {
            assert!(u.contains(line), "missing {line:?} in\n{u}");
        }
        assert!(!u.contains("/c.pem \\"), "files are passed as credentials");
    }

    #[test]
    fn shell_line_quotes_what_a_shell_would_split_or_glob() {
        let v: Vec<String> = ["apilb", "--listen", "[::1]:6443", "a b", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_line(&v),
            "apilb --listen '[::1]:6443' 'a b' 'it'\\''s'"
        );
    }

    /// manifests/config.yaml loads as `apilb run --config` would; its commented defaults
    /// are valid keys with the real default values; every `apilb run` flag is documented.
    #[test]
    fn manifest_example_config_is_valid_complete_and_true_to_defaults() {
        use clap::CommandFactory;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/config.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let as_given = config::read_file(&path).unwrap();
        let cfg = config::resolve(&RunArgs::default(), as_given).unwrap();
        assert!(!cfg.servers.is_empty());

        let cmd = crate::cli::Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        let keys: Vec<&str> = run
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "config" | "help" | "check"))
            .collect();

        // Uncomment every `# key: value` line: still valid, and equal to the config
        // without them (those comments show the defaults; `#   key: value`, indented, is an
        // example of a non-default value and stays a comment).
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(": ")
                        .is_some_and(|(k, _)| keys.contains(&k)) =>
                {
                    rest.to_string()
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(uncommented, text, "no commented defaults found");
        let full: FileConfig = yaml_serde::from_str(&uncommented)
            .unwrap_or_else(|e| panic!("uncommented example does not load: {e}\n{uncommented}"));
        let mut cfg_full = config::resolve(&RunArgs::default(), full).unwrap();
        // Written out, the default is given: the one field that records it may differ.
        cfg_full.max_connections_given = cfg.max_connections_given;
        assert_eq!(format!("{cfg:?}"), format!("{cfg_full:?}"));

        for long in keys {
            let key = format!("{long}:");
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches(['#', ' ']).starts_with(&key)),
                "manifests/config.yaml does not mention `{long}`"
            );
        }
    }
}
