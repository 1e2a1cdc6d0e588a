//! The emulated Bluetooth controller: one per virtual adapter.
//!
//! A sans-IO state machine in the quinn-proto style. The host side goes in through
//! [`Controller::handle_command`] and [`Controller::handle_acl`] (packet-typed: an H4 stream,
//! USB endpoints or `/dev/vhci` all map onto these), and comes out through
//! [`Controller::poll_to_host`]. The radio side goes in through [`Controller::handle_link`] and
//! out through [`Controller::poll_transmit`]. Timers: [`Controller::poll_timeout`] says when,
//! [`Controller::handle_timeout`] fires them. Time is always passed in, never read.
//!
//! Commands are dispatched through a handler table keyed by opcode (see `handlers.rs`); the
//! Supported Commands mask (Vol 4, Part E, 6.27) and the LMP and LE feature bits are derived
//! from that table, so nothing is advertised that has no handler.

mod handlers;
mod link;
pub mod supported;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::medium::{AdapterId, Dest, LinkPdu, Transmit, Transport};
use crate::rng::KeyRng;
use crate::wire::{
    self, AclRepr, BdAddr, ClassOfDevice, CommandPacket, ErrorCode, HciCommand, HciEvent,
    LeMetaEvent, Opcode, PacketBoundary, PacketError,
};

pub use handlers::{Handler, Needs, HANDLERS};

/// What a controller is, as opposed to what its host sets: identity and buffer sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The public BD_ADDR (stable across resets; give each adapter its own).
    pub address: BdAddr,
    /// The local name until the host writes one.
    pub name: String,
    /// The Class of Device until the host writes one.
    pub class_of_device: ClassOfDevice,
    /// BR/EDR supported.
    pub bredr: bool,
    /// LE supported.
    pub le: bool,
    /// HC_ACL_Data_Packet_Length (Read Buffer Size, Vol 4, Part E, 7.4.5).
    pub acl_data_packet_length: u16,
    /// HC_Total_Num_ACL_Data_Packets.
    pub total_num_acl_data_packets: u16,
    /// LE_ACL_Data_Packet_Length (LE Read Buffer Size, 7.8.2).
    pub le_acl_data_packet_length: u16,
    /// Total_Num_LE_ACL_Data_Packets.
    pub total_num_le_acl_data_packets: u8,
    /// Most ACL packets queued towards the host; beyond it the sending peer gets no buffer
    /// back (Number Of Completed Packets) until the host reads.
    pub max_acl_to_host: usize,
    /// Most events queued towards the host; beyond it reports (inquiry results, advertising
    /// reports) are dropped, as a real controller drops them when its buffers are full.
    pub max_events_to_host: usize,
    /// Company_Identifier reported by Read Local Version Information.
    pub company_identifier: u16,
    /// Mixed into the seed of the controller's random numbers (link keys, numeric values).
    /// Zero keeps a simulation reproducible; a controller whose keys protect something real
    /// (a proxy key on the host link) gets entropy from the runtime.
    pub entropy: u64,
}

impl ControllerConfig {
    /// A dual-mode controller with `address` and sensible buffer sizes.
    pub fn new(address: BdAddr) -> Self {
        Self {
            address,
            name: "periwire".to_owned(),
            class_of_device: ClassOfDevice(0),
            bredr: true,
            le: true,
            acl_data_packet_length: 1021,
            total_num_acl_data_packets: 8,
            le_acl_data_packet_length: 251,
            total_num_le_acl_data_packets: 8,
            max_acl_to_host: 64,
            max_events_to_host: 1024,
            // The Linux Foundation: a neutral identifier that triggers no vendor quirk.
            company_identifier: 0x05f1,
            entropy: 0,
        }
    }
}

/// A packet for the host: an event or ACL data, without any transport framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToHost {
    /// An HCI Event packet (Vol 4, Part E, 5.4.4).
    Event(Vec<u8>),
    /// An HCI ACL Data packet (Vol 4, Part E, 5.4.2).
    Acl(Vec<u8>),
}

/// Why a command packet from the host was refused outright (a well-formed packet with a bad
/// opcode or bad parameters is answered on the wire instead, with a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The packet's length does not match its header.
    #[error("malformed command packet: {0}")]
    Packet(#[from] PacketError),
}

