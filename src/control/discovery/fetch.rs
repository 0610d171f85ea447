//! Asking the API: one discovery request straight to a server (never through apilb's own
//! listener), the EndpointSlice first and the Endpoints where slices are not served or not
//! allowed, and parsing the two shapes. Never changes a server's health or the set.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::credentials::Credentials;
use super::error::DiscoveryError;
use crate::control::backend::Backend;
use crate::server::ServerSpec;

const SLICE_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes";
const ENDPOINTS_PATH: &str = "/api/v1/namespaces/default/endpoints/kubernetes";
/// Largest API answer read (the `kubernetes` objects are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ----- API shapes (only the fields apilb reads) -----

#[derive(Deserialize)]
struct EndpointSlice {
    #[serde(rename = "addressType")]
    address_type: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct Port {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct Endpoints {
    #[serde(default)]
    subsets: Option<Vec<Subset>>,
}

#[derive(Deserialize)]
struct Subset {
    #[serde(default)]
    addresses: Option<Vec<EndpointAddress>>,
    #[serde(default)]
    ports: Option<Vec<Port>>,
}

#[derive(Deserialize)]
struct EndpointAddress {
    ip: String,
}

fn https_port(ports: &[Port]) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .or_else(|| ports.first())
        .and_then(|p| p.port)
}

fn spec(ip: &str, port: u16) -> Option<ServerSpec> {
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    Some(ServerSpec {
        host: ip.to_string(),
        port,
    })
}

/// The servers of an EndpointSlice: ready endpoints (no condition = ready), its https port.
pub fn parse_endpoint_slice(body: &[u8]) -> Result<Vec<ServerSpec>, DiscoveryError> {
    let s: EndpointSlice = serde_json::from_slice(body)
        .map_err(|e| DiscoveryError::Parse(format!("not an EndpointSlice: {e}")))?;
    if let Some(t) = &s.address_type {
        if t != "IPv4" && t != "IPv6" {
            return Err(DiscoveryError::Parse(format!(
                "addressType {t} is not an IP family"
            )));
        }
    }
    let port = https_port(s.ports.as_deref().unwrap_or_default())
        .ok_or_else(|| DiscoveryError::Parse("the EndpointSlice has no port".into()))?;
    let mut out = Vec::new();
    for ep in s.endpoints.unwrap_or_default() {
        if ep.conditions.and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for a in &ep.addresses {
            if let Some(sp) = spec(a, port) {
                if !out.contains(&sp) {
                    out.push(sp);
                }
            }
        }
    }
    Ok(out)
}

/// The servers of the Endpoints object: ready addresses of each subset with its https port.
pub fn parse_endpoints(body: &[u8]) -> Result<Vec<ServerSpec>, DiscoveryError> {
    let e: Endpoints = serde_json::from_slice(body)
        .map_err(|e| DiscoveryError::Parse(format!("not an Endpoints: {e}")))?;
    let mut out = Vec::new();
    for subset in e.subsets.unwrap_or_default() {
        let Some(port) = https_port(subset.ports.as_deref().unwrap_or_default()) else {
            continue;
        };
        for a in subset.addresses.unwrap_or_default() {
            if let Some(sp) = spec(&a.ip, port) {
                if !out.contains(&sp) {
                    out.push(sp);
                }
            }
        }
    }
    Ok(out)
}

/// One discovery answer.
#[derive(Debug)]
pub enum Answer {
    Servers(Vec<ServerSpec>, &'static str),
    Forbidden(String),
}

async fn get(
    server: &Backend,
    creds: &Credentials,
    path: &str,
) -> Result<(u16, Bytes), DiscoveryError> {
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| DiscoveryError::NoAddress(server.name.to_string()))?;
    let name = creds.server_name.as_deref().unwrap_or(&server.spec.host);
    let sni = ServerName::try_from(name.to_string()).map_err(|e| DiscoveryError::ServerName {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| DiscoveryError::Connect { addr, source })?;
        let tls = tokio_rustls::TlsConnector::from(creds.tls.clone())
            .connect(sni, tcp)
            .await
            .map_err(|source| DiscoveryError::Tls { addr, source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| DiscoveryError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path)
            .header(http::header::HOST, server.spec.to_string())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("apilb/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &creds.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| DiscoveryError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| DiscoveryError::Http(e.to_string()))?;
        let code = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| DiscoveryError::Body(e.to_string()))?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| DiscoveryError::Timeout {
            path: path.to_string(),
            addr,
        })?
}

/// Asks `server` for the apiserver list: the EndpointSlice first, then the Endpoints.
pub async fn fetch(server: &Backend, creds: &Credentials) -> Result<Answer, DiscoveryError> {
    let (code, body) = get(server, creds, SLICE_PATH).await?;
    let slice_status = match code {
        200 => return parse_endpoint_slice(&body).map(|s| Answer::Servers(s, "EndpointSlice")),
        403 | 404 => code,
        401 => return Err(DiscoveryError::Unauthorized),
        other => {
            return Err(DiscoveryError::Status {
                api: "EndpointSlice",
                code: other,
            })
        }
    };
    let (code, body) = get(server, creds, ENDPOINTS_PATH).await?;
    match code {
        200 => parse_endpoints(&body).map(|s| Answer::Servers(s, "Endpoints")),
        403 => Ok(Answer::Forbidden(format!(
            "EndpointSlice answered {slice_status}, Endpoints answered 403"
        ))),
        other => Err(DiscoveryError::Status {
            api: "Endpoints",
            code: other,
        }),
    }
}
