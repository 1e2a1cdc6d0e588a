//! The host link: a medium on which every remote device is one the host's own Bluetooth stack
//! reaches, and every L2CAP channel is one host socket.
//!
//! A guest's controller emits [`LinkPdu`]s as it would on the simulated radio; [`HostLink`]
//! answers them in the name of the remote devices. It plays each remote's link manager (page,
//! features, version, names, the pairing exchanges) and ends the guest's L2CAP signalling
//! itself (Vol 3, Part A, 4: information, connection, configuration, disconnection, echo).
//! Each dynamic channel the guest opens becomes one [`HostAction::Connect`] for the runtime,
//! which opens a host `SOCK_SEQPACKET` L2CAP socket; one guest SDU is one send, one host read
//! is one guest SDU. Pairing runs on the host ([`HostAction::Secure`]); the guest is given a
//! proxy link key of periwire's own ([`HostAction::StoreKey`]).
//!
//! Sans-IO like the controller: the runtime feeds socket outcomes in through `handle_*`, takes
//! socket work out of [`HostLink::poll_action`], and [`HostLinkedAdapter`] shuttles PDUs
//! between the controller and this link. Memory is bounded by construction: the guest can send
//! no more ACL fragments than the controller has buffers (they are freed only once the SDU
//! they carry reached its socket), and a socket is read only while the guest keeps up.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::controller::supported::lmp;
use crate::controller::{AclError, CommandError, Controller, ControllerConfig, ToHost};
use crate::l2cap::{
    self, config_result, info_type, reject_reason, BasicHeader, ConfigOption, ConnectionResult,
    L2capSignal, Reassembled, Reassembler, SignalCommand, CID_DYNAMIC_FIRST, CID_SIGNALING,
};
use crate::medium::{AdapterId, Advertisement, Dest, LinkPdu, Transmit, Transport};
use crate::rng::KeyRng;
use crate::wire::{BdAddr, ClassOfDevice, ErrorCode};

/// Names one host socket for the lifetime of a [`HostLink`]; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

/// The security a host socket asks of its link (Linux `BT_SECURITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityLevel {
    /// No authentication or encryption.
    Low,
    /// Authenticated (possibly unauthenticated key) and encrypted.
    Medium,
}

/// Socket work for the runtime, in the order it must be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Check that `remote` is reachable (bring its ACL link up); answer with
    /// [`HostLink::handle_page_result`].
    Page {
        /// The remote device.
        remote: BdAddr,
    },
    /// The guest's link to `remote` is gone: drop whatever held the host link up.
    ReleaseLink {
        /// The remote device.
        remote: BdAddr,
    },
    /// Open an L2CAP `SOCK_SEQPACKET` socket to `psm` on `remote`; answer with
    /// [`HostLink::handle_connected`] or [`HostLink::handle_connect_failed`].
    Connect {
        /// The socket's name.
        socket: SocketId,
        /// The remote device.
        remote: BdAddr,
        /// The PSM.
        psm: u16,
        /// The largest SDU the socket accepts (`L2CAP_OPTIONS.imtu`), the guest's MTU.
        imtu: u16,
        /// The security to ask for before connecting.
        security: SecurityLevel,
    },
    /// Send one SDU; answer with [`HostLink::handle_sent`] once the socket took it. Several
    /// Sends of one socket may be outstanding: they go out, and are answered, in order.
    Send {
        /// The socket.
        socket: SocketId,
        /// One SDU.
        sdu: Vec<u8>,
    },
    /// Read one SDU when one arrives; answer with [`HostLink::handle_received`]. Several
    /// Reads of one socket may be outstanding: each is answered by one SDU, in order.
    Read {
        /// The socket.
        socket: SocketId,
    },
    /// Close the socket (no answer needed).
    Close {
        /// The socket.
        socket: SocketId,
    },
    /// Raise the host link's security to `level`, pairing through the host if needed; answer
    /// with [`HostLink::handle_secured`].
    Secure {
        /// The remote device.
        remote: BdAddr,
        /// The level.
        level: SecurityLevel,
    },
    /// Persist (or, with `None`, forget) the proxy link key the guest holds for `remote`.
    StoreKey {
        /// The remote device.
        remote: BdAddr,
        /// The key.
        key: Option<[u8; 16]>,
    },
    /// Ask the host for `remote`'s name; answer with [`HostLink::handle_remote_name`].
    RemoteName {
        /// The remote device.
        remote: BdAddr,
    },
    /// Run an inquiry on the host adapter; answer with [`HostLink::handle_inquiry_result`]
    /// per device and [`HostLink::handle_inquiry_complete`].
    Inquiry,
    /// Scan for LE advertisers through the host adapter; answer with
    /// [`HostLink::handle_le_found`] per device and [`HostLink::handle_le_scan_complete`].
    LeScan,
}

/// Why a host socket could not connect, as the runtime classifies the OS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens on the PSM (`ECONNREFUSED`).
    NoListener,
    /// The remote or the host refused for security (`EACCES`, `EPERM`).
    Security,
    /// The remote cannot be reached (`EHOSTDOWN`, `ETIMEDOUT`, ...).
    Unreachable,
    /// Out of resources or any other failure.
    Resources,
}

impl ConnectFailure {
    fn result(self) -> ConnectionResult {
        match self {
            Self::NoListener => ConnectionResult::PsmNotSupported,
            Self::Security => ConnectionResult::SecurityBlock,
            Self::Unreachable | Self::Resources => ConnectionResult::NoResources,
        }
    }
}

/// One channel the guest has open through the host, for status listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The remote device.
    pub remote: BdAddr,
    /// The PSM.
    pub psm: u16,
    /// Whether the channel carries data yet (connected and configured).
    pub open: bool,
    /// Whether the remote opened it (to a PSM the adapter accepts), not the guest.
    pub incoming: bool,
    /// Payload bytes from the guest to the remote.
    pub bytes_to_remote: u64,
    /// Payload bytes from the remote to the guest.
    pub bytes_to_guest: u64,
}

/// How many fragments of one channel may wait in the controller for the guest before the
/// channel's socket is read again: enough to keep the guest's host busy, few enough that a
/// slow guest makes the remote wait (the socket's receive buffer fills, then L2CAP's and the
/// remote's own flow control take over).
const READ_AHEAD_FRAGMENTS: usize = 16;

/// How many SDUs of one channel may be with the runtime's socket at once: a few, so that the
/// guest's next SDU is already queued when the socket takes one (each holds its fragments'
/// controller buffers until then, so the guest's ACL buffers bound this anyway).
const SENDS_IN_FLIGHT: usize = 4;

/// The most channels one guest link may hold.
const MAX_CHANNELS_PER_LINK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    /// Connection Request answered "pending"; the host socket connects.
    Connecting { identifier: u8 },
    /// A remote connected to an accepted PSM on the host; the guest is (or, once its link is
    /// up, will be) asked with a Connection Request of this identifier.
    Offered { identifier: Option<u8> },
    /// Connected on both sides; configuration runs.
    Config {
        ours_accepted: bool,
        theirs_accepted: bool,
    },
    /// Carries data.
    Open,
}

#[derive(Debug)]
struct Channel {
    /// The guest's channel endpoint (0 while the guest has not accepted an offered channel).
    guest_cid: u16,
    /// The remote opened the channel.
    incoming: bool,
    psm: u16,
    socket: SocketId,
    state: ChannelState,
    /// The largest SDU the guest accepts.
    guest_mtu: u16,
    /// The largest SDU the remote accepts (the host socket's omtu).
    remote_mtu: u16,
    /// Guest SDUs waiting for the socket, each with the fragments that carried it.
    to_send: VecDeque<(Vec<u8>, usize)>,
    /// Sends with the runtime, oldest first: the fragments each SDU came in, freed when the
    /// socket took it.
    sending: VecDeque<usize>,
    /// Reads with the runtime not yet answered.
    reads: usize,
    /// Fragments of this channel queued in the controller and not yet taken by the guest.
    unacked_to_guest: usize,
    bytes_to_remote: u64,
    bytes_to_guest: u64,
}

