//! The USB/IP server: accepts clients, answers the operation phase, and drives imported
//! devices through the URB phase.
//!
//! Per imported device there is one session task that owns the socket's write half and the
//! [`UrbTracker`], one reader task that decodes the client's commands, and one task per active
//! endpoint that feeds the device its URBs in order. Completions of all endpoints meet in the
//! session task, which coalesces whatever is ready into one write.
//!
//! Payloads are copied once between the socket and the device: the reader reads an OUT
//! payload straight into the buffer the device is handed, and an IN payload is written from
//! the buffer the device returned, next to the other replies of the same (vectored) write
//! (see [`crate::urb_stream`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use crate::framing::{read_message, FrameError};
use periwire_usb::{TransferError, Urb, UrbResult, UsbDevice};
use periwire_wire::usbip::{
    encode_iso_packets, Direction, Limits, OpReply, OpRequest, OpStatus, RetSubmit, RetUnlink,
    UrbCommandHeader,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::registry::{Claim, ImportError, Registry};
use crate::urb_stream::{CommandReader, Outbox};
use crate::urb_tracker::{InFlight, Unlinked, UrbTracker};
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_urbs_in_flight: 256,
            max_bytes_in_flight: 64 * 1024 * 1024,
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
    /// The client reused a sequence number still in flight.
    #[error("protocol violation: {0}")]
    Tracking(#[from] crate::urb_tracker::TrackError),
    /// The connection is being torn down.
    #[error("connection closing")]
    Closing,
}

/// Serves USB/IP on `listener` until `shutdown` resolves; then closes every connection,
/// waits for the devices to be released and tells them to make their data durable.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Transient accept errors (EMFILE, ECONNABORTED) must not stop the server.
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let registry = registry.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    match handle_connection(stream, peer, registry, config, stop).await {
                        Ok(()) => debug!(%peer, "connection closed"),
                        Err(e) => warn!(%peer, reason = %e, "dropped client"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    registry.shutdown();
    Ok(())
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    config: ServerConfig,
    stop: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let Some(request) = read_message(&mut stream, &mut buf, OpRequest::decode).await? else {
        return Ok(());
    };
    let mut out = Vec::new();
    match request {
        OpRequest::Devlist => {
            debug!(%peer, "device list");
            let list = registry.present().iter().map(|e| e.listing()).collect();
            OpReply::Devlist(list).encode(&mut out);
            stream.write_all(&out).await?;
            Ok(())
        }
        OpRequest::Import { busid } => match registry.claim(&busid) {
            Err(e) => {
                info!(%peer, %busid, reason = %e, "import refused");
                let status = match e {
                    ImportError::NoDevice(_) => OpStatus::NoDevice,
                    ImportError::Busy(_) => OpStatus::DeviceBusy,
                    ImportError::Device(..) => OpStatus::DeviceError,
                };
                OpReply::Import(Err(status)).encode(&mut out);
                stream.write_all(&out).await?;
                Ok(())
            }
            Ok(claim) => {
                info!(%peer, %busid, name = %claim.export().name, "imported");
                OpReply::Import(Ok(claim.export().record())).encode(&mut out);
                stream.write_all(&out).await?;
                let result = run_urb_phase(stream, buf, &claim, config, stop).await;
                info!(%peer, %busid, "released");
                drop(claim);
                result
            }
        },
    }
}

/// A command from the reader task to the session task.
enum Command {
    Submit {
        seqnum: u32,
        urb: Urb,
        permit: Permit,
    },
    Unlink {
        seqnum: u32,
        unlink_seqnum: u32,
    },
}

/// Holds a URB's share of the in-flight caps until it is answered or cancelled.
struct Permit {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Work for an endpoint task.
struct EndpointWork {
    seqnum: u32,
    urb: Urb,
    permit: Permit,
    /// Fires (or is dropped) when the URB is unlinked or the connection ends.
    cancel: oneshot::Receiver<()>,
}

/// A finished URB, from an endpoint task to the session task.
struct Done {
    seqnum: u32,
    result: UrbResult,
    _permit: Permit,
}

/// Endpoint 0 carries control transfers in both directions, in one order; other endpoints
/// are queued per direction.
fn queue_key(urb: &Urb) -> u8 {
    if urb.endpoint == 0 {
        0
    } else {
        urb.endpoint_address()
    }
}

async fn run_urb_phase(
    stream: TcpStream,
    buf: BytesMut,
    claim: &Claim,
    config: ServerConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let device = claim.export().device.clone();
    let watched = Arc::clone(&device);
    let mut gone = watched.gone();
    let (rd, mut wr) = stream.into_split();
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let mut reader = tokio::spawn(read_commands(rd, buf, config, cmd_tx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        device,
        tracker: UrbTracker::new(),
        endpoints: HashMap::new(),
        tasks: JoinSet::new(),
        done_tx,
        outbox: Outbox::new(),
        device_gone: false,
    };
    let result = loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            () = &mut gone => {
                info!("the device is gone; closing the connection");
                break Ok(());
            }
            Some(done) = done_rx.recv() => session.finish(done),
            cmd = cmd_rx.recv() => match cmd {
                Some(cmd) => {
                    if let Err(e) = session.command(cmd) {
                        break Err(e);
                    }
                }
                // The reader ended: end of stream or a protocol violation it reports below.
                None => break Ok(()),
            },
        }
        // Take whatever else is ready, completions first, so their replies share one write.
        let mut failed = None;
        while !session.outbox.is_full() {
            if let Ok(done) = done_rx.try_recv() {
                session.finish(done);
            } else if let Ok(cmd) = cmd_rx.try_recv() {
                if let Err(e) = session.command(cmd) {
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
        if !session.outbox.is_empty() {
            if let Err(e) = session.outbox.flush(&mut wr).await {
                break Err(e.into());
            }
        }
        if session.device_gone {
            // As usbip-host does when its device is unplugged: closing the connection makes
            // the client's vhci port detach, rather than leaving a device that fails every
            // transfer.
            info!("the device is gone; closing the connection");
            break Ok(());
        }
    };
    session.close().await;
    reader.abort();
    let read_result = match (&mut reader).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    };
    result.and(read_result)
}

struct Session {
    device: Arc<dyn UsbDevice>,
    tracker: UrbTracker<oneshot::Sender<()>>,
    endpoints: HashMap<u8, mpsc::UnboundedSender<EndpointWork>>,
    tasks: JoinSet<()>,
    done_tx: mpsc::UnboundedSender<Done>,
    outbox: Outbox,
    /// A URB failed because the device went away (a host device unplugged).
    device_gone: bool,
}

impl Session {
    fn command(&mut self, cmd: Command) -> Result<(), ConnectionError> {
        match cmd {
            Command::Submit {
                seqnum,
                urb,
                permit,
            } => {
                let (cancel_tx, cancel) = oneshot::channel();
                self.tracker.submitted(
                    seqnum,
                    InFlight {
                        direction: usbip_map::direction_to_wire(urb.direction),
                        requested: urb.length,
                        cancel: cancel_tx,
                    },
                )?;
                let key = queue_key(&urb);
                let queue = self.endpoints.entry(key).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.tasks
                        .spawn(run_endpoint(self.device.clone(), rx, self.done_tx.clone()));
                    tx
                });
                // The endpoint task lives as long as the session, so this cannot fail; if it
                // did, dropping the work cancels the URB like an unlink would.
                let _ = queue.send(EndpointWork {
                    seqnum,
                    urb,
                    permit,
                    cancel,
                });
            }
            Command::Unlink {
                seqnum,
                unlink_seqnum,
            } => {
                let outcome = self.tracker.unlink(unlink_seqnum);
                let status = outcome.status();
                if let Unlinked::Cancelled(urb) = outcome {
                    let _ = urb.cancel.send(());
                }
                debug!(seqnum, unlink_seqnum, status, "unlink");
                RetUnlink { seqnum, status }.encode(self.outbox.bytes());
            }
        }
        Ok(())
    }

    fn finish(&mut self, done: Done) {
        let Some(urb) = self.tracker.completed(done.seqnum) else {
            // Unlinked meanwhile: the client was told ECONNRESET and expects nothing more.
            return;
        };
        let mut header = RetSubmit {
            seqnum: done.seqnum,
            status: 0,
            actual_length: 0,
            start_frame: 0,
            number_of_packets: 0,
            error_count: 0,
            data: &[],
            iso_packets: Vec::new(),
        };
        let c = match done.result {
            Ok(c) => c,
            Err(e) => {
                self.device_gone |= e == TransferError::Disconnected;
                header.status = usbip_map::errno(e);
                header.encode_header(self.outbox.bytes());
                return;
            }
        };
        header.start_frame = c.start_frame;
        header.number_of_packets = u32::try_from(c.iso_packets.len()).unwrap_or(u32::MAX);
        header.error_count = c.error_count;
        match urb.direction {
            Direction::In => {
                // A device must not return more than asked: cut, as a host controller would.
                let limit = (urb.requested as usize).min(c.data.len());
                header.actual_length = if c.iso_packets.is_empty() {
                    limit as u32
                } else {
                    c.actual_length
                };
                header.encode_header(self.outbox.bytes());
                self.outbox.payload(c.data, limit);
            }
            Direction::Out => {
                header.actual_length = c.actual_length.min(urb.requested);
                header.encode_header(self.outbox.bytes());
            }
        }
        let iso: Vec<_> = c.iso_packets.iter().map(usbip_map::iso_to_wire).collect();
        encode_iso_packets(&iso, self.outbox.bytes());
    }

    /// Cancels everything in flight and waits until the device has dropped every URB, so
    /// that the release that follows sees a quiet device.
    async fn close(mut self) {
        for urb in self.tracker.drain() {
            drop(urb.cancel);
        }
        self.endpoints.clear();
        self.tasks.shutdown().await;
    }
}

async fn run_endpoint(
    device: Arc<dyn UsbDevice>,
    mut queue: mpsc::UnboundedReceiver<EndpointWork>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(mut work) = queue.recv().await {
        let result = tokio::select! {
            biased;
            _ = &mut work.cancel => continue,
            r = device.submit(work.urb) => r,
        };
        if done
            .send(Done {
                seqnum: work.seqnum,
                result,
                _permit: work.permit,
            })
            .is_err()
        {
            return;
        }
    }
}

async fn read_commands(
    rd: OwnedReadHalf,
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
                    seqnum: header.seqnum,
                    urb: usbip_map::urb_from_submit(&header, data, &iso_packets),
                    permit,
                }
            }
            UrbCommandHeader::Unlink(u) => Command::Unlink {
                seqnum: u.seqnum,
                unlink_seqnum: u.unlink_seqnum,
            },
        };
        if commands.send(cmd).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
