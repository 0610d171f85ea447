//! apilb under a supervisor. Restarts that refuse no one: with socket activation (the
//! supervisor holds the listening socket and passes it as LISTEN_FDS), apilb can be stopped
//! and started again — a `systemctl restart` or a binary upgrade — while clients connect in
//! a loop, and not one connection attempt is refused. Passed sockets are served or refused
//! loudly, never held unserved; listening addresses are exclusive unless both processes of a
//! handover share them (`--reuse-port`); a SIGHUP during start-up is not fatal; and systemd
//! hears READY=1 and STOPPING=1 (`$NOTIFY_SOCKET`).

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Starts `apilb run` the way systemd does with `apilb.socket`: the listening socket as
/// descriptor 3, LISTEN_FDS=1, LISTEN_PID = the new process.
fn activated(listener: &std::net::TcpListener, args: &[String]) -> Child {
    activated_with(&[listener], "$$", args)
}

/// Starts `apilb run` with `listeners` as descriptors 3, 4, … and LISTEN_FDS set, and
/// LISTEN_PID set to `listen_pid` (a shell word: `$$` is the new process), or unset if empty.
fn activated_with(
    listeners: &[&std::net::TcpListener],
    listen_pid: &str,
    args: &[String],
) -> Child {
    let fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let pid = if listen_pid.is_empty() {
        String::new()
    } else {
        format!("LISTEN_PID={listen_pid} ")
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{pid}LISTEN_FDS={} exec \"$0\" \"$@\"", fds.len()))
        .arg(APILB)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: pre_exec runs in the forked child before exec: the closure makes only
    // async-signal-safe calls (fcntl, dup2, close) on descriptors the child inherited, and
    // allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (a source may be 3 or 4 itself), then into place.
            let mut high = [0i32; 8];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high[..fds.len()].iter().enumerate() {
                let to = 3 + i as i32;
                if libc::dup2(*fd, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let flags = libc::fcntl(to, libc::F_GETFD);
                libc::fcntl(to, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                libc::close(*fd);
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_an_inherited_socket_refuses_no_connection() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    // The supervisor's socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = free_port([127, 0, 0, 1]);
    let args: Vec<String> = [
        "run",
        "--listen",
        &addr.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--server",
        &s.addr.to_string(),
        "--ca-file",
        pki.ca.to_str().unwrap(),
        "--drain-grace",
        "200ms",
        "--log-format",
        "json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();

    let mut first = activated(&listener, &args);
    let log1 = first.stderr.take();
    // Serving: it could only be on the inherited socket (ours holds the address).
    wait_status_at(admin, s.addr, "ready", Duration::from_secs(10)).await;
    // Clients connect in a loop across the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (count_tx, mut count) = tokio::sync::watch::channel(0u32);
    let (ok, failed) = {
        let stopped = stop.clone();
        let pki = pki.share();
        let client = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(10), whoami(addr, &pki)).await {
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("timed out".into()),
                }
                let _ = count_tx.send(ok);
            }
            (ok, failed)
        });
        // Some succeed, then the restart.
        count.wait_for(|c| *c >= 5).await.unwrap();
        send_signal(first.id() as i32, libc::SIGTERM);
        let status = tokio::task::spawn_blocking(move || first.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
        drop(log1);
        let mut second = activated(&listener, &args);
        let _log2 = second.stderr.take();
        wait_status_at(admin, s.addr, "ready", Duration::from_secs(10)).await;
        // Some more through the new process, then stop.
        let before = *count.borrow();
        count.wait_for(|c| *c >= before + 5).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let r = client.await.unwrap();
        let _ = second.kill();
        let _ = second.wait();
        r
    };
    assert!(
        failed.is_empty(),
        "{} of {} attempts failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 5, "only {ok} requests made");
}

/// A SIGHUP while apilb starts (a `systemctl reload` or a config-management run right after
/// a start) is a reload, never the end of the process. The config file is a FIFO so that the
/// signal lands at a known point inside start-up: apilb is blocked reading its config when
/// the test's open of the FIFO for writing returns. Repeated: each round is a fresh process.
#[test]
fn sighup_during_start_up_does_not_kill() {
    use std::io::Write;
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let config = format!("server: [\"{}\"]\nca-file: {}\n", s.addr, pki.ca.display());
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("config.yaml");
        let admin = free_port([127, 0, 0, 1]);
        let (mut child, mut writer) = start_blocked_on_fifo(&fifo, admin);
        assert_eq!(send_signal(child.id() as i32, libc::SIGHUP), 0);
        // Later reads (the reload, the change watch) find a plain file at the path.
        let plain = dir.path().join("plain.yaml");
        std::fs::write(&plain, &config).unwrap();
        std::fs::rename(&plain, &fifo).unwrap();
        writer.write_all(config.as_bytes()).unwrap();
        drop(writer);
        // Up: the admin endpoint answers, and the process is still the one started.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: apilb ended during start-up: {status}");
            }
            if std::net::TcpStream::connect(admin).is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: not up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.try_wait().unwrap().is_none(), "round {round}");
        send_signal(child.id() as i32, libc::SIGTERM);
        assert!(child.wait().unwrap().success(), "round {round}");
    }
}

