//! The usbredir server: periwire as the *usb-host* of QEMU's `usb-redir` device, one device
//! per listener, as `usbredirserver` does.
//!
//! QEMU's socket chardev dials the listener (`-chardev socket,host=H,port=P`); the connection
//! claims the device in the shared [`Registry`] (so a device is held by one client at a time,
//! whether it speaks USB/IP or usbredir), and this driver moves bytes and events between the
//! sans-IO [`UsbHost`] and the protocol-neutral [`DeviceSession`]. When the device goes away
//! or the server stops, the guest is sent device_disconnect (and its ack awaited, briefly)
//! before the connection closes.
//!
//! A listener is plain (admitted by address, as plain USB/IP) or TLS only: QEMU's socket
//! chardev with `tls-creds-x509` credentials, whose client certificate periwire's usbredir
//! CA signed ([`crate::secure::ca`]).

use std::fmt::Display;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use periwire_usb::TransferError;
use periwire_wire::usbip::BusId;
use periwire_wire::usbredir::host::{CloseReason, Event, HostError, HostLimits, TransferId};
use periwire_wire::usbredir::UsbHost;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::accept::accept_until;
use crate::front_door::{AccessRules, Client};
use crate::registry::{Peer, Registry};
use crate::secure::tls;
use crate::session::{Completed, DeviceSession};
use crate::usbredir_map;

/// The version string of periwire's hello.
pub const VERSION: &str = concat!("periwire usb-host ", env!("CARGO_PKG_VERSION"));

/// How long the guest has to acknowledge a device_disconnect before the connection closes
/// anyway.
const DISCONNECT_ACK_WAIT: Duration = Duration::from_secs(2);

/// Caps of one usbredir connection.
#[derive(Debug, Clone, Copy)]
pub struct UsbredirConfig {
    /// What the guest can make the host hold.
    pub limits: HostLimits,
    /// How long a guest may take to send its hello. The device is claimed from the moment a
    /// guest connects, so one that never speaks would otherwise hold it for good.
    pub hello_timeout: Duration,
}

