//! The USB/IP server: accepts clients, answers the operation phase, and drives imported
//! devices through the URB phase.
//!
//! The URB phase of an imported device joins three parts: the sans-IO
//! [`ServerConnection`] (which URBs are in flight, the unlink rules, the RET_* bytes), the
//! protocol-neutral [`DeviceSession`] (the device's endpoint queues), and this driver, which
//! moves bytes and events between them. One reader task decodes the client's commands; the
//! session task feeds them in, takes completions from the device, and coalesces whatever
//! replies are ready into one write.
//!
//! Payloads are copied once between the stream and the device: the reader reads an OUT
//! payload straight into the buffer the device is handed, and an IN payload is written from
//! the buffer the device returned, next to the other replies of the same (vectored) write
//! (see [`crate::urb_stream`]).
//!
//! The URB phase runs over any byte stream ([`serve_stream`]): TCP from [`serve`], or TLS or
//! a Unix socket from whoever accepted it.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::framing::{read_message_in_chunks, FrameError};
use periwire_usb::{TransferError, Urb};
use periwire_wire::usbip::{
    encode_op_failure, CmdUnlink, Event, Limits, OpReply, OpRequest, OpStatus, ServerConnection,
    SubmitError, SubmitHeader, UrbCommandHeader,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::accept::accept_until;
pub use crate::accept::Stopped;
use crate::registry::{Export, ImportError, Peer, Registry};
use crate::session::{Completed, DeviceSession};
use crate::urb_stream::{CommandReader, Outbox};
use crate::usbip_map;

/// Caps that bound what one client can make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Wire-level caps (transfer length, ISO packets).
    pub limits: Limits,
    /// URBs one client may have in flight; further submissions wait (the server stops
    /// reading from that client) until some complete.
    pub max_urbs_in_flight: u32,
    /// Bytes of transfer buffers one client may have in flight, counted by
    /// `transfer_buffer_length`; must be at least `limits.max_transfer_length`.
    pub max_bytes_in_flight: u32,
    /// How long a client has, from the start of the stream, to send its whole operation
    /// request (and, over TLS, to finish the handshake before it); then it is dropped, so an
    /// idle or trickling peer holds nothing for long.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_urbs_in_flight: 256,
            max_bytes_in_flight: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a client's connection ended other than by an orderly close.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Reading a message failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The client submitted against the protocol's rules (a sequence number in flight).
    #[error("protocol violation: {0}")]
    Submit(#[from] SubmitError),
    /// The connection is being torn down.
    #[error("connection closing")]
    Closing,
    /// The client did not send its operation request in time.
    #[error("no complete operation request within {0:?}")]
    RequestTimeout(Duration),
}

/// Bytes read at a time in the operation phase: a request is 8 or 40 bytes, so an
/// unauthenticated peer makes the server hold no more than this per connection.
const OP_READ_CHUNK: usize = 64;

/// Whether the client on this connection may see and import an export; checked at device
/// list and import (allow lists of the config).
pub type Gate<'a> = &'a (dyn Fn(&Export) -> bool + Sync);

/// Serves USB/IP on `listener` until `shutdown` resolves; then closes every connection,
/// waits for the devices to be released and tells them to make their data durable.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handler = move |stream: TcpStream, peer: SocketAddr, registry: Registry, stop: Stopped| async move {
        let result = match stream.set_nodelay(true) {
            Ok(()) => serve_stream(stream, peer, &registry, config, stop.wait()).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => debug!(%peer, "connection closed"),
            Err(e) => warn!(%peer, reason = %e, "dropped client"),
        }
    };
    accept_loop(listener, registry, shutdown, handler).await
}

/// The USB/IP port's [`accept_until`]: each connection's `handler` is also given the
/// registry, which is shut down (every device told to make its data durable) once the last
/// connection has ended.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(TcpStream, SocketAddr, Registry, Stopped) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    accept_until(listener, shutdown, |stream, peer, stop| {
        registry.count_connection();
        handler(stream, peer, registry.clone(), stop)
    })
    .await;
    info!("shutting down");
    registry.shutdown();
    Ok(())
}

/// Serves one USB/IP client on `stream`, any connected byte stream (TCP, TLS, a Unix
/// socket), from its operation request to the end of the URB phase of the device it imports.
/// `peer` names the client in logs. An imported device is released when the client goes away
/// or `stop` resolves.
pub async fn serve_stream<S>(
    stream: S,
    peer: impl Display,
    registry: &Registry,
    config: ServerConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = Peer::at(peer);
    serve_stream_gated(stream, peer, registry, config, &|_| true, stop).await
}