/// Why an ACL packet from the host was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// The packet's length does not match its header.
    #[error("malformed ACL packet: {0}")]
    Packet(#[from] PacketError),
    /// No connection has this handle (a race with a disconnection, or a host bug).
    #[error("ACL data for unknown handle {0:#05x}")]
    UnknownHandle(u16),
    /// The data is longer than the advertised buffer.
    #[error("ACL data of {len} bytes exceeds the {max} byte buffer")]
    TooLong {
        /// Data length.
        len: usize,
        /// Advertised buffer size.
        max: usize,
    },
    /// The host sent more packets than there are buffers (Data Buffer Overflow sent).
    #[error("host overflowed the ACL buffers")]
    BufferOverflow,
}

/// A connection's role (Vol 4, Part E, 7.7.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Central (0x00).
    Central,
    /// Peripheral (0x01).
    Peripheral,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Central => 0,
            Role::Peripheral => 1,
        }
    }
}

/// One open connection, as [`Controller::links`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Connection_Handle.
    pub handle: u16,
    /// The peer adapter.
    pub peer: AdapterId,
    /// The peer's address (BR/EDR, or LE identity as seen on air).
    pub peer_address: BdAddr,
    /// The peer's LE address type (0 public, 1 random; 0 for BR/EDR).
    pub peer_address_type: u8,
    /// BR/EDR or LE.
    pub transport: Transport,
    /// Our role.
    pub role: Role,
    /// Whether the link is encrypted.
    pub encrypted: bool,
}

/// Authentication progress on a BR/EDR link.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    Idle,
    /// Initiator: Link Key Request sent to the host.
    AwaitHostLinkKey,
    /// Initiator: key sent to the peer for checking.
    AwaitKeyCheck {
        key: [u8; 16],
    },
    /// Initiator: Pairing Start sent.
    AwaitPairingStart,
    /// Initiator: IO Capability Request sent to the host.
    AwaitHostIoCap,
    /// Initiator: our IO capabilities sent to the peer.
    AwaitPeerIoCap {
        io: u8,
        auth_req: u8,
    },
    /// Initiator: PIN Code Request sent to the host.
    AwaitHostPin,
    /// Initiator: PIN sent to the peer.
    AwaitPinResult {
        link_key: [u8; 16],
    },
    /// Responder: Link Key Request sent to the host; the initiator's key to compare.
    ResponderAwaitHostLinkKey {
        key: [u8; 16],
    },
    /// Responder: IO Capability Request sent to the host.
    ResponderAwaitHostIoCap,
    /// Responder: our IO capabilities sent; waiting for the values.
    ResponderAwaitValues,
    /// Responder: PIN Code Request sent to the host.
    ResponderAwaitHostPin {
        pin: Vec<u8>,
        link_key: [u8; 16],
    },
    /// Both: User Confirmation Request sent to the host.
    Confirm {
        initiator: bool,
        link_key: [u8; 16],
        key_type: u8,
        mine: Option<bool>,
        theirs: Option<bool>,
    },
}

/// LE encryption progress.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeEnc {
    Idle,
    /// Central: LL_ENC_REQ sent.
    CentralWaiting,
    /// Peripheral: LE Long Term Key Request sent to the host; the central's key.
    PeripheralAwaitHost {
        ltk: [u8; 16],
    },
}

#[derive(Debug, Clone)]
struct Connection {
    handle: u16,
    peer: AdapterId,
    transport: Transport,
    peer_addr: BdAddr,
    peer_addr_type: u8,
    role: Role,
    encrypted: bool,
    link_key: Option<([u8; 16], u8)>,
    auth: Auth,
    le_enc: LeEnc,
    /// Host packets sent to the peer and not yet acknowledged.
    tx_in_flight: u16,
    /// Interval, latency, timeout (LE).
    params: (u16, u16, u16),
}

impl Connection {
    fn new(
        handle: u16,
        peer: AdapterId,
        transport: Transport,
        peer_addr: BdAddr,
        peer_addr_type: u8,
        role: Role,
    ) -> Self {
        Self {
            handle,
            peer,
            transport,
            peer_addr,
            peer_addr_type,
            role,
            encrypted: false,
            link_key: None,
            auth: Auth::Idle,
            le_enc: LeEnc::Idle,
            tx_in_flight: 0,
            params: (0x0018, 0, 0x01f4),
        }
    }
}

