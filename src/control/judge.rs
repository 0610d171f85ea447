//! Health verdicts: an observation of one server goes in, a state transition comes out. Where
//! a server's health is *decided*; `health` only makes the observations and `backend` only
//! records the result.
//!
//! Pure: no I/O, no clock, no knowledge of other servers (whether closing a silent server's
//! connections has somewhere to go is the set's question, `Backends::silent`). Every row of
//! the failure model is a unit test below.
//!
//! The rule is **silence closes, speech drains**:
//! * *silence* — a PING (or an HTTP/1.1 /readyz) unanswered for a whole window, a TCP
//!   connect or a TLS/HTTP/2 handshake that times out, no route to the host — counts up;
//!   `fall` in a row (one while the server was never checked) make it **down**. Only this
//!   state lets apilb close the client connections pinned to the server (a dead host, a
//!   partition, a frozen process: those connections are dead too);
//! * *speech* — a GOAWAY, a FIN or reset on the health connection, a refused connect — makes
//!   it **draining** at once: it is leaving (or its process is gone, and its kernel has
//!   already ended its connections). No new connections; the open ones are its to finish;
//! * `/readyz` non-2xx, or no /readyz answer while PINGs are answered (a slow handler), or a
//!   failed TLS handshake (the server answered, but not as the CA says) make it **not
//!   ready**: no new connections, the open ones left alone;
//! * `/readyz` 2xx (or 401/403: reachable, readiness unknown, warned about once) `rise`
//!   times in a row (once while never checked) make it **ready**;
//! * a late answer is an answer: a PING answered after the server was called down (on the
//!   same connection) puts it back where it was, and PING windows follow the server's own
//!   round-trip time (`Rtt`), so a uniformly slower path is not silence.

use std::time::Duration;

pub use crate::server::Cause;
use crate::server::State;

/// What a health check saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    /// A PING (or an HTTP/1.1 /readyz: there it is the liveness probe) was answered after `rtt`.
    Answered { rtt: Duration },
    /// The outstanding PING went a whole window (`Judge::window`) without an answer.
    Unanswered,
    /// `/readyz` answered this status.
    Readyz(u16),
    /// `/readyz` went unanswered for the health timeout while the connection lives.
    ReadyzTimeout,
    /// The health connection ended, or could not be made, for this cause.
    Ended(Cause),
}

/// What the judge decided.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Verdict {
    /// The state to move to, and why (for the log line and `/status`).
    pub to: Option<(State, String)>,
    /// The observation was a failure of this cause (counted in metrics).
    pub failure: Option<Cause>,
    /// A 401/403 /readyz answer was seen for the first time: warn the operator once.
    pub warn_auth: bool,
    /// The answer came on time (within the window): evidence that this server is live *now*,
    /// which lets the set close the connections of a server that went silent.
    pub on_time: bool,
}

/// Smoothed round-trip time and its variance, as TCP keeps them (RFC 6298), giving the window
/// a PING gets before it counts as unanswered: `srtt + 4·rttvar`, never below the configured
/// PING timeout and never above the health timeout.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Rtt {
    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let err = s.abs_diff(r);
                self.rttvar = self.rttvar.mul_f64(0.75) + err.mul_f64(0.25);
                self.srtt = Some(s.mul_f64(0.875) + r.mul_f64(0.125));
            }
        }
    }

    pub fn window(&self, floor: Duration, ceiling: Duration) -> Duration {
        let est = self
            .srtt
            .map_or(Duration::ZERO, |s| s + self.rttvar.saturating_mul(4));
        est.min(ceiling.max(floor)).max(floor)
    }

    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }
}

/// The consecutive-result counters of one server and the verdicts they lead to.
#[derive(Debug)]
pub struct Judge {
    fall: u32,
    rise: u32,
    /// Consecutive silent observations.
    silent: u32,
    /// Consecutive good /readyz answers.
    ready: u32,
    warned_auth: bool,
    /// The state before this connection's PING went unanswered: where a late answer on the
    /// same connection puts the server back.
    before_silence: Option<State>,
    pub rtt: Rtt,
    floor: Duration,
    ceiling: Duration,
}

