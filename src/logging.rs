//! Where log lines go: stderr, through a writer that can never take the process down.
//!
//! A log line that cannot be written (stderr's reader went away — a log collector or
//! journald restarted — or stderr is a full disk) is dropped and counted in
//! `apilb_log_write_errors_total`; apilb goes on serving. The writer never returns an error
//! to tracing-subscriber, whose fallback on a failed write is `eprintln!`, which panics when
//! stderr fails (fatal under `panic = "abort"`); `src/main.rs` also turns that fallback off.
//!
//! A stderr that takes nothing and does not fail — its reader alive but not reading (a log
//! collector or journald stalled), a pipe full — would block every thread that logs, the
//! data plane's workers included. So `apilb run` hands its lines to a writer thread of
//! their own ([`write_from_a_thread`]) through a queue of at most [`BACKLOG_LINES`]; a
//! line that finds the queue full is dropped and counted in `apilb_log_lines_dropped_total`.
//! Only that thread ever waits on stderr. Before exiting, [`flush`] gives the queue a
//! bounded time to drain, so the last lines (the error that ends apilb) are not lost.
//!
//! Owns the writer, its thread and the process-wide counters. Logging starts before the
//! metric registry exists, so the counters live here and `Metrics` registers handles to
//! them.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

static WRITE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
static QUEUE: OnceLock<Queue> = OnceLock::new();

/// The most lines waiting for stderr: a stalled stderr costs at most this many lines of
/// memory (a few hundred KiB), then lines are dropped and counted.
pub const BACKLOG_LINES: usize = 1024;

/// Log lines dropped because stderr could not take them (one per line, since start).
pub fn write_errors() -> &'static Counter {
    &WRITE_ERRORS
}

/// Log lines dropped because [`BACKLOG_LINES`] were already waiting for stderr.
pub fn lines_dropped() -> &'static Counter {
    &DROPPED
}

/// The queue to the writer thread, and how far the thread got.
struct Queue {
    tx: SyncSender<Vec<u8>>,
    /// Lines queued since start.
    queued: AtomicU64,
    /// Lines the thread is done with (written or failed), and a wake-up for [`flush`].
    done: Arc<(Mutex<u64>, Condvar)>,
}

/// From now on, log lines are written by a thread of their own (see the module doc).
/// Returns false, and lines go on being written by whoever logs them, if the thread could
/// not be started or already was.
pub fn write_from_a_thread() -> bool {
    if QUEUE.get().is_some() {
        return false;
    }
    let (tx, rx) = sync_channel::<Vec<u8>>(BACKLOG_LINES);
    let done = Arc::new((Mutex::new(0u64), Condvar::new()));
    let progress = done.clone();
    let started = std::thread::Builder::new()
        .name("apilb-log".into())
        .spawn(move || {
            for line in rx {
                write_line(&mut io::stderr(), &line);
                let (count, wake) = &*progress;
                *count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                wake.notify_all();
            }
        });
    started.is_ok()
        && QUEUE
            .set(Queue {
                tx,
                queued: AtomicU64::new(0),
                done,
            })
            .is_ok()
}

/// Waits, at most `timeout`, until every line queued so far has been written (or failed).
/// Without a writer thread there is nothing to wait for.
pub fn flush(timeout: Duration) {
    let Some(q) = QUEUE.get() else {
        return;
    };
    let want = q.queued.load(Ordering::SeqCst);
    let deadline = Instant::now() + timeout;
    let (count, wake) = &*q.done;
    let mut done = count.lock().unwrap_or_else(PoisonError::into_inner);
    while *done < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        done = wake
            .wait_timeout(done, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// One whole line: to the writer thread's queue (dropped and counted when it is full), or
/// straight to stderr before that thread starts.
fn emit(line: &[u8]) {
    let Some(q) = QUEUE.get() else {
        write_line(&mut io::stderr(), line);
        return;
    };
    match q.tx.try_send(line.to_vec()) {
        Ok(()) => {
            q.queued.fetch_add(1, Ordering::SeqCst);
        }
        Err(TrySendError::Full(_)) => {
            DROPPED.inc();
        }
        // The thread is gone (it never panics; this is only defence): write it here.
        Err(TrySendError::Disconnected(_)) => write_line(&mut io::stderr(), line),
    }
}

/// Writes one whole line to `out`; on failure counts it and drops it. Never fails.
fn write_line(out: &mut impl Write, line: &[u8]) {
    if out.write_all(line).is_err() {
        WRITE_ERRORS.inc();
    }
}

/// The `MakeWriter` for tracing-subscriber: stderr, failures dropped and counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

/// One log line's writer (tracing-subscriber formats a whole line, then writes it once).
pub struct StderrLine;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine
    }
}

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        emit(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        emit(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Stderr is unbuffered; a failure here would only repeat the write's.
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// `--log-format json`: one JSON object a line, the event's fields flattened beside
/// `timestamp`, `level`, `message` and `target`. A field holding a list (logged as
/// `?vec_of_strings`) is a JSON array, and one holding a JSON object (`%json_value`) an
/// object, not their text in a string: tracing-subscriber's own JSON format has no way
/// to say so.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        let v = if field.name() != "message" && (text.starts_with('[') || text.starts_with('{')) {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(|v| v.is_array() || v.is_object())
                .unwrap_or(serde_json::Value::String(text))
        } else {
            serde_json::Value::String(text)
        };
        self.0.insert(field.name().to_string(), v);
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl JsonLines {
    /// The JSON object of one event (without the timestamp).
    fn object(event: &tracing::Event<'_>) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        map.insert("level".into(), event.metadata().level().to_string().into());
        event.record(&mut JsonFields(&mut map));
        map.insert("target".into(), event.metadata().target().into());
        map
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut map = Self::object(event);
        let mut ts = String::new();
        if tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ts))
            .is_ok()
        {
            map.insert("timestamp".into(), ts.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Records one event through `JsonLines::object`.
    struct Capture(Arc<Mutex<Vec<serde_json::Value>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let map = JsonLines::object(event);
            self.0.lock().unwrap().push(serde_json::Value::Object(map));
        }
    }

    #[test]
    fn json_lists_are_arrays_and_the_rest_stays_text() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(sub, || {
            let servers = vec!["10.0.0.1:6443".to_string(), "[fd00::1]:6443".to_string()];
            let addr: std::net::SocketAddr = "[::1]:6443".parse().unwrap();
            let config = serde_json::json!({"workers": 2});
            tracing::info!(servers = ?servers, addr = %addr, n = 3u64, ok = true,
                config = %config, "[not] a list");
        });
        let v = &seen.lock().unwrap()[0];
        assert_eq!(
            v["servers"],
            serde_json::json!(["10.0.0.1:6443", "[fd00::1]:6443"])
        );
        assert_eq!(v["addr"], "[::1]:6443");
        assert_eq!(v["config"]["workers"], 2);
        assert_eq!(v["message"], "[not] a list");
        assert_eq!(v["n"], 3);
        assert_eq!(v["ok"], true);
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn a_failed_line_is_counted_once_and_a_written_one_not_at_all() {
        let before = write_errors().get();
        write_line(&mut Broken, b"lost\n");
        assert_eq!(write_errors().get(), before + 1);
        let mut ok = Vec::new();
        write_line(&mut ok, b"kept\n");
        assert_eq!(ok, b"kept\n");
        assert_eq!(write_errors().get(), before + 1);
    }
}

/// `--log-format`: human-readable lines or one JSON object per line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}
