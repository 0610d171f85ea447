//! Choosing a server: the order in which a new client connection tries the servers.
//!
//! Eligible servers (ready, or not checked yet, and with no recent failed connect) come
//! first, fewest active connections first, ties broken at random so that equal servers share
//! the load. The others follow, so that a client sees a failure only when every server
//! failed. When no server is eligible, apilb is in panic mode: a wrong health verdict must
//! never cut the node off, so every server is tried anyway — those that answer /readyz with
//! an error (alive) first, then those leaving, then the silent ones. Pure function of a snapshot; no I/O.

use std::sync::Arc;

use rand::seq::SliceRandom;

use crate::control::backend::{Backend, State};

/// The servers to try, best first, and whether this is panic mode.
pub struct Plan {
    pub order: Vec<Arc<Backend>>,
    pub panic: bool,
}

fn eligible(b: &Backend) -> bool {
    matches!(b.state(), State::Ready | State::Unknown) && !b.passive_failed()
}

fn fallback_rank(b: &Backend) -> u8 {
    match b.state() {
        State::Ready | State::Unknown => 0,
        State::NotReady => 1,
        State::Draining => 2,
        State::Down => 3,
    }
}

pub fn plan(set: &[Arc<Backend>]) -> Plan {
    let mut order: Vec<Arc<Backend>> = set.to_vec();
    rank(&mut order);
    let panic = !order.first().is_some_and(|b| eligible(b));
    Plan { order, panic }
}

/// Sorts servers best first by what is known now (health changes while a connection is
/// being set up, so a replay re-ranks what is left before choosing).
pub fn rank(order: &mut [Arc<Backend>]) {
    order.shuffle(&mut rand::rng());
    // Stable sort keeps the random order among equals.
    order.sort_by_key(|b| (!eligible(b), fallback_rank(b), b.active()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::server::ServerSpec;
    use tokio_util::sync::CancellationToken;

    fn set(n: usize) -> Vec<Arc<Backend>> {
        let root = CancellationToken::new();
        let m = Arc::new(Metrics::new());
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(
                    ServerSpec::parse(&format!("127.0.0.{}:1", i + 2)).unwrap(),
                    &root,
                    m.clone(),
                    State::Unknown,
                ))
            })
            .collect()
    }

    #[test]
    fn least_connections_among_ready() {
        let s = set(3);
        for b in &s {
            b.set_state(State::Ready, "ok");
        }
        let _g = [s[0].claim(), s[0].claim(), s[2].claim()];
        let p = plan(&s);
        assert!(!p.panic);
        assert!(Arc::ptr_eq(&p.order[0], &s[1]));
        assert!(Arc::ptr_eq(&p.order[1], &s[2]));
        assert!(Arc::ptr_eq(&p.order[2], &s[0]));
    }

    #[test]
    fn ties_are_broken_at_random() {
        let s = set(3);
        let mut seen = [false; 3];
        for _ in 0..200 {
            let p = plan(&s);
            let i = s.iter().position(|b| Arc::ptr_eq(b, &p.order[0])).unwrap();
            seen[i] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn unhealthy_and_failed_servers_go_last() {
        let s = set(4);
        s[0].set_state(State::Down, "gone");
        s[1].set_state(State::NotReady, "readyz 500");
        s[2].set_state(State::Ready, "ok");
        s[3].set_state(State::Ready, "ok");
        s[3].mark_passive_failure(crate::control::backend::PassiveFailure::Connect, "refused");
        let p = plan(&s);
        assert!(!p.panic);
        assert!(Arc::ptr_eq(&p.order[0], &s[2]));
        assert_eq!(
            p.order.len(),
            4,
            "every server stays in the plan as a fallback"
        );
    }

    #[test]
    fn panic_mode_when_none_is_eligible() {
        let s = set(2);
        s[0].set_state(State::Down, "gone");
        s[1].set_state(State::NotReady, "readyz 500");
        let p = plan(&s);
        assert!(p.panic);
        assert!(Arc::ptr_eq(&p.order[0], &s[1]), "alive before down");
        assert_eq!(p.order.len(), 2);
    }
}
