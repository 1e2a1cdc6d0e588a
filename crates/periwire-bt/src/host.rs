//! The host link's runtime: each emulated controller whose medium is the host's own Bluetooth
//! stack, with every L2CAP channel it opens carried by one host `SOCK_SEQPACKET` socket.
//!
//! [`periwire_hci::HostLinkedAdapter`] holds the protocol; this module executes the
//! [`HostAction`]s it asks for with real sockets bound to the chosen host controller, and feeds
//! their outcomes back. One driver task per adapter owns every socket task of that adapter, so
//! dropping the adapter (a VM shut down, an H4 client gone) closes exactly its own sockets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bluer::l2cap::{SeqPacket, Socket, SocketAddr};
use periwire_hci::controller::{LinkInfo, ToHost};
use periwire_hci::host_link::{
    ChannelInfo, ConnectFailure, HostAction, HostLinkedAdapter, SecurityLevel, SocketId,
};
use periwire_hci::radio::RadioError;
use periwire_hci::wire::ErrorCode;
use periwire_hci::{AdapterId, BdAddr, ControllerConfig};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::bluez::{self, Bluetoothd};
use crate::sys;

/// The PSM every BR/EDR device answers or refuses at once: SDP (Assigned Numbers, 5.2). A
/// connection to it is how the host checks a remote is reachable and raises a link's
/// security, without opening anything the remote's user would notice.
const PSM_SDP: u16 = 0x0001;
/// How long a page or a channel connection may take before the remote counts as unreachable
/// (the kernel's own L2CAP connect timeout is 40 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long pairing through the host may take (a user may be confirming a passkey).
const SECURE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a remote name request may take.
const NAME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a host inquiry runs for the guest (the guest's own inquiry length is not known to
/// the link; this is what `hcitool scan` uses).
const INQUIRY_LENGTH: Duration = Duration::from_millis(10_240);
/// How long a host LE scan runs for the guest's scan (a guest scanning longer gets a new one
/// when it restarts its scan).
const LE_SCAN_LENGTH: Duration = Duration::from_secs(10);
/// Payload bytes one channel reads from its host socket ahead of the guest: enough to take
/// a remote's burst at radio speed (a BR/EDR link moves at most about 300 kB/s) while the
/// guest catches up.
const READ_AHEAD_BYTES: usize = 256 * 1024;
/// The receive buffer asked of each channel's host socket, in the kernel's accounting (an SDU
/// of a few hundred bytes costs a couple of kilobytes of it).
const HOST_SOCKET_BUFFER: usize = 1 << 20;
/// ACL buffers a host-linked controller reports to its guest (Read Buffer Size), each of
/// `acl_data_packet_length` bytes.
const HOST_LINK_ACL_BUFFERS: u16 = 32;
/// Adapter ids of host-linked adapters: far from the simulated radio's counter, which starts
/// at 1, so the two never name the same adapter in logs.
static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 40);

/// The host controller a host link rides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAdapter {
    /// Its index, the N of `hciN`.
    pub index: u16,
    /// Its BD_ADDR, which every socket of the link binds to.
    pub address: BdAddr,
}

impl HostAdapter {
    /// The host controller named `spec`: `hciN`, or its BD_ADDR.
    pub fn resolve(spec: &str) -> io::Result<Self> {
        let found = if let Some(n) = spec.strip_prefix("hci") {
            let index: u16 = n.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{spec:?} is not hciN"))
            })?;
            sys::controller(index)?
        } else if let Some(address) = BdAddr::parse_str(spec) {
            sys::controllers()?
                .into_iter()
                .find(|c| c.address == address)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("host adapter {spec:?} is neither hciN nor a BD_ADDR"),
            ));
        };
        let c = found.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the host has no Bluetooth controller {spec}"),
            )
        })?;
        if !c.up {
            tracing::warn!(
                adapter = spec,
                "host Bluetooth controller is down: connections through it fail until it is powered"
            );
        }
        Ok(Self {
            index: c.index,
            address: c.address,
        })
    }
}

/// What `periwire adapters` shows of one host-linked adapter.
#[derive(Debug, Clone)]
pub struct HostAdapterStatus {
    /// The emulated controller's id.
    pub id: AdapterId,
    /// Its BD_ADDR.
    pub address: BdAddr,
    /// Its local name.
    pub name: String,
    /// The host controller it rides on.
    pub host: HostAdapter,
    /// Its links as the guest sees them.
    pub links: Vec<LinkInfo>,
    /// Its channels, each one host socket.
    pub channels: Vec<ChannelInfo>,
}

