//! The simulated radio: every controller of a process meets the others here.
//!
//! Like Bumble's `LocalLink`, the radio does not model the air interface. Controllers hand it
//! link-layer messages ([`LinkPdu`]) addressed to a [`Dest`]; the radio resolves the
//! destination and delivers them, in order, to the other controllers' `handle_link`. One FIFO
//! carries everything, so ACL data between two controllers arrives in the order it was sent.
//!
//! The radio owns the controllers and is itself sans-IO: a runtime feeds host packets in with
//! [`Radio::handle_command`] and [`Radio::handle_acl`], fires timers with
//! [`Radio::handle_timeout`], and drains each adapter's host-bound packets with
//! [`Radio::poll_to_host`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use crate::controller::{AclError, CommandError, Controller, ControllerConfig, ToHost};
use crate::wire::{BdAddr, ClassOfDevice, ErrorCode};

#[cfg(test)]
mod tests;

/// Identifies one adapter (one controller) on the radio. Never reused within a radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(pub u64);

impl std::fmt::Display for AdapterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hci-sim{}", self.0)
    }
}

/// The two physical transports (Vol 1, Part A, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// BR/EDR (ACL-U logical link).
    BrEdr,
    /// LE (LE-U logical link).
    Le,
}

/// Where a [`LinkPdu`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Every other adapter.
    Broadcast,
    /// One adapter, already known (a connected peer, or the sender of a PDU being answered).
    Adapter(AdapterId),
    /// The adapter whose BR/EDR address is this (paging, remote name).
    BrEdr(BdAddr),
}

