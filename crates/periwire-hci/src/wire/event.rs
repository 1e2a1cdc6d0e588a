//! HCI events (Vol 4, Part E, 7.7), declared once per event code, and the LE Meta subevents
//! (7.7.65), declared once per subevent code. Unknown codes round-trip.

use super::command::param_table;
use super::{
    BdAddr, ClassOfDevice, Counted, ErrorCode, EventPacket, Field, LenBytes, Opcode, ParamError,
    Reader, Rest,
};

/// One response of an Inquiry Result event (7.7.2; Linux `struct inquiry_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InquiryResponse {
    /// BD_ADDR of the responding device.
    pub bd_addr: BdAddr,
    /// Page_Scan_Repetition_Mode.
    pub page_scan_repetition_mode: u8,
    /// Two reserved octets.
    pub reserved: [u8; 2],
    /// Class_Of_Device.
    pub class_of_device: ClassOfDevice,
    /// Clock_Offset.
    pub clock_offset: u16,
}

impl Field for InquiryResponse {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            bd_addr: Field::read(r)?,
            page_scan_repetition_mode: r.u8()?,
            reserved: r.array()?,
            class_of_device: Field::read(r)?,
            clock_offset: r.u16()?,
        })
    }
    fn write(&self, out: &mut Vec<u8>) {
        self.bd_addr.write(out);
        out.push(self.page_scan_repetition_mode);
        out.extend_from_slice(&self.reserved);
        self.class_of_device.write(out);
        self.clock_offset.write(out);
    }
}

/// One response of an Inquiry Result with RSSI event (7.7.33; Linux `struct inquiry_info_rssi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InquiryResponseWithRssi {
    /// BD_ADDR of the responding device.
    pub bd_addr: BdAddr,
    /// Page_Scan_Repetition_Mode.
    pub page_scan_repetition_mode: u8,
    /// One reserved octet.
    pub reserved: u8,
    /// Class_Of_Device.
    pub class_of_device: ClassOfDevice,
    /// Clock_Offset.
    pub clock_offset: u16,
    /// RSSI in dBm.
    pub rssi: i8,
}

impl Field for InquiryResponseWithRssi {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            bd_addr: Field::read(r)?,
            page_scan_repetition_mode: r.u8()?,
            reserved: r.u8()?,
            class_of_device: Field::read(r)?,
            clock_offset: r.u16()?,
            rssi: Field::read(r)?,
        })
    }
    fn write(&self, out: &mut Vec<u8>) {
        self.bd_addr.write(out);
        out.push(self.page_scan_repetition_mode);
        out.push(self.reserved);
        self.class_of_device.write(out);
        self.clock_offset.write(out);
        self.rssi.write(out);
    }
}

/// One handle's count in a Number Of Completed Packets event (7.7.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedPackets {
    /// Connection_Handle.
    pub connection_handle: u16,
    /// Num_Completed_Packets.
    pub num_completed_packets: u16,
}

impl Field for CompletedPackets {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            connection_handle: r.u16()?,
            num_completed_packets: r.u16()?,
        })
    }
    fn write(&self, out: &mut Vec<u8>) {
        self.connection_handle.write(out);
        self.num_completed_packets.write(out);
    }
}

/// One report of an LE Advertising Report event (7.7.65.2; Linux
/// `struct hci_ev_le_advertising_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisingReport {
    /// Event_Type: 0 ADV_IND, 1 ADV_DIRECT_IND, 2 ADV_SCAN_IND, 3 ADV_NONCONN_IND, 4 SCAN_RSP.
    pub event_type: u8,
    /// Address_Type: 0 public, 1 random.
    pub address_type: u8,
    /// Address of the advertiser.
    pub address: BdAddr,
    /// Data (at most 31 octets in legacy advertising).
    pub data: LenBytes,
    /// RSSI in dBm, 127 if not available.
    pub rssi: i8,
}

impl Field for AdvertisingReport {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            event_type: r.u8()?,
            address_type: r.u8()?,
            address: Field::read(r)?,
            data: Field::read(r)?,
            rssi: Field::read(r)?,
        })
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.event_type);
        out.push(self.address_type);
        self.address.write(out);
        self.data.write(out);
        self.rssi.write(out);
    }
}

