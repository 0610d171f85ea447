//! A log line that cannot be written is dropped and counted, never fatal: `apilb run` with
//! stderr on a pipe whose reader has gone (a log collector or journald restarted), or on
//! `/dev/full` (a full disk), keeps proxying, stays alive, and counts the lost lines in
//! `apilb_log_write_errors_total`. Debug logs are on, so every connection writes a line.
//! And the error line at exit, unwritable too, leaves the exit code as it is.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `apilb run` in front of one stand-in, its stderr on `stderr`; killed on drop.
struct Run {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Run {
    fn start(pki: &Pki, server: &Standin, stderr: Stdio) -> Run {
        let listen = free_port([127, 0, 0, 1]);
        let admin = free_port([127, 0, 0, 1]);
        let child = Command::new(APILB)
            .arg("run")
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--server", &server.addr.to_string()])
            .arg("--ca-file")
            .arg(&pki.ca)
            .args(["--log-format", "json", "--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Run {
            child,
            listen,
            admin,
        }
    }

    /// Panics, saying how apilb ended (SIGABRT, before the fix), if it is not running.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("apilb is gone: {status}");
        }
    }

    /// One GET on the admin endpoint; None while nothing answers there.
    async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        admin_get_at(self.admin, path).await.ok()
    }

    /// Polls `path` on the admin endpoint until `done` accepts its answer; returns the body.
    /// Panics if apilb dies meanwhile, or after `timeout`.
    async fn poll_admin(
        &mut self,
        path: &str,
        timeout: Duration,
        done: impl Fn(u16, &str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive();
            let answer = self.admin_get(path).await;
            if let Some((code, body)) = &answer {
                if done(*code, body) {
                    return body.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{path} on the admin endpoint: no expected answer within {timeout:?}; last: {}",
                summary(answer.as_ref())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) {
        self.poll_admin("/readyz", Duration::from_secs(10), |code, _| code == 200)
            .await;
    }

    /// GET /whoami through apilb must reach the stand-in, with apilb alive afterwards.
    async fn assert_proxies(&mut self, pki: &Pki, server: &str) {
        let answer = tokio::time::timeout(Duration::from_secs(10), whoami(self.listen, pki)).await;
        self.assert_alive();
        match answer {
            Ok(Ok(name)) => assert_eq!(name, server),
            Ok(Err(e)) => panic!("whoami through apilb failed: {e}"),
            Err(_) => panic!("whoami through apilb timed out"),
        }
    }

    /// Waits until `apilb_log_write_errors_total` is above zero; returns it.
    async fn wait_write_errors(&mut self) -> f64 {
        let body = self
            .poll_admin("/metrics", Duration::from_secs(10), |code, body| {
                code == 200 && write_errors(body).is_some_and(|n| n > 0.0)
            })
            .await;
        write_errors(&body).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An admin answer for a failure message: the counter's lines of /metrics, else the start.
fn summary(answer: Option<&(u16, String)>) -> String {
    let Some((code, body)) = answer else {
        return "nothing answered".into();
    };
    let counter: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("log_write_errors"))
        .collect();
    if counter.is_empty() {
        format!("{code} {}", body.chars().take(300).collect::<String>())
    } else {
        format!("{code} {}", counter.join(" | "))
    }
}

/// The value of `apilb_log_write_errors_total` in a /metrics body, if it is there.
fn write_errors(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("apilb_log_write_errors_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// A pipe (read end, write end), both close-on-exec: only the child given the write end as
/// its stderr holds it, so once the read end is dropped the pipe has no reader at all.
fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_reader_gone_is_not_fatal() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let (read, write) = pipe();
    let mut lb = Run::start(&pki, &s, Stdio::from(write));
    // The reader takes lines until apilb says it started, then exits (closing the read end):
    // every later write gets EPIPE.
    let started = tokio::task::spawn_blocking(move || {
        BufReader::new(std::fs::File::from(read))
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("apilb started"))
    })
    .await
    .unwrap();
    assert!(started, "stderr ended before `apilb started`");
    lb.wait_ready().await;

    // Each connection logs at debug: these writes fail.
    lb.assert_proxies(&pki, "cp1").await;
    let lost = lb.wait_write_errors().await;
    lb.assert_proxies(&pki, "cp1").await;
    let after = lb.wait_write_errors().await;
    assert!(
        after > lost,
        "the second connection's lines were not counted: {after} ≤ {lost}"
    );
    lb.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_on_a_full_disk_is_not_fatal() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut lb = Run::start(&pki, &s, Stdio::from(full));
    // Every line fails from the first one (`apilb started` included).
    lb.wait_ready().await;
    lb.assert_proxies(&pki, "cp2").await;
    let lost = lb.wait_write_errors().await;
    lb.assert_proxies(&pki, "cp2").await;
    let after = lb.wait_write_errors().await;
    assert!(
        after > lost,
        "the second connection's lines were not counted: {after} ≤ {lost}"
    );
    lb.assert_alive();
}

/// A stderr whose reader is alive but reads nothing (a stalled log collector or journald):
/// a pipe of one page, never read. Writing a line would block for good. apilb gets ready,
/// proxies connection after connection (each logs at debug, on the worker that serves it)
/// and answers its admin endpoint, while the lines that find the backlog full are dropped
/// and counted. Once the reader reads again, lines flow: the writer thread was only
/// waiting. Without the writer thread the first full page blocks apilb at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_reader_stalled_blocks_nothing() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 4], "cp3");
    let (read, write) = pipe();
    rustix::pipe::fcntl_setpipe_size(&write, 4096).unwrap();
    let mut lb = Run::start(&pki, &s, Stdio::from(write));
    lb.wait_ready().await;
    let dropped = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("apilb_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    // Connections until the backlog has overflowed: every one of them proxied meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..20 {
            lb.assert_proxies(&pki, "cp3").await;
        }
        let (_, body) = lb.admin_get("/metrics").await.expect("/metrics answers");
        if dropped(&body).is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line dropped after a minute of connections with stderr stalled: {}",
            summary(Some(&(200, body)))
        );
    }
    // The reader reads again, to the end (apilb killed): the lines that waited — at most
    // the backlog, a page of the pipe and the one being written — then new ones.
    let reader = tokio::task::spawn_blocking(move || {
        BufReader::new(std::fs::File::from(read))
            .lines()
            .map_while(Result::ok)
            .count()
    });
    for _ in 0..400 {
        lb.assert_proxies(&pki, "cp3").await;
    }
    lb.assert_alive();
    drop(lb);
    let waited = 1024 + 4096 / 64 + 1;
    let read = reader.await.unwrap();
    assert!(
        read > waited + 100,
        "{read} lines read: no more than waited, so none arrived after the reader came back"
    );
}

