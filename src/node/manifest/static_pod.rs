//! The static pod for `/etc/kubernetes/manifests`: what the kubelet runs apilb as.
//! Owns the pod's shape (mounts, probes, security context); must not decide the plan.

use yaml_serde::{Mapping, Value};

use super::*;

pub(super) fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

pub(super) fn n(v: u64) -> Value {
    Value::Number(v.into())
}

pub(super) fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

pub(super) fn probe(plan: &Plan, path: &str, period: u64, failures: u64) -> Value {
    map(vec![
        (
            "httpGet",
            map(vec![
                ("host", s(plan.admin_listen.ip().to_string())),
                ("port", n(plan.admin_listen.port().into())),
                ("path", s(path)),
            ]),
        ),
        ("periodSeconds", n(period)),
        ("timeoutSeconds", n(2)),
        ("failureThreshold", n(failures)),
    ])
}

/// The static pod, as YAML. `command` is the command line shown in the header.
pub fn static_pod(plan: &Plan, command: &str) -> String {
    // (name, host path, hostPath type, read-only). The health client certificate and key
    // by their directory: the kubelet rotates kubelet-client-current.pem by re-pointing the
    // symlink, and a file mount keeps showing the file it pointed at when the pod started.
    let mut dirs: Vec<(&str, &Path, &str, bool)> = Vec::new();
    if let Some((cert, key)) = &plan.health_client {
        for (name, p) in [("health-client", cert), ("health-client-key", key)] {
            if let Some(dir) = p.parent() {
                dirs.push((name, dir, "Directory", true));
            }
        }
    }
    if let Some(d) = &plan.discovery {
        dirs.push(("kubelet-pki", &d.cert_dir, "Directory", true));
        dirs.push(("state", &d.state_dir, "DirectoryOrCreate", false));
    }
    let mut files: Vec<(&str, &Path, &str, bool)> = vec![("ca", &plan.ca_file, "File", true)];
    if let Some(d) = &plan.discovery {
        files.push(("discovery-kubeconfig", &d.kubeconfig, "File", true));
    }
    // Files first (the CA leads, as it always has), then directories; one mount per path,
    // and none for a file a mounted directory already holds.
    let mut host: Vec<(&str, &Path, &str, bool)> = Vec::new();
    for f in files {
        if !dirs.iter().any(|d| f.1.starts_with(d.1)) {
            host.push(f);
        }
    }
    for d in dirs {
        match host.iter_mut().find(|h| h.1 == d.1) {
            // One mount, writable if either needs it (the state directory).
            Some(h) => h.3 &= d.3,
            None => host.push(d),
        }
    }
    let mounts = host
        .iter()
        .map(|(name, p, _, ro)| {
            map(vec![
                ("name", s(*name)),
                ("mountPath", s(path_str(p))),
                ("readOnly", Value::Bool(*ro)),
            ])
        })
        .collect();
    let volumes = host
        .iter()
        .map(|(name, p, kind, _)| {
            map(vec![
                ("name", s(*name)),
                (
                    "hostPath",
                    map(vec![("path", s(path_str(p))), ("type", s(*kind))]),
                ),
            ])
        })
        .collect();
    // Discovery, and health checks presenting the kubelet's own client certificate, read
    // the kubelet's root-only key: uid 0, but still without any capability.
    let uid: u64 = if plan.reads_kubelet_key() {
        0
    } else {
        UID.into()
    };
    let args = run_args(plan, |_, p| path_str(p))
        .into_iter()
        .map(s)
        .collect();
    let container = map(vec![
        ("name", s("apilb")),
        // plan() refuses a static pod without an image.
        ("image", s(plan.image.clone().unwrap_or_default())),
        ("imagePullPolicy", s("IfNotPresent")),
        ("args", Value::Sequence(args)),
        (
            "resources",
            map(vec![(
                "requests",
                map(vec![("cpu", s("25m")), ("memory", s("32Mi"))]),
            )]),
        ),
        ("livenessProbe", probe(plan, "/healthz", 10, 3)),
        ("readinessProbe", probe(plan, "/readyz", 5, 2)),
        (
            "securityContext",
            map(vec![
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                (
                    "capabilities",
                    map(vec![("drop", Value::Sequence(vec![s("ALL")]))]),
                ),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ]);
    let pod = map(vec![
        ("apiVersion", s("v1")),
        ("kind", s("Pod")),
        (
            "metadata",
            map(vec![
                ("name", s("apilb")),
                ("namespace", s("kube-system")),
                (
                    "labels",
                    map(vec![
                        ("app.kubernetes.io/name", s("apilb")),
                        ("k8s-app", s("apilb")),
                    ]),
                ),
            ]),
        ),
        (
            "spec",
            map(vec![
                ("hostNetwork", Value::Bool(true)),
                ("dnsPolicy", s("Default")),
                ("priorityClassName", s("system-node-critical")),
                ("terminationGracePeriodSeconds", n(15)),
                (
                    "securityContext",
                    map(vec![
                        ("runAsNonRoot", Value::Bool(uid != 0)),
                        ("runAsUser", n(uid)),
                        ("runAsGroup", n(uid)),
                        ("seccompProfile", map(vec![("type", s("RuntimeDefault"))])),
                    ]),
                ),
                ("containers", Value::Sequence(vec![container])),
                ("volumes", Value::Sequence(volumes)),
            ]),
        ),
    ]);
    let mut out = header(
        plan,
        &[
            "apilb: node-local load balancer for the Kubernetes API server, as a static pod.",
            "Install: save as /etc/kubernetes/manifests/apilb.yaml on the node (the kubelet starts it",
            "without the API). Check: apilb status --admin-url http://ADMIN",
        ],
        command,
    )
    .replace("ADMIN", &plan.admin_listen.to_string());
    out.push_str(&crate::util::yaml::emit_yaml(&pod));
    out
}
