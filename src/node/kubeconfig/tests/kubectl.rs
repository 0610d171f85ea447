//! The real kubectl (client-go) reads what the rewrite writes.

use super::*;

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
            let (back, restored) = changed(restore(&written, p, &ClusterSelector::All).unwrap());
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
