//! One accepted connection, classified by its first byte: raw echo (then the `bye from`
//! trailer and FIN), or TLS then HTTP/2 or HTTP/1.1 with the facts `/whoami` reports, and
//! the connection's own graceful end (on `PUT /-/goaway` or the server's shutdown). Owns
//! the connection; what a request is answered is `routes`'.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::routes::route;
use crate::{ConnInfo, Shared, CHUNK};

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Serves one accepted connection: TLS + HTTP if it starts with a TLS handshake
/// record, raw echo otherwise. Returns at most one error, which the caller logs.
pub(crate) async fn handle_conn(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<()> {
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
