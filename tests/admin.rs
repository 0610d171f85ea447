//! The admin endpoint and `apilb status`: health, readiness, metrics and status answers,
//! the status command's output and exit codes, and the endpoint under pressure (out of
//! descriptors, more connections than it holds).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_status_command() {
    let pki = Pki::new();
    let s1 = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let mut s2 = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let lb = Apilb::start(&pki, &[&s1, &s2], &[]);
    lb.wait_all_ready(&[&s1, &s2]);
    let _w = Watch::open(lb.listen, &pki).await;

    assert_eq!(lb.admin_get("/healthz").await.0, 200);
    assert_eq!(lb.admin_get("/readyz").await.0, 200);
    assert_eq!(lb.admin_get("/nope").await.0, 404);
    let (code, metrics) = lb.admin_get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "apilb_server_state{",
        "apilb_server_active_connections{",
        "apilb_connect_attempts_total{",
        "apilb_connect_duration_seconds_bucket{",
        "apilb_bytes_total{",
        "apilb_health_check_duration_seconds_bucket{",
        "apilb_failover_closed_connections_total{",
        "apilb_connections_accepted_total",
        "apilb_panic_mode",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let st = lb.status().await;
    assert_eq!(st["ready"], true);
    assert_eq!(st["client_connections"], 1);
    let servers = st["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert!(servers
        .iter()
        .all(|v| v["state"] == "ready" && v["protocol"] == "h2"));
    assert_eq!(
        servers
            .iter()
            .map(|v| v["active_connections"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );

    let admin_url = format!("http://{}", lb.admin);
    let out = Command::new(APILB)
        .args(["status", "--admin-url", &admin_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("READY"), "{text}");
    assert!(text.contains(&s1.addr.to_string()) && text.contains(&s2.addr.to_string()));

    // Exit code 1 and NOT READY when no server is ready.
    let mark = lb.mark();
    drop(s1);
    s2.kill();
    lb.wait_state(&mark, s2.addr, "draining", Duration::from_secs(10));
    let st = lb.status().await;
    assert_eq!(st["ready"], false);
    assert_eq!(lb.admin_get("/readyz").await.0, 503);
    let out = Command::new(APILB)
        .args(["status", "--admin-url", &admin_url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT READY"));
    // And a clear error when nothing listens there.
    let out = Command::new(APILB)
        .args(["status", "--admin-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is apilb running?"));
}

/// `/status` `transitions`: each change of a server's state, numbered without a gap, with
/// where it came from, where it went, why and when; the record a poller (the soak) reads
/// instead of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_records_each_state_change_numbered() {
    let pki = Pki::new();
    let mut s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    let mark = lb.mark();
    s.kill();
    lb.wait_state(&mark, s.addr, "draining", Duration::from_secs(10));
    let mark = lb.mark();
    s.restart();
    lb.wait_state(&mark, s.addr, "ready", Duration::from_secs(15));
    let st = lb.status().await;
    let t = st["transitions"].as_array().unwrap();
    let name = s.addr.to_string();
    assert!(t.iter().all(|v| v["server"] == name.as_str()), "{t:#?}");
    // Numbered from 1, one more each time; each starts where the one before ended.
    for (i, v) in t.iter().enumerate() {
        assert_eq!(v["seq"], i as u64 + 1, "{t:#?}");
        assert!(v["cause"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        assert!(v["unix_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000));
    }
    for w in t.windows(2) {
        assert_eq!(w[0]["to"], w[1]["from"], "{t:#?}");
        assert!(w[0]["unix_ms"].as_u64() <= w[1]["unix_ms"].as_u64());
    }
    let path: Vec<&str> = t.iter().filter_map(|v| v["to"].as_str()).collect();
    assert_eq!(t[0]["from"], "unknown", "{t:#?}");
    let draining = path
        .iter()
        .position(|s| *s == "draining")
        .expect("no draining");
    assert_eq!(path[0], "ready", "{path:?}");
    assert_eq!(path.last(), Some(&"ready"), "{path:?}");
    assert!(draining > 0, "{path:?}");
}

/// Out of descriptors, the admin endpoint cannot accept: it retries with a growing backoff,
/// logs that once (it logged every 100 ms), counts every failure, and serves the client
/// that waited in its queue as soon as descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_out_of_descriptors_backs_off_logs_once_and_recovers() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    // Not one free descriptor (the soft limit only: raising it back needs no privilege).
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) writes `before`, a live struct on this stack; `new` is null.
    #[allow(unsafe_code)]
    let got =
        unsafe { libc::prlimit(lb.pid(), libc::RLIMIT_NOFILE, std::ptr::null(), &mut before) };
    assert_eq!(got, 0);
    // Below every descriptor it holds beyond stdio: the ones open stay open, no new one
    // can be made (counting the open ones would not do: a transient one closing leaves a
    // free number below the limit).
    let none_free = libc::rlimit {
        rlim_cur: 3,
        rlim_max: before.rlim_max,
    };
    // SAFETY: prlimit(2) reads `none_free`, a live struct on this stack; `old` is null.
    #[allow(unsafe_code)]
    let set = unsafe {
        libc::prlimit(
            lb.pid(),
            libc::RLIMIT_NOFILE,
            &none_free,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0);
    let mark = lb.log_mark();
    // The kernel completes this client's handshake; apilb cannot accept it yet.
    let admin = lb.admin;
    let waiting = tokio::spawn(async move {
        let mut c = TcpStream::connect(admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        parse_response(&out).0
    });
    // The log is read, not /metrics: the admin endpoint is what cannot accept; and the
    // rate-limited line is the feature under test.
    let hit = lb.wait_log_from(&mark, Duration::from_secs(10), |v| {
        v["message"] == "admin accept failed"
    });
    assert!(
        hit["error"]
            .as_str()
            .is_some_and(|e| e.contains("Too many open files")),
        "{hit}"
    );
    // An observation window (what is asserted is an absence): retries go on meanwhile,
    // at most one line is logged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines = lb.logs()[mark.log_index()..]
        .iter()
        .filter(|v| v["message"] == "admin accept failed")
        .count();
    assert_eq!(lines, 1, "admin accept failures logged {lines} times");
    // Descriptors back: the client that waited is served.
    // SAFETY: prlimit(2) reads `before`, a live struct on this stack; `old` is null.
    #[allow(unsafe_code)]
    let back =
        unsafe { libc::prlimit(lb.pid(), libc::RLIMIT_NOFILE, &before, std::ptr::null_mut()) };
    assert_eq!(back, 0);
    let code = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting admin client was never served")
        .unwrap();
    assert_eq!(code, 200);
    let failures = lb
        .metric("apilb_accept_errors_total", &["listener=\"admin\""])
        .await;
    assert!(failures >= 2.0, "{failures} failed accepts counted");
}

/// `GET path` on a new connection to `admin`: the raw answer (empty if it was closed or
/// reset without one — a reset can come before the connect has returned).
async fn admin_raw(admin: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let Ok(mut c) = TcpStream::connect(admin).await else {
        return Vec::new();
    };
    let _ = c
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    out
}

/// The admin endpoint holds at most 64 connections: more are closed at once, without an
/// answer, and counted; a freed slot serves again. It runs on a thread of its own, so a
/// flood of admin requests never competes with the health checks on the main thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_caps_its_connections_on_a_thread_of_its_own() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lb.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "apilb-admin"), "{threads:?}");

    // 64 connections that say nothing (yet): each holds a slot.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(lb.admin).await.unwrap());
    }
    // The 65th is closed without an answer (the kernel's queue is first in, first out: it
    // is accepted after the 64).
    let answer = admin_raw(lb.admin, "/healthz").await;
    assert!(
        answer.is_empty(),
        "served past the limit: {}",
        String::from_utf8_lossy(&answer)
    );
    // A slot freed: served again, once apilb has seen that connection end.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if parse_response(&admin_raw(lb.admin, "/healthz").await).0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot after a connection ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rejected = lb
        .metric("apilb_admin_connections_rejected_total", &[])
        .await;
    assert!(rejected >= 1.0, "{rejected}");
    drop(held);
}
