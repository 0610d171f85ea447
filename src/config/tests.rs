use super::*;
use clap::Parser;

fn args(v: &[&str]) -> Settings {
    let mut full = vec!["apilb", "run"];
    full.extend_from_slice(v);
    match crate::cli::Cli::try_parse_from(full) {
        Ok(crate::cli::Cli {
            command: crate::cli::Command::Run(a),
            ..
        }) => *a,
        Ok(_) => panic!("not run"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn server_spec_forms() {
    assert_eq!(
        ServerSpec::parse("10.0.0.1:6443").unwrap(),
        ServerSpec {
            host: "10.0.0.1".into(),
            port: 6443
        }
    );
    assert_eq!(ServerSpec::parse("[fd00::1]:6443").unwrap().host, "fd00::1");
    assert_eq!(
        ServerSpec::parse("https://cp.example.com:6443/")
            .unwrap()
            .to_string(),
        "cp.example.com:6443"
    );
    // `[[[]:6443` and `[cp1]:6443` were accepted and did not print back (state_file fuzz).
    for bad in [
        "",
        "cp1",
        "fd00::1:6443",
        "cp:0",
        "cp:x",
        "[::1",
        ":6443",
        "[[[]:6443",
        "[cp1]:6443",
        "cp\"1:6443",
        "cp1%eth0:6443",
    ] {
        assert!(ServerSpec::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn defaults_apply() {
    let c = load(&args(&["--server", "127.0.0.2:6443", "--ca-file", "/x"])).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:6443".parse().unwrap()]);
    assert_eq!(c.admin_listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    assert_eq!(c.connect_race_delay, defaults::CONNECT_RACE_DELAY);
    assert_eq!(c.health.fall, defaults::FALL);
    assert_eq!(c.workers, defaults::WORKERS);
    assert_eq!(c.half_closed_timeout, Duration::from_secs(90));
    assert_eq!(c.idle_timeout, Duration::ZERO);
}

#[test]
fn errors_name_the_flag() {
    let e = load(&args(&["--ca-file", "/x"])).unwrap_err();
    assert_eq!(e.origin, "--server");
    assert!(e.message.contains("--server HOST:PORT"));
    let e = load(&args(&["--server", "cp1"])).unwrap_err();
    assert_eq!(e.origin, "--server");
    let e = load(&args(&["--server", "a:1"])).unwrap_err();
    assert_eq!(e.origin, "--ca-file");
    let e = load(&args(&[
        "--server",
        "a:1",
        "--health-insecure-skip-verify",
        "--listen",
        "0.0.0.0:6443",
    ]))
    .unwrap_err();
    assert_eq!(e.origin, "--listen");
    assert!(e.message.contains("--allow-non-loopback"));
    for n in ["0", "65"] {
        let e = load(&args(&[
            "--server",
            "a:1",
            "--ca-file",
            "/x",
            "--workers",
            n,
        ]))
        .unwrap_err();
        assert_eq!(e.origin, "--workers");
        assert!(e.message.contains("1 to 64"), "{}", e.message);
    }
    let c = load(&args(&[
        "--server",
        "a:1",
        "--ca-file",
        "/x",
        "--workers",
        "1",
    ]))
    .unwrap();
    assert_eq!(c.workers, 1);
}

#[test]
fn file_keys_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        "server: [\"127.0.0.2:6443\", \"127.0.0.3:6443\"]\nca-file: /ca\nconnect-race-delay: 50ms\nhealth-fall: 3\n",
    )
    .unwrap();
    let ps = p.to_str().unwrap();
    let c = load(&args(&["--config", ps, "--health-fall", "4"])).unwrap();
    assert_eq!(c.servers.len(), 2);
    assert_eq!(c.connect_race_delay, Duration::from_millis(50));
    assert_eq!(c.health.fall, 4);
    assert!(!c.servers_from_flags);

    std::fs::write(&p, "servers: [a:1]\n").unwrap();
    let e = load(&args(&["--config", ps])).unwrap_err();
    assert_eq!(e.origin, ps);
    assert!(
        e.message
            .contains("unknown key `servers`; did you mean `server`?"),
        "{}",
        e.message
    );

    std::fs::write(&p, "server: [a:1]\nca-file: /ca\ndrain-grace: soon\n").unwrap();
    let e = load(&args(&["--config", ps])).unwrap_err();
    assert!(e.origin.contains("drain-grace"), "{}", e.origin);
    assert!(e.message.contains("not a duration"));

    // Past the cap: once accepted, and a panic (Instant overflow) at the next connection.
    std::fs::write(
        &p,
        "server: [a:1]\nca-file: /ca\nconnect-race-delay: 300000000000y\n",
    )
    .unwrap();
    let e = load(&args(&["--config", ps])).unwrap_err();
    assert!(e.origin.contains("connect-race-delay"), "{}", e.origin);
    assert!(e.message.contains("too long"), "{}", e.message);
}

#[test]
fn durations_past_a_century_are_refused() {
    let base = ["--server", "a:1", "--ca-file", "/x"];
    for flag in [
        "--connect-timeout",
        "--connect-race-delay",
        "--first-byte-timeout",
        "--health-ping-interval",
        "--health-ping-timeout",
        "--health-readyz-interval",
        "--health-timeout",
        "--drain-grace",
        "--half-closed-timeout",
        "--idle-timeout",
        "--ready-timeout",
        "--resolve-interval",
        "--discovery-interval",
        "--discovery-removal-grace",
    ] {
        let mut v = base.to_vec();
        v.extend([
            "--discovery-kubeconfig",
            "/k",
            flag,
            "18446744073709551615s",
        ]);
        let e = load(&args(&v)).unwrap_err();
        assert_eq!(e.origin, flag);
        assert!(e.message.contains("too long"), "{flag}: {}", e.message);
        v.pop();
        v.push("100y");
        assert!(load(&args(&v)).is_ok(), "{flag} 100y refused");
    }
}

#[test]
fn every_flag_but_config_and_check_is_a_key() {
    let keys = keys();
    assert!(keys.len() > 30, "{keys:?}");
    for k in &keys {
        // `key:` with no value is "not given", for every type of key.
        let s = parse_file(&format!("{k}:\n"), "c.yaml".into())
            .unwrap_or_else(|e| panic!("`{k}` is a flag but not a key: {e}"));
        assert_eq!(format!("{s:?}"), format!("{:?}", Settings::default()));
    }
    for k in ["config", "check"] {
        assert!(!keys.iter().any(|key| key == k), "{k} listed as a key");
        let e = parse_file(&format!("{k}: x\n"), "c.yaml".into()).unwrap_err();
        assert!(
            e.message.contains(&format!("unknown key `{k}`")),
            "{}",
            e.message
        );
    }
}

#[test]
fn flags_layer_over_the_file_field_by_field_and_errors_name_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    let ps = p.to_str().unwrap();
    std::fs::write(
        &p,
        "server: 127.0.0.2:6443\nca-file: /ca\nreuse-port: true\nworkers: 3\n\
         drain-grace: 1s\nlisten: 127.0.0.1:7000\nmax-connections: 0\n",
    )
    .unwrap();
    let e = load(&args(&["--config", ps, "--workers", "4"])).unwrap_err();
    assert_eq!(e.origin, format!("{ps}: key `max-connections`"));
    let e = load(&args(&["--config", ps, "--max-connections", "0"])).unwrap_err();
    assert_eq!(e.origin, "--max-connections");

    let c = load(&args(&[
        "--config",
        ps,
        "--workers",
        "4",
        "--listen",
        "127.0.0.1:7001",
        "--max-connections",
        "5",
    ]))
    .unwrap();
    assert_eq!(c.workers, 4);
    assert_eq!(c.listen, vec!["127.0.0.1:7001".parse().unwrap()]);
    assert_eq!(c.max_connections, 5);
    assert_eq!(c.drain_grace, Duration::from_secs(1));
    assert!(
        c.reuse_port,
        "the file's switch is kept when the flag is absent"
    );
    assert!(!c.allow_non_loopback);
    assert_eq!(c.servers.len(), 1);
    assert!(!c.servers_from_flags);
    assert!(c.listen_given);

    // An empty list in the file is given (and wrong), not absent.
    std::fs::write(&p, "server: 127.0.0.2:6443\nca-file: /ca\nlisten: []\n").unwrap();
    let e = load(&args(&["--config", ps])).unwrap_err();
    assert_eq!(e.origin, format!("{ps}: key `listen`"));
    assert!(e.message.contains("no listen address"), "{}", e.message);
}

#[test]
fn effective_lists_every_key_and_a_reload_names_what_needs_a_restart() {
    let base = ["--server", "127.0.0.2:6443", "--ca-file", "/x"];
    let c = load(&args(&base)).unwrap();
    let shown: Vec<String> = c.effective().into_keys().collect();
    let mut keys = keys();
    keys.sort();
    assert_eq!(shown, keys);
    assert_eq!(c.effective()["half-closed-timeout"], "1m 30s");
    assert_eq!(c.effective()["discovery-mode"], serde_json::Value::Null);

    let mut v = base.to_vec();
    v.extend(["--server", "127.0.0.3:6443", "--workers", "3"]);
    v.extend(["--discovery-kubeconfig", "/k", "--drain-grace", "5s"]);
    let newer = load(&args(&v)).unwrap();
    assert_eq!(newer.effective()["discovery-mode"], "seed");
    // `server` is applied by a reload; drain-grace is the default written out: no change.
    assert_eq!(
        c.restart_needed(&newer),
        [
            "discovery-interval",
            "discovery-kubeconfig",
            "discovery-mode",
            "discovery-removal-grace",
            "state-dir",
            "workers"
        ]
    );
}
