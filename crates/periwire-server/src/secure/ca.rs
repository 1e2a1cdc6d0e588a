//! periwire's certificate authority for usbredir over TLS. QEMU's socket chardev speaks TLS
//! with x509 credentials checked against a CA (GnuTLS), not pins, so periwire keeps a CA of
//! its own in the data directory: it signs the server certificate of each TLS usbredir
//! listener, and the client certificates handed to QEMU (`periwire usbredir-creds`).
//!
//! The certificates are shaped for QEMU's checks (`tls-creds-x509`, sanity-check on): the CA
//! has CA basic constraints and may sign certificates; a client certificate is no CA, allows
//! digital signature and key encipherment, and is for TLS clients; the server certificate
//! names, as subject alternative names, the address QEMU dials, which GnuTLS matches
//! against the chardev's `host=`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::identity::{ensure_private, subject_common_name, IdentityError};
use super::trust::valid_name;

/// File name of the CA's private key (PKCS#8 PEM) inside the data directory.
pub const CA_KEY_FILE: &str = "usbredir-ca.key";
/// File name of the CA's certificate (PEM) inside the data directory.
pub const CA_CERT_FILE: &str = "usbredir-ca.crt";

/// The files of QEMU's `tls-creds-x509` directory for `endpoint=client`.
pub mod qemu_files {
    /// The CA that signs the server's certificate.
    pub const CA_CERT: &str = "ca-cert.pem";
    /// The client's certificate.
    pub const CLIENT_CERT: &str = "client-cert.pem";
    /// The client's private key (unencrypted PKCS#8).
    pub const CLIENT_KEY: &str = "client-key.pem";
}

/// A client certificate and its key, PEM, as QEMU reads them.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The CA certificate (QEMU's `ca-cert.pem`).
    pub ca_cert: String,
    /// The client certificate (`client-cert.pem`).
    pub cert: String,
    /// Its private key (`client-key.pem`).
    pub key: String,
}

