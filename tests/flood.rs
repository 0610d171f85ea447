//! What a hostile local user can do to apilb with connections alone: hold many that never
//! speak, or that stall in the middle of a ClientHello, and flood it with connections that
//! cannot be served. The flood runs as `nobody` (`setpriv`), as an unprivileged user would.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first 15 bytes of a ClientHello that announces 512 bytes: a client stalled in the
/// middle of its hello.
const PARTIAL_HELLO: [u8; 15] = [
    0x16, 3, 1, 0x02, 0x04, // record: handshake, 516 bytes
    1, 0, 0x02, 0x00, // ClientHello, 512 bytes
    3, 3, 0, 0, 0, 0,
];

/// Holds `idle` connections that never send a byte and `stalled` ones that sent only the
/// start of a ClientHello, opened in that order, as the unprivileged user `nobody`. Prints
/// a line once every connection is open, and holds them until its stdin closes.
struct Flood {
    child: Child,
}

impl Flood {
    fn start(target: std::net::SocketAddr, idle: usize, stalled: usize) -> Flood {
        const SCRIPT: &str = r#"
import os, socket, sys
host, port, idle, stalled, partial = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), bytes.fromhex(sys.argv[5])
held = []
for i in range(idle + stalled):
    s = socket.create_connection((host, port))
    if i >= idle:
        try:
            s.sendall(partial)
        except OSError:
            pass  # closed by apilb already (at its limit): still counted as held
    held.append(s)
print("uid=%d held=%d" % (os.getuid(), len(held)), flush=True)
sys.stdin.read()
"#;
        let python = "/usr/bin/python3";
        assert!(
            std::path::Path::new(python).exists(),
            "{python} is needed to run the flood as nobody"
        );
        let hex: String = PARTIAL_HELLO.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                python,
            ])
            .args(["-c", SCRIPT])
            .arg(target.ip().to_string())
            .arg(target.port().to_string())
            .arg(idle.to_string())
            .arg(stalled.to_string())
            .arg(hex)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) runs the flood as nobody");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            format!("uid=65534 held={}", idle + stalled),
            "the flood did not run as nobody"
        );
        Flood { child }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `pred` holds of apilb's metrics and status, or fails after `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut pred: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !pred().await {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upstream_connects(lb: &Apilb) -> f64 {
    lb.metric("apilb_connect_attempts_total", &["result=\"ok\""])
        .await
}

/// An unprivileged user holding far more never-speaking and stalled connections than
/// --max-connections cannot lock out a client that speaks at once (as kubelet does); the
/// held connections cost no server a connection, get no server marked failed, and put
/// apilb in no panic mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_and_stalled_flood_as_nobody_locks_no_speaking_client_out() {
    let pki = Pki::new();
    let s = [
        Standin::start(&pki, [127, 0, 0, 2], "cp1"),
        Standin::start(&pki, [127, 0, 0, 3], "cp2"),
        Standin::start(&pki, [127, 0, 0, 4], "cp3"),
    ];
    let refs: Vec<&Standin> = s.iter().collect();
    // A long hello timeout: what saves the speaking client here is the eviction of silent
    // connections at the limit, not their timeout.
    let lb = Apilb::start(
        &pki,
        &refs,
        &[
            "--max-connections",
            "40",
            "--client-hello-timeout",
            "5m",
            "--first-byte-timeout",
            "200ms",
        ],
    );
    lb.wait_all_ready(&refs);

    let (idle, stalled) = (150, 30);
    let _flood = Flood::start(lb.listen, idle, stalled);
    // Every flood connection was accepted; those beyond the limit pushed out older ones.
    until(Duration::from_secs(20), "the flood accepted", || async {
        lb.metric("apilb_connections_accepted_total", &[]).await >= (idle + stalled) as f64
    })
    .await;
    // The stalled ones stay held (a first-byte timeout well past) and connected nothing.
    until(
        Duration::from_secs(10),
        "the limit held by the flood",
        || async { lb.status().await["client_connections"].as_u64() >= Some(30) },
    )
    .await;
    // Let a first-byte timeout (200 ms) pass with the stalled hellos held: a server judged
    // by a client's silence would be marked failed by now. (A negative: no event to await.)
    tokio::time::sleep(Duration::from_millis(600)).await;

    let speaking = 5;
    for i in 0..speaking {
        whoami(lb.listen, &pki)
            .await
            .unwrap_or_else(|e| panic!("speaking client {i} locked out: {e}"));
    }
    let evicted = lb
        .metric(
            "apilb_connections_rejected_total",
            &["reason=\"evicted_silent\""],
        )
        .await;
    assert!(
        evicted >= (idle + stalled - 40) as f64,
        "silent connections closed at the limit: {evicted}"
    );

    assert_eq!(
        upstream_connects(&lb).await,
        f64::from(speaking),
        "server connections beyond one per speaking client"
    );
    let status = lb.status().await;
    for srv in status["servers"].as_array().unwrap() {
        assert_eq!(srv["connect_failed"], false, "{srv}");
        assert_eq!(srv["state"], "ready", "{srv}");
    }
    assert_eq!(lb.metric("apilb_panic_mode", &[]).await, 0.0);
    assert_eq!(
        lb.metric(
            "apilb_connections_rejected_total",
            &["reason=\"connection_limit\""]
        )
        .await,
        0.0
    );
}

