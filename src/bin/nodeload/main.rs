//! `apilb-nodeload`: the API traffic of many kubelets, for `bench/run`'s node phase.
//!
//! This binary exists only for apilb's benchmark. It is **not** part of a node install and is
//! built only with the `testing` feature.
//!
//! ```text
//! apilb-nodeload --connect 127.0.0.1:6443 --ca ca.pem --clients 100 --seconds 10
//! ```
//!
//! Each client is shaped as a kubelet talks to its apiserver: **one** long-lived TLS
//! connection (ALPN `h2`) that multiplexes
//! * `--watches` never-ending watches (`GET /watch?interval_ms=`, one JSON line per event),
//! * a small request every `--request-interval` (status and lease updates:
//!   `GET /bytes?n=--request-bytes`), and
//! * now and then a large LIST (`GET /bytes?n=--list-bytes` every `--list-interval`).
//!
//! The clients start spread over one request interval, as nodes do. Every body is checked
//! (the stand-in's `/bytes` pattern, byte `i` being `i % 251`; whole JSON lines from a
//! watch). At the end it prints one JSON line to stdout: the counts, the errors (and the
//! first one), and the small requests' latency percentiles. Exit 0 when nothing failed, 1
//! when anything did, 2 on bad flags. It talks only to the address it is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use apilb::config::parse_duration;
use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The `/bytes` pattern's period (byte `i` is `i % 251`), as the stand-in serves it.
const PERIOD: u64 = 251;

#[derive(Parser, Debug)]
#[command(
    name = "apilb-nodeload",
    version,
    about = "The API traffic of many kubelets, for apilb's benchmark (not part of a node install)"
)]
struct Args {
    /// Where the clients connect: the proxy, or a server for the direct path.
    #[arg(long)]
    connect: SocketAddr,
    /// PEM CA bundle that signs the server certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Name the server certificate is verified against (and sent as SNI).
    #[arg(long, default_value = "kubernetes")]
    server_name: String,
    /// Simulated kubelets, one HTTP/2 connection each.
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// How long the load runs.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    seconds: Duration,
    /// Watches per client.
    #[arg(long, default_value_t = 6)]
    watches: u32,
    /// Time between a watch's events.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    watch_interval: Duration,
    /// Time between a client's small requests.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    request_interval: Duration,
    /// Size of a small request's response.
    #[arg(long, default_value_t = 1024)]
    request_bytes: u64,
    /// Time between a client's LISTs (0: none).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    list_interval: Duration,
    /// Size of a LIST response.
    #[arg(long, default_value_t = 2_000_000)]
    list_bytes: u64,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
    lists: AtomicU64,
    list_bytes: AtomicU64,
    watch_events: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    latencies_us: Mutex<Vec<u64>>,
}

impl Counts {
    fn error(&self, e: anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert_with(|| format!("{e:#}"));
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apilb-nodeload: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("apilb-nodeload: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&args.ca)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            anyhow!(
                "--ca {}: cannot read PEM certificates: {e}",
                args.ca.display()
            )
        })?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| anyhow!("--ca {}: unusable CA certificate: {e}", args.ca.display()))?;
    }
    let mut tls = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(args.server_name.clone())
        .map_err(|e| anyhow!("--server-name {}: {e}", args.server_name))?;
    let args = Arc::new(args);
    let connector = TlsConnector::from(Arc::new(tls));
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let end = start + args.seconds;
    let mut clients = Vec::new();
    for i in 0..args.clients {
        // Spread over one request interval, as nodes' kubelets are.
        let offset = args.request_interval * i / args.clients.max(1);
        let (args, connector, name, counts) = (
            args.clone(),
            connector.clone(),
            name.clone(),
            counts.clone(),
        );
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            if let Err(e) = client(&args, &connector, name, &counts, end).await {
                counts.error(e);
            }
        }));
    }
    for c in clients {
        if let Err(e) = c.await {
            counts.error(anyhow!("a client task ended abnormally: {e}"));
        }
    }
    let mut lat = std::mem::take(
        &mut *counts
            .latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    lat.sort_unstable();
    let pct = |q: f64| -> Option<u64> {
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat.get(i).copied()
    };
    let errors = counts.errors.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "clients": args.clients,
        "seconds": start.elapsed().as_secs_f64(),
        "connections": counts.connections.load(Ordering::Relaxed),
        "requests": counts.requests.load(Ordering::Relaxed),
        "lists": counts.lists.load(Ordering::Relaxed),
        "list_bytes": counts.list_bytes.load(Ordering::Relaxed),
        "watch_events": counts.watch_events.load(Ordering::Relaxed),
        "errors": errors,
        "first_error": *counts.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        "request_p50_us": pct(0.5),
        "request_p99_us": pct(0.99),
    });
    println!("{report}");
    Ok(errors == 0)
}

