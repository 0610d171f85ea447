//! The server TLS config from the flags: the certificate chain and key, ALPN (`h2` unless
//! `--http1-only`), and client certificate verification with `--client-ca`. Errors name
//! the flag and the file. Owns TLS setup only; it serves nothing.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Args;

/// Builds the rustls server config from the command-line flags.
pub(crate) fn tls_config(args: &Args) -> Result<ServerConfig> {
    // Fails only if a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let certs = load_certs(&args.cert, "--cert")?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| {
        anyhow!(
            "--key {}: cannot load a PEM private key: {e}",
            args.key.display()
        )
    })?;

    let builder = ServerConfig::builder();
    let builder = match &args.client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca_path, "--client-ca")? {
                roots.add(cert).map_err(|e| {
                    anyhow!(
                        "--client-ca {}: unusable CA certificate: {e}",
                        ca_path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| {
                    anyhow!(
                        "--client-ca {}: cannot build client verifier: {e}",
                        ca_path.display()
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!(
            "--cert {} / --key {}: unusable certificate or key: {e}",
            args.cert.display(),
            args.key.display()
        )
    })?;
    config.alpn_protocols = if args.http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Loads every certificate in a PEM file; an empty file is an error.
fn load_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            anyhow!(
                "{flag} {}: cannot load PEM certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(anyhow!(
            "{flag} {}: no PEM certificates found",
            path.display()
        ));
    }
    Ok(certs)
}
