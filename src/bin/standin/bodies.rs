//! The streamed response bodies: `/bytes` (the `i % 251` pattern in chunks sharing one
//! buffer), `/slow` (that pattern in 20 slices over a period) and `/watch` (one JSON line
//! per tick, ended cleanly by a graceful shutdown). Owns the bodies; which request gets
//! one is `routes`'.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{BoxError, PATTERN_LEN, PERIOD};

/// `/bytes` body: `remaining` bytes of the `i % 251` pattern, in chunks that share
/// one buffer.
pub(crate) struct PatternBody {
    pattern: Bytes,
    remaining: u64,
}

impl PatternBody {
    pub(crate) fn new(n: u64) -> Self {
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
pub(crate) struct SlowBody {
    sent: u64,
    remaining: u64,
    slice: u64,
    interval: Interval,
}

impl SlowBody {
    pub(crate) fn new(n: u64, period: Duration) -> Self {
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
pub(crate) struct WatchBody {
    name: Arc<str>,
    interval: Interval,
    seq: u64,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl WatchBody {
    pub(crate) fn new(name: Arc<str>, period: Duration, shutdown: CancellationToken) -> Self {
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

/// `s` as a JSON string literal, quotes included.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