/// The host's Bluetooth stack as a medium: attaches host-linked adapters on one host
/// controller. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostMedium {
    inner: Arc<MediumInner>,
    /// PSMs on which the adapters attached through this handle accept remotes' connections.
    accept_psms: Arc<[u16]>,
}

#[derive(Debug)]
struct MediumInner {
    host: HostAdapter,
    keys_dir: PathBuf,
    adapters: Mutex<Vec<Weak<Shared>>>,
}

impl HostMedium {
    /// A medium on host controller `host`; proxy link keys are kept in `keys_dir`, one file
    /// per emulated controller.
    pub fn new(host: HostAdapter, keys_dir: PathBuf) -> Self {
        Self {
            inner: Arc::new(MediumInner {
                host,
                keys_dir,
                adapters: Mutex::new(Vec::new()),
            }),
            accept_psms: Arc::new([]),
        }
    }

    /// The same medium, for adapters that accept remotes' connections to `psms`: the host
    /// listens on each (bound to the host controller's address) for as long as such an adapter
    /// is attached, and offers every connection to that adapter's guest. A PSM can have one
    /// listener per host controller, so give each PSM to one adapter.
    pub fn accepting(&self, psms: &[u16]) -> Self {
        Self {
            inner: self.inner.clone(),
            accept_psms: psms.into(),
        }
    }

    /// The host controller.
    pub fn host(&self) -> HostAdapter {
        self.inner.host
    }

    /// Attaches a controller with `config` to the host link and starts its driver task (so
    /// must be called inside a tokio runtime). Its proxy keys are read from the key store; a
    /// store that cannot be read is reported and the guest pairs again.
    pub fn attach(&self, mut config: ControllerConfig) -> HostAdapterHandle {
        let keys = KeyStore::new(&self.inner.keys_dir, config.address);
        let stored = keys.load().unwrap_or_else(|e| {
            tracing::warn!(path = %keys.path.display(), error = %e, "proxy link keys not read: guests pair again");
            BTreeMap::new()
        });
        config.entropy = entropy();
        // A guest's ACL buffers cost only memory here, and every one of them hides a round
        // trip through a host socket: give the guest more than a radio controller would.
        config.total_num_acl_data_packets =
            config.total_num_acl_data_packets.max(HOST_LINK_ACL_BUFFERS);
        let id = AdapterId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(Shared {
            adapter: Mutex::new(HostLinkedAdapter::new(id, config, stored.clone())),
            armed: Mutex::new(None),
            to_host: Notify::new(),
            work: Notify::new(),
        });
        {
            let mut list = lock(&self.inner.adapters);
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&shared));
        }
        let driver = Driver {
            shared: shared.clone(),
            host: self.inner.host,
            keys,
            stored,
            accept_psms: self.accept_psms.to_vec(),
        };
        let task = tokio::spawn(driver.run());
        tracing::info!(adapter = %id, host = %self.inner.host.address, "host-linked Bluetooth adapter attached");
        HostAdapterHandle { id, shared, task }
    }

    /// Every live adapter of this medium.
    pub fn adapters(&self) -> Vec<HostAdapterStatus> {
        let list: Vec<_> = lock(&self.inner.adapters)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        list.iter()
            .map(|s| {
                let a = lock(&s.adapter);
                let c = a.controller();
                HostAdapterStatus {
                    id: c.id(),
                    address: c.bd_addr(),
                    name: c.local_name(),
                    host: self.inner.host,
                    links: c.links(),
                    channels: a.link().channels(),
                }
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock would be a bug in the state machine; keep serving with
    // the state as it is rather than poisoning the adapter.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 64 bits from the kernel's random pool, for the proxy keys the controller draws.
fn entropy() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(e) => {
            // Without the pool, the time still differs per adapter and run; the keys only
            // have to be unguessable to a guest, which cannot read this clock.
            tracing::warn!(error = %e, "/dev/urandom unreadable: proxy keys drawn from the clock");
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }
    }
}

#[derive(Debug)]
struct Shared {
    adapter: Mutex<HostLinkedAdapter>,
    /// The deadline the driver sleeps until (locked after `adapter`, never alone by it).
    armed: Mutex<Option<Instant>>,
    /// Wakes the transport: packets wait for the guest's host.
    to_host: Notify,
    /// Wakes the driver: actions wait, or a deadline earlier than the armed one appeared.
    work: Notify,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut HostLinkedAdapter) -> T) -> T {
        let mut a = lock(&self.adapter);
        let out = f(&mut a);
        let ready = a.has_to_host();
        // The driver is woken only when it has something to do: most packets change neither,
        // and a driver woken for each of them costs a task switch and a timer re-arm per
        // packet.
        let wake = a.has_action()
            || match (a.poll_timeout(), *lock(&self.armed)) {
                (Some(due), Some(armed)) => due < armed,
                (Some(_), None) => true,
                (None, _) => false,
            };
        drop(a);
        if ready {
            self.to_host.notify_one();
        }
        if wake {
            self.work.notify_one();
        }
        out
    }
}