/// One simulated kubelet: its connection, its watches, its small requests and LISTs.
async fn client(
    args: &Args,
    connector: &TlsConnector,
    name: ServerName<'static>,
    counts: &Arc<Counts>,
    end: Instant,
) -> Result<()> {
    let tcp = TcpStream::connect(args.connect)
        .await
        .with_context(|| format!("connect {}", args.connect))?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .context("HTTP/2 handshake")?;
    let conn = tokio::spawn(conn);
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::from_std(end);
    let mut watches = Vec::new();
    for _ in 0..args.watches {
        let path = format!("/watch?interval_ms={}", args.watch_interval.as_millis());
        let (send, counts) = (send.clone(), counts.clone());
        watches.push(tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, watch(send, &path, &counts)).await {
                Ok(Err(e)) => counts.error(e.context("watch")),
                Ok(Ok(())) => counts.error(anyhow!("a watch ended before the run did")),
                Err(_) => {} // the run is over; the watch was still going, as it should
            }
        }));
    }
    let small = format!("/bytes?n={}", args.request_bytes);
    let list = format!("/bytes?n={}", args.list_bytes);
    let mut next_list = (!args.list_interval.is_zero()).then(Instant::now);
    let mut tick = tokio::time::interval(args.request_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
        if Instant::now() >= end {
            break;
        }
        let t = Instant::now();
        match get(&send, &small, args.request_bytes).await {
            Ok(()) => {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                counts
                    .latencies_us
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(us);
            }
            Err(e) => counts.error(e.context("small request")),
        }
        if let Some(at) = next_list.filter(|at| Instant::now() >= *at) {
            match get(&send, &list, args.list_bytes).await {
                Ok(()) => {
                    counts.lists.fetch_add(1, Ordering::Relaxed);
                    counts
                        .list_bytes
                        .fetch_add(args.list_bytes, Ordering::Relaxed);
                }
                Err(e) => counts.error(e.context("LIST")),
            }
            next_list = Some(at + args.list_interval);
        }
    }
    for w in watches {
        let _ = w.await;
    }
    drop(send);
    conn.abort();
    Ok(())
}

/// GET `path`, expecting exactly `n` bytes of the `/bytes` pattern.
async fn get(send: &SendRequest<Empty<Bytes>>, path: &str, n: u64) -> Result<()> {
    let mut send = send.clone();
    send.ready().await.context("connection")?;
    let resp = send.send_request(request(path)?).await?;
    if !resp.status().is_success() {
        return Err(anyhow!("GET {path}: status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut at: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            for (k, b) in data.iter().enumerate() {
                if u64::from(*b) != (at + k as u64) % PERIOD {
                    return Err(anyhow!("GET {path}: byte {} is wrong", at + k as u64));
                }
            }
            at += data.len() as u64;
        }
    }
    if at != n {
        return Err(anyhow!("GET {path}: {at} bytes, not {n}"));
    }
    Ok(())
}

/// Follows one watch until its stream ends (which, within a run, is an error).
async fn watch(send: SendRequest<Empty<Bytes>>, path: &str, counts: &Counts) -> Result<()> {
    let mut send = send;
    send.ready().await.context("connection")?;
    let resp = send.send_request(request(path)?).await?;
    if !resp.status().is_success() {
        return Err(anyhow!("GET {path}: status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut partial = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            partial.extend_from_slice(&data);
            while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                serde_json::from_slice::<serde_json::Value>(&line)
                    .with_context(|| format!("GET {path}: an event is not JSON"))?;
                counts.watch_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

fn request(path: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::get(format!("https://kubernetes{path}")).body(Empty::new())?)
}