#[derive(Debug, Clone)]
struct Inquiry {
    deadline: Instant,
    next_probe: Instant,
    max_responses: u8,
    found: BTreeSet<BdAddr>,
}

#[derive(Debug, Clone)]
struct Incoming {
    from: AdapterId,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Scanning {
    active: bool,
    filter_duplicates: bool,
    filter_policy: u8,
    seen: BTreeSet<(BdAddr, u8, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LeConnecting {
    /// Waiting for a connectable advertisement from the target.
    Waiting,
    /// CONNECT_IND sent to this adapter, advertising with this address.
    Sent {
        to: AdapterId,
        address: BdAddr,
        address_type: u8,
    },
}

#[derive(Debug, Clone)]
struct PendingLeConnection {
    filter_policy: u8,
    peer_address_type: u8,
    peer_address: BdAddr,
    own_address_type: u8,
    params: (u16, u16, u16),
    state: LeConnecting,
}

/// Host-writable state that HCI_Reset restores (Vol 4, Part E, 7.3.2).
#[derive(Debug, Clone)]
struct HostState {
    event_mask: u64,
    event_mask_page_2: u64,
    le_event_mask: u64,
    local_name: [u8; 248],
    class_of_device: ClassOfDevice,
    scan_enable: u8,
    page_timeout: u16,
    connection_accept_timeout: u16,
    page_scan_activity: (u16, u16),
    inquiry_scan_activity: (u16, u16),
    authentication_enable: u8,
    voice_setting: u16,
    inquiry_mode: u8,
    inquiry_scan_type: u8,
    page_scan_type: u8,
    eir: [u8; 240],
    fec_required: u8,
    simple_pairing_mode: u8,
    secure_connections_host: u8,
    le_host: u8,
    pin_type: u8,
    default_link_policy: u16,
    iac_laps: Vec<[u8; 3]>,
    random_address: BdAddr,
    advertising_parameters: crate::wire::LeSetAdvertisingParameters,
    advertising_data: Vec<u8>,
    scan_response_data: Vec<u8>,
    advertising: bool,
    scan_parameters: crate::wire::LeSetScanParameters,
    filter_accept_list: Vec<(u8, BdAddr)>,
}

impl HostState {
    fn new(config: &ControllerConfig) -> Self {
        let mut local_name = [0u8; 248];
        let n = config.name.len().min(247);
        local_name[..n].copy_from_slice(&config.name.as_bytes()[..n]);
        Self {
            event_mask: 0x0000_1fff_ffff_ffff,
            event_mask_page_2: 0,
            le_event_mask: 0x1f,
            local_name,
            class_of_device: config.class_of_device,
            scan_enable: 0,
            page_timeout: 0x2000,
            connection_accept_timeout: 0x1f40,
            page_scan_activity: (0x0800, 0x0012),
            inquiry_scan_activity: (0x1000, 0x0012),
            authentication_enable: 0,
            voice_setting: 0x0060,
            inquiry_mode: 0,
            inquiry_scan_type: 0,
            page_scan_type: 0,
            eir: [0; 240],
            fec_required: 0,
            simple_pairing_mode: 0,
            secure_connections_host: 0,
            le_host: 0,
            pin_type: 0,
            default_link_policy: 0,
            iac_laps: vec![[0x33, 0x8b, 0x9e]],
            random_address: BdAddr::ANY,
            advertising_parameters: crate::wire::LeSetAdvertisingParameters {
                advertising_interval_min: 0x0800,
                advertising_interval_max: 0x0800,
                advertising_type: 0,
                own_address_type: 0,
                peer_address_type: 0,
                peer_address: BdAddr::ANY,
                advertising_channel_map: 0x07,
                advertising_filter_policy: 0,
            },
            advertising_data: Vec::new(),
            scan_response_data: Vec::new(),
            advertising: false,
            scan_parameters: crate::wire::LeSetScanParameters {
                le_scan_type: 0,
                le_scan_interval: 0x0010,
                le_scan_window: 0x0010,
                own_address_type: 0,
                scanning_filter_policy: 0,
            },
            filter_accept_list: Vec::new(),
        }
    }
}

/// Size of the LE Filter Accept List (LE Read Filter Accept List Size).
pub const FILTER_ACCEPT_LIST_SIZE: u8 = 16;

/// One emulated controller.
#[derive(Debug)]
pub struct Controller {
    id: AdapterId,
    config: ControllerConfig,
    host: HostState,
    connections: BTreeMap<u16, Connection>,
    next_handle: u16,
    inquiry: Option<Inquiry>,
    /// Outgoing pages (Create Connection) by target address, with their deadline.
    pages: BTreeMap<BdAddr, Instant>,
    /// Incoming connection requests by initiator address.
    incoming: BTreeMap<BdAddr, Incoming>,
    /// Remote name requests by target address, with their deadline.
    name_requests: BTreeMap<BdAddr, Instant>,
    scanning: Option<Scanning>,
    le_connecting: Option<PendingLeConnection>,
    /// Host packets in flight, BR/EDR pool and LE pool.
    acl_in_flight: [u16; 2],
    to_host: VecDeque<ToHost>,
    acl_to_host: usize,
    /// ACL data received while the host queue was full: (from, transport, packet).
    rx_backlog: VecDeque<(AdapterId, Transport, Vec<u8>)>,
    transmit: VecDeque<Transmit>,
    rng: KeyRng,
    supported_commands: [u8; 64],
}

/// The LE event mask bit of LE Meta (Set Event Mask bit 61).
const LE_META_EVENT_BIT: u32 = 61;

impl Controller {
    /// A controller in its power-on state.
    pub fn new(id: AdapterId, config: ControllerConfig) -> Self {
        let seed =
            config.address.to_u64() ^ (id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ config.entropy
                | 1;
        let host = HostState::new(&config);
        let mut c = Self {
            id,
            host,
            connections: BTreeMap::new(),
            next_handle: 1,
            inquiry: None,
            pages: BTreeMap::new(),
            incoming: BTreeMap::new(),
            name_requests: BTreeMap::new(),
            scanning: None,
            le_connecting: None,
            acl_in_flight: [0, 0],
            to_host: VecDeque::new(),
            acl_to_host: 0,
            rx_backlog: VecDeque::new(),
            transmit: VecDeque::new(),
            rng: KeyRng::new(seed),
            supported_commands: [0; 64],
            config,
        };
        c.supported_commands = c.derive_supported_commands();
        c
    }

    /// The adapter this controller is on the radio.
    pub fn id(&self) -> AdapterId {
        self.id
    }

    /// The controller's identity and buffer sizes.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The public BD_ADDR.
    pub fn bd_addr(&self) -> BdAddr {
        self.config.address
    }

    /// Whether BR/EDR is supported.
    pub fn bredr_enabled(&self) -> bool {
        self.config.bredr
    }

    /// The local name as the host last wrote it.
    pub fn local_name(&self) -> String {
        let end = self
            .host
            .local_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(248);
        String::from_utf8_lossy(&self.host.local_name[..end]).into_owned()
    }

    /// Open connections, for status listings.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.connections
            .values()
            .map(|c| LinkInfo {
                handle: c.handle,
                peer: c.peer,
                peer_address: c.peer_addr,
                peer_address_type: c.peer_addr_type,
                transport: c.transport,
                role: c.role,
                encrypted: c.encrypted,
            })
            .collect()
    }

    /// The Supported_Commands parameter (derived from the handler table).
    pub fn supported_commands(&self) -> [u8; 64] {
        self.supported_commands
    }

    /// Whether the handler table serves `opcode` on this controller.
    pub fn supports(&self, opcode: Opcode) -> bool {
        self.handler(opcode).is_some()
    }

    fn handler(&self, opcode: Opcode) -> Option<Handler> {
        HANDLERS
            .iter()
            .find(|(o, _, needs)| *o == opcode && self.available(*needs))
            .map(|(_, h, _)| *h)
    }

    fn available(&self, needs: Needs) -> bool {
        match needs {
            Needs::Always => true,
            Needs::BrEdr => self.config.bredr,
            Needs::Le => self.config.le,
        }
    }

    fn derive_supported_commands(&self) -> [u8; 64] {
        let mut mask = [0u8; 64];
        for (opcode, _, needs) in HANDLERS {
            if !self.available(*needs) {
                continue;
            }
            if let Some((octet, bit)) = supported::supported_command_bit(*opcode) {
                if let Some(b) = mask.get_mut(octet) {
                    *b |= 1 << bit;
                }
            }
        }
        mask
    }

    /// LMP features page 0 (Vol 2, Part C, 3.3), derived from the handler table.
    pub fn lmp_features(&self) -> [u8; 8] {
        use crate::wire as w;
        use supported::lmp;
        let mut f = 0u64;
        let mut set = |bit: u32, on: bool| {
            if on {
                f |= 1 << bit;
            }
        };
        let bredr = self.config.bredr;
        set(
            lmp::ENCRYPTION,
            bredr && self.supports(w::SetConnectionEncryption::CODE),
        );
        set(
            lmp::RSSI_WITH_INQUIRY_RESULTS,
            bredr && self.supports(w::WriteInquiryMode::CODE),
        );
        set(lmp::BR_EDR_NOT_SUPPORTED, !bredr);
        set(
            lmp::LE_SUPPORTED_CONTROLLER,
            self.config.le && self.supports(w::LeCreateConnection::CODE),
        );
        set(
            lmp::EXTENDED_INQUIRY_RESPONSE,
            bredr && self.supports(w::WriteExtendedInquiryResponse::CODE),
        );
        set(
            lmp::SIMULTANEOUS_LE_BR_EDR,
            bredr && self.config.le && self.supports(w::LeCreateConnection::CODE),
        );
        set(
            lmp::SECURE_SIMPLE_PAIRING_CONTROLLER,
            bredr && self.supports(w::IoCapabilityRequestReply::CODE),
        );
        // handle_acl accepts PB 0b00 as the start of a PDU on every link.
        set(lmp::NON_FLUSHABLE_PACKET_BOUNDARY_FLAG, true);
        set(
            lmp::EXTENDED_FEATURES,
            self.supports(w::ReadLocalExtendedFeatures::CODE),
        );
        f.to_le_bytes()
    }

    /// LMP features page 1: the host features (Vol 2, Part C, 3.3), from what the host wrote.
    pub fn lmp_host_features(&self) -> [u8; 8] {
        use supported::lmp;
        let mut f = 0u64;
        if self.host.simple_pairing_mode != 0 {
            f |= 1 << lmp::PAGE1_SSP_HOST;
        }
        if self.host.le_host != 0 {
            f |= 1 << lmp::PAGE1_LE_HOST;
        }
        if self.host.secure_connections_host != 0 {
            f |= 1 << lmp::PAGE1_SECURE_CONNECTIONS_HOST;
        }
        f.to_le_bytes()
    }

    /// LE features (Vol 6, Part B, 4.6), derived from the handler table.
    pub fn le_features(&self) -> [u8; 8] {
        use crate::wire as w;
        let mut f = 0u64;
        if self.supports(w::LeEnableEncryption::CODE) {
            f |= 1 << supported::le::ENCRYPTION;
        }
        if self.supports(w::LeReadRemoteFeatures::CODE) {
            f |= 1 << supported::le::PERIPHERAL_INITIATED_FEATURES_EXCHANGE;
        }
        f.to_le_bytes()
    }

    // ----- host side -----

    /// Handles a command packet from the host (no transport framing). The answer (Command
    /// Complete or Command Status, and any later events) comes out of
    /// [`poll_to_host`](Self::poll_to_host).
    pub fn handle_command(&mut self, now: Instant, packet: &[u8]) -> Result<(), CommandError> {
        let view = CommandPacket::new_checked(packet)?;
        let opcode = view.opcode();
        let Some(handler) = self.handler(opcode) else {
            tracing::debug!(adapter = %self.id, ?opcode, "unknown HCI command");
            self.push_event(HciEvent::command_complete(
                opcode,
                vec![ErrorCode::UnknownHciCommand.to_u8()],
            ));
            return Ok(());
        };
        let command = match HciCommand::parse(&view) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(adapter = %self.id, ?opcode, %e, "bad command parameters");
                match handler {
                    Handler::Sync(_) => self.push_event(HciEvent::command_complete(
                        opcode,
                        vec![e.error_code().to_u8()],
                    )),
                    Handler::Async(_) => {
                        self.push_event(HciEvent::command_status(e.error_code(), opcode))
                    }
                }
                return Ok(());
            }
        };
        tracing::trace!(adapter = %self.id, ?command, "command");
        match handler {
            Handler::Sync(f) => {
                let ret = f(self, now, &command);
                if !ret.is_empty() {
                    self.push_event(HciEvent::command_complete(opcode, ret));
                }
            }
            Handler::Async(f) => {
                let mark = self.to_host.len();
                let status = f(self, now, &command);
                let cs = ToHost::Event(HciEvent::command_status(status, opcode).to_packet());
                let at = mark.min(self.to_host.len());
                self.to_host.insert(at, cs);
            }
        }
        Ok(())
    }

    /// Handles an ACL data packet from the host (no transport framing).
    pub fn handle_acl(&mut self, _now: Instant, packet: &[u8]) -> Result<(), AclError> {
        let acl = AclRepr::parse_bytes(packet)?;
        let conn = self
            .connections
            .get(&acl.handle)
            .ok_or(AclError::UnknownHandle(acl.handle))?;
        let (pool, max, total) = match conn.transport {
            Transport::BrEdr => (
                0,
                usize::from(self.config.acl_data_packet_length),
                self.config.total_num_acl_data_packets,
            ),
            Transport::Le => (
                1,
                usize::from(self.config.le_acl_data_packet_length),
                u16::from(self.config.total_num_le_acl_data_packets),
            ),
        };
        if acl.data.len() > max {
            return Err(AclError::TooLong {
                len: acl.data.len(),
                max,
            });
        }
        if self.acl_in_flight[pool] >= total {
            self.push_event(HciEvent::DataBufferOverflow(
                crate::wire::DataBufferOverflow { link_type: 0x01 },
            ));
            return Err(AclError::BufferOverflow);
        }
        let (peer, transport) = (conn.peer, conn.transport);
        self.acl_in_flight[pool] += 1;
        if let Some(c) = self.connections.get_mut(&acl.handle) {
            c.tx_in_flight += 1;
        }
        self.send(
            Dest::Adapter(peer),
            LinkPdu::Acl {
                transport,
                first: acl.packet_boundary.is_first(),
                data: acl.data.to_vec(),
            },
        );
        Ok(())
    }

    /// The next packet for the host.
    pub fn poll_to_host(&mut self) -> Option<ToHost> {
        let p = self.to_host.pop_front()?;
        if matches!(p, ToHost::Acl(_)) {
            self.acl_to_host = self.acl_to_host.saturating_sub(1);
            self.drain_backlog();
        }
        Some(p)
    }

    /// Whether packets wait for the host.
    pub fn has_to_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    // ----- radio side -----

    /// The next PDU for the radio.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmit.pop_front()
    }

