//! A client's TLS connection to a periwire server: the handshake with this periwire's
//! identity and pins, and the first-contact pinning of `--trust-new`.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::identity::{Fingerprint, Identity};
use super::tls::{self, PeerCheck, Verdict};
use super::trust::{TrustError, TrustStore};
use crate::client::{self, ClientError, Remote};

/// Why a TLS connection to a server was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed or timed out.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The server's key is pinned by nobody, and pinning it was not asked for.
    #[error(
        "server {name} is not trusted: it shows {shown}. If that is the key `periwire id` \
         prints on the server, run `periwire trust add {name} {shown}`, or pass --trust-new"
    )]
    NotTrusted {
        /// The name the server was reached by.
        name: String,
        /// Its key.
        shown: Fingerprint,
    },
    /// Another key is pinned for this server.
    #[error(
        "server {name} shows {shown}, but {pinned} is pinned for it: refusing (if its key \
         really changed, `periwire trust remove {name}` and connect again with --trust-new)"
    )]
    Changed {
        /// The name the server was reached by.
        name: String,
        /// The key pinned for it.
        pinned: Fingerprint,
        /// The key it showed.
        shown: Fingerprint,
    },
    /// The handshake failed for another reason (not TLS 1.3, a bad certificate, ...).
    #[error("TLS handshake with {name}: {source}")]
    Handshake {
        /// The name the server was reached by.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the identity.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Pinning the new key failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// The name a server's pin is kept under when the user gave none: the host, with the port
/// when it is not USB/IP's (ssh's `[host]:port` convention, without the brackets).
pub fn pin_name(remote: &Remote) -> String {
    if remote.port == periwire_wire::usbip::USBIP_PORT {
        remote.host.clone()
    } else {
        remote.to_string()
    }
}

/// A TLS client: this periwire's identity and the data directory holding its pins.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// This periwire's identity.
    pub identity: Identity,
    /// The data directory with the trust store.
    pub data_dir: std::path::PathBuf,
    /// Pin a server seen for the first time instead of refusing it.
    pub trust_new: bool,
}

/// A server reached and verified.
pub struct Connected {
    /// The TLS stream, ready for the operation phase.
    pub stream: TlsStream<TcpStream>,
    /// The server's key and how it was trusted.
    pub check: PeerCheck,
}

impl TlsClient {
    /// Connects to `remote` and runs the handshake, within `timeout`. A new server's key is
    /// pinned (under [`pin_name`]) when `trust_new` is set, and printed to stderr.
    pub async fn connect(
        &self,
        remote: &Remote,
        timeout: Duration,
    ) -> Result<Connected, ConnectError> {
        let name = pin_name(remote);
        let store = TrustStore::load(&self.data_dir)?;
        let (config, slot) = tls::client_config(&self.identity, store, &name, self.trust_new)?;
        let tcp = client::connect(&remote.to_string(), timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = tokio::time::timeout(timeout, connector.connect(tls::server_name(), tcp));
        let result = match handshake.await {
            Ok(r) => r,
            Err(_) => return Err(ClientError::Timeout(timeout).into()),
        };
        let check = tls::take_check(&slot);
        let stream = match (result, check) {
            (Ok(stream), Some(check)) => (stream, check),
            (
                Err(_),
                Some(PeerCheck {
                    fingerprint,
                    verdict: Verdict::New { accepted: false },
                }),
            ) => {
                return Err(ConnectError::NotTrusted {
                    name,
                    shown: fingerprint,
                })
            }
            (
                Err(_),
                Some(PeerCheck {
                    fingerprint,
                    verdict: Verdict::Changed { pinned },
                }),
            ) => {
                return Err(ConnectError::Changed {
                    name,
                    pinned,
                    shown: fingerprint,
                })
            }
            (Err(source), _) => return Err(ConnectError::Handshake { name, source }),
            (Ok(_), None) => {
                // rustls calls the verifier on every handshake; this cannot be reached.
                return Err(ConnectError::Handshake {
                    name,
                    source: std::io::Error::other("the server's certificate was not checked"),
                });
            }
        };
        let (stream, check) = stream;
        if check.verdict == (Verdict::New { accepted: true }) {
            pin(&self.data_dir, &name, check.fingerprint)?;
            eprintln!(
                "periwire: pinned server {name} as {} (--trust-new)",
                check.fingerprint
            );
        }
        Ok(Connected { stream, check })
    }
}

/// Adds `name` = `fingerprint` to the trust store in `dir`.
fn pin(dir: &Path, name: &str, fingerprint: Fingerprint) -> Result<(), TrustError> {
    let mut store = TrustStore::load(dir)?;
    store.add(name, fingerprint)?;
    store.save(dir)
}
