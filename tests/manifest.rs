//! Node integration: `apilb manifest` (the `manifests/` examples, kubespray's rendered
//! nginx-proxy and HAProxy configs) and `apilb kubeadm post-join` against a temporary
//! directory laid out like /etc/kubernetes, a stand-in for `systemctl`, and a real
//! `apilb run` in front of a stand-in apiserver.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn apilb(args: &[&str]) -> Output {
    Command::new(APILB)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The image the README's install section builds and imports.
const IMAGE: &str = "localhost/apilb:0.1.0";

/// The examples in manifests/ and the command that renders each.
const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "manifests/apilb.yaml",
        &[
            "manifest",
            "--image",
            IMAGE,
            "--server",
            "10.0.0.11:6443",
            "--server",
            "10.0.0.12:6443",
            "--server",
            "10.0.0.13:6443",
        ],
    ),
    (
        "manifests/apilb.service",
        &[
            "manifest",
            "--systemd",
            "--server",
            "10.0.0.11:6443",
            "--server",
            "10.0.0.12:6443",
            "--server",
            "10.0.0.13:6443",
        ],
    ),
    (
        "manifests/apilb.socket",
        &[
            "manifest",
            "--socket",
            "--server",
            "10.0.0.11:6443",
            "--server",
            "10.0.0.12:6443",
            "--server",
            "10.0.0.13:6443",
        ],
    ),
];

/// Set APILB_UPDATE_MANIFESTS=1 to write the examples from what apilb renders now.
#[test]
fn manifest_examples_match_what_apilb_manifest_renders() {
    let update = std::env::var_os("APILB_UPDATE_MANIFESTS").is_some_and(|v| v == "1");
    for (file, args) in EXAMPLES {
        let out = apilb(args);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        let path = root().join(file);
        if update {
            std::fs::write(&path, &out.stdout).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text(&out.stdout),
            "{file} differs from `apilb {}`; if the change is meant, run \
             APILB_UPDATE_MANIFESTS=1 cargo test --test node manifest_examples and commit the \
             result. Rendered now:\n{}",
            args.join(" "),
            text(&out.stdout)
        );
    }
    let pod: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(root().join(EXAMPLES[0].0)).unwrap())
            .unwrap();
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["spec"]["hostNetwork"], true);
}

