//! Discovery's credentials: the node's kubeconfig read into what a discovery request
//! needs (the cluster CA, a client certificate or a token, the name to verify). Reads files
//! only; never makes a request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::PrivateKeyDer;
use serde::Deserialize;

use super::error::DiscoveryError;

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<Named<ContextRef>>,
    #[serde(default)]
    clusters: Vec<Named<ClusterRef>>,
    #[serde(default)]
    users: Vec<Named<UserRef>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: Option<T>,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct ClusterRef {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "tls-server-name")]
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct UserRef {
    #[serde(rename = "client-certificate")]
    cert: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

/// What a discovery request needs, read fresh from the kubeconfig and the files it names.
pub struct Credentials {
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) token: Option<String>,
    /// Name to verify the apiserver certificate against, when the kubeconfig gives one.
    pub(super) server_name: Option<String>,
}

fn read_file(base: &Path, p: &Path, what: &str) -> Result<Vec<u8>, String> {
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::fs::read(&full).map_err(|e| format!("{what} {}: {e}", full.display()))
}

fn b64(data: &str, what: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("{what}: not base64: {e}"))
}

impl Credentials {
    /// Reads the current context's cluster CA and user credentials.
    pub fn load(path: &Path) -> Result<Credentials, DiscoveryError> {
        Credentials::read(path).map_err(DiscoveryError::Credentials)
    }

    fn read(path: &Path) -> Result<Credentials, String> {
        let p = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{p}: cannot read the discovery kubeconfig: {e}"))?;
        let kc: Kubeconfig =
            yaml_serde::from_str(&text).map_err(|e| format!("{p}: not a kubeconfig: {e}"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = kc.current_context.clone().unwrap_or_default();
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| format!("{p}: current-context `{ctx_name}` not found in contexts"))?;
        let cluster_name = ctx.cluster.clone().unwrap_or_default();
        let cluster = kc
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| format!("{p}: cluster `{cluster_name}` not found"))?;
        let user_name = ctx.user.clone().unwrap_or_default();
        let default_user = UserRef::default();
        let user = kc
            .users
            .iter()
            .find(|u| u.name == user_name)
            .and_then(|u| u.value.as_ref())
            .unwrap_or(&default_user);

        let ca_pem = match (&cluster.ca_data, &cluster.ca) {
            (Some(d), _) => b64(d, "certificate-authority-data")?,
            (None, Some(f)) => read_file(base, f, "certificate-authority")?,
            (None, None) => {
                return Err(format!(
                    "{p}: cluster `{cluster_name}` has no certificate-authority: discovery \
                     verifies the apiserver and needs the cluster CA"
                ))
            }
        };
        let roots =
            crate::control::tls::parse_certs(&format!("{p}: certificate-authority"), &ca_pem)
                .map_err(|e| e.to_string())?;
        let cert = match (&user.cert_data, &user.cert) {
            (Some(d), _) => Some(b64(d, "client-certificate-data")?),
            (None, Some(f)) => Some(read_file(base, f, "client-certificate")?),
            _ => None,
        };
        let key = match (&user.key_data, &user.key) {
            (Some(d), _) => Some(b64(d, "client-key-data")?),
            (None, Some(f)) => Some(read_file(base, f, "client-key")?),
            _ => None,
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => {
                let chain =
                    crate::control::tls::parse_certs(&format!("{p}: client-certificate"), &c)
                        .map_err(|e| e.to_string())?;
                let key: PrivateKeyDer<'static> =
                    crate::control::tls::parse_key(&format!("{p}: client-key"), &k)
                        .map_err(|e| e.to_string())?;
                Some((chain, key))
            }
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{p}: user `{user_name}` has a client certificate without its key (or the \
                     reverse)"
                ))
            }
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(
                String::from_utf8_lossy(&read_file(base, f, "tokenFile")?)
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        if client.is_none() && token.is_none() {
            return Err(format!(
                "{p}: user `{user_name}` has neither a client certificate nor a token; \
                 discovery supports those two (exec plugins are not run)"
            ));
        }
        let tls = crate::control::tls::client_config_with(roots, client, &[b"http/1.1"])
            .map_err(|e| format!("{p}: {e}"))?;
        // The kubeconfig's tls-server-name, else its server's host unless it is loopback (a
        // rewritten kubeconfig points at apilb itself), else the server's own host.
        let server_name = cluster.tls_server_name.clone().or_else(|| {
            let url: http::Uri = cluster.server.as_deref()?.parse().ok()?;
            let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!loopback).then(|| host.to_string())
        });
        Ok(Credentials {
            tls,
            token,
            server_name,
        })
    }
}