fn fmt(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

impl Judge {
    /// `ping_timeout` is the shortest PING window, `ceiling` the longest (the health timeout).
    pub fn new(fall: u32, rise: u32, ping_timeout: Duration, ceiling: Duration) -> Judge {
        Judge {
            fall: fall.max(1),
            rise: rise.max(1),
            silent: 0,
            ready: 0,
            warned_auth: false,
            before_silence: None,
            rtt: Rtt::default(),
            floor: ping_timeout,
            ceiling,
        }
    }

    /// How long the outstanding PING may go unanswered before it counts as silence.
    pub fn window(&self) -> Duration {
        self.rtt.window(self.floor, self.ceiling)
    }

    /// Judges `obs` for a server now in state `now`.
    pub fn observe(&mut self, now: State, obs: Observation) -> Verdict {
        let mut v = Verdict::default();
        let to = |s: State, why: String| (s != now).then_some((s, why));
        match obs {
            Observation::Answered { rtt } => {
                v.on_time = rtt <= self.window();
                // Only on-time answers are samples (Karn's rule, in spirit): an answer that
                // ends a silence or a spike would hold the window at its ceiling for many
                // PINGs, and the next real silence would be called late.
                if v.on_time {
                    self.rtt.sample(rtt);
                }
                self.silent = 0;
                if let Some(before) = self.before_silence.take() {
                    if now == State::Down {
                        let back = if before == State::Down {
                            State::NotReady
                        } else {
                            before
                        };
                        v.to = to(
                            back,
                            format!("answered after {}: a late answer is an answer", fmt(rtt)),
                        );
                    }
                }
            }
            Observation::Unanswered => {
                v.failure = Some(Cause::ping_timeout);
                self.ready = 0;
                if self.before_silence.is_none() {
                    self.before_silence = Some(now);
                }
                self.silent += 1;
                let window = self.window();
                v.to = self.silence(
                    now,
                    format!(
                        "no answer to HTTP/2 PING within {} ({} in a row)",
                        fmt(window),
                        self.silent
                    ),
                );
            }
            Observation::Readyz(status) => {
                self.silent = 0;
                match status {
                    200..=299 | 401 | 403 => {
                        if status >= 400 && !self.warned_auth {
                            self.warned_auth = true;
                            v.warn_auth = true;
                        }
                        self.ready += 1;
                        let need = if now == State::Unknown { 1 } else { self.rise };
                        if now != State::Ready && self.ready >= need {
                            let why = if status < 400 {
                                format!("/readyz answered {status}")
                            } else {
                                format!("reachable; /readyz answered {status} (readiness unknown)")
                            };
                            v.to = to(State::Ready, why);
                        }
                    }
                    _ => {
                        v.failure = Some(Cause::readyz_status);
                        self.ready = 0;
                        v.to = to(State::NotReady, format!("/readyz answered {status}"));
                    }
                }
            }
            Observation::ReadyzTimeout => {
                v.failure = Some(Cause::readyz_timeout);
                self.ready = 0;
                if now != State::Down {
                    v.to = to(State::NotReady, "/readyz timed out".into());
                }
            }
            Observation::Ended(cause) => {
                v.failure = Some(cause);
                self.ready = 0;
                self.before_silence = None;
                let why = describe(cause);
                if cause.is_silence() {
                    self.silent += 1;
                    v.to = self.silence(now, why);
                } else if cause.is_leaving() {
                    self.silent = 0;
                    v.to = to(State::Draining, why);
                } else {
                    self.silent = 0;
                    v.to = to(State::NotReady, why);
                }
            }
        }
        v
    }

    fn silence(&self, now: State, why: String) -> Option<(State, String)> {
        let need = if now == State::Unknown { 1 } else { self.fall };
        (now != State::Down && self.silent >= need).then_some((State::Down, why))
    }
}

/// The words an operator reads for a cause (the detail, such as the OS error, is logged at
/// debug where it is seen).
pub fn describe(cause: Cause) -> String {
    match cause {
        Cause::ping_timeout => "no answer to HTTP/2 PING".into(),
        Cause::connect_timeout => "no answer to TCP connect within the health timeout".into(),
        Cause::handshake_timeout => "no TLS/HTTP/2 handshake within the health timeout".into(),
        Cause::unreachable => "no route to the host".into(),
        Cause::goaway => "sent GOAWAY: leaving; its open connections are left to finish".into(),
        Cause::closed => {
            "closed the health connection: leaving; its open connections are left to finish".into()
        }
        Cause::reset => {
            "reset the health connection: leaving; its open connections are left to finish".into()
        }
        Cause::refused => "connection refused: not listening; no new connections".into(),
        Cause::tls => "TLS handshake failed (certificate or protocol)".into(),
        Cause::protocol => "answered something that is not HTTP".into(),
        Cause::readyz_status => "/readyz answered non-2xx".into(),
        Cause::readyz_timeout => "/readyz timed out".into(),
        Cause::oversized => "answered more than apilb reads (response head or /readyz body)".into(),
    }
}

#[cfg(test)]
mod tests;
