//! The Supported_Commands bit of each command this crate knows (Core Specification v5.4,
//! Vol 4, Part E, 6.27), and the feature bits the controller can claim. The controller sets a
//! bit only for commands present in its handler table.

use crate::wire::{self as c, Opcode};

/// `(opcode, octet, bit)` of the Supported_Commands parameter (Vol 4, Part E, 6.27).
/// HCI_Read_Local_Supported_Commands itself has no bit: it is always supported.
pub const SUPPORTED_COMMAND_BITS: &[(Opcode, usize, u8)] = &[
    (c::Inquiry::CODE, 0, 0),
    (c::InquiryCancel::CODE, 0, 1),
    (c::CreateConnection::CODE, 0, 4),
    (c::Disconnect::CODE, 0, 5),
    (c::CreateConnectionCancel::CODE, 0, 7),
    (c::AcceptConnectionRequest::CODE, 1, 0),
    (c::RejectConnectionRequest::CODE, 1, 1),
    (c::LinkKeyRequestReply::CODE, 1, 2),
    (c::LinkKeyRequestNegativeReply::CODE, 1, 3),
    (c::PinCodeRequestReply::CODE, 1, 4),
    (c::PinCodeRequestNegativeReply::CODE, 1, 5),
    (c::ChangeConnectionPacketType::CODE, 1, 6),
    (c::AuthenticationRequested::CODE, 1, 7),
    (c::SetConnectionEncryption::CODE, 2, 0),
    (c::RemoteNameRequest::CODE, 2, 3),
    (c::RemoteNameRequestCancel::CODE, 2, 4),
    (c::ReadRemoteSupportedFeatures::CODE, 2, 5),
    (c::ReadRemoteExtendedFeatures::CODE, 2, 6),
    (c::ReadRemoteVersionInformation::CODE, 2, 7),
    (c::ReadClockOffset::CODE, 3, 0),
    (c::IoCapabilityRequestReply::CODE, 18, 7),
    (c::UserConfirmationRequestReply::CODE, 19, 0),
    (c::UserConfirmationRequestNegativeReply::CODE, 19, 1),
    (c::UserPasskeyRequestReply::CODE, 19, 2),
    (c::UserPasskeyRequestNegativeReply::CODE, 19, 3),
    (c::IoCapabilityRequestNegativeReply::CODE, 20, 3),
    (c::WriteLinkPolicySettings::CODE, 5, 2),
    (c::ReadDefaultLinkPolicySettings::CODE, 5, 3),
    (c::WriteDefaultLinkPolicySettings::CODE, 5, 4),
    (c::SetEventMask::CODE, 5, 6),
    (c::Reset::CODE, 5, 7),
    (c::SetEventFilter::CODE, 6, 0),
    (c::ReadPinType::CODE, 6, 2),
    (c::WritePinType::CODE, 6, 3),
    (c::ReadStoredLinkKey::CODE, 6, 5),
    (c::DeleteStoredLinkKey::CODE, 6, 7),
    (c::WriteLocalName::CODE, 7, 0),
    (c::ReadLocalName::CODE, 7, 1),
    (c::ReadConnectionAcceptTimeout::CODE, 7, 2),
    (c::WriteConnectionAcceptTimeout::CODE, 7, 3),
    (c::ReadPageTimeout::CODE, 7, 4),
    (c::WritePageTimeout::CODE, 7, 5),
    (c::ReadScanEnable::CODE, 7, 6),
    (c::WriteScanEnable::CODE, 7, 7),
    (c::ReadPageScanActivity::CODE, 8, 0),
    (c::WritePageScanActivity::CODE, 8, 1),
    (c::ReadInquiryScanActivity::CODE, 8, 2),
    (c::WriteInquiryScanActivity::CODE, 8, 3),
    (c::ReadAuthenticationEnable::CODE, 8, 4),
    (c::WriteAuthenticationEnable::CODE, 8, 5),
    (c::ReadClassOfDevice::CODE, 9, 0),
    (c::WriteClassOfDevice::CODE, 9, 1),
    (c::ReadVoiceSetting::CODE, 9, 2),
    (c::WriteVoiceSetting::CODE, 9, 3),
    (c::ReadLinkSupervisionTimeout::CODE, 11, 0),
    (c::WriteLinkSupervisionTimeout::CODE, 11, 1),
    (c::ReadNumberOfSupportedIac::CODE, 11, 2),
    (c::ReadCurrentIacLap::CODE, 11, 3),
    (c::WriteCurrentIacLap::CODE, 11, 4),
    (c::ReadInquiryScanType::CODE, 12, 4),
    (c::WriteInquiryScanType::CODE, 12, 5),
    (c::ReadInquiryMode::CODE, 12, 6),
    (c::WriteInquiryMode::CODE, 12, 7),
    (c::ReadPageScanType::CODE, 13, 0),
    (c::WritePageScanType::CODE, 13, 1),
    (c::ReadExtendedInquiryResponse::CODE, 17, 0),
    (c::WriteExtendedInquiryResponse::CODE, 17, 1),
    (c::ReadSimplePairingMode::CODE, 17, 5),
    (c::WriteSimplePairingMode::CODE, 17, 6),
    (c::ReadInquiryResponseTransmitPowerLevel::CODE, 18, 0),
    (c::SetEventMaskPage2::CODE, 22, 2),
    (c::ReadLeHostSupport::CODE, 24, 5),
    (c::WriteLeHostSupport::CODE, 24, 6),
    (c::ReadSecureConnectionsHostSupport::CODE, 32, 2),
    (c::WriteSecureConnectionsHostSupport::CODE, 32, 3),
    (c::ReadLocalVersionInformation::CODE, 14, 3),
    (c::ReadLocalSupportedFeatures::CODE, 14, 5),
    (c::ReadLocalExtendedFeatures::CODE, 14, 6),
    (c::ReadBufferSize::CODE, 14, 7),
    (c::ReadBdAddr::CODE, 15, 1),
    (c::ReadRssi::CODE, 15, 5),
    (c::ReadEncryptionKeySize::CODE, 20, 4),
    (c::LeSetEventMask::CODE, 25, 0),
    (c::LeReadBufferSize::CODE, 25, 1),
    (c::LeReadLocalSupportedFeatures::CODE, 25, 2),
    (c::LeSetRandomAddress::CODE, 25, 4),
    (c::LeSetAdvertisingParameters::CODE, 25, 5),
    (c::LeReadAdvertisingPhysicalChannelTxPower::CODE, 25, 6),
    (c::LeSetAdvertisingData::CODE, 25, 7),
    (c::LeSetScanResponseData::CODE, 26, 0),
    (c::LeSetAdvertisingEnable::CODE, 26, 1),
    (c::LeSetScanParameters::CODE, 26, 2),
    (c::LeSetScanEnable::CODE, 26, 3),
    (c::LeCreateConnection::CODE, 26, 4),
    (c::LeCreateConnectionCancel::CODE, 26, 5),
    (c::LeReadFilterAcceptListSize::CODE, 26, 6),
    (c::LeClearFilterAcceptList::CODE, 26, 7),
    (c::LeAddDeviceToFilterAcceptList::CODE, 27, 0),
    (c::LeRemoveDeviceFromFilterAcceptList::CODE, 27, 1),
    (c::LeConnectionUpdate::CODE, 27, 2),
    (c::LeReadRemoteFeatures::CODE, 27, 5),
    (c::LeRand::CODE, 27, 7),
    (c::LeEnableEncryption::CODE, 28, 0),
    (c::LeLongTermKeyRequestReply::CODE, 28, 1),
    (c::LeLongTermKeyRequestNegativeReply::CODE, 28, 2),
    (c::LeReadSupportedStates::CODE, 28, 3),
];