/// periwire's usbredir CA: its certificate and the key that signs with it.
pub struct CertAuthority {
    /// The CA certificate, DER.
    pub certificate: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// The subject name of periwire's CA made on machine `host`.
fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl CertAuthority {
    /// Reads the CA in `dir`, making one (named after `host`) if there is none yet; both
    /// files are made readable by the owner only.
    pub fn load_or_create(dir: &Path, host: &str) -> Result<CertAuthority, IdentityError> {
        if !dir.join(CA_KEY_FILE).exists() {
            create(dir, host)?;
        }
        CertAuthority::load(dir)
    }

    /// Reads the CA in `dir`.
    pub fn load(dir: &Path) -> Result<CertAuthority, IdentityError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        let invalid = |path: &Path, reason: String| IdentityError::Invalid {
            path: path.to_owned(),
            reason,
        };
        ensure_private(&key_path)?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, format!("no private key: {e}")))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let certificate = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(&cert_path, format!("no certificate: {e}")))?;
        // The issuer is rebuilt from the same parameters the CA was made with; its name is
        // the stored certificate's, so what it signs chains to that certificate.
        let name = subject_common_name(&certificate)
            .ok_or_else(|| invalid(&cert_path, "no subject common name".into()))?;
        let issuer = Issuer::new(ca_params(&name)?, key);
        Ok(CertAuthority {
            certificate,
            cert_pem,
            issuer,
        })
    }

    /// A client certificate named `name` (its subject common name: what logs and allow
    /// lists call the client), with a fresh key.
    pub fn issue_client(&self, name: &str) -> Result<ClientCredentials, IssueError> {
        if !valid_name(name) {
            return Err(IssueError::BadName(name.to_owned()));
        }
        let key = KeyPair::generate()?;
        let mut params = leaf_params(name)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCredentials {
            ca_cert: self.cert_pem.clone(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A server certificate for a listener that QEMU reaches by `names` (IP addresses and
    /// DNS names), with a fresh key, made at each start and kept in memory only.
    pub fn issue_server(
        &self,
        names: &[ServerName],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IssueError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params("periwire usbredir")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in names {
            params.subject_alt_names.push(match name {
                ServerName::Ip(ip) => SanType::IpAddress(*ip),
                ServerName::Dns(dns) => SanType::DnsName(dns.as_str().try_into()?),
            });
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

impl CertAuthority {
    /// The TLS configuration of a usbredir listener bound to `ip` on machine `host`: a
    /// server certificate for its [`listener_names`], fresh, and a client certificate from
    /// this CA required ([`super::tls::ca_server_config`]).
    pub fn server_config(
        &self,
        ip: IpAddr,
        host: &str,
    ) -> Result<Arc<rustls::ServerConfig>, IssueError> {
        let (cert, key) = self.issue_server(&listener_names(ip, host))?;
        Ok(super::tls::ca_server_config(&self.certificate, cert, key)?)
    }
}

/// A name a server certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// An address (GnuTLS matches an IP `host=` against IP address names only).
    Ip(IpAddr),
    /// A DNS name.
    Dns(String),
}

/// The names of a listener bound to `ip` on machine `host`: that address, or for a wildcard
/// address the loopback ones; and the host's name and `localhost` alike.
pub fn listener_names(ip: IpAddr, host: &str) -> Vec<ServerName> {
    let mut names = if ip.is_unspecified() {
        vec![
            ServerName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ServerName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]
    } else {
        vec![ServerName::Ip(ip)]
    };
    names.push(ServerName::Dns("localhost".into()));
    let host_ok = !host.is_empty()
        && host != "localhost"
        && (host.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok {
        names.push(ServerName::Dns(host.to_owned()));
    }
    names
}

/// An end-entity certificate's parameters: named `name`, no CA, and the key usages QEMU's
/// sanity check wants of its own certificate (it refuses a critical key usage without key
/// encipherment).
fn leaf_params(name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(params)
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A client name that is not one word of printable characters.
    #[error("{0:?} is not a client name (one word, printable, at most 64 characters)")]
    BadName(String),
    /// The key or certificate could not be generated.
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS configuration could not be built from them.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Generates the CA's key pair and self-signed certificate into `dir`.
fn create(dir: &Path, host: &str) -> Result<(), IdentityError> {
    let io = |path: &Path| {
        let path: PathBuf = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate()?;
    let cert = ca_params(&format!("periwire usbredir CA {host}"))?.self_signed(&key)?;
    // The key last: its presence says the CA is whole.
    for (file, text) in [
        (CA_CERT_FILE, cert.pem()),
        (CA_KEY_FILE, key.serialize_pem()),
    ] {
        let path = dir.join(file);
        super::write_private(&path, &text).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_ca_is_private_made_once_and_signs_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = CertAuthority::load_or_create(dir.path(), "box").unwrap();
        for file in [CA_KEY_FILE, CA_CERT_FILE] {
            let mode = (std::fs::metadata(dir.path().join(file)).unwrap())
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is the owner's only");
        }
        let b = CertAuthority::load_or_create(dir.path(), "other").unwrap();
        assert_eq!(a.certificate, b.certificate, "made once, then read");
        assert_eq!(
            subject_common_name(&b.certificate).as_deref(),
            Some("periwire usbredir CA box")
        );
        // Issued by the reloaded CA: verifies against the stored certificate.
        let creds = b.issue_client("vm-1").unwrap();
        let cert = parse(&creds.cert);
        assert_eq!(subject_common_name(&cert).as_deref(), Some("vm-1"));
        let anchor = webpki::anchor_from_trusted_cert(&a.certificate).unwrap();
        let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        ee.verify_for_usage(
            algs.all,
            &[anchor],
            &[],
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("the client certificate chains to the CA");
        assert!(matches!(
            a.issue_client("two words"),
            Err(IssueError::BadName(_))
        ));
    }

    /// Runs a handshake in memory between a rustls client with `creds` dialing 127.0.0.1
    /// and a listener of `ca`; the server's connection, or its error.
    fn handshake(
        ca: &CertAuthority,
        creds: &ClientCredentials,
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(parse(&creds.ca_cert)).unwrap();
        let key = PrivateKeyDer::from_pem_slice(creds.key.as_bytes()).unwrap();
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![parse(&creds.cert)], key)
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let config = ca
            .server_config("127.0.0.1".parse().unwrap(), "box")
            .unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut &bytes[..]).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut &bytes[..]).unwrap();
            let _ = client.process_new_packets();
            if !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking(), "handshake done");
        Ok(server)
    }

    #[test]
    fn a_listener_admits_its_own_ca_clients_only() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ca = CertAuthority::load_or_create(dir.path(), "box").unwrap();
        let server = handshake(&ca, &ca.issue_client("vm-1").unwrap()).unwrap();
        assert_eq!(
            server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            super::super::tls::certified_name(&server).as_deref(),
            Some("vm-1")
        );
        let mut foreign = CertAuthority::load_or_create(other.path(), "elsewhere")
            .unwrap()
            .issue_client("vm-1")
            .unwrap();
        // It trusts this listener, but its own certificate is another CA's.
        foreign.ca_cert = ca.cert_pem.clone();
        assert!(matches!(
            handshake(&ca, &foreign),
            Err(rustls::Error::InvalidCertificate(_))
        ));
    }

    #[test]
    fn a_listener_is_named_by_its_address_or_by_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let names = listener_names(ip("192.0.2.7"), "box");
        assert_eq!(names[0], ServerName::Ip(ip("192.0.2.7")));
        assert!(names.contains(&ServerName::Dns("box".into())));
        let any = listener_names(ip("0.0.0.0"), "bad name");
        assert!(any.contains(&ServerName::Ip(ip("127.0.0.1"))));
        assert!(any.contains(&ServerName::Ip(ip("::1"))));
        assert!(!any.iter().any(|n| n == &ServerName::Dns("bad name".into())));
    }
}
