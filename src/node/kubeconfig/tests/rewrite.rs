//! Goldens and the behaviour of rewrite and restore.

use super::*;

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
    let input = include_str!("../../../../tests/data/kubeconfig/kubeadm-kubelet.yaml");
    let (once, _) = changed(rewrite(input, "f", &RewriteOptions::default()).unwrap());
    let (back, _) = changed(restore(&once, "f", &ClusterSelector::All).unwrap());
    let again = emit_yaml(&yaml(input));
    assert_eq!(back, again);
}

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
    let input = include_str!("../../../../tests/data/kubeconfig/multi-cluster.yaml");
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
    let input = include_str!("../../../../tests/data/kubeconfig/kubeadm-kube-proxy-configmap.yaml");
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
