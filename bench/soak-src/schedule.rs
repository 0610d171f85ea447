//! The fault schedule: the kinds of fault, and the seeded, reproducible plan of which
//! server gets which fault when. It plans only; `faults` carries the plan out.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::SPIKE_DELAY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Kill,
    Blackhole,
    NotReady,
    Freeze,
    /// A sub-second SIGSTOP (a GC pause, a VM hiccup): connections must ride it out.
    Stall,
    /// SIGTERM to a `--graceful` stand-in (kube-apiserver's shutdown, with `delay` as its
    /// shutdown delay), then a restart on the same address once it has exited.
    Graceful,
    /// `delay` more latency each way on every path at once (all three relays).
    Spike,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Blackhole => "blackhole",
            Kind::NotReady => "not_ready",
            Kind::Freeze => "freeze",
            Kind::Stall => "stall",
            Kind::Graceful => "graceful",
            Kind::Spike => "spike",
        }
    }
    /// Kills, freezes and blackholes leave the server's connections dead in the water.
    pub(crate) fn hard(self) -> bool {
        matches!(self, Kind::Kill | Kind::Blackhole | Kind::Freeze)
    }
    /// Silence: nothing answers for longer than apilb's PING windows. The only faults that
    /// may have apilb close client connections.
    pub(crate) fn silent(self) -> bool {
        matches!(self, Kind::Blackhole | Kind::Freeze)
    }
    /// The state apilb's failure model gives a server under this fault ("silence closes,
    /// speech drains": a killed process's kernel refuses and resets, which is speech).
    pub(crate) fn expected_state(self) -> Option<&'static str> {
        match self {
            Kind::Blackhole | Kind::Freeze => Some("down"),
            Kind::Kill | Kind::Graceful => Some("draining"),
            Kind::NotReady => Some("not_ready"),
            Kind::Stall | Kind::Spike => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// The server (a spike is on every path; its `server` is 0 and means nothing).
    pub(crate) server: usize,
    pub(crate) kind: Kind,
    /// Planned start and length (seconds from the start of traffic).
    pub(crate) at: f64,
    pub(crate) dur: f64,
    /// Graceful: the shutdown delay (/readyz fails, then the listener closes). Spike: the
    /// latency added each way.
    pub(crate) delay: f64,
    /// When the fault was in force and when it was lifted, as executed.
    pub(crate) began: Option<f64>,
    pub(crate) ended: Option<f64>,
    /// Graceful: when the stand-in exited, and its exit status.
    pub(crate) exited: Option<f64>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) note: String,
}

impl Fault {
    pub(crate) fn target(&self) -> String {
        if self.kind == Kind::Spike {
            "all".to_string()
        } else {
            format!("cp{}", self.server + 1)
        }
    }
    /// Graceful: when the listener closed (the shutdown delay after SIGTERM).
    pub(crate) fn listener_closed(&self) -> Option<f64> {
        self.began.map(|b| b + self.delay)
    }
    /// Graceful: until when the server was leaving (its exit, else its restart).
    pub(crate) fn gone(&self) -> Option<f64> {
        self.exited.or(self.ended)
    }
}

/// Seeded and reproducible: a fault starts every 1–5 s on a server that is not already
/// faulted or recovering, as long as at most one other is; each lasts 4–12 s (a stall
/// 0.2–1 s, a spike 1–2 s, a graceful shutdown its delay plus 2–6 s until the restart);
/// kinds come from a shuffled bag (a graceful shutdown twice, with and without a shutdown
/// delay) so every kind shows up early. A spike needs every server free and waits in the bag
/// for a slot where they are. Nothing in the first 5 s, and every fault is lifted 5 s before
/// the end.
pub(crate) fn schedule(seed: u64, seconds: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let warmup = 5.0;
    let quiet_from = seconds - 5.0;
    let mut faults = Vec::new();
    // Until when each server is faulted, and until when it is left alone to recover.
    let mut faulted_until = [0.0f64; 3];
    let mut busy_until = [0.0f64; 3];
    // (kind, with a shutdown delay)
    let mut bag: Vec<(Kind, bool)> = Vec::new();
    let mut t = warmup;
    loop {
        t += rng.random_range(1.0..5.0);
        if t + 4.0 > quiet_from {
            break;
        }
        let down = (0..3).filter(|&s| faulted_until[s] > t).count();
        let free: Vec<usize> = (0..3).filter(|&s| busy_until[s] <= t).collect();
        if down >= 2 || free.is_empty() {
            continue;
        }
        if bag.is_empty() {
            bag = vec![
                (Kind::Kill, false),
                (Kind::Blackhole, false),
                (Kind::NotReady, false),
                (Kind::Freeze, false),
                (Kind::Stall, false),
                (Kind::Graceful, false),
                (Kind::Graceful, true),
                (Kind::Spike, false),
            ];
            bag.shuffle(&mut rng);
        }
        let all_free = free.len() == 3 && down == 0;
        let Some(pick) = bag.iter().rposition(|(k, _)| all_free || *k != Kind::Spike) else {
            continue;
        };
        let (kind, delayed) = bag.remove(pick);
        let server = if kind == Kind::Spike {
            0
        } else {
            free[rng.random_range(0..free.len())]
        };
        let (dur, delay) = match kind {
            Kind::Stall => (rng.random_range(0.2..1.0f64), 0.0),
            Kind::Spike => (rng.random_range(1.0..2.0f64), SPIKE_DELAY),
            Kind::Graceful => {
                let delay = if delayed {
                    rng.random_range(2.0..4.0f64).min(quiet_from - t - 2.0)
                } else {
                    0.0
                };
                (
                    (delay + rng.random_range(2.0..6.0f64)).min(quiet_from - t),
                    delay,
                )
            }
            _ => (rng.random_range(4.0..12.0f64).min(quiet_from - t), 0.0),
        };
        let hit: Vec<usize> = if kind == Kind::Spike {
            vec![0, 1, 2]
        } else {
            vec![server]
        };
        for s in hit {
            faulted_until[s] = t + dur;
            busy_until[s] = t + dur + 3.0;
        }
        faults.push(Fault {
            server,
            kind,
            at: t,
            dur,
            delay,
            began: None,
            ended: None,
            exited: None,
            exit_code: None,
            note: String::new(),
        });
    }
    faults
}
