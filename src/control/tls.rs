//! TLS for apilb's own health checks: the CA bundle and optional client certificate (loaded
//! with rustls-pki-types' `PemObject`), and the rustls client configuration (ALPN h2, then
//! http/1.1). Client traffic never touches this: apilb does not terminate clients' TLS.
//! The client certificate is checked here at start, then followed on disk by
//! `client_cert` (the kubelet rotates it).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Config;
use crate::control::client_cert::RotatingClientCert;

/// Why a TLS setting is unusable; each message names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A flag's file (or the flag itself, with an empty path) is unusable.
    #[error("{flag} {path}: {message}")]
    File {
        flag: &'static str,
        path: String,
        message: String,
    },
    /// PEM that does not parse.
    #[error("{what}: invalid PEM: {reason}")]
    Pem { what: String, reason: String },
    /// PEM without a certificate.
    #[error("{what}: no CERTIFICATE block found")]
    NoCertificate { what: String },
    /// PEM without a usable private key.
    #[error("{what}: no usable private key: {reason}")]
    Key { what: String, reason: String },
    /// A CA certificate rustls cannot use.
    #[error("not a usable CA certificate: {0}")]
    Ca(String),
    /// The crypto provider refused the protocol versions.
    #[error("{0}")]
    Provider(String),
    /// A client certificate and key that cannot be used together.
    #[error("the client certificate and key: {0}")]
    ClientCert(String),
    /// A name that is not a TLS server name.
    #[error("`{name}` is not a valid TLS server name: {reason}")]
    ServerName { name: String, reason: String },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every CERTIFICATE block of PEM `bytes` (`what` names them in errors).