/// One host-linked controller. Dropping it stops its driver, which closes its sockets; the
/// remotes see its channels and links go.
#[derive(Debug)]
pub struct HostAdapterHandle {
    id: AdapterId,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl HostAdapterHandle {
    /// The adapter's id.
    pub fn id(&self) -> AdapterId {
        self.id
    }

    /// Hands an HCI command packet to the controller.
    pub fn send_command(&self, packet: &[u8]) -> Result<(), RadioError> {
        self.shared
            .with(|a| a.handle_command(Instant::now(), packet))
            .map_err(RadioError::from)
    }

    /// Hands an HCI ACL data packet to the controller.
    pub fn send_acl(&self, packet: &[u8]) -> Result<(), RadioError> {
        self.shared
            .with(|a| a.handle_acl(Instant::now(), packet))
            .map_err(RadioError::from)
    }

    /// The next packet for the host, if one is queued.
    pub fn try_recv(&self) -> Option<ToHost> {
        // Taking a packet may let the link read its sockets again: wake the driver.
        self.shared.with(|a| a.poll_to_host(Instant::now()))
    }

    /// Waits for the next packet for the host. Cancel-safe.
    pub async fn recv(&self) -> ToHost {
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            self.shared.to_host.notified().await;
        }
    }
}

impl Drop for HostAdapterHandle {
    fn drop(&mut self) {
        // Aborting the driver drops its JoinSet, which aborts every socket task: their sockets
        // close with them.
        self.task.abort();
        tracing::info!(adapter = %self.id, "host-linked Bluetooth adapter detached");
    }
}

/// What a socket or helper task reports to the driver.
#[derive(Debug)]
enum Event {
    Paged(BdAddr, Result<(), ErrorCode>, Option<SeqPacket>),
    Connected(SocketId, u16),
    ConnectFailed(SocketId, ConnectFailure),
    Closed(SocketId),
    Secured(BdAddr, bool),
    Name(BdAddr, Option<String>),
    Found(sys::InquiryResult),
    InquiryDone,
    Accepted(u16, SeqPacket, SocketAddr),
    LeFound(sys::LeAdvertiser),
    LeScanDone,
}

#[derive(Debug)]
enum SocketCmd {
    Send(Vec<u8>),
    Read,
}

struct Driver {
    shared: Arc<Shared>,
    host: HostAdapter,
    keys: KeyStore,
    stored: BTreeMap<BdAddr, [u8; 16]>,
    accept_psms: Vec<u16>,
}