/// The static pod is a valid Pod for the Kubernetes API types: every field name, nesting
/// and value type. The kubelet drops unknown fields of a static pod silently, so a
/// misspelt `readOnlyRootFilesystem` would quietly lose the setting; here it fails: the
/// typed round trip drops what the types do not know, and the comparison sees it.
#[test]
fn manifest_static_pod_round_trips_through_the_kubernetes_pod_type() {
    let renders: &[&[&str]] = &[
        EXAMPLES[0].1,
        &[
            "manifest",
            "--from-kubespray",
            "--nginx-conf",
            "tests/data/kubespray/nginx-dualstack.conf",
            "--admin-listen",
            "[::1]:7447",
            "--health-client-cert",
            "/etc/apilb/client.crt",
            "--health-client-key",
            "/etc/apilb/client.key",
            "--image",
            "registry.example.com/apilb:v0.1.0",
        ],
    ];
    for args in renders {
        let out = apilb(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let as_json: serde_json::Value = yaml_serde::from_str(&text(&out.stdout)).unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(as_json.clone())
            .unwrap_or_else(|e| panic!("not a Pod: {e}\n{}", text(&out.stdout)));
        let back = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            back, as_json,
            "fields the Pod type does not know were dropped"
        );
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    // The check itself catches a misspelt field.
    let bad = text(&apilb(EXAMPLES[0].1).stdout)
        .replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    let as_json: serde_json::Value = yaml_serde::from_str(&bad).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(as_json.clone()).unwrap();
    assert_ne!(serde_json::to_value(&pod).unwrap(), as_json);
}

/// systemd itself reads the unit: no unknown directives, bad values or unsafe settings.
#[test]
fn manifest_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("apilb.service");
    let mut args: Vec<&str> = EXAMPLES[1].1.to_vec();
    args.extend([
        "--binary",
        APILB,
        "--health-client-cert",
        "/etc/apilb/client.pem",
        "--health-client-key",
        "/etc/apilb/client.pem",
    ]);
    let out = apilb(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&unit, &out.stdout).unwrap();
    // The socket unit from the same flags, verified with the service it activates.
    let socket = dir.path().join("apilb.socket");
    let swapped: Vec<&str> = args
        .iter()
        .map(|a| if *a == "--systemd" { "--socket" } else { a })
        .collect();
    let out = apilb(&swapped);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&socket, &out.stdout).unwrap();
    let v = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .arg(&socket)
        .output()
        .unwrap();
    let said = text(&v.stderr);
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("apilb.service") || l.contains("apilb.socket"))
        .collect();
    assert!(
        v.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// Polls an admin path the way the kubelet's httpGet probe does, until `want` or `timeout`.
async fn probe_until(addr: &str, path: &str, want: u16, timeout: std::time::Duration) -> u16 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = Vec::new();
                match s.write_all(req.as_bytes()).await {
                    Ok(()) => {
                        let _ = s.read_to_end(&mut out).await;
                        parse_response(&out).0
                    }
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        };
        if got == want || std::time::Instant::now() >= deadline {
            return got;
        }
        // A probe has no event to wait on: the kubelet polls too.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `apilb run` accepts exactly the arguments the static pod and the unit carry, and the
/// pod's probes get the answers the kubelet needs: /healthz 200, /readyz 200 once a control
/// plane is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_arguments_run_and_the_probes_answer() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let ca = pki.ca.display().to_string();
    for systemd in [false, true] {
        let listen = free_port([127, 0, 0, 1]).to_string();
        let admin = free_port([127, 0, 0, 1]).to_string();
        let server = s.addr.to_string();
        let mut args = vec![
            "manifest",
            "--server",
            &server,
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--ca-file",
            &ca,
        ];
        if systemd {
            args.push("--systemd");
        } else {
            args.extend(["--image", IMAGE]);
        }
        let out = apilb(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rendered = text(&out.stdout);
        let (run_args, probe_host) = if systemd {
            // ExecStart=BINARY \ args…, with %d/NAME standing for the credential copies.
            let exec = rendered
                .split("ExecStart=")
                .nth(1)
                .and_then(|r| r.split("\nExecReload").next())
                .unwrap();
            let words: Vec<String> = exec
                .split_whitespace()
                .filter(|w| *w != "\\")
                .skip(1)
                .map(|w| w.replace("%d/ca.crt", &ca))
                .collect();
            (
                words,
                format!("127.0.0.1:{}", admin.rsplit(':').next().unwrap()),
            )
        } else {
            let pod: yaml_serde::Value = yaml_serde::from_str(&rendered).unwrap();
            let get = &pod["spec"]["containers"][0]["readinessProbe"]["httpGet"];
            let host = format!(
                "{}:{}",
                get["host"].as_str().unwrap(),
                get["port"].as_u64().unwrap()
            );
            (pod_args(&out), host)
        };
        assert_eq!(run_args[0], "run");
        let child = Child(
            Command::new(APILB)
                .args(&run_args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = std::time::Duration::from_secs(15);
        assert_eq!(
            probe_until(&probe_host, "/healthz", 200, t).await,
            200,
            "systemd={systemd}"
        );
        assert_eq!(
            probe_until(&probe_host, "/readyz", 200, t).await,
            200,
            "systemd={systemd}"
        );
        drop(child);
    }
}

/// The socket unit and the service unit rendered from the same flags fit: run the way
/// systemd runs them (systemd's own `systemd-socket-activate` holds every `ListenStream=`
/// and starts the unit's `ExecStart=` on the first connection), apilb serves on every
/// socket it is handed, binds nothing itself, and the probes answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_socket_unit_hands_apilb_exactly_its_listeners() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-socket-activate is not installed");
        return;
    }
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let ca = pki.ca.display().to_string();
    let listen1 = free_port([127, 0, 0, 1]).to_string();
    let listen2 = free_port([127, 0, 0, 1]).to_string();
    let admin = free_port([127, 0, 0, 1]).to_string();
    let server = s.addr.to_string();
    let flags = [
        "--server",
        &server,
        "--listen",
        &listen1,
        "--listen",
        &listen2,
        "--admin-listen",
        &admin,
        "--ca-file",
        &ca,
    ];
    let render = |unit: &str| {
        let mut args = vec!["manifest", unit];
        args.extend(flags);
        let out = apilb(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let socket = render("--socket");
    let streams: Vec<&str> = socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .collect();
    assert_eq!(streams, [&listen1, &listen2, &admin]);
    let unit = render("--systemd");
    let exec = unit
        .split("ExecStart=")
        .nth(1)
        .and_then(|r| r.split("\nExecReload").next())
        .unwrap();
    let run_args: Vec<String> = exec
        .split_whitespace()
        .filter(|w| *w != "\\")
        .skip(1)
        .map(|w| w.replace("%d/ca.crt", &ca))
        .collect();

    let mut cmd = Command::new("systemd-socket-activate");
    for l in &streams {
        cmd.arg("-l").arg(l);
    }
    let mut child = cmd
        .arg(APILB)
        .args(&run_args)
        .args(["--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The probe's connection is what starts apilb, as with systemd.
    let t = std::time::Duration::from_secs(15);
    let readyz = probe_until(&admin, "/readyz", 200, t).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = text(&out.stderr);
    assert_eq!(readyz, 200, "{log}");
    let taken = log
        .lines()
        .filter(|l| l.contains("serving on an inherited socket"))
        .count();
    assert_eq!(taken, streams.len(), "{log}");
    assert!(!log.contains("matches no"), "{log}");
}

fn pod_args(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pod: yaml_serde::Value = yaml_serde::from_str(&text(&out.stdout)).unwrap();
    pod["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn with_prefix(args: &[String], prefix: &str) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix(prefix).map(str::to_string))
        .collect()
}

#[test]
fn manifest_from_kubespray_reads_every_shape_kubespray_renders() {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: &[(&str, &str, Vec<String>, Vec<String>)] = &[
        (
            "--nginx-conf",
            "nginx-ipv4.conf",
            v(&["127.0.0.1:6443"]),
            v(&["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"]),
        ),
        (
            "--nginx-conf",
            "nginx-dualstack.conf",
            v(&["127.0.0.1:6443", "[::1]:6443"]),
            v(&[
                "[fd00:10::11]:6443",
                "[fd00:10::12]:6443",
                "[fd00:10::13]:6443",
            ]),
        ),
        (
            "--nginx-conf",
            "nginx-custom-ports.conf",
            v(&["127.0.0.1:8443"]),
            v(&["cp1.k8s.example.com:16443", "cp2.k8s.example.com:16443"]),
        ),
        (
            "--haproxy-cfg",
            "haproxy-ipv4.cfg",
            v(&["127.0.0.1:6443"]),
            v(&["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"]),
        ),
        (
            "--haproxy-cfg",
            "haproxy-dualstack.cfg",
            v(&["127.0.0.1:6443", "[::1]:6443"]),
            v(&[
                "[fd00:10::11]:6443",
                "[fd00:10::12]:6443",
                "[fd00:10::13]:6443",
            ]),
        ),
        (
            "--haproxy-cfg",
            "haproxy-custom-ports.cfg",
            v(&["127.0.0.1:8443"]),
            v(&["cp1.k8s.example.com:16443", "cp2.k8s.example.com:16443"]),
        ),
    ];
    for (flag, file, listen, servers) in cases {
        let path = format!("tests/data/kubespray/{file}");
        let out = apilb(&[
            "manifest",
            "--from-kubespray",
            flag,
            &path,
            "--image",
            IMAGE,
        ]);
        let args = pod_args(&out);
        assert_eq!(&with_prefix(&args, "--listen="), listen, "{file}");
        assert_eq!(&with_prefix(&args, "--server="), servers, "{file}");
        assert_eq!(
            with_prefix(&args, "--ca-file="),
            ["/etc/kubernetes/ssl/ca.crt"],
            "{file}: kubespray's CA"
        );
        assert!(
            text(&out.stdout).contains("from kubespray's") && text(&out.stdout).contains(&path),
            "{file}: the header names the source"
        );
    }

    // --listen overrides where kubespray listened; the systemd unit works the same way.
    let out = apilb(&[
        "manifest",
        "--from-kubespray",
        "--nginx-conf",
        "tests/data/kubespray/nginx-dualstack.conf",
        "--listen",
        "127.0.0.1:6443",
        "--systemd",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unit = text(&out.stdout);
    assert!(unit.contains("    --listen=127.0.0.1:6443 \\\n    --server=[fd00:10::11]:6443"));
    assert!(!unit.contains("--listen=[::1]"));
}

#[test]
fn manifest_from_kubespray_errors_name_the_file_and_the_fix() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--nginx-conf", "tests/data/kubespray/missing.conf"],
            &["tests/data/kubespray/missing.conf", "cannot read"],
        ),
        (
            &["--nginx-conf", "tests/data/kubespray/nginx-no-servers.conf"],
            &[
                "tests/data/kubespray/nginx-no-servers.conf:14:",
                "lists no servers",
                "--server",
            ],
        ),
        (
            &[
                "--nginx-conf",
                "tests/data/kubespray/nginx-not-kubespray.conf",
            ],
            &["nginx-not-kubespray.conf: no `stream", "--server"],
        ),
        (
            // nginx's `listen 8081;` reads as a HAProxy `listen` section, and its `server {`
            // as a server line without an address.
            &["--haproxy-cfg", "tests/data/kubespray/nginx-ipv4.conf"],
            &["nginx-ipv4.conf:41:", "`server NAME ADDR:PORT"],
        ),
    ];
    for (args, wanted) in cases {
        let mut full = vec!["manifest", "--from-kubespray"];
        full.extend_from_slice(args);
        let out = apilb(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing rendered");
        let err = text(&out.stderr);
        for w in *wanted {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
    }
}

// ---------------------------------------------------------------------------------
// kubeadm post-join
// ---------------------------------------------------------------------------------

/// A directory laid out like /etc/kubernetes after `kubeadm join`, and a stand-in for
/// `systemctl` that records how it was called.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(pki: &Pki, server: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/kubernetes");
        std::fs::create_dir_all(etc.join("manifests")).unwrap();
        std::fs::create_dir_all(etc.join("pki")).unwrap();
        std::fs::copy(&pki.ca, etc.join("pki/ca.crt")).unwrap();
        let conf = format!(
            "apiVersion: v1
clusters:
- cluster:
    certificate-authority: {ca}
    server: {server}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:worker-1
  name: system:node:worker-1@kubernetes
current-context: system:node:worker-1@kubernetes
kind: Config
preferences: {{}}
users:
- name: system:node:worker-1
  user:
    client-certificate: {cert}
    client-key: {key}
",
            ca = etc.join("pki/ca.crt").display(),
            cert = pki.client_cert.display(),
            key = pki.client_key.display(),
        );
        std::fs::write(etc.join("kubelet.conf"), conf).unwrap();
        std::fs::set_permissions(
            etc.join("kubelet.conf"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let systemctl = bin.join("systemctl");
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\necho \"stand-in systemctl: $*\"\n",
                dir.path().join("systemctl.calls").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        Node { dir }
    }

    fn kubelet_conf(&self) -> PathBuf {
        self.dir.path().join("etc/kubernetes/kubelet.conf")
    }

    fn read_conf(&self) -> String {
        std::fs::read_to_string(self.kubelet_conf()).unwrap()
    }

    fn restart_command(&self) -> String {
        format!(
            "{} restart kubelet",
            self.dir.path().join("bin/systemctl").display()
        )
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("systemctl.calls")).unwrap_or_default()
    }

    fn post_join(&self, extra: &[&str]) -> Output {
        let conf = self.kubelet_conf();
        let mut args = vec![
            "kubeadm",
            "post-join",
            "--kubeconfig",
            conf.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        apilb(&args)
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}; this test needs kubectl"))
}

#[test]
fn kubeadm_post_join_waits_rewrites_restarts_and_is_safe_to_run_twice() {
    let pki = Pki::new();
    let s = Standin::start_opts(&pki, free_port([127, 0, 0, 2]), "cp1", true);
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    // Started and used at once: post-join itself must wait for a ready server.
    let lb = Apilb::start(
        &pki,
        &[&s],
        &["--health-client-cert", &cert, "--health-client-key", &key],
    );
    let admin = format!("http://{}", lb.admin);
    let server = format!("https://{}", lb.listen);

    let node = Node::new(&pki, &format!("https://{}", s.addr));
    let original = node.read_conf();
    let restart = node.restart_command();
    let args = [
        "--server",
        &server,
        "--admin-url",
        &admin,
        "--timeout",
        "20s",
        "--restart-command",
        &restart,
    ];
    let out = node.post_join(&args);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}\n{said}", text(&out.stderr));
    assert!(said.contains("has a ready server"), "{said}");
    assert!(said.contains("original kept as"), "{said}");
    assert!(
        said.contains(&format!("-> {server} (tls-server-name 127.0.0.2)")),
        "{said}"
    );
    assert!(said.contains("restarted kubelet"), "{said}");
    assert!(
        said.contains("stand-in systemctl: restart kubelet"),
        "{said}"
    );
    assert!(said.contains("--configmap-key kubeconfig.conf"), "{said}");
    assert_eq!(node.calls(), "restart kubelet\n");

    let rewritten = node.read_conf();
    assert!(
        rewritten.contains(&format!("server: {server}\n")),
        "{rewritten}"
    );
    assert!(rewritten.contains("tls-server-name: 127.0.0.2\n"));
    assert_eq!(
        std::fs::metadata(node.kubelet_conf())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let backup = node
        .dir
        .path()
        .join("etc/kubernetes/kubelet.conf.apilb-backup");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);

    // The kubelet's identity reaches the apiserver through apilb, verification on.
    let out = kubectl(&node.kubelet_conf(), &["get", "--raw", "/whoami"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["server"], "cp1");
    assert_eq!(v["client_cert"], true);

    // Second run: nothing to do, no restart.
    let out = node.post_join(&args);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(said.contains("already rewritten"), "{said}");
    assert!(said.contains("kubelet not restarted"), "{said}");
    assert_eq!(node.calls(), "restart kubelet\n", "no second restart");
    assert_eq!(node.read_conf(), rewritten);

    // A restart command that fails: the file is rewritten, and the error says what is left.
    let node2 = Node::new(&pki, &format!("https://{}", s.addr));
    let out = node2.post_join(&[
        "--server",
        &server,
        "--admin-url",
        &admin,
        "--restart-command",
        "echo no such unit >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("was rewritten")
            && err.contains("no such unit")
            && err.contains("restart kubelet yourself")
            && err.contains("apilb kubeconfig restore"),
        "{err}"
    );
    assert!(node2.read_conf().contains(&format!("server: {server}\n")));
}

#[test]
fn kubeadm_post_join_leaves_everything_alone_when_apilb_is_not_ready_or_input_is_bad() {
    let pki = Pki::new();
    let node = Node::new(&pki, "https://10.0.0.10:6443");
    let original = node.read_conf();
    let restart = node.restart_command();
    let out = node.post_join(&[
        "--admin-url",
        "http://127.0.0.1:1",
        "--timeout",
        "1s",
        "--restart-command",
        &restart,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("post-join") && err.contains("no ready server") && err.contains("not changed"),
        "{err}"
    );
    assert_eq!(node.read_conf(), original);
    assert_eq!(node.calls(), "", "kubelet not restarted");
    assert!(!node
        .dir
        .path()
        .join("etc/kubernetes/kubelet.conf.apilb-backup")
        .exists());

    // No kubelet.conf yet: the join has not happened.
    std::fs::remove_file(node.kubelet_conf()).unwrap();
    let out = node.post_join(&["--restart-command", &restart]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("kubelet.conf") && err.contains("kubeadm join"),
        "{err}"
    );

    // Not a kubeconfig: refused before any wait.
    std::fs::write(node.kubelet_conf(), "kind: Pod\n").unwrap();
    let out = node.post_join(&["--admin-url", "http://127.0.0.1:1", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a kubeconfig"));
    assert_eq!(node.calls(), "");
}

#[test]
fn kubeadm_post_join_dry_run_changes_nothing_and_shows_the_diff() {
    let pki = Pki::new();
    let node = Node::new(&pki, "https://10.0.0.10:6443");
    let original = node.read_conf();
    let restart = node.restart_command();
    // Nothing listens on the admin URL: a dry run does not wait for apilb either.
    let out = node.post_join(&[
        "--dry-run",
        "--admin-url",
        "http://127.0.0.1:1",
        "--timeout",
        "30s",
        "--restart-command",
        &restart,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("-    server: https://10.0.0.10:6443"),
        "{said}"
    );
    assert!(
        said.contains("+    server: https://127.0.0.1:6443"),
        "{said}"
    );
    assert_eq!(node.read_conf(), original);
    assert_eq!(node.calls(), "", "kubelet not restarted");
    assert!(!node
        .dir
        .path()
        .join("etc/kubernetes/kubelet.conf.apilb-backup")
        .exists());
}

/// A missing file is bad input, exit code 2, for every command that reads a kubeconfig.
#[test]
fn a_missing_kubeconfig_is_exit_code_2_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.conf");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["kubeconfig", "rewrite", m],
        vec!["kubeconfig", "restore", m],
        vec!["kubeadm", "post-join", "--kubeconfig", m, "--no-restart"],
    ] {
        let out = apilb(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(m), "{args:?}: {err}");
        assert_eq!(err.matches("No such file").count(), 1, "{args:?}: {err}");
    }
}

/// A read-only tmpfs mounted for the test, unmounted when dropped.
struct ReadOnlyMount(tempfile::TempDir);

impl ReadOnlyMount {
    fn with_file(name: &str, content: &str) -> ReadOnlyMount {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let st = Command::new("mount").args(args).status().unwrap();
            assert!(st.success(), "mount {args:?} failed: this test needs root");
        };
        let d = dir.path().to_str().unwrap().to_string();
        let d = d.as_str();
        run(&["-t", "tmpfs", "-o", "size=1m", "tmpfs", d]);
        let m = ReadOnlyMount(dir);
        std::fs::write(m.0.path().join(name), content).unwrap();
        run(&["-o", "remount,ro", d]);
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A write that fails names the file the user gave (not the hidden temp file), says the
/// error once and what to do, leaves the file as it was, and is exit code 1: the input
/// was fine.
#[test]
fn a_kubeconfig_that_cannot_be_written_names_the_file_and_the_fix() {
    let pki = Pki::new();
    let node = Node::new(&pki, "https://10.0.0.10:6443");
    let original = node.read_conf();
    let ro = ReadOnlyMount::with_file("kubelet.conf", &original);
    let conf = ro.0.path().join("kubelet.conf");
    let c = conf.to_str().unwrap();
    for args in [
        vec!["kubeconfig", "rewrite", c],
        vec!["kubeconfig", "rewrite", "--backup", c],
    ] {
        let out = apilb(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
        // The file itself, or its backup beside it when --backup is written first.
        assert!(
            line.contains(&format!("{c}: cannot"))
                || line.contains(&format!("{c}.apilb-backup: cannot")),
            "{line}"
        );
        assert!(!line.contains("apilb-tmp"), "names the temp file: {line}");
        assert_eq!(line.matches("Read-only file system").count(), 1, "{line}");
        assert!(line.contains("remount it read-write"), "{line}");
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), original);
    }
}

/// `--backup` twice over different contents keeps both originals.
#[test]
fn kubeconfig_backup_never_overwrites_an_older_different_backup() {
    let pki = Pki::new();
    let node = Node::new(&pki, "https://10.0.0.10:6443");
    let conf = node.kubelet_conf();
    let c = conf.to_str().unwrap();
    let first = node.read_conf();
    let out = apilb(&["kubeconfig", "rewrite", "--backup", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The node is joined again elsewhere: a new kubelet.conf, rewritten with --backup again.
    let second = first.replace("10.0.0.10", "10.0.0.20");
    std::fs::write(&conf, &second).unwrap();
    let out = apilb(&["kubeconfig", "rewrite", "--backup", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let backups: Vec<String> = std::fs::read_dir(conf.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".apilb-backup"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(backups.contains(&first) && backups.contains(&second));
}