pub fn parse_certs(what: &str, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

/// Parses the private key of PEM `bytes`.
pub fn parse_key(what: &str, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| TlsError::Key {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// A rustls client configuration trusting `roots`, presenting `client` if given.
pub fn client_config_with(
    roots: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in roots {
        store.add(c).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Provider(e.to_string()))?
        .with_root_certificates(store);
    let mut config = match client {
        Some((chain, key)) => {
            with_client_cert(builder, chain, key).map_err(TlsError::ClientCert)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration presenting `chain` and `key`; the error says which of the two is
/// at fault (rustls checks that the key fits by parsing the certificate, so a certificate
/// it cannot use would otherwise read as a key that does not fit).
fn with_client_cert(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, String> {
    let version = chain.first().and_then(|c| x509_version(c.as_ref()));
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| match (e, version) {
            (_, Some(v)) if v < 3 => format!(
                "the certificate is X.509 version {v}; a TLS client certificate must be \
                 version 3. Issue it again with extensions (e.g. `openssl x509 -req` with \
                 `-extfile` giving extendedKeyUsage = clientAuth; without one, older OpenSSL \
                 makes version 1)"
            ),
            (rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch), _) => {
                "the key does not fit the certificate: they are not a pair; give the key \
                 the certificate was issued for"
                    .into()
            }
            (e @ rustls::Error::InvalidCertificate(_), _) => {
                format!("the certificate cannot be used: {e}")
            }
            (e, _) => format!("the certificate and key cannot be used: {e}"),
        })
}

/// The version of a DER X.509 certificate (1, 2 or 3), or None if it does not parse that
/// far. `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] EXPLICIT version
/// DEFAULT v1, … } … }`.
fn x509_version(der: &[u8]) -> Option<u8> {
    /// The content of the DER element at the start of `b` with tag `tag`.
    fn inside(b: &[u8], tag: u8) -> Option<&[u8]> {
        let (&t, rest) = b.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        rest.get(..len)
    }
    let tbs = inside(inside(der, 0x30)?, 0x30)?;
    match inside(tbs, 0xa0) {
        None => Some(1),
        // INTEGER 0, 1 or 2: v1, v2, v3.
        Some(v) => match inside(v, 0x02)? {
            [n @ 0..=2] => Some(n + 1),
            _ => None,
        },
    }
}

fn load_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        flag,
        path: path.display().to_string(),
        message,
    };
    let fix = match flag {
        "--ca-file" => {
            "give the CA that signs the apiservers' certificates, e.g. \
             --ca-file /etc/kubernetes/pki/ca.crt (kubeadm) or /etc/kubernetes/ssl/ca.crt \
             (kubespray), or pass --health-insecure-skip-verify to skip verification"
        }
        _ => "check the path",
    };
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read certificates: {e}; {fix}")))?;
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
        .map_err(|e| TlsError::File {
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
            return Err(TlsError::File {
                flag: "--ca-file",
                path: String::new(),
                message: "required unless --health-insecure-skip-verify".into(),
            });
        };
        let mut roots = RootCertStore::empty();
        for c in load_certs("--ca-file", ca)? {
            roots.add(c).map_err(|e| TlsError::File {
                flag: "--ca-file",
                path: ca.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&cfg.health_client_cert, &cfg.health_client_key) {
        (Some(cert), Some(key_path)) => {
            let chain = load_certs("--health-client-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
                flag: "--health-client-key",
                path: key_path.display().to_string(),
                message: format!("cannot load a private key: {e}"),
            })?;
            let fault = |message| TlsError::File {
                flag: "--health-client-cert",
                path: cert.display().to_string(),
                message,
            };
            // The start's check, whose errors name the fix; then the pair is followed on
            // disk as the kubelet rotates it.
            with_client_cert(builder.clone(), chain.clone(), key.clone_key()).map_err(fault)?;
            let rotating = RotatingClientCert::new(cert, key_path, chain, key, provider())
                .map_err(|e| fault(format!("the certificate and key cannot be used: {e}")))?;
            builder.with_client_cert_resolver(Arc::new(rotating))
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify a server's certificate against.
pub fn server_name(
    host: &str,
    override_name: Option<&str>,
) -> Result<ServerName<'static>, TlsError> {
    let name = override_name.unwrap_or(host);
    ServerName::try_from(name.to_string()).map_err(|e| TlsError::ServerName {
        name: name.to_string(),
        reason: e.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn der_len(n: usize) -> Vec<u8> {
        match n {
            0..=0x7f => vec![n as u8],
            0x80..=0xff => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    }

    fn element(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(der_len(content.len()));
        out.extend_from_slice(content);
        out
    }

    /// The elements of a DER SEQUENCE's content.
    fn elements(mut b: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let first = b[1];
            let (hdr, len) = if first < 0x80 {
                (2, usize::from(first))
            } else {
                let n = usize::from(first & 0x7f);
                let len = b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | usize::from(*x));
                (2 + n, len)
            };
            out.push(&b[..hdr + len]);
            b = &b[hdr + len..];
        }
        out
    }

    fn content(b: &[u8]) -> &[u8] {
        let first = b[1];
        let hdr = if first < 0x80 {
            2
        } else {
            2 + usize::from(first & 0x7f)
        };
        &b[hdr..]
    }

    /// A client certificate and key: X.509 v3 as rcgen makes it, or the same certificate
    /// rewritten as version 1 (no version field, no extensions; its signature no longer
    /// matches, which nothing here checks: rustls refuses it for its version first).
    fn client_pair(v1: bool) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut der = cert.der().to_vec();
        if v1 {
            let outer = elements(content(&der));
            let tbs: Vec<u8> = elements(content(outer[0]))
                .into_iter()
                .filter(|e| e[0] != 0xa0 && e[0] != 0xa3)
                .flatten()
                .copied()
                .collect();
            let mut body = element(0x30, &tbs);
            body.extend(outer[1]);
            body.extend(outer[2]);
            der = element(0x30, &body);
        }
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![CertificateDer::from(der)], key)
    }

    #[test]
    fn a_version_1_client_certificate_is_named_as_such() {
        let (chain, key) = client_pair(false);
        assert_eq!(x509_version(chain[0].as_ref()), Some(3));
        assert!(client_config_with(Vec::new(), Some((chain, key)), &[]).is_ok());

        let (chain, key) = client_pair(true);
        assert_eq!(x509_version(chain[0].as_ref()), Some(1));
        let e = client_config_with(Vec::new(), Some((chain, key)), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("X.509 version 1"), "{e}");
        assert!(!e.contains("does not fit"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_named_as_such() {
        let (chain, _) = client_pair(false);
        let (_, other_key) = client_pair(false);
        let e = client_config_with(Vec::new(), Some((chain, other_key)), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the key does not fit the certificate"), "{e}");
    }

    #[test]
    fn x509_version_never_panics_on_garbage() {
        for b in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x02, 0x30, 0x00],
        ] {
            let _ = x509_version(b);
        }
        assert_eq!(x509_version(&[0x30, 0x02, 0x30, 0x00]), Some(1));
    }
}