param_table! {
    /// A typed LE Meta subevent (Vol 4, Part E, 7.7.65).
    pub enum LeMetaEvent: u8, unknown subevent_code;

    /// HCI_LE_Connection_Complete (7.7.65.1).
    LeConnectionComplete = 0x01 => {
        status: ErrorCode, connection_handle: u16, role: u8, peer_address_type: u8,
        peer_address: BdAddr, connection_interval: u16, peripheral_latency: u16,
        supervision_timeout: u16, central_clock_accuracy: u8,
    }
    /// HCI_LE_Advertising_Report (7.7.65.2).
    LeAdvertisingReport = 0x02 => { reports: Counted<AdvertisingReport> }
    /// HCI_LE_Connection_Update_Complete (7.7.65.3).
    LeConnectionUpdateComplete = 0x03 => {
        status: ErrorCode, connection_handle: u16, connection_interval: u16,
        peripheral_latency: u16, supervision_timeout: u16,
    }
    /// HCI_LE_Read_Remote_Features_Complete (7.7.65.4).
    LeReadRemoteFeaturesComplete = 0x04 => { status: ErrorCode, connection_handle: u16, le_features: [u8; 8] }
    /// HCI_LE_Long_Term_Key_Request (7.7.65.5).
    LeLongTermKeyRequest = 0x05 => { connection_handle: u16, random_number: [u8; 8], encrypted_diversifier: u16 }
    /// HCI_LE_Data_Length_Change (7.7.65.7).
    LeDataLengthChange = 0x07 => {
        connection_handle: u16, max_tx_octets: u16, max_tx_time: u16, max_rx_octets: u16,
        max_rx_time: u16,
    }
}

impl Field for LeMetaEvent {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let code = r.u8()?;
        let rest = r.rest();
        // A malformed known subevent stays readable as raw bytes rather than failing the
        // whole event: the subevent layer reports its own error through `parse_parameters`.
        Some(
            Self::parse_parameters(code, rest).unwrap_or_else(|_| Self::Unknown {
                subevent_code: code,
                parameters: rest.to_vec(),
            }),
        )
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.code());
        self.emit_parameters(out);
    }
}

param_table! {
    /// A typed HCI event (Vol 4, Part E, 7.7). The representation of an [`EventPacket`].
    pub enum HciEvent: u8, unknown event_code;

    /// HCI_Inquiry_Complete (7.7.1).
    InquiryComplete = 0x01 => { status: ErrorCode }
    /// HCI_Inquiry_Result (7.7.2).
    InquiryResult = 0x02 => { responses: Counted<InquiryResponse> }
    /// HCI_Connection_Complete (7.7.3).
    ConnectionComplete = 0x03 => {
        status: ErrorCode, connection_handle: u16, bd_addr: BdAddr, link_type: u8,
        encryption_enabled: u8,
    }
    /// HCI_Connection_Request (7.7.4).
    ConnectionRequest = 0x04 => { bd_addr: BdAddr, class_of_device: ClassOfDevice, link_type: u8 }
    /// HCI_Disconnection_Complete (7.7.5).
    DisconnectionComplete = 0x05 => { status: ErrorCode, connection_handle: u16, reason: ErrorCode }
    /// HCI_Authentication_Complete (7.7.6).
    AuthenticationComplete = 0x06 => { status: ErrorCode, connection_handle: u16 }
    /// HCI_Remote_Name_Request_Complete (7.7.7).
    RemoteNameRequestComplete = 0x07 => { status: ErrorCode, bd_addr: BdAddr, remote_name: [u8; 248] }
    /// HCI_Encryption_Change [v1] (7.7.8).
    EncryptionChange = 0x08 => { status: ErrorCode, connection_handle: u16, encryption_enabled: u8 }
    /// HCI_Read_Remote_Supported_Features_Complete (7.7.11).
    ReadRemoteSupportedFeaturesComplete = 0x0b => { status: ErrorCode, connection_handle: u16, lmp_features: [u8; 8] }
    /// HCI_Read_Remote_Version_Information_Complete (7.7.12).
    ReadRemoteVersionInformationComplete = 0x0c => {
        status: ErrorCode, connection_handle: u16, version: u8, company_identifier: u16,
        subversion: u16,
    }
    /// HCI_Command_Complete (7.7.14).
    CommandComplete = 0x0e => { num_hci_command_packets: u8, command_opcode: Opcode, return_parameters: Rest }
    /// HCI_Command_Status (7.7.15).
    CommandStatus = 0x0f => { status: ErrorCode, num_hci_command_packets: u8, command_opcode: Opcode }
    /// HCI_Hardware_Error (7.7.16).
    HardwareError = 0x10 => { hardware_code: u8 }
    /// HCI_Role_Change (7.7.18).
    RoleChange = 0x12 => { status: ErrorCode, bd_addr: BdAddr, new_role: u8 }
    /// HCI_Number_Of_Completed_Packets (7.7.19).
    NumberOfCompletedPackets = 0x13 => { handles: Counted<CompletedPackets> }
    /// HCI_PIN_Code_Request (7.7.22).
    PinCodeRequest = 0x16 => { bd_addr: BdAddr }
    /// HCI_Link_Key_Request (7.7.23).
    LinkKeyRequest = 0x17 => { bd_addr: BdAddr }
    /// HCI_Link_Key_Notification (7.7.24).
    LinkKeyNotification = 0x18 => { bd_addr: BdAddr, link_key: [u8; 16], key_type: u8 }
    /// HCI_Data_Buffer_Overflow (7.7.26).
    DataBufferOverflow = 0x1a => { link_type: u8 }
    /// HCI_Inquiry_Result_with_RSSI (7.7.33).
    InquiryResultWithRssi = 0x22 => { responses: Counted<InquiryResponseWithRssi> }
    /// HCI_Read_Remote_Extended_Features_Complete (7.7.34).
    ReadRemoteExtendedFeaturesComplete = 0x23 => {
        status: ErrorCode, connection_handle: u16, page_number: u8, maximum_page_number: u8,
        extended_lmp_features: [u8; 8],
    }
    /// HCI_Extended_Inquiry_Result (7.7.38); Num_Responses is always 1.
    ExtendedInquiryResult = 0x2f => {
        num_responses: u8, bd_addr: BdAddr, page_scan_repetition_mode: u8, reserved: u8,
        class_of_device: ClassOfDevice, clock_offset: u16, rssi: i8,
        extended_inquiry_response: [u8; 240],
    }
    /// HCI_Encryption_Key_Refresh_Complete (7.7.39).
    EncryptionKeyRefreshComplete = 0x30 => { status: ErrorCode, connection_handle: u16 }
    /// HCI_IO_Capability_Request (7.7.40).
    IoCapabilityRequest = 0x31 => { bd_addr: BdAddr }
    /// HCI_IO_Capability_Response (7.7.41).
    IoCapabilityResponse = 0x32 => {
        bd_addr: BdAddr, io_capability: u8, oob_data_present: u8, authentication_requirements: u8,
    }
    /// HCI_User_Confirmation_Request (7.7.42).
    UserConfirmationRequest = 0x33 => { bd_addr: BdAddr, numeric_value: u32 }
    /// HCI_User_Passkey_Request (7.7.43).
    UserPasskeyRequest = 0x34 => { bd_addr: BdAddr }
    /// HCI_Simple_Pairing_Complete (7.7.45).
    SimplePairingComplete = 0x36 => { status: ErrorCode, bd_addr: BdAddr }
    /// HCI_User_Passkey_Notification (7.7.48).
    UserPasskeyNotification = 0x3b => { bd_addr: BdAddr, passkey: u32 }
    /// HCI_Remote_Host_Supported_Features_Notification (7.7.50).
    RemoteHostSupportedFeaturesNotification = 0x3d => { bd_addr: BdAddr, host_supported_features: [u8; 8] }
    /// HCI_LE_Meta (7.7.65).
    LeMeta = 0x3e => { event: LeMetaEvent }
}

