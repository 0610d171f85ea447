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
//! * `GET /-/last-readyz-client`: `{"client_fp":N}`, the FNV-1a of the client certificate
//!   the last `GET /readyz` came with (0: none): which certificate a health check presented.
//! * `GET /whoami`: `{"server":<name>,"client_cert":<bool>,"alpn":"h2"|"http/1.1"}` + `\n`.
//! * `POST /echo`: streams the request body back unchanged.
//! * `GET /bytes?n=N`: exactly `N` bytes, byte `i` being `i % 251`, streamed.
//! * `GET /watch[?interval_ms=100]`: a never-ending `application/json` stream, one line
//!   `{"type":"ADDED","server":<name>,"seq":N}` per interval, `N` counting from 0 (ended
//!   cleanly by a graceful shutdown).
//! * `GET /slow?n=N&ms=M`: the `/bytes` pattern, `N` bytes spread over about `M` ms (a
//!   request in flight whose bytes the client can verify).
//! * anything else: 404.
//!
//! The files, one job each: `main.rs` the flags, the shared state and the listener's life
//! (accept, SIGTERM, the graceful shutdown's steps); `tls.rs` the server TLS config from
//! the flags; `conn.rs` one accepted connection (raw echo or TLS + HTTP, and its own
//! graceful end); `routes.rs` what each HTTP path answers; `bodies.rs` the streamed bodies
//! (`/bytes`, `/slow`, `/watch`).

mod bodies;
mod conn;
mod routes;
mod tls;

use std::error::Error as StdError;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::handle_conn;
use crate::tls::tls_config;

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
    /// The client certificate fingerprint of the last `GET /readyz` (0: none).
    last_readyz_client: std::sync::atomic::AtomicU64,
}

/// Facts about one TLS connection, used by `/whoami`.
#[derive(Clone, Copy)]
struct ConnInfo {
    client_cert: bool,
    /// FNV-1a of the client's leaf certificate (0 without one): tells certificates apart.
    client_fp: u64,
    alpn: Option<&'static str>,
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
        last_readyz_client: std::sync::atomic::AtomicU64::new(0),
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
