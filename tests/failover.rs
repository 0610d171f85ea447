//! `apilb run` against three stand-in apiservers on 127.0.0.2–4, under each fault of the
//! failure model: killed, blackholed in the kernel, frozen (SIGSTOP), not ready, recovered,
//! all down. Deadlines below are generous bounds on events, not performance claims (those
//! live in bench/): without the feature under test, each would wait for minutes.

mod common;

use std::time::Duration;

use common::*;

fn three(pki: &Pki) -> [Standin; 3] {
    [
        Standin::start(pki, [127, 0, 0, 2], "cp1"),
        Standin::start(pki, [127, 0, 0, 3], "cp2"),
        Standin::start(pki, [127, 0, 0, 4], "cp3"),
    ]
}

/// apilb in front of `s`, all ready, with health checks slowed to a crawl (one per hour):
/// whatever happens next is up to passive failover alone.
fn without_active_checks(pki: &Pki, s: &[Standin; 3]) -> Apilb {
    let lb = Apilb::start(
        pki,
        &[&s[0], &s[1], &s[2]],
        &[
            "--health-ping-interval",
            "1h",
            "--health-readyz-interval",
            "1h",
        ],
    );
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_new_connections_over_ready_servers() {
    let pki = Pki::new();
    let s = three(&pki);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let (ok, failed) = many_whoami(lb.listen, &pki, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    for name in ["cp1", "cp2", "cp3"] {
        assert!(ok.iter().any(|s| s == name), "{name} got nothing: {ok:?}");
    }
    // Least connections: three long streams land on three different servers.
    let w1 = Watch::open(lb.listen, &pki).await;
    let w2 = Watch::open(lb.listen, &pki).await;
    let w3 = Watch::open(lb.listen, &pki).await;
    let mut names = vec![w1.server, w2.server, w3.server];
    names.sort();
    assert_eq!(names, ["cp1", "cp2", "cp3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_no_client_visible_failures() {
    let pki = Pki::new();
    let mut s = three(&pki);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let mut ws = watches_on(lb.listen, &pki, &["cp1", "cp2"]).await;
    let mark = lb.mark();
    s[1].kill();
    // New connections right after the kill, before or after health notices: none fails.
    let (ok, failed) = many_whoami(lb.listen, &pki, 30).await;
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    assert!(ok.iter().all(|n| n != "cp2"));
    // Its kernel reset the health connection and refuses new ones: the server said it is
    // gone (draining), and its kernel already ended the client streams.
    lb.wait_state(&mark, s[1].addr, "draining", Duration::from_secs(10));
    ws[1].closed_within(Duration::from_secs(10)).await;
    ws[0].still_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_streams_closed_new_connections_succeed() {
    let pki = Pki::new();
    let s = three(&pki);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let mut ws = watches_on(lb.listen, &pki, &["cp1", "cp2", "cp3"]).await;
    let mark = lb.mark();
    let _hole = Blackhole::new(s[1].addr);
    let start = std::time::Instant::now();
    // New connections during the blackhole all succeed (connect racing) …
    let (ok, failed) = many_whoami(lb.listen, &pki, 20).await;
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    assert!(ok.iter().all(|n| n != "cp2"));
    // … the stream pinned to it is closed by apilb (the kernel would take minutes, client-go
    // alone 45 s; bench/run's failover phase measures how fast) …
    ws[1].closed_within(Duration::from_secs(15)).await;
    eprintln!(
        "stream on the blackholed server closed {:?} after the blackhole",
        start.elapsed()
    );
    lb.wait_state(&mark, s[1].addr, "down", Duration::from_secs(1));
    // … and streams on the other servers are untouched.
    ws[0].still_flowing().await;
    ws[2].still_flowing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_before_health_notices_is_saved_by_connect_racing() {
    let pki = Pki::new();
    let s = three(&pki);
    // Only passive failover can save these connections.
    let lb = without_active_checks(&pki, &s);
    let _hole = Blackhole::new(s[1].addr);
    let (ok, failed) = many_whoami(lb.listen, &pki, 20).await;
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    assert!(ok.iter().all(|n| n != "cp2"));
    // It was tried and raced away from (counted as it happened: no wait) …
    let server = format!("server=\"{}\"", s[1].addr);
    let lost = lb
        .metric(
            "apilb_connect_attempts_total",
            &[&server, "result=\"lost_race\""],
        )
        .await;
    assert!(lost >= 1.0, "no connect to {} lost a race", s[1].addr);
    // … then kept away: marked until a health check passes (there are none here).
    let st = lb.status().await;
    let cp2 = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["server"] == s[1].addr.to_string().as_str())
        .unwrap();
    assert_eq!(cp2["connect_failed"], true, "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_saved_by_first_byte_racing() {
    let pki = Pki::new();
    let s = three(&pki);
    // Only first-byte racing can save these connections.
    let lb = without_active_checks(&pki, &s);
    s[1].freeze();
    let (ok, failed) = many_whoami(lb.listen, &pki, 20).await;
    s[1].thaw();
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    assert!(ok.iter().all(|n| n != "cp2"), "{ok:?}");
    let (_, metrics) = lb.admin_get("/metrics").await;
    let replays: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("apilb_first_byte_replays_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("replay counter");
    assert!(replays >= 1.0, "no replay happened:\n{metrics}");
    // Frozen means failed: after losing one race, it got no new connection (without a
    // passed health check: checks are an hour apart here).
    assert_eq!(
        replays, 1.0,
        "the frozen server kept getting new connections"
    );
    let st = lb.status().await;
    assert_eq!(st["servers"][1]["connect_failed"], true, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_marked_down_and_its_streams_closed() {
    let pki = Pki::new();
    let s = three(&pki);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let mut ws = watches_on(lb.listen, &pki, &["cp1", "cp2"]).await;
    let mark = lb.mark();
    s[1].freeze();
    let start = std::time::Instant::now();
    let (_, failed) = many_whoami(lb.listen, &pki, 10).await;
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    ws[1].closed_within(Duration::from_secs(15)).await;
    eprintln!(
        "stream on the frozen server closed {:?} after the freeze",
        start.elapsed()
    );
    lb.wait_state(&mark, s[1].addr, "down", Duration::from_secs(1));
    ws[0].still_flowing().await;
    s[1].thaw();
    // Recovery: it comes back and takes new connections again.
    lb.wait_state(&mark, s[1].addr, "ready", Duration::from_secs(15));
    let (ok, failed) = many_whoami(lb.listen, &pki, 30).await;
    assert!(failed.is_empty());
    assert!(
        ok.iter().any(|n| n == "cp2"),
        "recovered server got nothing: {ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_server_gets_no_new_connections_but_keeps_its_streams() {
    let pki = Pki::new();
    let s = three(&pki);
    let lb = Apilb::start(
        &pki,
        &[&s[0], &s[1], &s[2]],
        &["--health-readyz-interval", "1s"],
    );
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let mut ws = watches_on(lb.listen, &pki, &["cp2"]).await;
    let mark = lb.mark();
    s[1].set_readyz(&pki, 500).await;
    lb.wait_state(&mark, s[1].addr, "not_ready", Duration::from_secs(15));
    let (ok, failed) = many_whoami(lb.listen, &pki, 30).await;
    assert!(failed.is_empty());
    assert!(ok.iter().all(|n| n != "cp2"), "not-ready server got {ok:?}");
    ws[0].still_flowing().await;
    // Least connections would keep new connections off a server with an open stream.
    drop(ws);

    let mark = lb.mark();
    s[1].set_readyz(&pki, 200).await;
    lb.wait_state(&mark, s[1].addr, "ready", Duration::from_secs(15));
    let (ok, _) = many_whoami(lb.listen, &pki, 30).await;
    assert!(
        ok.iter().any(|n| n == "cp2"),
        "recovered server got nothing: {ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_401_counts_as_reachable_with_one_warning() {
    let pki = Pki::new();
    let s = [Standin::start(&pki, [127, 0, 0, 2], "cp1")];
    s[0].set_readyz(&pki, 401).await;
    let lb = Apilb::start(&pki, &[&s[0]], &["--health-readyz-interval", "100ms"]);
    lb.wait_all_ready(&[&s[0]]);
    // The warning is the feature under test: it names the fix, once.
    let warn = lb.wait_log(Duration::from_secs(5), |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("--health-client-cert"))
    });
    assert_eq!(warn["status"], 401);
    // Several probes later (each answered /readyz is timed), still exactly one warning.
    let server = format!("server=\"{}\"", s[0].addr);
    let labels = [server.as_str(), "check=\"readyz\""];
    let probes = lb
        .metric("apilb_health_check_duration_seconds_count", &labels)
        .await;
    lb.metric_at_least(
        "apilb_health_check_duration_seconds_count",
        &labels,
        probes + 3.0,
        Duration::from_secs(15),
    )
    .await;
    let st = lb.status().await;
    assert_eq!(st["servers"][0]["readyz_status"], 401, "{st:#}");
    assert_eq!(st["servers"][0]["state"], "ready", "{st:#}");
    let (ok, _) = many_whoami(lb.listen, &pki, 3).await;
    assert_eq!(ok.len(), 3);
    let warnings = lb
        .logs()
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("--health-client-cert"))
        })
        .count();
    assert_eq!(warnings, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_fails_fast_then_recovers() {
    let pki = Pki::new();
    let mut s = three(&pki);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    lb.wait_all_ready(&[&s[0], &s[1], &s[2]]);
    let mark = lb.mark();
    for x in s.iter_mut() {
        x.kill();
    }
    // The client fails, quickly and cleanly, instead of hanging.
    let r = tokio::time::timeout(Duration::from_secs(5), whoami(lb.listen, &pki)).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "expected a quick failure, got {r:?}"
    );
    for x in &s {
        lb.wait_state(&mark, x.addr, "draining", Duration::from_secs(10));
    }
    let (code, _) = lb.admin_get("/readyz").await;
    assert_eq!(code, 503);
    // No server ready or unchecked: panic mode, every server tried.
    lb.wait_metric("apilb_panic_mode", &[], 1.0, Duration::from_secs(5))
        .await;
    // Panic mode: the first server back is used at once, before health calls it ready.
    s[2].restart();
    let name = tokio::time::timeout(Duration::from_secs(5), whoami(lb.listen, &pki))
        .await
        .expect("no answer")
        .expect("failed after a server came back");
    assert_eq!(name, "cp3");
    lb.wait_state(&mark, s[2].addr, "ready", Duration::from_secs(15));
    let (code, _) = lb.admin_get("/readyz").await;
    assert_eq!(code, 200);
    lb.wait_metric("apilb_panic_mode", &[], 0.0, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_server_is_checked_with_keepalive_readyz() {
    let pki = Pki::new();
    let mut s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    s.http1_only = true;
    s.restart();
    let lb = Apilb::start(&pki, &[&s], &["--health-readyz-interval", "200ms"]);
    lb.wait_all_ready(&[&s]);
    let st = lb.status().await;
    assert_eq!(st["servers"][0]["protocol"], "http/1.1");
    let mark = lb.mark();
    s.set_readyz(&pki, 500).await;
    lb.wait_state(&mark, s.addr, "not_ready", Duration::from_secs(10));
    // Over HTTP/1.1 the readiness request is the liveness probe too.
    let mark = lb.mark();
    s.freeze();
    lb.wait_state(&mark, s.addr, "down", Duration::from_secs(15));
    s.thaw();
}

/// A /readyz answer whose head is larger than apilb reads is reported as what it is (cause
/// `oversized`: alive, not ready), not as the server closing the connection, which would
/// call the server leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_readyz_head_is_reported_as_oversized() {
    let pki = Pki::new();
    let mut s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    s.http1_only = true;
    s.restart();
    let lb = Apilb::start(&pki, &[&s], &["--health-readyz-interval", "200ms"]);
    lb.wait_all_ready(&[&s]);
    let mark = lb.mark();
    let (code, _) = request(
        s.addr,
        &pki,
        "PUT",
        "/-/readyz?status=200&header_bytes=1000000",
        false,
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    lb.wait_state(&mark, s.addr, "not_ready", Duration::from_secs(10));
    let failures = |cause: &'static str| {
        let lb = &lb;
        async move {
            lb.metric(
                "apilb_health_failures_total",
                &[&format!("cause=\"{cause}\"")],
            )
            .await
        }
    };
    assert!(failures("oversized").await >= 1.0);
    assert_eq!(failures("closed").await, 0.0);
}

/// Panic mode is entered when the last ready server stops being ready and left when one is
/// ready again, with no client connection in between: the control plane sets the gauge (and
/// logs) when states change, not the next client's accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_follows_health_without_client_traffic() {
    let pki = Pki::new();
    let s = [
        Standin::start(&pki, [127, 0, 0, 2], "cp1"),
        Standin::start(&pki, [127, 0, 0, 3], "cp2"),
    ];
    let lb = Apilb::start(
        &pki,
        &[&s[0], &s[1]],
        &["--health-readyz-interval", "200ms"],
    );
    lb.wait_all_ready(&[&s[0], &s[1]]);
    lb.wait_metric("apilb_panic_mode", &[], 0.0, Duration::from_secs(5))
        .await;

    s[0].set_readyz(&pki, 500).await;
    lb.wait_status(s[0].addr, "not_ready", Duration::from_secs(15))
        .await;
    // One server is still ready: no panic.
    lb.wait_metric("apilb_panic_mode", &[], 0.0, Duration::from_secs(5))
        .await;
    s[1].set_readyz(&pki, 500).await;
    lb.wait_metric("apilb_panic_mode", &[], 1.0, Duration::from_secs(15))
        .await;
    assert_eq!(lb.state_of(s[1].addr).await, "not_ready");

    s[1].set_readyz(&pki, 200).await;
    lb.wait_metric("apilb_panic_mode", &[], 0.0, Duration::from_secs(15))
        .await;
    assert_eq!(lb.state_of(s[1].addr).await, "ready");
}

/// The kubelet rotates its client certificate by re-pointing `kubelet-client-current.pem`
/// at a new file. apilb's health checks present the new one from their next connection on;
/// read only at start, they would keep presenting one the node has replaced (and, a year
/// on, an expired one that a restarted apiserver refuses: a healthy server read as down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_a_rotated_client_certificate() {
    let pki = Pki::new();
    let mut s = Standin::start_opts(&pki, free_port([127, 0, 0, 2]), "cp1", true);
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1) = pki.issue_client("system:node:test-node");
    let (c2, k2) = pki.issue_client("system:node:test-node");
    std::fs::write(dir.path().join("a.pem"), format!("{c1}{k1}")).unwrap();
    std::fs::write(dir.path().join("b.pem"), format!("{c2}{k2}")).unwrap();
    let current = dir.path().join("kubelet-client-current.pem");
    std::os::unix::fs::symlink("a.pem", &current).unwrap();
    let cur = current.to_str().unwrap();
    let lb = Apilb::start(
        &pki,
        &[&s],
        &[
            "--health-client-cert",
            cur,
            "--health-client-key",
            cur,
            "--health-readyz-interval",
            "100ms",
        ],
    );
    lb.wait_all_ready(&[&s]);
    assert_eq!(
        s.last_client_fp(&pki, "/-/last-readyz-client").await,
        cert_fp(&c1)
    );

    // The kubelet's rotation: the symlink re-pointed in one rename.
    let tmp = dir.path().join("tmp-link");
    std::os::unix::fs::symlink("b.pem", &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    // The server restarts: apilb's health check connects (and shakes hands) again.
    s.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fp = s.last_client_fp(&pki, "/-/last-readyz-client").await;
        if fp == cert_fp(&c2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the health checks still present {} (the certificate before the rotation: {})",
            fp,
            cert_fp(&c1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lb.wait_all_ready(&[&s]);
}