impl Channel {
    /// A channel of `socket` in `state`: a remote's incoming one (no guest endpoint yet) unless
    /// the caller sets `guest_cid`.
    fn new(psm: u16, socket: SocketId, state: ChannelState, remote_mtu: u16) -> Self {
        Self {
            guest_cid: 0,
            incoming: matches!(state, ChannelState::Offered { .. }),
            psm,
            socket,
            state,
            guest_mtu: l2cap::DEFAULT_MTU,
            remote_mtu,
            to_send: VecDeque::new(),
            sending: VecDeque::new(),
            reads: 0,
            unacked_to_guest: 0,
            bytes_to_remote: 0,
            bytes_to_guest: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Security {
    Idle,
    /// The guest's stored key matched ours; the host link is being secured.
    KeyCheck,
    /// The guest pairs against us: the key it will be notified of, pending host security.
    Pairing {
        key: [u8; 16],
    },
}

#[derive(Debug)]
struct Remote {
    id: AdapterId,
    addr: BdAddr,
    /// Paging (the runtime checks reachability) or up.
    up: bool,
    reassembler: Reassembler,
    /// Fragments received since the last complete frame: they are freed with that frame.
    rx_fragments: usize,
    next_identifier: u8,
    channels: BTreeMap<u16, Channel>,
    /// Per fragment sent to the controller, in order: the channel it belongs to, if any.
    tx_unacked: VecDeque<Option<u16>>,
    security: Security,
    secured: bool,
    /// The identifier and local cid of our own Configuration Requests, by identifier.
    config_requests: BTreeMap<u8, u16>,
    /// We paged the guest for a remote that connected on the host: the guest's controller
    /// must accept the link by then.
    answer_by: Option<Instant>,
    /// The guest's link is encrypted (by the guest, or by us for incoming channels).
    encrypted: bool,
    /// We are securing the guest's link for incoming channels.
    securing: Option<Securing>,
    /// We encrypted the guest's link: its host reads the key size before it accepts a
    /// channel, so offers wait for that read (or, for a host that does not read it, this
    /// deadline).
    key_size_by: Option<Instant>,
}

/// Our authentication of the guest's link, as the remote, before offering it incoming
/// channels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Securing {
    /// Our stored proxy key is being checked against the guest's.
    KeyCheck,
    /// Pairing asked; the guest's controller says whether its host does SSP.
    PairingStart,
    /// IO capabilities asked of the guest.
    IoCapabilities,
    /// Values sent: the host secures its own link, the guest confirms.
    Confirm {
        key: [u8; 16],
        host: Option<bool>,
        guest: Option<bool>,
    },
}

impl Remote {
    fn identifier(&mut self) -> u8 {
        // Identifier 0 is invalid on the signalling channel (Vol 3, Part A, 4).
        self.next_identifier = self.next_identifier.wrapping_add(1).max(1);
        self.next_identifier
    }

    fn free_cid(&self) -> Option<u16> {
        (CID_DYNAMIC_FIRST..=u16::MAX).find(|c| !self.channels.contains_key(c))
    }
}

/// The host-socket medium of one adapter.
#[derive(Debug)]
pub struct HostLink {
    remotes: BTreeMap<AdapterId, Remote>,
    next_remote: u64,
    next_socket: u64,
    sockets: BTreeMap<SocketId, (AdapterId, u16)>,
    keys: BTreeMap<BdAddr, [u8; 16]>,
    to_controller: VecDeque<(AdapterId, LinkPdu)>,
    actions: VecDeque<HostAction>,
    /// The largest ACL fragment handed to the controller for the guest.
    fragment_len: usize,
    inquiring: bool,
    le_scanning: bool,
    /// Remote devices the host names (inquiry, name requests), by address.
    names: BTreeMap<BdAddr, String>,
    /// Classes of device the host's inquiries reported, for incoming pages.
    classes: BTreeMap<BdAddr, ClassOfDevice>,
    /// The generator of the proxy keys the link draws itself (incoming connections): a
    /// stream apart from the controller's, seeded from the same entropy.
    rng: KeyRng,
    /// The time of the latest call into the link that told it.
    now: Option<Instant>,
}

impl HostLink {
    /// A host link with the proxy keys stored earlier, handing the controller ACL fragments
    /// of at most `fragment_len` bytes.
    pub fn new(keys: BTreeMap<BdAddr, [u8; 16]>, fragment_len: u16, entropy: u64) -> Self {
        Self {
            remotes: BTreeMap::new(),
            next_remote: 1,
            next_socket: 1,
            sockets: BTreeMap::new(),
            keys,
            to_controller: VecDeque::new(),
            actions: VecDeque::new(),
            fragment_len: usize::from(fragment_len.max(27)),
            inquiring: false,
            le_scanning: false,
            names: BTreeMap::new(),
            classes: BTreeMap::new(),
            rng: KeyRng::new(entropy ^ 0x6a09_e667_f3bc_c908),
            now: None,
        }
    }

    /// The next PDU for the controller, and the remote it comes from.
    pub fn poll_to_controller(&mut self) -> Option<(AdapterId, LinkPdu)> {
        self.to_controller.pop_front()
    }

    /// Whether socket work waits for [`poll_action`](Self::poll_action).
    pub fn has_action(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The next piece of socket work.
    pub fn poll_action(&mut self) -> Option<HostAction> {
        self.actions.pop_front()
    }

    /// Takes the [`HostAction::Send`]s and [`HostAction::Read`]s of `socket` out of the queue,
    /// in order, leaving the rest. A runtime whose socket task answers an action can pick up
    /// the work that answer produced at once, rather than through whatever dispatches
    /// [`poll_action`](Self::poll_action): on a busy channel that saves a hand-off per SDU.
    pub fn take_socket_actions(&mut self, socket: SocketId) -> Vec<HostAction> {
        let ours = |a: &HostAction| matches!(a, HostAction::Send { socket: s, .. } | HostAction::Read { socket: s } if *s == socket);
        if !self.actions.iter().any(ours) {
            return Vec::new();
        }
        let (taken, kept) = std::mem::take(&mut self.actions)
            .into_iter()
            .partition::<Vec<_>, _>(ours);
        self.actions = kept.into();
        taken
    }

    /// The guest's open channels.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.remotes
            .values()
            .flat_map(|r| {
                r.channels.values().map(|c| ChannelInfo {
                    remote: r.addr,
                    psm: c.psm,
                    open: c.state == ChannelState::Open,
                    incoming: c.incoming,
                    bytes_to_remote: c.bytes_to_remote,
                    bytes_to_guest: c.bytes_to_guest,
                })
            })
            .collect()
    }

    // ----- from the controller -----

    /// Handles a PDU the guest's controller transmitted.
    pub fn handle_transmit(&mut self, t: Transmit) {
        match (t.dest, t.pdu) {
            (Dest::BrEdr(addr), LinkPdu::Page { .. }) => self.page(addr),
            (Dest::BrEdr(addr), LinkPdu::PageCancel) => {
                if let Some(id) = self.id_of(addr) {
                    if self.remotes.get(&id).is_some_and(|r| !r.up) {
                        self.drop_remote(id);
                    }
                }
            }
            (Dest::BrEdr(addr), LinkPdu::NameRequest) => self.name_request(addr),
            (Dest::Broadcast, LinkPdu::Inquiry) if !self.inquiring => {
                self.inquiring = true;
                self.actions.push_back(HostAction::Inquiry);
            }
            (Dest::Broadcast, LinkPdu::ScanStart) if !self.le_scanning => {
                self.le_scanning = true;
                self.actions.push_back(HostAction::LeScan);
            }
            (Dest::Adapter(id), pdu) => self.handle_guest_pdu(id, pdu),
            // The guest's own LE advertising and LE connections do not reach the host.
            _ => {}
        }
    }

    fn handle_guest_pdu(&mut self, id: AdapterId, pdu: LinkPdu) {
        let Some(addr) = self.remotes.get(&id).map(|r| r.addr) else {
            return;
        };
        match pdu {
            LinkPdu::Acl {
                transport: Transport::BrEdr,
                first,
                data,
            } => self.acl_from_guest(id, first, &data),
            LinkPdu::AclAck { .. } => {
                let Some(remote) = self.remotes.get_mut(&id) else {
                    return;
                };
                if let Some(Some(cid)) = remote.tx_unacked.pop_front() {
                    if let Some(ch) = remote.channels.get_mut(&cid) {
                        ch.unacked_to_guest = ch.unacked_to_guest.saturating_sub(1);
                    }
                    self.maybe_read(id, cid);
                }
            }
            LinkPdu::Disconnect { .. } => self.drop_remote(id),
            // The guest took the link we paged it for: offer it the channels waiting.
            LinkPdu::PageAccept { .. } => {
                if let Some(r) = self.remotes.get_mut(&id) {
                    r.up = true;
                    r.answer_by = None;
                }
                self.offer_waiting(id);
            }
            LinkPdu::PageReject { .. } => {
                tracing::debug!(remote = %addr, "the guest refused the link of an incoming connection");
                self.drop_remote(id);
            }
            LinkPdu::NameRequest => self.name_request(addr),
            LinkPdu::FeaturesRequest {
                transport,
                extended,
                page,
            } => {
                let features = match page {
                    0 => proxy_features(),
                    1 => (1u64 << lmp::PAGE1_SSP_HOST).to_le_bytes(),
                    _ => [0; 8],
                };
                self.to_controller.push_back((
                    id,
                    LinkPdu::FeaturesResponse {
                        transport,
                        extended,
                        page,
                        max_page: 1,
                        features,
                    },
                ));
            }
            LinkPdu::VersionRequest { transport } => self.to_controller.push_back((
                id,
                LinkPdu::VersionResponse {
                    transport,
                    // Bluetooth 5.3, the Linux Foundation's company id: a neutral answer;
                    // the host does not tell the remote's real version to userspace.
                    version: 0x0c,
                    company: 0x05f1,
                    subversion: 0,
                },
            )),
            LinkPdu::KeyCheck { key } => {
                if self.keys.get(&addr) == Some(&key) {
                    self.set_security(id, Security::KeyCheck);
                    self.actions.push_back(HostAction::Secure {
                        remote: addr,
                        level: SecurityLevel::Medium,
                    });
                } else {
                    // A key we never gave, or one we forgot: the guest must pair again.
                    self.to_controller.push_back((
                        id,
                        LinkPdu::KeyCheckResult {
                            status: ErrorCode::PinOrKeyMissing,
                        },
                    ));
                }
            }
            LinkPdu::PairingStart { .. } => self
                .to_controller
                .push_back((id, LinkPdu::PairingStartResponse { ssp: true })),
            LinkPdu::IoCapabilityRequest {
                authentication_requirements,
                ..
            } => self.to_controller.push_back((
                id,
                LinkPdu::IoCapabilityResponse {
                    // NoInputNoOutput: the guest's pairing is Just Works; the real pairing,
                    // with whatever the user must confirm, runs on the host.
                    io_capability: 0x03,
                    oob_data_present: 0,
                    authentication_requirements: authentication_requirements & !1,
                },
            )),
            LinkPdu::PairingValues { link_key, .. } => {
                self.set_security(id, Security::Pairing { key: link_key });
                self.actions.push_back(HostAction::Secure {
                    remote: addr,
                    level: SecurityLevel::Medium,
                });
            }
            LinkPdu::LegacyPin { .. } => self.to_controller.push_back((
                id,
                LinkPdu::LegacyPinResult {
                    status: ErrorCode::PairingNotAllowed,
                },
            )),
            LinkPdu::StartEncryption { enable } => {
                if let Some(r) = self.remotes.get_mut(&id) {
                    r.encrypted = enable;
                }
            }
            // Answers to our own authentication of the guest's link (incoming connections).
            LinkPdu::KeyCheckResult { status }
                if self.securing(id) == Some(&Securing::KeyCheck) =>
            {
                if status.is_success() {
                    self.encrypt_guest_link(id);
                } else {
                    // The guest lost the key (or holds another): pair it again.
                    self.start_pairing(id);
                }
            }
            LinkPdu::PairingStartResponse { ssp }
                if self.securing(id) == Some(&Securing::PairingStart) =>
            {
                if ssp {
                    self.set_securing(id, Securing::IoCapabilities);
                    self.to_controller.push_back((
                        id,
                        LinkPdu::IoCapabilityRequest {
                            io_capability: 0x03,
                            oob_data_present: 0,
                            // General bonding, no MITM protection: Just Works.
                            authentication_requirements: 0x04,
                        },
                    ));
                } else {
                    // Legacy PIN pairing needs a PIN the host's remote does not know.
                    self.securing_failed(id, "the guest does not pair with SSP");
                }
            }
            LinkPdu::IoCapabilityResponse { .. }
                if self.securing(id) == Some(&Securing::IoCapabilities) =>
            {
                let link_key = self.random_key();
                let numeric_value = (self.random() % 1_000_000) as u32;
                self.set_securing(
                    id,
                    Securing::Confirm {
                        key: link_key,
                        host: None,
                        guest: None,
                    },
                );
                self.to_controller.push_back((
                    id,
                    LinkPdu::PairingValues {
                        numeric_value,
                        link_key,
                        key_type: 0x04,
                    },
                ));
                self.actions.push_back(HostAction::Secure {
                    remote: addr,
                    level: SecurityLevel::Medium,
                });
            }
            LinkPdu::IoCapabilityReject { .. }
                if self.securing(id) == Some(&Securing::IoCapabilities) =>
            {
                self.securing_failed(id, "the guest refused to pair");
            }
            LinkPdu::PairingConfirm { accepted } => {
                if let Some(Securing::Confirm { guest, .. }) =
                    self.remotes.get_mut(&id).and_then(|r| r.securing.as_mut())
                {
                    *guest = Some(accepted);
                    self.pairing_confirmed(id);
                }
            }
            // Encryption follows the host link, secured before the guest's authentication
            // completed; the remaining LMP exchanges need no answer.
            _ => {}
        }
    }

    fn securing(&self, id: AdapterId) -> Option<&Securing> {
        self.remotes.get(&id).and_then(|r| r.securing.as_ref())
    }

    fn set_securing(&mut self, id: AdapterId, securing: Securing) {
        if let Some(r) = self.remotes.get_mut(&id) {
            r.securing = Some(securing);
        }
    }

    /// Secures the guest's link as the remote (Security Mode 4: an initiator authenticates and
    /// encrypts before it opens a channel other than SDP), so that the guest accepts the
    /// channels offered on it: with the proxy key the guest holds, else by pairing it.
    fn secure_guest_link(&mut self, id: AdapterId) {
        let Some(r) = self.remotes.get(&id) else {
            return;
        };
        if r.securing.is_some() {
            return;
        }
        match self.keys.get(&r.addr).copied() {
            Some(key) => {
                self.set_securing(id, Securing::KeyCheck);
                self.to_controller
                    .push_back((id, LinkPdu::KeyCheck { key }));
            }
            None => self.start_pairing(id),
        }
    }

    fn start_pairing(&mut self, id: AdapterId) {
        self.set_securing(id, Securing::PairingStart);
        self.to_controller
            .push_back((id, LinkPdu::PairingStart { ssp: true }));
    }

    /// Both sides of our pairing of the guest have answered (or one has refused).
    fn pairing_confirmed(&mut self, id: AdapterId) {
        let Some(r) = self.remotes.get_mut(&id) else {
            return;
        };
        let Some(Securing::Confirm { key, host, guest }) = r.securing.clone() else {
            return;
        };
        match (host, guest) {
            (Some(true), Some(true)) => {
                let remote = r.addr;
                self.keys.insert(remote, key);
                self.actions.push_back(HostAction::StoreKey {
                    remote,
                    key: Some(key),
                });
                self.encrypt_guest_link(id);
            }
            (Some(false), _) => self.securing_failed(id, "the host could not secure its link"),
            (_, Some(false)) => self.securing_failed(id, "the guest refused to pair"),
            _ => {}
        }
    }

    /// The guest's link is authenticated: encrypt it and offer the waiting channels.
    fn encrypt_guest_link(&mut self, id: AdapterId) {
        let Some(r) = self.remotes.get_mut(&id) else {
            return;
        };
        r.securing = None;
        r.encrypted = true;
        r.key_size_by = self.now.map(|t| t + KEY_SIZE_WAIT);
        self.to_controller
            .push_back((id, LinkPdu::StartEncryption { enable: true }));
    }

    /// The guest's host read the encryption key size of its link to the remote behind `peer`
    /// (Read Encryption Key Size): it is ready for the channels we offer.
    pub fn handle_key_size_read(&mut self, peer: AdapterId) {
        if let Some(r) = self.remotes.get_mut(&peer) {
            if r.key_size_by.take().is_some() {
                self.offer_waiting(peer);
            }
        }
    }

    /// Sets the link's clock (the time of the call being handled).
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Securing the guest's link for incoming channels failed: they cannot be offered, so the
    /// link goes with them.
    fn securing_failed(&mut self, id: AdapterId, why: &str) {
        if let Some(r) = self.remotes.get(&id) {
            tracing::debug!(remote = %r.addr, why, "incoming channels refused");
        }
        self.to_controller.push_back((
            id,
            LinkPdu::Disconnect {
                transport: Transport::BrEdr,
                reason: ErrorCode::AuthenticationFailure,
            },
        ));
        self.drop_remote(id);
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn random_key(&mut self) -> [u8; 16] {
        self.rng.key()
    }

    fn set_security(&mut self, id: AdapterId, security: Security) {
        if let Some(r) = self.remotes.get_mut(&id) {
            r.security = security;
        }
    }

    fn page(&mut self, addr: BdAddr) {
        if self.id_of(addr).is_some() {
            // Already paging or connected; the controller refuses a second Create Connection.
            return;
        }
        self.new_remote(addr);
        self.actions.push_back(HostAction::Page { remote: addr });
    }

    fn new_remote(&mut self, addr: BdAddr) -> AdapterId {
        let id = AdapterId(self.next_remote);
        self.next_remote += 1;
        self.remotes.insert(
            id,
            Remote {
                id,
                addr,
                up: false,
                reassembler: Reassembler::default(),
                rx_fragments: 0,
                next_identifier: 0,
                channels: BTreeMap::new(),
                tx_unacked: VecDeque::new(),
                security: Security::Idle,
                secured: false,
                config_requests: BTreeMap::new(),
                answer_by: None,
                encrypted: false,
                securing: None,
                key_size_by: None,
            },
        );
        id
    }

    fn id_of(&self, addr: BdAddr) -> Option<AdapterId> {
        self.remotes.values().find(|r| r.addr == addr).map(|r| r.id)
    }

    fn name_request(&mut self, addr: BdAddr) {
        self.actions
            .push_back(HostAction::RemoteName { remote: addr });
    }

    fn drop_remote(&mut self, id: AdapterId) {
        let Some(r) = self.remotes.remove(&id) else {
            return;
        };
        for ch in r.channels.values() {
            self.sockets.remove(&ch.socket);
            self.actions
                .push_back(HostAction::Close { socket: ch.socket });
        }
        self.actions
            .push_back(HostAction::ReleaseLink { remote: r.addr });
    }

    // ----- L2CAP from the guest -----

    fn acl_from_guest(&mut self, id: AdapterId, first: bool, data: &[u8]) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        remote.rx_fragments += 1;
        let frame = match remote.reassembler.push(first, data) {
            Reassembled::Incomplete => return,
            Reassembled::Dropped => {
                tracing::debug!(remote = %remote.addr, "malformed L2CAP fragments dropped");
                let n = std::mem::take(&mut remote.rx_fragments);
                self.ack_guest(id, n);
                return;
            }
            Reassembled::Frame(f) => f,
        };
        let fragments = std::mem::take(&mut remote.rx_fragments);
        let Ok(header) = BasicHeader::parse(&frame) else {
            self.ack_guest(id, fragments);
            return;
        };
        let payload = frame.get(l2cap::HEADER_LEN..).unwrap_or_default();
        match header.cid {
            CID_SIGNALING => {
                self.ack_guest(id, fragments);
                self.signaling(id, payload);
            }
            cid => {
                let Some(ch) = remote.channels.get_mut(&cid) else {
                    // Data for a channel that is gone (a race with a disconnection).
                    self.ack_guest(id, fragments);
                    return;
                };
                if ch.state != ChannelState::Open || payload.len() > usize::from(ch.remote_mtu) {
                    tracing::debug!(remote = %remote.addr, cid, len = payload.len(),
                        "guest SDU dropped: channel not open or SDU above the remote's MTU");
                    self.ack_guest(id, fragments);
                    return;
                }
                ch.bytes_to_remote += payload.len() as u64;
                ch.to_send.push_back((payload.to_vec(), fragments));
                self.pump_send(id, cid);
            }
        }
    }

    /// Frees `n` of the controller's buffers (the guest's host gets Number Of Completed
    /// Packets).
    fn ack_guest(&mut self, id: AdapterId, n: usize) {
        for _ in 0..n {
            self.to_controller.push_back((
                id,
                LinkPdu::AclAck {
                    transport: Transport::BrEdr,
                },
            ));
        }
    }

    fn pump_send(&mut self, id: AdapterId, cid: u16) {
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        while ch.sending.len() < SENDS_IN_FLIGHT {
            let Some((sdu, fragments)) = ch.to_send.pop_front() else {
                return;
            };
            ch.sending.push_back(fragments);
            self.actions.push_back(HostAction::Send {
                socket: ch.socket,
                sdu,
            });
        }
    }

    fn signaling(&mut self, id: AdapterId, payload: &[u8]) {
        let commands = match SignalCommand::parse_all(payload) {
            Ok(c) => c,
            Err(l2cap::L2capError::BadCommandLength { identifier, .. }) => {
                self.signal(id, identifier, reject(reject_reason::NOT_UNDERSTOOD, &[]));
                return;
            }
            Err(_) => return,
        };
        for cmd in commands {
            self.signal_command(id, cmd);
        }
    }

    fn signal(&mut self, id: AdapterId, identifier: u8, signal: L2capSignal) {
        let frame = SignalCommand { identifier, signal }.to_frame();
        self.frame_to_guest(id, None, &frame);
    }

    fn signal_command(&mut self, id: AdapterId, cmd: SignalCommand) {
        let ident = cmd.identifier;
        match cmd.signal {
            L2capSignal::InformationRequest { info_type } => {
                let (result, data) = match info_type {
                    // Fixed channels supported (bit 7), nothing else: basic mode only.
                    info_type::EXTENDED_FEATURES => (0, 0x0000_0080u32.to_le_bytes().to_vec()),
                    // The signalling channel only.
                    info_type::FIXED_CHANNELS => (0, 0x02u64.to_le_bytes().to_vec()),
                    info_type::CONNECTIONLESS_MTU => (0, l2cap::DEFAULT_MTU.to_le_bytes().to_vec()),
                    _ => (1, Vec::new()),
                };
                self.signal(
                    id,
                    ident,
                    L2capSignal::InformationResponse {
                        info_type,
                        result,
                        data,
                    },
                );
            }
            L2capSignal::EchoRequest(data) => {
                self.signal(id, ident, L2capSignal::EchoResponse(data))
            }
            L2capSignal::ConnectionRequest { psm, scid } => {
                self.guest_connect(id, ident, psm, scid)
            }
            L2capSignal::ConfigurationRequest {
                dcid,
                flags,
                options,
            } => self.guest_config_request(id, ident, dcid, flags, &options),
            L2capSignal::ConfigurationResponse {
                scid,
                result,
                options,
                ..
            } => self.guest_config_response(id, ident, scid, result, &options),
            L2capSignal::DisconnectionRequest { dcid, scid } => {
                let found = self
                    .remotes
                    .get(&id)
                    .and_then(|r| r.channels.get(&dcid))
                    .is_some_and(|c| c.guest_cid == scid);
                if !found {
                    let mut data = dcid.to_le_bytes().to_vec();
                    data.extend_from_slice(&scid.to_le_bytes());
                    self.signal(id, ident, reject(reject_reason::INVALID_CID, &data));
                    return;
                }
                self.signal(id, ident, L2capSignal::DisconnectionResponse { dcid, scid });
                self.close_channel(id, dcid);
            }
            // Our Disconnection Request was answered: the channel is already gone.
            L2capSignal::DisconnectionResponse { .. }
            | L2capSignal::EchoResponse(_)
            | L2capSignal::InformationResponse { .. }
            | L2capSignal::CommandReject { .. } => {}
            L2capSignal::ConnectionResponse {
                dcid, scid, result, ..
            } => self.guest_connect_response(id, ident, dcid, scid, result),
            L2capSignal::Unknown { .. } => {
                self.signal(id, ident, reject(reject_reason::NOT_UNDERSTOOD, &[]))
            }
        }
    }

    fn guest_connect(&mut self, id: AdapterId, ident: u8, psm: u16, scid: u16) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        let refuse = |result| L2capSignal::ConnectionResponse {
            dcid: 0,
            scid,
            result,
            status: 0,
        };
        if scid < CID_DYNAMIC_FIRST {
            self.signal(id, ident, refuse(ConnectionResult::InvalidSourceCid));
            return;
        }
        if remote.channels.values().any(|c| c.guest_cid == scid) {
            self.signal(
                id,
                ident,
                refuse(ConnectionResult::SourceCidAlreadyAllocated),
            );
            return;
        }
        let free = remote.free_cid();
        let (Some(local_cid), true) = (free, remote.channels.len() < MAX_CHANNELS_PER_LINK) else {
            self.signal(id, ident, refuse(ConnectionResult::NoResources));
            return;
        };
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        let security = if remote.secured {
            SecurityLevel::Medium
        } else {
            SecurityLevel::Low
        };
        let addr = remote.addr;
        remote.channels.insert(
            local_cid,
            Channel {
                guest_cid: scid,
                ..Channel::new(
                    psm,
                    socket,
                    ChannelState::Connecting { identifier: ident },
                    l2cap::DEFAULT_MTU,
                )
            },
        );
        self.sockets.insert(socket, (id, local_cid));
        self.signal(
            id,
            ident,
            L2capSignal::ConnectionResponse {
                dcid: local_cid,
                scid,
                result: ConnectionResult::Pending,
                status: 0,
            },
        );
        self.actions.push_back(HostAction::Connect {
            socket,
            remote: addr,
            psm,
            // The guest configures its MTU only after the connection succeeded, but the host
            // socket's must be set before it connects: use the L2CAP default, which every
            // guest accepts; larger SDUs from the remote are then impossible rather than lost.
            imtu: l2cap::DEFAULT_MTU,
            security,
        });
    }

    fn guest_config_request(
        &mut self,
        id: AdapterId,
        ident: u8,
        dcid: u16,
        flags: u16,
        options: &[u8],
    ) {
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&dcid))
        else {
            let mut data = dcid.to_le_bytes().to_vec();
            data.extend_from_slice(&0u16.to_le_bytes());
            self.signal(id, ident, reject(reject_reason::INVALID_CID, &data));
            return;
        };
        let guest_cid = ch.guest_cid;
        let ChannelState::Config {
            ours_accepted,
            theirs_accepted: _,
        } = ch.state
        else {
            // Reconfiguration of an open channel is not supported; a request before the
            // connection succeeded breaks the protocol.
            self.signal(
                id,
                ident,
                L2capSignal::ConfigurationResponse {
                    scid: guest_cid,
                    flags: 0,
                    result: config_result::REJECTED,
                    options: Vec::new(),
                },
            );
            return;
        };
        let parsed = ConfigOption::parse_all(options).unwrap_or_default();
        let mut unknown = Vec::new();
        let mut unacceptable = Vec::new();
        for o in &parsed {
            match o {
                ConfigOption::Mtu(m) if *m >= l2cap::MIN_MTU => ch.guest_mtu = *m,
                ConfigOption::Mtu(_) => unacceptable.push(ConfigOption::Mtu(l2cap::MIN_MTU)),
                ConfigOption::RetransmissionAndFlowControl { mode: 0, .. } => {}
                ConfigOption::RetransmissionAndFlowControl { .. } => {
                    unacceptable.push(ConfigOption::RetransmissionAndFlowControl {
                        mode: 0,
                        rest: vec![0; 8],
                    })
                }
                ConfigOption::FlushTimeout(_) => {}
                ConfigOption::Other { kind, .. } if kind & l2cap::OPTION_HINT != 0 => {}
                other @ ConfigOption::Other { .. } => unknown.push(other.clone()),
            }
        }
        let continuation = flags & 1;
        let (result, reply) = if !unknown.is_empty() {
            (config_result::UNKNOWN_OPTIONS, unknown)
        } else if !unacceptable.is_empty() {
            (config_result::UNACCEPTABLE_PARAMETERS, unacceptable)
        } else {
            (config_result::SUCCESS, Vec::new())
        };
        let done = result == config_result::SUCCESS && continuation == 0;
        if done {
            ch.state = ChannelState::Config {
                ours_accepted,
                theirs_accepted: true,
            };
        }
        self.signal(
            id,
            ident,
            L2capSignal::ConfigurationResponse {
                scid: guest_cid,
                flags: continuation,
                result,
                options: ConfigOption::emit_all(&reply),
            },
        );
        self.maybe_open(id, dcid);
    }

    fn guest_config_response(
        &mut self,
        id: AdapterId,
        ident: u8,
        scid: u16,
        result: u16,
        options: &[u8],
    ) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        if remote.config_requests.remove(&ident) != Some(scid) {
            return;
        }
        let Some(ch) = remote.channels.get_mut(&scid) else {
            return;
        };
        if result == config_result::SUCCESS {
            if let ChannelState::Config {
                theirs_accepted, ..
            } = ch.state
            {
                ch.state = ChannelState::Config {
                    ours_accepted: true,
                    theirs_accepted,
                };
            }
            self.maybe_open(id, scid);
            return;
        }
        // The guest refused our MTU (it may not send SDUs that large): offer what it asks
        // for when it asks for less, else give up on the channel.
        let counter = ConfigOption::parse_all(options).unwrap_or_default();
        let smaller = counter.iter().find_map(|o| match o {
            ConfigOption::Mtu(m) if *m >= l2cap::MIN_MTU && *m <= ch.remote_mtu => Some(*m),
            _ => None,
        });
        match smaller {
            Some(m) if result == config_result::UNACCEPTABLE_PARAMETERS => {
                ch.remote_mtu = m;
                self.send_config_request(id, scid);
            }
            _ => self.disconnect_guest_channel(id, scid),
        }
    }

    fn send_config_request(&mut self, id: AdapterId, local_cid: u16) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        let Some(ch) = remote.channels.get(&local_cid) else {
            return;
        };
        let (guest_cid, mtu) = (ch.guest_cid, ch.remote_mtu);
        let ident = remote.identifier();
        remote.config_requests.insert(ident, local_cid);
        self.signal(
            id,
            ident,
            L2capSignal::ConfigurationRequest {
                dcid: guest_cid,
                flags: 0,
                options: ConfigOption::emit_all(&[ConfigOption::Mtu(mtu)]),
            },
        );
    }

    fn maybe_open(&mut self, id: AdapterId, cid: u16) {
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        if ch.state
            == (ChannelState::Config {
                ours_accepted: true,
                theirs_accepted: true,
            })
        {
            ch.state = ChannelState::Open;
            self.maybe_read(id, cid);
        }
    }

    fn maybe_read(&mut self, id: AdapterId, cid: u16) {
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        if ch.state != ChannelState::Open {
            return;
        }
        // Each read may bring a fragment or more: ask for no more than the window leaves.
        while ch.reads + ch.unacked_to_guest < READ_AHEAD_FRAGMENTS {
            ch.reads += 1;
            self.actions
                .push_back(HostAction::Read { socket: ch.socket });
        }
    }

    /// Closes the channel on our side (socket, state) after the guest asked or agreed.
    fn close_channel(&mut self, id: AdapterId, local_cid: u16) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        let Some(ch) = remote.channels.remove(&local_cid) else {
            return;
        };
        // Fragments still in the controller stay accounted to no channel.
        for slot in remote.tx_unacked.iter_mut() {
            if *slot == Some(local_cid) {
                *slot = None;
            }
        }
        let pending: usize =
            ch.to_send.iter().map(|(_, n)| n).sum::<usize>() + ch.sending.iter().sum::<usize>();
        self.sockets.remove(&ch.socket);
        self.actions
            .push_back(HostAction::Close { socket: ch.socket });
        self.ack_guest(id, pending);
    }

    /// Tells the guest a channel is gone (the remote closed it, or it could not go on).
    fn disconnect_guest_channel(&mut self, id: AdapterId, local_cid: u16) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        let Some(guest_cid) = remote.channels.get(&local_cid).map(|c| c.guest_cid) else {
            return;
        };
        let ident = remote.identifier();
        self.close_channel(id, local_cid);
        self.signal(
            id,
            ident,
            L2capSignal::DisconnectionRequest {
                dcid: guest_cid,
                scid: local_cid,
            },
        );
    }

    /// Splits a frame into ACL fragments for the guest, accounting each to `channel`.
    fn frame_to_guest(&mut self, id: AdapterId, channel: Option<u16>, frame: &[u8]) {
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        for (i, chunk) in frame.chunks(self.fragment_len).enumerate() {
            remote.tx_unacked.push_back(channel);
            if let Some(ch) = channel.and_then(|c| remote.channels.get_mut(&c)) {
                ch.unacked_to_guest += 1;
            }
            self.to_controller.push_back((
                id,
                LinkPdu::Acl {
                    transport: Transport::BrEdr,
                    first: i == 0,
                    data: chunk.to_vec(),
                },
            ));
        }
    }

    // ----- from the runtime -----

    /// The outcome of a [`HostAction::Page`]: `Ok` when the remote answered, else the reason
    /// the guest's Connection Complete reports.
    pub fn handle_page_result(&mut self, remote: BdAddr, result: Result<(), ErrorCode>) {
        let Some(id) = self.id_of(remote) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(r) = self.remotes.get_mut(&id) {
                    r.up = true;
                }
                self.to_controller.push_back((
                    id,
                    LinkPdu::PageAccept {
                        bd_addr: remote,
                        role_switch: false,
                    },
                ));
                self.offer_waiting(id);
            }
            Err(reason) => {
                self.remotes.remove(&id);
                self.to_controller.push_back((
                    id,
                    LinkPdu::PageReject {
                        bd_addr: remote,
                        reason,
                    },
                ));
            }
        }
    }

    /// A [`HostAction::Connect`] succeeded; `omtu` is the largest SDU the remote accepts.
    pub fn handle_connected(&mut self, socket: SocketId, omtu: u16) {
        let Some(&(id, cid)) = self.sockets.get(&socket) else {
            // The guest gave up meanwhile.
            self.actions.push_back(HostAction::Close { socket });
            return;
        };
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        let ChannelState::Connecting { identifier } = ch.state else {
            return;
        };
        ch.remote_mtu = omtu.max(l2cap::MIN_MTU);
        ch.state = ChannelState::Config {
            ours_accepted: false,
            theirs_accepted: false,
        };
        let guest_cid = ch.guest_cid;
        self.signal(
            id,
            identifier,
            L2capSignal::ConnectionResponse {
                dcid: cid,
                scid: guest_cid,
                result: ConnectionResult::Success,
                status: 0,
            },
        );
        self.send_config_request(id, cid);
    }

    /// A [`HostAction::Connect`] failed.
    pub fn handle_connect_failed(&mut self, socket: SocketId, failure: ConnectFailure) {
        let Some((id, cid)) = self.sockets.remove(&socket) else {
            return;
        };
        let Some(remote) = self.remotes.get_mut(&id) else {
            return;
        };
        let Some(ch) = remote.channels.remove(&cid) else {
            return;
        };
        let ChannelState::Connecting { identifier } = ch.state else {
            return;
        };
        self.signal(
            id,
            identifier,
            L2capSignal::ConnectionResponse {
                dcid: 0,
                scid: ch.guest_cid,
                result: failure.result(),
                status: 0,
            },
        );
    }

    /// A [`HostAction::Send`] is done: the socket took the SDU.
    pub fn handle_sent(&mut self, socket: SocketId) {
        let Some(&(id, cid)) = self.sockets.get(&socket) else {
            return;
        };
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        let fragments = ch.sending.pop_front().unwrap_or(0);
        self.ack_guest(id, fragments);
        self.pump_send(id, cid);
    }

    /// A [`HostAction::Read`] returned one SDU.
    pub fn handle_received(&mut self, socket: SocketId, sdu: &[u8]) {
        let Some(&(id, cid)) = self.sockets.get(&socket) else {
            return;
        };
        let Some(ch) = self
            .remotes
            .get_mut(&id)
            .and_then(|r| r.channels.get_mut(&cid))
        else {
            return;
        };
        ch.reads = ch.reads.saturating_sub(1);
        if sdu.len() > usize::from(ch.guest_mtu) {
            // The host socket's imtu is the L2CAP default; a guest that configured less
            // cannot take this SDU (Vol 3, Part A, 5.1: an SDU above the MTU is not sent).
            tracing::warn!(
                psm = ch.psm,
                len = sdu.len(),
                mtu = ch.guest_mtu,
                "SDU from the remote exceeds the guest's MTU: dropped"
            );
        } else {
            ch.bytes_to_guest += sdu.len() as u64;
            let guest_cid = ch.guest_cid;
            let frame = BasicHeader::frame(guest_cid, sdu);
            self.frame_to_guest(id, Some(cid), &frame);
        }
        self.maybe_read(id, cid);
    }

    /// The socket closed (the remote disconnected the channel, or the link dropped).
    pub fn handle_closed(&mut self, socket: SocketId) {
        let Some(&(id, cid)) = self.sockets.get(&socket) else {
            return;
        };
        let state = self
            .remotes
            .get(&id)
            .and_then(|r| r.channels.get(&cid))
            .map(|c| c.state);
        match state {
            Some(ChannelState::Connecting { .. }) => {
                self.handle_connect_failed(socket, ConnectFailure::Resources)
            }
            // The guest has not accepted yet; should it still, its channel is disconnected
            // then (see `guest_connect_response`).
            Some(ChannelState::Offered { .. }) => self.close_channel(id, cid),
            _ => self.disconnect_guest_channel(id, cid),
        }
    }

    /// The outcome of a [`HostAction::Secure`].
    pub fn handle_secured(&mut self, remote: BdAddr, ok: bool) {
        let Some(id) = self.id_of(remote) else {
            return;
        };
        let Some(r) = self.remotes.get_mut(&id) else {
            return;
        };
        r.secured |= ok;
        if let Some(Securing::Confirm { host, .. }) = r.securing.as_mut() {
            *host = Some(ok);
            self.to_controller
                .push_back((id, LinkPdu::PairingConfirm { accepted: ok }));
            self.pairing_confirmed(id);
            return;
        }
        match std::mem::replace(&mut r.security, Security::Idle) {
            Security::Idle => {}
            Security::KeyCheck => self.to_controller.push_back((
                id,
                LinkPdu::KeyCheckResult {
                    status: if ok {
                        ErrorCode::Success
                    } else {
                        ErrorCode::AuthenticationFailure
                    },
                },
            )),
            Security::Pairing { key } => {
                if ok {
                    self.keys.insert(remote, key);
                    self.actions.push_back(HostAction::StoreKey {
                        remote,
                        key: Some(key),
                    });
                }
                self.to_controller
                    .push_back((id, LinkPdu::PairingConfirm { accepted: ok }));
            }
        }
    }

    /// The host named `remote` (or could not: `None`).
    pub fn handle_remote_name(&mut self, remote: BdAddr, name: Option<String>) {
        let Some(name) = name else {
            return;
        };
        self.names.insert(remote, name.clone());
        let id = self.id_of(remote).unwrap_or_else(|| unlinked_id(remote));
        self.to_controller.push_back((
            id,
            LinkPdu::NameResponse {
                bd_addr: remote,
                name: name_field(&name),
            },
        ));
    }

    /// The host's inquiry found `remote`.
    pub fn handle_inquiry_result(
        &mut self,
        remote: BdAddr,
        class_of_device: ClassOfDevice,
        name: Option<String>,
    ) {
        let name = name.or_else(|| self.names.get(&remote).cloned());
        self.classes.insert(remote, class_of_device);
        let mut eir = [0u8; 240];
        if let Some(n) = &name {
            let bytes = &n.as_bytes()[..n.len().min(238)];
            eir[0] = (bytes.len() + 1) as u8;
            eir[1] = 0x09; // Complete Local Name (Assigned Numbers, 2.3)
            eir[2..2 + bytes.len()].copy_from_slice(bytes);
        }
        self.to_controller.push_back((
            unlinked_id(remote),
            LinkPdu::InquiryResponse {
                bd_addr: remote,
                class_of_device,
                eir,
            },
        ));
    }

    /// The host's inquiry ended; a guest still inquiring starts another at its next probe.
    pub fn handle_inquiry_complete(&mut self) {
        self.inquiring = false;
    }

    /// The host's LE scan found `address` (type 0 public, 1 random) advertising `data` (its
    /// advertising data and scan response as the host merged them, AD structures). The guest
    /// gets it as a non-connectable advertiser (LE connections are not carried), with what
    /// does not fit a legacy advertisement as its scan response.
    pub fn handle_le_found(&mut self, address: BdAddr, address_type: u8, data: &[u8]) {
        let (data, scan_response) = split_advertising_data(data);
        self.to_controller.push_back((
            unlinked_id(address),
            LinkPdu::Advertisement(Advertisement {
                // ADV_SCAN_IND when a scan response is there to give, ADV_NONCONN_IND else.
                advertising_type: if scan_response.is_empty() { 3 } else { 2 },
                address,
                address_type: address_type & 1,
                direct: None,
                data,
                scan_response,
            }),
        ));
    }

    /// The host's LE scan ended.
    pub fn handle_le_scan_complete(&mut self) {
        self.le_scanning = false;
    }

    /// A remote connected on the host to `psm`, one the adapter accepts: the runtime holds
    /// the accepted socket (whose largest outgoing SDU is `omtu`) under the returned name and
    /// reads it once the link asks. The guest is paged for the link if it has none to the
    /// remote, then asked with an L2CAP Connection Request; a guest that refuses either closes
    /// the socket ([`HostAction::Close`]).
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        remote: BdAddr,
        psm: u16,
        omtu: u16,
    ) -> SocketId {
        self.now = Some(now);
        let socket = SocketId(self.next_socket);
        self.next_socket += 1;
        let id = match self.id_of(remote) {
            Some(id) => id,
            None => {
                let id = self.new_remote(remote);
                if let Some(r) = self.remotes.get_mut(&id) {
                    r.answer_by = Some(now + INCOMING_ANSWER_TIMEOUT);
                }
                let class_of_device = self
                    .classes
                    .get(&remote)
                    .copied()
                    .unwrap_or(ClassOfDevice(0));
                self.to_controller.push_back((
                    id,
                    LinkPdu::Page {
                        bd_addr: remote,
                        class_of_device,
                    },
                ));
                id
            }
        };
        let Some(r) = self.remotes.get_mut(&id) else {
            return socket;
        };
        let free = r.free_cid();
        let (Some(local_cid), true) = (free, r.channels.len() < MAX_CHANNELS_PER_LINK) else {
            self.actions.push_back(HostAction::Close { socket });
            return socket;
        };
        r.channels.insert(
            local_cid,
            Channel::new(
                psm,
                socket,
                ChannelState::Offered { identifier: None },
                omtu.max(l2cap::MIN_MTU),
            ),
        );
        self.sockets.insert(socket, (id, local_cid));
        if r.up {
            self.offer_waiting(id);
        }
        socket
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.remotes
            .values()
            .flat_map(|r| [r.answer_by, r.key_size_by])
            .flatten()
            .min()
    }

    /// Gives up on the incoming links the guest did not take in time (it is not page
    /// scanning): their sockets close.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let settled: Vec<AdapterId> = self
            .remotes
            .values()
            .filter(|r| r.key_size_by.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        for id in settled {
            self.handle_key_size_read(id);
        }
        let late: Vec<AdapterId> = self
            .remotes
            .values()
            .filter(|r| r.answer_by.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        for id in late {
            if let Some(addr) = self.remotes.get(&id).map(|r| r.addr) {
                tracing::debug!(remote = %addr, "the guest did not take the link of an incoming connection");
            }
            self.to_controller.push_back((id, LinkPdu::PageCancel));
            self.drop_remote(id);
        }
    }

    /// Sends the guest a Connection Request for each offered channel not yet asked about,
    /// once the guest's link is secured.
    fn offer_waiting(&mut self, id: AdapterId) {
        let Some(r) = self.remotes.get(&id) else {
            return;
        };
        let waits = r
            .channels
            .values()
            .any(|c| c.state == ChannelState::Offered { identifier: None });
        if waits && !r.encrypted {
            self.secure_guest_link(id);
            return;
        }
        if r.key_size_by.is_some() {
            return;
        }
        let waiting: Vec<(u16, u16)> = r
            .channels
            .iter()
            .filter(|(_, c)| c.state == ChannelState::Offered { identifier: None })
            .map(|(cid, c)| (*cid, c.psm))
            .collect();
        for (local_cid, psm) in waiting {
            let Some(r) = self.remotes.get_mut(&id) else {
                return;
            };
            let ident = r.identifier();
            if let Some(c) = r.channels.get_mut(&local_cid) {
                c.state = ChannelState::Offered {
                    identifier: Some(ident),
                };
            }
            self.signal(
                id,
                ident,
                L2capSignal::ConnectionRequest {
                    psm,
                    scid: local_cid,
                },
            );
        }
    }

    /// The guest answered our Connection Request for an offered channel.
    fn guest_connect_response(
        &mut self,
        id: AdapterId,
        ident: u8,
        dcid: u16,
        scid: u16,
        result: ConnectionResult,
    ) {
        let Some(r) = self.remotes.get_mut(&id) else {
            return;
        };
        let offered = r.channels.get(&scid).is_some_and(|c| {
            c.state
                == ChannelState::Offered {
                    identifier: Some(ident),
                }
        });
        if !offered {
            // The remote gave up meanwhile (or this answers nothing we asked): a guest that
            // accepted holds a channel nobody serves, so it is told to close it.
            if result == ConnectionResult::Success && dcid >= CID_DYNAMIC_FIRST {
                let ident = r.identifier();
                self.signal(id, ident, L2capSignal::DisconnectionRequest { dcid, scid });
            }
            return;
        }
        match result {
            ConnectionResult::Pending => {}
            ConnectionResult::Success
                if dcid >= CID_DYNAMIC_FIRST
                    && !r.channels.values().any(|c| c.guest_cid == dcid) =>
            {
                if let Some(c) = r.channels.get_mut(&scid) {
                    c.guest_cid = dcid;
                    c.state = ChannelState::Config {
                        ours_accepted: false,
                        theirs_accepted: false,
                    };
                }
                self.send_config_request(id, scid);
            }
            refused => {
                tracing::debug!(remote = %r.addr, ?refused, "the guest refused an incoming channel");
                self.close_channel(id, scid);
            }
        }
    }
}

