//! `apilb-standin`: a stand-in for a Kubernetes kube-apiserver.
//!
//! This binary exists only for apilb's integration tests and the README demo. It is
//! **not** part of a node install and is not a real apiserver.
//!
//! ```text
//! apilb-standin --listen 127.0.0.2:16443 --cert server.pem --key server-key.pem \
//!     --name cp1 [--client-ca ca.pem]
//! ```
//!
//! Once the listener is bound it prints exactly one line, `listening on <addr>`, to
//! stdout, then serves until SIGTERM/SIGINT (exit 0). Bad flags or unreadable
//! certificate/key files exit 1 with a message naming the flag.
//!
//! With `--graceful`, SIGTERM starts kube-apiserver's graceful termination instead
//! (k8s.io/apiserver `genericapiserver.go`, `lifecycle_signals.go`):
//! 1. `/readyz` answers 500 (`[-]shutdown failed`) at once; everything else is still served;
//! 2. after `--shutdown-delay` (0 by default, as kubeadm's `--shutdown-delay-duration`) the
//!    listener closes, so new connections are refused; then every HTTP/2 connection gets a
//!    GOAWAY with the last processed stream id, idle HTTP/1.1 connections are closed and busy
//!    ones after their response (Go's `http.Server.Shutdown` does it in this order);
//! 3. in-flight responses finish; watches are ended cleanly (their final chunk);
//! 4. the process exits 0 once every connection has ended (60 s at most).
//!
//! Every accepted connection is classified by its first byte:
//!
//! * `0x16` (a TLS handshake record): TLS (ALPN `h2` and `http/1.1`), then HTTP/2 or
//!   HTTP/1.1. With `--client-ca`, a client certificate signed by that CA is required.
//! * anything else: raw mode. Every byte is echoed back unchanged until the client
//!   half-closes; then the trailer `bye from <name>\n` is written and the write side is
//!   shut down. The trailer therefore only arrives if a proxy in between propagated the
//!   client's FIN.
//!
//! HTTP endpoints:
//!
//! * `GET /readyz`: the current readiness status (200 `ok` by default).
//! * `GET /healthz`, `GET /livez`: 200 `ok`.
//! * `PUT /-/readyz?status=N[&header_bytes=M]` (100-599): make `/readyz` answer `N` from
//!   now on, with a header of `M` bytes (an oversized response head) if given.
//! * `PUT /-/goaway`: send GOAWAY on every HTTP/2 connection open now, and stay up (as
//!   kube-apiserver's `--goaway-chance` or an idle timeout do).
//! * `GET /whoami`: `{"server":<name>,"client_cert":<bool>,"alpn":"h2"|"http/1.1"}` + `\n`.
//! * `POST /echo`: streams the request body back unchanged.
//! * `GET /bytes?n=N`: exactly `N` bytes, byte `i` being `i % 251`, streamed.
//! * `GET /watch[?interval_ms=100]`: a never-ending `application/json` stream, one line
//!   `{"type":"ADDED","server":<name>,"seq":N}` per interval, `N` counting from 0 (ended
//!   cleanly by a graceful shutdown).
//! * `GET /slow?n=N&ms=M`: the `/bytes` pattern, `N` bytes spread over about `M` ms (a
//!   request in flight whose bytes the client can verify).
//! * anything else: 404.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// Buffer size for raw-mode echo and chunk size for `/bytes`.
const CHUNK: usize = 64 * 1024;
/// `/bytes` pattern period.
const PERIOD: usize = 251;
/// Largest multiple of [`PERIOD`] not above [`CHUNK`], so every full `/bytes` chunk
/// starts at pattern phase 0 and one shared buffer serves all chunks.
const PATTERN_LEN: usize = CHUNK / PERIOD * PERIOD;
/// Upper bound for `/watch?interval_ms=`.
const MAX_WATCH_INTERVAL_MS: u64 = 3_600_000;

type BoxError = Box<dyn StdError + Send + Sync>;
type RespBody = BoxBody<Bytes, BoxError>;

