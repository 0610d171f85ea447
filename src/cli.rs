//! Command-line definitions of every subcommand (clap derive). Parsing only: values are
//! validated in `config` (and acted on in `main`).
//!
//! `apilb run`'s flags are `config::Settings`, which is also the config file's shape: they
//! are defined there, once.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_duration, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "apilb",
    version,
    about = "Node-local load balancer for the Kubernetes API server",
    long_about = "apilb listens on 127.0.0.1:6443 on every node and forwards TCP (TLS stays end \
                  to end) to the healthy control planes, with passive and active failover."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<Settings>),
    /// Show the state of a running apilb (from its admin endpoint). Exit 0 when a server is ready.
    Status(StatusArgs),
    /// Point kubeconfigs at the local apilb, or put them back.
    #[command(subcommand)]
    Kubeconfig(KubeconfigCommand),
    /// Print a static pod (or, with --systemd, a systemd unit) that runs apilb on a node.
    Manifest(Box<ManifestArgs>),
    /// Steps around `kubeadm join` on a worker.
    #[command(subcommand)]
    Kubeadm(KubeadmCommand),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin endpoint of the running apilb.
    #[arg(long, default_value = "http://127.0.0.1:6447", value_name = "URL")]
    pub admin_url: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KubeconfigCommand {
    /// Point a kubeconfig's server at the local apilb, keeping certificate verification.
    Rewrite(KubeconfigRewriteArgs),
    /// Put back the server a previous rewrite replaced.
    Restore(KubeconfigRestoreArgs),
}

#[derive(Debug, Args)]
pub struct KubeconfigRewriteArgs {
    /// The kubeconfig to rewrite, or `-` for standard input to standard output.
    pub file: PathBuf,
    /// The new server URL.
    #[arg(long, default_value = "https://127.0.0.1:6443", value_name = "URL")]
    pub server: String,
    /// Rewrite this cluster instead of the current context's.
    #[arg(long, value_name = "NAME", conflicts_with = "all_clusters")]
    pub cluster: Option<String>,
    /// Rewrite every cluster.
    #[arg(long)]
    pub all_clusters: bool,
    /// Name to verify the apiserver certificate against. [default: the original server's host]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Print a diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep a copy of the original next to it (FILE.apilb-backup).
    #[arg(long)]
    pub backup: bool,
    /// The input is a ConfigMap; rewrite the kubeconfig under this data key.
    #[arg(long, value_name = "KEY")]
    pub configmap_key: Option<String>,
    /// First wait until the local apilb reports a ready server.
    #[arg(long)]
    pub wait_ready: bool,
    /// Admin endpoint used by --wait-ready.
    #[arg(long, default_value = "http://127.0.0.1:6447", value_name = "URL")]
    pub admin_url: String,
    /// How long --wait-ready waits.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct KubeconfigRestoreArgs {
    /// The kubeconfig to restore, or `-` for standard input to standard output.
    pub file: PathBuf,
    /// Restore this cluster only.
    #[arg(long, value_name = "NAME", conflicts_with = "all_clusters")]
    pub cluster: Option<String>,
    /// Restore every cluster (the default restores every rewritten cluster).
    #[arg(long)]
    pub all_clusters: bool,
    /// Print a diff and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The input is a ConfigMap; restore the kubeconfig under this data key.
    #[arg(long, value_name = "KEY")]
    pub configmap_key: Option<String>,
}

#[derive(Debug, Args, Default)]
#[command(after_help = "Examples:\n  \
    apilb manifest --image registry.example.com/apilb:0.1.0 \\\n      \
    --server 10.0.0.11:6443 --server 10.0.0.12:6443 --server 10.0.0.13:6443 \\\n      \
    > /etc/kubernetes/manifests/apilb.yaml\n  \
    apilb manifest --from-kubespray --image registry.example.com/apilb:0.1.0 > /tmp/apilb.yaml\n  \
    apilb manifest --systemd --server 10.0.0.11:6443 --ca-file /etc/apilb/ca.crt \\\n      \
    > /etc/systemd/system/apilb.service\n  \
    apilb manifest --socket --server 10.0.0.11:6443 --ca-file /etc/apilb/ca.crt \\\n      \
    > /etc/systemd/system/apilb.socket")]
pub struct ManifestArgs {
    /// A control plane, HOST:PORT (repeatable).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "from_kubespray")]
    pub server: Vec<String>,

    /// Address apilb listens on (repeatable). [default: 127.0.0.1:6443, or where kubespray's
    /// proxy listened with --from-kubespray]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,

