//! Every fix an error suggests is accepted by the command that printed it, for
//! `apilb manifest` and `apilb run --check` (the harness is `common::fixes`; the
//! kubeconfig commands are in `suggested_fixes_kubeconfig.rs`).

mod common;

use std::path::Path;

use common::fixes::*;

const IMAGE: &str = "registry.example.com/apilb:0.1.0";

fn manifest_cases(dir: &Path) -> Vec<Case> {
    let write = |name: &str, body: &str| -> String {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let upstream = "upstream kube_apiserver { server 10.0.0.11:6443; }";
    let any_addr = write(
        "nginx-any.conf",
        &format!("stream {{ {upstream} server {{ listen 6443; proxy_pass kube_apiserver; }} }}"),
    );
    let no_listen = write(
        "nginx-no-listen.conf",
        &format!("stream {{ {upstream} server {{ proxy_pass kube_apiserver; }} }}"),
    );
    let unix_listen = write(
        "nginx-unix.conf",
        &format!(
            "stream {{ {upstream} server {{ listen unix:/run/x.sock; proxy_pass kube_apiserver; }} }}"
        ),
    );
    let haproxy_no_front = write(
        "haproxy-no-frontend.cfg",
        "backend kube_api_backend\n  server cp1 10.0.0.11:6443 check\n",
    );
    let haproxy_other = write(
        "haproxy-other.cfg",
        "global\n  log stdout format raw local0\n",
    );
    let nginx_ok = "tests/data/kubespray/nginx-ipv4.conf";
    let haproxy_ok = "tests/data/kubespray/haproxy-ipv4.cfg";

    let m = |a: &[&str]| {
        let mut out = v(&["manifest"]);
        out.extend(v(a));
        out
    };
    let mut cases = Vec::new();

    let base = m(&["--server", "10.0.0.11:6443"]);
    cases.push(Case {
        what: "static pod without --image",
        says: "--image is required",
        fixes: vec![
            ("--image", add(&base, &["--image", IMAGE])),
            ("--image", add(&base, &["--image", "localhost/apilb:0.1.0"])),
            ("--systemd", add(&base, &["--systemd"])),
        ],
        args: base,
        file: None,
        refers: &[],
    });
    for flag in ["--listen", "--admin-listen"] {
        let base = m(&[
            "--image",
            IMAGE,
            "--server",
            "10.0.0.11:6443",
            flag,
            "0.0.0.0:6443",
        ]);
        cases.push(Case {
            what: "non-loopback address",
            says: "not a loopback address",
            fixes: vec![(
                "--allow-non-loopback",
                add(&base, &["--allow-non-loopback"]),
            )],
            args: base,
            file: None,
            refers: &[],
        });
    }
    let base = m(&["--image", IMAGE]);
    cases.push(Case {
        what: "no servers",
        says: "no servers",
        fixes: vec![
            ("--server", add(&base, &["--server", "10.0.0.11:6443"])),
            (
                "--from-kubespray",
                add(&base, &["--from-kubespray", "--nginx-conf", nginx_ok]),
            ),
        ],
        args: base,
        file: None,
        refers: &[],
    });
    for (flag, file) in [("--nginx-conf", nginx_ok), ("--haproxy-cfg", haproxy_ok)] {
        let base = m(&["--image", IMAGE, flag, file]);
        cases.push(Case {
            what: "kubespray file without --from-kubespray",
            says: "only means something with --from-kubespray",
            fixes: vec![("--from-kubespray", add(&base, &["--from-kubespray"]))],
            args: base,
            file: None,
            refers: &[],
        });
    }
    let base = m(&["--server", "10.0.0.11:6443", "--binary", "/opt/apilb"]);
    cases.push(Case {
        what: "--binary without --systemd",
        says: "only means something with --systemd",
        fixes: vec![("--systemd", add(&base, &["--systemd"]))],
        args: base,
        file: None,
        refers: &[],
    });
    let base = m(&[
        "--image",
        IMAGE,
        "--from-kubespray",
        "--nginx-conf",
        "tests/data/kubespray/missing.conf",
    ]);
    cases.push(Case {
        what: "kubespray file missing",
        says: "cannot read",
        fixes: vec![("--nginx-conf", set(&base, "--nginx-conf", nginx_ok))],
        args: base,
        file: None,
        refers: &[],
    });
    let kubespray_to_server = |base: &[String], flag: &str| {
        add(
            &drop_flags(base, &[("--from-kubespray", false), (flag, true)]),
            &["--server", "10.0.0.11:6443"],
        )
    };
    for (file, says) in [
        (
            "tests/data/kubespray/nginx-no-servers.conf",
            "lists no servers",
        ),
        (
            "tests/data/kubespray/nginx-not-kubespray.conf",
            "no `stream",
        ),
    ] {
        let base = m(&["--image", IMAGE, "--from-kubespray", "--nginx-conf", file]);
        let mut fixes = vec![("--server", kubespray_to_server(&base, "--nginx-conf"))];
        if says.contains("stream") {
            fixes.push(("--nginx-conf", set(&base, "--nginx-conf", nginx_ok)));
        }
        cases.push(Case {
            what: "kubespray file without servers",
            says,
            fixes,
            args: base,
            file: None,
            refers: &[],
        });
    }
    let base = m(&[
        "--image",
        IMAGE,
        "--from-kubespray",
        "--haproxy-cfg",
        &haproxy_other,
    ]);
    cases.push(Case {
        what: "not kubespray's HAProxy file",
        says: "no backend with `server` lines",
        fixes: vec![
            ("--haproxy-cfg", set(&base, "--haproxy-cfg", haproxy_ok)),
            ("--server", kubespray_to_server(&base, "--haproxy-cfg")),
        ],
        args: base,
        file: None,
        refers: &[],
    });
    // Listen-address problems: the fix is --listen, which makes them no problem.
    for (flag, file, says) in [
        ("--nginx-conf", &any_addr, "not a loopback address"),
        ("--nginx-conf", &no_listen, "no `listen`"),
        ("--nginx-conf", &unix_listen, "unix socket"),
        ("--haproxy-cfg", &haproxy_no_front, "no frontend"),
    ] {
        let base = m(&["--image", IMAGE, "--from-kubespray", flag, file]);
        cases.push(Case {
            what: "kubespray's listen address",
            says,
            fixes: vec![("--listen", add(&base, &["--listen", "127.0.0.1:6443"]))],
            args: base,
            file: None,
            refers: &[],
        });
    }
    // Errors that suggest no flag: only the flags given (or referred to) may be named.
    for (args, says, refers) in [
        (
            m(&[
                "--image",
                IMAGE,
                "--server",
                "10.0.0.11:6443",
                "--admin-listen",
                "127.0.0.1:6443",
            ]),
            "also a --listen address",
            &["--listen"][..],
        ),
        (
            m(&["--image", "Apilb", "--server", "10.0.0.11:6443"]),
            "lowercase",
            &[],
        ),
        (
            m(&[
                "--image",
                IMAGE,
                "--server",
                "10.0.0.11:6443",
                "--ca-file",
                "ca.crt",
            ]),
            "relative path",
            &[],
        ),
        (
            m(&[
                "--image",
                IMAGE,
                "--server",
                "10.0.0.11:6443",
                "--health-client-cert",
                "/client.pem",
                "--health-client-key",
                "/client.pem",
            ]),
            "too much of the host",
            &[],
        ),
    ] {
        cases.push(Case {
            what: "no flag to suggest",
            says,
            fixes: vec![],
            args,
            file: None,
            refers,
        });
    }
    cases
}

/// `apilb run --check`: what a start refuses, checked without starting.
fn run_cases(dir: &Path) -> Vec<Case> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()]).unwrap();
    let ca = dir.join("run-ca.crt");
    std::fs::write(&ca, cert.pem()).unwrap();
    let key = dir.join("run-client.key");
    std::fs::write(&key, signing_key.serialize_pem()).unwrap();
    let (ca, key) = (ca.display().to_string(), key.display().to_string());
    let missing = dir.join("missing-ca.crt").display().to_string();
    let r = |a: &[&str]| {
        let mut out = v(&["run", "--check"]);
        out.extend(v(a));
        out
    };
    let mut cases = Vec::new();

    let base = r(&["--server", "10.0.0.11:6443"]);
    cases.push(Case {
        what: "run without a CA",
        says: "give the cluster CA",
        fixes: vec![
            ("--ca-file", add(&base, &["--ca-file", &ca])),
            (
                "--health-insecure-skip-verify",
                add(&base, &["--health-insecure-skip-verify"]),
            ),
        ],
        args: base,
        file: None,
        refers: &[],
    });

    let base = r(&["--server", "10.0.0.11:6443", "--ca-file", &missing]);
    cases.push(Case {
        what: "run with a CA file that is not there",
        says: "cannot read certificates",
        fixes: vec![
            ("--ca-file", set(&base, "--ca-file", &ca)),
            (
                "--health-insecure-skip-verify",
                add(&base, &["--health-insecure-skip-verify"]),
            ),
        ],
        args: base,
        file: None,
        refers: &[],
    });

    let base = r(&["--ca-file", &ca]);
    cases.push(Case {
        what: "run without servers",
        says: "no servers",
        fixes: vec![("--server", add(&base, &["--server", "10.0.0.11:6443"]))],
        args: base,
        file: None,
        refers: &[],
    });

    let base = r(&[
        "--server",
        "10.0.0.11:6443",
        "--ca-file",
        &ca,
        "--listen",
        "0.0.0.0:6443",
    ]);
    cases.push(Case {
        what: "run on a non-loopback address",
        says: "not a loopback address",
        fixes: vec![(
            "--allow-non-loopback",
            add(&base, &["--allow-non-loopback"]),
        )],
        args: base,
        file: None,
        refers: &[],
    });

    let base = r(&[
        "--server",
        "10.0.0.11:6443",
        "--ca-file",
        &ca,
        "--health-client-cert",
        &ca,
    ]);
    cases.push(Case {
        what: "run with a client certificate and no key",
        says: "needs both",
        fixes: vec![(
            "--health-client-key",
            add(&base, &["--health-client-key", &key]),
        )],
        args: base,
        file: None,
        refers: &[],
    });
    cases
}

#[test]
fn every_suggested_fix_is_accepted_by_the_command_that_suggested_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = manifest_cases(dir.path());
    cases.extend(run_cases(dir.path()));
    let fixes_run = check(&cases);
    assert!(fixes_run >= 27, "only {fixes_run} fixes were run");
}

/// The scanner itself: what counts as a suggested flag.
#[test]
fn mentioned_reads_flags_and_quoted_commands() {
    let (flags, commands) = mentioned(
        "--listen: `0.0.0.0:6443` is not a loopback address; pass --allow-non-loopback. For a \
         ConfigMap run `apilb kubeconfig rewrite --configmap-key KEY`; e.g. --image x:1 \
         after `scripts/build-image --oci apilb.tar`",
    );
    assert_eq!(flags, ["--allow-non-loopback", "--image", "--listen"]);
    assert_eq!(commands, ["apilb kubeconfig rewrite --configmap-key KEY"]);
}
