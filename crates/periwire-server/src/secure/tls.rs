//! TLS 1.3 between periwires, both sides authenticated, each checking the other's key
//! against its pins instead of against a CA.
//!
//! The verifiers record what they saw ([`PeerCheck`]), so that the caller can say, after a
//! handshake that failed, which key the peer showed and why it was refused, and, after one
//! that succeeded, who the peer is.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::identity::{Fingerprint, Identity};
use super::trust::TrustStore;

/// What a verifier made of the peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is pinned under this name.
    Trusted {
        /// The name it is pinned as.
        name: String,
    },
    /// The key is not pinned, and nothing is pinned under the name the peer was reached by
    /// (a first contact). `accepted` if the caller asked to pin it (`--trust-new`).
    New {
        /// Whether it was let through, to be pinned.
        accepted: bool,
    },
    /// Another key is pinned under the name the peer was reached by.
    Changed {
        /// The key pinned.
        pinned: Fingerprint,
    },
}

/// The peer's key and the verdict on it, once a verifier has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheck {
    /// The key the peer showed.
    pub fingerprint: Fingerprint,
    /// What was decided.
    pub verdict: Verdict,
}

/// Where a verifier leaves its [`PeerCheck`].
pub type CheckSlot = Arc<Mutex<Option<PeerCheck>>>;

fn record(slot: &CheckSlot, check: PeerCheck) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(check);
}

/// Reads what a verifier left in `slot`.
pub fn take_check(slot: &CheckSlot) -> Option<PeerCheck> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The client's decision on a server reached as `name` that shows `fingerprint`, ssh's
/// rules: a pinned key is trusted whatever name it was pinned under; an unknown key is
/// refused if `name` has another key pinned, else pinned on request.
pub fn check_server(
    store: &TrustStore,
    name: &str,
    fingerprint: Fingerprint,
    trust_new: bool,
) -> Verdict {
    if let Some(p) = store.by_fingerprint(&fingerprint) {
        return Verdict::Trusted {
            name: p.name.clone(),
        };
    }
    match store.by_name(name) {
        Some(p) => Verdict::Changed {
            pinned: p.fingerprint,
        },
        None => Verdict::New {
            accepted: trust_new,
        },
    }
}

