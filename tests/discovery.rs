//! Control-plane discovery against stand-in apiservers that serve the `kubernetes`
//! EndpointSlice and Endpoints as the apiserver does: servers added and removed, bad and
//! forbidden answers, the state file across restarts, certificate rotation.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const IPS: [[u8; 4]; 5] = [
    [127, 0, 0, 2],
    [127, 0, 0, 3],
    [127, 0, 0, 4],
    [127, 0, 0, 5],
    [127, 0, 0, 6],
];

struct Cluster {
    pki: Pki,
    port: u16,
    api: tempfile::TempDir,
    state: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn new(client_ca: bool) -> Cluster {
        let pki = Pki::new();
        let port = free_port_on_all(&IPS);
        let api = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let kubeconfig = api.path().join("kubelet.conf");
        // The node's own credentials, as kubeadm writes kubelet.conf (files, not data).
        std::fs::copy(&pki.client_cert, api.path().join("kubelet-client.crt")).unwrap();
        std::fs::copy(&pki.client_key, api.path().join("kubelet-client.key")).unwrap();
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: {ca}
    server: https://127.0.0.2:{port}
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:test-node
  name: default
current-context: default
users:
- name: system:node:test-node
  user:
    client-certificate: kubelet-client.crt
    client-key: kubelet-client.key
",
                ca = pki.ca.display()
            ),
        )
        .unwrap();
        let _ = client_ca;
        Cluster {
            pki,
            port,
            api,
            state,
            kubeconfig,
        }
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from((IPS[i], self.port))
    }

    fn standin(&self, i: usize, client_ca: bool) -> Standin {
        Standin::start_api(
            &self.pki,
            self.addr(i),
            &format!("cp{}", i + 1),
            client_ca,
            Some(self.api.path()),
        )
    }

    /// Publishes the EndpointSlice listing servers `idx`.
    fn publish(&self, idx: &[usize]) {
        let addrs: Vec<String> = idx
            .iter()
            .map(|i| {
                let ip = IPS[*i];
                format!(
                    "{{\"addresses\":[\"{}.{}.{}.{}\"],\"conditions\":{{\"ready\":true}}}}",
                    ip[0], ip[1], ip[2], ip[3]
                )
            })
            .collect();
        self.write(
            "endpointslice.json",
            &format!(
                "{{\"kind\":\"EndpointSlice\",\"apiVersion\":\"discovery.k8s.io/v1\",\
                 \"metadata\":{{\"name\":\"kubernetes\",\"namespace\":\"default\"}},\
                 \"addressType\":\"IPv4\",\"endpoints\":[{}],\
                 \"ports\":[{{\"name\":\"https\",\"port\":{},\"protocol\":\"TCP\"}}]}}",
                addrs.join(","),
                self.port
            ),
        );
    }

    fn write(&self, file: &str, body: &str) {
        // Atomic for the stand-in, which reads it on each request.
        let tmp = self.api.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.api.path().join(file)).unwrap();
    }

    fn apilb(&self, seeds: &[std::net::SocketAddr], extra: &[&str]) -> Apilb {
        let mut args: Vec<String> = Vec::new();
        for s in seeds {
            args.push("--server".into());
            args.push(s.to_string());
        }
        for a in [
            "--ca-file",
            self.pki.ca.to_str().unwrap(),
            "--discovery-kubeconfig",
            self.kubeconfig.to_str().unwrap(),
            "--state-dir",
            self.state.path().to_str().unwrap(),
        ] {
            args.push(a.into());
        }
        if !extra.contains(&"--discovery-interval") {
            args.push("--discovery-interval".into());
            args.push("200ms".into());
        }
        args.extend(extra.iter().map(ToString::to_string));
        Apilb::start_args(args, None)
    }

    fn state_file(&self) -> PathBuf {
        self.state.path().join("servers.json")
    }
}

