//! Unit tests of `control::judge`.

use super::*;
use Observation as O;
use State as S;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn judge() -> Judge {
    Judge::new(2, 2, MS(600), MS(2000))
}

/// Feeds `obs` in turn, applying each transition; returns the final state and whether any
/// step ever reached `Down`.
fn run(start: S, obs: &[Observation]) -> S {
    let mut j = judge();
    let mut s = start;
    for o in obs {
        if let Some((to, _)) = j.observe(s, *o).to {
            s = to;
        }
    }
    s
}

fn ok() -> O {
    O::Answered { rtt: MS(1) }
}

/// The failure model, one row per observation: (state before, observations, state after).
#[test]
fn failure_model_table() {
    let rows: &[(&str, S, &[Observation], S)] = &[
        (
            "PING answered: nothing changes",
            S::Ready,
            &[ok()],
            S::Ready,
        ),
        (
            "one PING window missed: one late PING flips nothing",
            S::Ready,
            &[O::Unanswered],
            S::Ready,
        ),
        (
            "fall windows missed: silent, down",
            S::Ready,
            &[O::Unanswered, O::Unanswered],
            S::Down,
        ),
        (
            "never checked: one silent window is enough",
            S::Unknown,
            &[O::Unanswered],
            S::Down,
        ),
        (
            "late answer on the same connection: back to ready",
            S::Ready,
            &[O::Unanswered, O::Unanswered, O::Answered { rtt: MS(1600) }],
            S::Ready,
        ),
        (
            "an answer between misses resets the count",
            S::Ready,
            &[O::Unanswered, ok(), O::Unanswered],
            S::Ready,
        ),
        (
            "/readyz 2xx from not ready needs rise",
            S::NotReady,
            &[O::Readyz(200)],
            S::NotReady,
        ),
        (
            "/readyz 2xx rise times: ready",
            S::NotReady,
            &[O::Readyz(200), O::Readyz(200)],
            S::Ready,
        ),
        (
            "/readyz 2xx at startup: ready at once",
            S::Unknown,
            &[O::Readyz(200)],
            S::Ready,
        ),
        (
            "/readyz 401: reachable, ready",
            S::Unknown,
            &[O::Readyz(401)],
            S::Ready,
        ),
        (
            "/readyz 403: reachable, ready",
            S::Unknown,
            &[O::Readyz(403)],
            S::Ready,
        ),
        (
            "/readyz 500: not ready at once",
            S::Ready,
            &[O::Readyz(500)],
            S::NotReady,
        ),
        (
            "/readyz 503 from draining: not ready",
            S::Draining,
            &[O::Readyz(503)],
            S::NotReady,
        ),
        (
            "/readyz timeout: not ready",
            S::Ready,
            &[O::ReadyzTimeout],
            S::NotReady,
        ),
        (
            "/readyz timeout while down stays down",
            S::Down,
            &[O::ReadyzTimeout],
            S::Down,
        ),
        (
            "GOAWAY: draining at once",
            S::Ready,
            &[O::Ended(Cause::goaway)],
            S::Draining,
        ),
        (
            "FIN: draining at once",
            S::Ready,
            &[O::Ended(Cause::closed)],
            S::Draining,
        ),
        (
            "reset: draining at once",
            S::Ready,
            &[O::Ended(Cause::reset)],
            S::Draining,
        ),
        (
            "refused: draining at once",
            S::Ready,
            &[O::Ended(Cause::refused)],
            S::Draining,
        ),
        (
            "refused while down (host back, process not): draining",
            S::Down,
            &[O::Ended(Cause::refused)],
            S::Draining,
        ),
        (
            "connect timeout once: nothing yet",
            S::Ready,
            &[O::Ended(Cause::connect_timeout)],
            S::Ready,
        ),
        (
            "connect timeout fall times: down",
            S::Ready,
            &[
                O::Ended(Cause::connect_timeout),
                O::Ended(Cause::connect_timeout),
            ],
            S::Down,
        ),
        (
            "handshake timeout fall times: down",
            S::Ready,
            &[
                O::Ended(Cause::handshake_timeout),
                O::Ended(Cause::handshake_timeout),
            ],
            S::Down,
        ),
        (
            "no route to host fall times: down",
            S::Ready,
            &[O::Ended(Cause::unreachable), O::Ended(Cause::unreachable)],
            S::Down,
        ),
        (
            "TLS failure: not ready, never down",
            S::Ready,
            &[
                O::Ended(Cause::tls),
                O::Ended(Cause::tls),
                O::Ended(Cause::tls),
            ],
            S::NotReady,
        ),
        (
            "not HTTP: not ready",
            S::Ready,
            &[O::Ended(Cause::protocol)],
            S::NotReady,
        ),
        (
            "draining, then ready again after rise good /readyz",
            S::Draining,
            &[O::Readyz(200), O::Readyz(200)],
            S::Ready,
        ),
        (
            "down, reconnected: ready after rise good /readyz",
            S::Down,
            &[O::Readyz(200), O::Readyz(200)],
            S::Ready,
        ),
    ];
    for (what, start, obs, want) in rows {
        assert_eq!(run(*start, obs), *want, "{what}");
    }
}

