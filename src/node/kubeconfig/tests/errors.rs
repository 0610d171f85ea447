//! Every error names the file, the field and the fix; odd input never panics.

use super::*;

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
    let cm = include_str!("../../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
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
    let input = include_str!("../../../../tests/data/kubeconfig/multi-cluster.yaml");
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
    let cm = include_str!("../../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
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
