//! One port, two protocols: the listener tells a TLS ClientHello from a USB/IP request by its
//! first byte (a TLS record of type handshake starts 0x16; a USB/IP request starts with its
//! version, 0x01 0x11). TLS clients are served once the handshake has matched their key to a
//! pin; plain clients only from loopback and the networks the configuration allows.
//!
//! The [`AccessRules`] are the same for the usbredir listeners ([`crate::usbredir::serve`]):
//! a plain one admits by address as here; a TLS one admits QEMU by a certificate from
//! periwire's usbredir CA (QEMU's x509 credentials have no pinned identity to show).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use periwire_wire::usbip::BusId;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::registry::{Export, Peer, Registry};
use crate::secure::tls::{self, PeerCheck, Verdict};
use crate::secure::{Identity, Network, TrustStore};
use crate::server::{accept_loop, serve_stream_gated, ConnectionError, ServerConfig, Stopped};

/// The first byte of a TLS record that carries a handshake message (a ClientHello).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection's first byte says it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS ClientHello.
    Tls,
    /// Anything else is read as USB/IP (whose requests start 0x01); the operation phase
    /// refuses what is not.
    PlainUsbip,
}

/// Tells the protocol from a connection's first byte.
pub fn classify(first: u8) -> Protocol {
    if first == TLS_HANDSHAKE_RECORD {
        Protocol::Tls
    } else {
        Protocol::PlainUsbip
    }
}

/// Who is on a connection, as the front door (or a usbredir listener) established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A plain (unauthenticated) connection from loopback: the local user, who may use every
    /// device.
    Local,
    /// A plain connection from a `plain_allow` network: anonymous, so only devices without
    /// an allow list.
    PlainNetwork,
    /// A TLS client whose key is pinned under `name` (USB/IP), or whose certificate from
    /// periwire's usbredir CA is named `name` (usbredir over TLS).
    Trusted {
        /// Its name in the trust store, or its certificate's common name.
        name: String,
    },
}

/// The access rules of the configuration, for every listener: who may connect without
/// authentication (plain USB/IP, plain usbredir), and which clients may use each device.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// Networks besides loopback that may speak a plain protocol.
    pub plain_allow: Vec<Network>,
    /// Allow lists: the trusted client names that may import each listed device. A device
    /// not listed here is open to every trusted client.
    pub allow: HashMap<BusId, Vec<String>>,
}

impl AccessRules {
    /// Who a plain connection from `ip` is, or `None` if plain connections are not allowed
    /// from there.
    pub fn plain_client(&self, ip: IpAddr) -> Option<Client> {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            Some(Client::Local)
        } else if self.plain_allow.iter().any(|n| n.contains(ip)) {
            Some(Client::PlainNetwork)
        } else {
            None
        }
    }

    /// Whether `client` may see and import `export`.
    pub fn may_import(&self, client: &Client, export: &Export) -> bool {
        let list = self.allow.get(&export.busid);
        match client {
            Client::Local => true,
            Client::PlainNetwork => list.is_none(),
            Client::Trusted { name } => list.is_none_or(|names| names.contains(name)),
        }
    }
}

/// What the front door needs: this server's identity, where its trust store is, and the
/// access rules.
#[derive(Debug, Clone)]
pub struct FrontDoor {
    /// This server's identity, shown to TLS clients.
    pub identity: Identity,
    /// The data directory holding the trust store, read at each TLS handshake (so that
    /// `periwire trust add` takes effect without a restart).
    pub data_dir: PathBuf,
    /// Who may skip TLS, and who may import what.
    pub rules: Arc<AccessRules>,
}

/// Serves USB/IP and USB/IP over TLS on `listener` until `shutdown` resolves, as
/// [`crate::serve`] does for plain USB/IP alone.
pub async fn serve_front_door(
    listener: TcpListener,
    door: Arc<FrontDoor>,
    registry: Registry,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handler = move |stream: TcpStream, peer: SocketAddr, registry: Registry, stop: Stopped| {
        let door = Arc::clone(&door);
        async move {
            match handle(stream, peer, &door, &registry, config, stop).await {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => warn!(%peer, reason = %e, "dropped client"),
            }
        }
    };
    accept_loop(listener, registry, shutdown, handler).await
}

/// Why a connection was turned away at the door.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("nothing received within {0:?}")]
    Silent(std::time::Duration),
    #[error(
        "plain USB/IP from a network not in plain_allow (only loopback and those may skip TLS)"
    )]
    PlainNotAllowed,
    #[error(
        "TLS client refused: its key {0} is not trusted (`periwire trust add NAME {0}` lets it in)"
    )]
    Untrusted(crate::secure::Fingerprint),
    #[error("TLS client refused this server's key (it has another key pinned for it, or none)")]
    KeyRejectedByClient,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake not done within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("trust store: {0}")]
    Store(#[from] crate::secure::trust::TrustError),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    door: &FrontDoor,
    registry: &Registry,
    mut config: ServerConfig,
    stop: Stopped,
) -> Result<(), Refused> {
    stream.set_nodelay(true)?;
    let wait = config.request_timeout;
    let deadline = Instant::now() + wait;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(Refused::Silent(wait)),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(_)) => {}
    }
    match classify(first[0]) {
        Protocol::PlainUsbip => {
            let Some(client) = door.rules.plain_client(peer.ip()) else {
                return Err(Refused::PlainNotAllowed);
            };
            // The time spent waiting for the first byte counts against the request's.
            config.request_timeout = deadline.saturating_duration_since(Instant::now());
            let gate = |e: &Export| door.rules.may_import(&client, e);
            // Boxed, here and below: a connection waiting for its first byte then holds a
            // small future, not one sized for the URB phase.
            Box::pin(serve_stream_gated(
                stream,
                Peer::at(peer),
                registry,
                config,
                &gate,
                stop.wait(),
            ))
            .await?;
        }
        Protocol::Tls => {
            Box::pin(serve_tls(
                stream, peer, door, registry, config, deadline, stop,
            ))
            .await?
        }
    }
    Ok(())
}

