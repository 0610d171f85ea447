//! Node integration, `apilb manifest`: the `manifests/` examples, the static pod checked
//! against the Kubernetes Pod type, the systemd units checked by systemd, the rendered
//! arguments run for real with the probes answering, socket activation, and kubespray's
//! rendered nginx-proxy and HAProxy configs read by `--from-kubespray`.

mod common;

use std::path::PathBuf;
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
    let v = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
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
