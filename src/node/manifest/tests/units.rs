//! Mounts by directory, the systemd units, quoting, and the example config.

use super::*;

#[test]
fn manifest_health_client_files_are_mounted_by_directory() {
    let vols = |pod: &Value| -> Vec<(String, String, bool)> {
        let c = &pod["spec"]["containers"][0];
        pod["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .zip(c["volumeMounts"].as_sequence().unwrap())
            .map(|(v, m)| {
                assert_eq!(v["name"], m["name"]);
                assert_eq!(v["hostPath"]["path"], m["mountPath"]);
                (
                    v["hostPath"]["path"].as_str().unwrap().to_string(),
                    v["hostPath"]["type"].as_str().unwrap().to_string(),
                    m["readOnly"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let v = |p: &str, t: &str, ro: bool| (p.to_string(), t.to_string(), ro);
    // kubelet's rotating certificate: its directory, read-only, never the symlink itself.
    let current = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    let (text, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--health-client-cert",
        current,
        "--health-client-key",
        current,
    ]);
    assert_eq!(
        vols(&pod),
        [
            v("/etc/kubernetes/pki/ca.crt", "File", true),
            v("/var/lib/kubelet/pki", "Directory", true)
        ]
    );
    assert!(text.contains(&format!("- --health-client-cert={current}\n")));
    // Two directories; a CA inside a mounted directory needs no mount of its own.
    let (_, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--ca-file",
        "/etc/apilb/ca.crt",
        "--health-client-cert",
        "/etc/apilb/client.crt",
        "--health-client-key",
        "/etc/apilb/private/client.key",
    ]);
    assert_eq!(
        vols(&pod),
        [
            v("/etc/apilb", "Directory", true),
            v("/etc/apilb/private", "Directory", true)
        ]
    );
    // With discovery, the kubelet's directory is mounted once.
    let (_, pod) = pod_of(&[
        "--server",
        "10.0.0.1:6443",
        "--health-client-cert",
        current,
        "--health-client-key",
        current,
        "--discovery-kubeconfig",
        "/etc/kubernetes/kubelet.conf",
    ]);
    assert_eq!(
        vols(&pod),
        [
            v("/etc/kubernetes/pki/ca.crt", "File", true),
            v("/etc/kubernetes/kubelet.conf", "File", true),
            v("/var/lib/kubelet/pki", "Directory", true),
            v("/var/lib/apilb", "DirectoryOrCreate", false)
        ]
    );
    // A directory near the root is refused for the pod (not for the unit's credentials).
    for (cert, dir) in [("/client.pem", "/"), ("/etc/client.pem", "/etc")] {
        let args = [
            "--server",
            "10.0.0.1:6443",
            "--image",
            EXAMPLE_IMAGE,
            "--health-client-cert",
            cert,
            "--health-client-key",
            "/etc/apilb/k.pem",
        ];
        let e = plan(&margs(&args), nowhere()).unwrap_err().to_string();
        assert!(
            e.starts_with("--health-client-cert:")
                && e.contains(&format!("`{dir}` is too much"))
                && e.contains("/etc/apilb/client.pem"),
            "{e}"
        );
        let mut unit = args.to_vec();
        unit.push("--systemd");
        assert!(plan(&margs(&unit), nowhere()).is_ok());
    }
}

#[test]
fn manifest_socket_unit_listens_where_the_unit_does() {
    let p = plan(
        &margs(&["--socket", "--server", "10.0.0.1:6443"]),
        nowhere(),
    )
    .unwrap();
    let u = socket_unit(&p, "apilb manifest --socket");
    let listens: Vec<&str> = u
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .collect();
    assert_eq!(listens, ["127.0.0.1:6443", "127.0.0.1:6447"]);
    assert!(!u.contains("BindIPv6Only"));
    for line in ["Service=apilb.service\n", "WantedBy=sockets.target\n"] {
        assert!(u.contains(line), "{line:?} in\n{u}");
    }
    // Exclusive: nothing else may join the port systemd holds for apilb.
    assert!(!u.contains("ReusePort"), "{u}");
    let p = plan(
        &margs(&[
            "--socket",
            "--server",
            "10.0.0.1:6443",
            "--listen",
            "127.0.0.1:6443",
            "--listen",
            "[::1]:6443",
            "--admin-listen",
            "[::1]:7447",
            "--binary",
            "/opt/apilb",
        ]),
        nowhere(),
    )
    .unwrap();
    let u = socket_unit(&p, "x");
    let listens: Vec<&str> = u
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
        .collect();
    assert_eq!(listens, ["127.0.0.1:6443", "[::1]:6443", "[::1]:7447"]);
    assert!(u.contains("\nBindIPv6Only=ipv6-only\n"));
    // One of the two units per rendering.
    assert!(crate::cli::Cli::try_parse_from([
        "apilb",
        "manifest",
        "--socket",
        "--systemd",
        "--server",
        "a:1"
    ])
    .is_err());
    // The admin endpoint on a listen address would collide in the socket unit too.
    let e = plan(
        &margs(&[
            "--socket",
            "--server",
            "a:1",
            "--admin-listen",
            "127.0.0.1:6443",
        ]),
        nowhere(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("--admin-listen:"), "{e}");
}

#[test]
fn manifest_yaml11_sensitive_strings_are_quoted() {
    let (text, pod) = pod_of(&["--server", "10.0.0.1:6443", "--image", "yes"]);
    assert!(text.contains("image: \"yes\""), "{text}");
    assert_eq!(pod["spec"]["containers"][0]["image"], "yes");
}

#[test]
fn manifest_systemd_unit() {
    let p = plan(
        &margs(&[
            "--systemd",
            "--server",
            "10.0.0.1:6443",
            "--ca-file",
            "/etc/apilb/my ca%.crt",
            "--health-client-cert",
            "/c.pem",
            "--health-client-key",
            "/k.pem",
        ]),
        nowhere(),
    )
    .unwrap();
    let u = systemd_unit(&p, "apilb manifest --systemd");
    for line in [
        "Restart=always\n",
        "RestartSec=1\n",
        "Before=kubelet.service k3s-agent.service\n",
        "WantedBy=multi-user.target kubelet.service k3s-agent.service\n",
        "DynamicUser=yes\n",
        "NoNewPrivileges=yes\n",
        "ProtectSystem=strict\n",
        "ProtectHome=yes\n",
        "CapabilityBoundingSet=\n",
        "LoadCredential=ca.crt:/etc/apilb/my ca%%.crt\n",
        "LoadCredential=health-client.key:/k.pem\n",
        "ExecStart=/usr/local/bin/apilb \\\n    run \\\n",
        "    --ca-file=%d/ca.crt \\\n",
        "    --health-client-key=%d/health-client.key \\\n",
        "    --admin-listen=127.0.0.1:6447\n",
    ] {
        assert!(u.contains(line), "missing {line:?} in\n{u}");
    }
    assert!(!u.contains("/c.pem \\"), "files are passed as credentials");
}

#[test]
fn shell_line_quotes_what_a_shell_would_split_or_glob() {
    let v: Vec<String> = ["apilb", "--listen", "[::1]:6443", "a b", "it's"]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shell_line(&v),
        "apilb --listen '[::1]:6443' 'a b' 'it'\\''s'"
    );
}

/// manifests/config.yaml loads as `apilb run --config` would; its commented defaults
/// are valid keys with the real default values; every `apilb run` flag is documented.
#[test]
fn manifest_example_config_is_valid_complete_and_true_to_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let as_given = config::read_file(&path).unwrap();
    let cfg = config::resolve(&Settings::default(), as_given).unwrap();
    assert!(!cfg.servers.is_empty());

    let keys = config::keys();

    // Uncomment every `# key: value` line: still valid, and equal to the config
    // without them (those comments show the defaults; `#   key: value`, indented, is an
    // example of a non-default value and stays a comment).
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(": ")
                    .is_some_and(|(k, _)| keys.iter().any(|key| key == k)) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(uncommented, text, "no commented defaults found");
    let full: Settings = yaml_serde::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("uncommented example does not load: {e}\n{uncommented}"));
    let mut cfg_full = config::resolve(&Settings::default(), full).unwrap();
    // Written out, the default is given: the one field that records it may differ.
    cfg_full.max_connections_given = cfg.max_connections_given;
    assert_eq!(format!("{cfg:?}"), format!("{cfg_full:?}"));

    for long in keys {
        let key = format!("{long}:");
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches(['#', ' ']).starts_with(&key)),
            "manifests/config.yaml does not mention `{long}`"
        );
    }
}
