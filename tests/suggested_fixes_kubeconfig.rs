//! Every fix an error suggests is accepted by the command that printed it, for
//! `apilb kubeconfig rewrite|restore` and `apilb kubeadm post-join` (the harness is
//! `common::fixes`; manifest and `run --check` are in `suggested_fixes.rs`).

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::fixes::*;

/// Answers every request with 200, like an apilb with a ready server (for post-join).
fn ready_admin() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    url
}

const KUBECONFIG_TWO_CLUSTERS: &str = "apiVersion: v1
kind: Config
clusters:
- name: a
  cluster:
    server: https://10.0.0.11:6443
- name: b
  cluster:
    server: https://10.0.0.12:6443
contexts:
- name: ctx
  context:
    cluster: a
    user: u
users:
- name: u
  user: {}
";

fn kubeconfig_with(extra_top: &str, context_cluster: &str, proxy: bool) -> String {
    let mut s = KUBECONFIG_TWO_CLUSTERS.replace(
        "    cluster: a\n",
        &format!("    cluster: {context_cluster}\n"),
    );
    if proxy {
        s = s.replace(
            "    server: https://10.0.0.11:6443\n",
            "    server: https://10.0.0.11:6443\n    proxy-url: http://proxy.example.com:3128\n",
        );
    }
    s.push_str(extra_top);
    s
}

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-proxy
  namespace: kube-system
data:
  kubeconfig.conf: |
    apiVersion: v1
    kind: Config
    clusters:
    - name: default
      cluster:
        server: https://10.0.0.11:6443
    contexts:
    - name: default
      context:
        cluster: default
        namespace: default
        user: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
";
fn kubeconfig_cases(dir: &Path, admin: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let file = dir.join("config");
    let f = file.display().to_string();
    let k = |a: &[&str]| {
        let mut out = v(&["kubeconfig"]);
        out.extend(v(a));
        out
    };
    // rewrite
    let no_current = kubeconfig_with("", "a", false);
    let bad_current = kubeconfig_with("current-context: nope\n", "a", false);
    let missing_cluster = kubeconfig_with("current-context: ctx\n", "gone", false);
    let proxied = kubeconfig_with("current-context: ctx\n", "a", true);
    let base = k(&["rewrite", &f]);
    for (body, says, fixes) in [
        (
            &no_current,
            "`current-context` is not set",
            vec![
                ("--cluster", add(&base, &["--cluster", "a"])),
                ("--all-clusters", add(&base, &["--all-clusters"])),
            ],
        ),
        (
            &bad_current,
            "no entry of `contexts`",
            vec![("--cluster", add(&base, &["--cluster", "a"]))],
        ),
        (
            &missing_cluster,
            "no entry of `clusters` is named \"gone\"",
            vec![("--cluster", add(&base, &["--cluster", "b"]))],
        ),
        (
            &proxied,
            "proxy-url",
            vec![("--cluster", add(&base, &["--cluster", "b"]))],
        ),
    ] {
        cases.push(Case {
            what: "kubeconfig rewrite",
            says,
            fixes,
            args: base.clone(),
            file: Some((file.clone(), body.clone())),
            refers: &[],
        });
    }
    for cmd in ["rewrite", "restore"] {
        let base = k(&[cmd, &f]);
        cases.push(Case {
            what: "a ConfigMap without --configmap-key",
            says: "pass --configmap-key KEY",
            fixes: vec![(
                "--configmap-key",
                add(&base, &["--configmap-key", "kubeconfig.conf"]),
            )],
            args: base,
            file: Some((file.clone(), CONFIGMAP.to_string())),
            refers: &[],
        });
        let base = k(&[cmd, &f, "--configmap-key", "kubeconfig"]);
        cases.push(Case {
            what: "a ConfigMap key that is not there",
            says: "pass --configmap-key with one of them",
            fixes: vec![(
                "--configmap-key",
                set(&base, "--configmap-key", "kubeconfig.conf"),
            )],
            args: base,
            file: Some((file.clone(), CONFIGMAP.to_string())),
            refers: &[],
        });
        let base = k(&[cmd, &f, "--cluster", "nope"]);
        cases.push(Case {
            what: "--cluster that is not there",
            says: "pass --cluster with one of them",
            fixes: vec![("--cluster", set(&base, "--cluster", "a"))],
            args: base,
            file: Some((
                file.clone(),
                kubeconfig_with("current-context: ctx\n", "a", false),
            )),
            refers: &[],
        });
    }
    let base = k(&["rewrite", &f, "--configmap-key", "kubeconfig.conf"]);
    cases.push(Case {
        what: "--configmap-key on a plain kubeconfig",
        says: "drop --configmap-key",
        fixes: vec![(
            "--configmap-key",
            drop_flags(&base, &[("--configmap-key", true)]),
        )],
        args: base,
        file: Some((
            file.clone(),
            kubeconfig_with("current-context: ctx\n", "a", false),
        )),
        refers: &[],
    });

    // kubeadm post-join, against an admin endpoint that reports a ready server.
    let pj = v(&[
        "kubeadm",
        "post-join",
        "--kubeconfig",
        &f,
        "--admin-url",
        admin,
        "--no-restart",
    ]);
    for (body, says, fixes) in [
        (
            &no_current,
            "`current-context` is not set",
            vec![
                ("--cluster", add(&pj, &["--cluster", "a"])),
                ("--all-clusters", add(&pj, &["--all-clusters"])),
            ],
        ),
        (
            &bad_current,
            "no entry of `contexts`",
            vec![("--cluster", add(&pj, &["--cluster", "a"]))],
        ),
        (
            &proxied,
            "proxy-url",
            vec![("--cluster", add(&pj, &["--cluster", "b"]))],
        ),
        (&CONFIGMAP.to_string(), "`kind` is ConfigMap", vec![]),
    ] {
        cases.push(Case {
            what: "kubeadm post-join",
            says,
            fixes,
            args: pj.clone(),
            file: Some((file.clone(), body.clone())),
            refers: &[],
        });
    }
    let missing = dir.join("no-kubelet.conf").display().to_string();
    let base = set(&pj, "--kubeconfig", &missing);
    cases.push(Case {
        what: "post-join before kubeadm join",
        says: "run `kubeadm join` first",
        fixes: vec![("--kubeconfig", pj.clone())],
        args: base,
        file: Some((
            file.clone(),
            kubeconfig_with("current-context: ctx\n", "a", false),
        )),
        refers: &[],
    });
    cases
}

#[test]
fn every_suggested_fix_is_accepted_by_the_command_that_suggested_it() {
    let dir = tempfile::tempdir().unwrap();
    let admin = ready_admin();
    let cases = kubeconfig_cases(dir.path(), &admin);
    let fixes_run = check(&cases);
    assert!(fixes_run >= 18, "only {fixes_run} fixes were run");
}
