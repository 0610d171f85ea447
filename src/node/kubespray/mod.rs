//! Reading the control-plane list out of the local apiserver proxy kubespray deploys on
//! each node, so `apilb manifest --from-kubespray` can take its place.
//!
//! # What this module owns
//!
//! Parsing the two files kubespray renders from
//! `roles/kubernetes/node/templates/loadbalancer/`:
//!
//! * `/etc/nginx/nginx.conf` (`loadbalancer_apiserver_type: nginx`, the default):
//!   `stream { upstream kube_apiserver { least_conn; server ADDR:PORT; … }
//!   server { listen 127.0.0.1:PORT; [listen [::1]:PORT;] proxy_pass kube_apiserver; … } }`
//! * `/etc/haproxy/haproxy.cfg` (`loadbalancer_apiserver_type: haproxy`):
//!   `frontend kube_api_frontend` with `bind 127.0.0.1:PORT` [`bind [::1]:PORT`] and
//!   `default_backend kube_api_backend`; `backend kube_api_backend` with
//!   `server NAME ADDR:PORT check …` lines.
//!
//! The result is where that proxy listened and the servers it forwarded to. Both parsers
//! read the configuration languages in general (comments, quoting, blocks and sections,
//! any order), not kubespray's exact text, so hand edits and older kubespray releases
//! parse too; they look for kubespray's names first (`kube_apiserver`,
//! `kube_api_backend`) and fall back to the only candidate there is.
//!
//! # What it must not do
//!
//! No I/O beyond reading the one file it is given, no rendering (that is `manifest`), no
//! validation of the addresses beyond their syntax (`config` does that for every source
//! alike, except that a non-loopback listen address is refused here, naming the file, since
//! apilb would otherwise expose the apiserver path to the network). It never panics on any
//! input; every error names the file, the line where there is one, and the fix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::server::ServerSpec;

/// Where kubespray writes its nginx-proxy configuration (`nginx_config_dir`).
pub const DEFAULT_NGINX_CONF: &str = "/etc/nginx/nginx.conf";
/// Where kubespray writes its HAProxy configuration (`haproxy_config_dir`).
pub const DEFAULT_HAPROXY_CFG: &str = "/etc/haproxy/haproxy.cfg";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Haproxy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Nginx => "nginx-proxy",
            Kind::Haproxy => "HAProxy",
        })
    }
}

/// What kubespray's proxy did on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalProxy {
    pub kind: Kind,
    pub file: PathBuf,
    /// Where it listened, in file order, without duplicates.
    pub listen: Vec<SocketAddr>,
    /// The servers it forwarded to, in file order, without duplicates.
    pub servers: Vec<ServerSpec>,
    /// Things worth telling the operator (servers skipped, duplicates dropped).
    pub notes: Vec<String>,
}

/// An error that names the file (and line) and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub struct KubesprayError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for KubesprayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

