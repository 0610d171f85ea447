//! Test harness: a PKI made at test time (rcgen), stand-in apiservers (`apilb-standin`
//! processes on 127.0.0.x), an `apilb run` process whose JSON log lines are events the tests
//! wait on, kernel blackholes (iptables rules in a chain the test creates and removes), and
//! small TLS clients. Everything a test starts or creates is stopped or removed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as ABufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const APILB: &str = env!("CARGO_BIN_EXE_apilb");
pub const STANDIN: &str = env!("CARGO_BIN_EXE_apilb-standin");

/// The name the stand-ins' certificate holds (kubeadm's apiserver certificates hold it too);
/// clients going through apilb on 127.0.0.1 verify against it.
pub const SERVER_NAME: &str = "kubernetes";

pub struct Pki {
    issuer: Option<rcgen::Issuer<'static, rcgen::KeyPair>>,
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "apilb-test-ca");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        for i in 2..=9u8 {
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::from([127, 0, 0, i])));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &issuer).unwrap();

        let ckey = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name
            .push(DnType::CommonName, "system:node:test-node");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ccert = cp.signed_by(&ckey, &issuer).unwrap();

        let w = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            issuer: Some(issuer),
            ca: w("ca.crt", ca.pem()),
            cert: w("apiserver.crt", cert.pem()),
            key: w("apiserver.key", key.serialize_pem()),
            client_cert: w("client.crt", ccert.pem()),
            client_key: w("client.key", ckey.serialize_pem()),
            dir,
        }
    }

    /// A new client certificate and key (PEM) for `cn`, signed by the CA.
    pub fn issue_client(&self, cn: &str) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, self.issuer.as_ref().unwrap()).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A copy that shares the files (for moving into a task).
    pub fn share(&self) -> Pki {
        Pki {
            issuer: None,
            dir: tempfile::tempdir().unwrap(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    pub fn client_config(&self, with_client_cert: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut cfg = if with_client_cert {
            let chain = CertificateDer::pem_file_iter(&self.client_cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&self.client_key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// A port free on every one of `ips` (control planes share the apiserver port).
pub fn free_port_on_all(ips: &[[u8; 4]]) -> u16 {
    for _ in 0..50 {
        let port = free_port(ips[0]).port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::from((*ip, port))).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// FNV-1a of the first certificate in a PEM text: how the stand-in names client certs.
pub fn cert_fp(pem: &str) -> u64 {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    der.as_ref().iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A free TCP port on `ip` (bound and released; the OS will not hand it out again soon).
pub fn free_port(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    l.local_addr().unwrap()
}

pub struct Standin {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub name: String,
    client_ca: bool,
    api_dir: Option<PathBuf>,
    pub http1_only: bool,
    /// Shut down as kube-apiserver does on SIGTERM, after this shutdown delay.
    pub graceful: Option<Duration>,
    certs: (PathBuf, PathBuf, PathBuf),
}

impl Standin {
    pub fn start(pki: &Pki, ip: [u8; 4], name: &str) -> Standin {
        Self::start_opts(pki, free_port(ip), name, false)
    }

    pub fn start_opts(pki: &Pki, addr: SocketAddr, name: &str, client_ca: bool) -> Standin {
        Self::start_api(pki, addr, name, client_ca, None)
    }

    /// Also serves the `kubernetes` EndpointSlice/Endpoints from files in `api_dir`.
    pub fn start_api(
        pki: &Pki,
        addr: SocketAddr,
        name: &str,
        client_ca: bool,
        api_dir: Option<&std::path::Path>,
    ) -> Standin {
        let mut s = Standin {
            child: None,
            addr,
            name: name.to_string(),
            client_ca,
            api_dir: api_dir.map(|p| p.to_path_buf()),
            http1_only: false,
            graceful: None,
            certs: (pki.cert.clone(), pki.key.clone(), pki.ca.clone()),
        };
        s.restart();
        s
    }

    /// (Re)starts the process on the same address; returns once it listens.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(STANDIN);
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--cert")
            .arg(&self.certs.0)
            .arg("--key")
            .arg(&self.certs.1)
            .arg("--name")
            .arg(&self.name);
        if self.client_ca {
            cmd.arg("--client-ca").arg(&self.certs.2);
        }
        if let Some(d) = &self.api_dir {
            cmd.arg("--api-dir").arg(d);
        }
        if self.http1_only {
            cmd.arg("--http1-only");
        }
        if let Some(delay) = self.graceful {
            cmd.arg("--graceful")
                .arg("--shutdown-delay")
                .arg(format!("{}ms", delay.as_millis()));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on"), "standin said {line:?}");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the kernel still accepts connections, the process answers nothing.
    pub fn freeze(&self) {
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
    }

    pub fn thaw(&self) {
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
    }

    /// A stand-in that shuts down as kube-apiserver does on SIGTERM (`--graceful`).
    pub fn start_graceful(pki: &Pki, ip: [u8; 4], name: &str, delay: Duration) -> Standin {
        let mut s = Self::start(pki, ip, name);
        s.graceful = Some(delay);
        s.restart();
        s
    }

    /// SIGTERM: with `graceful`, the start of kube-apiserver's graceful shutdown.
    pub fn terminate(&self) {
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
    }

    /// Waits (off the async runtime) for the process to exit; its exit code.
    pub async fn exited(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("stand-in not running");
        let waited = tokio::task::spawn_blocking(move || child.wait());
        let status = tokio::time::timeout(timeout, waited)
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.name))
            .unwrap()
            .unwrap();
        status.code()
    }

    /// Hands over the running process, to be waited for elsewhere (a graceful shutdown
    /// takes as long as its connections do); the stand-in counts as stopped until `restart`.
    pub fn take_process(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Sends GOAWAY on every HTTP/2 connection it has, and keeps serving (as
    /// `--goaway-chance` does).
    pub async fn goaway(&self, pki: &Pki) {
        let (code, _) = request(self.addr, pki, "PUT", "/-/goaway", false)
            .await
            .unwrap();
        assert_eq!(code, 200);
    }

    /// Makes /readyz answer `status` (directly, not through apilb).
    pub async fn set_readyz(&self, pki: &Pki, status: u16) {
        let (code, _) = request(
            self.addr,
            pki,
            "PUT",
            &format!("/-/readyz?status={status}"),
            false,
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.kill();
    }
}

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
        args.extend(extra.iter().map(|s| s.to_string()));
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
        a.wait_log(Duration::from_secs(10), |v| v["message"] == "apilb started");
        a
    }

    pub fn keep_dir(&mut self, d: tempfile::TempDir) {
        self._dir = Some(d);
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Index of the next log line: pass it to `wait_log_from` to see only later lines.
    pub fn mark(&self) -> usize {
        self.logs.lines.lock().unwrap().len()
    }

    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_from(0, timeout, pred)
    }

    /// Waits for a log line (at index ≥ `from`) matching `pred`; panics after `timeout`.
    pub fn wait_log_from(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut lines = self.logs.lines.lock().unwrap();
        let mut seen = from;
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
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            lines = self.logs.cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.lines.lock().unwrap().clone()
    }

    /// Waits for `server` to enter `state` (a log event at index ≥ `from`).
    pub fn wait_state(&self, from: usize, server: SocketAddr, state: &str, timeout: Duration) {
        let name = server.to_string();
        self.wait_log_from(from, timeout, |v| {
            v["message"] == "server state changed" && v["server"] == name && v["to"] == state
        });
    }

    pub fn wait_all_ready(&self, servers: &[&Standin]) {
        for s in servers {
            self.wait_state(0, s.addr, "ready", Duration::from_secs(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits for the process to exit (a thread blocks in waitpid); returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.pid();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut status = 0;
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            let _ = tx.send((r, status));
        });
        let (r, status) = rx.recv_timeout(timeout).expect("apilb did not exit");
        assert_eq!(r, pid);
        self.reaped = true;
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        parse_response(&out)
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
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.state_of(server).await;
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

    /// The value of a counter or gauge in `/metrics`: the sum of the samples of `name` whose
    /// labels contain every one of `labels` (`key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
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

/// Splits a raw HTTP/1.1 response (chunked or not) into status and body.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

pub async fn tls(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    tokio_rustls::TlsConnector::from(pki.client_config(client_cert))
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 request over a new TLS connection; the response status and body.
pub async fn request(
    addr: SocketAddr,
    pki: &Pki,
    method: &str,
    path: &str,
    client_cert: bool,
) -> std::io::Result<(u16, String)> {
    let mut s = tls(addr, pki, client_cert).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    // The stand-in may end TLS without close_notify; what was read counts.
    let _ = s.read_to_end(&mut out).await;
    if out.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(parse_response(&out))
}

/// GET /whoami through `addr`: the name of the server that answered.
pub async fn whoami(addr: SocketAddr, pki: &Pki) -> std::io::Result<String> {
    let (code, body) = request(addr, pki, "GET", "/whoami", false).await?;
    if code != 200 {
        return Err(std::io::Error::other(format!("status {code}")));
    }
    let v: Value = serde_json::from_str(body.trim()).map_err(std::io::Error::other)?;
    Ok(v["server"].as_str().unwrap_or_default().to_string())
}

/// A long-lived watch-like stream (GET /watch) through apilb.
pub struct Watch {
    reader: ABufReader<TlsStream<TcpStream>>,
    pub server: String,
}

impl Watch {
    pub async fn open(addr: SocketAddr, pki: &Pki) -> Watch {
        let mut s = tls(addr, pki, false).await.unwrap();
        s.write_all(
            format!("GET /watch?interval_ms=50 HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut w = Watch {
            reader: ABufReader::new(s),
            server: String::new(),
        };
        let first = w.next_event().await.expect("watch produced no event");
        w.server = first["server"].as_str().unwrap().to_string();
        w
    }

    /// The next event, or None once the stream is closed (EOF or error).
    pub async fn next_event(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(i) = line.find('{') {
                if let Ok(v) = serde_json::from_str::<Value>(line[i..].trim()) {
                    return Some(v);
                }
            }
        }
    }

    /// Reads until the stream closes; returns how long that took. Panics past `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        tokio::time::timeout(timeout, async {
            while self.next_event().await.is_some() {}
        })
        .await
        .unwrap_or_else(|_| panic!("stream on {} still open after {timeout:?}", self.server));
        start.elapsed()
    }

    /// Asserts the stream keeps delivering events.
    pub async fn still_flowing(&mut self) {
        for _ in 0..3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), self.next_event())
                .await
                .expect("stream stalled");
            assert!(ev.is_some(), "stream on {} was closed", self.server);
        }
    }
}

/// Opens watches until one is pinned to each of `names`. Returns them in that order.
pub async fn watches_on(addr: SocketAddr, pki: &Pki, names: &[&str]) -> Vec<Watch> {
    let mut found: Vec<Option<Watch>> = names.iter().map(|_| None).collect();
    for _ in 0..60 {
        let w = Watch::open(addr, pki).await;
        if let Some(i) = names.iter().position(|n| *n == w.server) {
            if found[i].is_none() {
                found[i] = Some(w);
            }
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("could not pin a watch to each of {names:?}");
}

static CHAIN_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A kernel blackhole: every packet to or from a TCP address is silently dropped (iptables
/// DROP in INPUT, in a chain of its own). Removed on drop.
pub struct Blackhole {
    chain: String,
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Blackhole {
    pub fn new(target: SocketAddr) -> Blackhole {
        let chain = format!(
            "APILB-T{}-{}",
            std::process::id(),
            CHAIN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let (ip, port) = (target.ip().to_string(), target.port().to_string());
        assert!(
            iptables(&["-N", &chain]),
            "iptables is needed for the blackhole tests (run as root, with iptables installed)"
        );
        let bh = Blackhole { chain };
        let c = bh.chain.as_str();
        assert!(iptables(&[
            "-A", c, "-p", "tcp", "-d", &ip, "--dport", &port, "-j", "DROP"
        ]));
        assert!(iptables(&[
            "-A", c, "-p", "tcp", "-s", &ip, "--sport", &port, "-j", "DROP"
        ]));
        assert!(iptables(&["-I", "INPUT", "-j", c]));
        bh
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let c = self.chain.as_str();
        iptables(&["-D", "INPUT", "-j", c]);
        iptables(&["-F", c]);
        iptables(&["-X", c]);
    }
}

/// Runs `n` new connections through apilb, one after the other; returns the servers that
/// answered and every failure.
pub async fn many_whoami(addr: SocketAddr, pki: &Pki, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(10), whoami(addr, pki)).await {
            Ok(Ok(s)) => ok.push(s),
            Ok(Err(e)) => failed.push(e.to_string()),
            Err(_) => failed.push("timed out".into()),
        }
    }
    (ok, failed)
}

impl Watch {
    /// Reads the stream to its end and says how it ended: `Ok` only for a clean end (the
    /// response's final chunk, then the connection closed), the error otherwise (a reset, or
    /// an end without the final chunk). Panics past `timeout`.
    pub async fn end(&mut self, timeout: Duration) -> Result<(), String> {
        let work = async {
            let mut last_chunk = false;
            loop {
                let mut line = String::new();
                match self.reader.read_line(&mut line).await {
                    Ok(0) if last_chunk => return Ok(()),
                    Ok(0) => return Err("closed without the final chunk".to_string()),
                    Ok(_) => last_chunk |= line == "0\r\n",
                    Err(e) => return Err(format!("{:?}: {e}", e.kind())),
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| panic!("stream on {} still open after {timeout:?}", self.server))
    }
}

/// A slow response in flight through apilb: `GET /whoami` then `GET /slow` on one
/// keep-alive connection, so the server that answers is known; its body is checked byte for
/// byte (the `/bytes` pattern).
pub struct Slow {
    pub server: String,
    pub done: tokio::task::JoinHandle<Result<(), String>>,
}

impl Slow {
    pub async fn start(addr: SocketAddr, pki: &Pki, n: usize, ms: u64) -> Slow {
        let s = tls(addr, pki, false).await.unwrap();
        let mut r = ABufReader::new(s);
        r.get_mut()
            .write_all(format!("GET /whoami HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut r).await.unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let server = v["server"].as_str().unwrap().to_string();
        r.get_mut()
            .write_all(
                format!(
                    "GET /slow?n={n}&ms={ms} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let done = tokio::spawn(async move {
            let (status, body) = read_response(&mut r).await.map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("status {status}"));
            }
            if body.len() != n {
                return Err(format!("{} of {n} bytes", body.len()));
            }
            match body
                .iter()
                .enumerate()
                .find(|(i, b)| **b != (i % 251) as u8)
            {
                Some((i, _)) => Err(format!("byte {i} is wrong")),
                None => Ok(()),
            }
        });
        Slow { server, done }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<(u16, Vec<u8>)> {
    let mut status = 0;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the response head",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if status == 0 {
            status = l
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((status, body))
}

/// New connections through apilb every ~100 ms (`GET /whoami`), each one's outcome kept,
/// until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    pub fn start(addr: SocketAddr, pki: &Pki) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let pki = pki.share();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                match tokio::time::timeout(Duration::from_secs(10), whoami(addr, &pki)).await {
                    Ok(Ok(s)) => ok.push(s),
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => failed.push("timed out".into()),
                }
            }
            (ok, failed)
        });
        Load { stop, task }
    }

    /// Stops; the servers that answered, and every failure.
    pub async fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// A TCP relay on `listen` to `target` that delays every byte, each way, by the delay set at
/// the moment it is read (0 at first): latency on a path, with nothing lost and nothing
/// reordered. Stops on drop.
pub struct Relay {
    pub addr: SocketAddr,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// When the last delayed byte is due.
    last_due: Arc<Mutex<Option<tokio::time::Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(listen: [u8; 4], target: SocketAddr) -> Relay {
        let l = tokio::net::TcpListener::bind(SocketAddr::from((listen, 0)))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let last_due = Arc::new(Mutex::new(None));
        let d = (delay_ms.clone(), last_due.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let d = d.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, d.clone()), pump(sr, cw, d));
                });
            }
        });
        Relay {
            addr,
            delay_ms,
            last_due,
            task,
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once every byte delayed so far has been delivered.
    pub async fn settled(&self) {
        loop {
            let due = *self.last_due.lock().unwrap();
            let Some(due) = due else { return };
            tokio::time::sleep_until(due).await;
            if *self.last_due.lock().unwrap() == Some(due) {
                return;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type DelayShared = (
    Arc<std::sync::atomic::AtomicU64>,
    Arc<Mutex<Option<tokio::time::Instant>>>,
);

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (delay_ms, last_due): DelayShared,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let ms = delay_ms.load(Ordering::Relaxed);
                    let at = tokio::time::Instant::now() + Duration::from_millis(ms);
                    if ms > 0 {
                        let mut due = last_due.lock().unwrap();
                        *due = Some(due.map_or(at, |d| d.max(at)));
                    }
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
