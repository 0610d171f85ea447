//! `apilb run` as a proxy: bytes, half-close, TLS with client certificates end to end,
//! reload, drain, the connection limit, IPv6 and host-name servers, running out of
//! descriptors, and the half-closed and idle timeouts. The admin endpoint is
//! `tests/admin.rs`'s, the command line's errors and help `tests/cli.rs`'s.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_exact_both_ways_and_half_close_propagated() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    // The stand-in's raw mode echoes every byte, and only after it sees our FIN sends its
    // trailer: the trailer proves the half-close went through, the echo that bytes are exact.
    let payload: Vec<u8> = (0..30_000_000u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let c = TcpStream::connect(lb.listen).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    let _w = writer.await.unwrap();
    let trailer = b"bye from cp1\n";
    assert_eq!(back.len(), payload.len() + trailer.len());
    assert!(back[..payload.len()] == payload[..], "bytes differ");
    assert_eq!(&back[payload.len()..], trailer);
    // The bulk went through pipes (splice), and the byte counters still count the bytes.
    let spliced = lb.metric("apilb_spliced_bytes_total", &[]).await;
    assert!(spliced > 0.0, "nothing was spliced");
    let up = lb
        .metric("apilb_bytes_total", &["direction=\"to_server\""])
        .await;
    let down = lb
        .metric("apilb_bytes_total", &["direction=\"to_client\""])
        .await;
    // Every byte each way, those sent before the server's first byte included.
    assert_eq!(up, payload.len() as f64);
    assert_eq!(down, (payload.len() + trailer.len()) as f64);
    assert!(spliced <= up + down, "{spliced} spliced of {}", up + down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_client_certificates_pass_through_untouched() {
    let pki = Pki::new();
    // This stand-in requires a client certificate signed by the cluster CA.
    let s = Standin::start_opts(&pki, free_port([127, 0, 0, 2]), "cp1", true);
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let lb = Apilb::start(
        &pki,
        &[&s],
        &["--health-client-cert", &cert, "--health-client-key", &key],
    );
    lb.wait_all_ready(&[&s]);
    // Through apilb on 127.0.0.1, verifying the apiserver certificate (name "kubernetes")
    // and presenting the client certificate: the server sees it.
    let (code, body) = request(lb.listen, &pki, "GET", "/whoami", true)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["client_cert"], true);
    assert_eq!(v["server"], "cp1");
    // Without one, the server refuses the handshake, exactly as it would directly.
    assert!(request(lb.listen, &pki, "GET", "/whoami", false)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_change_reload_the_server_list() {
    let pki = Pki::new();
    let s1 = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let s2 = Standin::start(&pki, [127, 0, 0, 3], "cp2");
    let s3 = Standin::start(&pki, [127, 0, 0, 4], "cp3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apilb.yaml");
    let write = |servers: &[&Standin]| {
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("  - \"{}\"", s.addr))
            .collect();
        std::fs::write(
            &cfg,
            format!(
                "ca-file: {}\nserver:\n{}\n",
                pki.ca.display(),
                list.join("\n")
            ),
        )
        .unwrap();
    };
    write(&[&s1, &s2]);
    let lb = Apilb::start_args(vec!["--config".into(), cfg.display().to_string()], None);
    lb.wait_all_ready(&[&s1, &s2]);
    let mut ws = watches_on(lb.listen, &pki, &["cp1", "cp2"]).await;

    // SIGHUP with cp2 replaced by cp3: cp2's stream closes, cp1's is untouched.
    let mark = lb.mark();
    write(&[&s1, &s3]);
    lb.signal(libc::SIGHUP);
    let st = reloaded(&lb, 1, "SIGHUP").await;
    assert_eq!(names(&st), [s1.addr.to_string(), s3.addr.to_string()]);
    ws[1].closed_within(Duration::from_secs(10)).await;
    ws[0].still_flowing().await;
    lb.wait_state(&mark, s3.addr, "ready", Duration::from_secs(10));
    let (ok, failed) = many_whoami(lb.listen, &pki, 20).await;
    assert!(failed.is_empty());
    assert!(ok.iter().all(|n| n != "cp2"));
    assert!(ok.iter().any(|n| n == "cp3"));

    // A change of the file alone (no signal) is picked up too.
    write(&[&s1, &s2, &s3]);
    let st = reloaded(&lb, 2, "config file changed").await;
    assert_eq!(names(&st).len(), 3);
    // A broken file is refused and the servers kept.
    std::fs::write(&cfg, "server: [\n").unwrap();
    lb.signal(libc::SIGHUP);
    let st = lb
        .status_until("the refused reload", Duration::from_secs(10), |st| {
            st["reload"]["failures"] == 1
        })
        .await;
    assert_eq!(st["reload"]["last_result"], "failed", "{st:#}");
    assert_eq!(st["reload"]["reloads"], 2, "{st:#}");
    assert_eq!(names(&st).len(), 3);
    drop(ws);
}

/// Waits until `/status` counts `n` applied reloads, the last one for `cause`; returns it.
async fn reloaded(lb: &Apilb, n: u64, cause: &str) -> serde_json::Value {
    let st = lb
        .status_until(&format!("reload {n}"), Duration::from_secs(10), |st| {
            st["reload"]["reloads"].as_u64() >= Some(n)
        })
        .await;
    assert_eq!(st["reload"]["reloads"], n, "{st:#}");
    assert_eq!(st["reload"]["last_result"], "ok", "{st:#}");
    assert_eq!(st["reload"]["last_cause"], cause, "{st:#}");
    st
}

/// The servers in the set, as `/status` lists them.
fn names(st: &serde_json::Value) -> Vec<String> {
    st["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["server"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let mut lb = Apilb::start(&pki, &[&s], &["--drain-grace", "2s"]);
    lb.wait_all_ready(&[&s]);
    let mut w = Watch::open(lb.listen, &pki).await;
    let st = lb.status().await;
    assert_eq!(st["phase"], "running", "{st:#}");
    lb.signal(libc::SIGTERM);
    // Draining: the open stream is still there (kept, not closed at the signal) …
    let st = lb
        .status_until("draining", Duration::from_secs(5), |st| {
            st["phase"] != "running"
        })
        .await;
    assert_eq!(st["phase"], "draining", "{st:#}");
    assert_eq!(st["client_connections"], 1, "{st:#}");
    // … then, the grace over, closed; and the process exits cleanly.
    w.closed_within(Duration::from_secs(10)).await;
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(TcpStream::connect(lb.listen).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_closes_the_excess_and_counts_it() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &["--max-connections", "2"]);
    lb.wait_all_ready(&[&s]);
    let _a = Watch::open(lb.listen, &pki).await;
    let _b = Watch::open(lb.listen, &pki).await;
    assert!(
        whoami(lb.listen, &pki).await.is_err(),
        "third connection was served"
    );
    let (_, metrics) = lb.admin_get("/metrics").await;
    assert!(
        metrics.contains("apilb_connections_rejected_total{reason=\"connection_limit\"} 1"),
        "{metrics}"
    );
    drop(_a);
    // Room again once apilb counts that connection gone: the number the limit is checked
    // against is the one `/status` shows.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = lb.status().await["client_connections"].as_u64();
        if open == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client connections: {open:?}, not 1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        whoami(lb.listen, &pki).await.is_ok(),
        "no room after a connection ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_host_name_servers() {
    let pki = Pki::new();
    // A server given by host name: `localhost` resolves to 127.0.0.1 here. Its certificate
    // does not hold "localhost", so health checks verify against the name it does hold.
    let s = Standin::start(&pki, [127, 0, 0, 1], "cp1");
    let v6 = {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = format!("localhost:{}", s.addr.port());
    let v6s = v6.to_string();
    let ca = pki.ca.display().to_string();
    let mut lb_args: Vec<String> = [
        "--server",
        &server,
        "--ca-file",
        &ca,
        "--health-tls-server-name",
        SERVER_NAME,
        "--listen",
        &v6s,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let lb = Apilb::start_args(std::mem::take(&mut lb_args), None);
    // Named as given: by host name.
    lb.wait_state(&Mark::START, &server, "ready", Duration::from_secs(10));
    let st = lb.status().await;
    assert_eq!(st["servers"][0]["addresses"][0], s.addr.to_string());
    // Both listeners serve: the default-style IPv4 one and [::1].
    assert_eq!(whoami(lb.listen, &pki).await.unwrap(), "cp1");
    assert_eq!(whoami(v6, &pki).await.unwrap(), "cp1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_backs_off_keeps_serving_and_recovers() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &[]);
    lb.wait_all_ready(&[&s]);
    // Waiting asked the admin endpoint: its last connection is not to be counted.
    lb.wait_admin_idle(Duration::from_secs(5));
    // Leave apilb exactly four free descriptors: two proxied connections' worth.
    let open = std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
        .unwrap()
        .count() as u64;
    let lim = libc::rlimit {
        rlim_cur: open + 4,
        rlim_max: open + 4,
    };
    // SAFETY: prlimit(2) reads `new` and writes `old`, both live structs on this stack (or
    // null where unused).
    #[allow(unsafe_code)]
    let set = unsafe { libc::prlimit(lb.pid(), libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(set, 0);
    let mut w1 = Watch::open(lb.listen, &pki).await;
    let mut w2 = Watch::open(lb.listen, &pki).await;
    let mark = lb.log_mark();
    // Failures start after this instant: the rate limit below is judged from here.
    let shortage_began = Instant::now();
    // A third client: the kernel completes its handshake, apilb cannot accept it yet.
    let addr = lb.listen;
    let pki2 = pki.share();
    let third_task = tokio::spawn(async move { whoami(addr, &pki2).await });
    // Out of descriptors either at accept (the client waits in the backlog) or at the
    // upstream connect (the client is closed at once and counted); never a server's fault.
    // The log is read here, not the admin endpoint: asking it would take a descriptor of
    // the few left (and its answer would wait for one); and the rate-limited log line is a
    // feature under test (below).
    let hit = lb.wait_log_from(&mark, Duration::from_secs(10), |v| {
        v["message"] == "accept failed"
            || v["message"]
                .as_str()
                .is_some_and(|m| m.contains("out of local resources"))
    });
    let at_accept = hit["message"] == "accept failed";
    let cause = if at_accept {
        &hit["error"]
    } else {
        &hit["cause"]
    };
    assert!(
        cause
            .as_str()
            .is_some_and(|c| c.contains("Too many open files")),
        "{hit}"
    );
    // The connections it has keep flowing.
    w1.still_flowing().await;
    w2.still_flowing().await;
    let third_task = if at_accept {
        Some(third_task)
    } else {
        let r = third_task.await.unwrap();
        assert!(r.is_err(), "served without a descriptor?");
        let (_, metrics) = lb.admin_get("/metrics").await;
        assert!(
            metrics.contains("reason=\"local_resources\"} 1"),
            "{metrics}"
        );
        None
    };
    // Not blamed: the server was never marked (a mark is logged once per spell; the admin
    // endpoint's flag could be cleared again by a check before we could ask).
    assert!(
        !lb.logs()
            .iter()
            .any(|v| v["failure"] == "connect" && v["server"] == s.addr.to_string()),
        "the server was blamed for our own descriptor shortage"
    );
    // Descriptors free up: clients are served again without anyone restarting anything.
    drop(w1);
    if third_task.is_none() {
        // Nothing waits in the backlog to take them: apilb's own descriptor table shows
        // w1's two (client and server side) closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_dir(format!("/proc/{}/fd", lb.pid()))
            .unwrap()
            .count() as u64
            > open + 2
        {
            assert!(
                Instant::now() < deadline,
                "w1's descriptors were not closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Some(waiting) = third_task {
        // It waited in the backlog; now it is taken, and either served or — if the freed
        // descriptors went elsewhere first — closed cleanly and counted. Never left hanging.
        let r = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the backlogged client was left hanging")
            .unwrap();
        if r.is_err() {
            let (_, metrics) = lb.admin_get("/metrics").await;
            assert!(metrics.contains("reason=\"local_resources\"}"), "{metrics}");
        }
    }
    let mut served = None;
    for _ in 0..3 {
        if let Ok(name) = whoami(lb.listen, &pki).await {
            served = Some(name);
            break;
        }
    }
    assert_eq!(served.as_deref(), Some("cp1"));
    // Rate-limited: one line per 5 s of shortage at most (the workers share the limit),
    // not one per retry. The shortage lasted no longer than this test has run since it began.
    let lines = lb
        .logs()
        .iter()
        .filter(|v| v["message"] == "accept failed")
        .count();
    let allowed = 1 + (shortage_began.elapsed().as_secs() / 5) as usize;
    assert!(
        lines <= allowed,
        "{lines} accept-failure lines in {:?}",
        shortage_began.elapsed()
    );
}

/// A server that never closes a connection (a hung process, a peer gone half away): it
/// greets each connection with `hi`, then echoes what it reads, except that a first `F`
/// makes it end its own side (FIN) at once; after that, or after the client's FIN, it holds
/// the socket open forever. apilb's health checks get the same and call it not ready,
/// which leaves it the only server to try (panic mode).
async fn never_closing_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = c.write_all(b"hi").await;
                let mut buf = [0u8; 1024];
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) if buf[0] == b'F' => {
                            let _ = c.shutdown().await;
                        }
                        Ok(n) => {
                            if c.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                std::future::pending::<()>().await;
                drop(c);
            });
        }
    });
    addr
}

/// Waits until apilb has no client connection; how long that took from `since`.
async fn connections_gone(lb: &Apilb, since: Instant, within: Duration) -> Duration {
    loop {
        if lb.status().await["client_connections"] == 0 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "a connection is still open after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection one side has half-closed is closed once the other side has not followed
/// within --half-closed-timeout, in both directions: the client ended its side and the
/// server never does, or the server ended its side (a leaving apiserver's FIN, passed
/// through) and the client never does. A connection that carries nothing for
/// --idle-timeout is closed; one that keeps moving is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_and_idle_connections_are_closed_after_their_timeouts() {
    let server = never_closing_server().await;
    let (half, idle) = (Duration::from_secs(1), Duration::from_secs(2));
    let lb = Apilb::start_args(
        vec![
            "--server".into(),
            server.to_string(),
            "--health-insecure-skip-verify".into(),
            "--half-closed-timeout".into(),
            "1s".into(),
            "--idle-timeout".into(),
            "2s".into(),
        ],
        None,
    );
    // apilb connects a server only once the client has spoken: speak first.
    let greeted = || async {
        let mut c = TcpStream::connect(lb.listen).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut hi = [0u8; 3];
        c.read_exact(&mut hi).await.unwrap();
        assert_eq!(&hi, b"hix");
        c
    };
    let timed_out = |which: &'static str| {
        let lb = &lb;
        async move {
            lb.metric(
                "apilb_connections_timed_out_total",
                &[&format!("timeout=\"{which}\"")],
            )
            .await
        }
    };

    // The client ends its side; the server never ends its own.
    let mut c = greeted().await;
    let since = Instant::now();
    c.shutdown().await.unwrap();
    let took = connections_gone(&lb, since, Duration::from_secs(10)).await;
    assert!(took >= half, "closed after {took:?}");
    assert_eq!(timed_out("half_closed").await, 1.0);

    // The server ends its side; the client keeps its own open (and reads the EOF).
    let mut c = greeted().await;
    let since = Instant::now();
    c.write_all(b"F").await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let took = connections_gone(&lb, since, Duration::from_secs(10)).await;
    assert!(took >= half, "closed after {took:?}");
    assert_eq!(timed_out("half_closed").await, 2.0);
    drop(c);

    // Moving every 500 ms for three seconds (longer than the idle timeout): kept.
    let mut c = greeted().await;
    let mut since = Instant::now();
    for _ in 0..6 {
        since = Instant::now();
        c.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        c.read_exact(&mut echo).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(lb.status().await["client_connections"], 1);
    // Then quiet: closed an idle timeout after the last byte.
    let took = connections_gone(&lb, since, Duration::from_secs(10)).await;
    assert!(took >= idle, "closed after {took:?}");
    assert_eq!(timed_out("idle").await, 1.0);
    assert_eq!(timed_out("half_closed").await, 2.0);
}
