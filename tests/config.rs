//! The configuration of a running apilb and of one about to start: reloads that nothing at
//! the config path can block, a file rewritten in place applied only once complete, what a
//! reload reports (`/status`, `/metrics`, `apilb status`), `apilb run --check`, and the
//! config file's friendlier parsing.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A config file listing `servers`, with `extra` lines.
fn config_text(pki: &Pki, servers: &[&Standin], extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("  - \"{}\"", s.addr))
        .collect();
    format!(
        "ca-file: {}\n{extra}server:\n{}\n",
        pki.ca.display(),
        list.join("\n")
    )
}

/// Polls `/status` every 10 ms until `pred` holds; returns that status. Panics after 15 s.
async fn status_until(lb: &Apilb, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = lb.status().await;
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in /status within 15s; last status:\n{st:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn servers_in_effect(st: &Value) -> Vec<String> {
    st["config"]["server"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    #[allow(unsafe_code)]
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0);
}

/// A FIFO put at the config path (no writer ever comes) once held the reload, on the
/// control thread: health checks, the admin endpoint and SIGTERM waited with it. Now the
/// reload fails at once, naming the file, and everything else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_config_path_fails_the_reload_and_blocks_nothing() {
    let pki = Pki::new();
    let s1 = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let s2 = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apilb.yaml");
    std::fs::write(&cfg, config_text(&pki, &[&s1], "")).unwrap();
    let mut lb = Apilb::start_args(vec!["--config".into(), cfg.display().to_string()], None);
    lb.wait_all_ready(&[&s1]);
    assert_eq!(
        lb.metric("apilb_config_last_reload_successful", &[]).await,
        1.0
    );

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &cfg).unwrap();
    lb.signal(libc::SIGHUP);
    let st = status_until(&lb, "a failed reload", |st| {
        st["reload"]["failures"].as_u64() >= Some(1)
    })
    .await;
    let r = &st["reload"];
    assert_eq!(r["last_result"], "failed");
    assert_eq!(r["last_cause"], "SIGHUP");
    let err = r["last_error"].as_str().unwrap();
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    assert!(err.contains("FIFO"), "{err}");
    assert!(err.contains("rename"), "{err}");
    assert_eq!(servers_in_effect(&st), [s1.addr.to_string()]);
    assert_eq!(
        lb.metric("apilb_config_reloads_total", &["result=\"failed\""])
            .await,
        1.0
    );
    assert_eq!(
        lb.metric("apilb_config_last_reload_successful", &[]).await,
        0.0
    );
    // `apilb status` says it too.
    let out = Command::new(APILB)
        .args(["status", "--admin-url", &format!("http://{}", lb.admin)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("FAILED"), "{table}");
    assert!(table.contains("FIFO"), "{table}");

    // A regular file again: the next SIGHUP applies it.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, config_text(&pki, &[&s1, &s2], "")).unwrap();
    std::fs::rename(&plain, &cfg).unwrap();
    lb.signal(libc::SIGHUP);
    let st = status_until(&lb, "a successful reload", |st| {
        st["reload"]["reloads"].as_u64() == Some(1)
    })
    .await;
    assert_eq!(st["reload"]["last_result"], "ok");
    assert_eq!(
        servers_in_effect(&st),
        [s1.addr.to_string(), s2.addr.to_string()]
    );
    lb.wait_status(s2.addr, "ready", Duration::from_secs(10))
        .await;
    assert_eq!(
        lb.metric("apilb_config_last_reload_successful", &[]).await,
        1.0
    );
    assert!(
        lb.metric("apilb_config_last_reload_success_timestamp_seconds", &[])
            .await
            > 1.7e9
    );

    // A FIFO again, and SIGTERM: the process ends (a reader stuck on it would hold it).
    mkfifo(&fifo);
    std::fs::rename(&fifo, &cfg).unwrap();
    lb.signal(libc::SIGHUP);
    status_until(&lb, "the second failure", |st| {
        st["reload"]["failures"].as_u64() == Some(2)
    })
    .await;
    lb.signal(libc::SIGTERM);
    assert_eq!(lb.wait_exit(Duration::from_secs(15)), Some(0));
}

/// An in-place rewrite (truncate, write part, write the rest) is applied only once the file
/// has settled: the half that lists one server of two is never applied, so the stream on
/// the other is never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_is_applied_only_once_complete() {
    let pki = Pki::new();
    let s1 = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let s2 = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let s3 = Standin::start(&pki, [127, 0, 0, 4], "cp3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apilb.yaml");
    std::fs::write(&cfg, config_text(&pki, &[&s1, &s2], "")).unwrap();
    let lb = Apilb::start_args(vec!["--config".into(), cfg.display().to_string()], None);
    lb.wait_all_ready(&[&s1, &s2]);
    let mut ws = watches_on(lb.listen, &pki, &["cp1", "cp2"]).await;

    let full = config_text(&pki, &[&s1, &s2, &s3], "");
    let cut = full.find(&s2.addr.to_string()).unwrap() - "  - \"".len();
    let (part, rest) = full.split_at(cut);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&cfg)
        .unwrap();
    f.write_all(part.as_bytes()).unwrap();
    f.flush().unwrap();
    // apilb has read the half-written file, more than once (it polls every 500 ms), and
    // waits for it to settle (2 s)…
    status_until(&lb, "a change waiting to settle", |st| {
        st["reload"]["pending_change_seconds_ago"]
            .as_f64()
            .is_some_and(|t| t >= 1.0)
    })
    .await;
    assert_eq!(lb.status().await["reload"]["reloads"], 0);
    // …and the writer finishes.
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    let st = status_until(&lb, "the complete file applied", |st| {
        st["reload"]["reloads"].as_u64() == Some(1)
    })
    .await;
    assert_eq!(st["reload"]["last_cause"], "config file changed");
    assert_eq!(st["reload"]["failures"], 0);
    assert_eq!(
        servers_in_effect(&st),
        [s1.addr, s2.addr, s3.addr].map(|a| a.to_string())
    );
    ws[1].still_flowing().await;
    ws[0].still_flowing().await;
    assert_eq!(
        lb.metric("apilb_config_reloads_total", &["result=\"ok\""])
            .await,
        1.0
    );
}