    /// Whether PDUs wait for the radio.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let inquiry = self.inquiry.as_ref().map(|i| i.deadline.min(i.next_probe));
        [
            inquiry,
            self.pages.values().min().copied(),
            self.incoming.values().map(|i| i.deadline).min(),
            self.name_requests.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(inq) = &mut self.inquiry {
            if inq.deadline <= now {
                self.inquiry = None;
                self.push_event(HciEvent::InquiryComplete(crate::wire::InquiryComplete {
                    status: ErrorCode::Success,
                }));
            } else if inq.next_probe <= now {
                inq.next_probe = now + INQUIRY_PROBE_INTERVAL;
                self.send(Dest::Broadcast, LinkPdu::Inquiry);
            }
        }
        for (addr, _) in take_due(&mut self.pages, |t| *t <= now) {
            self.send(Dest::BrEdr(addr), LinkPdu::PageCancel);
            self.connection_complete_failed(ErrorCode::PageTimeout, addr);
        }
        for (addr, incoming) in take_due(&mut self.incoming, |i| i.deadline <= now) {
            let from = incoming.from;
            let reason = ErrorCode::ConnectionAcceptTimeoutExceeded;
            self.send(
                Dest::Adapter(from),
                LinkPdu::PageReject {
                    bd_addr: self.config.address,
                    reason,
                },
            );
            self.connection_complete_failed(reason, addr);
        }
        for (addr, _) in take_due(&mut self.name_requests, |t| *t <= now) {
            self.push_event(HciEvent::RemoteNameRequestComplete(
                crate::wire::RemoteNameRequestComplete {
                    status: ErrorCode::PageTimeout,
                    bd_addr: addr,
                    remote_name: [0; 248],
                },
            ));
        }
    }

