//! Small TLS clients for one request each: a TLS connection verified against the test CA,
//! one HTTP/1.1 request (`request`, `whoami`, `many_whoami`) and the parsing of its
//! response. Owns one-shot requests only; long-lived streams are `streams`'.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Pki, SERVER_NAME};

/// Splits a raw HTTP/1.1 response (chunked or not) into status and body.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

pub async fn tls(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    tokio_rustls::TlsConnector::from(pki.client_config(client_cert))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 request over a new TLS connection; the response status and body.
pub async fn request(
    addr: SocketAddr,
    pki: &Pki,
    method: &str,
    path: &str,
    client_cert: bool,
) -> std::io::Result<(u16, String)> {
    let mut s = tls(addr, pki, client_cert).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    // The stand-in may end TLS without close_notify; what was read counts.
    let _ = s.read_to_end(&mut out).await;
    if out.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(parse_response(&out))
}

/// GET /whoami through `addr`: the name of the server that answered.
pub async fn whoami(addr: SocketAddr, pki: &Pki) -> std::io::Result<String> {
    let (code, body) = request(addr, pki, "GET", "/whoami", false).await?;
    if code != 200 {
        return Err(std::io::Error::other(format!("status {code}")));
    }
    let v: Value = serde_json::from_str(body.trim()).map_err(std::io::Error::other)?;
    Ok(v["server"].as_str().unwrap_or_default().to_string())
}

/// Runs `n` new connections through apilb, one after the other; returns the servers that
/// answered and every failure.
pub async fn many_whoami(addr: SocketAddr, pki: &Pki, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(10), whoami(addr, pki)).await {
            Ok(Ok(s)) => ok.push(s),
            Ok(Err(e)) => failed.push(e.to_string()),
            Err(_) => failed.push("timed out".into()),
        }
    }
    (ok, failed)
}

/// Reads one HTTP/1.1 response with a Content-Length body.
pub(super) async fn read_response<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut status = 0;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the response head",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status == 0 {
            status = l
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((status, body))
}