/// Waits until `/status` shows `want` (in any order) as the list discovery found last;
/// returns that status.
async fn discovered(lb: &Apilb, want: &[std::net::SocketAddr]) -> serde_json::Value {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    lb.status_until(
        &format!("discovered {want:?}"),
        Duration::from_secs(10),
        |st| {
            let mut got: Vec<String> = st["discovery"]["discovered"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            got == want
        },
    )
    .await
}

/// Waits until `/status` shows `want` in discovery's last error; returns that status.
async fn failing_with(lb: &Apilb, want: &str) -> serde_json::Value {
    lb.status_until(
        &format!("discovery failing with {want:?}"),
        Duration::from_secs(10),
        |st| {
            st["discovery"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(want))
        },
    )
    .await
}

const ROUNDS: &str = "apilb_discovery_attempts_total";
const OK: &[&str] = &["result=\"ok\""];

async fn sources(lb: &Apilb) -> Vec<(String, String, bool)> {
    let st = lb.status().await;
    st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["server"].as_str().unwrap().to_string(),
                s["source"].as_str().unwrap().to_string(),
                s["removed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_added_and_removed_control_planes() {
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    let cp2 = c.standin(1, false);
    c.publish(&[0, 1]);
    let lb = c.apilb(&[cp1.addr], &[]);
    let st = discovered(&lb, &[cp1.addr, cp2.addr]).await;
    assert_eq!(st["discovery"]["api"], "EndpointSlice");
    // Added: takes traffic once its checks pass.
    lb.wait_state(&Mark::START, cp2.addr, "ready", Duration::from_secs(10));
    let (ok, failed) = many_whoami(lb.listen, &c.pki, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().any(|n| n == "cp2"), "{ok:?}");
    let st = sources(&lb).await;
    assert!(st.iter().all(|(_, src, _)| src == "discovered"), "{st:?}");
    // Persisted, mode 0600.
    let state = std::fs::read_to_string(c.state_file()).unwrap();
    assert!(state.contains(&cp2.addr.to_string()), "{state}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(c.state_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A server listed but not (yet) answering never gets a client: it starts not ready.
    let mark = lb.mark();
    c.publish(&[0, 1, 2]);
    discovered(&lb, &[cp1.addr, cp2.addr, c.addr(2)]).await;
    let (ok, failed) = many_whoami(lb.listen, &c.pki, 20).await;
    assert!(
        failed.is_empty(),
        "a not-yet-checked server got traffic: {failed:?}"
    );
    assert_eq!(ok.len(), 20);
    lb.wait_state(&mark, c.addr(2), "draining", Duration::from_secs(10));

    // Removed: no new connections, its open stream stays (drain), until the server goes.
    let mut ws = watches_on(lb.listen, &c.pki, &["cp1"]).await;
    c.publish(&[1]);
    discovered(&lb, &[cp2.addr]).await;
    // Draining: still listed, marked removed.
    lb.status_until("cp1 removed and draining", Duration::from_secs(5), |st| {
        st["servers"].as_array().is_some_and(|a| {
            a.iter()
                .any(|v| v["server"] == cp1.addr.to_string().as_str() && v["removed"] == true)
        })
    })
    .await;
    let (ok, failed) = many_whoami(lb.listen, &c.pki, 20).await;
    assert!(failed.is_empty());
    assert!(ok.iter().all(|n| n == "cp2"), "{ok:?}");
    ws[0].still_flowing().await;
    let st = sources(&lb).await;
    assert!(
        st.contains(&(cp1.addr.to_string(), "discovered".into(), true)),
        "{st:?}"
    );
    drop(cp1); // the drained server goes away: its stream ends…
    ws[0].closed_within(Duration::from_secs(10)).await;
    drop(ws); // …the client closes its side too, and the server is retired
    lb.wait_status(c.addr(0), "absent", Duration::from_secs(10))
        .await;
    let (_, metrics) = lb.admin_get("/metrics").await;
    assert!(
        metrics.contains("apilb_discovery_attempts_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("apilb_discovery_last_success_timestamp_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_garbage_and_failed_answers_change_nothing() {
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    let cp2 = c.standin(1, false);
    c.publish(&[0, 1]);
    let lb = c.apilb(&[cp1.addr], &[]);
    discovered(&lb, &[cp1.addr, cp2.addr]).await;
    for (body, want) in [
        ("this is not json", "not an EndpointSlice"),
        (
            "{\"addressType\":\"IPv4\",\"endpoints\":[],\"ports\":[{\"name\":\"https\",\"port\":6443}]}",
            "lists no ready server",
        ),
        ("500", "answered 500"),
    ] {
        c.write("endpointslice.json", body);
        let st = failing_with(&lb, want).await;
        // The list found last and the set balanced over are both kept.
        let mut found: Vec<&str> = st["discovery"]["discovered"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        found.sort_unstable();
        let (a, b) = (cp1.addr.to_string(), cp2.addr.to_string());
        assert_eq!(found, vec![a.as_str(), b.as_str()], "{st:#}");
        assert_eq!(
            sources(&lb).await,
            vec![(a.clone(), "discovered".into(), false), (b, "discovered".into(), false)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_fallback_and_forbidden_logged_once() {
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    let _cp2 = c.standin(1, false);
    // Slices forbidden (the Node authorizer's default): the Endpoints object is used.
    c.write("endpointslice.json", "403");
    c.write(
        "endpoints.json",
        &format!(
            "{{\"kind\":\"Endpoints\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"kubernetes\"}},\
             \"subsets\":[{{\"addresses\":[{{\"ip\":\"127.0.0.2\"}},{{\"ip\":\"127.0.0.3\"}}],\
             \"ports\":[{{\"name\":\"https\",\"port\":{},\"protocol\":\"TCP\"}}]}}]}}",
            c.port
        ),
    );
    let lb = c.apilb(&[cp1.addr], &[]);
    let st = discovered(&lb, &[cp1.addr, _cp2.addr]).await;
    assert_eq!(st["discovery"]["api"], "Endpoints");
    // Both forbidden: one clear line with the fix, the list kept. The log line is the
    // feature under test here (it names the fix); the state is in /status too.
    let mark = lb.mark();
    c.write("endpoints.json", "403");
    failing_with(&lb, "forbidden").await;
    let ev = lb.wait_log_from(&mark, Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("discovery-rbac.yaml"))
    });
    assert_eq!(ev["level"], "WARN");
    // Several more forbidden rounds, still one line.
    let forbidden = || lb.metric("apilb_discovery_attempts_total", &["result=\"forbidden\""]);
    let first = forbidden().await;
    assert!(first >= 1.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while forbidden().await < first + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "discovery rounds stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = lb
        .logs()
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("discovery-rbac.yaml"))
        })
        .count();
    assert_eq!(lines, 1);
    assert_eq!(sources(&lb).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_carries_the_set_across_a_restart_without_seeds() {
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    let cp2 = c.standin(1, false);
    c.publish(&[0, 1]);
    {
        let _lb = c.apilb(&[cp1.addr], &[]);
        // The file itself is the state waited on (replaced atomically: never half written).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(c.state_file()).unwrap_or_default();
            if text.contains(&cp1.addr.to_string()) && text.contains(&cp2.addr.to_string()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the discovered servers were not saved: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Restart with a seed that is gone for good (nothing listens on .6): the state file
    // still knows every control plane.
    let gone = c.addr(4);
    let lb = c.apilb(&[gone], &["--discovery-interval", "1h"]);
    // Loaded at start, before the admin endpoint answers: no wait.
    let st = sources(&lb).await;
    assert!(
        st.contains(&(cp2.addr.to_string(), "state file".into(), false)),
        "{st:?}"
    );
    lb.wait_state(&Mark::START, cp1.addr, "ready", Duration::from_secs(10));
    let (ok, failed) = many_whoami(lb.listen, &c.pki, 10).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok.len(), 10);
    let st = sources(&lb).await;
    assert!(st
        .iter()
        .any(|(s, src, _)| s == &gone.to_string() && src == "seed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_is_a_warning_not_a_crash() {
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    std::fs::write(c.state_file(), "{\"servers\": [\"not an address\"").unwrap();
    let lb = c.apilb(&[cp1.addr], &["--discovery-interval", "1h"]);
    // The warning is the feature under test (the operator learns the file was ignored).
    let ev = lb.wait_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("corrupt state file ignored"))
    });
    assert_eq!(ev["level"], "WARN");
    lb.wait_state(&Mark::START, cp1.addr, "ready", Duration::from_secs(10));
    let st = sources(&lb).await;
    assert_eq!(st, vec![(cp1.addr.to_string(), "seed".to_string(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_client_certificate_is_used_by_the_next_request() {
    let c = Cluster::new(true);
    // These stand-ins require client certificates: apilb's checks present one too.
    let cp1 = c.standin(0, true);
    c.publish(&[0]);
    let cert = c.pki.client_cert.to_str().unwrap().to_string();
    let key = c.pki.client_key.to_str().unwrap().to_string();
    let lb = c.apilb(
        &[cp1.addr],
        &["--health-client-cert", &cert, "--health-client-key", &key],
    );
    discovered(&lb, &[cp1.addr]).await;
    let first = std::fs::read_to_string(c.api.path().join("kubelet-client.crt")).unwrap();
    assert_eq!(
        cp1.last_client_fp(&c.pki, "/-/last-api-client").await,
        cert_fp(&first)
    );
    // kubelet rotates its certificate: new files in place.
    let (new_cert, new_key) = c.pki.issue_client("system:node:test-node");
    write_pair(c.api.path(), &new_cert, &new_key);
    // A round under way may have read the old files; the second one to end after this
    // point began after the rotation.
    let base = lb.metric(ROUNDS, OK).await;
    lb.metric_at_least(ROUNDS, OK, base + 2.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        cp1.last_client_fp(&c.pki, "/-/last-api-client").await,
        cert_fp(&new_cert)
    );
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    for (name, body) in [("kubelet-client.key", key), ("kubelet-client.crt", cert)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[test]
fn discovery_rbac_grants_only_get_on_the_kubernetes_objects() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/discovery-rbac.yaml"),
    )
    .unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    let role = &docs[0];
    assert_eq!(role["kind"], "Role");
    assert_eq!(role["metadata"]["namespace"], "default");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], serde_json::json!(["get"]));
        assert_eq!(rule["resourceNames"], serde_json::json!(["kubernetes"]));
    }
    let binding = &docs[1];
    assert_eq!(binding["kind"], "RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "system:nodes");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
}

/// No log line, at any level (every library's trace included), carries a bearer token or
/// private key material — not on success, not in errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_or_keys() {
    use base64::Engine;
    let c = Cluster::new(false);
    let cp1 = c.standin(0, false);
    c.publish(&[0]);
    let token = "tok3n-8f2a6c0d41e94b7fa3c5d2e1f0a9b8c7";
    let key_pem = std::fs::read_to_string(&c.pki.client_key).unwrap();
    let cert_pem = std::fs::read_to_string(&c.pki.client_cert).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kc = c.api.path().join("token.conf");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\ncontexts:\n- name: t\n  context: {{cluster: k, user: u}}\n\
             clusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.2:{}', certificate-authority: {}}}\n\
             users:\n- name: u\n  user:\n    token: {token}\n    client-certificate-data: {}\n    client-key-data: {}\n",
            c.port,
            c.pki.ca.display(),
            b64(&cert_pem),
            b64(&key_pem),
        ),
    )
    .unwrap();
    let key = c.pki.client_key.to_str().unwrap().to_string();
    let cert = c.pki.client_cert.to_str().unwrap().to_string();
    let lb = Apilb::start_args(
        [
            "--server",
            &cp1.addr.to_string(),
            "--ca-file",
            c.pki.ca.to_str().unwrap(),
            "--health-client-cert",
            &cert,
            "--health-client-key",
            &key,
            "--discovery-kubeconfig",
            kc.to_str().unwrap(),
            "--discovery-interval",
            "100ms",
            "--state-dir",
            c.state.path().to_str().unwrap(),
            "--log-level",
            "trace,apilb=trace",
        ]
        .iter()
        .map(ToString::to_string)
        .collect(),
        None,
    );
    lb.metric_at_least(ROUNDS, OK, 1.0, Duration::from_secs(10))
        .await;
    // The request really carried the token.
    let (_, body) = request(cp1.addr, &c.pki, "GET", "/-/last-api-client", false)
        .await
        .unwrap();
    assert!(body.contains(token), "{body}");
    // And an error path: a broken key in the kubeconfig.
    let broken = std::fs::read_to_string(&kc).unwrap().replace(
        &b64(&key_pem),
        &b64(&key_pem.replace("PRIVATE KEY", "BROKEN KEY")),
    );
    std::fs::write(&kc, broken).unwrap();
    // Logged (the lines searched below) before /status shows it.
    lb.status_until("discovery failing", Duration::from_secs(10), |st| {
        st["discovery"]["last_error"].is_string()
    })
    .await;
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_body.is_empty());
    let logs = lb.logs();
    assert!(
        logs.len() > 50,
        "trace logging produced only {} lines",
        logs.len()
    );
    for line in logs {
        let text = line.to_string();
        assert!(!text.contains(token), "token in a log line: {text}");
        assert!(
            !text.contains(&b64(&key_pem)[..40]),
            "key data in a log line: {text}"
        );
        for k in &key_body {
            assert!(!text.contains(k), "key material in a log line: {text}");
        }
    }
}