impl Driver {
    async fn run(mut self) {
        // Every message on `events` answers one action the link issued (a page, a connect, a
        // close, a name, a found device of a scan the link asked for): the queue is bounded by
        // the link's own state, so it needs no bound of its own. Socket data does not pass
        // here: socket tasks give it to the link themselves.
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let mut sockets: HashMap<SocketId, mpsc::UnboundedSender<SocketCmd>> = HashMap::new();
        let mut socket_tasks: HashMap<SocketId, tokio::task::AbortHandle> = HashMap::new();
        // The SDP connection that holds each remote's ACL link up while the guest's is.
        let mut held: HashMap<BdAddr, SeqPacket> = HashMap::new();
        for &psm in &self.accept_psms {
            match listen(self.host.address, psm) {
                Ok(listener) => {
                    tracing::info!(psm = %format_args!("{psm:#06x}"), host = %self.host.address, "accepting remotes' connections for the guest");
                    tasks.spawn(accept(listener, psm, events_tx.clone()));
                }
                Err(e) => tracing::error!(
                    psm = %format_args!("{psm:#06x}"),
                    host = %self.host.address,
                    error = %e,
                    "cannot listen on the host for this PSM (another adapter, bluetoothd or a \
                     host program holds it?): remotes' connections to it are not offered"
                ),
            }
        }
        loop {
            let (actions, deadline) = {
                let mut a = lock(&self.shared.adapter);
                let mut actions = Vec::new();
                while let Some(action) = a.poll_action() {
                    // A socket's reads and sends go to its task under the lock: a socket task
                    // that takes its own work (`answer`) drains its channel first under the
                    // same lock, so they reach it in order whichever way they come.
                    match action {
                        HostAction::Send { socket, sdu } => {
                            if let Some(tx) = sockets.get(&socket) {
                                let _ = tx.send(SocketCmd::Send(sdu));
                            }
                        }
                        HostAction::Read { socket } => {
                            if let Some(tx) = sockets.get(&socket) {
                                let _ = tx.send(SocketCmd::Read);
                            }
                        }
                        other => actions.push(other),
                    }
                }
                let deadline = a.poll_timeout();
                *lock(&self.shared.armed) = deadline;
                (actions, deadline)
            };
            for action in actions {
                match action {
                    HostAction::Page { remote } => {
                        let tx = events_tx.clone();
                        let local = self.host.address;
                        tasks.spawn(async move {
                            let (result, socket) = page(local, remote).await;
                            let _ = tx.send(Event::Paged(remote, result, socket));
                        });
                    }
                    HostAction::ReleaseLink { remote } => {
                        held.remove(&remote);
                    }
                    HostAction::Connect {
                        socket,
                        remote,
                        psm,
                        imtu,
                        security,
                    } => {
                        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                        sockets.insert(socket, cmd_tx);
                        let tx = events_tx.clone();
                        let local = self.host.address;
                        let shared = self.shared.clone();
                        let handle = tasks.spawn(async move {
                            let s = match connect(local, remote, psm, Some(imtu), security).await {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::debug!(%remote, psm, error = %e, "host channel refused");
                                    let _ = tx.send(Event::ConnectFailed(socket, classify(&e)));
                                    return;
                                }
                            };
                            let omtu = send_mtu(&s);
                            tracing::debug!(%remote, psm, omtu, "host channel open");
                            if tx.send(Event::Connected(socket, omtu)).is_ok() {
                                carry(s, remote, psm, imtu, socket, cmd_rx, tx, shared).await;
                            }
                        });
                        socket_tasks.insert(socket, handle);
                    }
                    // Dispatched above, under the lock.
                    HostAction::Send { .. } | HostAction::Read { .. } => {}
                    HostAction::Close { socket } => {
                        sockets.remove(&socket);
                        if let Some(h) = socket_tasks.remove(&socket) {
                            h.abort();
                        }
                    }
                    HostAction::Secure { remote, level } => {
                        let tx = events_tx.clone();
                        let host = self.host;
                        tasks.spawn(async move {
                            let ok = secure(host, remote, level).await;
                            let _ = tx.send(Event::Secured(remote, ok));
                        });
                    }
                    HostAction::StoreKey { remote, key } => {
                        match key {
                            Some(k) => self.stored.insert(remote, k),
                            None => self.stored.remove(&remote),
                        };
                        if let Err(e) = self.keys.save(&self.stored) {
                            tracing::error!(path = %self.keys.path.display(), error = %e, "proxy link key not stored: the guest pairs again next time");
                        }
                    }
                    HostAction::RemoteName { remote } => {
                        let tx = events_tx.clone();
                        let index = self.host.index;
                        tasks.spawn(async move {
                            let name = remote_name(index, remote).await;
                            let _ = tx.send(Event::Name(remote, name));
                        });
                    }
                    HostAction::LeScan => {
                        let tx = events_tx.clone();
                        let index = self.host.index;
                        tasks.spawn(async move {
                            let found_tx = tx.clone();
                            let r = sys::le_scan(index, LE_SCAN_LENGTH, |found| {
                                let _ = found_tx.send(Event::LeFound(found));
                            })
                            .await;
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "host LE scan failed");
                            }
                            let _ = tx.send(Event::LeScanDone);
                        });
                    }
                    HostAction::Inquiry => {
                        let tx = events_tx.clone();
                        let index = self.host.index;
                        tasks.spawn(async move {
                            let found_tx = tx.clone();
                            inquiry(index, move |found| {
                                let _ = found_tx.send(Event::Found(found));
                            })
                            .await;
                            let _ = tx.send(Event::InquiryDone);
                        });
                    }
                }
            }
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => self.shared.with(|a| a.handle_timeout(Instant::now())),
                () = self.shared.work.notified() => {}
                Some(event) = events.recv() => {
                    let event = match event {
                        Event::Paged(remote, result, socket) => {
                            if let Some(s) = socket {
                                held.insert(remote, s);
                            }
                            Event::Paged(remote, result, None)
                        }
                        Event::Closed(socket) => {
                            sockets.remove(&socket);
                            socket_tasks.remove(&socket);
                            Event::Closed(socket)
                        }
                        Event::ConnectFailed(socket, f) => {
                            sockets.remove(&socket);
                            socket_tasks.remove(&socket);
                            Event::ConnectFailed(socket, f)
                        }
                        Event::Accepted(psm, s, from) => {
                            let remote = bd_addr_of(&from);
                            let omtu = send_mtu(&s);
                            tracing::debug!(%remote, psm, omtu, "remote connected on the host");
                            let now = Instant::now();
                            let socket = self.shared.with(|a| {
                                a.with_link(now, |l| l.handle_incoming(now, remote, psm, omtu))
                            });
                            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
                            sockets.insert(socket, cmd_tx);
                            let tx = events_tx.clone();
                            let imtu = periwire_hci::l2cap::DEFAULT_MTU;
                            let handle = tasks.spawn(carry(
                                s,
                                remote,
                                psm,
                                imtu,
                                socket,
                                cmd_rx,
                                tx,
                                self.shared.clone(),
                            ));
                            socket_tasks.insert(socket, handle);
                            continue;
                        }
                        other => other,
                    };
                    self.shared.with(|a| a.with_link(Instant::now(), |l| match event {
                        Event::Paged(remote, result, _) => l.handle_page_result(remote, result),
                        Event::Connected(s, omtu) => l.handle_connected(s, omtu),
                        Event::ConnectFailed(s, f) => l.handle_connect_failed(s, f),
                        Event::Closed(s) => l.handle_closed(s),
                        Event::Secured(remote, ok) => l.handle_secured(remote, ok),
                        Event::Name(remote, name) => l.handle_remote_name(remote, name),
                        Event::Found(r) => l.handle_inquiry_result(r.address, r.class_of_device, r.name),
                        Event::InquiryDone => l.handle_inquiry_complete(),
                        Event::LeFound(a) => l.handle_le_found(a.address, a.address_type, &a.data),
                        Event::LeScanDone => l.handle_le_scan_complete(),
                        Event::Accepted(..) => {}
                    }));
                }
                Some(_) = tasks.join_next() => {}
            }
        }
    }
}

