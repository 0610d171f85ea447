//! Bidirectional byte copy between a client and its server, with half-close and byte
//! counters.
//!
//! Both directions run concurrently; when one side reaches EOF the other keeps flowing and
//! the EOF is passed on as a write shutdown (half-close). An error in either direction ends
//! both. Memory is the point of the shape: the read buffer lives on the stack only between
//! two await points (it is never part of the connection's future), so an idle connection
//! holds no copy buffer at all. Bytes are copied to the heap only when the writer cannot take
//! everything at once, and freed as soon as they are written. This module never decides
//! when a connection must close early: the caller selects this against its cancellation.

use std::io;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use crate::socket;

/// Bytes read per system call. On the stack, between awaits only.
const CHUNK: usize = 64 * 1024;

/// Bytes moved each way: (client → server, server → client).
pub type Moved = (u64, u64);

/// Copies until both directions have seen EOF, or either fails.
pub async fn bidirectional(
    client: &TcpStream,
    server: &TcpStream,
    to_server: &Counter,
    to_client: &Counter,
) -> io::Result<Moved> {
    let up = one_way(client, server, to_server);
    let down = one_way(server, client, to_client);
    tokio::pin!(up, down);
    let (mut a, mut b) = (None, None);
    loop {
        tokio::select! {
            r = &mut up, if a.is_none() => a = Some(r?),
            r = &mut down, if b.is_none() => b = Some(r?),
        }
        if let (Some(a), Some(b)) = (a, b) {
            return Ok((a, b));
        }
    }
}

/// Writes all of `bytes`, waiting for the socket when it is full.
pub async fn write_all(dst: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        dst.writable().await?;
        match dst.try_write(&bytes[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction: read what is there, write what the peer takes now, and only keep (on the
/// heap) what it could not take.
async fn one_way(src: &TcpStream, dst: &TcpStream, counter: &Counter) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        src.readable().await?;
        // The buffer's scope has no await in it, so it never lives in the future.
        let leftover: Option<Vec<u8>> = {
            let mut buf = [0u8; CHUNK];
            let n = match src.try_read(&mut buf) {
                Ok(0) => {
                    socket::shutdown_write(dst);
                    return Ok(total);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            counter.inc_by(n as u64);
            let mut written = 0;
            while written < n {
                match dst.try_write(&buf[written..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            (written < n).then(|| buf[written..n].to_vec())
        };
        if let Some(rest) = leftover {
            write_all(dst, &rest).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client_app <-> [client_side | proxy | server_side] <-> server_app
    #[tokio::test]
    async fn exact_bytes_and_half_close() {
        let (mut client_app, client_side) = pair().await;
        let (server_side, mut server_app) = pair().await;
        let (cu, cd) = (Counter::default(), Counter::default());
        let (up, down) = (cu.clone(), cd.clone());
        let proxy =
            tokio::spawn(
                async move { bidirectional(&client_side, &server_side, &up, &down).await },
            );
        let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&sent).await.unwrap();
            client_app.shutdown().await.unwrap(); // half-close
            let mut back = Vec::new();
            client_app.read_to_end(&mut back).await.unwrap();
            back
        });
        // The server sees every byte, then EOF (the half-close passed through)…
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        // …and can still answer after it.
        server_app.write_all(b"answer after EOF").await.unwrap();
        server_app.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"answer after EOF");
        let moved = proxy.await.unwrap().unwrap();
        assert_eq!(moved, (payload.len() as u64, 16));
        assert_eq!(cu.get(), payload.len() as u64);
        assert_eq!(cd.get(), 16);
    }
}
