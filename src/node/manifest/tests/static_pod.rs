//! The rendered static pod: fields, mounts, checks of the input.

use super::*;

#[test]
fn manifest_with_discovery_mounts_the_node_credentials_and_state() {
    let (_, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--discovery-kubeconfig",
        "/etc/kubernetes/kubelet.conf",
    ]);
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--discovery-kubeconfig=/etc/kubernetes/kubelet.conf"));
    assert!(args.contains(&"--state-dir=/var/lib/apilb"));
    let vols = spec["volumes"].as_sequence().unwrap();
    let vol = |path: &str| {
        vols.iter()
            .find(|v| v["hostPath"]["path"] == path)
            .unwrap_or_else(|| panic!("no volume for {path}"))
    };
    assert_eq!(
        vol("/etc/kubernetes/kubelet.conf")["hostPath"]["type"],
        "File"
    );
    assert_eq!(vol("/var/lib/kubelet/pki")["hostPath"]["type"], "Directory");
    assert_eq!(
        vol("/var/lib/apilb")["hostPath"]["type"],
        "DirectoryOrCreate"
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let ro = |path: &str| {
        mounts.iter().find(|m| m["mountPath"] == path).unwrap()["readOnly"]
            .as_bool()
            .unwrap()
    };
    assert!(ro("/etc/kubernetes/kubelet.conf"));
    assert!(ro("/var/lib/kubelet/pki"));
    assert!(!ro("/var/lib/apilb"));
    // Root to read the kubelet's 0600 key, but with no capability at all.
    assert_eq!(spec["securityContext"]["runAsUser"], 0);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

    let p = plan(
        &margs(&[
            "--server",
            "10.0.0.1:6443",
            "--systemd",
            "--discovery-kubeconfig",
            "/etc/kubernetes/kubelet.conf",
        ]),
        nowhere(),
    )
    .unwrap();
    let unit = systemd_unit(&p, "apilb manifest --systemd");
    assert!(unit.contains("User=root\n"));
    assert!(!unit.contains("DynamicUser=yes"));
    assert!(unit.contains("CapabilityBoundingSet=\n"));
    assert!(unit.contains("--discovery-kubeconfig=/etc/kubernetes/kubelet.conf"));
    let e = plan(
        &margs(&[
            "--server",
            "10.0.0.1:6443",
            "--discovery-kubeconfig",
            "kubelet.conf",
        ]),
        nowhere(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--discovery-kubeconfig"), "{e}");
}

#[test]
fn manifest_static_pod_has_every_required_field() {
    let (_, pod) = pod_of(&["--server", "10.0.0.1:6443", "--server", "cp2:6443"]);
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "kube-system");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &spec["containers"][0];
    assert_eq!(c["image"], EXAMPLE_IMAGE);
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--listen=127.0.0.1:6443",
            "--server=10.0.0.1:6443",
            "--server=cp2:6443",
            "--ca-file=/etc/kubernetes/pki/ca.crt",
            "--admin-listen=127.0.0.1:6447"
        ]
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "25m");
    assert!(c["resources"]["limits"].is_null());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["host"], "127.0.0.1");
        assert_eq!(c[probe]["httpGet"]["port"], 6447);
        assert_eq!(c[probe]["httpGet"]["path"], path);
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        "/etc/kubernetes/pki/ca.crt"
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert_eq!(
        spec["volumes"][0]["hostPath"]["path"],
        "/etc/kubernetes/pki/ca.crt"
    );
    assert_eq!(spec["volumes"][0]["hostPath"]["type"], "File");
    assert_eq!(spec["volumes"].as_sequence().unwrap().len(), 1);
}

#[test]
fn manifest_client_cert_mounts_and_custom_admin() {
    let (text, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--listen",
        "[::1]:6443",
        "--admin-listen",
        "[::1]:7447",
        "--health-client-cert",
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "--health-client-key",
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "--image",
        "registry.example.com/apilb:v1",
    ]);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["host"], "::1");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 7447);
    assert_eq!(c["image"], "registry.example.com/apilb:v1");
    // cert and key are one file: its directory is one volume, one mount.
    assert_eq!(c["volumeMounts"].as_sequence().unwrap().len(), 2);
    assert_eq!(pod["spec"]["volumes"].as_sequence().unwrap().len(), 2);
    assert_eq!(c["volumeMounts"][1]["mountPath"], "/var/lib/kubelet/pki");
    // The kubelet's key is root-only: uid 0, every capability still dropped.
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 0);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"][0], "ALL",
        "{text}"
    );
    assert!(
        text.contains("- --health-client-key=/var/lib/kubelet/pki/kubelet-client-current.pem\n")
    );
    assert!(text.contains("- --listen=[::1]:6443\n"), "{text}");
}

