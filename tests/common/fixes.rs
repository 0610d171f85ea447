//! Every fix an error suggests is accepted by the command that printed it: the harness of
//! the `suggested_fixes*` tests.
//!
//! For each bad input (a [`Case`]) it runs the command as given (exit code 2, the
//! message), then the same command with each suggested fix applied, and requires it to
//! succeed (exit code 0). It also reads every `--flag` the message mentions: a flag that is
//! neither in the command nor applied by one of the case's fixes fails the test, so a new
//! suggestion cannot go untested. Flags inside a quoted other command
//! (`` `apilb kubeconfig rewrite --configmap-key KEY` ``) belong to that command, which is
//! then run too. The cases live with their tests; this file holds no case.

use std::path::PathBuf;
use std::process::{Command, Output};

pub const APILB: &str = env!("CARGO_BIN_EXE_apilb");

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run(args: &[String]) -> Output {
    Command::new(APILB)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// `args` with `more` appended.
pub fn add(args: &[String], more: &[&str]) -> Vec<String> {
    let mut out = args.to_vec();
    out.extend(v(more));
    out
}

/// `args` with the value after `flag` replaced.
pub fn set(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    let i = out.iter().position(|a| a == flag).unwrap();
    out[i + 1] = value.to_string();
    out
}

/// `args` without the given flags (each with its value if `with_value`).
pub fn drop_flags(args: &[String], flags: &[(&str, bool)]) -> Vec<String> {
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
pub fn mentioned(msg: &str) -> (Vec<String>, Vec<String>) {
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

pub struct Case {
    pub what: &'static str,
    pub args: Vec<String>,
    /// Written before each run (the command may rewrite it).
    pub file: Option<(PathBuf, String)>,
    /// The message must say this.
    pub says: &'static str,
    /// (the flag suggested, the command with it applied).
    pub fixes: Vec<(&'static str, Vec<String>)>,
    /// Flags the message names without suggesting them.
    pub refers: &'static [&'static str],
}

/// Runs every case and each fix it suggests (see the module doc); returns how many fixes ran.
pub fn check(cases: &[Case]) -> usize {
    let mut fixes_run = 0;
    for c in cases {
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
    fixes_run
}
