//! Unit tests of the server set: states, tokens, the witness rule, transitions counted.

use super::*;

fn spec(s: &str) -> ServerSpec {
    ServerSpec::parse(s).unwrap()
}

fn two() -> (Backends, Arc<Backend>, Arc<Backend>) {
    let set = Backends::new(CancellationToken::new(), Arc::new(Metrics::new()));
    let seed = |s: &str| (spec(s), Source::Seed);
    set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.3:1")], Removal::Close);
    let (a, b) = (set.snapshot()[0].clone(), set.snapshot()[1].clone());
    a.set_state(State::Ready, "ok");
    b.set_state(State::Ready, "ok");
    (set, a, b)
}

#[test]
fn no_state_alone_closes_connections() {
    let root = CancellationToken::new();
    let b = Backend::new(
        spec("127.0.0.2:1"),
        &root,
        Arc::new(Metrics::new()),
        State::Unknown,
    );
    let pinned = b.conn_token();
    for s in State::ALL {
        b.set_state(s, "test");
        assert!(!pinned.is_cancelled(), "{s:?} closed connections by itself");
    }
    b.close_connections();
    assert!(pinned.is_cancelled());
    assert!(
        !b.conn_token().is_cancelled(),
        "a fresh token for new connections"
    );
}

#[test]
fn a_silent_server_is_closed_once_another_answers_a_later_question() {
    let (set, a, b) = two();
    let t0 = Instant::now();
    let pinned = a.conn_token();
    // b's last on-time answer was to a PING asked before a went silent: no evidence.
    set.answered(&b, t0);
    a.set_state(State::Down, "silent");
    set.silent(&a, t0 + Duration::from_millis(1));
    assert!(!pinned.is_cancelled(), "nowhere known to be alive yet");
    // b answers a PING asked after a's silence began: close.
    set.answered(&b, t0 + Duration::from_millis(2));
    assert!(pinned.is_cancelled());
}

#[test]
fn a_silent_server_is_closed_at_once_when_another_already_answered_later() {
    let (set, a, b) = two();
    let t0 = Instant::now();
    let pinned = a.conn_token();
    set.answered(&b, t0 + Duration::from_millis(5));
    a.set_state(State::Down, "silent");
    set.silent(&a, t0);
    assert!(pinned.is_cancelled());
}

#[test]
fn closing_needs_a_ready_witness_and_a_silent_server() {
    let (set, a, b) = two();
    let t0 = Instant::now();
    let pinned = a.conn_token();
    a.set_state(State::Down, "silent");
    set.silent(&a, t0);
    // A witness that is not ready does not count.
    b.set_state(State::NotReady, "readyz 500");
    set.answered(&b, t0 + Duration::from_millis(1));
    assert!(!pinned.is_cancelled());
    // A late answer from a itself: not silent any more, nothing pending.
    set.spoke(&a);
    b.set_state(State::Ready, "ok");
    set.answered(&b, t0 + Duration::from_millis(2));
    assert!(!pinned.is_cancelled());
    // Silent again, and b answers: closed.
    set.silent(&a, t0 + Duration::from_millis(3));
    set.answered(&b, t0 + Duration::from_millis(4));
    assert!(pinned.is_cancelled());
    // A server that is not down is never closed by another's answer.
    let pinned_b = b.conn_token();
    set.answered(&a, t0 + Duration::from_millis(5));
    assert!(!pinned_b.is_cancelled());
}

#[test]
fn a_passive_failure_is_cleared_only_by_a_check_asked_after_it() {
    let (_set, a, _b) = two();
    let before = Instant::now();
    a.mark_passive_failure(PassiveFailure::Connect, "refused");
    a.clear_passive_failure(before);
    assert!(
        a.passive_failed(),
        "a check asked before the failure proves nothing"
    );
    a.clear_passive_failure(Instant::now());
    assert!(!a.passive_failed());
}