#[test]
fn manifest_warns_about_key_permissions_and_low_ports() {
    let key = [
        "--server",
        "10.0.0.1:6443",
        "--health-client-cert",
        "/etc/apilb/c.pem",
        "--health-client-key",
        "/etc/apilb/k.pem",
        "--image",
        EXAMPLE_IMAGE,
    ];
    let p = plan(&margs(&key), nowhere()).unwrap();
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("uid 65532") && p.warnings[0].contains("--systemd"));
    let mut systemd = key.to_vec();
    systemd.push("--systemd");
    assert!(plan(&margs(&systemd), nowhere())
        .unwrap()
        .warnings
        .is_empty());
    let p = plan(
        &margs(&[
            "--server",
            "10.0.0.1:6443",
            "--listen",
            "127.0.0.1:443",
            "--image",
            EXAMPLE_IMAGE,
        ]),
        nowhere(),
    )
    .unwrap();
    assert!(
        p.warnings.len() == 1 && p.warnings[0].contains("CAP_NET_BIND_SERVICE"),
        "{:?}",
        p.warnings
    );
}

#[test]
fn manifest_invalid_input_names_the_flag() {
    let e = plan(&margs(&["--server", "cp1"]), nowhere()).unwrap_err();
    assert!(e.to_string().starts_with("--server:"), "{e}");
    let e = plan(&margs(&[]), nowhere()).unwrap_err().to_string();
    assert!(
        e.contains("no servers") && e.contains("--from-kubespray") && !e.contains("config file"),
        "{e}"
    );
    let e = plan(
        &margs(&["--server", "a:1", "--listen", "0.0.0.0:6443"]),
        nowhere(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--allow-non-loopback"), "{e}");
    let e = plan(
        &margs(&["--server", "a:1", "--ca-file", "ca.crt"]),
        nowhere(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--ca-file") && e.to_string().contains("absolute"));
    let e = plan(&margs(&["--server", "a:1", "--image", "a b"]), nowhere()).unwrap_err();
    assert!(e.to_string().contains("--image"), "{e}");
    let e = plan(&margs(&["--from-kubespray"]), nowhere()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/nginx.conf"), "{e}");
    for (bad, flag) in [
        (&["--nginx-conf", "/x"][..], "--nginx-conf"),
        (&["--server", "a:1", "--binary", "/b"], "--binary"),
    ] {
        let e = plan(&margs(bad), nowhere()).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{flag}: only")), "{e}");
    }
    // clap refuses the contradictory ones.
    for bad in [
        &["--from-kubespray", "--server", "a:1"][..],
        &["--nginx-conf", "/x", "--server", "a:1"],
        &["--nginx-conf", "/x", "--haproxy-cfg", "/y"],
        &["--server", "a:1", "--health-client-cert", "/c"],
    ] {
        let mut full = vec!["apilb", "manifest"];
        full.extend_from_slice(bad);
        assert!(crate::cli::Cli::try_parse_from(full).is_err(), "{bad:?}");
    }
}

#[test]
fn manifest_static_pod_requires_a_valid_image() {
    let e = plan(&margs(&["--server", "10.0.0.1:6443"]), nowhere()).unwrap_err();
    assert!(matches!(e, ManifestError::ImageRequired), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("--image is required")
            && msg.contains(&format!("--image {EXAMPLE_IMAGE}"))
            && msg.contains(&format!("--image {LOCAL_IMAGE}"))
            && msg.contains("scripts/build-image")
            && msg.contains("--systemd"),
        "{msg}"
    );
    // The units run the binary: no image needed.
    for unit in ["--systemd", "--socket"] {
        let p = plan(&margs(&["--server", "10.0.0.1:6443", unit]), nowhere()).unwrap();
        assert!(p.image.is_none());
    }
    for good in [
            "apilb:0.1.0",
            "yes",
            "registry.example.com/apilb:0.1.0",
            "localhost:5000/team/apilb",
            "[fd00::1]:5000/apilb:v1",
            "registry.example.com/apilb@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
    for (bad, says) in [
        ("", "not empty"),
        ("a b", "no spaces"),
        ("Apilb:0.1.0", "`Apilb`"),
        ("registry.example.com/Team/apilb", "`Team`"),
        ("apilb:", "tag ``"),
        ("apilb:-x", "tag `-x`"),
        ("a//b", "part ``"),
        ("apilb@sha256:xyz", "not a digest"),
    ] {
        let e = check_image(bad).unwrap_err();
        assert!(e.contains(says), "{bad:?}: {e}");
        let e = plan(&margs(&["--server", "a:1", "--image", bad]), nowhere()).unwrap_err();
        assert!(
            e.to_string().starts_with("--image ") && e.to_string().contains(EXAMPLE_IMAGE),
            "{e}"
        );
    }
}

#[test]
fn manifest_allow_non_loopback_is_passed_on() {
    let (_, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--listen",
        "0.0.0.0:6443",
        "--admin-listen",
        "0.0.0.0:6447",
        "--allow-non-loopback",
    ]);
    let args = &pod["spec"]["containers"][0]["args"];
    assert_eq!(args[1], "--allow-non-loopback");
    assert_eq!(args[2], "--listen=0.0.0.0:6443");
    let p = plan(
        &margs(&[
            "--systemd",
            "--server",
            "10.0.0.1:6443",
            "--listen",
            "0.0.0.0:6443",
            "--allow-non-loopback",
        ]),
        nowhere(),
    )
    .unwrap();
    assert!(systemd_unit(&p, "x").contains("    run \\\n    --allow-non-loopback \\\n"));
    // Without it, the default stays loopback only.
    let (_, pod) = pod_of(&["--server", "10.0.0.1:6443"]);
    assert!(!format!("{pod:?}").contains("allow-non-loopback"));
}
