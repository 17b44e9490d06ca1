//! The relay's TLS identity: a self-signed certificate made on first start and
//! kept in the data directory. Clients pin its SHA-256 fingerprint, which is part of
//! the relay's address; no certificate authority is involved.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use backchannel_proto::addr::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// File holding the certificate (DER).
pub const CERT_FILE: &str = "relay-cert.der";
/// File holding the private key (PKCS#8 DER), readable by the owner only.
pub const KEY_FILE: &str = "relay-key.der";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Generating the certificate failed.
    #[error("cannot generate the relay certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The stored certificate or key is unusable.
    #[error("the relay certificate or key in the data directory is unusable: {0}")]
    Invalid(String),
}

/// The certificate and key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Loads the identity from `dir`, making one if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        fs::create_dir_all(dir)?;
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() || key_path.exists() {
            return Self::load(dir);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let params = rcgen::CertificateParams::new(vec!["backchannel-relay".to_owned()])?;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, &key.serialize_der())?;
        write_private(&cert_path, cert.der())?;
        Self::load(dir)
    }

    /// Loads an existing identity.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let cert = fs::read(dir.join(CERT_FILE))?;
        let key = fs::read(dir.join(KEY_FILE))?;
        if cert.is_empty() || key.is_empty() {
            return Err(IdentityError::Invalid("empty file".into()));
        }
        Ok(Self {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// The fingerprint clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.cert.as_ref()).into())
    }

    /// A TLS 1.3-only server configuration presenting this identity.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session tickets: resumption would let the relay link a client's
        // connections, and tickets are records of another size.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn made_once_then_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(tmp.path()).unwrap();
        let again = Identity::load_or_create(tmp.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert!(first.server_config().is_ok());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Identity::load_or_create(other.path())
                .unwrap()
                .fingerprint(),
            first.fingerprint()
        );
    }
}