    // ----- helpers shared by handlers and link code -----

    fn send(&mut self, dest: Dest, pdu: LinkPdu) {
        self.transmit.push_back(Transmit { dest, pdu });
    }

    fn event_enabled(&self, ev: &HciEvent) -> bool {
        let code = ev.event_code();
        match code {
            // Command Complete / Status and Number Of Completed Packets are never masked.
            0x0e | 0x0f | 0x13 => true,
            0x3e => {
                if self.host.event_mask & (1 << LE_META_EVENT_BIT) == 0 {
                    return false;
                }
                match ev {
                    HciEvent::LeMeta(m) => {
                        let sub = u32::from(m.event.code());
                        (1..=64).contains(&sub) && self.host.le_event_mask & (1 << (sub - 1)) != 0
                    }
                    _ => true,
                }
            }
            1..=64 => self.host.event_mask & (1 << (code - 1)) != 0,
            65..=128 => self.host.event_mask_page_2 & (1 << (code - 65)) != 0,
            _ => true,
        }
    }

    fn push_event(&mut self, ev: HciEvent) {
        if !self.event_enabled(&ev) {
            return;
        }
        let droppable = matches!(
            ev,
            HciEvent::InquiryResult(_)
                | HciEvent::InquiryResultWithRssi(_)
                | HciEvent::ExtendedInquiryResult(_)
                | HciEvent::LeMeta(crate::wire::LeMeta {
                    event: LeMetaEvent::LeAdvertisingReport(_)
                })
        );
        if droppable && self.to_host.len() - self.acl_to_host >= self.config.max_events_to_host {
            tracing::debug!(adapter = %self.id, "host event queue full, dropping a report");
            return;
        }
        self.to_host.push_back(ToHost::Event(ev.to_packet()));
    }