/// The TLS side of [`handle`]: the handshake (by `deadline`), then the client's requests.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    door: &FrontDoor,
    registry: &Registry,
    config: ServerConfig,
    deadline: Instant,
    stop: Stopped,
) -> Result<(), Refused> {
    let wait = config.request_timeout;
    let store = TrustStore::load(&door.data_dir)?;
    let (tls_config, slot) = tls::server_config(&door.identity, store)?;
    let accept = tokio_rustls::TlsAcceptor::from(tls_config).accept(stream);
    let accepted = tokio::time::timeout_at(deadline, accept).await;
    let check = tls::take_check(&slot);
    let stream = match accepted {
        Err(_) => return Err(Refused::HandshakeTimeout(wait)),
        Ok(Err(e)) => {
            return Err(match check {
                Some(PeerCheck {
                    fingerprint,
                    verdict: Verdict::New { .. },
                }) => Refused::Untrusted(fingerprint),
                _ if alert_received(&e) == Some(rustls::AlertDescription::AccessDenied) => {
                    Refused::KeyRejectedByClient
                }
                _ => Refused::Handshake(e),
            })
        }
        Ok(Ok(stream)) => stream,
    };
    let Some(PeerCheck {
        verdict: Verdict::Trusted { name },
        fingerprint,
    }) = check
    else {
        // rustls requires and verifies a client certificate on every handshake.
        return Err(Refused::Handshake(std::io::Error::other(
            "no client certificate was checked",
        )));
    };
    info!(%peer, client = %name, %fingerprint, "TLS client");
    let who = Peer {
        address: peer.to_string(),
        identity: Some(name.clone()),
    };
    let client = Client::Trusted { name };
    let gate = |e: &Export| door.rules.may_import(&client, e);
    // The handshake had its own time; the request gets a full one after it.
    serve_stream_gated(stream, who, registry, config, &gate, stop.wait()).await?;
    Ok(())
}

/// The alert the peer ended the handshake with, if that is what `e` is.
fn alert_received(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_tells_tls_from_usbip() {
        assert_eq!(classify(0x16), Protocol::Tls);
        assert_eq!(classify(0x01), Protocol::PlainUsbip);
        assert_eq!(classify(0x00), Protocol::PlainUsbip);
    }

    fn rules(plain_allow: &[&str], allow: &[(&str, &[&str])]) -> AccessRules {
        AccessRules {
            plain_allow: plain_allow.iter().map(|n| n.parse().unwrap()).collect(),
            allow: (allow.iter())
                .map(|(b, names)| {
                    let names = names.iter().map(|n| n.to_string()).collect();
                    (BusId::new(b).unwrap(), names)
                })
                .collect(),
        }
    }

    #[test]
    fn plain_usbip_only_from_loopback_and_allowed_networks() {
        let d = rules(&["192.0.2.0/24"], &[]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(d.plain_client(ip("127.0.0.1")), Some(Client::Local));
        assert_eq!(d.plain_client(ip("127.8.9.10")), Some(Client::Local));
        assert_eq!(d.plain_client(ip("::1")), Some(Client::Local));
        assert_eq!(d.plain_client(ip("::ffff:127.0.0.1")), Some(Client::Local));
        assert_eq!(d.plain_client(ip("192.0.2.44")), Some(Client::PlainNetwork));
        assert_eq!(d.plain_client(ip("198.51.100.1")), None);
        assert_eq!(d.plain_client(ip("2001:db8::1")), None);
    }

    #[test]
    fn allow_lists_name_trusted_clients() {
        let d = rules(&[], &[("1-3", &["laptop"])]);
        let export = |b: &str| {
            let (device, _) = periwire_usb::hid::Keyboard::new();
            Export {
                busid: BusId::new(b).unwrap(),
                busnum: 1,
                devnum: 2,
                name: b.into(),
                device: Arc::new(device),
            }
        };
        let (listed, open) = (export("1-3"), export("1-1"));
        let trusted = |n: &str| Client::Trusted { name: n.into() };
        assert!(d.may_import(&trusted("laptop"), &listed));
        assert!(!d.may_import(&trusted("tablet"), &listed));
        assert!(
            d.may_import(&trusted("tablet"), &open),
            "no list: every trusted client"
        );
        assert!(
            d.may_import(&Client::Local, &listed),
            "the local user may import everything"
        );
        assert!(!d.may_import(&Client::PlainNetwork, &listed));
        assert!(d.may_import(&Client::PlainNetwork, &open));
    }
}
