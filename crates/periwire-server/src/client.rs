//! A USB/IP client: the device list, the import handshake, and a pipelining URB client.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use periwire_wire::usbip::{
    BusId, CmdSubmit, CmdUnlink, DeviceRecord, Direction, ExportedDevice, Limits, OpReply,
    OpRequest, OpStatus, PendingUrb, SubmitHeader, UrbReply, USBIP_PORT,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::{read_message, FrameError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the server failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Reading the reply failed.
    #[error("reading the reply: {0}")]
    Frame(#[from] FrameError),
    /// The server closed the connection before replying.
    #[error("server closed the connection before replying")]
    Closed,
    /// The server answered with another message than expected.
    #[error("unexpected reply from server")]
    UnexpectedReply,
    /// The server refused the import.
    #[error("import refused: {}", refusal(*.0))]
    Refused(OpStatus),
    /// The server ended the TLS session with access_denied: it does not trust this client's
    /// key.
    #[error(
        "the server does not trust this client: on the server, `periwire trust add NAME \
         FINGERPRINT` with what `periwire id` prints here"
    )]
    NotTrusted,
    /// The server did not answer in time.
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a refusal status means, as a client tells its user.
fn refusal(status: OpStatus) -> String {
    match status {
        // periwire's server answers ST_NA when a device's allow list leaves the client out.
        OpStatus::NotAvailable => {
            "device not available to this client (the server's allow list for it does not \
             name this client)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

/// Reads a TLS access_denied alert out of an I/O error as [`ClientError::NotTrusted`].
fn from_io(e: std::io::Error) -> ClientError {
    let denied = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            *r == rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)
        });
    if denied {
        ClientError::NotTrusted
    } else {
        ClientError::Io(e)
    }
}

/// A USB/IP server as the user names it: `HOST` or `HOST:PORT` (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Host name or address, as given (brackets kept for IPv6).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Remote {
    /// Parses `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; the port defaults to 3240.
    pub fn parse(text: &str) -> Result<Remote, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            let host = match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            };
            return Ok(Remote {
                host,
                port: addr.port(),
            });
        }
        if let Ok(std::net::IpAddr::V6(ip)) = text.parse() {
            return Ok(Remote {
                host: format!("[{ip}]"),
                port: USBIP_PORT,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) if !text.ends_with(']') && !host.contains(':') => (
                host,
                port.parse()
                    .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?,
            ),
            _ => (text, USBIP_PORT),
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        Ok(Remote {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

async fn request<S>(stream: &mut S, req: OpRequest) -> Result<OpReply, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    req.encode(&mut out);
    stream.write_all(&out).await.map_err(from_io)?;
    stream.flush().await.map_err(from_io)?;
    let mut buf = BytesMut::with_capacity(4096);
    let limits = Limits::default();
    match read_message(stream, &mut buf, |b| OpReply::decode(b, &limits)).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(ClientError::Closed),
        Err(FrameError::Io(e)) => Err(from_io(e)),
        Err(e) => Err(e.into()),
    }
}

/// Connects to `addr` with TCP_NODELAY set, as USB/IP clients do.
pub async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Asks the server at `addr` for its exported devices.
pub async fn list_devices(
    addr: &str,
    timeout: Duration,
) -> Result<Vec<ExportedDevice>, ClientError> {
    let mut stream = connect(addr, timeout).await?;
    list_devices_on(&mut stream, timeout).await
}

/// Asks for the exported devices on `stream`, a connection in the operation phase (TCP,
/// TLS, ...).
pub async fn list_devices_on<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Vec<ExportedDevice>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reply = tokio::time::timeout(timeout, request(stream, OpRequest::Devlist))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    match reply {
        OpReply::Devlist(d) => Ok(d),
        OpReply::Import(_) => Err(ClientError::UnexpectedReply),
    }
}

/// Imports `busid` from the server at `addr`; on success the stream is in the URB phase.
pub async fn import(
    addr: &str,
    busid: &BusId,
    timeout: Duration,
) -> Result<(TcpStream, DeviceRecord), ClientError> {
    let mut stream = connect(addr, timeout).await?;
    let device = import_on(&mut stream, busid, timeout).await?;
    Ok((stream, device))
}

/// Imports `busid` on `stream`, a connection in the operation phase (TCP, TLS, ...); on
/// success it is in the URB phase.
pub async fn import_on<S>(
    stream: &mut S,
    busid: &BusId,
    timeout: Duration,
) -> Result<DeviceRecord, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = request(
        stream,
        OpRequest::Import {
            busid: busid.clone(),
        },
    );
    let reply = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    match reply {
        OpReply::Import(Ok(d)) => Ok(d),
        OpReply::Import(Err(status)) => Err(ClientError::Refused(status)),
        OpReply::Devlist(_) => Err(ClientError::UnexpectedReply),
    }
}

/// The reply to one submitted URB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReply {
    /// 0 or a negative Linux errno.
    pub status: i32,
    /// Bytes transferred.
    pub actual_length: u32,
    /// IN payload.
    pub data: Vec<u8>,
}

/// What the client asks of one URB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrbRequest {
    /// Endpoint number.
    pub ep: u8,
    /// Direction.
    pub direction: Direction,
    /// SETUP packet (control transfers).
    pub setup: [u8; 8],
    /// OUT payload.
    pub data: Vec<u8>,
    /// IN length asked for (ignored for OUT, where it is `data.len()`).
    pub length: u32,
}

type PendingMap = HashMap<u32, (PendingUrb, oneshot::Sender<SubmitReply>)>;