/// A reload applies the server list; a changed key that needs a restart is named in
/// `/status`, in `apilb status` and in the log, and the setting in effect stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_keys_that_need_a_restart() {
    let pki = Pki::new();
    let s1 = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let s2 = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apilb.yaml");
    std::fs::write(&cfg, config_text(&pki, &[&s1], "workers: 2\n")).unwrap();
    let lb = Apilb::start_args(vec!["--config".into(), cfg.display().to_string()], None);
    lb.wait_all_ready(&[&s1]);
    let st = lb.status().await;
    assert_eq!(st["config"]["workers"], 2);
    assert_eq!(st["config"]["connect-race-delay"], "200ms");
    assert_eq!(st["reload"]["file"], cfg.to_str().unwrap());
    assert_eq!(st["reload"]["watched"], true);
    assert!(st["reload"]["last_result"].is_null());

    let mark = lb.mark();
    std::fs::write(
        &cfg,
        config_text(&pki, &[&s1, &s2], "workers: 3\nhealth-fall: 5\n"),
    )
    .unwrap();
    lb.signal(libc::SIGHUP);
    let st = status_until(&lb, "the reload", |st| {
        st["reload"]["reloads"].as_u64() == Some(1)
    })
    .await;
    assert_eq!(
        st["reload"]["restart_needed"],
        serde_json::json!(["health-fall", "workers"])
    );
    assert_eq!(st["config"]["workers"], 2);
    assert_eq!(st["config"]["health-fall"], 3);
    assert_eq!(servers_in_effect(&st).len(), 2);
    // The warning is a feature under test too: an operator who reads only the log learns
    // which keys wait for a restart (its typed `keys` field is asserted).
    let line = lb.wait_log_from(&mark, Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("changed settings not applied"))
    });
    let keys = line["keys"].to_string();
    assert!(
        keys.contains("workers") && keys.contains("health-fall"),
        "{line}"
    );
    let out = Command::new(APILB)
        .args(["status", "--admin-url", &format!("http://{}", lb.admin)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("applied at the next start: health-fall, workers"),
        "{table}"
    );
    assert!(table.contains("(SIGHUP): ok"), "{table}");
}