#[test]
fn replace_keeps_survivors_and_retires_the_removed() {
    let root = CancellationToken::new();
    let set = Backends::new(root, Arc::new(Metrics::new()));
    let seed = |s: &str| (spec(s), Source::Seed);
    set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.3:1")], Removal::Close);
    let first = set.snapshot()[0].clone();
    let second = set.snapshot()[1].clone();
    let pinned = second.conn_token();
    first.set_state(State::Ready, "ok");
    let ch = set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.4:1")], Removal::Close);
    assert_eq!(ch.added.len(), 1);
    assert_eq!(ch.removed.len(), 1);
    assert!(Arc::ptr_eq(&set.snapshot()[0], &first));
    assert_eq!(set.snapshot()[0].state(), State::Ready);
    assert!(pinned.is_cancelled());
    assert!(second.retired().is_cancelled());
    // Added later: not eligible until its health checks pass.
    assert_eq!(set.snapshot()[1].state(), State::NotReady);
}

#[tokio::test]
async fn drained_servers_keep_connections_until_they_end() {
    let root = CancellationToken::new();
    let set = Backends::new(root, Arc::new(Metrics::new()));
    let seed = |s: &str| (spec(s), Source::Seed);
    set.replace(&[seed("127.0.0.2:1"), seed("127.0.0.3:1")], Removal::Close);
    let leaving = set.snapshot()[1].clone();
    let conn = leaving.claim();
    let pinned = leaving.conn_token();
    set.replace(
        &[seed("127.0.0.2:1")],
        Removal::Drain(Duration::from_secs(3600)),
    );
    assert_eq!(set.snapshot().len(), 1, "no new connections to it");
    assert!(!pinned.is_cancelled(), "its connection stays");
    assert!(leaving.is_removed());
    assert_eq!(set.removed().len(), 1);
    drop(conn);
    leaving.retired().cancelled().await;
    assert!(set.removed().is_empty());
}

#[test]
fn guard_counts() {
    let root = CancellationToken::new();
    let b = Arc::new(Backend::new(
        spec("127.0.0.2:1"),
        &root,
        Arc::new(Metrics::new()),
        State::Unknown,
    ));
    let g1 = b.claim();
    let g2 = b.claim();
    assert_eq!(b.active(), 2);
    drop(g1);
    drop(g2);
    assert_eq!(b.active(), 0);
}

#[test]
fn state_changes_are_counted_by_the_state_entered() {
    let metrics = Arc::new(Metrics::new());
    let b = Backend::new(
        spec("127.0.0.2:1"),
        &CancellationToken::new(),
        metrics.clone(),
        State::Unknown,
    );
    let count = |to: State| {
        metrics
            .state_transitions
            .get_or_create(&crate::metrics::ServerTransition {
                server: "127.0.0.2:1".to_string(),
                to: to.as_str(),
            })
            .get()
    };
    b.set_state(State::Ready, "readyz ok");
    b.set_state(State::Ready, "readyz ok again");
    assert_eq!(count(State::Ready), 1, "staying ready is no transition");
    b.set_state(State::Down, "silent");
    b.set_state(State::Ready, "back");
    assert_eq!(count(State::Ready), 2);
    assert_eq!(count(State::Down), 1);
    assert_eq!(count(State::Draining), 0);
}

#[tokio::test]
async fn a_failed_re_resolution_says_why_and_keeps_the_last_addresses() {
    // A NUL in the name fails the lookup before any resolver is asked: no traffic.
    let host = "cp\0one".to_string();
    let spec = ServerSpec {
        host: host.clone(),
        port: 6443,
    };
    let b = Backend::new(
        spec,
        &CancellationToken::new(),
        Arc::new(Metrics::new()),
        State::Unknown,
    );
    assert!(b.needs_resolution());
    let before = b.addrs();
    match b.resolve().await {
        Err(e @ ResolveError::Lookup { .. }) => {
            assert!(e.to_string().starts_with("cannot resolve cp\0one: "), "{e}");
        }
        other => panic!("expected a failed lookup, got {other:?}"),
    }
    assert_eq!(b.addrs(), before);
}
