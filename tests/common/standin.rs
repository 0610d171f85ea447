//! The stand-in apiservers: `apilb-standin` processes on 127.0.0.x, started, restarted,
//! frozen, terminated and killed by the test, and told over their own API to send GOAWAY or
//! change `/readyz`. A stand-in is killed on drop. Owns the stand-in process only; requests
//! through apilb are `client`'s.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, request, Pki};

pub const STANDIN: &str = env!("CARGO_BIN_EXE_apilb-standin");

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
            api_dir: api_dir.map(std::path::Path::to_path_buf),
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
            super::send_signal(c.id() as i32, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the kernel still accepts connections, the process answers nothing.
    pub fn freeze(&self) {
        assert_eq!(super::send_signal(self.pid(), libc::SIGSTOP), 0);
    }

    pub fn thaw(&self) {
        assert_eq!(super::send_signal(self.pid(), libc::SIGCONT), 0);
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
        assert_eq!(super::send_signal(self.pid(), libc::SIGTERM), 0);
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

    /// The fingerprint (`cert_fp`) of the client certificate the last request to a recording
    /// path came with: `/-/last-api-client` (discovery's requests) or `/-/last-readyz-client`
    /// (health checks). Asked directly, with the test's own client certificate.
    pub async fn last_client_fp(&self, pki: &Pki, path: &str) -> u64 {
        let (code, body) = request(self.addr, pki, "GET", path, true).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        v["client_fp"].as_u64().unwrap()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.kill();
    }
}