/// A SIGTERM while apilb starts (a `systemctl stop` or a kubelet killing the pod right after
/// a start) is a drain and a clean exit, never a kill by the signal's default action. apilb
/// is blocked reading its config from a FIFO when the signal lands; it then finishes
/// starting, drains and exits 0.
#[test]
fn sigterm_during_start_up_is_a_clean_exit() {
    use std::io::Write;
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let config = format!("server: [\"{}\"]\nca-file: {}\n", s.addr, pki.ca.display());
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.yaml");
    let (child, mut writer) = start_blocked_on_fifo(&fifo, free_port([127, 0, 0, 1]));
    let mut child = Reap(child);
    assert_eq!(send_signal(child.0.id() as i32, libc::SIGTERM), 0);
    writer.write_all(config.as_bytes()).unwrap();
    drop(writer);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Starts `apilb run` with its config at a new FIFO `fifo` and returns once apilb has the
/// FIFO open for reading: it is inside start-up, blocked on its config, until the returned
/// writer gives it one. The open for writing runs off the test's thread, so that an apilb
/// that died first fails the test instead of hanging it.
fn start_blocked_on_fifo(fifo: &std::path::Path, admin: SocketAddr) -> (Child, std::fs::File) {
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    #[allow(unsafe_code)]
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0);
    let child = Command::new(APILB)
        .args(["run", "--config", fifo.to_str().unwrap()])
        .args(["--listen", &free_port([127, 0, 0, 1]).to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(path));
    });
    let writer = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("apilb never read its config")
        .unwrap();
    (child, writer)
}

/// Kills and reaps a child on drop (a failed assertion leaves no process behind).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end: its exit code and stderr. Fails (and kills it) if it still runs
/// after `timeout`.
fn exit_within(mut cmd: Command, timeout: Duration) -> (Option<i32>, String) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let out = out.unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            (out.status.code(), err)
        }
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("still running after {timeout:?}");
        }
    }
}

fn run_args(listen: SocketAddr, admin: SocketAddr, s: &Standin, pki: &Pki) -> Vec<String> {
    let mut args = base_args(admin, s, pki);
    args.insert(1, "--listen".into());
    args.insert(2, listen.to_string());
    args
}

/// The listening sockets are exclusive: a second apilb (or anything else) on the same
/// address is refused with exit code 2 and a message naming the address and the way out,
/// so it can never take a share of kubelet's connections. `--reuse-port` on both is the
/// explicit handover: the new process binds while the old one still runs, and serves once
/// the old one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_apilb_on_the_same_address_is_refused_unless_both_share_it() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let first = Apilb::start(&pki, &[&s], &[]);
    for (listen, admin, flag, taken) in [
        (
            first.listen,
            free_port([127, 0, 0, 1]),
            "--listen",
            first.listen,
        ),
        (
            free_port([127, 0, 0, 1]),
            first.admin,
            "--admin-listen",
            first.admin,
        ),
    ] {
        for extra in [&[][..], &["--reuse-port"][..]] {
            let mut cmd = Command::new(APILB);
            cmd.args(run_args(listen, admin, &s, &pki)).args(extra);
            let (code, err) = exit_within(cmd, Duration::from_secs(10));
            assert_eq!(code, Some(2), "{extra:?}: {err}");
            assert!(
                err.contains(&format!("{flag} {taken}: the address is in use"))
                    && err.contains("--reuse-port"),
                "{extra:?}: {err}"
            );
        }
    }
    // Still the only one serving there.
    assert_eq!(whoami(first.listen, &pki).await.unwrap(), "cp1");
    drop(first);

    // A handover: both with --reuse-port.
    let (listen, admin) = (free_port([127, 0, 0, 1]), free_port([127, 0, 0, 1]));
    let mut old = Reap(
        Command::new(APILB)
            .args(run_args(listen, admin, &s, &pki))
            .arg("--reuse-port")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _old_log = old.0.stderr.take();
    wait_status_at(admin, s.addr, "ready", Duration::from_secs(10)).await;
    // Both answer on the shared admin address too: the new one's own word that its server
    // is ready is its READY=1.
    let notify = NotifySocket::new();
    let mut new = Reap(
        Command::new(APILB)
            .args(run_args(listen, admin, &s, &pki))
            .arg("--reuse-port")
            .env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let msg = notify.next();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    send_signal(old.0.id() as i32, libc::SIGTERM);
    assert!(old.0.wait().unwrap().success());
    assert_eq!(whoami(listen, &pki).await.unwrap(), "cp1");
    assert!(new.0.try_wait().unwrap().is_none());
}

fn base_args(admin: SocketAddr, s: &Standin, pki: &Pki) -> Vec<String> {
    [
        "run",
        "--admin-listen",
        &admin.to_string(),
        "--server",
        &s.addr.to_string(),
        "--ca-file",
        pki.ca.to_str().unwrap(),
        "--log-format",
        "json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Runs an activated apilb to its end: its exit code and stderr. Fails (and kills it) if it
/// still runs after `timeout`.
fn activated_exit(child: Child, timeout: Duration) -> (Option<i32>, String) {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            panic!("still running after {timeout:?}");
        }
    }
}

/// Without --listen, apilb serves every socket the supervisor passed, whatever its address
/// (both of two here), and binds nothing else; the admin address it binds itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_the_inherited_sockets_are_served() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free_port([127, 0, 0, 1]);
    let mut child = Reap(activated_with(&[&a, &b], "$$", &base_args(admin, &s, &pki)));
    let _log = child.0.stderr.take();
    wait_status_at(admin, s.addr, "ready", Duration::from_secs(10)).await;
    for l in [&a, &b] {
        let addr = l.local_addr().unwrap();
        let served = tokio::time::timeout(Duration::from_secs(10), whoami(addr, &pki))
            .await
            .unwrap_or_else(|_| panic!("{addr}: left unserved"));
        assert_eq!(served.unwrap(), "cp1");
    }
}