fn apilb(args: &[&str]) -> Output {
    Command::new(APILB).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `apilb run --check` accepts what `apilb run` would start with, without binding (the
/// listen address is held by the test) or connecting (the server is not there); and refuses
/// what `apilb run` would refuse, with its exit code and message.
#[test]
fn run_check_validates_without_binding_and_says_what_run_says() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let admin = free_port([127, 0, 0, 1]).to_string();
    let cfg = dir.path().join("apilb.yaml");
    std::fs::write(
        &cfg,
        format!(
            "ca-file: {}\nserver: 10.255.255.1:6443\nlisten: \"{listen}\"\n",
            pki.ca.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let out = apilb(&["run", "--check", "--config", c, "--admin-listen", &admin]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("server: [\"10.255.255.1:6443\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("listen: [\"{listen}\"]")),
        "{stdout}"
    );
    // Its output is a config file that loads.
    let again = dir.path().join("again.yaml");
    std::fs::write(&again, &stdout).unwrap();
    let out = apilb(&["run", "--check", "--config", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        std::net::TcpStream::connect(&admin).is_err(),
        "--check bound the admin address"
    );

    // Refusals: each exactly as `apilb run` prints it.
    let missing = dir.path().join("missing-ca.crt");
    let bad_ca = dir.path().join("bad-ca.yaml");
    std::fs::write(
        &bad_ca,
        format!(
            "ca-file: {}\nserver: [10.255.255.1:6443]\n",
            missing.display()
        ),
    )
    .unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "servers: [10.255.255.1:6443]\n").unwrap();
    for (what, file, says) in [
        (
            "a missing CA file",
            &bad_ca,
            "--ca-file /etc/kubernetes/pki/ca.crt",
        ),
        ("a misspelt key", &typo, "did you mean `server`?"),
    ] {
        let f = file.to_str().unwrap();
        let base = [
            "--config",
            f,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        let mut checked = vec!["run", "--check"];
        checked.extend(base);
        let check = apilb(&checked);
        let mut started = vec!["run"];
        started.extend(base);
        let run = apilb(&started);
        assert_eq!(
            check.status.code(),
            Some(2),
            "{what}: {}",
            text(&check.stderr)
        );
        assert_eq!(run.status.code(), Some(2), "{what}: {}", text(&run.stderr));
        let err = text(&check.stderr);
        assert!(err.contains(says), "{what}: {err}");
        assert!(
            err.contains(f) || err.contains(&*missing.to_string_lossy()),
            "{what}: {err}"
        );
        // Said once, and the same words as the start.
        assert_eq!(err.matches("apilb: error:").count(), 1, "{what}: {err}");
        assert_eq!(
            text(&run.stderr).matches(says).count(),
            1,
            "{what}: {}",
            text(&run.stderr)
        );
        assert!(
            text(&run.stderr).contains(err.trim()),
            "{what}: {err} vs {}",
            text(&run.stderr)
        );
    }
}

/// A single value where a list is expected is a list of one; a misspelt key is answered
/// with the key meant, and that fix is accepted; a key far from every real one gets the
/// pointer to the key list.
#[test]
fn config_file_accepts_a_scalar_list_and_suggests_the_key_meant() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca.display().to_string();
    let cfg = dir.path().join("apilb.yaml");
    let c = cfg.to_str().unwrap();
    std::fs::write(
        &cfg,
        format!("ca-file: {ca}\nserver: 10.255.255.1:6443\nlisten: 127.0.0.1:16443\n"),
    )
    .unwrap();
    let out = apilb(&["run", "--check", "--config", c]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("server: [\"10.255.255.1:6443\"]"));
    assert!(text(&out.stdout).contains("listen: [\"127.0.0.1:16443\"]"));

    for (wrong, right) in [
        ("servers", "server"),
        ("ca_file", "ca-file"),
        ("cafile", "ca-file"),
        ("health-fal", "health-fall"),
        ("drain-grace-period", "drain-grace"),
    ] {
        let value = match right {
            "server" => "[10.255.255.1:6443]",
            "ca-file" => ca.as_str(),
            "health-fall" => "3",
            _ => "5s",
        };
        let mut body = format!("ca-file: {ca}\nserver: [10.255.255.1:6443]\n");
        if matches!(right, "server" | "ca-file") {
            body = body
                .lines()
                .filter(|l| !l.starts_with(&format!("{right}:")))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        std::fs::write(&cfg, format!("{body}{wrong}: {value}\n")).unwrap();
        let out = apilb(&["run", "--check", "--config", c]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{wrong}: {err}");
        assert!(err.contains(c), "{wrong}: {err}");
        assert!(err.contains(&format!("unknown key `{wrong}`")), "{err}");
        let meant = format!("did you mean `{right}`?");
        assert!(err.contains(&meant), "{wrong}: {err}");
        assert!(!err.contains("expected one of"), "{err}");
        // The fix, applied, is accepted.
        std::fs::write(&cfg, format!("{body}{right}: {value}\n")).unwrap();
        let out = apilb(&["run", "--check", "--config", c]);
        assert_eq!(out.status.code(), Some(0), "{right}: {}", text(&out.stderr));
    }

    std::fs::write(
        &cfg,
        format!("ca-file: {ca}\nserver: [10.255.255.1:6443]\nfrobnicate: 1\n"),
    )
    .unwrap();
    let out = apilb(&["run", "--check", "--config", c]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown key `frobnicate`"), "{err}");
    assert!(err.contains("`apilb run --help`"), "{err}");
    assert!(err.contains("line 3"), "{err}");

    // A value of the wrong shape names the key's form.
    std::fs::write(&cfg, format!("ca-file: {ca}\nserver: {{a: b}}\n")).unwrap();
    let out = apilb(&["run", "--check", "--config", c]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a list of addresses"), "{err}");
    assert!(!err.contains("flag names"), "{err}");
}

/// `apilb run` under an open-file limit of `nofile`, its JSON log in a file: the settings in
/// effect (from `/status`) and the log's lines, once stopped.
fn run_with_nofile(pki: &Pki, s: &Standin, nofile: u64, extra: &[&str]) -> (Value, Vec<Value>) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let admin = free_port([127, 0, 0, 1]);
    let mut cmd = Command::new(APILB);
    cmd.args([
        "run",
        "--log-format",
        "json",
        "--server",
        &s.addr.to_string(),
    ])
    .args(["--ca-file", pki.ca.to_str().unwrap()])
    .args(["--listen", &free_port([127, 0, 0, 1]).to_string()])
    .args(["--admin-listen", &admin.to_string()])
    .args(extra)
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: pre_exec runs in the forked child before exec: the closure calls only
    // setrlimit (async-signal-safe) with a struct on its own stack, and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        assert!(child.try_wait().unwrap().is_none(), "apilb ended");
        if let Ok(mut c) = std::net::TcpStream::connect(admin) {
            use std::io::Read;
            c.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut raw = Vec::new();
            c.read_to_end(&mut raw).unwrap();
            let (code, body) = parse_response(&raw);
            if code == 200 {
                break serde_json::from_str::<Value>(&body).unwrap();
            }
        }
        assert!(Instant::now() < deadline, "admin endpoint never answered");
        std::thread::sleep(Duration::from_millis(10));
    };
    send_signal(child.id() as i32, libc::SIGTERM);
    assert!(child.wait().unwrap().success());
    let lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.to_string())))
        .collect();
    (status, lines)
}

/// At default settings a common 20,000-descriptor limit warned (it needed 20,064): the
/// default connection limit is now sized to the descriptor limit, without a warning. A
/// limit the operator asked for is kept, and warned about when it cannot be held.
#[test]
fn default_connection_limit_fits_the_open_file_limit_without_a_warning() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let (st, log) = run_with_nofile(&pki, &s, 20_000, &[]);
    let fits = st["config"]["max-connections"].as_u64().unwrap();
    assert!((9_000..10_000).contains(&fits), "{fits}");
    let warnings: Vec<&Value> = log.iter().filter(|v| v["level"] == "WARN").collect();
    assert!(warnings.is_empty(), "{warnings:?}");

    let (st, log) = run_with_nofile(&pki, &s, 20_000, &["--max-connections", "10000"]);
    assert_eq!(st["config"]["max-connections"], 10_000);
    assert!(
        log.iter().any(|v| v["level"] == "WARN"
            && v["limit"] == 20_000
            && v["max_connections"] == 10_000),
        "{log:?}"
    );

    // A limit asked for that fits is kept, quietly.
    let (st, log) = run_with_nofile(&pki, &s, 20_000, &["--max-connections", "5000"]);
    assert_eq!(st["config"]["max-connections"], 5_000);
    assert!(!log.iter().any(|v| v["level"] == "WARN"), "{log:?}");
}

/// `/metrics` carries apilb's build and the standard `process_*` metrics (the soak and the
/// benchmarks read apilb's own memory, descriptors and CPU from them), and no discovery
/// families when discovery is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_build_and_process_and_no_discovery_when_it_is_off() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    let (code, text) = lb.admin_get("/metrics").await;
    assert_eq!(code, 200);
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        lb.metric("apilb_build_info", &[&version]).await,
        1.0,
        "{text}"
    );
    let rss = lb.metric("process_resident_memory_bytes", &[]).await;
    assert!(rss > 1e6, "{rss}\n{text}");
    // The listeners, the admin endpoint, the health connection: more than stdio.
    assert!(lb.metric("process_open_fds", &[]).await >= 5.0, "{text}");
    assert!(lb.metric("process_max_fds", &[]).await >= 1024.0, "{text}");
    assert!(lb.metric("process_threads", &[]).await >= 3.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("process_cpu_seconds_total ")),
        "{text}"
    );
    let start = lb.metric("process_start_time_seconds", &[]).await;
    assert!(start > 1.7e9, "{start}");
    assert!(!text.contains("apilb_discovery"), "{text}");
}
