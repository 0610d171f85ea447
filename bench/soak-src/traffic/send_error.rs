//! How a request that got no response head failed, and whether a client may retry it
//! (the rules Go's transport follows). Shared by the clients and the record; judges nothing.

/// The start of the error of a non-idempotent request whose HTTP/1.1 connection the server
/// closed before any byte of an answer: the race with a server closing what it took for an
/// idle connection. Not retried (a client cannot know the server never took it), recorded
/// as a failure, and told apart by the analysis.
pub(crate) const UNANSWERED: &str =
    "no answer: the server closed the connection before any byte of one";

/// A request that got no response head, and whether the server provably never took it.
pub(crate) struct SendError {
    pub(crate) retry: bool,
    pub(crate) msg: String,
}

impl SendError {
    /// Never taken: the connection was already closed (`is_closed`) or closed before the
    /// request went out (`is_canceled`); HTTP/2 refused it (REFUSED_STREAM, or a stream
    /// above the last one a GOAWAY lets finish); or, for an idempotent request, HTTP/1.1's
    /// race with a server closing an idle connection (closed before any byte of an answer).
    /// Go's transport retries all of these on a new connection, and so do the workers.
    pub(crate) fn of(e: hyper::Error, idempotent: bool) -> SendError {
        let retry = e.is_closed()
            || e.is_canceled()
            || (idempotent && e.is_incomplete_message())
            || refused_by_h2(&e);
        let msg = if !idempotent && e.is_incomplete_message() {
            format!("{UNANSWERED} ({e})")
        } else {
            e.to_string()
        };
        SendError { retry, msg }
    }

    pub(crate) fn failed(msg: String) -> SendError {
        SendError { retry: false, msg }
    }
}

pub(crate) fn refused_by_h2(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = source {
        if let Some(h) = x.downcast_ref::<h2::Error>() {
            return h.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = x.source();
    }
    false
}
