//! HCI commands (Vol 4, Part E, 7.1–7.8), declared once per opcode.
//!
//! [`HciCommand`] is the typed representation of a command packet. Each known opcode has a
//! parameter struct named after the command (`Reset`, `WriteScanEnable`, ...) whose fields follow
//! the specification's parameter list in order; `HciCommand::parse` dispatches by opcode and
//! falls back to [`HciCommand::Unknown`], which keeps the raw parameters so that unknown
//! commands round-trip byte for byte.

use super::{
    parse_exact, BdAddr, ClassOfDevice, CommandPacket, Counted, ErrorCode, Field, Opcode,
    ParamError, Reader, Rest,
};

/// Declares parameter structs (each with a [`Field`] impl), an enum over them keyed by a code,
/// and parse/emit by table lookup with an `Unknown` fallback.
macro_rules! param_table {
    (
        $(#[$emeta:meta])*
        pub enum $enum:ident : $key:ty, unknown $ukey:ident;
        $(
            $(#[$meta:meta])*
            $name:ident = $code:expr => { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
        )*
    ) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $name {
                $( $(#[$fmeta])* #[doc = concat!("`", stringify!($field), "`.")] pub $field: $fty, )*
            }

            impl $name {
                /// The code this parameter set is registered under.
                pub const CODE: $key = $code;
            }

            impl Field for $name {
                fn read(_r: &mut Reader<'_>) -> Option<Self> {
                    Some(Self { $( $field: <$fty as Field>::read(_r)?, )* })
                }
                fn write(&self, _out: &mut Vec<u8>) {
                    $( Field::write(&self.$field, _out); )*
                }
            }

            impl From<$name> for $enum {
                fn from(v: $name) -> Self {
                    Self::$name(v)
                }
            }
        )*

        $(#[$emeta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $enum {
            $(
                #[doc = concat!("[`", stringify!($name), "`].")]
                $name($name),
            )*
            /// A code this crate has no parameter layout for; the parameters are kept as they are.
            Unknown {
                /// The code.
                $ukey: $key,
                /// The raw parameters.
                parameters: Vec<u8>,
            },
        }

        impl $enum {
            /// The code of this variant.
            pub fn code(&self) -> $key {
                match self {
                    $( Self::$name(_) => $code, )*
                    Self::Unknown { $ukey, .. } => *$ukey,
                }
            }

            /// Decodes the parameters registered under `code`; they must take exactly `params`.
            pub fn parse_parameters(code: $key, params: &[u8]) -> Result<Self, ParamError> {
                $(
                    if code == $code {
                        return $crate::wire::parse_exact(params, <$name as Field>::read).map(Self::$name);
                    }
                )*
                Ok(Self::Unknown { $ukey: code, parameters: params.to_vec() })
            }

            /// Appends the parameters (without any header) to `out`.
            pub fn emit_parameters(&self, out: &mut Vec<u8>) {
                match self {
                    $( Self::$name(p) => p.write(out), )*
                    Self::Unknown { parameters, .. } => out.extend_from_slice(parameters),
                }
            }

            /// Whether `code` has a registered parameter layout.
            pub fn is_known(code: $key) -> bool {
                Self::KNOWN.contains(&code)
            }

            /// Every registered code.
            pub const KNOWN: &'static [$key] = &[ $( $code, )* ];
        }
    };
}
pub(crate) use param_table;

const fn lc(ocf: u16) -> Opcode {
    Opcode::new(0x01, ocf)
}
const fn lp(ocf: u16) -> Opcode {
    Opcode::new(0x02, ocf)
}
const fn cb(ocf: u16) -> Opcode {
    Opcode::new(0x03, ocf)
}
const fn ip(ocf: u16) -> Opcode {
    Opcode::new(0x04, ocf)
}
const fn sp(ocf: u16) -> Opcode {
    Opcode::new(0x05, ocf)
}
const fn le(ocf: u16) -> Opcode {
    Opcode::new(0x08, ocf)
}

param_table! {
    /// A typed HCI command (Vol 4, Part E, 7). The representation of a [`CommandPacket`].
    pub enum HciCommand: Opcode, unknown opcode;

    // ----- Link Control commands, OGF 0x01 (Vol 4, Part E, 7.1) -----

    /// HCI_Inquiry (7.1.1).
    Inquiry = lc(0x0001) => { lap: [u8; 3], inquiry_length: u8, num_responses: u8 }
    /// HCI_Inquiry_Cancel (7.1.2).
    InquiryCancel = lc(0x0002) => {}
    /// HCI_Create_Connection (7.1.5).
    CreateConnection = lc(0x0005) => {
        bd_addr: BdAddr, packet_type: u16, page_scan_repetition_mode: u8, reserved: u8,
        clock_offset: u16, allow_role_switch: u8,
    }
    /// HCI_Disconnect (7.1.6).
    Disconnect = lc(0x0006) => { connection_handle: u16, reason: ErrorCode }
    /// HCI_Create_Connection_Cancel (7.1.7).
    CreateConnectionCancel = lc(0x0008) => { bd_addr: BdAddr }
    /// HCI_Accept_Connection_Request (7.1.8).
    AcceptConnectionRequest = lc(0x0009) => { bd_addr: BdAddr, role: u8 }
    /// HCI_Reject_Connection_Request (7.1.9).
    RejectConnectionRequest = lc(0x000a) => { bd_addr: BdAddr, reason: ErrorCode }
    /// HCI_Link_Key_Request_Reply (7.1.10).
    LinkKeyRequestReply = lc(0x000b) => { bd_addr: BdAddr, link_key: [u8; 16] }
    /// HCI_Link_Key_Request_Negative_Reply (7.1.11).
    LinkKeyRequestNegativeReply = lc(0x000c) => { bd_addr: BdAddr }
    /// HCI_PIN_Code_Request_Reply (7.1.12).
    PinCodeRequestReply = lc(0x000d) => { bd_addr: BdAddr, pin_code_length: u8, pin_code: [u8; 16] }
    /// HCI_PIN_Code_Request_Negative_Reply (7.1.13).
    PinCodeRequestNegativeReply = lc(0x000e) => { bd_addr: BdAddr }
    /// HCI_Change_Connection_Packet_Type (7.1.14).
    ChangeConnectionPacketType = lc(0x000f) => { connection_handle: u16, packet_type: u16 }
    /// HCI_Authentication_Requested (7.1.15).
    AuthenticationRequested = lc(0x0011) => { connection_handle: u16 }
    /// HCI_Set_Connection_Encryption (7.1.16).
    SetConnectionEncryption = lc(0x0013) => { connection_handle: u16, encryption_enable: u8 }
    /// HCI_Remote_Name_Request (7.1.19).
    RemoteNameRequest = lc(0x0019) => {
        bd_addr: BdAddr, page_scan_repetition_mode: u8, reserved: u8, clock_offset: u16,
    }
    /// HCI_Remote_Name_Request_Cancel (7.1.20).
    RemoteNameRequestCancel = lc(0x001a) => { bd_addr: BdAddr }
    /// HCI_Read_Remote_Supported_Features (7.1.21).
    ReadRemoteSupportedFeatures = lc(0x001b) => { connection_handle: u16 }
    /// HCI_Read_Remote_Extended_Features (7.1.22).
    ReadRemoteExtendedFeatures = lc(0x001c) => { connection_handle: u16, page_number: u8 }
    /// HCI_Read_Remote_Version_Information (7.1.23).
    ReadRemoteVersionInformation = lc(0x001d) => { connection_handle: u16 }
    /// HCI_Read_Clock_Offset (7.1.24).
    ReadClockOffset = lc(0x001f) => { connection_handle: u16 }
    /// HCI_IO_Capability_Request_Reply (7.1.29).
    IoCapabilityRequestReply = lc(0x002b) => {
        bd_addr: BdAddr, io_capability: u8, oob_data_present: u8, authentication_requirements: u8,
    }
    /// HCI_User_Confirmation_Request_Reply (7.1.30).
    UserConfirmationRequestReply = lc(0x002c) => { bd_addr: BdAddr }
    /// HCI_User_Confirmation_Request_Negative_Reply (7.1.31).
    UserConfirmationRequestNegativeReply = lc(0x002d) => { bd_addr: BdAddr }
    /// HCI_User_Passkey_Request_Reply (7.1.32).
    UserPasskeyRequestReply = lc(0x002e) => { bd_addr: BdAddr, numeric_value: u32 }
    /// HCI_User_Passkey_Request_Negative_Reply (7.1.33).
    UserPasskeyRequestNegativeReply = lc(0x002f) => { bd_addr: BdAddr }
    /// HCI_IO_Capability_Request_Negative_Reply (7.1.36).
    IoCapabilityRequestNegativeReply = lc(0x0034) => { bd_addr: BdAddr, reason: ErrorCode }

    // ----- Link Policy commands, OGF 0x02 (7.2) -----

    /// HCI_Write_Link_Policy_Settings (7.2.10).
    WriteLinkPolicySettings = lp(0x000d) => { connection_handle: u16, link_policy_settings: u16 }
    /// HCI_Read_Default_Link_Policy_Settings (7.2.11).
    ReadDefaultLinkPolicySettings = lp(0x000e) => {}
    /// HCI_Write_Default_Link_Policy_Settings (7.2.12).
    WriteDefaultLinkPolicySettings = lp(0x000f) => { default_link_policy_settings: u16 }

    // ----- Controller & Baseband commands, OGF 0x03 (7.3) -----

    /// HCI_Set_Event_Mask (7.3.1).
    SetEventMask = cb(0x0001) => { event_mask: [u8; 8] }
    /// HCI_Reset (7.3.2).
    Reset = cb(0x0003) => {}
    /// HCI_Set_Event_Filter (7.3.3): a variable layout, kept raw.
    SetEventFilter = cb(0x0005) => { filter_type: u8, filter: Rest }
    /// HCI_Read_PIN_Type (7.3.5).
    ReadPinType = cb(0x0009) => {}
    /// HCI_Write_PIN_Type (7.3.6).
    WritePinType = cb(0x000a) => { pin_type: u8 }
    /// HCI_Read_Stored_Link_Key (7.3.8).
    ReadStoredLinkKey = cb(0x000d) => { bd_addr: BdAddr, read_all: u8 }
    /// HCI_Delete_Stored_Link_Key (7.3.10).
    DeleteStoredLinkKey = cb(0x0012) => { bd_addr: BdAddr, delete_all: u8 }
    /// HCI_Write_Local_Name (7.3.11).
    WriteLocalName = cb(0x0013) => { local_name: [u8; 248] }
    /// HCI_Read_Local_Name (7.3.12).
    ReadLocalName = cb(0x0014) => {}
    /// HCI_Read_Connection_Accept_Timeout (7.3.13).
    ReadConnectionAcceptTimeout = cb(0x0015) => {}
    /// HCI_Write_Connection_Accept_Timeout (7.3.14).
    WriteConnectionAcceptTimeout = cb(0x0016) => { connection_accept_timeout: u16 }
    /// HCI_Read_Page_Timeout (7.3.15).
    ReadPageTimeout = cb(0x0017) => {}
    /// HCI_Write_Page_Timeout (7.3.16).
    WritePageTimeout = cb(0x0018) => { page_timeout: u16 }
    /// HCI_Read_Scan_Enable (7.3.17).
    ReadScanEnable = cb(0x0019) => {}
    /// HCI_Write_Scan_Enable (7.3.18).
    WriteScanEnable = cb(0x001a) => { scan_enable: u8 }
    /// HCI_Read_Page_Scan_Activity (7.3.19).
    ReadPageScanActivity = cb(0x001b) => {}
    /// HCI_Write_Page_Scan_Activity (7.3.20).
    WritePageScanActivity = cb(0x001c) => { page_scan_interval: u16, page_scan_window: u16 }
    /// HCI_Read_Inquiry_Scan_Activity (7.3.21).
    ReadInquiryScanActivity = cb(0x001d) => {}
    /// HCI_Write_Inquiry_Scan_Activity (7.3.22).
    WriteInquiryScanActivity = cb(0x001e) => { inquiry_scan_interval: u16, inquiry_scan_window: u16 }
    /// HCI_Read_Authentication_Enable (7.3.23).
    ReadAuthenticationEnable = cb(0x001f) => {}
    /// HCI_Write_Authentication_Enable (7.3.24).
    WriteAuthenticationEnable = cb(0x0020) => { authentication_enable: u8 }
    /// HCI_Read_Class_Of_Device (7.3.25).
    ReadClassOfDevice = cb(0x0023) => {}
    /// HCI_Write_Class_Of_Device (7.3.26).
    WriteClassOfDevice = cb(0x0024) => { class_of_device: ClassOfDevice }
    /// HCI_Read_Voice_Setting (7.3.27).
    ReadVoiceSetting = cb(0x0025) => {}
    /// HCI_Write_Voice_Setting (7.3.28).
    WriteVoiceSetting = cb(0x0026) => { voice_setting: u16 }
    /// HCI_Read_Link_Supervision_Timeout (7.3.41).
    ReadLinkSupervisionTimeout = cb(0x0036) => { handle: u16 }
    /// HCI_Write_Link_Supervision_Timeout (7.3.42).
    WriteLinkSupervisionTimeout = cb(0x0037) => { handle: u16, link_supervision_timeout: u16 }
    /// HCI_Read_Number_Of_Supported_IAC (7.3.43).
    ReadNumberOfSupportedIac = cb(0x0038) => {}
    /// HCI_Read_Current_IAC_LAP (7.3.44).
    ReadCurrentIacLap = cb(0x0039) => {}
    /// HCI_Write_Current_IAC_LAP (7.3.45).
    WriteCurrentIacLap = cb(0x003a) => { iac_laps: Counted<[u8; 3]> }
    /// HCI_Read_Inquiry_Scan_Type (7.3.47).
    ReadInquiryScanType = cb(0x0042) => {}
    /// HCI_Write_Inquiry_Scan_Type (7.3.48).
    WriteInquiryScanType = cb(0x0043) => { scan_type: u8 }
    /// HCI_Read_Inquiry_Mode (7.3.49).
    ReadInquiryMode = cb(0x0044) => {}
    /// HCI_Write_Inquiry_Mode (7.3.50).
    WriteInquiryMode = cb(0x0045) => { inquiry_mode: u8 }
    /// HCI_Read_Page_Scan_Type (7.3.51).
    ReadPageScanType = cb(0x0046) => {}
    /// HCI_Write_Page_Scan_Type (7.3.52).
    WritePageScanType = cb(0x0047) => { page_scan_type: u8 }
    /// HCI_Read_Extended_Inquiry_Response (7.3.55).
    ReadExtendedInquiryResponse = cb(0x0051) => {}
    /// HCI_Write_Extended_Inquiry_Response (7.3.56).
    WriteExtendedInquiryResponse = cb(0x0052) => { fec_required: u8, extended_inquiry_response: [u8; 240] }
    /// HCI_Read_Simple_Pairing_Mode (7.3.58).
    ReadSimplePairingMode = cb(0x0055) => {}
    /// HCI_Write_Simple_Pairing_Mode (7.3.59).
    WriteSimplePairingMode = cb(0x0056) => { simple_pairing_mode: u8 }
    /// HCI_Read_Inquiry_Response_Transmit_Power_Level (7.3.61).
    ReadInquiryResponseTransmitPowerLevel = cb(0x0058) => {}
    /// HCI_Set_Event_Mask_Page_2 (7.3.69).
    SetEventMaskPage2 = cb(0x0063) => { event_mask_page_2: [u8; 8] }
    /// HCI_Read_LE_Host_Support (7.3.78).
    ReadLeHostSupport = cb(0x006c) => {}
    /// HCI_Write_LE_Host_Support (7.3.79).
    WriteLeHostSupport = cb(0x006d) => { le_supported_host: u8, unused: u8 }
    /// HCI_Read_Secure_Connections_Host_Support (7.3.92).
    ReadSecureConnectionsHostSupport = cb(0x0079) => {}
    /// HCI_Write_Secure_Connections_Host_Support (7.3.93).
    WriteSecureConnectionsHostSupport = cb(0x007a) => { secure_connections_host_support: u8 }

    // ----- Informational parameters, OGF 0x04 (7.4) -----

    /// HCI_Read_Local_Version_Information (7.4.1).
    ReadLocalVersionInformation = ip(0x0001) => {}
    /// HCI_Read_Local_Supported_Commands (7.4.2).
    ReadLocalSupportedCommands = ip(0x0002) => {}
    /// HCI_Read_Local_Supported_Features (7.4.3).
    ReadLocalSupportedFeatures = ip(0x0003) => {}
    /// HCI_Read_Local_Extended_Features (7.4.4).
    ReadLocalExtendedFeatures = ip(0x0004) => { page_number: u8 }
    /// HCI_Read_Buffer_Size (7.4.5).
    ReadBufferSize = ip(0x0005) => {}
    /// HCI_Read_BD_ADDR (7.4.6).
    ReadBdAddr = ip(0x0009) => {}

    // ----- Status parameters, OGF 0x05 (7.5) -----

    /// HCI_Read_RSSI (7.5.4).
    ReadRssi = sp(0x0005) => { handle: u16 }
    /// HCI_Read_Encryption_Key_Size (7.5.7).
    ReadEncryptionKeySize = sp(0x0008) => { connection_handle: u16 }

    // ----- LE Controller commands, OGF 0x08 (7.8) -----

    /// HCI_LE_Set_Event_Mask (7.8.1).
    LeSetEventMask = le(0x0001) => { le_event_mask: [u8; 8] }
    /// HCI_LE_Read_Buffer_Size [v1] (7.8.2).
    LeReadBufferSize = le(0x0002) => {}
    /// HCI_LE_Read_Local_Supported_Features (7.8.3).
    LeReadLocalSupportedFeatures = le(0x0003) => {}
    /// HCI_LE_Set_Random_Address (7.8.4).
    LeSetRandomAddress = le(0x0005) => { random_address: BdAddr }
    /// HCI_LE_Set_Advertising_Parameters (7.8.5).
    LeSetAdvertisingParameters = le(0x0006) => {
        advertising_interval_min: u16, advertising_interval_max: u16, advertising_type: u8,
        own_address_type: u8, peer_address_type: u8, peer_address: BdAddr,
        advertising_channel_map: u8, advertising_filter_policy: u8,
    }
    /// HCI_LE_Read_Advertising_Physical_Channel_Tx_Power (7.8.6).
    LeReadAdvertisingPhysicalChannelTxPower = le(0x0007) => {}
    /// HCI_LE_Set_Advertising_Data (7.8.7).
    LeSetAdvertisingData = le(0x0008) => { advertising_data_length: u8, advertising_data: [u8; 31] }
    /// HCI_LE_Set_Scan_Response_Data (7.8.8).
    LeSetScanResponseData = le(0x0009) => { scan_response_data_length: u8, scan_response_data: [u8; 31] }
    /// HCI_LE_Set_Advertising_Enable (7.8.9).
    LeSetAdvertisingEnable = le(0x000a) => { advertising_enable: u8 }
    /// HCI_LE_Set_Scan_Parameters (7.8.10).
    LeSetScanParameters = le(0x000b) => {
        le_scan_type: u8, le_scan_interval: u16, le_scan_window: u16, own_address_type: u8,
        scanning_filter_policy: u8,
    }
    /// HCI_LE_Set_Scan_Enable (7.8.11).
    LeSetScanEnable = le(0x000c) => { le_scan_enable: u8, filter_duplicates: u8 }
    /// HCI_LE_Create_Connection (7.8.12).
    LeCreateConnection = le(0x000d) => {
        le_scan_interval: u16, le_scan_window: u16, initiator_filter_policy: u8,
        peer_address_type: u8, peer_address: BdAddr, own_address_type: u8,
        connection_interval_min: u16, connection_interval_max: u16, max_latency: u16,
        supervision_timeout: u16, min_ce_length: u16, max_ce_length: u16,
    }
    /// HCI_LE_Create_Connection_Cancel (7.8.13).
    LeCreateConnectionCancel = le(0x000e) => {}
    /// HCI_LE_Read_Filter_Accept_List_Size (7.8.14).
    LeReadFilterAcceptListSize = le(0x000f) => {}
    /// HCI_LE_Clear_Filter_Accept_List (7.8.15).
    LeClearFilterAcceptList = le(0x0010) => {}
    /// HCI_LE_Add_Device_To_Filter_Accept_List (7.8.16).
    LeAddDeviceToFilterAcceptList = le(0x0011) => { address_type: u8, address: BdAddr }
    /// HCI_LE_Remove_Device_From_Filter_Accept_List (7.8.17).
    LeRemoveDeviceFromFilterAcceptList = le(0x0012) => { address_type: u8, address: BdAddr }
    /// HCI_LE_Connection_Update (7.8.18).
    LeConnectionUpdate = le(0x0013) => {
        connection_handle: u16, connection_interval_min: u16, connection_interval_max: u16,
        max_latency: u16, supervision_timeout: u16, min_ce_length: u16, max_ce_length: u16,
    }
    /// HCI_LE_Read_Remote_Features (7.8.21).
    LeReadRemoteFeatures = le(0x0016) => { connection_handle: u16 }
    /// HCI_LE_Rand (7.8.23).
    LeRand = le(0x0018) => {}
    /// HCI_LE_Enable_Encryption (7.8.24), formerly LE Start Encryption.
    LeEnableEncryption = le(0x0019) => {
        connection_handle: u16, random_number: [u8; 8], encrypted_diversifier: u16,
        long_term_key: [u8; 16],
    }
    /// HCI_LE_Long_Term_Key_Request_Reply (7.8.25).
    LeLongTermKeyRequestReply = le(0x001a) => { connection_handle: u16, long_term_key: [u8; 16] }
    /// HCI_LE_Long_Term_Key_Request_Negative_Reply (7.8.26).
    LeLongTermKeyRequestNegativeReply = le(0x001b) => { connection_handle: u16 }
    /// HCI_LE_Read_Supported_States (7.8.27).
    LeReadSupportedStates = le(0x001c) => {}
}

impl HciCommand {
    /// The command's opcode.
    pub fn opcode(&self) -> Opcode {
        self.code()
    }

    /// Decodes a command packet (without the H4 type byte).
    pub fn parse<T: AsRef<[u8]>>(packet: &CommandPacket<T>) -> Result<Self, ParamError> {
        Self::parse_parameters(packet.opcode(), packet.parameters())
    }

    /// The whole command packet: opcode, parameter length, parameters (Vol 4, Part E, 5.4.1).
    /// Parameters longer than 255 bytes (possible only for `Unknown`) are cut to 255.
    pub fn to_packet(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + 16);
        out.extend_from_slice(&self.opcode().0.to_le_bytes());
        out.push(0);
        self.emit_parameters(&mut out);
        out.truncate(3 + 255);
        out[2] = (out.len() - 3) as u8;
        out
    }
}

/// Declares return-parameter structs for Command Complete events (each with a [`Field`] impl).
macro_rules! return_params {
    ($( $(#[$meta:meta])* $name:ident { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? } )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $name {
                $( $(#[$fmeta])* #[doc = concat!("`", stringify!($field), "`.")] pub $field: $fty, )*
            }

            impl Field for $name {
                fn read(_r: &mut Reader<'_>) -> Option<Self> {
                    Some(Self { $( $field: <$fty as Field>::read(_r)?, )* })
                }
                fn write(&self, _out: &mut Vec<u8>) {
                    $( Field::write(&self.$field, _out); )*
                }
            }

            impl $name {
                /// Decodes the return parameters of a Command Complete event.
                pub fn parse(bytes: &[u8]) -> Result<Self, ParamError> {
                    parse_exact(bytes, <Self as Field>::read)
                }

                /// The encoded return parameters.
                pub fn to_bytes(&self) -> Vec<u8> {
                    let mut out = Vec::new();
                    self.write(&mut out);
                    out
                }
            }
        )*
    };
}

return_params! {
    /// Return parameters made of a status alone (most Write commands).
    StatusReturn { status: ErrorCode }
    /// Return parameters of HCI_Read_BD_ADDR (7.4.6).
    ReadBdAddrReturn { status: ErrorCode, bd_addr: BdAddr }
    /// Return parameters of HCI_Read_Local_Version_Information (7.4.1).
    ReadLocalVersionInformationReturn {
        status: ErrorCode, hci_version: u8, hci_subversion: u16, lmp_version: u8,
        company_identifier: u16, lmp_subversion: u16,
    }
    /// Return parameters of HCI_Read_Local_Supported_Commands (7.4.2).
    ReadLocalSupportedCommandsReturn { status: ErrorCode, supported_commands: [u8; 64] }
    /// Return parameters of HCI_Read_Local_Supported_Features (7.4.3).
    ReadLocalSupportedFeaturesReturn { status: ErrorCode, lmp_features: [u8; 8] }
    /// Return parameters of HCI_Read_Local_Extended_Features (7.4.4).
    ReadLocalExtendedFeaturesReturn {
        status: ErrorCode, page_number: u8, maximum_page_number: u8, extended_lmp_features: [u8; 8],
    }
    /// Return parameters of HCI_Read_Buffer_Size (7.4.5).
    ReadBufferSizeReturn {
        status: ErrorCode, acl_data_packet_length: u16, synchronous_data_packet_length: u8,
        total_num_acl_data_packets: u16, total_num_synchronous_data_packets: u16,
    }
    /// Return parameters of HCI_LE_Read_Buffer_Size (7.8.2).
    LeReadBufferSizeReturn { status: ErrorCode, le_acl_data_packet_length: u16, total_num_le_acl_data_packets: u8 }
    /// Return parameters of HCI_LE_Read_Local_Supported_Features (7.8.3).
    LeReadLocalSupportedFeaturesReturn { status: ErrorCode, le_features: [u8; 8] }
    /// Return parameters of HCI_Read_Local_Name (7.3.12).
    ReadLocalNameReturn { status: ErrorCode, local_name: [u8; 248] }
    /// Return parameters of HCI_Read_Class_Of_Device (7.3.25).
    ReadClassOfDeviceReturn { status: ErrorCode, class_of_device: ClassOfDevice }
    /// Return parameters of commands that answer a status and a BD_ADDR (the pairing replies,
    /// Create Connection Cancel, Remote Name Request Cancel).
    StatusBdAddrReturn { status: ErrorCode, bd_addr: BdAddr }
    /// Return parameters of commands that answer a status and a connection handle.
    StatusHandleReturn { status: ErrorCode, connection_handle: u16 }
    /// Return parameters of HCI_Read_Scan_Enable (7.3.17) and other one-octet reads.
    StatusU8Return { status: ErrorCode, value: u8 }
    /// Return parameters of two-octet reads (timeouts, voice setting, policy).
    StatusU16Return { status: ErrorCode, value: u16 }
    /// Return parameters of HCI_LE_Rand (7.8.23).
    LeRandReturn { status: ErrorCode, random_number: [u8; 8] }
    /// Return parameters of HCI_Read_Encryption_Key_Size (7.5.7).
    ReadEncryptionKeySizeReturn { status: ErrorCode, connection_handle: u16, key_size: u8 }
}
