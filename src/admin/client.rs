//! `apilb status`: reads a running apilb's `/status` from its admin endpoint and prints it as
//! a table an operator reads at a glance. Also the admin client used by
//! `apilb kubeconfig rewrite --wait-ready`.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use crate::admin::Status;

/// GETs `path` from the admin endpoint at `base` (http://HOST:PORT). Returns status and body.
pub async fn get(base: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let uri: http::Uri = format!("{}{}", base.trim_end_matches('/'), path)
        .parse()
        .with_context(|| {
            format!("--admin-url {base}: not a URL; write e.g. http://127.0.0.1:6447")
        })?;
    if uri.scheme_str() != Some("http") {
        bail!("--admin-url {base}: the admin endpoint speaks plain http://");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("--admin-url {base}: missing HOST:PORT"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| {
                format!("cannot reach apilb's admin endpoint at {base} (is apilb running?)")
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .with_context(|| format!("apilb's admin endpoint at {base} did not answer within 5s"))?
}

pub async fn fetch(base: &str) -> anyhow::Result<Status> {
    let (code, body) = get(base, "/status").await?;
    if code != 200 {
        bail!("{base}/status answered {code}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{base}/status: not apilb's status JSON"))
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}ms")).unwrap_or_else(|| "-".into())
}

fn ago(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs as u64)).to_string() + " ago"
}

/// The configuration lines above the table: the file, the last reload, what waits for a
/// restart.
fn reload_line(r: &crate::reload::ReloadStatus) -> String {
    let mut out = format!("config: {}", r.file.as_deref().unwrap_or("flags only"));
    match (&r.last_result, r.last_seconds_ago) {
        (Some(result), Some(t)) => {
            let cause = r.last_cause.as_deref().unwrap_or("reload");
            if result == "ok" {
                out.push_str(&format!("; last reload {} ({cause}): ok", ago(t)));
            } else {
                out.push_str(&format!(
                    "; last reload {} ({cause}): FAILED, the previous settings stay in effect: {}",
                    ago(t),
                    r.last_error.as_deref().unwrap_or("")
                ));
            }
        }
        _ => out.push_str("; not reloaded since start"),
    }
    out.push_str(&format!(
        " ({} reloads, {} failed)\n",
        r.reloads, r.failures
    ));
    if !r.restart_needed.is_empty() {
        out.push_str(&format!(
            "config: changed, applied at the next start: {}\n",
            r.restart_needed.join(", ")
        ));
    }
    if let Some(t) = r.pending_change_seconds_ago {
        out.push_str(&format!(
            "config: a change seen {} waits to settle\n",
            ago(t)
        ));
    }
    out
}

/// The table `apilb status` prints.
pub fn render(s: &Status) -> String {
    let mut rows = vec![[
        "SERVER".to_string(),
        "STATE".into(),
        "CONNS".into(),
        "PING".into(),
        "READYZ".into(),
        "SINCE".into(),
        "SOURCE".into(),
        "REASON".into(),
    ]];
    for v in &s.servers {
        let state = if v.removed {
            format!("{} (removed)", v.state)
        } else if v.connect_failed && v.state == "ready" {
            "ready*".to_string()
        } else {
            v.state.clone()
        };
        // A down or unknown server's last figures are from before it went silent: not
        // shown as if they were current.
        let current = !matches!(v.state.as_str(), "down" | "unknown");
        let figure = |f: Option<f64>| ms(f.filter(|_| current));
        rows.push([
            v.server.clone(),
            state,
            v.active_connections.to_string(),
            figure(v.ping_rtt_ms),
            figure(v.readyz_latency_ms),
            v.since_seconds
                .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string() + " ago")
                .unwrap_or_else(|| "-".into()),
            if v.source.is_empty() {
                "-".into()
            } else {
                v.source.clone()
            },
            v.reason.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    // Stopping (SIGTERM): said first, whatever the servers' states.
    let phase = match s.phase.as_str() {
        "" | "running" => String::new(),
        p => format!("{}, ", p.to_uppercase()),
    };
    let mut out = format!(
        "apilb {}: {phase}{} ({} client connections, up {})\n",
        s.version,
        if s.ready {
            "READY"
        } else {
            "NOT READY: no server is ready"
        },
        s.client_connections,
        humantime::format_duration(Duration::from_secs(s.uptime_seconds))
    );
    out.push_str(&reload_line(&s.reload));
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 7 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if s.servers
        .iter()
        .any(|v| v.connect_failed && v.state == "ready")
    {
        out.push_str("* a client connect failed since the last good health check\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ServerStatus;

    fn server(name: &str, state: &str) -> ServerStatus {
        ServerStatus {
            server: name.into(),
            addresses: vec![],
            state: state.into(),
            reason: String::new(),
            since_seconds: Some(3),
            last_check_seconds_ago: Some(0.5),
            ping_rtt_ms: Some(0.25),
            readyz_latency_ms: Some(0.75),
            readyz_status: Some(200),
            protocol: Some("h2".into()),
            active_connections: 0,
            connect_failed: false,
            source: "seed".into(),
            removed: false,
        }
    }

    #[test]
    fn a_down_server_shows_no_stale_figures() {
        let mut s = Status {
            phase: "running".into(),
            ready: true,
            version: "0.1.0".into(),
            uptime_seconds: 5,
            client_connections: 0,
            servers: vec![server("cp1:6443", "ready"), server("cp2:6443", "down")],
            discovery: None,
            reload: Default::default(),
            config: Default::default(),
            transitions: Vec::new(),
        };
        let out = render(&s);
        assert!(out.starts_with("apilb 0.1.0: READY ("), "{out}");
        let line = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(
            line("cp1").contains("0.2ms") && line("cp1").contains("0.8ms"),
            "{out}"
        );
        assert!(!line("cp2").contains("ms "), "{out}");
        assert!(
            out.contains("config: flags only; not reloaded since start"),
            "{out}"
        );
        s.phase = "draining".into();
        assert!(
            render(&s).starts_with("apilb 0.1.0: DRAINING, READY ("),
            "{}",
            render(&s)
        );
    }
}