fn l2cap_addr(addr: BdAddr, psm: u16) -> SocketAddr {
    SocketAddr::new(bluez::bluer_address(addr), bluer::AddressType::BrEdr, psm)
}

/// A host inquiry for the guest: through bluetoothd when it manages the controller (so the
/// guest also sees what the host already knows), else the kernel's own.
async fn inquiry(index: u16, found: impl FnMut(sys::InquiryResult)) {
    let outcome = match Bluetoothd::connect(index).await {
        Some(daemon) => {
            tracing::info!(host = index, "guest inquiry through bluetoothd");
            daemon
                .inquiry(INQUIRY_LENGTH, found)
                .await
                .map_err(io::Error::other)
        }
        None => {
            tracing::info!(
                host = index,
                "guest inquiry through the kernel (no bluetoothd)"
            );
            sys::inquiry(index, INQUIRY_LENGTH, found).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "host inquiry failed");
    }
}

/// The name of `remote`: bluetoothd's, when it knows one (no page needed), else what the
/// remote answers the host controller's name request.
async fn remote_name(index: u16, remote: BdAddr) -> Option<String> {
    if let Some(daemon) = Bluetoothd::connect(index).await {
        if let Some(name) = daemon.name(remote).await {
            return Some(name);
        }
    }
    sys::remote_name(index, remote, NAME_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(%remote, error = %e, "host name request failed");
            None
        })
}

