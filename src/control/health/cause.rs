//! What an error on the health connection says about the server: an I/O, HTTP/2 or HTTP/1.1
//! error read as a `Cause`. Pure classification; it never acts on a server.

use std::io;

use crate::control::judge::Cause;

/// What an I/O error on an established connection says about the server.
pub(super) fn io_cause(e: &io::Error) -> Cause {
    match e.kind() {
        io::ErrorKind::TimedOut => Cause::ping_timeout,
        io::ErrorKind::UnexpectedEof => Cause::closed,
        io::ErrorKind::InvalidData => Cause::protocol,
        _ => Cause::reset,
    }
}

/// What an ended HTTP/2 connection says, `goaway` telling whether a GOAWAY came first.
pub(super) fn h2_cause(e: &h2::Error, goaway: bool) -> Cause {
    if goaway || e.is_go_away() {
        Cause::goaway
    } else if let Some(io) = e.get_io() {
        io_cause(io)
    } else {
        Cause::protocol
    }
}

pub(super) fn hyper_cause(e: &hyper::Error) -> Cause {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io_cause(io);
        }
        source = s.source();
    }
    if e.is_parse_too_large() {
        Cause::oversized
    } else if e.is_incomplete_message() {
        Cause::closed
    } else {
        Cause::protocol
    }
}