impl Default for UsbredirConfig {
    /// The default caps, and 5 s for the hello (QEMU sends its own at once).
    fn default() -> Self {
        Self {
            limits: HostLimits::default(),
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a usbredir connection ended other than by an orderly close.
#[derive(Debug, thiserror::Error)]
pub enum UsbredirError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The guest broke the protocol, or the device's descriptors could not be read.
    #[error("protocol: {0}")]
    Protocol(#[from] HostError),
    /// The stream ended inside a packet.
    #[error("connection closed in the middle of a packet")]
    Truncated,
    /// The guest sent no hello in time.
    #[error("no hello within {0:?}")]
    NoHello(Duration),
}

/// Who a usbredir listener serves, and how. The default: plain, loopback only.
#[derive(Debug, Clone, Default)]
pub struct UsbredirAccess {
    /// The access rules: for a plain listener, who may connect at all (loopback and
    /// `plain_allow`); for both kinds, the devices' allow lists.
    pub rules: Arc<AccessRules>,
    /// `Some`: the listener speaks TLS only, and admits a client from any address once its
    /// certificate chains to periwire's usbredir CA
    /// ([`crate::secure::tls::ca_server_config`]); the certificate's name is the client's.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves device `busid` over usbredir on `listener` until `shutdown` resolves; then tells
/// each connected guest the device is gone and closes the connections. A plain listener
/// admits a guest as plain USB/IP is admitted (from loopback, or from a `plain_allow`
/// network if the device has no allow list); a TLS one, a guest whose certificate periwire's
/// CA signed (and that the device's allow list names, if it has one).
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    busid: BusId,
    access: UsbredirAccess,
    config: UsbredirConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    accept_until(listener, shutdown, |stream, peer, stopped| {
        let (registry, busid, access) = (registry.clone(), busid.clone(), access.clone());
        registry.count_connection();
        async move {
            // Small packets (interrupt reports, control replies) go out at once.
            let _ = stream.set_nodelay(true);
            let served = match &access.tls {
                None => {
                    if let Err(why) = admit_plain(&access.rules, &registry, &busid, peer.ip()) {
                        warn!(%peer, %busid, "usbredir guest refused: {why}");
                        return;
                    }
                    let who = Peer::at(peer);
                    serve_as(stream, who, &registry, &busid, config, stopped.wait()).await
                }
                Some(tls) => {
                    let accept = tokio_rustls::TlsAcceptor::from(Arc::clone(tls)).accept(stream);
                    let stream = match tokio::time::timeout(config.hello_timeout, accept).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            warn!(%peer, %busid, "usbredir TLS guest refused: {e}");
                            return;
                        }
                        Err(_) => {
                            warn!(%peer, %busid, "usbredir TLS guest refused: no handshake within {:?}", config.hello_timeout);
                            return;
                        }
                    };
                    let name = tls::certified_name(stream.get_ref().1).unwrap_or_default();
                    let client = Client::Trusted { name: name.clone() };
                    if let Err(why) = admit_listed(&access.rules, &registry, &busid, &client) {
                        warn!(%peer, %busid, client = %name, "usbredir TLS guest refused: {why}");
                        return;
                    }
                    let session = stream.get_ref().1;
                    let (version, suite) = (session.protocol_version(), session.negotiated_cipher_suite());
                    info!(%peer, %busid, client = %name, ?version, suite = ?suite.map(|s| s.suite()), "usbredir TLS guest");
                    let who = Peer {
                        address: peer.to_string(),
                        identity: Some(name),
                    };
                    serve_as(stream, who, &registry, &busid, config, stopped.wait()).await
                }
            };
            match served {
                Ok(()) => debug!(%peer, "usbredir connection closed"),
                Err(e) => warn!(%peer, reason = %e, "dropped usbredir client"),
            }
        }
    })
    .await;
    Ok(())
}

/// Whether a plain usbredir guest at `ip` may use device `busid`; if not, why.
fn admit_plain(
    rules: &AccessRules,
    registry: &Registry,
    busid: &BusId,
    ip: IpAddr,
) -> Result<(), &'static str> {
    let client = rules.plain_client(ip).ok_or(
        "a network not in plain_allow (plain usbredir, like plain USB/IP, only from loopback \
         and those)",
    )?;
    admit_listed(rules, registry, busid, &client)
        .map_err(|_| "the device's allow list names TLS clients only, and this listener is plain")
}

/// Whether the device's allow list, if it has one, lets `client` use `busid`.
fn admit_listed(
    rules: &AccessRules,
    registry: &Registry,
    busid: &BusId,
    client: &Client,
) -> Result<(), &'static str> {
    let exports = registry.exports();
    let listed = exports.iter().find(|e| &e.busid == busid);
    if listed.is_some_and(|export| !rules.may_import(client, export)) {
        return Err("the device's allow list does not name this client");
    }
    Ok(())
}

/// Serves device `busid` to one usb-guest on `stream` (TCP, TLS, a Unix socket). The device
/// is claimed for as long as the connection lasts; a device another client holds, or one
/// that is not there, is refused by closing the connection. `stop` ends the connection with
/// a device_disconnect.
pub async fn serve_stream<S>(
    stream: S,
    peer: impl Display,
    registry: &Registry,
    busid: &BusId,
    config: UsbredirConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), UsbredirError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_as(stream, Peer::at(peer), registry, busid, config, stop).await
}

/// [`serve_stream`] for a client known as `peer`.
async fn serve_as<S>(
    stream: S,
    peer: Peer,
    registry: &Registry,
    busid: &BusId,
    config: UsbredirConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), UsbredirError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let claim = match registry.claim_by(busid, peer.clone()) {
        Ok(claim) => claim,
        Err(e) => {
            info!(%peer, %busid, reason = %e, "usbredir connection refused");
            return Ok(());
        }
    };
    info!(%peer, %busid, name = %claim.export().name, "usbredir guest connected");
    let session = DeviceSession::<TransferId, ()>::new(claim);
    let speed = usbredir_map::speed_to_wire(session.device().info().speed);
    let host = UsbHost::new(VERSION, speed, config.limits);
    let mut connection = Connection {
        host,
        session,
        closed: None,
    };
    let result = connection.run(stream, config.hello_timeout, stop).await;
    if let Some(reason) = connection.closed {
        debug!(%peer, ?reason, "usbredir session over");
    }
    connection.session.close().await;
    info!(%peer, %busid, "usbredir guest released the device");
    result
}

