//! A periwire's identity: its key pair and self-signed certificate, made on first use, and
//! the fingerprint peers pin it by.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the private key (PKCS#8 PEM) inside the data directory.
pub const KEY_FILE: &str = "identity.key";
/// File name of the certificate (PEM) inside the data directory.
pub const CERT_FILE: &str = "identity.crt";

/// Why an identity could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what periwire wrote there.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key can be read by others than its owner.
    #[error("{0}: the private key is readable by others than its owner; `chmod 600` it")]
    Unprotected(PathBuf),
    /// The key pair or certificate could not be generated.
    #[error("generating the identity: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: what peers pin. Written
/// `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// The fingerprint of the public key in a DER certificate, or `None` if the certificate
    /// does not parse.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Fingerprint> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        Some(Fingerprint::of_spki(
            parsed.subject_public_key_info().as_ref(),
        ))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// Parses `sha256:` and 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a fingerprint (sha256: and 64 hex digits)");
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// This periwire's key pair and certificate.
#[derive(Debug)]
pub struct Identity {
    /// The name in the certificate (the host name when it was made).
    pub name: String,
    /// The fingerprint of its public key.
    pub fingerprint: Fingerprint,
    /// The certificate, DER.
    pub certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            fingerprint: self.fingerprint,
            certificate: self.certificate.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Reads the identity in `dir`, making one (named `name`) if there is none yet. The
    /// directory is created if missing; both files are made readable by the owner only.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Identity, IdentityError> {
        if !dir.join(KEY_FILE).exists() {
            create(dir, name)?;
        }
        Identity::load(dir)
    }

    /// Reads the identity in `dir`.
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        ensure_private(&key_path)?;
        let invalid = |path: &Path, reason: String| IdentityError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| invalid(&key_path, format!("no private key: {e}")))?;
        let certificate = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| invalid(&cert_path, format!("no certificate: {e}")))?;
        let parsed = webpki::EndEntityCert::try_from(&certificate)
            .map_err(|e| invalid(&cert_path, format!("certificate does not parse: {e}")))?;
        let fingerprint = Fingerprint::of_spki(parsed.subject_public_key_info().as_ref());
        let name = subject_common_name(&certificate).unwrap_or_default();
        Ok(Identity {
            name,
            fingerprint,
            certificate,
            key,
        })
    }

    /// The private key, for a TLS configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Refuses a private key file that others than its owner can read.
pub(super) fn ensure_private(key_path: &Path) -> Result<(), IdentityError> {
    let mode = (std::fs::metadata(key_path))
        .map_err(|source| IdentityError::Io {
            path: key_path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Unprotected(key_path.to_owned()));
    }
    Ok(())
}

/// Generates a key pair and a self-signed certificate for `name` into `dir`.
fn create(dir: &Path, name: &str) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    // The key last: its presence says the identity is whole.
    for (file, text) in [(CERT_FILE, cert.pem()), (KEY_FILE, key.serialize_pem())] {
        let path = dir.join(file);
        super::write_private(&path, &text).map_err(io(&path))?;
    }
    Ok(())
}

/// The subject common name of a certificate periwire made (rcgen writes it as a UTF8String,
/// short), or `None` if the certificate does not parse or has none.
pub fn subject_common_name(cert: &CertificateDer<'_>) -> Option<String> {
    // OID 2.5.4.3 (commonName), then the string's tag and a short length. Looked for in the
    // subject only: a CA-signed certificate names its issuer first.
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let subject = parsed.subject();
    let at = subject.windows(CN_OID.len()).position(|w| w == CN_OID)? + CN_OID.len();
    let len = usize::from(*subject.get(at + 1)?);
    let value = subject.get(at + 2..at + 2 + len)?;
    String::from_utf8(value.to_vec()).ok()
}

/// This machine's host name, the default name of a new identity.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "periwire".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_identity_is_private_stable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), "box-1").unwrap();
        for file in [KEY_FILE, CERT_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is the owner's only");
        }
        let b = Identity::load_or_create(dir.path(), "other").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "made once, then read");
        assert_eq!(b.name, "box-1");
        let text = a.fingerprint.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert!(text[7..]
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(text.parse::<Fingerprint>().unwrap(), a.fingerprint);
        assert_eq!(
            Fingerprint::of_certificate(&a.certificate),
            Some(a.fingerprint)
        );
        let other = tempfile::tempdir().unwrap();
        let c = Identity::load_or_create(other.path(), "box-1").unwrap();
        assert_ne!(
            a.fingerprint, c.fingerprint,
            "every identity has its own key"
        );
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_spki() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path(), "x").unwrap();
        let pem = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        let key = rcgen::KeyPair::from_pem(&pem).unwrap();
        // The SPKI as rcgen encodes the public key, hashed by openssl's definition.
        assert_eq!(
            id.fingerprint,
            Fingerprint::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), "x").unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn fingerprints_parse_strictly() {
        let ok = format!("sha256:{}", "ab".repeat(32));
        assert!(ok.parse::<Fingerprint>().is_ok());
        for bad in [
            "ab".repeat(32),
            format!("sha1:{}", "ab".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}zz", "ab".repeat(31)),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}