/// The Supported_Commands position of `opcode`, if the specification gives it one.
pub fn supported_command_bit(opcode: Opcode) -> Option<(usize, u8)> {
    SUPPORTED_COMMAND_BITS
        .iter()
        .find(|(o, _, _)| *o == opcode)
        .map(|&(_, octet, bit)| (octet, bit))
}

/// LMP feature bits (Vol 2, Part C, 3.3), as bit numbers over the 64-bit page 0 mask, or
/// over page 1 (host features) and page 2 for the `PAGE1_`/`PAGE2_` constants.
pub mod lmp {
    /// Encryption.
    pub const ENCRYPTION: u32 = 2;
    /// RSSI with inquiry results.
    pub const RSSI_WITH_INQUIRY_RESULTS: u32 = 30;
    /// BR/EDR Not Supported.
    pub const BR_EDR_NOT_SUPPORTED: u32 = 37;
    /// LE Supported (Controller).
    pub const LE_SUPPORTED_CONTROLLER: u32 = 38;
    /// Extended Inquiry Response.
    pub const EXTENDED_INQUIRY_RESPONSE: u32 = 48;
    /// Simultaneous LE and BR/EDR to Same Device Capable (Controller).
    pub const SIMULTANEOUS_LE_BR_EDR: u32 = 49;
    /// Secure Simple Pairing (Controller Support).
    pub const SECURE_SIMPLE_PAIRING_CONTROLLER: u32 = 51;
    /// Non-flushable Packet Boundary Flag.
    pub const NON_FLUSHABLE_PACKET_BOUNDARY_FLAG: u32 = 54;
    /// Extended features.
    pub const EXTENDED_FEATURES: u32 = 63;
    /// Page 1: Secure Simple Pairing (Host Support).
    pub const PAGE1_SSP_HOST: u32 = 0;
    /// Page 1: LE Supported (Host).
    pub const PAGE1_LE_HOST: u32 = 1;
    /// Page 1: Secure Connections (Host Support).
    pub const PAGE1_SECURE_CONNECTIONS_HOST: u32 = 3;
}

/// LE feature bits (Vol 6, Part B, 4.6).
pub mod le {
    /// LE Encryption.
    pub const ENCRYPTION: u32 = 0;
    /// Peripheral-initiated Features Exchange.
    pub const PERIPHERAL_INITIATED_FEATURES_EXCHANGE: u32 = 3;
}
