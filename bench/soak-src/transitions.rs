//! apilb's server state changes, read from its own state: `/status` `transitions` (a
//! numbered ring of the last changes) polled during the run, each change kept once (by its
//! `seq`), a gap between polls counted. Replaces parsing the "server state changed" log
//! line, whose wording is for people.
//!
//! Owns the polling and the dedupe only; what the changes mean for the run is `analyse`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::Apilb;
use crate::resources::admin_status;

/// Every change seen so far, by `seq`, and how many the polls missed.
#[derive(Default)]
pub(crate) struct Transitions {
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_seq: BTreeMap<u64, Value>,
    missed: u64,
}

impl Transitions {
    /// Reads `/status` once and keeps the changes not seen yet. A poll that finds the
    /// oldest kept entry more than one past the last seen one counts the gap as missed
    /// (the ring turned over between two polls). Nothing if `/status` does not answer.
    pub(crate) async fn poll(&self, lb: &Apilb) {
        let Some(status) = admin_status(lb).await else {
            return;
        };
        let Some(list) = status["transitions"].as_array() else {
            return;
        };
        let mut seen = self.inner.lock().unwrap();
        let last = seen.by_seq.keys().next_back().copied().unwrap_or(0);
        let mut oldest_new = None;
        for t in list {
            let Some(seq) = t["seq"].as_u64() else {
                continue;
            };
            if seq > last {
                oldest_new = Some(oldest_new.map_or(seq, |o: u64| o.min(seq)));
                seen.by_seq.insert(seq, t.clone());
            }
        }
        if let Some(first) = oldest_new {
            seen.missed += first - last - 1;
        }
    }

    /// The changes in order, each with `t` (seconds since `wall0`, on apilb's clock as its
    /// log was) and `name` (the stand-in's name, where `names` knows the server).
    pub(crate) fn changes(
        &self,
        wall0: SystemTime,
        names: &HashMap<String, String>,
    ) -> (Vec<Value>, u64) {
        let seen = self.inner.lock().unwrap();
        let t0 = wall0
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let changes = seen
            .by_seq
            .values()
            .map(|v| {
                let mut c = v.clone();
                let t = v["unix_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0 - t0;
                c["t"] = json!((t * 100.0).round() / 100.0);
                if let Some(n) = v["server"].as_str().and_then(|s| names.get(s)) {
                    c["name"] = json!(n);
                }
                c
            })
            .collect();
        (changes, seen.missed)
    }
}
