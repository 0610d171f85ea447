//! The `apilb run` process under test: started on free loopback ports with JSON debug logs,
//! whose log lines are kept; its admin endpoint read for `/status` and `/metrics`; signalled
//! and waited for. Killed on drop unless it was reaped.
//!
//! Tests wait on state, not on wording: a server's state, a discovery round, a reload, the
//! drain are all in `/status` or `/metrics` (`wait_state`, `status_until`, `metric_at_least`).
//! The log is read (`wait_log_from`) only where the log line itself is the feature under test
//! (a warning naming the fix, a rate-limited line), and each such test says so.
//! Owns the process and its admin endpoint only; traffic through it is `client`'s.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{free_port, parse_response, Pki, Standin};

pub const APILB: &str = env!("CARGO_BIN_EXE_apilb");

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<Value>>,
    cv: Condvar,
}

pub struct Apilb {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Lines>,
    pub config: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    reaped: bool,
}

impl Apilb {
    /// Starts `apilb run` with JSON debug logs on a free loopback port, in front of `servers`.
    pub fn start(pki: &Pki, servers: &[&Standin], extra: &[&str]) -> Apilb {
        let mut args: Vec<String> = Vec::new();
        for s in servers {
            args.push("--server".into());
            args.push(s.addr.to_string());
        }
        args.push("--ca-file".into());
        args.push(pki.ca.display().to_string());
        args.extend(extra.iter().map(ToString::to_string));
        Self::start_args(args, None)
    }

