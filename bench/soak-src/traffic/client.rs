//! One client connection through apilb (HTTP/1.1 or HTTP/2 over verified TLS) and the
//! seeded payloads it sends; how a send error is told apart (refused, unanswered, failed).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::common::SERVER_NAME;
use crate::traffic::record::Ctx;
use crate::traffic::send_error::SendError;
use crate::B;

/// A seeded byte stream (xorshift64*): upload bodies, regenerated to check the echo.
#[derive(Clone)]
pub(crate) struct Gen {
    pub(crate) s: u64,
    pub(crate) word: [u8; 8],
    pub(crate) pos: usize,
}

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen {
            s: seed | 1,
            word: [0; 8],
            pos: 8,
        }
    }
    pub(crate) fn next_byte(&mut self) -> u8 {
        if self.pos == 8 {
            self.s ^= self.s >> 12;
            self.s ^= self.s << 25;
            self.s ^= self.s >> 27;
            self.word = self.s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            self.pos = 0;
        }
        let b = self.word[self.pos];
        self.pos += 1;
        b
    }
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_byte();
        }
    }
    /// Index of the first byte of `data` that differs from the stream.
    pub(crate) fn check(&mut self, data: &[u8]) -> Option<usize> {
        data.iter().position(|&b| b != self.next_byte())
    }
}

pub(crate) struct GenBody {
    pub(crate) gen: Gen,
    pub(crate) left: u64,
}

impl Body for GenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(64 * 1024) as usize;
        let mut v = vec![0u8; n];
        this.gen.fill(&mut v);
        this.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

// ---------------------------------------------------------------------------------------
// Connections through apilb

pub(crate) enum Send {
    H1(hyper::client::conn::http1::SendRequest<B>),
    H2(hyper::client::conn::http2::SendRequest<B>),
}

pub(crate) struct Conn {
    pub(crate) id: usize,
    pub(crate) send: Send,
    pub(crate) driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    pub(crate) fn req(&self, method: &str, path: &str, body: B) -> Request<B> {
        let b = Request::builder().method(method);
        let b = match self.send {
            Send::H1(_) => b.uri(path).header(http::header::HOST, SERVER_NAME),
            Send::H2(_) => b.uri(format!("https://{SERVER_NAME}{path}")),
        };
        b.body(body).unwrap()
    }

    pub(crate) async fn send(&mut self, req: Request<B>) -> Result<Response<Incoming>, SendError> {
        let idempotent = req.method() == http::Method::GET;
        let class = |e| SendError::of(e, idempotent);
        match &mut self.send {
            Send::H1(s) => {
                s.ready().await.map_err(class)?;
                s.send_request(req).await.map_err(class)
            }
            Send::H2(s) => {
                s.ready().await.map_err(class)?;
                s.send_request(req).await.map_err(class)
            }
        }
    }

    pub(crate) fn h2_handle(&self) -> Option<hyper::client::conn::http2::SendRequest<B>> {
        match &self.send {
            Send::H2(s) => Some(s.clone()),
            Send::H1(_) => None,
        }
    }

    /// Closes it from the client's side (a voluntary reconnect or the end of the run).
    pub(crate) fn close(self, ctx: &Ctx) {
        ctx.conn_ended(self.id, "closed by the client", true);
        self.driver.abort();
    }

    /// Drops it after a failure (already recorded, so its end time stands).
    pub(crate) fn abandon(self, ctx: &Ctx) {
        ctx.conn_ended(self.id, "abandoned by the client", true);
        self.driver.abort();
    }
}

pub(crate) fn empty() -> B {
    Empty::<Bytes>::new().boxed()
}

/// A new TLS connection through apilb, HTTP/1.1 or HTTP/2. A failure is recorded.
pub(crate) async fn open(ctx: &Arc<Ctx>, kind: &'static str, h2: bool) -> Option<Conn> {
    let start = ctx.now();
    let tcp = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(ctx.lb)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            ctx.fail(
                None,
                "connect",
                start,
                format!("TCP connect to apilb: {e}"),
                (0, 0),
            );
            return None;
        }
        Err(_) => {
            ctx.fail(
                None,
                "connect",
                start,
                "TCP connect to apilb timed out".into(),
                (0, 0),
            );
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
    let id = ctx.new_conn(kind, port);
    let connector = if h2 { &ctx.h2 } else { &ctx.h1 };
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let tls =
        match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("TLS handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
            Err(_) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    "TLS handshake timed out (10 s)".into(),
                    (0, 0),
                );
                return None;
            }
        };
    let io = TokioIo::new(tls);
    let c2 = ctx.clone();
    let (send, driver) = if h2 {
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
            Ok((s, conn)) => (
                Send::H2(s),
                tokio::spawn(async move {
                    let why = match conn.await {
                        Ok(()) => "closed".to_string(),
                        Err(e) => format!("connection: {e}"),
                    };
                    c2.conn_ended(id, &why, false);
                }),
            ),
            Err(e) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("HTTP/2 handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
        }
    } else {
        match hyper::client::conn::http1::handshake(io).await {
            Ok((s, conn)) => (
                Send::H1(s),
                tokio::spawn(async move {
                    let why = match conn.await {
                        Ok(()) => "closed".to_string(),
                        Err(e) => format!("connection: {e}"),
                    };
                    c2.conn_ended(id, &why, false);
                }),
            ),
            Err(e) => {
                ctx.fail(
                    Some(id),
                    "connect",
                    start,
                    format!("HTTP/1.1 handshake: {e}"),
                    (0, 0),
                );
                return None;
            }
        }
    };
    Some(Conn { id, send, driver })
}