/// L2CAP_MODE_ERTM in `struct l2cap_options`.
const MODE_ERTM: u8 = 0x03;

/// A SeqPacket socket bound to the host controller, not yet connected. A channel socket
/// (`imtu` given) offers Enhanced Retransmission Mode: a remote service that wants ERTM gets
/// it (and its receive window then stops the remote while the guest is slow), one that wants
/// basic mode answers so and the kernel settles on basic (no `CONF_STATE2_DEVICE` on a
/// SEQPACKET socket).
fn socket_on(
    local: BdAddr,
    psm: u16,
    imtu: Option<u16>,
    security: SecurityLevel,
) -> io::Result<Socket<SeqPacket>> {
    let s = Socket::<SeqPacket>::new_seq_packet()?;
    s.bind(l2cap_addr(local, psm))?;
    if let Some(mtu) = imtu {
        // Room for a remote's burst while the guest catches up (a basic-mode channel cannot
        // hold the remote back; see `channel`).
        if let Err(e) = sys::set_receive_buffer(&s, HOST_SOCKET_BUFFER) {
            tracing::debug!(error = %e, "host socket receive buffer left as it is");
        }
        let mut opts = s.l2cap_opts()?;
        opts.imtu = mtu;
        opts.mode = MODE_ERTM;
        if let Err(e) = s.set_l2cap_opts(&opts) {
            // A kernel with ERTM disabled refuses the mode: basic it is.
            tracing::debug!(error = %e, "ERTM refused by the host kernel, basic mode");
            s.set_recv_mtu(mtu)?;
        }
    }
    if security == SecurityLevel::Medium {
        s.set_security(bluer::l2cap::Security {
            level: bluer::l2cap::SecurityLevel::Medium,
            key_size: 0,
        })?;
    }
    Ok(s)
}

async fn connect(
    local: BdAddr,
    remote: BdAddr,
    psm: u16,
    imtu: Option<u16>,
    security: SecurityLevel,
) -> io::Result<SeqPacket> {
    let s = socket_on(local, 0, imtu, security)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(l2cap_addr(remote, psm))).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

/// Whether `remote` answers, and the SDP connection that keeps its link up if it has one.
async fn page(local: BdAddr, remote: BdAddr) -> (Result<(), ErrorCode>, Option<SeqPacket>) {
    match connect(local, remote, PSM_SDP, None, SecurityLevel::Low).await {
        Ok(s) => (Ok(()), Some(s)),
        // The remote answered the page and refused the channel: it is there.
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => (Ok(()), None),
        Err(e) => {
            tracing::debug!(%remote, error = %e, "page through the host failed");
            let reason = match e.raw_os_error() {
                Some(libc::EHOSTDOWN | libc::ETIMEDOUT | libc::EHOSTUNREACH) => {
                    ErrorCode::PageTimeout
                }
                _ if e.kind() == io::ErrorKind::TimedOut => ErrorCode::PageTimeout,
                Some(libc::EACCES | libc::EPERM) => ErrorCode::AuthenticationFailure,
                _ => ErrorCode::RejectedLimitedResources,
            };
            (Err(reason), None)
        }
    }
}

/// Raises the host link to `remote` to `level`. The host bonds first when it has not (the
/// kernel's management interface, dedicated bonding, so the host keeps the key and later links
/// need no pairing); then an SDP connection that asks for `level` makes the kernel
/// authenticate and encrypt the link with that key.
async fn secure(host: HostAdapter, remote: BdAddr, level: SecurityLevel) -> bool {
    let attempt = async {
        match sys::bond(host.index, remote).await {
            Ok(sys::Bonding::Bonded) => {}
            Ok(sys::Bonding::Failed(status)) => {
                tracing::warn!(%remote, status, "the host could not bond with the remote");
                return Ok(None);
            }
            // Without CAP_NET_ADMIN the kernel pairs on its own below, without bonding.
            Err(e) => tracing::debug!(%remote, error = %e, "host bonding unavailable"),
        }
        let s = socket_on(host.address, 0, None, level)?;
        s.connect(l2cap_addr(remote, PSM_SDP)).await.map(Some)
    };
    match tokio::time::timeout(SECURE_TIMEOUT, attempt).await {
        Ok(Ok(Some(_))) => true,
        Ok(Ok(None)) => false,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "host could not secure the link");
            false
        }
        Err(_) => {
            tracing::warn!(%remote, "host did not secure the link in time");
            false
        }
    }
}