/// A pipelining USB/IP client for one imported device: submit many URBs, await each reply,
/// unlink. Used by tests and benchmarks; the kernel's `vhci-hcd` is the production client.
pub struct UrbClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<PendingMap>>,
    unlinks: Arc<Mutex<HashMap<u32, oneshot::Sender<i32>>>>,
    next_seqnum: AtomicU32,
    devid: u32,
    reader: tokio::task::JoinHandle<Result<(), FrameError>>,
}

impl UrbClient {
    /// Takes over a stream in the URB phase (from [`import`]).
    pub fn new(stream: TcpStream, device: &DeviceRecord) -> Self {
        let (rd, wr) = stream.into_split();
        let pending: Arc<Mutex<PendingMap>> = Arc::default();
        let unlinks: Arc<Mutex<HashMap<u32, oneshot::Sender<i32>>>> = Arc::default();
        let reader = tokio::spawn(Self::read_replies(rd, pending.clone(), unlinks.clone()));
        Self {
            writer: tokio::sync::Mutex::new(wr),
            pending,
            unlinks,
            next_seqnum: AtomicU32::new(1),
            devid: device.devid(),
            reader,
        }
    }

    async fn read_replies(
        mut rd: OwnedReadHalf,
        pending: Arc<Mutex<PendingMap>>,
        unlinks: Arc<Mutex<HashMap<u32, oneshot::Sender<i32>>>>,
    ) -> Result<(), FrameError> {
        let limits = Limits::default();
        let mut buf = BytesMut::with_capacity(256 * 1024);
        loop {
            let reply = read_message(&mut rd, &mut buf, |b| {
                let lookup = |seq| lock(&pending).get(&seq).map(|(p, _)| *p);
                UrbReply::decode(b, &limits, lookup).map(|d| {
                    d.map(|(r, n)| {
                        let owned = match r {
                            UrbReply::Submit(s) => Ok((
                                s.seqnum,
                                SubmitReply {
                                    status: s.status,
                                    actual_length: s.actual_length,
                                    data: s.data.to_vec(),
                                },
                            )),
                            UrbReply::Unlink(u) => Err((u.seqnum, u.status)),
                        };
                        (owned, n)
                    })
                })
            })
            .await?;
            match reply {
                None => return Ok(()),
                Some(Ok((seq, r))) => {
                    if let Some((_, tx)) = lock(&pending).remove(&seq) {
                        let _ = tx.send(r);
                    }
                }
                Some(Err((seq, status))) => {
                    if let Some(tx) = lock(&unlinks).remove(&seq) {
                        let _ = tx.send(status);
                    }
                }
            }
        }
    }

    /// Sends a CMD_SUBMIT; returns its sequence number and the receiver of its reply (which
    /// never resolves if the URB is unlinked before it completes).
    pub async fn submit(
        &self,
        req: &UrbRequest,
    ) -> std::io::Result<(u32, oneshot::Receiver<SubmitReply>)> {
        let seqnum = self.next_seqnum.fetch_add(1, Ordering::Relaxed);
        let length = match req.direction {
            Direction::Out => u32::try_from(req.data.len()).unwrap_or(u32::MAX),
            Direction::In => req.length,
        };
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            seqnum,
            (
                PendingUrb {
                    direction: req.direction,
                    transfer_buffer_length: length,
                },
                tx,
            ),
        );
        let mut out = Vec::with_capacity(48 + req.data.len());
        CmdSubmit {
            header: SubmitHeader {
                seqnum,
                devid: self.devid,
                direction: req.direction,
                ep: req.ep,
                transfer_flags: 0,
                transfer_buffer_length: length,
                start_frame: 0,
                non_iso_marker: false,
                interval: 0,
                setup: req.setup,
                number_of_packets: 0,
            },
            data: &req.data,
            iso_packets: Vec::new(),
        }
        .encode(&mut out);
        self.writer.lock().await.write_all(&out).await?;
        Ok((seqnum, rx))
    }

    /// Submits and awaits the reply.
    pub async fn transfer(&self, req: &UrbRequest) -> Result<SubmitReply, ClientError> {
        let (_, rx) = self.submit(req).await?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Sends a CMD_UNLINK for `seqnum` and awaits the RET_UNLINK status.
    pub async fn unlink(&self, seqnum: u32) -> Result<i32, ClientError> {
        let own = self.next_seqnum.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.unlinks).insert(own, tx);
        let mut out = Vec::with_capacity(48);
        CmdUnlink {
            seqnum: own,
            devid: self.devid,
            unlink_seqnum: seqnum,
        }
        .encode(&mut out);
        self.writer.lock().await.write_all(&out).await?;
        let status = rx.await.map_err(|_| ClientError::Closed)?;
        if status != 0 {
            // The URB was cancelled: its reply will never come.
            lock(&self.pending).remove(&seqnum);
        }
        Ok(status)
    }

    /// Whether the server has closed the connection (or broken the protocol).
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    /// Waits until the server closes the connection; returns why.
    pub async fn closed(self) -> Result<(), FrameError> {
        self.reader.await.unwrap_or(Ok(()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_parse_as_users_write_them() {
        let r = |s: &str| Remote::parse(s).map(|r| r.to_string());
        assert_eq!(r("10.0.2.100").unwrap(), "10.0.2.100:3240");
        assert_eq!(r("10.0.2.100:4000").unwrap(), "10.0.2.100:4000");
        assert_eq!(r("server.lan").unwrap(), "server.lan:3240");
        assert_eq!(r("server.lan:99").unwrap(), "server.lan:99");
        assert_eq!(r("[::1]:3241").unwrap(), "[::1]:3241");
        assert_eq!(r("[::1]").unwrap(), "[::1]:3240");
        assert_eq!(r("::1").unwrap(), "[::1]:3240");
        assert!(r("server:port").unwrap_err().contains("not a port number"));
        assert!(r(":3240").unwrap_err().contains("no host"));
    }
}
