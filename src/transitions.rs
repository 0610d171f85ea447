//! The record of recent server state changes, for `/status`: a bounded ring of the last
//! `KEEP` transitions (server, from, to, cause, Unix time in ms), each numbered by `seq`
//! (from 1, one more per transition, never reused while the process lives). A reader that
//! polls `/status` keeps what it has not seen (`seq` above the last it saw) and knows it
//! missed some when the oldest entry's `seq` is more than one above that.
//!
//! Owns only the record. It decides no state and logs nothing: `Backend::set_state` changes
//! the state, logs the change and records it here. The counters of the same changes are
//! `apilb_server_state_transitions_total` (metrics).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many transitions `/status` keeps: minutes of a flapping fleet, a few kB.
pub const KEEP: usize = 256;

/// One change of a server's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// 1 for the first transition since start, one more for each.
    pub seq: u64,
    pub server: String,
    pub from: String,
    pub to: String,
    /// Why, as the health checker (or discovery) said it.
    pub cause: String,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// The ring. Cheap: a mutex held for a push, taken only when a state changes.
#[derive(Debug, Default)]
pub struct Transitions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last_seq: u64,
    ring: VecDeque<Transition>,
}

impl Transitions {
    /// Records a change of `server` from `from` to `to`.
    pub fn push(&self, server: &str, from: &str, to: &str, cause: &str) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut i = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        i.last_seq += 1;
        let seq = i.last_seq;
        if i.ring.len() == KEEP {
            i.ring.pop_front();
        }
        i.ring.push_back(Transition {
            seq,
            server: server.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            cause: cause.to_string(),
            unix_ms,
        });
    }

    /// The kept transitions, oldest first.
    pub fn recent(&self) -> Vec<Transition> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ring
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_every_change_and_keeps_the_last_ones() {
        let t = Transitions::default();
        assert!(t.recent().is_empty());
        for i in 0..KEEP + 3 {
            t.push(&format!("cp{i}"), "ready", "down", "ping timeout");
        }
        let kept = t.recent();
        assert_eq!(kept.len(), KEEP);
        // The three oldest fell out; numbering goes on without a gap.
        assert_eq!(kept[0].seq, 4);
        assert_eq!(kept[0].server, "cp3");
        assert!(kept.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(kept[KEEP - 1].seq, (KEEP + 3) as u64);
        assert_eq!(kept[KEEP - 1].from, "ready");
        assert_eq!(kept[KEEP - 1].to, "down");
        assert_eq!(kept[KEEP - 1].cause, "ping timeout");
        assert!(kept[KEEP - 1].unix_ms > 1_600_000_000_000);
    }
}
