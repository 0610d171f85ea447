//! Silence closes, speech drains: `apilb run` against stand-ins that shut down the way
//! kube-apiserver does on SIGTERM (`/readyz` fails, the shutdown delay, the listener closes,
//! GOAWAY, in-flight responses finish, watches end with their final chunk, exit), and
//! against a latency spike on every path. Each runs under load: a new connection every
//! ~100 ms, slow responses checked byte for byte, and a watch on every server.
//!
//! What each asserts is what kubespray's nginx and HAProxy already give (they never close a
//! client connection themselves) and apilb must not take away: nothing in flight on a leaving
//! server is cut, no new request fails, and a spike on every path resets no healthy stream.
//! The deadlines are generous bounds on events, not performance claims.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const IPS: [[u8; 4]; 3] = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];
const NAMES: [&str; 3] = ["cp1", "cp2", "cp3"];
/// Bytes in each slow response, and how long it takes.
const SLOW_BYTES: usize = 256 * 1024;

fn graceful_three(pki: &Pki, delay: Duration) -> [Standin; 3] {
    [0, 1, 2].map(|i| Standin::start_graceful(pki, IPS[i], NAMES[i], delay))
}

async fn ready(lb: &Apilb, servers: &[&Standin]) {
    for s in servers {
        lb.wait_status(s.addr, "ready", Duration::from_secs(15))
            .await;
    }
}

/// Slow responses until `want` are in flight on `name` (the others are kept and checked too).
async fn slows_on(lb: &Apilb, pki: &Pki, name: &str, want: usize, ms: u64) -> Vec<Slow> {
    let mut all = Vec::new();
    for _ in 0..60 {
        all.push(Slow::start(lb.listen, pki, SLOW_BYTES, ms).await);
        if all.iter().filter(|s| s.server == name).count() >= want {
            return all;
        }
    }
    panic!("could not pin {want} slow responses to {name}");
}

async fn connects_ok(lb: &Apilb, server: SocketAddr) -> f64 {
    lb.metric(
        "apilb_connect_attempts_total",
        &[&format!("server=\"{server}\""), "result=\"ok\""],
    )
    .await
}

async fn goaways(lb: &Apilb, server: SocketAddr) -> f64 {
    lb.metric(
        "apilb_health_failures_total",
        &[&format!("server=\"{server}\""), "cause=\"goaway\""],
    )
    .await
}

async fn closed_by_apilb(lb: &Apilb) -> f64 {
    lb.metric("apilb_failover_closed_connections_total", &[])
        .await
}

/// One graceful shutdown of `leaving` (index into `s`) under load; checks everything the
/// issue asks of it and returns once the stand-in has exited.
async fn shut_down_gracefully(lb: &Apilb, pki: &Pki, s: &mut [Standin; 3], leaving: usize) {
    let delay = s[leaving].graceful.expect("a graceful stand-in");
    let slow_ms = delay.as_millis() as u64 + 2_000;
    let mut watches = watches_on(lb.listen, pki, &NAMES).await;
    let slows = slows_on(lb, pki, NAMES[leaving], 2, slow_ms).await;
    let closed_before = closed_by_apilb(lb).await;

    s[leaving].terminate();
    // After the delay the listener closes and GOAWAY comes: apilb hears it and drains.
    lb.wait_status(s[leaving].addr, "draining", delay + Duration::from_secs(10))
        .await;
    let connects_at_goaway = connects_ok(lb, s[leaving].addr).await;

    // Everything in flight on the leaving server completes intact…
    for slow in slows {
        let on = slow.server.clone();
        let r = tokio::time::timeout(Duration::from_secs(30), slow.done)
            .await
            .expect("slow response never finished")
            .unwrap();
        assert_eq!(r, Ok(()), "slow response on {on} was cut");
    }
    // …its watch is ended by the server, cleanly…
    let w = &mut watches[leaving];
    assert_eq!(
        w.end(Duration::from_secs(30)).await,
        Ok(()),
        "the watch on the leaving {} was not ended cleanly",
        w.server
    );
    // …the others keep flowing, and the server exits on its own.
    for (i, w) in watches.iter_mut().enumerate() {
        if i != leaving {
            w.still_flowing().await;
        }
    }
    assert_eq!(s[leaving].exited(Duration::from_secs(30)).await, Some(0));
    assert_eq!(
        connects_ok(lb, s[leaving].addr).await,
        connects_at_goaway,
        "a new connection reached the leaving server after its GOAWAY"
    );
    assert_eq!(
        closed_by_apilb(lb).await,
        closed_before,
        "apilb closed client connections of a server that said it was leaving"
    );
}

