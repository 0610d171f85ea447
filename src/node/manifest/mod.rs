//! `apilb manifest`: renders what runs apilb on a node — a static pod for
//! `/etc/kubernetes/manifests/apilb.yaml`, or (`--systemd`) a systemd unit,
//! `apilb.service`, and (`--socket`) the socket unit that goes with it, `apilb.socket`.
//!
//! # What this module owns
//!
//! * Turning the manifest flags (or, with `--from-kubespray`, what [`crate::node::kubespray`]
//!   read from the node's nginx-proxy or HAProxy config) into `apilb run` arguments. The
//!   values are validated by [`crate::config::resolve`], the same code `apilb run` uses, so
//!   a rendered manifest never holds arguments `apilb run` would refuse.
//! * The static pod: `kube-system`, `hostNetwork`, `system-node-critical`, `dnsPolicy:
//!   Default` (apilb must not depend on cluster DNS, which needs the apiserver path it
//!   provides), small requests and no limits (a memory limit on the node's only path to the
//!   apiserver turns a spike into an outage), liveness on admin `/healthz` (the process
//!   answers; never the servers' state, so an outage of every control plane does not
//!   restart apilb in a loop) and readiness on admin `/readyz`, both on the admin address.
//!   Least privilege: uid/gid 65532, non-root (uid 0 only to read a root-only key of the
//!   kubelet's: discovery's, or a health client key under its certificate directory),
//!   read-only root filesystem, every capability dropped, no privilege escalation, seccomp
//!   `RuntimeDefault`. Port 6443 is above 1024,
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

use crate::cli::ManifestArgs;
use crate::config::{self, ConfigError, ServerSpec, Settings};
use crate::node::kubespray::{self, KubesprayError, LocalProxy};

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

impl Plan {
    /// apilb reads a root-only key of the kubelet's: discovery's, or the health checks'
    /// client key under the kubelet's certificate directory.
    pub fn reads_kubelet_key(&self) -> bool {
        self.discovery.is_some()
            || self
                .health_client
                .as_ref()
                .is_some_and(|(_, key)| key.starts_with(KUBELET_PKI))
    }
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
    // An empty list is a flag not given, as on `apilb run`'s command line.
    let given = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let run = Settings {
        listen: given(listen),
        allow_non_loopback: a.allow_non_loopback,
        server: given(servers),
        ca_file: Some(ca_file.clone()),
        health_client_cert: a.health_client_cert.clone(),
        health_client_key: a.health_client_key.clone(),
        admin_listen: a.admin_listen.clone(),
        discovery_kubeconfig: a.discovery_kubeconfig.clone(),
        state_dir: a.state_dir.clone(),
        ..Settings::default()
    };
    let cfg = config::resolve(&run, Settings::default())?;
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
    let kubelet_key = cfg
        .health_client_key
        .as_ref()
        .is_some_and(|k| k.starts_with(KUBELET_PKI));
    if kubelet_key && !a.systemd && discovery.is_none() {
        warnings.push(format!(
            "--health-client-key: the kubelet's own key is root-only, so apilb runs as uid 0 \
             with every capability dropped (its owner reads a root-owned 0600 file without \
             CAP_DAC_OVERRIDE); {KUBELET_PKI} is mounted read-only, and the kubelet's \
             rotations are followed"
        ));
    } else if cfg.health_client_key.is_some() && !a.systemd && discovery.is_none() {
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

mod static_pod;
mod systemd;
pub use static_pod::static_pod;
pub use systemd::{socket_unit, systemd_unit};

#[cfg(test)]
mod tests;