/// A message between two controllers. It stands for one or several LMP / Link Layer
/// exchanges (Vol 2, Part C; Vol 6, Part B) without modelling them bit for bit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkPdu {
    /// Inquiry (Vol 2, Part B, 8.4): adapters in inquiry scan answer.
    Inquiry,
    /// Answer to an inquiry: FHS plus, with EIR, the extended inquiry response.
    InquiryResponse {
        /// The responder's BD_ADDR.
        bd_addr: BdAddr,
        /// Its Class of Device.
        class_of_device: ClassOfDevice,
        /// Its EIR data.
        eir: [u8; 240],
    },
    /// Page (Vol 2, Part B, 8.3): ask for a BR/EDR ACL link.
    Page {
        /// The pager's BD_ADDR.
        bd_addr: BdAddr,
        /// The pager's Class of Device.
        class_of_device: ClassOfDevice,
    },
    /// The paged device accepted: the link exists. `role_switch` is true when the responder
    /// became central.
    PageAccept {
        /// The paged device's BD_ADDR.
        bd_addr: BdAddr,
        /// Whether the roles were switched.
        role_switch: bool,
    },
    /// The paged device refused, or its host did not answer in time.
    PageReject {
        /// The paged device's BD_ADDR.
        bd_addr: BdAddr,
        /// Reason, reported in Connection Complete.
        reason: ErrorCode,
    },
    /// The pager cancelled its page (HCI_Create_Connection_Cancel).
    PageCancel,
    /// LMP_name_req, possibly without a connection.
    NameRequest,
    /// LMP_name_res.
    NameResponse {
        /// The responder's BD_ADDR.
        bd_addr: BdAddr,
        /// The user-friendly name.
        name: [u8; 248],
    },
    /// LMP_features_req / LMP_features_req_ext / LL_FEATURE_REQ.
    FeaturesRequest {
        /// Transport of the link the request runs on.
        transport: Transport,
        /// Whether the extended request was used (page numbers apply).
        extended: bool,
        /// Page.
        page: u8,
    },
    /// LMP_features_res / LMP_features_res_ext / LL_FEATURE_RSP.
    FeaturesResponse {
        /// Transport of the link.
        transport: Transport,
        /// Whether this answers an extended request.
        extended: bool,
        /// Page.
        page: u8,
        /// Highest page available.
        max_page: u8,
        /// The features of that page.
        features: [u8; 8],
    },
    /// LMP_version_req.
    VersionRequest {
        /// Transport of the link.
        transport: Transport,
    },
    /// LMP_version_res.
    VersionResponse {
        /// Transport of the link.
        transport: Transport,
        /// LMP/LL version.
        version: u8,
        /// Company identifier.
        company: u16,
        /// Subversion.
        subversion: u16,
    },
    /// LE advertising (ADV_IND and friends) with the scan response an active scanner would get.
    Advertisement(Advertisement),
    /// A scanner or initiator starts listening: advertisers answer with their advertisement.
    ScanStart,
    /// CONNECT_IND (Vol 6, Part B, 2.3.3.1).
    ConnectInd {
        /// The initiator's address.
        initiator_address: BdAddr,
        /// The initiator's address type (0 public, 1 random).
        initiator_address_type: u8,
        /// The advertiser address it targeted.
        advertiser_address: BdAddr,
        /// Connection interval, 1.25 ms units.
        interval: u16,
        /// Peripheral latency.
        latency: u16,
        /// Supervision timeout, 10 ms units.
        timeout: u16,
    },
    /// The advertiser took the CONNECT_IND: the LE link exists.
    ConnectAccept,
    /// LL_CONNECTION_UPDATE_IND: new connection parameters, applied on both sides.
    ConnectionUpdate {
        /// Connection interval, 1.25 ms units.
        interval: u16,
        /// Peripheral latency.
        latency: u16,
        /// Supervision timeout, 10 ms units.
        timeout: u16,
    },
    /// The advertiser was no longer advertising connectably.
    ConnectReject,
    /// ACL data on a link, one HCI fragment.
    Acl {
        /// Transport of the link.
        transport: Transport,
        /// Whether the fragment starts an L2CAP PDU.
        first: bool,
        /// The fragment.
        data: Vec<u8>,
    },
    /// The receiver handed an ACL fragment to its host: the sender frees one buffer.
    AclAck {
        /// Transport of the link.
        transport: Transport,
    },
    /// LMP_detach / LL_TERMINATE_IND.
    Disconnect {
        /// Transport of the link.
        transport: Transport,
        /// The reason given by the host.
        reason: ErrorCode,
    },
    /// LMP authentication with a stored link key: the verifier sends its key; the claimant
    /// checks it against its own host's key (stands for LMP_au_rand / LMP_sres).
    KeyCheck {
        /// The verifier's link key.
        key: [u8; 16],
    },
    /// Outcome of a [`LinkPdu::KeyCheck`].
    KeyCheckResult {
        /// Success, or PIN or Key Missing / Authentication Failure.
        status: ErrorCode,
    },
    /// Pairing starts (the initiator's host had no link key): the initiator tells whether its
    /// host supports Secure Simple Pairing.
    PairingStart {
        /// The initiator's host has Simple Pairing Mode enabled.
        ssp: bool,
    },
    /// The responder's answer to [`LinkPdu::PairingStart`]: SSP is used if both support it,
    /// legacy PIN pairing otherwise (Vol 2, Part C, 4.2.7).
    PairingStartResponse {
        /// The responder's host has Simple Pairing Mode enabled.
        ssp: bool,
    },
    /// Secure Simple Pairing phase 1 (Vol 2, Part C, 4.2.7): IO capability exchange.
    IoCapabilityRequest {
        /// IO_Capability.
        io_capability: u8,
        /// OOB_Data_Present.
        oob_data_present: u8,
        /// Authentication_Requirements.
        authentication_requirements: u8,
    },
    /// The responder's IO capabilities.
    IoCapabilityResponse {
        /// IO_Capability.
        io_capability: u8,
        /// OOB_Data_Present.
        oob_data_present: u8,
        /// Authentication_Requirements.
        authentication_requirements: u8,
    },
    /// The responder's host refused pairing (IO Capability Request Negative Reply).
    IoCapabilityReject {
        /// The reason.
        reason: ErrorCode,
    },
    /// SSP phase 2/3 stand-in: the numeric value both hosts confirm and the link key pairing
    /// will produce.
    PairingValues {
        /// The six-digit numeric value (numeric comparison / just works).
        numeric_value: u32,
        /// The link key both sides will be notified of.
        link_key: [u8; 16],
        /// Its type (4 unauthenticated, 5 authenticated combination key P-192).
        key_type: u8,
    },
    /// One side's user confirmation (or passkey) outcome.
    PairingConfirm {
        /// Whether that side's host confirmed.
        accepted: bool,
    },
    /// Legacy pairing (Vol 2, Part C, 4.2.2): the initiator's PIN.
    LegacyPin {
        /// The PIN code.
        pin: Vec<u8>,
        /// The combination key both sides will be notified of if the PINs match.
        link_key: [u8; 16],
    },
    /// Outcome of legacy pairing on the responder.
    LegacyPinResult {
        /// Success, Authentication Failure or PIN or Key Missing.
        status: ErrorCode,
    },
    /// LMP_start_encryption_req (BR/EDR) after authentication.
    StartEncryption {
        /// Enable (true) or pause/disable (false).
        enable: bool,
    },
    /// LL_ENC_REQ (Vol 6, Part B, 5.1.3.1).
    LeEncryptionRequest {
        /// Rand.
        random_number: [u8; 8],
        /// EDIV.
        encrypted_diversifier: u16,
        /// The central's LTK (stands for the session key derivation both sides do).
        long_term_key: [u8; 16],
    },
    /// The peripheral's answer: success, PIN or Key Missing (negative reply) or MIC failure.
    LeEncryptionResponse {
        /// Outcome.
        status: ErrorCode,
    },
    /// The sender adapter is gone: drop every link to it.
    PeerGone,
}

