//! Unit tests of the kubeconfig rewrite: goldens and behaviour (`rewrite`), messages
//! (`errors`), YAML 1.1 output (`yaml`), and the real kubectl reading the results
//! (`kubectl`). Shared helpers live here.

mod errors;
mod kubectl;
mod rewrite;
mod yaml;

pub(super) use super::*;
pub(super) use crate::util::diff::unified_diff;
pub(super) use crate::util::yaml::{emit_yaml, scalar_string};
pub(super) use std::fs;
pub(super) use std::path::{Path, PathBuf};
pub(super) use yaml_serde::{Mapping, Value};

// Each golden: (name, input, expected output, how it is rewritten).
pub(super) enum Mode {
    Plain(RewriteOptions),
    ConfigMap(&'static str, RewriteOptions),
}

pub(super) fn golden_cases() -> Vec<(&'static str, &'static str, &'static str, Mode)> {
    let def = RewriteOptions::default;
    let all = || RewriteOptions {
        clusters: ClusterSelector::All,
        ..RewriteOptions::default()
    };
    vec![
        (
            "kubeadm-kubelet",
            include_str!("../../../../tests/data/kubeconfig/kubeadm-kubelet.yaml"),
            include_str!("../../../../tests/data/kubeconfig/kubeadm-kubelet.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "kubeadm-kubelet-dns",
            include_str!("../../../../tests/data/kubeconfig/kubeadm-kubelet-dns.yaml"),
            include_str!("../../../../tests/data/kubeconfig/kubeadm-kubelet-dns.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "kubespray-kubelet",
            include_str!("../../../../tests/data/kubeconfig/kubespray-kubelet.yaml"),
            include_str!("../../../../tests/data/kubeconfig/kubespray-kubelet.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "kubespray-kube-proxy",
            include_str!("../../../../tests/data/kubeconfig/kubespray-kube-proxy.yaml"),
            include_str!("../../../../tests/data/kubeconfig/kubespray-kube-proxy.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "k3s-agent-kubelet",
            include_str!("../../../../tests/data/kubeconfig/k3s-agent-kubelet.yaml"),
            include_str!("../../../../tests/data/kubeconfig/k3s-agent-kubelet.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "ipv6-kubelet",
            include_str!("../../../../tests/data/kubeconfig/ipv6-kubelet.yaml"),
            include_str!("../../../../tests/data/kubeconfig/ipv6-kubelet.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "multi-cluster",
            include_str!("../../../../tests/data/kubeconfig/multi-cluster.yaml"),
            include_str!("../../../../tests/data/kubeconfig/multi-cluster.rewritten.yaml"),
            Mode::Plain(def()),
        ),
        (
            "multi-cluster.all-clusters",
            include_str!("../../../../tests/data/kubeconfig/multi-cluster.yaml"),
            include_str!(
                "../../../../tests/data/kubeconfig/multi-cluster.all-clusters.rewritten.yaml"
            ),
            Mode::Plain(all()),
        ),
        (
            "kubeadm-kube-proxy-configmap",
            include_str!("../../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml"),
            include_str!(
                "../../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.rewritten.yaml"
            ),
            Mode::ConfigMap(DEFAULT_CONFIGMAP_KEY, def()),
        ),
    ]
}

pub(super) fn run_rewrite(input: &str, mode: &Mode) -> Result<Outcome, KubeconfigError> {
    match mode {
        Mode::Plain(opts) => rewrite(input, "in.yaml", opts),
        Mode::ConfigMap(key, opts) => rewrite_configmap(input, "in.yaml", key, opts),
    }
}

pub(super) fn run_restore(input: &str, mode: &Mode) -> Result<Outcome, KubeconfigError> {
    match mode {
        Mode::Plain(_) => restore(input, "in.yaml", &ClusterSelector::All),
        Mode::ConfigMap(key, _) => restore_configmap(input, "in.yaml", key, &ClusterSelector::All),
    }
}

pub(super) fn changed(outcome: Outcome) -> (String, Vec<Change>) {
    match outcome {
        Outcome::Changed { text, changes } => (text, changes),
        Outcome::Unchanged { reason } => panic!("expected a change, got: {reason}"),
    }
}

pub(super) fn unchanged(outcome: Outcome) -> String {
    match outcome {
        Outcome::Unchanged { reason } => reason,
        Outcome::Changed { text, .. } => panic!("expected no change, got:\n{text}"),
    }
}

pub(super) fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

pub(super) fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kubeconfig")
}

pub(super) const SIMPLE: &str = "\
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

pub(super) fn cluster0(text: &str) -> Value {
    yaml(text)["clusters"][0]["cluster"].clone()
}
