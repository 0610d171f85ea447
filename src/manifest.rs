//! `apilb manifest`: renders what runs apilb on a node — a static pod for
//! `/etc/kubernetes/manifests/apilb.yaml`, or (`--systemd`) a systemd unit,
//! `apilb.service`.
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
//!   stops the pod with a clear event instead of mounting an empty directory).
//! * The systemd unit: `Restart=always` with no start limit, ordered before kubelet and
//!   k3s-agent and wanted by them, `DynamicUser` with an empty capability set and the
//!   usual sandboxing. The certificate files are passed with `LoadCredential=`, so they
//!   are read by systemd (as root) whatever their permissions, and apilb reads copies in
//!   `%d` (systemd ≥ 248).
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

/// The image a static pod runs unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("apilb:", env!("CARGO_PKG_VERSION"));
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
    #[error("--image {image:?}: {reason}; write e.g. registry.example.com/apilb:v0.1.0")]
    Image { image: String, reason: String },
}

/// What gets rendered: validated, ready to write.
#[derive(Debug, Clone)]
pub struct Plan {
    pub listen: Vec<SocketAddr>,
    pub servers: Vec<ServerSpec>,
    pub ca_file: PathBuf,
    pub health_client: Option<(PathBuf, PathBuf)>,
    pub admin_listen: SocketAddr,
    pub image: String,
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
    for (given, flag, needs) in [
        (a.nginx_conf.is_some(), "--nginx-conf", "--from-kubespray"),
        (a.haproxy_cfg.is_some(), "--haproxy-cfg", "--from-kubespray"),
        (a.binary.is_some(), "--binary", "--systemd"),
    ] {
        if given
            && !(if needs == "--systemd" {
                a.systemd
            } else {
                a.from_kubespray
            })
        {
            return Err(ConfigError {
                origin: flag.to_string(),
                message: format!("only means something with {needs}; add {needs}"),
            }
            .into());
        }
    }
    let source = if a.from_kubespray {
        Some(kubespray::discover(
            a.nginx_conf.as_deref(),
            a.haproxy_cfg.as_deref(),
            kubespray_defaults.0,
            kubespray_defaults.1,
        )?)
    } else {
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
    let image = a.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err(ManifestError::Image {
            image,
            reason: "an image reference has no spaces and is not empty".into(),
        });
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

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `apilb run` arguments. `files` maps the CA / client cert / key to the paths apilb sees.
fn run_args<'p>(
    plan: &'p Plan,
    mut files: impl FnMut(&'static str, &'p Path) -> String,
) -> Vec<String> {
    let mut args = vec!["run".to_string()];
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
    // One volume per distinct file (cert and key may be one PEM file).
    let mut files: Vec<(&str, &Path)> = vec![("ca", plan.ca_file.as_path())];
    if let Some((cert, key)) = &plan.health_client {
        for (name, p) in [
            ("health-client-cert", cert.as_path()),
            ("health-client-key", key.as_path()),
        ] {
            if !files.iter().any(|(_, q)| *q == p) {
                files.push((name, p));
            }
        }
    }
    // (name, host path, hostPath type, read-only)
    let mut host: Vec<(&str, &Path, &str, bool)> =
        files.iter().map(|(n, p)| (*n, *p, "File", true)).collect();
    if let Some(d) = &plan.discovery {
        host.push(("discovery-kubeconfig", &d.kubeconfig, "File", true));
        host.push(("kubelet-pki", &d.cert_dir, "Directory", true));
        host.push(("state", &d.state_dir, "DirectoryOrCreate", false));
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
        ("image", s(&plan.image)),
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
        let p = plan(&margs(v), nowhere()).unwrap();
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
        assert_eq!(c["image"], DEFAULT_IMAGE);
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
        // cert and key are one file: one volume, one mount.
        assert_eq!(c["volumeMounts"].as_sequence().unwrap().len(), 2);
        assert_eq!(pod["spec"]["volumes"].as_sequence().unwrap().len(), 2);
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
            "/c.pem",
            "--health-client-key",
            "/k.pem",
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
            &margs(&["--server", "10.0.0.1:6443", "--listen", "127.0.0.1:443"]),
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
        let e = plan(&margs(&[]), nowhere()).unwrap_err();
        assert!(e.to_string().contains("no servers"), "{e}");
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
            .filter(|l| !matches!(*l, "config" | "help"))
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
        let cfg_full = config::resolve(&RunArgs::default(), full).unwrap();
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