impl HciEvent {
    /// The event code.
    pub fn event_code(&self) -> u8 {
        self.code()
    }

    /// Decodes an event packet (without the H4 type byte).
    pub fn parse<T: AsRef<[u8]>>(packet: &EventPacket<T>) -> Result<Self, ParamError> {
        Self::parse_parameters(packet.event_code(), packet.parameters())
    }

    /// The whole event packet: event code, parameter length, parameters (Vol 4, Part E,
    /// 5.4.4). Parameters longer than 255 bytes (possible only for variable-length variants)
    /// are cut to 255.
    pub fn to_packet(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 16);
        out.push(self.event_code());
        out.push(0);
        self.emit_parameters(&mut out);
        out.truncate(2 + 255);
        out[1] = (out.len() - 2) as u8;
        out
    }

    /// A Command Complete event for `opcode` carrying `return_parameters`.
    pub fn command_complete(opcode: Opcode, return_parameters: Vec<u8>) -> Self {
        Self::CommandComplete(CommandComplete {
            num_hci_command_packets: 1,
            command_opcode: opcode,
            return_parameters: Rest(return_parameters),
        })
    }

    /// A Command Status event for `opcode`.
    pub fn command_status(status: ErrorCode, opcode: Opcode) -> Self {
        Self::CommandStatus(CommandStatus {
            status,
            num_hci_command_packets: 1,
            command_opcode: opcode,
        })
    }

    /// An LE Meta event wrapping `event`.
    pub fn le_meta(event: impl Into<LeMetaEvent>) -> Self {
        Self::LeMeta(LeMeta {
            event: event.into(),
        })
    }
}

impl CommandComplete {
    /// The status, the first return parameter of every command that has one.
    pub fn status(&self) -> Option<ErrorCode> {
        self.return_parameters
            .0
            .first()
            .map(|&b| ErrorCode::from_u8(b))
    }
}

/// Decodes the LE Meta subevent of raw event parameters (helper for tests and traces).
pub fn parse_le_meta(params: &[u8]) -> Result<LeMetaEvent, ParamError> {
    match params.split_first() {
        Some((&code, rest)) => LeMetaEvent::parse_parameters(code, rest),
        None => Err(ParamError::Truncated),
    }
}