/// How long the guest's controller may take to accept the link of an incoming connection:
/// its host answers a Connection Request event within the connection accept timeout (5 s by
/// default), so this only ends pages it never saw (page scan off).
const INCOMING_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long offers wait, after we encrypted the guest's link, for its host to read the key
/// size (Linux refuses channels until it has; a host that never reads it is served anyway).
const KEY_SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The sender id for PDUs from a remote the guest has no link to (inquiry, name responses):
/// far above the counter that numbers linked remotes, so the two never meet.
fn unlinked_id(remote: BdAddr) -> AdapterId {
    AdapterId(u64::MAX - remote.to_u64())
}

/// Largest legacy advertising data and scan response (Vol 6, Part B, 2.3.1).
const LEGACY_ADV_DATA: usize = 31;

/// Splits AD structures into a legacy advertisement's data and scan response, each at most 31
/// bytes and cut only between structures; what fits neither is dropped, as is a malformed
/// tail.
fn split_advertising_data(ad: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut parts = (Vec::new(), Vec::new());
    let mut rest = ad;
    while let Some((&len, _)) = rest.split_first() {
        let Some(structure) = rest.get(..1 + usize::from(len)) else {
            break;
        };
        rest = &rest[structure.len()..];
        if len == 0 {
            break;
        }
        if parts.0.len() + structure.len() <= LEGACY_ADV_DATA && parts.1.is_empty() {
            parts.0.extend_from_slice(structure);
        } else if parts.1.len() + structure.len() <= LEGACY_ADV_DATA {
            parts.1.extend_from_slice(structure);
        }
    }
    parts
}