fn err(file: &Path, line: Option<usize>, message: impl Into<String>) -> KubesprayError {
    KubesprayError {
        file: file.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Finds and reads kubespray's proxy configuration. An explicit path is read as given;
/// without one, whichever of the two default files exists is read (both existing is an
/// error: kubespray leaves the old one behind when `loadbalancer_apiserver_type` changes).
/// With `listen_given` (`--listen`), where the proxy listened is not needed: a problem with
/// it is no error, and `listen` is left empty.
pub fn discover(
    nginx_conf: Option<&Path>,
    haproxy_cfg: Option<&Path>,
    default_nginx: &Path,
    default_haproxy: &Path,
    listen_given: bool,
) -> Result<LocalProxy, KubesprayError> {
    let read = |path: &Path, kind: Kind| -> Result<LocalProxy, KubesprayError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let flag = match kind {
                Kind::Nginx => "--nginx-conf",
                Kind::Haproxy => "--haproxy-cfg",
            };
            err(
                path,
                None,
                format!(
                    "cannot read kubespray's {kind} configuration: {e}; run this on the node as \
                     root, or pass {flag} PATH"
                ),
            )
        })?;
        let parsed = match kind {
            Kind::Nginx => nginx(&text, path)?,
            Kind::Haproxy => haproxy(&text, path)?,
        };
        if listen_given {
            Ok(parsed.0)
        } else {
            strict(parsed)
        }
    };
    match (nginx_conf, haproxy_cfg) {
        (Some(p), _) => return read(p, Kind::Nginx),
        (None, Some(p)) => return read(p, Kind::Haproxy),
        (None, None) => {}
    }
    match (default_nginx.exists(), default_haproxy.exists()) {
        (true, false) => read(default_nginx, Kind::Nginx),
        (false, true) => read(default_haproxy, Kind::Haproxy),
        (true, true) => Err(err(
            default_nginx,
            None,
            format!(
                "both this file and {} exist, so it is unclear which proxy kubespray runs here \
                 (it leaves the old file behind when loadbalancer_apiserver_type changes); look \
                 in /etc/kubernetes/manifests for nginx-proxy.yml or haproxy.yml and pass \
                 --nginx-conf {} or --haproxy-cfg {}",
                default_haproxy.display(),
                default_nginx.display(),
                default_haproxy.display()
            ),
        )),
        (false, false) => Err(err(
            default_nginx,
            None,
            format!(
                "neither this file nor {} exists: this node runs no kubespray apiserver proxy \
                 (kubespray installs one only with loadbalancer_apiserver_localhost, on nodes \
                 that are not control planes). Run this on a kubespray worker, pass \
                 --nginx-conf PATH or --haproxy-cfg PATH, or give the control planes with \
                 --server instead of --from-kubespray",
                default_haproxy.display()
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------

/// `host:port` / `[v6]:port` as nginx and HAProxy write a server address. Returns host
/// (without brackets) and port, or a message.
fn split_host_port(s: &str, haproxy_style: bool) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{s}`: `{p}` is not a port from 1 to 65535")),
            Ok(n) => Ok(n),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: missing `]` after the IPv6 address"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((h.to_string(), Some(port(p)?))),
            None if after.is_empty() => Ok((h.to_string(), None)),
            None => Err(format!("`{s}`: unexpected `{after}` after `]`")),
        };
    }
    match s.matches(':').count() {
        0 => Ok((s.to_string(), None)),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            Ok((h.to_string(), Some(port(p)?)))
        }
        // HAProxy reads the part after the last colon as the port, brackets or not.
        _ if haproxy_style => {
            let (h, p) = s.rsplit_once(':').unwrap_or((s, ""));
            Ok((h.to_string(), Some(port(p)?)))
        }
        // nginx: a bare IPv6 address (no port) must be in brackets to carry a port.
        _ => match s.parse::<Ipv6Addr>() {
            Ok(_) => Ok((s.to_string(), None)),
            Err(_) => Err(format!(
                "`{s}`: write IPv6 addresses in brackets: [ADDR]:PORT"
            )),
        },
    }
}

fn server_spec(host: String, port: Option<u16>, raw: &str) -> Result<ServerSpec, String> {
    let port = port.ok_or_else(|| {
        format!("server `{raw}` has no port; kubespray writes HOST:PORT (e.g. {raw}:6443)")
    })?;
    if host.is_empty() || host == "*" {
        return Err(format!("server `{raw}` has no host"));
    }
    // The same rules as --server (host name or IP, no path or spaces).
    ServerSpec::parse(&ServerSpec { host, port }.to_string())
}

/// Turns a listen/bind host into addresses; `None`/`*`/empty: every IPv4 address.
fn listen_addrs(host: Option<&str>, port: u16, raw: &str) -> Result<Vec<SocketAddr>, String> {
    let ips: Vec<IpAddr> = match host {
        None | Some("" | "*" | "0.0.0.0") => vec![Ipv4Addr::UNSPECIFIED.into()],
        Some("::") => vec![Ipv6Addr::UNSPECIFIED.into()],
        Some("localhost") => vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
        Some(h) => vec![h
            .parse::<IpAddr>()
            .map_err(|_| format!("`{raw}`: `{h}` is not an IP address"))?],
    };
    let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| (ip, port).into()).collect();
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "the proxy listens on `{raw}` ({a}), which is not a loopback address; apilb listens \
             on loopback only. Pass --listen 127.0.0.1:{port} (and --listen [::1]:{port}) to \
             choose where apilb listens"
        ));
    }
    Ok(addrs)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) -> bool {
    if v.contains(&item) {
        false
    } else {
        v.push(item);
        true
    }
}

mod haproxy;
mod nginx;
use haproxy::haproxy;
use nginx::nginx;

/// A parsed configuration whose listen addresses may have failed on their own: with
/// `--listen` given they are not needed, so their error (whose fix is `--listen`) is no error.
type Parsed = (LocalProxy, Result<Vec<SocketAddr>, KubesprayError>);

/// Parses kubespray's nginx-proxy configuration.
pub fn parse_nginx(text: &str, file: &Path) -> Result<LocalProxy, KubesprayError> {
    strict(nginx(text, file)?)
}

/// Parses kubespray's HAProxy configuration.
pub fn parse_haproxy(text: &str, file: &Path) -> Result<LocalProxy, KubesprayError> {
    strict(haproxy(text, file)?)
}

fn strict((mut lp, listen): Parsed) -> Result<LocalProxy, KubesprayError> {
    lp.listen = listen?;
    Ok(lp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn specs(v: &[&str]) -> Vec<ServerSpec> {
        v.iter().map(|s| ServerSpec::parse(s).unwrap()).collect()
    }

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nginx_kubespray_shape_with_ipv6_listen() {
        let text = "error_log stderr notice;\nstream {\n  upstream kube_apiserver {\n    least_conn;\n    server 10.0.0.1:6443;\n    server [fd00::2]:6443;\n    server cp3.example.com:16443 max_fails=1;\n    }\n\n  server {\n    listen        127.0.0.1:6443;\n    listen        [::1]:6443;\n    proxy_pass    kube_apiserver;\n    proxy_timeout 10m;\n  }\n}\nhttp {\n  server { listen 8081; location /healthz { return 200; } }\n}\n";
        let lp = parse_nginx(text, &p("/n")).unwrap();
        assert_eq!(lp.kind, Kind::Nginx);
        assert_eq!(
            lp.servers,
            specs(&["10.0.0.1:6443", "[fd00::2]:6443", "cp3.example.com:16443"])
        );
        assert_eq!(lp.listen, addrs(&["127.0.0.1:6443", "[::1]:6443"]));
        assert!(lp.notes.is_empty());
    }

    #[test]
    fn nginx_comments_quotes_down_and_duplicates() {
        let text = "# top\nstream { # c\n upstream other { server 10.9.9.9:1; }\n upstream \"kube_apiserver\" {\n  server 10.0.0.1:6443; # one\n  server 10.0.0.1:6443;\n  server 10.0.0.2:6443 down;\n }\n server { listen 127.0.0.1:7443; proxy_pass kube_apiserver; }\n server { listen 127.0.0.1:1; proxy_pass other; }\n}\n";
        let lp = parse_nginx(text, &p("/n")).unwrap();
        assert_eq!(lp.servers, specs(&["10.0.0.1:6443"]));
        assert_eq!(lp.listen, addrs(&["127.0.0.1:7443"]));
        assert_eq!(lp.notes.len(), 2, "{:?}", lp.notes);
        assert!(lp.notes[0].contains("/n:6") && lp.notes[0].contains("twice"));
        assert!(lp.notes[1].contains("down"));
    }

    #[test]
    fn nginx_errors_name_file_line_and_fix() {
        let e = parse_nginx("http { }\n", &p("/etc/nginx/nginx.conf")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/nginx/nginx.conf: no `stream"),
            "{e}"
        );
        assert!(e.to_string().contains("--server"));

        let e = parse_nginx(
            "stream {\n upstream kube_apiserver {\n  least_conn;\n }\n server { listen 127.0.0.1:6443; proxy_pass kube_apiserver; }\n}\n",
            &p("/x"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("lists no servers"), "{e}");

        let e = parse_nginx(
            "stream {\n upstream kube_apiserver {\n  server 10.0.0.1;\n }\n server { listen 127.0.0.1:6443; proxy_pass kube_apiserver; }\n}\n",
            &p("/x"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("has no port"), "{e}");

        let e = parse_nginx(
            "stream {\n upstream kube_apiserver { server 10.0.0.1:6443; }\n server { listen 6443; proxy_pass kube_apiserver; }\n}\n",
            &p("/x"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("not a loopback") && e.message.contains("--listen"));

        let e = parse_nginx("stream {\n upstream a { server 1.1.1.1:1 }\n", &p("/x")).unwrap_err();
        assert!(e.message.contains("missing its `;`"), "{e}");
        let e = parse_nginx("stream {\n upstream a { server 1.1.1.1:1; }\n", &p("/x")).unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
        let e = parse_nginx("stream { } }", &p("/x")).unwrap_err();
        assert!(e.message.contains("unexpected `}`"), "{e}");
    }

    #[test]
    fn haproxy_kubespray_shape() {
        let text = "global\n    maxconn 4000\n\ndefaults\n    mode http\n    timeout connect 30s\n\nfrontend healthz\n  bind 0.0.0.0:8081\n  bind :::8081\n  mode http\n  monitor-uri /healthz\n\nfrontend kube_api_frontend\n  bind 127.0.0.1:6443\n  bind [::1]:6443\n  mode tcp\n  option tcplog\n  default_backend kube_api_backend\n\nbackend kube_api_backend\n  mode tcp\n  balance leastconn\n  default-server inter 15s downinter 15s rise 2 fall 2 slowstart 60s maxconn 1000 maxqueue 256 weight 100\n  option httpchk GET /healthz\n  http-check expect status 200\n  server cp1 10.0.0.1:6443 check check-ssl verify none\n  server cp2 [fd00::2]:6443 check check-ssl verify none\n  server cp3 cp3.example.com:16443 check check-ssl verify none\n";
        let lp = parse_haproxy(text, &p("/h")).unwrap();
        assert_eq!(lp.kind, Kind::Haproxy);
        assert_eq!(
            lp.servers,
            specs(&["10.0.0.1:6443", "[fd00::2]:6443", "cp3.example.com:16443"])
        );
        assert_eq!(lp.listen, addrs(&["127.0.0.1:6443", "[::1]:6443"]));
    }

    #[test]
    fn haproxy_address_forms() {
        let text = "frontend f\n  bind ipv4@127.0.0.1:7443,::1:7443 # two\n  default_backend b\nbackend b\n  server a fd00::1:6443 check\n  server b ipv6@fd00::2:6443\n  server c 10.0.0.3:6443 disabled\n";
        let lp = parse_haproxy(text, &p("/h")).unwrap();
        assert_eq!(lp.servers, specs(&["[fd00::1]:6443", "[fd00::2]:6443"]));
        assert_eq!(lp.listen, addrs(&["127.0.0.1:7443", "[::1]:7443"]));
        assert_eq!(lp.notes.len(), 1);
    }

    #[test]
    fn haproxy_errors() {
        let e = parse_haproxy("global\n  maxconn 1\n", &p("/etc/haproxy/haproxy.cfg")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/haproxy/haproxy.cfg: no backend"),
            "{e}"
        );
        let e = parse_haproxy(
            "frontend f\n bind 127.0.0.1:6443\n default_backend kube_api_backend\nbackend kube_api_backend\n server cp1 10.0.0.1 check\n",
            &p("/h"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5));
        assert!(
            e.message.contains("cp1") && e.message.contains("no port"),
            "{e}"
        );
        let e = parse_haproxy(
            "frontend f\n bind *:6443\n default_backend b\nbackend b\n server cp1 10.0.0.1:6443\n",
            &p("/h"),
        )
        .unwrap_err();
        assert!(e.message.contains("not a loopback"), "{e}");
        let e = parse_haproxy("backend b\n server cp1 10.0.0.1:6443\n", &p("/h")).unwrap_err();
        assert!(e.message.contains("no frontend"), "{e}");
    }

    #[test]
    fn discover_picks_the_file_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("nginx.conf");
        let h = dir.path().join("haproxy.cfg");
        let e = discover(None, None, &n, &h, false).unwrap_err();
        assert!(e.message.contains("neither"), "{e}");
        assert!(e.to_string().contains("nginx.conf") && e.message.contains("haproxy.cfg"));
        std::fs::write(
            &h,
            "frontend f\n bind 127.0.0.1:6443\n default_backend b\nbackend b\n server c 10.0.0.1:6443\n",
        )
        .unwrap();
        assert_eq!(
            discover(None, None, &n, &h, false).unwrap().kind,
            Kind::Haproxy
        );
        std::fs::write(
            &n,
            "stream { upstream u { server 10.0.0.1:6443; } server { listen 127.0.0.1:6443; proxy_pass u; } }",
        )
        .unwrap();
        let e = discover(None, None, &n, &h, false).unwrap_err();
        assert!(e.message.contains("both"), "{e}");
        assert_eq!(
            discover(Some(&n), None, &n, &h, false).unwrap().kind,
            Kind::Nginx
        );
        let missing = dir.path().join("missing.conf");
        let e = discover(Some(&missing), None, &n, &h, false).unwrap_err();
        assert!(e.to_string().contains("missing.conf") && e.message.contains("--nginx-conf"));
    }

    /// A listen-address problem is an error only when the listen addresses are needed: its
    /// fix, --listen, makes them unneeded. Every other problem stays an error.
    #[test]
    fn discover_with_listen_given_ignores_only_listen_problems() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("nginx.conf");
        let h = dir.path().join("haproxy.cfg");
        let nowhere = dir.path().join("none");
        for (file, text) in [
            (&n, "stream { upstream u { server 10.0.0.1:6443; } server { listen 6443; proxy_pass u; } }"),
            (&n, "stream { upstream u { server 10.0.0.1:6443; } server { listen unix:/x; proxy_pass u; } }"),
            (&n, "stream { upstream u { server 10.0.0.1:6443; } server { proxy_pass u; } }"),
            (&h, "frontend f\n bind 0.0.0.0:6443\n default_backend b\nbackend b\n server c 10.0.0.1:6443\n"),
            (&h, "backend b\n server c 10.0.0.1:6443\n"),
        ] {
            std::fs::write(file, text).unwrap();
            let (nc, hc) = if *file == n {
                (Some(n.as_path()), None)
            } else {
                (None, Some(h.as_path()))
            };
            let e = discover(nc, hc, &nowhere, &nowhere, false).unwrap_err();
            assert!(e.message.contains("--listen"), "{text}: {e}");
            let lp = discover(nc, hc, &nowhere, &nowhere, true).unwrap();
            assert_eq!(lp.servers, specs(&["10.0.0.1:6443"]), "{text}");
            assert!(lp.listen.is_empty());
        }
        // A server problem is still an error with --listen.
        std::fs::write(
            &n,
            "stream { upstream u { } server { listen 127.0.0.1:6443; proxy_pass u; } }",
        )
        .unwrap();
        assert!(discover(Some(&n), None, &nowhere, &nowhere, true).is_err());
    }
}