    /// Reports one of `handle`'s ACL packets done (Number Of Completed Packets). While the
    /// host has not yet taken the last such event for the same handle, that event counts this
    /// packet too: each event costs the host a wake-up, and a busy link would otherwise send
    /// one per packet.
    fn complete_packet(&mut self, handle: u16) {
        /// Event code, parameter length 5, one handle: the layout of a single-handle event.
        const SINGLE: [u8; 3] = [0x13, 5, 1];
        if let Some(ToHost::Event(p)) = self.to_host.back_mut() {
            if let [a, b, c, h0, h1, n0, n1] = p.as_mut_slice() {
                let count = u16::from_le_bytes([*n0, *n1]);
                if [*a, *b, *c] == SINGLE
                    && u16::from_le_bytes([*h0, *h1]) == handle
                    && count < u16::MAX
                {
                    [*n0, *n1] = (count + 1).to_le_bytes();
                    return;
                }
            }
        }
        self.push_event(HciEvent::NumberOfCompletedPackets(
            wire::NumberOfCompletedPackets {
                handles: wire::Counted(vec![wire::CompletedPackets {
                    connection_handle: handle,
                    num_completed_packets: 1,
                }]),
            },
        ));
    }

    fn le_meta(&mut self, ev: impl Into<LeMetaEvent>) {
        self.push_event(HciEvent::le_meta(ev));
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn random_key(&mut self) -> [u8; 16] {
        self.rng.key()
    }

    fn alloc_handle(&mut self) -> u16 {
        loop {
            let h = self.next_handle;
            self.next_handle = if h >= 0x0eff { 1 } else { h + 1 };
            if !self.connections.contains_key(&h) {
                return h;
            }
        }
    }

    fn conn_by_peer(&self, peer: AdapterId, transport: Transport) -> Option<u16> {
        self.connections
            .values()
            .find(|c| c.peer == peer && c.transport == transport)
            .map(|c| c.handle)
    }

    fn conn_by_addr(&self, addr: BdAddr) -> Option<u16> {
        self.connections
            .values()
            .find(|c| c.peer_addr == addr && c.transport == Transport::BrEdr)
            .map(|c| c.handle)
    }

    fn connection_complete_failed(&mut self, status: ErrorCode, addr: BdAddr) {
        self.push_event(HciEvent::ConnectionComplete(
            crate::wire::ConnectionComplete {
                status,
                connection_handle: 0,
                bd_addr: addr,
                link_type: 0x01,
                encryption_enabled: 0,
            },
        ));
    }

    /// Removes a connection and tells the host (Disconnection Complete).
    fn drop_connection(&mut self, handle: u16, reason: ErrorCode) {
        let Some(c) = self.connections.remove(&handle) else {
            return;
        };
        let pool = match c.transport {
            Transport::BrEdr => 0,
            Transport::Le => 1,
        };
        // The host reclaims the buffers of a closed connection itself (Vol 4, Part E, 4.3).
        self.acl_in_flight[pool] = self.acl_in_flight[pool].saturating_sub(c.tx_in_flight);
        self.rx_backlog
            .retain(|(from, t, _)| !(*from == c.peer && *t == c.transport));
        self.push_event(HciEvent::DisconnectionComplete(
            crate::wire::DisconnectionComplete {
                status: ErrorCode::Success,
                connection_handle: handle,
                reason,
            },
        ));
    }

    /// Queues received ACL data for the host, or holds it while the host queue is full.
    fn receive_acl(&mut self, from: AdapterId, transport: Transport, first: bool, data: Vec<u8>) {
        let Some(handle) = self.conn_by_peer(from, transport) else {
            return;
        };
        let packet = AclRepr {
            handle,
            packet_boundary: if first {
                PacketBoundary::FirstFlushable
            } else {
                PacketBoundary::Continuing
            },
            broadcast_flag: 0,
            data: &data,
        }
        .to_packet();
        if self.rx_backlog.is_empty() && self.acl_to_host < self.config.max_acl_to_host {
            self.acl_to_host += 1;
            self.to_host.push_back(ToHost::Acl(packet));
            self.send(Dest::Adapter(from), LinkPdu::AclAck { transport });
        } else {
            self.rx_backlog.push_back((from, transport, packet));
        }
    }

    fn drain_backlog(&mut self) {
        while self.acl_to_host < self.config.max_acl_to_host {
            let Some((from, transport, packet)) = self.rx_backlog.pop_front() else {
                break;
            };
            self.acl_to_host += 1;
            self.to_host.push_back(ToHost::Acl(packet));
            self.send(Dest::Adapter(from), LinkPdu::AclAck { transport });
        }
    }

    /// The LE address and type this controller advertises / initiates with.
    fn own_le_address(&self, own_address_type: u8) -> Option<(BdAddr, u8)> {
        match own_address_type & 1 {
            0 => Some((self.config.address, 0)),
            _ if self.host.random_address != BdAddr::ANY => Some((self.host.random_address, 1)),
            _ => None,
        }
    }

    /// Resets everything the host set (HCI_Reset) and drops every link.
    fn reset(&mut self) {
        let handles: Vec<u16> = self.connections.keys().copied().collect();
        for h in handles {
            if let Some(c) = self.connections.remove(&h) {
                self.send(
                    Dest::Adapter(c.peer),
                    LinkPdu::Disconnect {
                        transport: c.transport,
                        reason: ErrorCode::RemoteDeviceTerminatedPowerOff,
                    },
                );
            }
        }
        let pages: Vec<BdAddr> = self.pages.keys().copied().collect();
        for addr in pages {
            self.send(Dest::BrEdr(addr), LinkPdu::PageCancel);
        }
        self.host = HostState::new(&self.config);
        self.inquiry = None;
        self.pages.clear();
        self.incoming.clear();
        self.name_requests.clear();
        self.scanning = None;
        self.le_connecting = None;
        self.acl_in_flight = [0, 0];
        self.to_host.clear();
        self.acl_to_host = 0;
        self.rx_backlog.clear();
    }
}

/// How often an ongoing inquiry is repeated so that devices entering inquiry scan late are
/// found (one inquiry train, Vol 2, Part B, 8.4.1: 1.28 s).
pub const INQUIRY_PROBE_INTERVAL: Duration = Duration::from_millis(1280);

/// Baseband slots (0.625 ms) as a duration.
fn slots(n: u16) -> Duration {
    Duration::from_micros(625 * u64::from(n))
}

/// Removes and returns the entries of `map` that are `due`, in key order.
fn take_due<V>(map: &mut BTreeMap<BdAddr, V>, due: impl Fn(&V) -> bool) -> Vec<(BdAddr, V)> {
    let keys: Vec<BdAddr> = map
        .iter()
        .filter(|(_, v)| due(v))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k, v)))
        .collect()
}
