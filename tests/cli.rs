//! `apilb run`'s command line: configuration errors name the flag and the fix, and
//! `--version` and `--help` show the defaults.

mod common;

use std::process::Command;

use common::*;

fn run_err(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(APILB).arg("run").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn configuration_errors_name_the_flag_and_the_fix() {
    let pki = Pki::new();
    let ca = pki.ca.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--ca-file", &ca], "--server HOST:PORT"),
        (vec!["--server", "cp1", "--ca-file", &ca], "missing port"),
        (vec!["--server", "10.0.0.1:6443"], "--ca-file"),
        (
            vec![
                "--server",
                "10.0.0.1:6443",
                "--ca-file",
                &ca,
                "--listen",
                "0.0.0.0:6443",
            ],
            "--allow-non-loopback",
        ),
        (
            vec![
                "--server",
                "10.0.0.1:6443",
                "--ca-file",
                "/nonexistent/ca.crt",
                "--admin-listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
            ],
            "--ca-file /nonexistent/ca.crt",
        ),
        (
            vec![
                "--server",
                "10.0.0.1:6443",
                "--ca-file",
                &ca,
                "--health-client-cert",
                &ca,
            ],
            "--health-client-key",
        ),
        (
            vec![
                "--server",
                "10.0.0.1:6443",
                "--ca-file",
                &ca,
                "--connect-timeout",
                "soon",
            ],
            "--connect-timeout",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run_err(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A file with an unknown key names the file and the key.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "servers: [\"10.0.0.1:6443\"]\n").unwrap();
    let (code, err) = run_err(&["--config", f.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("c.yaml") && err.contains("unknown key `servers`; did you mean `server`?"),
        "{err}"
    );
    // A CA file that is not PEM.
    let bad = dir.path().join("bad.crt");
    std::fs::write(&bad, "not a certificate").unwrap();
    let (code, err) = run_err(&[
        "--server",
        "10.0.0.1:6443",
        "--ca-file",
        bad.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--ca-file") && err.contains("bad.crt"),
        "{err}"
    );
}

#[test]
fn version_and_help_show_defaults() {
    let out = Command::new(APILB).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("apilb 0."));
    let out = Command::new(APILB)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for d in [
        "127.0.0.1:6443",
        "127.0.0.1:6447",
        "200ms",
        "500ms",
        "600ms",
        "[default: 30s]",
        "10000",
    ] {
        assert!(help.contains(d), "{d} missing from run --help");
    }
}