/// [`serve_stream`] for a client that sees and imports only the exports `gate` lets
/// through; a refused import is answered ST_NA and logged with the client and the device.
/// `peer` is who the client is, as logs and the registry's [`ClaimInfo`](crate::ClaimInfo) show it.
pub async fn serve_stream_gated<S>(
    mut stream: S,
    peer: Peer,
    registry: &Registry,
    config: ServerConfig,
    gate: Gate<'_>,
    stop: impl Future<Output = ()>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(OP_READ_CHUNK);
    let read = read_message_in_chunks(&mut stream, &mut buf, OP_READ_CHUNK, OpRequest::decode);
    let request = match tokio::time::timeout(config.request_timeout, read).await {
        Err(_) => return Err(ConnectionError::RequestTimeout(config.request_timeout)),
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(FrameError::Protocol(e))) => {
            // A malformed request gets the failure reply of its kind where there is one.
            let mut out = Vec::new();
            if encode_op_failure(&buf, OpStatus::Error, &mut out) {
                info!(%peer, reason = %e, "malformed request answered with an error status");
                send_and_close(&mut stream, &out).await?;
            }
            return Err(FrameError::Protocol(e).into());
        }
        Ok(Err(e)) => return Err(e.into()),
    };
    let mut out = Vec::new();
    match request {
        OpRequest::Devlist => {
            debug!(%peer, "device list");
            let list = (registry.present().iter())
                .filter(|e| gate(e))
                .map(|e| e.listing())
                .collect();
            OpReply::Devlist(list).encode(&mut out);
            send_and_close(&mut stream, &out).await?;
            Ok(())
        }
        OpRequest::Import { busid } => {
            let allowed = registry
                .exports()
                .iter()
                .find(|e| e.busid == busid)
                .is_none_or(gate);
            if !allowed {
                warn!(%peer, %busid, "import refused: the device's allow list does not name this client");
                OpReply::Import(Err(OpStatus::NotAvailable)).encode(&mut out);
                send_and_close(&mut stream, &out).await?;
                return Ok(());
            }
            match registry.claim_by(&busid, peer.clone()) {
                Err(e) => {
                    info!(%peer, %busid, reason = %e, "import refused");
                    let status = match e {
                        ImportError::NoDevice(_) => OpStatus::NoDevice,
                        ImportError::Busy(_) => OpStatus::DeviceBusy,
                        ImportError::Device(..) => OpStatus::DeviceError,
                    };
                    OpReply::Import(Err(status)).encode(&mut out);
                    send_and_close(&mut stream, &out).await?;
                    Ok(())
                }
                Ok(claim) => {
                    info!(%peer, %busid, name = %claim.export().name, "imported");
                    let record = claim.export().record();
                    OpReply::Import(Ok(record.clone())).encode(&mut out);
                    stream.write_all(&out).await?;
                    stream.flush().await?;
                    let session = DeviceSession::new(claim);
                    let result =
                        run_urb_phase(stream, buf, session, record.devid(), config, stop).await;
                    info!(%peer, %busid, "released");
                    result
                }
            }
        }
    }
}

/// Writes an operation reply that ends the connection, and ends it in order (a TCP FIN, a
/// TLS close_notify), so the client reads the reply and then the end of the stream.
async fn send_and_close<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.shutdown().await
}

/// A command from the reader task to the session task.
enum Command {
    Submit {
        header: SubmitHeader,
        urb: Urb,
        permit: Permit,
    },
    Unlink(CmdUnlink),
}