#[derive(Parser, Debug)]
#[command(
    name = "apilb-standin",
    version,
    about = "Stand-in kube-apiserver for apilb tests and demos (not part of a node install)"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.2:16443.
    #[arg(long)]
    listen: SocketAddr,
    /// PEM file with the server certificate chain (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// PEM file with the server private key.
    #[arg(long)]
    key: PathBuf,
    /// Name reported by /whoami, /watch and the raw-mode trailer.
    #[arg(long)]
    name: String,
    /// PEM CA bundle; when given, clients must present a certificate signed by it.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Serve the `kubernetes` EndpointSlice and Endpoints from DIR/endpointslice.json and
    /// DIR/endpoints.json (re-read on each request; a missing file answers 404, a file
    /// holding only a number answers that status).
    #[arg(long, value_name = "DIR")]
    api_dir: Option<PathBuf>,
    /// Offer only HTTP/1.1 in ALPN (a server that does not negotiate h2).
    #[arg(long)]
    http1_only: bool,
    /// On SIGTERM, shut down as kube-apiserver does (see the module doc) instead of at once.
    #[arg(long)]
    graceful: bool,
    /// With --graceful: how long /readyz fails before the listener closes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    shutdown_delay: Duration,
}

/// The longest a graceful shutdown waits for connections to end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// State shared by all connections.
struct Shared {
    name: Arc<str>,
    readyz: AtomicU16,
    /// Bytes of padding header on /readyz answers (0: none).
    readyz_pad: std::sync::atomic::AtomicUsize,
    /// Set at SIGTERM with --graceful: /readyz fails from then on.
    terminating: AtomicBool,
    /// Cancelled when the listener has closed: connections shut down gracefully, watches end.
    shutdown: CancellationToken,
    /// Cancelled (and replaced) by `PUT /-/goaway`: the HTTP/2 connections open then get a
    /// GOAWAY; the server stays up.
    goaway: std::sync::Mutex<CancellationToken>,
    api_dir: Option<PathBuf>,
    /// Who last read the API paths: client certificate fingerprint and Authorization.
    last_api_client: std::sync::Mutex<String>,
}