fn classify(e: &io::Error) -> ConnectFailure {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ConnectFailure::NoListener,
        Some(libc::EACCES | libc::EPERM) => ConnectFailure::Security,
        Some(libc::EHOSTDOWN | libc::EHOSTUNREACH | libc::ETIMEDOUT | libc::ECONNRESET) => {
            ConnectFailure::Unreachable
        }
        _ if e.kind() == io::ErrorKind::TimedOut => ConnectFailure::Unreachable,
        _ => ConnectFailure::Resources,
    }
}

/// The largest SDU the remote accepts on a connected socket.
fn send_mtu(s: &SeqPacket) -> u16 {
    s.send_mtu()
        .ok()
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(periwire_hci::l2cap::MIN_MTU)
}

/// The BD_ADDR of a socket address (most significant octet first) in HCI order.
fn bd_addr_of(a: &SocketAddr) -> BdAddr {
    bluez::bd_addr(a.addr)
}

/// A listening socket for `psm` on the host controller; what it accepts inherits its MTU,
/// mode and buffer.
fn listen(local: BdAddr, psm: u16) -> io::Result<bluer::l2cap::SeqPacketListener> {
    let s = socket_on(
        local,
        psm,
        Some(periwire_hci::l2cap::DEFAULT_MTU),
        SecurityLevel::Low,
    )?;
    s.listen(4)
}

/// Hands every connection a remote makes to `psm` to the driver.
async fn accept(
    listener: bluer::l2cap::SeqPacketListener,
    psm: u16,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        match listener.accept().await {
            Ok((s, from)) => {
                if events.send(Event::Accepted(psm, s, from)).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(psm, error = %e, "accepting on the host failed");
                // A persistent failure (the controller went away) must not spin.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One connected channel: sends and reads SDUs as the link asks, until the link closes it (the
/// task is aborted) or the socket ends.
///
/// Sent and received SDUs go into the link from here, not through the driver: on the data
/// path every hand-off between tasks adds a wake-up to each SDU's round trip, and RFCOMM's
/// credits make that round trip the channel's throughput.
#[allow(clippy::too_many_arguments)]
async fn carry(
    s: SeqPacket,
    remote: BdAddr,
    psm: u16,
    imtu: u16,
    id: SocketId,
    mut cmds: mpsc::UnboundedReceiver<SocketCmd>,
    events: mpsc::UnboundedSender<Event>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; usize::from(imtu.max(periwire_hci::l2cap::MIN_MTU))];
    // SDUs the link asked to send, oldest first.
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    // SDUs the link asked for and has not had yet.
    let mut credits = 0usize;
    // SDUs read ahead of the link: the host socket is drained eagerly because a basic-mode
    // channel has no flow control, and a remote sending faster than the guest takes data
    // would otherwise overrun the socket's buffer. Bounded by READ_AHEAD_BYTES; beyond it
    // the socket's own buffer fills, and (as on any basic-mode link) the kernel drops.
    let mut ahead: VecDeque<Vec<u8>> = VecDeque::new();
    let mut ahead_bytes = 0usize;
    let mut ended = false;
    loop {
        if credits > 0 {
            if let Some(sdu) = ahead.pop_front() {
                ahead_bytes -= sdu.len();
                credits -= 1;
                for cmd in answer(&shared, id, &mut cmds, |l| l.handle_received(id, &sdu)) {
                    take(cmd, &mut pending, &mut credits);
                }
                continue;
            }
            if ended {
                let _ = events.send(Event::Closed(id));
                return;
            }
        }
        // Both socket futures are cancel-safe: a SOCK_SEQPACKET send takes the whole SDU or
        // nothing, and recv only consumes a packet when it returns.
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(cmd) => take(cmd, &mut pending, &mut credits),
                None => return,
            },
            r = async { s.send(pending.front().map_or(&[][..], Vec::as_slice)).await }, if !pending.is_empty() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, psm, error = %e, "host channel send failed");
                    let _ = events.send(Event::Closed(id));
                    return;
                }
                pending.pop_front();
                for cmd in answer(&shared, id, &mut cmds, |l| l.handle_sent(id)) {
                    take(cmd, &mut pending, &mut credits);
                }
            }
            r = s.recv(&mut buf), if !ended && ahead_bytes < READ_AHEAD_BYTES => match r {
                Ok(n) if n > 0 => {
                    ahead_bytes += n;
                    ahead.push_back(buf[..n].to_vec());
                }
                other => {
                    if let Err(e) = other {
                        tracing::debug!(%remote, psm, error = %e, "host channel ended");
                    }
                    // What was read still goes to the guest, then the close.
                    ended = true;
                }
            },
        }
    }
}

