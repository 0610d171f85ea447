//! Node integration, `apilb kubeadm post-join` and the kubeconfig file handling it shares
//! with `apilb kubeconfig rewrite`: against a temporary directory laid out like
//! /etc/kubernetes, a stand-in for `systemctl`, and a real `apilb run` in front of a
//! stand-in apiserver; missing, unwritable and backed-up kubeconfigs.

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

/// Nobody reads what post-join prints (`| head -1` that has exited, a closed stdout and
/// stderr): it still does every step — waits, backs up, rewrites, restarts — and exits 0.
/// `println!` would panic at its first line and abort the command between two steps.
#[test]
fn kubeadm_post_join_finishes_its_steps_when_nobody_reads_its_output() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let lb = Apilb::start(&pki, &[&s], &[]);
    let node = Node::new(&pki, &format!("https://{}", s.addr));
    let server = format!("https://{}", lb.listen);
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    drop(read); // every write to it fails (EPIPE)
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let status = Command::new(APILB)
        .args(["kubeadm", "post-join", "--kubeconfig"])
        .arg(node.kubelet_conf())
        .args([
            "--server",
            &server,
            "--admin-url",
            &format!("http://{}", lb.admin),
        ])
        .args([
            "--timeout",
            "20s",
            "--restart-command",
            &node.restart_command(),
        ])
        .stdout(std::process::Stdio::from(write))
        .stderr(full)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(node.read_conf().contains(&format!("server: {server}\n")));
    assert_eq!(node.calls(), "restart kubelet\n");
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