/// Facts about one TLS connection, used by `/whoami`.
#[derive(Clone, Copy)]
struct ConnInfo {
    client_cert: bool,
    /// FNV-1a of the client's leaf certificate (0 without one): tells certificates apart.
    client_fp: u64,
    alpn: Option<&'static str>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Serves an API object from the `--api-dir` file, as the apiserver would.
fn api_object(
    shared: &Shared,
    file: &str,
    req: &Request<Incoming>,
    info: ConnInfo,
) -> Response<RespBody> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Ok(mut last) = shared.last_api_client.lock() {
        *last = format!(
            "{{\"client_fp\":{},\"authorization\":{}}}\n",
            info.client_fp,
            json_str(auth)
        );
    }
    let Some(dir) = &shared.api_dir else {
        return text(StatusCode::NOT_FOUND, "no --api-dir\n");
    };
    match std::fs::read_to_string(dir.join(file)) {
        Err(_) => {
            let mut r = json("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"reason\":\"NotFound\",\"code\":404}\n".to_string());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Ok(body) => match body
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => {
                let mut r = json(format!(
                    "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"code\":{}}}\n",
                    code.as_u16()
                ));
                *r.status_mut() = code;
                r
            }
            None => json(body),
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apilb-standin: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apilb-standin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let tls = Arc::new(tls_config(&args)?);
    let acceptor = TlsAcceptor::from(tls);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listener's address")?;

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("cannot write to stdout")?;
        out.flush().context("cannot flush stdout")?;
    }

    let shared = Arc::new(Shared {
        name: Arc::from(args.name.as_str()),
        readyz: AtomicU16::new(200),
        readyz_pad: std::sync::atomic::AtomicUsize::new(0),
        terminating: AtomicBool::new(false),
        shutdown: CancellationToken::new(),
        goaway: std::sync::Mutex::new(CancellationToken::new()),
        api_dir: args.api_dir.clone(),
        last_api_client: std::sync::Mutex::new(String::new()),
    });

    let tracker = TaskTracker::new();
    // Armed at SIGTERM with --graceful: when the listener closes.
    let close_at = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(close_at);
    loop {
        tokio::select! {
            _ = sigterm.recv(), if !shared.terminating.load(Ordering::Relaxed) => {
                if !args.graceful {
                    return Ok(());
                }
                // Step 1: /readyz fails at once; everything is still served during the delay.
                shared.terminating.store(true, Ordering::Relaxed);
                close_at.as_mut().reset(tokio::time::Instant::now() + args.shutdown_delay);
            }
            _ = sigint.recv() => return Ok(()),
            () = &mut close_at => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let acceptor = acceptor.clone();
                    tracker.spawn(async move {
                        if let Err(e) = handle_conn(stream, acceptor, shared.clone()).await {
                            eprintln!("[{}] connection from {peer}: {e:#}", shared.name);
                        }
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: log, back off briefly, keep serving.
                    eprintln!("[{}] accept failed: {e}", shared.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Step 2: the listener closes (new connections are refused), then every connection is
    // shut down gracefully; step 3: what is in flight finishes, watches end.
    drop(listener);
    shared.shutdown.cancel();
    tracker.close();
    // Step 4: exit once every connection has ended.
    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, tracker.wait()).await;
    Ok(())
}

/// Builds the rustls server config from the command-line flags.
fn tls_config(args: &Args) -> Result<ServerConfig> {
    // Fails only if a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let certs = load_certs(&args.cert, "--cert")?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| {
        anyhow!(
            "--key {}: cannot load a PEM private key: {e}",
            args.key.display()
        )
    })?;

    let builder = ServerConfig::builder();
    let builder = match &args.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca_path, "--client-ca")? {
                roots.add(cert).map_err(|e| {
                    anyhow!(
                        "--client-ca {}: unusable CA certificate: {e}",
                        ca_path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| {
                    anyhow!(
                        "--client-ca {}: cannot build client verifier: {e}",
                        ca_path.display()
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!(
            "--cert {} / --key {}: unusable certificate or key: {e}",
            args.cert.display(),
            args.key.display()
        )
    })?;
    config.alpn_protocols = if args.http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Loads every certificate in a PEM file; an empty file is an error.
fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "{flag} {}: cannot load PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(anyhow!(
            "{flag} {}: no PEM certificates found",
            path.display()
        ));
    }
    Ok(certs)
}

/// Serves one accepted connection: TLS + HTTP if it starts with a TLS handshake
/// record, raw echo otherwise. Returns at most one error, which the caller logs.
async fn handle_conn(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) -> Result<()> {
    stream.set_nodelay(true).context("set TCP_NODELAY")?;

    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.context("peek")?;
    if n == 1 && first[0] == 0x16 {
        serve_tls(stream, acceptor, shared).await
    } else {
        serve_raw(stream, &shared.name).await
    }
}

/// Raw mode: echo until the client half-closes, then send the trailer and FIN.
async fn serve_raw(mut stream: TcpStream, name: &str) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf).await.context("raw: read")?;
        if n == 0 {
            break;
        }
        stream
            .write_all(&buf[..n])
            .await
            .context("raw: write echo")?;
    }
    stream
        .write_all(format!("bye from {name}\n").as_bytes())
        .await
        .context("raw: write trailer")?;
    stream.shutdown().await.context("raw: shutdown")?;
    Ok(())
}