async fn graceful_shutdown_loses_nothing(delay: Duration) {
    let pki = Pki::new();
    let mut s = graceful_three(&pki, delay);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    ready(&lb, &[&s[0], &s[1], &s[2]]).await;
    let load = Load::start(lb.listen, &pki);
    shut_down_gracefully(&lb, &pki, &mut s, 1).await;
    let (ok, failed) = load.stop().await;
    assert!(failed.is_empty(), "new requests failed: {failed:?}");
    assert!(ok.len() >= 10, "only {} requests made", ok.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_without_delay_loses_nothing() {
    graceful_shutdown_loses_nothing(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_a_delay_loses_nothing() {
    graceful_shutdown_loses_nothing(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_server_loses_nothing() {
    let pki = Pki::new();
    let mut s = graceful_three(&pki, Duration::ZERO);
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    ready(&lb, &[&s[0], &s[1], &s[2]]).await;
    let load = Load::start(lb.listen, &pki);
    for i in 0..3 {
        shut_down_gracefully(&lb, &pki, &mut s, i).await;
        s[i].restart();
        lb.wait_status(s[i].addr, "ready", Duration::from_secs(15))
            .await;
    }
    let (ok, failed) = load.stop().await;
    assert!(failed.is_empty(), "new requests failed: {failed:?}");
    for name in NAMES {
        assert!(ok.iter().any(|n| n == name), "{name} got nothing: {ok:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_from_a_server_that_stays_up_drains_then_returns() {
    let pki = Pki::new();
    let s = [0, 1, 2].map(|i| Standin::start(&pki, IPS[i], NAMES[i]));
    let lb = Apilb::start(&pki, &[&s[0], &s[1], &s[2]], &[]);
    ready(&lb, &[&s[0], &s[1], &s[2]]).await;
    let mut watches = watches_on(lb.listen, &pki, &NAMES).await;
    assert_eq!(goaways(&lb, s[1].addr).await, 0.0);
    s[1].goaway(&pki).await;
    // Heard at once (not at the next /readyz, 30 s away by default)…
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while goaways(&lb, s[1].addr).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "GOAWAY not heard");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // …and, the server being up, a 2xx /readyz on the new connection brings it back.
    lb.wait_status(s[1].addr, "ready", Duration::from_secs(10))
        .await;
    for w in watches.iter_mut() {
        w.still_flowing().await;
    }
    assert_eq!(closed_by_apilb(&lb).await, 0.0);
    let (ok, failed) = many_whoami(lb.listen, &pki, 30).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        ok.iter().any(|n| n == "cp2"),
        "back, but got nothing: {ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_spike_on_every_path_resets_no_stream() {
    let pki = Pki::new();
    let s = [0, 1, 2].map(|i| Standin::start(&pki, IPS[i], NAMES[i]));
    // Each server behind a relay that can add latency (on 127.0.0.5–7: the certificate
    // holds them, and apilb checks each server by its address).
    let mut relays = Vec::new();
    for (i, x) in s.iter().enumerate() {
        relays.push(Relay::start([127, 0, 0, 5 + i as u8], x.addr).await);
    }
    let mut args: Vec<String> = Vec::new();
    for r in &relays {
        args.push("--server".into());
        args.push(r.addr.to_string());
    }
    args.push("--ca-file".into());
    args.push(pki.ca.display().to_string());
    let lb = Apilb::start_args(args, None);
    for r in &relays {
        lb.wait_status(r.addr, "ready", Duration::from_secs(15))
            .await;
    }
    let mut watches = watches_on(lb.listen, &pki, &NAMES).await;

    // 0.8 s each way on every path, for 1.5 s: every PING is late, none is lost.
    for r in &relays {
        r.set_delay(Duration::from_millis(800));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for r in &relays {
        r.set_delay(Duration::ZERO);
    }
    // Every late byte delivered (the last late PING answers among them)…
    for r in &relays {
        r.settled().await;
    }
    for r in &relays {
        lb.wait_status(r.addr, "ready", Duration::from_secs(15))
            .await;
    }
    // The spike was seen (PINGs went unanswered past their window)…
    let late = lb
        .metric("apilb_health_failures_total", &["cause=\"ping_timeout\""])
        .await;
    assert!(
        late >= 1.0,
        "the spike went unnoticed: the test tested nothing"
    );
    // …and no healthy stream was reset.
    for w in watches.iter_mut() {
        w.still_flowing().await;
    }
    assert_eq!(
        closed_by_apilb(&lb).await,
        0.0,
        "healthy streams were closed"
    );
}

/// A server that completes TLS and hangs up at once (it said it is leaving) is dialled again
/// after a pause of about a PING interval, not in a loop at handshake speed. A lower bound
/// on time between failures: load can only make it longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_up_after_tls_is_not_redialled_in_a_loop() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = acceptor.clone();
            tokio::spawn(async move {
                let _ = a.accept(s).await; // then dropped: hung up right after TLS
            });
        }
    });
    let lb = Apilb::start_args(
        vec![
            "--server".into(),
            addr.to_string(),
            "--ca-file".into(),
            pki.ca.display().to_string(),
        ],
        None,
    );
    let failures = || lb.metric("apilb_health_failures_total", &[]);
    let wait_for = |n: f64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while failures().await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} checks"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::time::Instant::now()
    };
    let first = wait_for(1.0).await;
    let third = wait_for(3.0).await;
    assert!(
        third - first >= Duration::from_millis(1500),
        "three hang-ups within {:?}: re-dialled in a loop",
        third - first
    );
    assert_eq!(lb.state_of(addr).await, "draining");
    server.abort();
}
