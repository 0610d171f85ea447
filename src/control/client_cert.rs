//! The health checks' client certificate, followed as the kubelet rotates it.
//!
//! `--health-client-cert` is typically `/var/lib/kubelet/pki/kubelet-client-current.pem`, a
//! symlink the kubelet re-points at a new certificate before the old one expires (a year,
//! by default). A certificate read once at start would expire under a running apilb: its
//! next health connection (a server restarted, a partition healed) would be refused, and
//! a healthy control plane would read as down. So the TLS handshake asks this resolver,
//! which looks at the files (`stat`, following the symlink) on every handshake — health
//! connections are long-lived, handshakes are rare — and reads them again when they
//! changed. A new pair that cannot be used (half-written, a key that does not fit) keeps
//! the previous one, with one warning per change.
//!
//! Owns: reading and re-reading the certificate and key files. Must not: build the rest of
//! the TLS configuration (that is `tls`), or decide health.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// What identifies a version of a file: where it points (inode), its size and its mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, SystemTime)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        Stamp(std::fs::metadata(path).ok().map(|m| {
            (
                m.ino(),
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )
        }))
    }
}

#[derive(Debug)]
struct Current {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
    /// The stamps of a change that could not be used (warned about once).
    refused: Option<(Stamp, Stamp)>,
}

/// The client certificate presented by the health checks, re-read when its files change.
#[derive(Debug)]
pub struct RotatingClientCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

impl RotatingClientCert {
    /// Starts from a pair already checked (the start's errors are `tls`'s, with their fixes).
    pub fn new(
        cert: &Path,
        key: &Path,
        chain: Vec<CertificateDer<'static>>,
        private: PrivateKeyDer<'static>,
        provider: Arc<CryptoProvider>,
    ) -> Result<RotatingClientCert, rustls::Error> {
        let stamps = (Stamp::of(cert), Stamp::of(key));
        let key_now = Arc::new(CertifiedKey::from_der(chain, private, &provider)?);
        Ok(RotatingClientCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new(Current {
                stamps,
                key: key_now,
                refused: None,
            }),
        })
    }

    /// Reads the pair from the files.
    fn load(&self) -> Result<CertifiedKey, String> {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(Iterator::collect)
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no CERTIFICATE block", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| e.to_string())
    }

    /// The pair to present now: the current one, read again first if its files changed.
    fn now(&self) -> Arc<CertifiedKey> {
        let stamps = (Stamp::of(&self.cert), Stamp::of(&self.key));
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if stamps == cur.stamps || cur.refused.as_ref() == Some(&stamps) {
            return cur.key.clone();
        }
        match self.load() {
            Ok(k) => {
                tracing::info!(
                    cert = %self.cert.display(),
                    "health client certificate changed on disk: presenting the new one"
                );
                cur.key = Arc::new(k);
                cur.stamps = stamps;
                cur.refused = None;
            }
            Err(error) => {
                tracing::warn!(
                    cert = %self.cert.display(),
                    %error,
                    "health client certificate changed on disk but cannot be used: presenting \
                     the previous one until it is fixed"
                );
                cur.refused = Some(stamps);
            }
        }
        cur.key.clone()
    }
}

impl ResolvesClientCert for RotatingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.now())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn subject(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_rotated_pair_is_presented_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair("one");
        let (c2, k2) = pair("two");
        // The kubelet's layout: one file with both, behind a symlink it re-points.
        std::fs::write(dir.path().join("a.pem"), format!("{c1}{k1}")).unwrap();
        std::fs::write(dir.path().join("b.pem"), format!("{c2}{k2}")).unwrap();
        std::fs::write(dir.path().join("broken.pem"), format!("{c1}{k2}")).unwrap();
        let link = dir.path().join("current.pem");
        std::os::unix::fs::symlink("a.pem", &link).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(c1.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(k1.as_bytes()).unwrap();
        let r = RotatingClientCert::new(&link, &link, chain, key, crate::control::tls::provider())
            .unwrap();
        let first = subject(&r.now());
        assert_eq!(subject(&r.now()), first, "nothing changed: the same pair");

        let repoint = |to: &str| {
            let tmp = dir.path().join("tmp-link");
            std::os::unix::fs::symlink(to, &tmp).unwrap();
            std::fs::rename(&tmp, &link).unwrap();
        };
        repoint("b.pem");
        let second = subject(&r.now());
        assert_ne!(second, first, "re-pointed: the new pair is presented");

        repoint("broken.pem");
        assert_eq!(
            subject(&r.now()),
            second,
            "a key that does not fit: the last pair kept"
        );

        repoint("a.pem");
        assert_eq!(subject(&r.now()), first, "fixed: followed again");
    }
}