/// A client that stalls in its ClientHello is closed after --client-hello-timeout, having
/// cost no server a connection; one that sends nothing is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_completes_its_hello_is_closed_after_the_timeout() {
    let pki = Pki::new();
    let s = Standin::start(&pki, [127, 0, 0, 2], "cp1");
    let lb = Apilb::start(&pki, &[&s], &["--client-hello-timeout", "1s"]);
    lb.wait_all_ready(&[&s]);
    let mut stalled = TcpStream::connect(lb.listen).await.unwrap();
    stalled.write_all(&PARTIAL_HELLO).await.unwrap();
    let mut silent = TcpStream::connect(lb.listen).await.unwrap();
    for c in [&mut stalled, &mut silent] {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("the connection is still open 10 s on");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    assert_eq!(
        lb.metric(
            "apilb_connections_rejected_total",
            &["reason=\"client_hello_timeout\""]
        )
        .await,
        2.0
    );
    assert_eq!(upstream_connects(&lb).await, 0.0);
    // A client that speaks is served as before.
    assert_eq!(whoami(lb.listen, &pki).await.unwrap(), "cp1");
}

/// With no server reachable, a flood of client connections makes a bounded number of log
/// lines: one per kind and interval, the next one saying how many were held back
/// (`suppressed`), so that lines plus held back add up to what the metrics counted. The log
/// is the feature under test here; it is read by typed fields (`suppressed`, `level`,
/// `client`), not by wording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_with_no_server_reachable_logs_a_bounded_number_of_lines() {
    // Nothing listens there: every connect is refused.
    let dead = free_port([127, 0, 0, 2]);
    let lb = Apilb::start_args(
        vec![
            "--server".into(),
            dead.to_string(),
            "--health-insecure-skip-verify".into(),
        ],
        None,
    );
    let mark = lb.mark();
    let one = || async {
        // Closed by apilb at once: the connect itself may see the reset.
        let Ok(mut c) = TcpStream::connect(lb.listen).await else {
            return;
        };
        // Not TLS: passed on at once. (Closed by apilb at once, the write may fail.)
        let _ = c.write_all(b"x").await;
        let mut buf = [0u8; 1];
        let _ = c.read(&mut buf).await;
    };
    let flood = 300;
    for _ in 0..flood {
        one().await;
    }
    // Go on (one connection at a time) until a line reports what it held back.
    let start = Instant::now();
    let reported = loop {
        let lines = lb.logs();
        if let Some(v) = lines[mark.log_index()..]
            .iter()
            .find(|v| v["suppressed"].as_u64().is_some_and(|n| n > 0))
        {
            break v.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no line reported suppressed lines"
        );
        one().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reported["suppressed"].as_u64().unwrap() >= flood - 1,
        "{reported}"
    );
    let rejected = lb
        .metric(
            "apilb_connections_rejected_total",
            &["reason=\"no_server\""],
        )
        .await as u64;
    assert!(rejected > flood, "{rejected}");
    // Lines about clients (warnings and errors): few, and with what they held back they
    // account for every rejection so far but the ones still held back.
    let lines = lb.logs();
    let loud: Vec<_> = lines[mark.log_index()..]
        .iter()
        .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
        .filter(|v| v.get("client").is_some())
        .collect();
    assert!(
        loud.len() <= 6,
        "{} lines about clients: {loud:?}",
        loud.len()
    );
    let accounted: u64 = loud
        .iter()
        .map(|v| 1 + v["suppressed"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        accounted <= rejected && accounted >= flood,
        "{accounted} of {rejected}"
    );
}