fn reject(reason: u16, data: &[u8]) -> L2capSignal {
    L2capSignal::CommandReject {
        reason,
        data: data.to_vec(),
    }
}

fn name_field(name: &str) -> [u8; 248] {
    let mut out = [0u8; 248];
    let n = name.len().min(247);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// The LMP features page 0 the guest sees for every remote: encryption, Secure Simple Pairing
/// and extended features, which is what makes the guest's host pair with SSP.
fn proxy_features() -> [u8; 8] {
    let bits = [
        lmp::ENCRYPTION,
        lmp::SECURE_SIMPLE_PAIRING_CONTROLLER,
        lmp::EXTENDED_FEATURES,
    ];
    bits.iter().fold(0u64, |f, b| f | (1 << b)).to_le_bytes()
}

/// Why a host packet was refused by a host-linked adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostLinkError {
    /// The controller refused a command packet.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The controller refused an ACL packet.
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// The most PDUs shuttled between the controller and the link per call before a loop is
/// assumed (each PDU in normal operation produces at most a handful).
const MAX_SHUTTLED: usize = 1 << 16;

/// One emulated controller on the host link: what [`crate::Radio`] is for the simulated
/// medium, for a single adapter.
#[derive(Debug)]
pub struct HostLinkedAdapter {
    controller: Controller,
    link: HostLink,
}

impl HostLinkedAdapter {
    /// A controller with `config` on a host link with the stored proxy `keys`. The proxy
    /// keys the guest gets are drawn by the controller: give `config.entropy` real entropy.
    pub fn new(id: AdapterId, config: ControllerConfig, keys: BTreeMap<BdAddr, [u8; 16]>) -> Self {
        let (fragment_len, entropy) = (config.acl_data_packet_length, config.entropy);
        Self {
            controller: Controller::new(id, config),
            link: HostLink::new(keys, fragment_len, entropy),
        }
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The host link.
    pub fn link(&self) -> &HostLink {
        &self.link
    }

    /// Hands a command packet from the guest's host to the controller.
    pub fn handle_command(&mut self, now: Instant, packet: &[u8]) -> Result<(), HostLinkError> {
        let r = self.controller.handle_command(now, packet);
        if r.is_ok() {
            self.watch_command(packet);
        }
        self.shuttle(now);
        Ok(r?)
    }

    /// Tells the link about the guest's commands it waits for.
    fn watch_command(&mut self, packet: &[u8]) {
        // Read Encryption Key Size (Vol 4, Part E, 7.5.7): opcode 0x1408, a 2-byte handle.
        if let [0x08, 0x14, 2, lo, hi, ..] = *packet {
            let handle = u16::from_le_bytes([lo, hi]) & 0x0fff;
            let peer = self
                .controller
                .links()
                .into_iter()
                .find(|l| l.handle == handle)
                .map(|l| l.peer);
            if let Some(peer) = peer {
                self.link.handle_key_size_read(peer);
            }
        }
    }

    /// Hands an ACL packet from the guest's host to the controller.
    pub fn handle_acl(&mut self, now: Instant, packet: &[u8]) -> Result<(), HostLinkError> {
        let r = self.controller.handle_acl(now, packet);
        self.shuttle(now);
        Ok(r?)
    }

    /// The next packet for the guest's host.
    pub fn poll_to_host(&mut self, now: Instant) -> Option<ToHost> {
        let p = self.controller.poll_to_host();
        if self.controller.has_transmit() {
            self.shuttle(now);
        }
        p
    }

    /// Whether packets wait for the guest's host.
    pub fn has_to_host(&self) -> bool {
        self.controller.has_to_host()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.controller.poll_timeout(), self.link.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires the controller's and the link's timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.controller.handle_timeout(now);
        self.link.handle_timeout(now);
        self.shuttle(now);
    }

    /// The next piece of socket work.
    pub fn poll_action(&mut self) -> Option<HostAction> {
        self.link.poll_action()
    }

    /// Whether socket work waits for [`poll_action`](Self::poll_action).
    pub fn has_action(&self) -> bool {
        self.link.has_action()
    }

    /// [`HostLink::take_socket_actions`].
    pub fn take_socket_actions(&mut self, socket: SocketId) -> Vec<HostAction> {
        self.link.take_socket_actions(socket)
    }

    /// Feeds the link something from the runtime, then carries on what that produced.
    pub fn with_link<T>(&mut self, now: Instant, f: impl FnOnce(&mut HostLink) -> T) -> T {
        let out = f(&mut self.link);
        self.shuttle(now);
        out
    }

    fn shuttle(&mut self, now: Instant) {
        self.link.set_now(now);
        let mut moved = 0usize;
        loop {
            let mut idle = true;
            while let Some(t) = self.controller.poll_transmit() {
                self.link.handle_transmit(t);
                idle = false;
                moved += 1;
            }
            while let Some((from, pdu)) = self.link.poll_to_controller() {
                self.controller.handle_link(now, from, pdu);
                idle = false;
                moved += 1;
            }
            if idle {
                return;
            }
            if moved > MAX_SHUTTLED {
                tracing::error!("host link: PDU loop between controller and link, stopping");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