    /// Allow --listen / --admin-listen on a non-loopback address (passed on to `apilb run`).
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// Container image of the static pod, as the node's container runtime knows it: pushed
    /// to a registry, or imported on the node (scripts/build-image builds it). Required for
    /// the static pod; not used by --systemd / --socket.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// CA bundle that signs the apiserver certificates, on the node. [default:
    /// /etc/kubernetes/pki/ca.crt, or /etc/kubernetes/ssl/ca.crt with --from-kubespray]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate for health checks, on the node (when anonymous /readyz is off).
    #[arg(long, value_name = "FILE", requires = "health_client_key")]
    pub health_client_cert: Option<PathBuf>,

    /// Key of --health-client-cert, on the node.
    #[arg(long, value_name = "FILE", requires = "health_client_cert")]
    pub health_client_key: Option<PathBuf>,

    /// Admin endpoint; the probes use it. [default: 127.0.0.1:6447]
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<String>,

    /// Take the control planes and listen addresses from kubespray's nginx-proxy
    /// (/etc/nginx/nginx.conf) or HAProxy (/etc/haproxy/haproxy.cfg) on this node.
    #[arg(long)]
    pub from_kubespray: bool,

    /// kubespray's nginx config to read. [default: /etc/nginx/nginx.conf]
    #[arg(long, value_name = "PATH", conflicts_with_all = ["haproxy_cfg", "server"])]
    pub nginx_conf: Option<PathBuf>,

    /// kubespray's HAProxy config to read. [default: /etc/haproxy/haproxy.cfg]
    #[arg(long, value_name = "PATH", conflicts_with = "server")]
    pub haproxy_cfg: Option<PathBuf>,

    /// Print a systemd unit (apilb.service) instead of a static pod.
    #[arg(long)]
    pub systemd: bool,

    /// Print the systemd socket unit (apilb.socket) that goes with the --systemd unit rendered
    /// from the same flags: one ListenStream= per --listen address and one for --admin-listen.
    #[arg(long, conflicts_with = "systemd")]
    pub socket: bool,

    /// Path of the apilb binary in the systemd unit (--systemd; accepted with --socket, which
    /// does not use it, so both files render from the same flags). [default:
    /// /usr/local/bin/apilb]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,

    /// Follow the cluster's own list of control planes, reading it with this kubeconfig on
    /// the node (e.g. /etc/kubernetes/kubelet.conf). apilb then runs as root without any
    /// capability, to read the kubelet's root-only key.
    #[arg(long, value_name = "FILE")]
    pub discovery_kubeconfig: Option<PathBuf>,

    /// Directory holding the client certificate that kubeconfig names, mounted read-only
    /// (kubelet rotates it in place). [default: /var/lib/kubelet/pki]
    #[arg(long, value_name = "DIR", requires = "discovery_kubeconfig")]
    pub discovery_cert_dir: Option<PathBuf>,

    /// Where the last discovered set is kept on the node. [default: /var/lib/apilb]
    #[arg(long, value_name = "DIR", requires = "discovery_kubeconfig")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KubeadmCommand {
    /// After `kubeadm join`: wait for the local apilb, point kubelet.conf at it, restart
    /// kubelet. Safe to run again.
    PostJoin(PostJoinArgs),
}

#[derive(Debug, Args)]
pub struct PostJoinArgs {
    /// kubelet's kubeconfig, written by `kubeadm join`.
    #[arg(
        long,
        default_value = "/etc/kubernetes/kubelet.conf",
        value_name = "FILE"
    )]
    pub kubeconfig: PathBuf,
    /// The local apilb's URL, written into kubelet.conf.
    #[arg(long, default_value = "https://127.0.0.1:6443", value_name = "URL")]
    pub server: String,
    /// Name to verify the apiserver certificate against. [default: the original server's host]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Rewrite this cluster instead of the current context's.
    #[arg(long, value_name = "NAME", conflicts_with = "all_clusters")]
    pub cluster: Option<String>,
    /// Rewrite every cluster.
    #[arg(long)]
    pub all_clusters: bool,
    /// Admin endpoint of the local apilb, asked whether a server is ready.
    #[arg(long, default_value = "http://127.0.0.1:6447", value_name = "URL")]
    pub admin_url: String,
    /// How long to wait for the local apilb to have a ready server.
    #[arg(long, default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Command that restarts kubelet, run with `sh -c`.
    #[arg(
        long,
        default_value = "systemctl restart kubelet",
        value_name = "COMMAND",
        conflicts_with = "no_restart"
    )]
    pub restart_command: String,
    /// Do not restart kubelet (it reads kubelet.conf only when it starts).
    #[arg(long)]
    pub no_restart: bool,
    /// Print the change to kubelet.conf as a diff; wait for nothing, write nothing, restart
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}
