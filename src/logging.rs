//! Where log lines go: stderr, through a writer that can never take the process down.
//!
//! A log line that cannot be written (stderr's reader went away — a log collector or
//! journald restarted — or stderr is a full disk) is dropped and counted in
//! `apilb_log_write_errors_total`; apilb goes on serving. The writer never returns an error
//! to tracing-subscriber, whose fallback on a failed write is `eprintln!`, which panics when
//! stderr fails (fatal under `panic = "abort"`); `src/main.rs` also turns that fallback off.
//!
//! Owns the writer and the process-wide counter. Logging starts before the metric registry
//! exists, so the counter lives here and `Metrics` registers a handle to it.

use std::io::{self, Write};
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

static WRITE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Log lines dropped because stderr could not take them (one per line, since start).
pub fn write_errors() -> &'static Counter {
    &WRITE_ERRORS
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
        write_line(&mut io::stderr(), buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        write_line(&mut io::stderr(), buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Stderr is unbuffered; a failure here would only repeat the write's.
        let _ = io::stderr().flush();
        Ok(())
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