    pub fn start_args(mut args: Vec<String>, config: Option<PathBuf>) -> Apilb {
        let listen = free_port([127, 0, 0, 1]);
        let admin = free_port([127, 0, 0, 1]);
        let mut full: Vec<String> = vec![
            "run".into(),
            "--listen".into(),
            listen.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        if !args.iter().any(|a| a == "--log-level") {
            full.push("--log-level".into());
            full.push("debug".into());
        }
        full.append(&mut args);
        let mut child = Command::new(APILB)
            .args(&full)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Lines::default());
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("APILB_TEST_LOG").is_some() {
                    eprintln!("apilb: {line}");
                }
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lines.lock().unwrap().push(v);
                sink.cv.notify_all();
            }
        });
        let a = Apilb {
            child,
            listen,
            admin,
            logs,
            config,
            _dir: None,
            reaped: false,
        };
        a.wait_serving(Duration::from_secs(10));
        a
    }

    /// Waits until the admin endpoint answers `/healthz` (it starts once the listeners are
    /// bound and the servers set); fails at once, with the log, if apilb exited.
    fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if get_blocking(self.admin, "/healthz").is_ok() {
                return;
            }
            let exited = super::send_signal(self.pid(), 0) != 0 || self.is_zombie();
            assert!(
                !exited && Instant::now() < deadline,
                "apilb {} within {timeout:?}; log:\n{}",
                if exited { "exited" } else { "did not serve" },
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has exited and waits to be reaped.
    fn is_zombie(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true)
    }

    fn log_text(&self) -> String {
        self.logs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn keep_dir(&mut self, d: tempfile::TempDir) {
        self._dir = Some(d);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A point to wait from: the next log line's index, and the state-transition counters
    /// (`apilb_server_state_transitions_total`) as `/metrics` shows them now.
    pub fn mark(&self) -> Mark {
        let log = self.logs.lines.lock().unwrap().len();
        let transitions = get_blocking(self.admin, "/metrics").ok().map(|text| {
            text.lines()
                .filter(|l| l.starts_with(TRANSITIONS))
                .collect::<Vec<_>>()
                .join("\n")
        });
        Mark { log, transitions }
    }

    /// A mark for log lines only, taken without asking the admin endpoint anything (for
    /// when a request to it would disturb the test: apilb out of descriptors). No
    /// `wait_state` from it.
    pub fn log_mark(&self) -> Mark {
        Mark {
            log: self.logs.lines.lock().unwrap().len(),
            transitions: None,
        }
    }

    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_from(&Mark::START, timeout, pred)
    }

    /// Waits for a log line (logged after `from`) matching `pred`; panics after `timeout`.
    pub fn wait_log_from(
        &self,
        from: &Mark,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut lines = self.logs.lines.lock().unwrap();
        let mut seen = from.log;
        loop {
            if let Some(v) = lines[seen.min(lines.len())..].iter().find(|v| pred(v)) {
                return v.clone();
            }
            seen = lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching apilb log line within {timeout:?}; log:\n{}",
                lines
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            lines = self.logs.cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// Waits for `server` to have entered `state` since `from`: polls `/metrics` (every
    /// 10 ms) until `apilb_server_state_transitions_total{server,to=state}` has moved from its
    /// value at the mark. A change is seen even if the state has been left again since; the
    /// state, not a log line, is what is waited on. Panics after `timeout`.
    pub fn wait_state(
        &self,
        from: &Mark,
        server: impl std::fmt::Display,
        state: &str,
        timeout: Duration,
    ) {
        let labels = [format!("server=\"{server}\""), format!("to=\"{state}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let base = sum_samples(
            from.transitions
                .as_deref()
                .expect("no transitions at this mark: a log_mark, or /metrics did not answer"),
            TRANSITIONS,
            &labels,
        );
        let deadline = Instant::now() + timeout;
        loop {
            let now = get_blocking(self.admin, "/metrics")
                .map(|text| sum_samples(&text, TRANSITIONS, &labels))
                .unwrap_or(base);
            // Moved: up, or reset (the server left the set and came back) and counted since.
            if now > 0.0 && now != base {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} did not enter {state} within {timeout:?} (transitions to it: {now}, \
                 {base} at the mark); log:\n{}",
                self.logs()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until no connection to the admin endpoint is open in the kernel with a
    /// descriptor behind it (`/proc/net/tcp`: the admin port, not listening, inode not 0):
    /// for a test that counts apilb's descriptors right after asking it something (the
    /// answered connection's descriptor is closed a moment after its last byte).
    pub fn wait_admin_idle(&self, timeout: Duration) {
        let port = format!(":{:04X}", self.admin.port());
        let deadline = Instant::now() + timeout;
        loop {
            let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            let open = tcp
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() > 9 && f[1].ends_with(&port) && f[3] != "0A" && f[9] != "0")
                .count();
            if open == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} admin connections still open after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_all_ready(&self, servers: &[&Standin]) {
        for s in servers {
            self.wait_state(&Mark::START, s.addr, "ready", Duration::from_secs(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(super::send_signal(self.pid(), sig), 0);
    }

    /// Waits for the process to exit (a thread blocks in waitpid); returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.pid();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: `status` is a live, writable c_int for the duration of the call.
            #[allow(unsafe_code)]
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            let _ = tx.send((r, status));
        });
        let (r, status) = rx.recv_timeout(timeout).expect("apilb did not exit");
        assert_eq!(r, pid);
        self.reaped = true;
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get_at(self.admin, path).await.unwrap()
    }

    pub async fn status(&self) -> Value {
        let (code, body) = self.admin_get("/status").await;
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// `server`'s state in `/status`.
    pub async fn state_of(&self, server: SocketAddr) -> String {
        let st = self.status().await;
        let name = server.to_string();
        st["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["server"] == name.as_str()))
            .and_then(|v| v["state"].as_str())
            .unwrap_or("absent")
            .to_string()
    }

    /// Waits until `/status` shows `server` in `state` (polled every 10 ms: the state, not a
    /// log line, is what is asserted). Panics after `timeout`.
    pub async fn wait_status(&self, server: SocketAddr, state: &str, timeout: Duration) {
        wait_status_at(self.admin, server, state, timeout).await;
    }

    /// The value of a counter or gauge in `/metrics`: the sum of the samples of `name` whose
    /// labels contain every one of `labels` (`key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        sum_samples(&text, name, labels)
    }

    /// Waits until `/status` satisfies `pred` (polled every 10 ms); returns it. Panics after
    /// `timeout`, naming `what` and showing the last status.
    pub async fn status_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            // Not answering (apilb gone) is "not seen", with the reason shown at the end.
            let st = match admin_get_at(self.admin, "/status").await {
                Ok((200, body)) => serde_json::from_str(&body).unwrap_or(Value::String(body)),
                Ok((code, _)) => Value::String(format!("/status answered {code}")),
                Err(e) => Value::String(format!("/status: {e}")),
            };
            if pred(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen in /status within {timeout:?}; last status:\n{st:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `metric(name, labels)` is at least `min` (polled every 10 ms); returns
    /// it. Panics after `timeout`, naming the value seen last.
    pub async fn metric_at_least(
        &self,
        name: &str,
        labels: &[&str],
        min: f64,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.metric(name, labels).await;
            if now >= min {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {now}, not yet {min}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `metric(name, labels)` is `value` (polled every 10 ms). Panics after
    /// `timeout`, naming the value seen last.
    pub async fn wait_metric(&self, name: &str, labels: &[&str], value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.metric(name, labels).await;
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {now}, not {value}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

const TRANSITIONS: &str = "apilb_server_state_transitions_total";

/// A point in an apilb's life to wait from (`Apilb::mark`): later log lines, later state
/// transitions.
pub struct Mark {
    log: usize,
    /// The `apilb_server_state_transitions_total` samples at the mark; `None` if `/metrics`
    /// did not answer.
    transitions: Option<String>,
}

impl Mark {
    /// The process's start: every log line, every transition.
    pub const START: Mark = Mark {
        log: 0,
        transitions: Some(String::new()),
    };

    /// How many log lines had been logged at the mark.
    pub fn log_index(&self) -> usize {
        self.log
    }
}

/// The sum of the samples of `name` in the Prometheus text `text` whose labels contain every
/// one of `labels` (`key="value"`).
fn sum_samples(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|x| rest.contains(x)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `GET path` on the admin endpoint at `admin`, blocking (for the synchronous waits): the
/// body of a 200 answer.
fn get_blocking(admin: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let (code, body) = parse_response(&out);
    if code != 200 {
        return Err(std::io::Error::other(format!("{path} answered {code}")));
    }
    Ok(body)
}

/// Waits until `/status` on the admin endpoint at `admin` shows `server` in `state`, polled
/// every 10 ms (an endpoint not answering yet is polled again). Panics after `timeout`.
pub async fn wait_status_at(admin: SocketAddr, server: SocketAddr, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let name = server.to_string();
    loop {
        let now = match admin_get_at(admin, "/status").await {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|st| {
                    st["servers"]
                        .as_array()
                        .and_then(|a| a.iter().find(|v| v["server"] == name.as_str()))
                        .and_then(|v| v["state"].as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "absent".into()),
            Ok((code, _)) => format!("unknown (/status answered {code})"),
            Err(e) => format!("unknown (/status: {e})"),
        };
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{server} is {now}, not {state}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One GET on the admin endpoint at `admin`: the status and body of the answer.
pub async fn admin_get_at(admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(parse_response(&out))
}

impl Drop for Apilb {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