/// Queues one piece of a socket's work: an SDU to send, or one more SDU to read.
fn take(cmd: SocketCmd, pending: &mut VecDeque<Vec<u8>>, credits: &mut usize) {
    match cmd {
        SocketCmd::Send(sdu) => pending.push_back(sdu),
        SocketCmd::Read => *credits += 1,
    }
}

/// Gives the link a socket's outcome (`f`), then returns the socket's work that follows: what
/// the driver already forwarded (`cmds`), then what the link has just asked for, taken from
/// its queue before the driver sees it, in that order.
fn answer(
    shared: &Shared,
    id: SocketId,
    cmds: &mut mpsc::UnboundedReceiver<SocketCmd>,
    f: impl FnOnce(&mut periwire_hci::host_link::HostLink),
) -> Vec<SocketCmd> {
    shared.with(|a| {
        a.with_link(Instant::now(), f);
        let mut work: Vec<SocketCmd> = std::iter::from_fn(|| cmds.try_recv().ok()).collect();
        work.extend(
            a.take_socket_actions(id)
                .into_iter()
                .filter_map(|action| match action {
                    HostAction::Send { sdu, .. } => Some(SocketCmd::Send(sdu)),
                    HostAction::Read { .. } => Some(SocketCmd::Read),
                    _ => None,
                }),
        );
        work
    })
}

/// The proxy link keys of one emulated controller, one `REMOTE KEY` line each, in a file only
/// periwire's user can read.
#[derive(Debug)]
struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    fn new(dir: &Path, controller: BdAddr) -> Self {
        let name = controller.to_string().replace(':', "-");
        Self {
            path: dir.join(format!("{name}.keys")),
        }
    }

    fn load(&self) -> io::Result<BTreeMap<BdAddr, [u8; 16]>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(' ')
                .and_then(|(addr, key)| Some((BdAddr::parse_str(addr)?, parse_key(key.trim())?)));
            match parsed {
                Some((addr, key)) => {
                    keys.insert(addr, key);
                }
                None => {
                    tracing::warn!(path = %self.path.display(), line = n + 1, "unreadable proxy key line skipped")
                }
            }
        }
        Ok(keys)
    }

    /// Replaces the file with `keys`, atomically: a crash leaves the old file or the new one.
    fn save(&self, keys: &BTreeMap<BdAddr, [u8; 16]>) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("keys.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(
            f,
            "# periwire proxy link keys: remote BD_ADDR, key the guest holds"
        )?;
        for (addr, key) in keys {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(f, "{addr} {hex}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn parse_key(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_store_round_trips_and_skips_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::new(dir.path(), BdAddr([1, 2, 3, 4, 5, 6]));
        assert!(store.load().expect("empty").is_empty());
        let mut keys = BTreeMap::new();
        keys.insert(BdAddr([9, 8, 7, 6, 5, 4]), [0xab; 16]);
        keys.insert(BdAddr([1, 1, 1, 1, 1, 1]), [0x01; 16]);
        store.save(&keys).expect("save");
        assert_eq!(store.load().expect("load"), keys);
        let mode = std::fs::metadata(&store.path).expect("meta");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let mut text = std::fs::read_to_string(&store.path).expect("read");
        text.push_str("garbage\n00:11:22:33:44:55 zz\n");
        std::fs::write(&store.path, text).expect("write");
        assert_eq!(store.load().expect("load"), keys);
    }

    #[test]
    fn l2cap_addresses_are_most_significant_octet_first() {
        let a = l2cap_addr(BdAddr([0x66, 0x55, 0x44, 0x33, 0x22, 0x11]), 3);
        assert_eq!(a.addr.to_string(), "11:22:33:44:55:66");
        assert_eq!(a.psm, 3);
    }
}
