//! H4 (Vol 4, Part A) over byte streams: TCP and Unix sockets.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use periwire_hci::controller::ToHost;
use periwire_hci::radio::RadioError;
use periwire_hci::wire::{H4Decoder, H4Error, H4Limits, PacketType};
use periwire_hci::{BdAddr, ControllerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

use crate::{AdapterHandle, Medium};

/// Why an H4 session ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Reading or writing the stream failed.
    #[error("H4 stream: {0}")]
    Io(#[from] io::Error),
    /// The host sent a packet the controller cannot take at all (a host that breaks the
    /// protocol loses its connection; everybody else goes on).
    #[error("host broke the HCI protocol: {0}")]
    Protocol(RadioError),
}

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes of host-bound packets gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Serves one H4 session on `stream` for the controller behind `adapter`, until the host
/// closes the stream. Garbage is skipped (and logged); a malformed command or an ACL packet
/// beyond the advertised buffers ends the session.
pub async fn serve_h4<S>(adapter: &AdapterHandle, stream: S) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut decoder = H4Decoder::new(limits_for(adapter));
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(WRITE_BATCH);
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                while let Some(item) = decoder.next_packet() {
                    match item {
                        Ok(p) => dispatch(adapter, p.packet_type, &p.bytes)?,
                        Err(H4Error::Resynchronised { skipped }) => {
                            tracing::warn!(adapter = %adapter.id(), skipped, "H4: skipped garbage");
                        }
                        Err(e) => tracing::warn!(adapter = %adapter.id(), %e, "H4"),
                    }
                }
            }
            p = adapter.recv() => {
                out.clear();
                frame(&mut out, p);
                while out.len() < WRITE_BATCH {
                    match adapter.try_recv() {
                        Some(p) => frame(&mut out, p),
                        None => break,
                    }
                }
                wr.write_all(&out).await?;
            }
        }
    }
}

/// The controller checks each ACL packet against its advertised buffer size and answers
/// with an error; the framer only needs a hard cap that bounds memory.
fn limits_for(_adapter: &AdapterHandle) -> H4Limits {
    H4Limits {
        max_acl_data: 4096,
        max_iso_data: 4096,
        ..H4Limits::controller()
    }
}

fn dispatch(adapter: &AdapterHandle, ty: PacketType, bytes: &[u8]) -> Result<(), ServeError> {
    match ty {
        PacketType::Command => adapter.send_command(bytes).map_err(ServeError::Protocol),
        PacketType::Acl => match adapter.send_acl(bytes) {
            Ok(()) => Ok(()),
            // Data racing a disconnection is dropped, as a controller drops it.
            Err(RadioError::Acl(periwire_hci::controller::AclError::UnknownHandle(h))) => {
                tracing::debug!(adapter = %adapter.id(), handle = h, "ACL for a closed link dropped");
                Ok(())
            }
            Err(e) => Err(ServeError::Protocol(e)),
        },
        PacketType::Sco | PacketType::Iso => {
            // No synchronous or isochronous links exist: nothing can be addressed.
            tracing::debug!(adapter = %adapter.id(), ?ty, "packet without a link dropped");
            Ok(())
        }
        PacketType::Event => Ok(()), // not accepted by the controller-side limits
    }
}

fn frame(out: &mut Vec<u8>, p: ToHost) {
    match p {
        ToHost::Event(b) => {
            out.push(PacketType::Event.to_u8());
            out.extend_from_slice(&b);
        }
        ToHost::Acl(b) => {
            out.push(PacketType::Acl.to_u8());
            out.extend_from_slice(&b);
        }
    }
}

/// How an [`H4Server`] configures the adapter of each client: client slot `n` (the lowest slot
/// free when it connects) gets `base_address + n` and the name `name` (`name n` for n > 0), so
/// a client that reconnects alone gets the same address again.
#[derive(Debug, Clone)]
pub struct AdapterPlan {
    /// Template for every adapter; its address is the base address.
    pub template: ControllerConfig,
    /// Most clients served at once; more are refused.
    pub max_clients: usize,
}

impl AdapterPlan {
    /// A plan giving dual-mode adapters `base_address + n`.
    pub fn new(base_address: BdAddr, name: &str) -> Self {
        let mut template = ControllerConfig::new(base_address);
        template.name = name.to_owned();
        Self {
            template,
            max_clients: 64,
        }
    }

    fn config(&self, slot: usize) -> ControllerConfig {
        let mut c = self.template.clone();
        c.address = BdAddr::from_u64(self.template.address.to_u64().wrapping_add(slot as u64));
        if slot > 0 {
            c.name = format!("{} {slot}", self.template.name);
        }
        c
    }
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Accepts H4 clients over TCP or a Unix socket; each client drives its own controller on
/// the medium for as long as it stays connected.
#[derive(Debug)]
pub struct H4Server {
    listener: Listener,
    medium: Medium,
    plan: Arc<AdapterPlan>,
    slots: Arc<Mutex<BTreeSet<usize>>>,
}

impl H4Server {
    /// Listens on a TCP address (use port 0 for any free port).
    pub async fn bind_tcp(addr: SocketAddr, medium: Medium, plan: AdapterPlan) -> io::Result<Self> {
        let l = TcpListener::bind(addr).await?;
        Ok(Self::new(Listener::Tcp(l), medium, plan))
    }

    /// Listens on a Unix socket path (removed again when the server is dropped).
    pub fn bind_unix(path: &Path, medium: Medium, plan: AdapterPlan) -> io::Result<Self> {
        let l = UnixListener::bind(path)?;
        Ok(Self::new(
            Listener::Unix(l, path.to_path_buf()),
            medium,
            plan,
        ))
    }

    fn new(listener: Listener, medium: Medium, plan: AdapterPlan) -> Self {
        Self {
            listener,
            medium,
            plan: Arc::new(plan),
            slots: Arc::default(),
        }
    }

    /// The TCP address listened on, if a TCP server.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts clients forever, serving each on its own task.
    pub async fn run(self) -> io::Result<()> {
        loop {
            match &self.listener {
                Listener::Tcp(l) => {
                    let (s, peer) = l.accept().await?;
                    // H4 has no batching of its own: small packets must go out at once.
                    s.set_nodelay(true)?;
                    tracing::info!(%peer, "H4 client connected");
                    self.spawn_session(s);
                }
                Listener::Unix(l, _) => {
                    let (s, _) = l.accept().await?;
                    tracing::info!("H4 client connected on the Unix socket");
                    self.spawn_session(s);
                }
            }
        }
    }

    fn spawn_session<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let slot = {
            let mut used = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let free = (0..self.plan.max_clients).find(|n| !used.contains(n));
            if let Some(n) = free {
                used.insert(n);
            }
            free
        };
        let Some(slot) = slot else {
            tracing::warn!(
                "H4 client refused: {} clients already",
                self.plan.max_clients
            );
            return;
        };
        let adapter = self.medium.attach(self.plan.config(slot));
        let slots = self.slots.clone();
        tokio::spawn(async move {
            match serve_h4(&adapter, stream).await {
                Ok(()) => tracing::info!(adapter = %adapter.id(), "H4 client disconnected"),
                Err(e) => tracing::warn!(adapter = %adapter.id(), %e, "H4 session ended"),
            }
            drop(adapter);
            slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&slot);
        });
    }
}

impl Drop for H4Server {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}