/// Holds a URB's share of the in-flight caps until it is answered or cancelled.
struct Permit {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The URB phase of one imported device, with the stream split into the reader task's half
/// and the write half here.
async fn run_urb_phase<S>(
    stream: S,
    buf: BytesMut,
    session: DeviceSession<u32, Permit>,
    devid: u32,
    config: ServerConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(stop);
    let device = Arc::clone(session.device());
    let mut gone = device.gone();
    let withdrawn = session.withdrawn();
    tokio::pin!(withdrawn);
    let (rd, mut wr) = tokio::io::split(stream);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let mut reader = tokio::spawn(read_commands(rd, buf, config, cmd_tx));
    let mut phase = UrbPhase {
        connection: ServerConnection::new(devid),
        session,
        outbox: Outbox::new(),
        device_gone: false,
    };
    let result = loop {
        tokio::select! {
            biased;
            () = &mut stop => break Ok(()),
            () = &mut gone => {
                info!("the device is gone; closing the connection");
                break Ok(());
            }
            () = &mut withdrawn => {
                info!("the device was unbound; closing the connection");
                break Ok(());
            }
            done = phase.session.next_completion() => phase.finish(done),
            cmd = cmd_rx.recv() => match cmd {
                Some(cmd) => {
                    if let Err(e) = phase.command(cmd) {
                        break Err(e);
                    }
                }
                // The reader ended: end of stream or a protocol violation it reports below.
                None => break Ok(()),
            },
        }
        // Take whatever else is ready, completions first, so their replies share one write.
        let mut failed = None;
        while !phase.outbox.is_full() {
            if let Some(done) = phase.session.try_completion() {
                phase.finish(done);
            } else if let Ok(cmd) = cmd_rx.try_recv() {
                if let Err(e) = phase.command(cmd) {
                    failed = Some(e);
                    break;
                }
            } else {
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if !phase.outbox.is_empty() {
            if let Err(e) = phase.outbox.flush(&mut wr).await {
                break Err(e.into());
            }
        }
        if phase.device_gone {
            // As usbip-host does when its device is unplugged: closing the connection makes
            // the client's vhci port detach, rather than leaving a device that fails every
            // transfer.
            info!("the device is gone; closing the connection");
            break Ok(());
        }
    };
    phase.connection.close().for_each(drop);
    phase.session.close().await;
    reader.abort();
    let read_result = match (&mut reader).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    };
    // An orderly end (a TCP FIN, a TLS close_notify) before the stream is dropped: the client
    // reads the end of the stream rather than a reset. The client may be gone already, so a
    // failure says nothing new.
    let _ = wr.shutdown().await;
    result.and(read_result)
}

/// What the session task holds: the protocol's state, the device's, and the replies that
/// wait to be written.
struct UrbPhase {
    connection: ServerConnection,
    session: DeviceSession<u32, Permit>,
    outbox: Outbox,
    /// A URB failed because the device went away (a host device unplugged).
    device_gone: bool,
}

impl UrbPhase {
    fn command(&mut self, cmd: Command) -> Result<(), ConnectionError> {
        match cmd {
            Command::Submit {
                header,
                urb,
                permit,
            } => {
                self.connection.handle_submit(&header)?;
                self.session.submit(header.seqnum, urb, permit);
            }
            Command::Unlink(unlink) => {
                self.connection.handle_unlink(&unlink)?;
                let mut cancelled = false;
                while let Some(event) = self.connection.poll_event() {
                    match event {
                        Event::Cancel { seqnum } => cancelled |= self.session.cancel(seqnum),
                    }
                }
                debug!(
                    seqnum = unlink.seqnum,
                    unlink_seqnum = unlink.unlink_seqnum,
                    cancelled,
                    "unlink"
                );
                self.transmit();
            }
        }
        Ok(())
    }

    fn finish(&mut self, done: Completed<u32, Permit>) {
        let disconnected = done.completion.status == Err(TransferError::Disconnected);
        // A URB unlinked meanwhile is dropped here: the client was told ECONNRESET.
        if self
            .connection
            .handle_completion(done.id, usbip_map::urb_done(done.completion))
        {
            self.device_gone |= disconnected;
            self.transmit();
        }
    }

    fn transmit(&mut self) {
        while self.connection.poll_transmit(&mut self.outbox) {}
    }
}

async fn read_commands<S: AsyncRead>(
    rd: ReadHalf<S>,
    buf: BytesMut,
    config: ServerConfig,
    commands: mpsc::Sender<Command>,
) -> Result<(), ConnectionError> {
    let count = Arc::new(Semaphore::new(config.max_urbs_in_flight as usize));
    let bytes = Arc::new(Semaphore::new(config.max_bytes_in_flight as usize));
    let mut reader = CommandReader::new(rd, &buf, config.limits);
    drop(buf);
    while let Some(next) = reader.next().await? {
        let cmd = match next {
            UrbCommandHeader::Submit(header) => {
                // Take the URB's share of the caps before reading (and allocating) its
                // payload. Waiting here stops reading from the client: backpressure, not
                // disconnection.
                let length = header
                    .transfer_buffer_length
                    .min(config.max_bytes_in_flight);
                let permit = Permit {
                    _count: Arc::clone(&count)
                        .acquire_owned()
                        .await
                        .map_err(|_| ConnectionError::Closing)?,
                    _bytes: Arc::clone(&bytes)
                        .acquire_many_owned(length)
                        .await
                        .map_err(|_| ConnectionError::Closing)?,
                };
                let (data, iso_packets) = reader.read_payload(&header).await?;
                Command::Submit {
                    header,
                    urb: usbip_map::urb_from_submit(&header, data, &iso_packets),
                    permit,
                }
            }
            UrbCommandHeader::Unlink(u) => Command::Unlink(u),
        };
        if commands.send(cmd).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
