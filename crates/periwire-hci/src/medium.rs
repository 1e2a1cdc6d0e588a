//! The vocabulary between a controller and the medium it is on.
//!
//! A controller talks to the world only through [`LinkPdu`]s: it hands [`Transmit`]s out of
//! `poll_transmit` and takes PDUs in through `handle_link`. Two media implement the other
//! side: the simulated [`Radio`](crate::radio::Radio), which routes PDUs between
//! controllers, and the host link ([`crate::host_link`]), which answers them for the remote
//! devices the host's own Bluetooth stack reaches. This module sits below all three, so none
//! of them imports another (quinn-proto's `shared.rs` plays the same role).

use crate::wire::{BdAddr, ClassOfDevice, ErrorCode};

/// Identifies one adapter (one controller) or, on the host link, one remote device. Never
/// reused within a medium.
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