async fn serve_tls(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) -> Result<()> {
    let tls = acceptor.accept(stream).await.context("TLS handshake")?;
    let info = {
        let conn = tls.get_ref().1;
        ConnInfo {
            client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            client_fp: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map_or(0, |c| fnv1a(c.as_ref())),
            alpn: match conn.alpn_protocol() {
                Some(b"h2") => Some("h2"),
                Some(b"http/1.1") => Some("http/1.1"),
                _ => None,
            },
        }
    };

    let shutdown = shared.shutdown.clone();
    let goaway = match (info.alpn, shared.goaway.lock()) {
        (Some("h2"), Ok(t)) => t.clone(),
        // HTTP/1.1 has no GOAWAY.
        _ => CancellationToken::new(),
    };
    // Told of the connection's first request: a graceful shutdown leaves a connection alone
    // until it has had one (Go's http.Server.Shutdown does not close a new connection that
    // has not sent its first request yet, for up to 5 s).
    let first_request = Arc::new(tokio::sync::Notify::new());
    let told = first_request.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        told.notify_one();
        async move { Ok::<_, Infallible>(route(req, &shared, info)) }
    });

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = match info.alpn {
        Some("h2") => builder.http2_only(),
        Some(_) => builder.http1_only(),
        None => builder,
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = goaway.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = shutdown.cancelled() => {
            tokio::select! {
                r = conn.as_mut() => return r.map_err(|e| anyhow!("HTTP: {e}")),
                () = first_request.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            // HTTP/2: GOAWAY with the last processed stream id, open streams finish.
            // HTTP/1.1: closed when idle, or after the response in flight.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    result.map_err(|e| anyhow!("HTTP: {e}"))
}

fn route(req: Request<Incoming>, shared: &Shared, info: ConnInfo) -> Response<RespBody> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match path {
        "/readyz" => {
            if shared.terminating.load(Ordering::Relaxed) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "[-]shutdown failed: reason withheld\nreadyz check failed",
                );
            }
            let status = StatusCode::from_u16(shared.readyz.load(Ordering::Relaxed))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = if status.is_success() {
                "ok"
            } else {
                "readyz check failed"
            };
            let mut resp = text(status, body);
            let pad = shared.readyz_pad.load(Ordering::Relaxed);
            if pad > 0 {
                if let Ok(v) = header::HeaderValue::from_str(&"p".repeat(pad)) {
                    resp.headers_mut().insert("x-padding", v);
                }
            }
            resp
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok"),
        "/-/readyz" => {
            if req.method() != Method::PUT && req.method() != Method::POST {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use PUT /-/readyz?status=N\n",
                );
            }
            match query_param(query, "status").and_then(|s| s.parse::<u16>().ok()) {
                Some(code @ 100..=599) => {
                    shared.readyz.store(code, Ordering::Relaxed);
                    let pad = query_param(query, "header_bytes").and_then(|s| s.parse().ok());
                    shared.readyz_pad.store(pad.unwrap_or(0), Ordering::Relaxed);
                    text(StatusCode::OK, format!("readyz now answers {code}\n"))
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "status must be an integer in 100..=599\n",
                ),
            }
        }
        "/-/goaway" => {
            if req.method() != Method::PUT && req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use PUT /-/goaway\n");
            }
            if let Ok(mut t) = shared.goaway.lock() {
                std::mem::take(&mut *t).cancel();
            }
            text(StatusCode::OK, "GOAWAY sent on every HTTP/2 connection\n")
        }
        "/whoami" => {
            let alpn = info.alpn.unwrap_or(if req.version() == Version::HTTP_2 {
                "h2"
            } else {
                "http/1.1"
            });
            // Built by hand to keep the documented key order.
            let body = format!(
                "{{\"server\":{},\"client_cert\":{},\"alpn\":\"{alpn}\",\"client_fp\":{}}}\n",
                json_str(&shared.name),
                info.client_cert,
                info.client_fp,
            );
            json(body)
        }
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes" => {
            api_object(shared, "endpointslice.json", &req, info)
        }
        "/api/v1/namespaces/default/endpoints/kubernetes" => {
            api_object(shared, "endpoints.json", &req, info)
        }
        "/-/last-api-client" => json(
            shared
                .last_api_client
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        ),
        "/echo" => {
            let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        "/bytes" => match query_param(query, "n").and_then(|s| s.parse::<u64>().ok()) {
            Some(n) => octets(PatternBody::new(n).boxed(), n),
            None => text(
                StatusCode::BAD_REQUEST,
                "n must be a non-negative integer\n",
            ),
        },
        "/watch" => {
            let interval_ms = match query_param(query, "interval_ms") {
                None => 100,
                Some(s) => match s.parse::<u64>() {
                    Ok(ms @ 1..=MAX_WATCH_INTERVAL_MS) => ms,
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "interval_ms must be an integer in 1..=3600000\n",
                        )
                    }
                },
            };
            let body = WatchBody::new(
                shared.name.clone(),
                Duration::from_millis(interval_ms),
                shared.shutdown.clone(),
            );
            let mut resp = Response::new(body.boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/slow" => {
            let n = query_param(query, "n").and_then(|s| s.parse::<u64>().ok());
            let ms = query_param(query, "ms").and_then(|s| s.parse::<u64>().ok());
            match (n, ms) {
                (Some(n), Some(ms @ 0..=MAX_WATCH_INTERVAL_MS)) => {
                    octets(SlowBody::new(n, Duration::from_millis(ms)).boxed(), n)
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "n must be a non-negative integer, ms an integer in 0..=3600000\n",
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// First value of `key` in a `a=1&b=2` query string (no percent-decoding needed here).
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// `s` as a JSON string literal, quotes included.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A binary answer of `len` bytes.
fn octets(body: RespBody, len: u64) -> Response<RespBody> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}

fn json(body: String) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `/bytes` body: `remaining` bytes of the `i % 251` pattern, in chunks that share
/// one buffer.
struct PatternBody {
    pattern: Bytes,
    remaining: u64,
}

impl PatternBody {
    fn new(n: u64) -> Self {
        // `i % PERIOD` is always below 251, so the cast cannot truncate.
        let pattern: Vec<u8> = (0..PATTERN_LEN).map(|i| (i % PERIOD) as u8).collect();
        Self {
            pattern: Bytes::from(pattern),
            remaining: n,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // Every chunk but the last is PATTERN_LEN long, so each starts at phase 0.
        let len = usize::try_from(self.remaining).map_or(PATTERN_LEN, |r| r.min(PATTERN_LEN));
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(self.pattern.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `/slow` body: `remaining` bytes of the `/bytes` pattern, in 20 slices over `period`.
struct SlowBody {
    sent: u64,
    remaining: u64,
    slice: u64,
    interval: Interval,
}

impl SlowBody {
    fn new(n: u64, period: Duration) -> Self {
        const SLICES: u32 = 20;
        let mut interval = tokio::time::interval((period / SLICES).max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            sent: 0,
            remaining: n,
            slice: n.div_ceil(u64::from(SLICES)).max(1),
            interval,
        }
    }
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        let len = self.slice.min(self.remaining);
        let start = self.sent;
        // `% PERIOD` keeps every value below 251.
        let chunk: Vec<u8> = (start..start + len)
            .map(|i| (i % PERIOD as u64) as u8)
            .collect();
        self.sent += len;
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `/watch` body: one JSON line per tick until a graceful shutdown ends it cleanly. Hyper
/// drops it when the client goes away, which ends the stream too.
struct WatchBody {
    name: Arc<str>,
    interval: Interval,
    seq: u64,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl WatchBody {
    fn new(name: Arc<str>, period: Duration, shutdown: CancellationToken) -> Self {
        // The first tick completes immediately, so event 0 is sent right away.
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            name,
            interval,
            seq: 0,
            ended: Box::pin(shutdown.cancelled_owned()),
        }
    }
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended.as_mut().poll(cx).is_ready() {
            // The watch ends cleanly: the response's final chunk (HTTP/1.1) or END_STREAM.
            return Poll::Ready(None);
        }
        match this.interval.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                let line = format!(
                    "{{\"type\":\"ADDED\",\"server\":{},\"seq\":{}}}\n",
                    json_str(&this.name),
                    this.seq
                );
                this.seq += 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}