/// One LE legacy advertisement as scanners see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Advertising_Type of HCI_LE_Set_Advertising_Parameters (0 ADV_IND, 1 ADV_DIRECT_IND high
    /// duty, 2 ADV_SCAN_IND, 3 ADV_NONCONN_IND, 4 ADV_DIRECT_IND low duty).
    pub advertising_type: u8,
    /// Advertiser address.
    pub address: BdAddr,
    /// Advertiser address type (0 public, 1 random).
    pub address_type: u8,
    /// For directed advertising: the target address and type.
    pub direct: Option<(u8, BdAddr)>,
    /// AdvData.
    pub data: Vec<u8>,
    /// ScanRspData.
    pub scan_response: Vec<u8>,
}

impl Advertisement {
    /// Whether an initiator may connect to it.
    pub fn connectable(&self) -> bool {
        matches!(self.advertising_type, 0 | 1 | 4)
    }

    /// Whether an active scanner gets a scan response.
    pub fn scannable(&self) -> bool {
        matches!(self.advertising_type, 0 | 2)
    }
}

/// A PDU and where it goes, as a controller hands it to the radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The destination.
    pub dest: Dest,
    /// The message.
    pub pdu: LinkPdu,
}

/// Why the radio could not take a host packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RadioError {
    /// No adapter has this id (it was removed).
    #[error("no adapter {0}")]
    NoSuchAdapter(AdapterId),
    /// The controller refused a command packet.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The controller refused an ACL packet.
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// The most PDUs routed in one call before the radio assumes a loop and drops the rest.
const MAX_ROUTED_PER_CALL: usize = 1 << 20;

/// All controllers of a process and the medium between them.
#[derive(Debug, Default)]
pub struct Radio {
    adapters: BTreeMap<AdapterId, Controller>,
    next_id: u64,
    queue: VecDeque<(AdapterId, Transmit)>,
    ready: BTreeSet<AdapterId>,
}

impl Radio {
    /// An empty radio.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a controller with `config` (its address should be unique on the radio).
    pub fn add_adapter(&mut self, config: ControllerConfig) -> AdapterId {
        let id = AdapterId(self.next_id);
        self.next_id += 1;
        self.adapters.insert(id, Controller::new(id, config));
        id
    }

    /// Removes an adapter; its peers see their links to it drop (Connection Timeout).
    pub fn remove_adapter(&mut self, id: AdapterId, now: Instant) -> Option<Controller> {
        let c = self.adapters.remove(&id)?;
        self.ready.remove(&id);
        self.queue.retain(|(from, _)| *from != id);
        self.queue.push_back((
            id,
            Transmit {
                dest: Dest::Broadcast,
                pdu: LinkPdu::PeerGone,
            },
        ));
        self.route(now);
        Some(c)
    }