#[test]
fn only_silence_leads_to_down() {
    for cause in Cause::ALL {
        let s = run(
            S::Ready,
            &[O::Ended(cause), O::Ended(cause), O::Ended(cause)],
        );
        assert_eq!(s == S::Down, cause.is_silence(), "{cause:?} led to {s:?}");
        assert!(!(cause.is_silence() && cause.is_leaving()));
    }
}

#[test]
fn failures_are_counted_by_cause() {
    let mut j = judge();
    assert_eq!(
        j.observe(S::Ready, O::Unanswered).failure,
        Some(Cause::ping_timeout)
    );
    assert_eq!(
        j.observe(S::Ready, O::Readyz(500)).failure,
        Some(Cause::readyz_status)
    );
    assert_eq!(
        j.observe(S::Ready, O::Ended(Cause::goaway)).failure,
        Some(Cause::goaway)
    );
    assert_eq!(j.observe(S::Ready, O::Readyz(200)).failure, None);
    assert_eq!(j.observe(S::Ready, ok()).failure, None);
}

#[test]
fn the_auth_warning_is_given_once() {
    let mut j = judge();
    assert!(j.observe(S::Unknown, O::Readyz(401)).warn_auth);
    assert!(!j.observe(S::Ready, O::Readyz(401)).warn_auth);
    assert!(!j.observe(S::Ready, O::Readyz(403)).warn_auth);
}

#[test]
fn a_late_answer_after_a_new_connection_does_not_restore() {
    // Down from silence, then the connection ended: the next connection starts afresh and
    // must earn ready through /readyz.
    let s = run(
        S::Ready,
        &[
            O::Unanswered,
            O::Unanswered,
            O::Ended(Cause::ping_timeout),
            ok(),
        ],
    );
    assert_eq!(s, S::Down);
}

#[test]
fn on_time_is_judged_against_the_window() {
    let mut j = judge();
    assert!(j.observe(S::Ready, ok()).on_time);
    let late = j.observe(S::Ready, O::Answered { rtt: MS(1600) });
    assert!(
        !late.on_time,
        "an answer past the window is late, though an answer"
    );
    assert_eq!(late.to, None);
}

#[test]
fn the_window_follows_the_servers_own_rtt() {
    let floor = MS(600);
    let ceiling = MS(2000);
    let mut r = Rtt::default();
    assert_eq!(
        r.window(floor, ceiling),
        floor,
        "no sample yet: the configured timeout"
    );
    for _ in 0..20 {
        r.sample(MS(1));
    }
    assert_eq!(
        r.window(floor, ceiling),
        floor,
        "never below the configured timeout"
    );
    // A path that is uniformly slower (300 ms) gets a window that fits it…
    for _ in 0..50 {
        r.sample(MS(300));
    }
    let w = r.window(floor, ceiling);
    assert!(w >= MS(600) && w < MS(2000), "{w:?}");
    // …and a jittery slow path a longer one, capped at the health timeout.
    for i in 0..50 {
        r.sample(MS(if i % 2 == 0 { 200 } else { 1500 }));
    }
    let w2 = r.window(floor, ceiling);
    assert!(w2 > w, "{w2:?} <= {w:?}");
    assert!(w2 <= ceiling);
    // Smoothing, as TCP: one sample moves srtt by an eighth.
    let mut r = Rtt::default();
    r.sample(MS(100));
    r.sample(MS(900));
    assert_eq!(r.smoothed(), Some(MS(200)));
}

#[test]
fn a_late_answer_does_not_widen_the_window() {
    let mut j = judge();
    for _ in 0..10 {
        j.observe(S::Ready, ok());
    }
    let before = j.window();
    j.observe(S::Ready, O::Answered { rtt: MS(6000) });
    assert_eq!(
        j.window(),
        before,
        "the next silence must be judged as quickly"
    );
}

#[test]
fn a_uniformly_slower_path_is_not_silence() {
    // 300 ms each PING, every PING answered: never a miss, never down.
    let mut j = judge();
    let mut s = S::Ready;
    for _ in 0..100 {
        let v = j.observe(s, O::Answered { rtt: MS(300) });
        if let Some((to, _)) = v.to {
            s = to;
        }
    }
    assert_eq!(s, S::Ready);
    assert!(j.window() >= MS(600));
}