/// The server's decision on a client that shows `fingerprint`: only pinned keys.
pub fn check_client(store: &TrustStore, fingerprint: Fingerprint) -> Verdict {
    match store.by_fingerprint(&fingerprint) {
        Some(p) => Verdict::Trusted {
            name: p.name.clone(),
        },
        None => Verdict::New { accepted: false },
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn refused() -> Error {
    // Sent to the peer as the access_denied alert: its key is fine, we do not trust it.
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

fn fingerprint_of(cert: &CertificateDer<'_>) -> Result<Fingerprint, Error> {
    Fingerprint::of_certificate(cert)
        .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))
}

/// The answer to a TLS 1.2 signature: never asked for, since only TLS 1.3 is built in.
fn no_tls12() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// A client's check of the server's key against the pins.
#[derive(Debug)]
struct PinnedServer {
    store: TrustStore,
    name: String,
    trust_new: bool,
    slot: CheckSlot,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let fingerprint = fingerprint_of(end_entity)?;
        let verdict = check_server(&self.store, &self.name, fingerprint, self.trust_new);
        let ok = matches!(
            verdict,
            Verdict::Trusted { .. } | Verdict::New { accepted: true }
        );
        record(
            &self.slot,
            PeerCheck {
                fingerprint,
                verdict,
            },
        );
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server's check of the client's key against the pins.
#[derive(Debug)]
struct PinnedClient {
    store: TrustStore,
    slot: CheckSlot,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let fingerprint = fingerprint_of(end_entity)?;
        let verdict = check_client(&self.store, fingerprint);
        let ok = matches!(verdict, Verdict::Trusted { .. });
        record(
            &self.slot,
            PeerCheck {
                fingerprint,
                verdict,
            },
        );
        if ok {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server-side TLS configuration for one connection: this identity, TLS 1.3 only, a
/// client certificate required and checked against `store`; the verdict lands in the
/// returned slot.
pub fn server_config(
    identity: &Identity,
    store: TrustStore,
) -> Result<(Arc<rustls::ServerConfig>, CheckSlot), Error> {
    let provider = provider();
    let slot = CheckSlot::default();
    let verifier = PinnedClient {
        store,
        slot: slot.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.certificate.clone()], identity.key())?;
    Ok((Arc::new(config), slot))
}

/// A server-side TLS configuration for a usbredir listener in CA mode: `cert` and `key`
/// shown to the client, TLS 1.3 only (GnuTLS, which QEMU uses, offers it by default), and a
/// client certificate required that chains to `ca` and is for TLS clients. No pins: the CA
/// signature is the trust, so the client's name is its certificate's
/// ([`certified_name`]).
pub fn ca_server_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::General(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    // QEMU's chardev reads 4 KiB per wakeup, and before QEMU 8.0 (io/channel-tls: "fix
    // handling of bigger read buffers") it is not woken again for the rest of a larger
    // record that GnuTLS holds decrypted: the stream stalls. Records of at most 4 KiB are
    // always read whole.
    config.max_fragment_size = Some(QEMU_CHARDEV_READ);
    Ok(Arc::new(config))
}

/// What QEMU's socket chardev reads at a time (`CHR_READ_BUF_LEN`).
const QEMU_CHARDEV_READ: usize = 4096;

/// The subject common name of the verified client certificate on `connection`: the name a
/// CA-mode client goes by.
pub fn certified_name(connection: &rustls::ServerConnection) -> Option<String> {
    let cert = connection.peer_certificates()?.first()?;
    super::identity::subject_common_name(cert)
}

/// A client-side TLS configuration: this identity, TLS 1.3 only, the server's key checked
/// against `store` as the server reached by `name` ([`check_server`]).
pub fn client_config(
    identity: &Identity,
    store: TrustStore,
    name: &str,
    trust_new: bool,
) -> Result<(Arc<rustls::ClientConfig>, CheckSlot), Error> {
    let provider = provider();
    let slot = CheckSlot::default();
    let verifier = PinnedServer {
        store,
        name: name.to_owned(),
        trust_new,
        slot: slot.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.certificate.clone()], identity.key())?;
    // Servers are told apart by their keys, not by names: send none.
    config.enable_sni = false;
    Ok((Arc::new(config), slot))
}

/// The name rustls is given for the server; unused, since the pins decide.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("periwire")
            .expect("a valid DNS name")
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::trust::TrustStore;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    fn store() -> TrustStore {
        let mut s = TrustStore::default();
        s.add("server.lan", fp(1)).unwrap();
        s.add("laptop", fp(2)).unwrap();
        s
    }

    #[test]
    fn a_client_trusts_pinned_keys_and_pins_only_on_request() {
        let s = store();
        let trusted = |n: &str| Verdict::Trusted { name: n.into() };
        assert_eq!(
            check_server(&s, "server.lan", fp(1), false),
            trusted("server.lan")
        );
        // The key is what is trusted; the name it was reached by is a label.
        assert_eq!(
            check_server(&s, "10.0.0.5", fp(1), false),
            trusted("server.lan")
        );
        assert_eq!(
            check_server(&s, "10.0.0.5", fp(9), false),
            Verdict::New { accepted: false }
        );
        assert_eq!(
            check_server(&s, "10.0.0.5", fp(9), true),
            Verdict::New { accepted: true }
        );
        // A pinned name with another key is refused, --trust-new or not.
        for trust_new in [false, true] {
            assert_eq!(
                check_server(&s, "server.lan", fp(9), trust_new),
                Verdict::Changed { pinned: fp(1) }
            );
        }
    }

    #[test]
    fn a_server_accepts_only_pinned_clients() {
        let s = store();
        assert_eq!(
            check_client(&s, fp(2)),
            Verdict::Trusted {
                name: "laptop".into()
            }
        );
        assert_eq!(check_client(&s, fp(3)), Verdict::New { accepted: false });
        assert_eq!(
            check_client(&TrustStore::default(), fp(2)),
            Verdict::New { accepted: false }
        );
    }
}
