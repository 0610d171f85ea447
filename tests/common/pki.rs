//! The test PKI, made at test time with rcgen: a CA, the stand-ins' serving certificate
//! (for `kubernetes` and 127.0.0.2-9), a client certificate, and the rustls client config
//! that trusts the CA. Owns certificates and keys only: it starts nothing and connects
//! nowhere.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