/// `apilb run` with `args`, stderr on /dev/full, to its end: how it ended.
fn exit_with_full_stderr(args: &[&str]) -> std::process::ExitStatus {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(APILB)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(full)
        .status()
        .unwrap()
}

#[test]
fn bad_config_keeps_exit_code_2_with_a_full_stderr() {
    // Reported before logging starts.
    let admin = free_port([127, 0, 0, 1]).to_string();
    let status = exit_with_full_stderr(&["--server", "cp1", "--admin-listen", &admin]);
    assert_eq!(status.code(), Some(2), "{status}");
}

#[test]
fn unreadable_ca_keeps_exit_code_2_with_a_full_stderr() {
    // Reported by the log and by the error line, both failing.
    let admin = free_port([127, 0, 0, 1]).to_string();
    let status = exit_with_full_stderr(&[
        "--server",
        "127.0.0.2:6443",
        "--ca-file",
        "/nonexistent/ca.crt",
        "--admin-listen",
        &admin,
    ]);
    assert_eq!(status.code(), Some(2), "{status}");
}

#[test]
fn listen_address_taken_keeps_exit_code_2_with_a_full_stderr() {
    let admin = free_port([127, 0, 0, 1]).to_string();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let status = exit_with_full_stderr(&[
        "--server",
        "127.0.0.2:6443",
        "--health-insecure-skip-verify",
        "--listen",
        &busy.local_addr().unwrap().to_string(),
        "--admin-listen",
        &admin,
    ]);
    assert_eq!(status.code(), Some(2), "{status}");
}