/// With --listen, a passed socket that matches no listen address is an error naming both
/// (exit code 2), not a socket held open with its clients waiting unserved in its queue.
#[test]
fn an_inherited_socket_matching_no_listen_address_is_an_error() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free_port([127, 0, 0, 1]);
    let mut args = base_args(free_port([127, 0, 0, 1]), &s, &pki);
    args.extend(["--listen".to_string(), listen.to_string()]);
    let (code, err) = activated_exit(
        activated_with(&[&passed], "$$", &args),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    let passed = passed.local_addr().unwrap().to_string();
    assert!(
        err.contains(&passed) && err.contains(&listen.to_string()),
        "{err}"
    );
}

/// sd_listen_fds(3): the sockets are this process's only if LISTEN_PID is its pid. Passed
/// with LISTEN_PID unset, or naming another process, the socket is not taken: apilb binds
/// --listen itself, which the passed socket holds, and says so (exit code 2).
#[test]
fn inherited_sockets_are_taken_only_when_listen_pid_is_ours() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = passed.local_addr().unwrap();
    let mut args = base_args(free_port([127, 0, 0, 1]), &s, &pki);
    args.extend(["--listen".to_string(), addr.to_string()]);
    for pid in ["", "1"] {
        let (code, err) = activated_exit(
            activated_with(&[&passed], pid, &args),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(2), "LISTEN_PID={pid:?}: {err}");
        assert!(
            err.contains(&format!("--listen {addr}: the address is in use")),
            "LISTEN_PID={pid:?}: {err}"
        );
    }
}

/// The status code of `GET path` on apilb's admin endpoint.
fn admin_code(admin: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_response(&out).0
}

/// A stand-in for systemd's notification socket: the datagrams apilb sends there.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// The next message (panics after 15 s without one).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("no notification within 15 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
}

/// Under systemd (`$NOTIFY_SOCKET`), apilb says READY=1 once a server is ready, and
/// STOPPING=1 when it begins to drain.
#[test]
fn notifies_ready_once_a_server_is_ready_and_stopping_on_sigterm() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let notify = NotifySocket::new();
    let (listen, admin) = (free_port([127, 0, 0, 1]), free_port([127, 0, 0, 1]));
    let mut child = Reap(
        Command::new(APILB)
            .args(run_args(listen, admin, &s, &pki))
            .env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let msg = notify.next();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means a server is ready, not merely that the process runs.
    assert_eq!(admin_code(admin, "/readyz"), 200);
    send_signal(child.0.id() as i32, libc::SIGTERM);
    let msg = notify.next();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    assert!(child.0.wait().unwrap().success());
}

/// With no server ready, READY=1 still comes, after --ready-timeout: a node whose control
/// planes are all unreachable must still start its kubelet (apilb serves in panic mode).
#[test]
fn notifies_ready_after_the_ready_timeout_when_no_server_is_ready() {
    let pki = Pki::new();
    let mut s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    s.kill(); // refuses every connect: never ready
    let notify = NotifySocket::new();
    let (listen, admin) = (free_port([127, 0, 0, 1]), free_port([127, 0, 0, 1]));
    let started = std::time::Instant::now();
    let _child = Reap(
        Command::new(APILB)
            .args(run_args(listen, admin, &s, &pki))
            .args(["--ready-timeout", "700ms"])
            .env("NOTIFY_SOCKET", &notify.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let msg = notify.next();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert!(msg.contains("panic mode"), "{msg}");
    assert_eq!(admin_code(admin, "/readyz"), 503);
}