struct Connection {
    host: UsbHost,
    session: DeviceSession<TransferId, ()>,
    closed: Option<CloseReason>,
}

impl Connection {
    async fn run<S>(
        &mut self,
        stream: S,
        hello_timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<(), UsbredirError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tokio::pin!(stop);
        let device = Arc::clone(self.session.device());
        let gone = device.gone();
        tokio::pin!(gone);
        // Unbound while held: to the guest, as if unplugged.
        let withdrawn = self.session.withdrawn();
        tokio::pin!(withdrawn);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut out = Vec::new();
        // Bytes buffered beyond one maximal packet are not read until the host takes some.
        let max_buffered = self.host.codec().limits().max_packet_length() as usize + 64 * 1024;
        let mut stopping = false;
        let mut gone_seen = false;
        let ack_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(ack_deadline);
        let mut deadline_armed = false;
        let hello_deadline = tokio::time::sleep(hello_timeout);
        tokio::pin!(hello_deadline);
        let mut greeted = false;
        loop {
            let used = self.host.handle_input(&buf)?;
            buf.advance(used);
            self.drive();
            if self.host.poll_transmit(&mut out) {
                wr.write_all(&out).await?;
                // A TLS stream may keep records back until flushed; TCP's flush is nothing.
                wr.flush().await?;
                out.clear();
            }
            if self.closed.is_some() {
                let _ = wr.shutdown().await;
                return Ok(());
            }
            if (stopping || gone_seen) && !deadline_armed {
                ack_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + DISCONNECT_ACK_WAIT);
                deadline_armed = true;
            }
            greeted |= self.host.is_connected();
            let reading = self.host.wants_input() && buf.len() < max_buffered;
            tokio::select! {
                biased;
                () = &mut hello_deadline, if !greeted => {
                    return Err(UsbredirError::NoHello(hello_timeout));
                }
                () = &mut stop, if !stopping => {
                    stopping = true;
                    self.host.disconnect();
                }
                () = &mut gone, if !gone_seen => {
                    info!("the device is gone; telling the guest");
                    gone_seen = true;
                    self.host.disconnect();
                }
                () = &mut withdrawn, if !gone_seen => {
                    info!("the device was withdrawn; telling the guest");
                    gone_seen = true;
                    self.host.disconnect();
                }
                () = &mut ack_deadline, if deadline_armed => {
                    debug!("no device_disconnect_ack in time; closing");
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                done = self.session.next_completion() => self.finish(done)?,
                n = rd.read_buf(&mut buf), if reading => {
                    let n = match n {
                        // A TLS peer that closes without close_notify (QEMU killed, or its
                        // chardev closed): between packets, that is the end.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                        n => n?,
                    };
                    if n == 0 {
                        return if buf.is_empty() { Ok(()) } else { Err(UsbredirError::Truncated) };
                    }
                }
            }
            // Whatever else finished meanwhile goes out in the same write.
            while let Some(done) = self.session.try_completion() {
                self.finish(done)?;
            }
        }
    }

    fn finish(&mut self, done: Completed<TransferId, ()>) -> Result<(), UsbredirError> {
        let disconnected = done.completion.status == Err(TransferError::Disconnected);
        self.host
            .handle_completion(done.id, usbredir_map::transfer_result(done.completion))?;
        if disconnected {
            info!("the device went away during a transfer; telling the guest");
            self.host.disconnect();
        }
        Ok(())
    }

    /// Carries out what the host asked for.
    fn drive(&mut self) {
        while let Some(event) = self.host.poll_event() {
            match event {
                Event::Submit { id, transfer } => {
                    self.session
                        .submit(id, usbredir_map::urb_from_transfer(transfer), ());
                }
                Event::Cancel { id } => {
                    self.session.cancel(id);
                }
                // The device model has no port reset; the guest re-enumerates the device
                // through the control pipe, which reaches the device as usual.
                Event::Reset => debug!("guest reset the device"),
                Event::Closed(reason) => self.closed = Some(reason),
            }
        }
    }
}
