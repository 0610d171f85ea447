//! Traffic in flight through apilb, held open while the test injects a fault: watch streams
//! (`Watch`, `watches_on`), a slow response checked byte for byte (`Slow`), and a steady
//! trickle of new connections (`Load`). Owns long-lived traffic only; one-shot requests are
//! `client`'s.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as ABufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::client::read_response;
use super::{tls, whoami, Pki, SERVER_NAME};

/// A long-lived watch-like stream (GET /watch) through apilb.
pub struct Watch {
    reader: ABufReader<TlsStream<TcpStream>>,
    pub server: String,
}

impl Watch {
    pub async fn open(addr: SocketAddr, pki: &Pki) -> Watch {
        let mut s = tls(addr, pki, false).await.unwrap();
        s.write_all(
            format!("GET /watch?interval_ms=50 HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut w = Watch {
            reader: ABufReader::new(s),
            server: String::new(),
        };
        let first = w.next_event().await.expect("watch produced no event");
        w.server = first["server"].as_str().unwrap().to_string();
        w
    }

    /// The next event, or None once the stream is closed (EOF or error).
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(i) = line.find('{') {
                if let Ok(v) = serde_json::from_str::<Value>(line[i..].trim()) {
                    return Some(v);
                }
            }
        }
    }

    /// Reads until the stream closes; returns how long that took. Panics past `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        tokio::time::timeout(timeout, async {
            while self.next_event().await.is_some() {}
        })
        .await
        .unwrap_or_else(|_| panic!("stream on {} still open after {timeout:?}", self.server));
        start.elapsed()
    }

    /// Asserts the stream keeps delivering events.
    pub async fn still_flowing(&mut self) {
        for _ in 0..3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), self.next_event())
                .await
                .expect("stream stalled");
            assert!(ev.is_some(), "stream on {} was closed", self.server);
        }
    }

    /// Reads the stream to its end and says how it ended: `Ok` only for a clean end (the
    /// response's final chunk, then the connection closed), the error otherwise (a reset, or
    /// an end without the final chunk). Panics past `timeout`.
    pub async fn end(&mut self, timeout: Duration) -> Result<(), String> {
        let work = async {
            let mut last_chunk = false;
            loop {
                let mut line = String::new();
                match self.reader.read_line(&mut line).await {
                    Ok(0) if last_chunk => return Ok(()),
                    Ok(0) => return Err("closed without the final chunk".to_string()),
                    Ok(_) => last_chunk |= line == "0\r\n",
                    Err(e) => return Err(format!("{:?}: {e}", e.kind())),
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| panic!("stream on {} still open after {timeout:?}", self.server))
    }
}

/// Opens watches until one is pinned to each of `names`. Returns them in that order.
pub async fn watches_on(addr: SocketAddr, pki: &Pki, names: &[&str]) -> Vec<Watch> {
    let mut found: Vec<Option<Watch>> = names.iter().map(|_| None).collect();
    for _ in 0..60 {
        let w = Watch::open(addr, pki).await;
        if let Some(i) = names.iter().position(|n| *n == w.server) {
            if found[i].is_none() {
                found[i] = Some(w);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("could not pin a watch to each of {names:?}");
}

/// A slow response in flight through apilb: `GET /whoami` then `GET /slow` on one
/// keep-alive connection, so the server that answers is known; its body is checked byte for
/// byte (the `/bytes` pattern).
pub struct Slow {
    pub server: String,
    pub done: tokio::task::JoinHandle<Result<(), String>>,
}

impl Slow {
    pub async fn start(addr: SocketAddr, pki: &Pki, n: usize, ms: u64) -> Slow {
        let s = tls(addr, pki, false).await.unwrap();
        let mut r = ABufReader::new(s);
        r.get_mut()
            .write_all(format!("GET /whoami HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut r).await.unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let server = v["server"].as_str().unwrap().to_string();
        r.get_mut()
            .write_all(
                format!(
                    "GET /slow?n={n}&ms={ms} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let done = tokio::spawn(async move {
            let (status, body) = read_response(&mut r).await.map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("status {status}"));
            }
            if body.len() != n {
                return Err(format!("{} of {n} bytes", body.len()));
            }
            match body
                .iter()
                .enumerate()
                .find(|(i, b)| **b != (i % 251) as u8)
            {
                Some((i, _)) => Err(format!("byte {i} is wrong")),
                None => Ok(()),
            }
        });
        Slow { server, done }
    }
}

/// New connections through apilb every ~100 ms (`GET /whoami`), each one's outcome kept,
/// until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    pub fn start(addr: SocketAddr, pki: &Pki) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let pki = pki.share();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                match tokio::time::timeout(Duration::from_secs(10), whoami(addr, &pki)).await {
                    Ok(Ok(s)) => ok.push(s),
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("timed out".into()),
                }
            }
            (ok, failed)
        });
        Load { stop, task }
    }

    /// Stops; the servers that answered, and every failure.
    pub async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
