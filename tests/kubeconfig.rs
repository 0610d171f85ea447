//! `apilb kubeconfig rewrite` proved with a real Kubernetes client: kubectl, given a
//! kubeconfig rewritten to point at apilb on 127.0.0.1, reaches a stand-in apiserver whose
//! certificate does NOT hold 127.0.0.1, with certificate verification on and a client
//! certificate presented; then `restore` puts the file back.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn kubeconfig(pki: &Pki, server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: {ca}
    server: {server}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:test-node
  name: system:node:test-node@kubernetes
current-context: system:node:test-node@kubernetes
preferences: {{}}
users:
- name: system:node:test-node
  user:
    client-certificate: {cert}
    client-key: {key}
",
        ca = pki.ca.display(),
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
    )
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}; this test needs kubectl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_the_apiserver_through_apilb_with_verification_on() {
    let pki = Pki::new();
    let s = Standin::start_opts(&pki, free_port([127, 0, 0, 2]), "cp1", true);
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let lb = Apilb::start(
        &pki,
        &[&s],
        &["--health-client-cert", &cert, "--health-client-key", &key],
    );
    lb.wait_all_ready(&[&s]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet.conf");
    let original = kubeconfig(&pki, &format!("https://{}", s.addr));
    std::fs::write(&path, &original).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Pointing kubectl at 127.0.0.1 without the rewrite's tls-server-name fails verification:
    // the certificate does not hold 127.0.0.1.
    let naive = dir.path().join("naive.conf");
    std::fs::write(&naive, kubeconfig(&pki, &format!("https://{}", lb.listen))).unwrap();
    let out = kubectl(&naive, &["get", "--raw", "/whoami"]);
    assert!(!out.status.success(), "verification should have failed");

    let admin = format!("http://{}", lb.admin);
    let server = format!("https://{}", lb.listen);
    let out = Command::new(APILB)
        .args(["kubeconfig", "rewrite"])
        .arg(&path)
        .args([
            "--server",
            &server,
            "--backup",
            "--wait-ready",
            "--admin-url",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rewritten = std::fs::read_to_string(&path).unwrap();
    assert!(rewritten.contains(&format!("server: {server}")));
    assert!(rewritten.contains("tls-server-name: 127.0.0.2"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600,
        "mode kept"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("kubelet.conf.apilb-backup")).unwrap(),
        original
    );

    // The real client, verification on, client certificate presented: through apilb.
    let out = kubectl(&path, &["get", "--raw", "/whoami"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], "cp1");
    assert_eq!(v["client_cert"], true);
    let (_, metrics) = lb.admin_get("/metrics").await;
    assert!(metrics.contains("apilb_connections_accepted_total"));

    // A second rewrite changes nothing and says so.
    let out = Command::new(APILB)
        .args(["kubeconfig", "rewrite"])
        .arg(&path)
        .args(["--server", &server])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unchanged"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), rewritten);

    // Restore gives the original server back, and kubectl goes direct again.
    let out = Command::new(APILB)
        .args(["kubeconfig", "restore"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = std::fs::read_to_string(&path).unwrap();
    assert!(restored.contains(&format!("server: https://{}", s.addr)));
    assert!(!restored.contains("tls-server-name"));
    assert!(!restored.contains("apilb.io"));
    let out = kubectl(&path, &["get", "--raw", "/whoami"]);
    assert!(out.status.success());
}

#[test]
fn wait_ready_times_out_and_leaves_the_file_alone() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet.conf");
    let original = kubeconfig(&pki, "https://10.0.0.10:6443");
    std::fs::write(&path, &original).unwrap();
    let out = Command::new(APILB)
        .args(["kubeconfig", "rewrite"])
        .arg(&path)
        .args([
            "--wait-ready",
            "--admin-url",
            "http://127.0.0.1:1",
            "--timeout",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--wait-ready") && err.contains("not changed"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

#[test]
fn dry_run_prints_a_diff_and_bad_input_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet.conf");
    let original = kubeconfig(&pki, "https://10.0.0.10:6443");
    std::fs::write(&path, &original).unwrap();
    let out = Command::new(APILB)
        .args(["kubeconfig", "rewrite", "--dry-run"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("-    server: https://10.0.0.10:6443"),
        "{diff}"
    );
    assert!(
        diff.contains("+    server: https://127.0.0.1:6443"),
        "{diff}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    std::fs::write(&path, "this: [is not").unwrap();
    let out = Command::new(APILB)
        .args(["kubeconfig", "rewrite"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubelet.conf"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "this: [is not");
}
