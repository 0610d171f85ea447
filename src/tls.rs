//! TLS for apilb's own health checks: the CA bundle and optional client certificate (loaded
//! with rustls-pki-types' `PemObject`), and the rustls client configuration (ALPN h2, then
//! http/1.1). Client traffic never touches this: apilb does not terminate clients' TLS.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {message}")]
pub struct TlsError {
    pub flag: &'static str,
    pub path: String,
    pub message: String,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every CERTIFICATE block of PEM `bytes` (`what` names them in errors).
pub fn parse_certs(what: &str, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Parses the private key of PEM `bytes`.
pub fn parse_key(what: &str, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| format!("{what}: no usable private key: {e}"))
}

/// A rustls client configuration trusting `roots`, presenting `client` if given.
pub fn client_config_with(
    roots: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let mut store = RootCertStore::empty();
    for c in roots {
        store
            .add(c)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store);
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client key does not fit its certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn load_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError {
        flag,
        path: path.display().to_string(),
        message,
    };
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}")))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "no CERTIFICATE block found; give a PEM file such as /etc/kubernetes/pki/ca.crt".into(),
        ));
    }
    Ok(certs)
}

/// Builds the health checks' TLS client configuration from the config.
pub fn client_config(cfg: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            flag: "--ca-file",
            path: String::new(),
            message: e.to_string(),
        })?;
    let builder = if cfg.health_insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let Some(ca) = cfg.ca_file.as_deref() else {
            return Err(TlsError {
                flag: "--ca-file",
                path: String::new(),
                message: "required unless --health-insecure-skip-verify".into(),
            });
        };
        let mut roots = RootCertStore::empty();
        for c in load_certs("--ca-file", ca)? {
            roots.add(c).map_err(|e| TlsError {
                flag: "--ca-file",
                path: ca.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&cfg.health_client_cert, &cfg.health_client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("--health-client-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError {
                flag: "--health-client-key",
                path: key.display().to_string(),
                message: format!("cannot load a private key: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError {
                    flag: "--health-client-key",
                    path: cert.display().to_string(),
                    message: format!("the key does not fit the certificate: {e}"),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify a server's certificate against.
pub fn server_name(host: &str, override_name: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = override_name.unwrap_or(host);
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("`{name}` is not a valid TLS server name: {e}"))
}

/// `--health-insecure-skip-verify`: accepts any certificate, still checks signatures so the
/// handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
