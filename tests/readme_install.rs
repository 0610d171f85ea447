//! The install commands of README.md and docs/node-integration.md work as written: every
//! `apilb manifest` command there renders (exit code 0), a static pod names the image that
//! `scripts/build-image` builds by default, and every `kubeadm join` shown carries the
//! preflight exception that lets apilb.yaml sit in /etc/kubernetes/manifests.

use std::path::PathBuf;
use std::process::Command;

const APILB: &str = env!("CARGO_BIN_EXE_apilb");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shell commands in the ```sh blocks of `text`: continuation lines joined, comments
/// and a trailing redirection dropped.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        match code.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim());
                current.push(' ');
            }
            None => {
                current.push_str(code.trim());
                let cmd = current.trim().to_string();
                if !cmd.is_empty() {
                    out.push(cmd);
                }
                current.clear();
            }
        }
    }
    out
}

fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let rest = &text[start + heading.len()..];
    match rest.find("\n## ") {
        Some(end) => &rest[..end],
        None => rest,
    }
}

fn default_image() -> String {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    format!("localhost/apilb:{version}")
}

/// Runs an `apilb manifest …` command line as a shell would split it (no quoting in
/// these), without its redirection. `--from-kubespray` reads this repository's copy of
/// kubespray's nginx.conf instead of the node's.
fn render(cmd: &str) -> String {
    let line = cmd.split(" > ").next().unwrap();
    let mut words: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|w| {
            w.trim_matches('"')
                .replace("$IMAGE", "localhost/apilb:0.1.0")
                .to_string()
        })
        .collect();
    if words.iter().any(|w| w == "--from-kubespray") && !words.iter().any(|w| w == "--nginx-conf") {
        words.extend([
            "--nginx-conf".to_string(),
            "tests/data/kubespray/nginx-ipv4.conf".to_string(),
        ]);
    }
    let out = Command::new(APILB)
        .args(&words)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` fails:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn readme_install_commands_work_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let install = section(&readme, "## Installing on a node");
    let cmds = commands(install);
    let image = default_image();

    // 1. The image is built under the name the static pods use, and imported where the
    //    kubelet looks.
    assert!(
        cmds.iter()
            .any(|c| c.starts_with("scripts/build-image --oci apilb.tar")),
        "{cmds:#?}"
    );
    assert!(cmds
        .iter()
        .any(|c| c == "ctr -n k8s.io images import apilb.tar"));
    assert!(cmds
        .iter()
        .any(|c| c == "install -m 0755 apilb /usr/local/bin/apilb"));

    // 2. Every apilb manifest renders; static pods name that image; the unit and the
    //    socket come from the same flags.
    let manifests: Vec<&String> = cmds
        .iter()
        .filter(|c| c.starts_with("apilb manifest"))
        .collect();
    assert!(manifests.len() >= 4, "{manifests:#?}");
    let mut flags_of = std::collections::HashMap::new();
    for cmd in &manifests {
        let out = render(cmd);
        if cmd.contains("--systemd") || cmd.contains("--socket") {
            let unit = if cmd.contains("--systemd") {
                "--systemd"
            } else {
                "--socket"
            };
            assert!(out.contains("[Install]"), "{cmd}");
            let target = cmd.split(" > ").nth(1).unwrap_or("");
            assert!(
                target.ends_with(if unit == "--systemd" {
                    "/etc/systemd/system/apilb.service"
                } else {
                    "/etc/systemd/system/apilb.socket"
                }),
                "{cmd}"
            );
            let flags = cmd
                .split(" > ")
                .next()
                .unwrap()
                .replace(unit, "")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            flags_of.insert(unit, flags);
        } else {
            let pod: serde_json::Value = yaml_serde::from_str(&out).unwrap();
            assert_eq!(
                pod["spec"]["containers"][0]["image"],
                image.as_str(),
                "{cmd}"
            );
        }
    }
    assert_eq!(
        flags_of.get("--systemd"),
        flags_of.get("--socket"),
        "the unit and the socket must be rendered from the same flags"
    );
    assert!(cmds
        .iter()
        .any(|c| c.contains("systemctl enable --now apilb.socket apilb.service")));

    // 3. The kubelet is pointed at it after the join.
    let join = cmds.iter().position(|c| c.starts_with("kubeadm join"));
    let post = cmds
        .iter()
        .position(|c| c.starts_with("apilb kubeadm post-join"));
    assert!(
        matches!((join, post), (Some(j), Some(p)) if j < p),
        "{cmds:#?}"
    );
    // 4. Operate.
    assert!(cmds.iter().any(|c| c == "apilb status"));
}

#[test]
fn every_kubeadm_join_shown_ignores_the_manifests_preflight_check() {
    let mut joins = 0;
    for file in ["README.md", "docs/node-integration.md"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for cmd in commands(&text) {
            if cmd.starts_with("kubeadm join") {
                joins += 1;
                assert!(
                    cmd.contains(
                        "--ignore-preflight-errors=DirAvailable--etc-kubernetes-manifests"
                    ),
                    "{file}: {cmd}"
                );
            }
        }
        // The static pods shown name an image (the flag is required).
        for cmd in commands(&text) {
            if cmd.starts_with("apilb manifest")
                && !cmd.contains("--systemd")
                && !cmd.contains("--socket")
            {
                assert!(cmd.contains("--image"), "{file}: {cmd}");
            }
        }
    }
    assert!(joins >= 2, "found {joins} kubeadm join commands");
}

#[test]
fn commands_joins_continuations_and_drops_comments() {
    let text = "x\n```sh\n# a comment\napilb manifest --a 1 \\\n  --b 2 \\\n  > /f   # says\nls\n```\n```yaml\nkey: v\n```\n";
    assert_eq!(commands(text), ["apilb manifest --a 1 --b 2 > /f", "ls"]);
}