    /// The controller of `id`.
    pub fn adapter(&self, id: AdapterId) -> Option<&Controller> {
        self.adapters.get(&id)
    }

    /// The controller of `id`, mutably (configuration changes between host sessions).
    pub fn adapter_mut(&mut self, id: AdapterId) -> Option<&mut Controller> {
        self.adapters.get_mut(&id)
    }

    /// Every adapter id, in creation order.
    pub fn adapter_ids(&self) -> impl Iterator<Item = AdapterId> + '_ {
        self.adapters.keys().copied()
    }

    /// Hands a command packet (no H4 indicator) from `id`'s host to its controller.
    pub fn handle_command(
        &mut self,
        id: AdapterId,
        now: Instant,
        packet: &[u8],
    ) -> Result<(), RadioError> {
        self.feed_from_host(id, now, |c| c.handle_command(now, packet))
    }

    /// Hands an ACL packet (no H4 indicator) from `id`'s host to its controller.
    pub fn handle_acl(
        &mut self,
        id: AdapterId,
        now: Instant,
        packet: &[u8],
    ) -> Result<(), RadioError> {
        self.feed_from_host(id, now, |c| c.handle_acl(now, packet))
    }

    /// Feeds `id`'s controller something from its host, then sends on what that produced.
    fn feed_from_host<E: Into<RadioError>>(
        &mut self,
        id: AdapterId,
        now: Instant,
        feed: impl FnOnce(&mut Controller) -> Result<(), E>,
    ) -> Result<(), RadioError> {
        let c = self
            .adapters
            .get_mut(&id)
            .ok_or(RadioError::NoSuchAdapter(id))?;
        let r = feed(c);
        self.collect(id);
        self.route(now);
        r.map_err(Into::into)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<AdapterId> = self.adapters.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.adapters.get_mut(&id) {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                    self.collect(id);
                }
            }
        }
        self.route(now);
    }

    /// The earliest timer of any controller.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.adapters
            .values()
            .filter_map(|c| c.poll_timeout())
            .min()
    }

    /// The next packet for `id`'s host.
    pub fn poll_to_host(&mut self, id: AdapterId, now: Instant) -> Option<ToHost> {
        let c = self.adapters.get_mut(&id)?;
        let p = c.poll_to_host();
        if c.has_transmit() {
            self.collect(id);
            self.route(now);
        }
        p
    }

    /// Adapters that got host-bound packets since the last call (to wake their transports).
    pub fn take_ready(&mut self) -> BTreeSet<AdapterId> {
        std::mem::take(&mut self.ready)
    }

    fn collect(&mut self, id: AdapterId) {
        if let Some(c) = self.adapters.get_mut(&id) {
            while let Some(t) = c.poll_transmit() {
                self.queue.push_back((id, t));
            }
            if c.has_to_host() {
                self.ready.insert(id);
            }
        }
    }

    fn deliver(&mut self, now: Instant, from: AdapterId, to: AdapterId, pdu: LinkPdu) {
        if let Some(c) = self.adapters.get_mut(&to) {
            c.handle_link(now, from, pdu);
            self.collect(to);
        }
    }

    fn route(&mut self, now: Instant) {
        let mut routed = 0usize;
        while let Some((from, t)) = self.queue.pop_front() {
            routed += 1;
            if routed > MAX_ROUTED_PER_CALL {
                tracing::error!(
                    "radio: routing loop, dropping {} PDUs",
                    self.queue.len() + 1
                );
                self.queue.clear();
                break;
            }
            match t.dest {
                Dest::Adapter(to) => self.deliver(now, from, to, t.pdu),
                Dest::BrEdr(addr) => {
                    let to = self
                        .adapters
                        .iter()
                        .find(|(id, c)| **id != from && c.bd_addr() == addr && c.bredr_enabled())
                        .map(|(id, _)| *id);
                    if let Some(to) = to {
                        self.deliver(now, from, to, t.pdu);
                    }
                }
                Dest::Broadcast => {
                    let ids: Vec<AdapterId> = self
                        .adapters
                        .keys()
                        .copied()
                        .filter(|i| *i != from)
                        .collect();
                    for to in ids {
                        self.deliver(now, from, to, t.pdu.clone());
                    }
                }
            }
        }
    }
}
