//! Every fix an error suggests is accepted by the command that printed it.
//!
//! For each bad input of `apilb manifest`, `apilb kubeconfig rewrite|restore`, `apilb
//! kubeadm post-join` and `apilb run --check` that gets a message naming a flag to add, this runs the command as
//! given (exit code 2, the message), then the same command with each suggested fix
//! applied, and requires it to succeed (exit code 0). It also reads every `--flag` the
//! message mentions: a flag that is neither in the command nor applied by one of the case's
//! fixes fails the test, so a new suggestion cannot go untested. Flags inside a quoted
//! other command (`` `apilb kubeconfig rewrite --configmap-key KEY` ``) belong to that
//! command, which is then run too.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const APILB: &str = env!("CARGO_BIN_EXE_apilb");
const IMAGE: &str = "registry.example.com/apilb:0.1.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[String]) -> Output {
    Command::new(APILB)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// `args` with `more` appended.
fn add(args: &[String], more: &[&str]) -> Vec<String> {
    let mut out = args.to_vec();
    out.extend(v(more));
    out
}

/// `args` with the value after `flag` replaced.
fn set(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    let i = out.iter().position(|a| a == flag).unwrap();
    out[i + 1] = value.to_string();
    out
}

/// `args` without the given flags (each with its value if `with_value`).
fn drop_flags(args: &[String], flags: &[(&str, bool)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if let Some((_, with_value)) = flags.iter().find(|(f, _)| f == a) {
            skip = *with_value;
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// The `--flags` a message mentions, and the other apilb commands it quotes in backticks.
fn mentioned(msg: &str) -> (Vec<String>, Vec<String>) {
    let mut flags = Vec::new();
    let mut commands = Vec::new();
    // Odd-numbered backtick spans are quoted text.
    for (i, part) in msg.split('`').enumerate() {
        if i % 2 == 1 && part.starts_with("apilb ") {
            commands.push(part.to_string());
            continue;
        }
        // Another program's command line (`kubeadm join`): its flags are not ours.
        let program = part.split_whitespace().next().unwrap_or("");
        if i % 2 == 1
            && [
                "kubeadm",
                "kubectl",
                "ctr",
                "crictl",
                "systemctl",
                "scripts/build-image",
            ]
            .contains(&program)
        {
            continue;
        }
        let mut rest = part;
        while let Some(at) = rest.find("--") {
            let after = &rest[at + 2..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                flags.push(format!("--{}", name.trim_end_matches('-')));
            }
            rest = &after[name.len()..];
        }
    }
    flags.sort();
    flags.dedup();
    (flags, commands)
}

struct Case {
    what: &'static str,
    args: Vec<String>,
    /// Written before each run (the command may rewrite it).
    file: Option<(PathBuf, String)>,
    /// The message must say this.
    says: &'static str,
    /// (the flag suggested, the command with it applied).
    fixes: Vec<(&'static str, Vec<String>)>,
    /// Flags the message names without suggesting them.
    refers: &'static [&'static str],
}

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
    let mut cases = manifest_cases(dir.path());
    cases.extend(kubeconfig_cases(dir.path(), &admin));
    cases.extend(run_cases(dir.path()));
    let mut fixes_run = 0;
    for c in &cases {
        let lay = || {
            if let Some((p, body)) = &c.file {
                std::fs::write(p, body).unwrap();
            }
        };
        lay();
        let out = run(&c.args);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: `apilb {}` should fail as bad input:\n{err}",
            c.what,
            c.args.join(" ")
        );
        assert!(
            err.contains(c.says),
            "{}: {:?} not in\n{err}",
            c.what,
            c.says
        );
        if let Some((p, body)) = &c.file {
            assert_eq!(
                &std::fs::read_to_string(p).unwrap(),
                body,
                "{}: file touched",
                c.what
            );
        }

        let (flags, commands) = mentioned(&err);
        for flag in &flags {
            assert!(
                c.args.contains(flag)
                    || c.refers.contains(&flag.as_str())
                    || c.fixes.iter().any(|(f, _)| f == flag),
                "{}: the message names {flag}, which `apilb {}` was not given and no fix \
                 here applies; add the fix to this test (and make sure the command accepts \
                 it):\n{err}",
                c.what,
                c.args.join(" ")
            );
        }
        for (flag, fixed) in &c.fixes {
            assert!(
                flags.iter().any(|f| f == flag),
                "{}: the fix {flag} is not what the message suggests:\n{err}",
                c.what
            );
            lay();
            let out = run(fixed);
            assert!(
                out.status.success(),
                "{}: the suggested fix {flag} is refused: `apilb {}`:\n{}",
                c.what,
                fixed.join(" "),
                text(&out.stderr)
            );
            fixes_run += 1;
        }
        // A quoted other command is a fix too: it must run on the same input.
        for cmd in commands {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            assert_eq!(words[0], "apilb", "{}: {cmd}", c.what);
            let fixed: Vec<String> = words[1..]
                .iter()
                .map(|w| if *w == "KEY" { "kubeconfig.conf" } else { w })
                .map(str::to_string)
                .chain(c.file.iter().map(|(p, _)| p.display().to_string()))
                .collect();
            lay();
            let out = run(&fixed);
            assert!(
                out.status.success(),
                "{}: the suggested `{cmd}` fails: {}",
                c.what,
                text(&out.stderr)
            );
            fixes_run += 1;
        }
    }
    assert!(fixes_run >= 37, "only {fixes_run} fixes were run");
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
