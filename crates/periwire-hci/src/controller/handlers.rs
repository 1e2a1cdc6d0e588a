//! The command handler table (Bumble style): one entry per opcode. Synchronous commands
//! return their return parameters, which go out in Command Complete (Vol 4, Part E, 7.7.14);
//! asynchronous commands return the status for Command Status (7.7.15) and queue their later
//! events themselves.

use std::time::Instant;

use super::{
    slots, Auth, Connection, Controller, Inquiry, LeConnecting, LeEnc, PendingLeConnection, Role,
    Scanning, FILTER_ACCEPT_LIST_SIZE, INQUIRY_PROBE_INTERVAL,
};
use crate::medium::{Advertisement, Dest, LinkPdu, Transport};
use crate::wire::{self as w, BdAddr, ErrorCode, Field, HciCommand, HciEvent, Opcode};

/// A handler: synchronous (answered by Command Complete) or asynchronous (Command Status).
#[derive(Clone, Copy)]
pub enum Handler {
    /// Returns the return parameters for Command Complete. A handler that must queue events
    /// right after its Command Complete queues the Command Complete itself and returns an
    /// empty vector (real return parameters always hold at least a status).
    Sync(fn(&mut Controller, Instant, &HciCommand) -> Vec<u8>),
    /// Returns the status for Command Status; later events are queued by the handler.
    Async(fn(&mut Controller, Instant, &HciCommand) -> ErrorCode),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Sync(_) => f.write_str("Sync"),
            Handler::Async(_) => f.write_str("Async"),
        }
    }
}

/// Which controllers serve a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Every controller.
    Always,
    /// BR/EDR controllers.
    BrEdr,
    /// LE controllers.
    Le,
}

fn status(e: ErrorCode) -> Vec<u8> {
    vec![e.to_u8()]
}

fn ok() -> Vec<u8> {
    status(ErrorCode::Success)
}

fn ret(v: impl Field) -> Vec<u8> {
    let mut out = Vec::new();
    v.write(&mut out);
    out
}

fn status_handle(s: ErrorCode, connection_handle: u16) -> Vec<u8> {
    ret(w::StatusHandleReturn {
        status: s,
        connection_handle,
    })
}

fn status_addr(s: ErrorCode, bd_addr: BdAddr) -> Vec<u8> {
    ret(w::StatusBdAddrReturn { status: s, bd_addr })
}

fn u8_ret(v: u8) -> Vec<u8> {
    ret(w::StatusU8Return {
        status: ErrorCode::Success,
        value: v,
    })
}

fn u16_ret(v: u16) -> Vec<u8> {
    ret(w::StatusU16Return {
        status: ErrorCode::Success,
        value: v,
    })
}

/// Declares a synchronous handler entry for `$variant`, binding its parameters to `$p`.
macro_rules! sync {
    ($needs:ident, $variant:ident, |$c:ident, $now:ident, $p:ident| $body:expr) => {
        (
            w::$variant::CODE,
            Handler::Sync(
                |$c: &mut Controller, $now: Instant, cmd: &HciCommand| -> Vec<u8> {
                    match cmd {
                        HciCommand::$variant($p) => $body,
                        _ => status(ErrorCode::InvalidHciCommandParameters),
                    }
                },
            ),
            Needs::$needs,
        )
    };
}

/// Declares an asynchronous handler entry for `$variant`.
macro_rules! asynch {
    ($needs:ident, $variant:ident, |$c:ident, $now:ident, $p:ident| $body:expr) => {
        (
            w::$variant::CODE,
            Handler::Async(
                |$c: &mut Controller, $now: Instant, cmd: &HciCommand| -> ErrorCode {
                    match cmd {
                        HciCommand::$variant($p) => $body,
                        _ => ErrorCode::InvalidHciCommandParameters,
                    }
                },
            ),
            Needs::$needs,
        )
    };
}

/// Every command this controller implements. The Supported Commands mask and the feature bits
/// are computed from this table.
pub static HANDLERS: &[(Opcode, Handler, Needs)] = &[
    // ----- Link Control -----
    asynch!(BrEdr, Inquiry, |c, now, p| c.inquiry(now, p)),
    sync!(BrEdr, InquiryCancel, |c, _now, _p| {
        if c.inquiry.take().is_some() {
            ok()
        } else {
            status(ErrorCode::CommandDisallowed)
        }
    }),
    asynch!(BrEdr, CreateConnection, |c, now, p| c
        .create_connection(now, p)),
    asynch!(Always, Disconnect, |c, _now, p| c.disconnect(p)),
    sync!(BrEdr, CreateConnectionCancel, |c, _now, p| {
        if c.pages.remove(&p.bd_addr).is_some() {
            c.send(Dest::BrEdr(p.bd_addr), LinkPdu::PageCancel);
            let r = status_addr(ErrorCode::Success, p.bd_addr);
            c.push_event(HciEvent::command_complete(
                w::CreateConnectionCancel::CODE,
                r,
            ));
            c.connection_complete_failed(ErrorCode::UnknownConnectionIdentifier, p.bd_addr);
            // Command Complete already queued in order; the dispatcher's copy is suppressed.
            return Vec::new();
        }
        let s = if c.conn_by_addr(p.bd_addr).is_some() {
            ErrorCode::ConnectionAlreadyExists
        } else {
            ErrorCode::UnknownConnectionIdentifier
        };
        status_addr(s, p.bd_addr)
    }),
    asynch!(BrEdr, AcceptConnectionRequest, |c, _now, p| c
        .accept_connection(p.bd_addr, p.role)),
    asynch!(BrEdr, RejectConnectionRequest, |c, _now, p| c
        .reject_connection(p.bd_addr, p.reason)),
    sync!(BrEdr, LinkKeyRequestReply, |c, _now, p| {
        let s = c.link_key_reply(p.bd_addr, Some(p.link_key));
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, LinkKeyRequestNegativeReply, |c, _now, p| {
        let s = c.link_key_reply(p.bd_addr, None);
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, PinCodeRequestReply, |c, _now, p| {
        let n = usize::from(p.pin_code_length).min(16);
        let s = if n == 0 {
            ErrorCode::InvalidHciCommandParameters
        } else {
            c.pin_reply(p.bd_addr, Some(p.pin_code[..n].to_vec()))
        };
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, PinCodeRequestNegativeReply, |c, _now, p| {
        let s = c.pin_reply(p.bd_addr, None);
        status_addr(s, p.bd_addr)
    }),
    asynch!(BrEdr, AuthenticationRequested, |c, _now, p| c
        .authentication_requested(p.connection_handle)),
    asynch!(BrEdr, SetConnectionEncryption, |c, _now, p| c
        .set_connection_encryption(
            p.connection_handle,
            p.encryption_enable
        )),
    asynch!(BrEdr, RemoteNameRequest, |c, now, p| c
        .remote_name_request(now, p.bd_addr)),
    sync!(BrEdr, RemoteNameRequestCancel, |c, _now, p| {
        if c.name_requests.remove(&p.bd_addr).is_some() {
            let r = status_addr(ErrorCode::Success, p.bd_addr);
            c.push_event(HciEvent::command_complete(
                w::RemoteNameRequestCancel::CODE,
                r,
            ));
            c.push_event(HciEvent::RemoteNameRequestComplete(
                w::RemoteNameRequestComplete {
                    status: ErrorCode::UnknownConnectionIdentifier,
                    bd_addr: p.bd_addr,
                    remote_name: [0; 248],
                },
            ));
            return Vec::new();
        }
        status_addr(ErrorCode::InvalidHciCommandParameters, p.bd_addr)
    }),
    asynch!(BrEdr, ReadRemoteSupportedFeatures, |c, _now, p| c
        .features_request(p.connection_handle, false, 0)),
    asynch!(BrEdr, ReadRemoteExtendedFeatures, |c, _now, p| c
        .features_request(p.connection_handle, true, p.page_number)),
    asynch!(Always, ReadRemoteVersionInformation, |c, _now, p| {
        match c.connections.get(&p.connection_handle) {
            Some(conn) => {
                let (peer, transport) = (conn.peer, conn.transport);
                c.send(Dest::Adapter(peer), LinkPdu::VersionRequest { transport });
                ErrorCode::Success
            }
            None => ErrorCode::UnknownConnectionIdentifier,
        }
    }),
    sync!(BrEdr, IoCapabilityRequestReply, |c, _now, p| {
        let s = c.io_capability_reply(
            p.bd_addr,
            Ok((
                p.io_capability,
                p.oob_data_present,
                p.authentication_requirements,
            )),
        );
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, IoCapabilityRequestNegativeReply, |c, _now, p| {
        let s = c.io_capability_reply(p.bd_addr, Err(p.reason));
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, UserConfirmationRequestReply, |c, _now, p| {
        let s = c.user_confirmation(p.bd_addr, true);
        status_addr(s, p.bd_addr)
    }),
    sync!(BrEdr, UserConfirmationRequestNegativeReply, |c, _now, p| {
        let s = c.user_confirmation(p.bd_addr, false);
        status_addr(s, p.bd_addr)
    }),
    // ----- Link Policy -----
    sync!(BrEdr, WriteLinkPolicySettings, |c, _now, p| {
        let s = if c.connections.contains_key(&p.connection_handle) {
            ErrorCode::Success
        } else {
            ErrorCode::UnknownConnectionIdentifier
        };
        status_handle(s, p.connection_handle)
    }),
    sync!(BrEdr, ReadDefaultLinkPolicySettings, |c, _now, _p| u16_ret(
        c.host.default_link_policy
    )),
    sync!(BrEdr, WriteDefaultLinkPolicySettings, |c, _now, p| {
        c.host.default_link_policy = p.default_link_policy_settings;
        ok()
    }),
    // ----- Controller & Baseband -----
    sync!(Always, SetEventMask, |c, _now, p| {
        c.host.event_mask = u64::from_le_bytes(p.event_mask);
        ok()
    }),
    sync!(Always, Reset, |c, _now, _p| {
        c.reset();
        ok()
    }),
    sync!(BrEdr, SetEventFilter, |_c, _now, p| {
        // Clear All Filters, or a filter equal to the default behaviour (all devices, no
        // auto-accept) are honoured; other filters are not implemented.
        match (p.filter_type, p.filter.0.as_slice()) {
            (0x00, []) | (0x01, [0x00]) | (0x02, [0x00, 0x01]) => ok(),
            _ => status(ErrorCode::UnsupportedFeatureOrParameterValue),
        }
    }),
    sync!(BrEdr, ReadPinType, |c, _now, _p| u8_ret(c.host.pin_type)),
    sync!(BrEdr, WritePinType, |c, _now, p| {
        c.host.pin_type = p.pin_type;
        ok()
    }),
    sync!(BrEdr, ReadStoredLinkKey, |_c, _now, _p| {
        // No keys are stored in the controller: Max_Num_Keys 0, Num_Keys_Read 0.
        vec![0, 0, 0, 0, 0]
    }),
    sync!(BrEdr, DeleteStoredLinkKey, |_c, _now, _p| vec![0, 0, 0]),
    sync!(BrEdr, WriteLocalName, |c, _now, p| {
        c.host.local_name = p.local_name;
        ok()
    }),
    sync!(BrEdr, ReadLocalName, |c, _now, _p| ret(
        w::ReadLocalNameReturn {
            status: ErrorCode::Success,
            local_name: c.host.local_name,
        }
    )),
    sync!(BrEdr, ReadConnectionAcceptTimeout, |c, _now, _p| u16_ret(
        c.host.connection_accept_timeout
    )),
    sync!(BrEdr, WriteConnectionAcceptTimeout, |c, _now, p| {
        c.host.connection_accept_timeout = p.connection_accept_timeout;
        ok()
    }),
    sync!(BrEdr, ReadPageTimeout, |c, _now, _p| u16_ret(
        c.host.page_timeout
    )),
    sync!(BrEdr, WritePageTimeout, |c, _now, p| {
        if p.page_timeout == 0 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.page_timeout = p.page_timeout;
        ok()
    }),
    sync!(BrEdr, ReadScanEnable, |c, _now, _p| u8_ret(
        c.host.scan_enable
    )),
    sync!(BrEdr, WriteScanEnable, |c, _now, p| {
        if p.scan_enable > 3 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.scan_enable = p.scan_enable;
        ok()
    }),
    sync!(BrEdr, ReadPageScanActivity, |c, _now, _p| {
        let (i, wdw) = c.host.page_scan_activity;
        let mut v = ok();
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&wdw.to_le_bytes());
        v
    }),
    sync!(BrEdr, WritePageScanActivity, |c, _now, p| {
        c.host.page_scan_activity = (p.page_scan_interval, p.page_scan_window);
        ok()
    }),
    sync!(BrEdr, ReadInquiryScanActivity, |c, _now, _p| {
        let (i, wdw) = c.host.inquiry_scan_activity;
        let mut v = ok();
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&wdw.to_le_bytes());
        v
    }),
    sync!(BrEdr, WriteInquiryScanActivity, |c, _now, p| {
        c.host.inquiry_scan_activity = (p.inquiry_scan_interval, p.inquiry_scan_window);
        ok()
    }),
    sync!(BrEdr, ReadAuthenticationEnable, |c, _now, _p| u8_ret(
        c.host.authentication_enable
    )),
    sync!(BrEdr, WriteAuthenticationEnable, |c, _now, p| {
        c.host.authentication_enable = p.authentication_enable;
        ok()
    }),
    sync!(BrEdr, ReadClassOfDevice, |c, _now, _p| ret(
        w::ReadClassOfDeviceReturn {
            status: ErrorCode::Success,
            class_of_device: c.host.class_of_device,
        }
    )),
    sync!(BrEdr, WriteClassOfDevice, |c, _now, p| {
        c.host.class_of_device = p.class_of_device;
        ok()
    }),
    sync!(BrEdr, ReadVoiceSetting, |c, _now, _p| u16_ret(
        c.host.voice_setting
    )),
    sync!(BrEdr, WriteVoiceSetting, |c, _now, p| {
        c.host.voice_setting = p.voice_setting;
        ok()
    }),
    sync!(BrEdr, ReadLinkSupervisionTimeout, |c, _now, p| {
        if !c.connections.contains_key(&p.handle) {
            return status_handle(ErrorCode::UnknownConnectionIdentifier, p.handle);
        }
        let mut v = status_handle(ErrorCode::Success, p.handle);
        v.extend_from_slice(&0x7d00u16.to_le_bytes());
        v
    }),
    sync!(BrEdr, WriteLinkSupervisionTimeout, |c, _now, p| {
        let s = if c.connections.contains_key(&p.handle) {
            ErrorCode::Success
        } else {
            ErrorCode::UnknownConnectionIdentifier
        };
        status_handle(s, p.handle)
    }),
    sync!(BrEdr, ReadNumberOfSupportedIac, |_c, _now, _p| u8_ret(1)),
    sync!(BrEdr, ReadCurrentIacLap, |c, _now, _p| {
        let mut v = ok();
        w::Counted(c.host.iac_laps.clone()).write(&mut v);
        v
    }),
    sync!(BrEdr, WriteCurrentIacLap, |c, _now, p| {
        if p.iac_laps.0.is_empty() || p.iac_laps.0.len() > 1 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.iac_laps = p.iac_laps.0.clone();
        ok()
    }),
    sync!(BrEdr, ReadInquiryScanType, |c, _now, _p| u8_ret(
        c.host.inquiry_scan_type
    )),
    sync!(BrEdr, WriteInquiryScanType, |c, _now, p| {
        c.host.inquiry_scan_type = p.scan_type;
        ok()
    }),
    sync!(BrEdr, ReadInquiryMode, |c, _now, _p| u8_ret(
        c.host.inquiry_mode
    )),
    sync!(BrEdr, WriteInquiryMode, |c, _now, p| {
        if p.inquiry_mode > 2 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.inquiry_mode = p.inquiry_mode;
        ok()
    }),
    sync!(BrEdr, ReadPageScanType, |c, _now, _p| u8_ret(
        c.host.page_scan_type
    )),
    sync!(BrEdr, WritePageScanType, |c, _now, p| {
        c.host.page_scan_type = p.page_scan_type;
        ok()
    }),
    sync!(BrEdr, ReadExtendedInquiryResponse, |c, _now, _p| {
        let mut v = ok();
        v.push(c.host.fec_required);
        v.extend_from_slice(&c.host.eir);
        v
    }),
    sync!(BrEdr, WriteExtendedInquiryResponse, |c, _now, p| {
        c.host.fec_required = p.fec_required;
        c.host.eir = p.extended_inquiry_response;
        ok()
    }),
    sync!(BrEdr, ReadSimplePairingMode, |c, _now, _p| u8_ret(
        c.host.simple_pairing_mode
    )),
    sync!(BrEdr, WriteSimplePairingMode, |c, _now, p| {
        c.host.simple_pairing_mode = p.simple_pairing_mode;
        ok()
    }),
    sync!(
        BrEdr,
        ReadInquiryResponseTransmitPowerLevel,
        |_c, _now, _p| u8_ret(0)
    ),
    sync!(Always, SetEventMaskPage2, |c, _now, p| {
        c.host.event_mask_page_2 = u64::from_le_bytes(p.event_mask_page_2);
        ok()
    }),
    sync!(Le, ReadLeHostSupport, |c, _now, _p| {
        let mut v = u8_ret(c.host.le_host);
        v.push(0);
        v
    }),
    sync!(Le, WriteLeHostSupport, |c, _now, p| {
        c.host.le_host = p.le_supported_host;
        ok()
    }),
    sync!(BrEdr, ReadSecureConnectionsHostSupport, |c, _now, _p| {
        u8_ret(c.host.secure_connections_host)
    }),
    sync!(BrEdr, WriteSecureConnectionsHostSupport, |c, _now, p| {
        c.host.secure_connections_host = p.secure_connections_host_support;
        ok()
    }),
    // ----- Informational -----
    sync!(Always, ReadLocalVersionInformation, |c, _now, _p| ret(
        w::ReadLocalVersionInformationReturn {
            status: ErrorCode::Success,
            hci_version: HCI_VERSION,
            hci_subversion: 0x0001,
            lmp_version: HCI_VERSION,
            company_identifier: c.config.company_identifier,
            lmp_subversion: 0x0001,
        }
    )),
    sync!(Always, ReadLocalSupportedCommands, |c, _now, _p| ret(
        w::ReadLocalSupportedCommandsReturn {
            status: ErrorCode::Success,
            supported_commands: c.supported_commands,
        }
    )),
    sync!(Always, ReadLocalSupportedFeatures, |c, _now, _p| ret(
        w::ReadLocalSupportedFeaturesReturn {
            status: ErrorCode::Success,
            lmp_features: c.lmp_features(),
        }
    )),
    sync!(Always, ReadLocalExtendedFeatures, |c, _now, p| {
        let (s, f) = match p.page_number {
            0 => (ErrorCode::Success, c.lmp_features()),
            1 => (ErrorCode::Success, c.lmp_host_features()),
            _ => (ErrorCode::InvalidHciCommandParameters, [0; 8]),
        };
        ret(w::ReadLocalExtendedFeaturesReturn {
            status: s,
            page_number: p.page_number,
            maximum_page_number: 1,
            extended_lmp_features: f,
        })
    }),
    sync!(Always, ReadBufferSize, |c, _now, _p| ret(
        w::ReadBufferSizeReturn {
            status: ErrorCode::Success,
            acl_data_packet_length: c.config.acl_data_packet_length,
            synchronous_data_packet_length: 0,
            total_num_acl_data_packets: c.config.total_num_acl_data_packets,
            total_num_synchronous_data_packets: 0,
        }
    )),
    sync!(Always, ReadBdAddr, |c, _now, _p| ret(w::ReadBdAddrReturn {
        status: ErrorCode::Success,
        bd_addr: c.config.address,
    })),
    // ----- Status -----
    sync!(Always, ReadRssi, |c, _now, p| {
        if !c.connections.contains_key(&p.handle) {
            return status_handle(ErrorCode::UnknownConnectionIdentifier, p.handle);
        }
        let mut v = status_handle(ErrorCode::Success, p.handle);
        v.push((-40i8) as u8);
        v
    }),
    sync!(BrEdr, ReadEncryptionKeySize, |c, _now, p| {
        let h = p.connection_handle;
        let (s, size) = match c.connections.get(&h) {
            Some(conn) if conn.encrypted => (ErrorCode::Success, 16),
            Some(_) => (ErrorCode::InsufficientSecurity, 0),
            None => (ErrorCode::UnknownConnectionIdentifier, 0),
        };
        ret(w::ReadEncryptionKeySizeReturn {
            status: s,
            connection_handle: h,
            key_size: size,
        })
    }),
    // ----- LE -----
    sync!(Le, LeSetEventMask, |c, _now, p| {
        c.host.le_event_mask = u64::from_le_bytes(p.le_event_mask);
        ok()
    }),
    sync!(Le, LeReadBufferSize, |c, _now, _p| ret(
        w::LeReadBufferSizeReturn {
            status: ErrorCode::Success,
            le_acl_data_packet_length: c.config.le_acl_data_packet_length,
            total_num_le_acl_data_packets: c.config.total_num_le_acl_data_packets,
        }
    )),
    sync!(Le, LeReadLocalSupportedFeatures, |c, _now, _p| ret(
        w::LeReadLocalSupportedFeaturesReturn {
            status: ErrorCode::Success,
            le_features: c.le_features(),
        }
    )),
    sync!(Le, LeSetRandomAddress, |c, _now, p| {
        if c.host.advertising || c.scanning.is_some() || c.le_connecting.is_some() {
            return status(ErrorCode::CommandDisallowed);
        }
        c.host.random_address = p.random_address;
        ok()
    }),
    sync!(Le, LeSetAdvertisingParameters, |c, _now, p| {
        if c.host.advertising {
            return status(ErrorCode::CommandDisallowed);
        }
        if p.advertising_type > 4 || p.advertising_interval_min > p.advertising_interval_max {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.advertising_parameters = p.clone();
        ok()
    }),
    sync!(
        Le,
        LeReadAdvertisingPhysicalChannelTxPower,
        |_c, _now, _p| u8_ret(0)
    ),
    sync!(Le, LeSetAdvertisingData, |c, _now, p| {
        let n = usize::from(p.advertising_data_length);
        if n > 31 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.advertising_data = p.advertising_data[..n].to_vec();
        c.announce();
        ok()
    }),
    sync!(Le, LeSetScanResponseData, |c, _now, p| {
        let n = usize::from(p.scan_response_data_length);
        if n > 31 {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.scan_response_data = p.scan_response_data[..n].to_vec();
        c.announce();
        ok()
    }),
    sync!(Le, LeSetAdvertisingEnable, |c, _now, p| {
        match p.advertising_enable {
            0 => c.host.advertising = false,
            1 => {
                let own = c.host.advertising_parameters.own_address_type;
                if c.own_le_address(own).is_none() {
                    return status(ErrorCode::InvalidHciCommandParameters);
                }
                c.host.advertising = true;
                c.announce();
            }
            _ => return status(ErrorCode::InvalidHciCommandParameters),
        }
        ok()
    }),
    sync!(Le, LeSetScanParameters, |c, _now, p| {
        if c.scanning.is_some() {
            return status(ErrorCode::CommandDisallowed);
        }
        if p.le_scan_type > 1 || p.le_scan_window > p.le_scan_interval {
            return status(ErrorCode::InvalidHciCommandParameters);
        }
        c.host.scan_parameters = p.clone();
        ok()
    }),
    sync!(Le, LeSetScanEnable, |c, _now, p| {
        match p.le_scan_enable {
            0 => c.scanning = None,
            1 => {
                let sp = &c.host.scan_parameters;
                if sp.own_address_type & 1 == 1 && c.host.random_address == BdAddr::ANY {
                    return status(ErrorCode::InvalidHciCommandParameters);
                }
                c.scanning = Some(Scanning {
                    active: sp.le_scan_type == 1,
                    filter_duplicates: p.filter_duplicates == 1,
                    filter_policy: sp.scanning_filter_policy,
                    seen: Default::default(),
                });
                c.send(Dest::Broadcast, LinkPdu::ScanStart);
            }
            _ => return status(ErrorCode::InvalidHciCommandParameters),
        }
        ok()
    }),
    asynch!(Le, LeCreateConnection, |c, _now, p| c
        .le_create_connection(p)),
    sync!(Le, LeCreateConnectionCancel, |c, _now, _p| {
        let Some(pending) = c.le_connecting.take() else {
            return status(ErrorCode::CommandDisallowed);
        };
        c.push_event(HciEvent::command_complete(
            w::LeCreateConnectionCancel::CODE,
            ok(),
        ));
        c.le_meta(w::LeConnectionComplete {
            status: ErrorCode::UnknownConnectionIdentifier,
            connection_handle: 0,
            role: 0,
            peer_address_type: pending.peer_address_type,
            peer_address: pending.peer_address,
            connection_interval: 0,
            peripheral_latency: 0,
            supervision_timeout: 0,
            central_clock_accuracy: 0,
        });
        Vec::new()
    }),
    sync!(Le, LeReadFilterAcceptListSize, |_c, _now, _p| u8_ret(
        FILTER_ACCEPT_LIST_SIZE
    )),
    sync!(Le, LeClearFilterAcceptList, |c, _now, _p| {
        c.host.filter_accept_list.clear();
        ok()
    }),
    sync!(Le, LeAddDeviceToFilterAcceptList, |c, _now, p| {
        let entry = (p.address_type, p.address);
        if !c.host.filter_accept_list.contains(&entry) {
            if c.host.filter_accept_list.len() >= usize::from(FILTER_ACCEPT_LIST_SIZE) {
                return status(ErrorCode::MemoryCapacityExceeded);
            }
            c.host.filter_accept_list.push(entry);
        }
        ok()
    }),
    sync!(Le, LeRemoveDeviceFromFilterAcceptList, |c, _now, p| {
        c.host
            .filter_accept_list
            .retain(|e| *e != (p.address_type, p.address));
        ok()
    }),
    asynch!(Le, LeConnectionUpdate, |c, _now, p| {
        let Some(conn) = c.connections.get_mut(&p.connection_handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        if conn.transport != Transport::Le {
            return ErrorCode::UnknownConnectionIdentifier;
        }
        conn.params = (
            p.connection_interval_max,
            p.max_latency,
            p.supervision_timeout,
        );
        let peer = conn.peer;
        c.send(
            Dest::Adapter(peer),
            LinkPdu::ConnectionUpdate {
                interval: p.connection_interval_max,
                latency: p.max_latency,
                timeout: p.supervision_timeout,
            },
        );
        c.le_meta(w::LeConnectionUpdateComplete {
            status: ErrorCode::Success,
            connection_handle: p.connection_handle,
            connection_interval: p.connection_interval_max,
            peripheral_latency: p.max_latency,
            supervision_timeout: p.supervision_timeout,
        });
        ErrorCode::Success
    }),
    asynch!(Le, LeReadRemoteFeatures, |c, _now, p| {
        match c.connections.get(&p.connection_handle) {
            Some(conn) if conn.transport == Transport::Le => {
                let peer = conn.peer;
                c.send(
                    Dest::Adapter(peer),
                    LinkPdu::FeaturesRequest {
                        transport: Transport::Le,
                        extended: false,
                        page: 0,
                    },
                );
                ErrorCode::Success
            }
            _ => ErrorCode::UnknownConnectionIdentifier,
        }
    }),
    sync!(Le, LeRand, |c, _now, _p| ret(w::LeRandReturn {
        status: ErrorCode::Success,
        random_number: c.random().to_le_bytes(),
    })),
    asynch!(Le, LeEnableEncryption, |c, _now, p| c
        .le_enable_encryption(p)),
    sync!(Le, LeLongTermKeyRequestReply, |c, _now, p| c
        .le_ltk_reply(p.connection_handle, Some(p.long_term_key))),
    sync!(Le, LeLongTermKeyRequestNegativeReply, |c, _now, p| c
        .le_ltk_reply(p.connection_handle, None)),
    sync!(Le, LeReadSupportedStates, |_c, _now, _p| {
        let mut v = ok();
        v.extend_from_slice(&0x0000_03ff_ffff_ffffu64.to_le_bytes());
        v
    }),
];

/// HCI and LMP version reported: Core Specification 5.0 (Assigned Numbers, 2.1).
pub const HCI_VERSION: u8 = 0x09;

impl Controller {
    fn inquiry(&mut self, now: Instant, p: &w::Inquiry) -> ErrorCode {
        if self.inquiry.is_some() {
            return ErrorCode::CommandDisallowed;
        }
        if !(0x01..=0x30).contains(&p.inquiry_length) {
            return ErrorCode::InvalidHciCommandParameters;
        }
        let length = slots(2048).saturating_mul(u32::from(p.inquiry_length));
        self.inquiry = Some(Inquiry {
            deadline: now + length,
            next_probe: now + INQUIRY_PROBE_INTERVAL,
            max_responses: p.num_responses,
            found: Default::default(),
        });
        self.send(Dest::Broadcast, LinkPdu::Inquiry);
        ErrorCode::Success
    }

    fn create_connection(&mut self, now: Instant, p: &w::CreateConnection) -> ErrorCode {
        if self.conn_by_addr(p.bd_addr).is_some() {
            return ErrorCode::ConnectionAlreadyExists;
        }
        if self.pages.contains_key(&p.bd_addr) {
            return ErrorCode::CommandDisallowed;
        }
        if p.bd_addr == self.config.address {
            return ErrorCode::InvalidHciCommandParameters;
        }
        self.pages
            .insert(p.bd_addr, now + slots(self.host.page_timeout));
        self.send(
            Dest::BrEdr(p.bd_addr),
            LinkPdu::Page {
                bd_addr: self.config.address,
                class_of_device: self.host.class_of_device,
            },
        );
        ErrorCode::Success
    }

    fn disconnect(&mut self, p: &w::Disconnect) -> ErrorCode {
        let Some(conn) = self.connections.get(&p.connection_handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let (peer, transport) = (conn.peer, conn.transport);
        self.send(
            Dest::Adapter(peer),
            LinkPdu::Disconnect {
                transport,
                reason: p.reason,
            },
        );
        self.drop_connection(
            p.connection_handle,
            ErrorCode::ConnectionTerminatedByLocalHost,
        );
        ErrorCode::Success
    }

    fn accept_connection(&mut self, addr: BdAddr, role: u8) -> ErrorCode {
        let Some(inc) = self.incoming.remove(&addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        let handle = self.alloc_handle();
        let role = if role == 0 {
            Role::Central
        } else {
            Role::Peripheral
        };
        self.connections.insert(
            handle,
            Connection::new(handle, inc.from, Transport::BrEdr, addr, 0, role),
        );
        self.send(
            Dest::Adapter(inc.from),
            LinkPdu::PageAccept {
                bd_addr: self.config.address,
                role_switch: role == Role::Central,
            },
        );
        if role == Role::Central {
            self.push_event(HciEvent::RoleChange(w::RoleChange {
                status: ErrorCode::Success,
                bd_addr: addr,
                new_role: 0,
            }));
        }
        self.push_event(HciEvent::ConnectionComplete(w::ConnectionComplete {
            status: ErrorCode::Success,
            connection_handle: handle,
            bd_addr: addr,
            link_type: 0x01,
            encryption_enabled: 0,
        }));
        ErrorCode::Success
    }

    fn reject_connection(&mut self, addr: BdAddr, reason: ErrorCode) -> ErrorCode {
        let Some(inc) = self.incoming.remove(&addr) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        self.send(
            Dest::Adapter(inc.from),
            LinkPdu::PageReject {
                bd_addr: self.config.address,
                reason,
            },
        );
        self.connection_complete_failed(reason, addr);
        ErrorCode::Success
    }

    fn remote_name_request(&mut self, now: Instant, addr: BdAddr) -> ErrorCode {
        if self.name_requests.contains_key(&addr) {
            return ErrorCode::CommandDisallowed;
        }
        self.name_requests
            .insert(addr, now + slots(self.host.page_timeout));
        let dest = match self
            .conn_by_addr(addr)
            .and_then(|h| self.connections.get(&h))
        {
            Some(c) => Dest::Adapter(c.peer),
            None => Dest::BrEdr(addr),
        };
        self.send(dest, LinkPdu::NameRequest);
        ErrorCode::Success
    }

    fn features_request(&mut self, handle: u16, extended: bool, page: u8) -> ErrorCode {
        match self.connections.get(&handle) {
            Some(c) if c.transport == Transport::BrEdr => {
                let peer = c.peer;
                self.send(
                    Dest::Adapter(peer),
                    LinkPdu::FeaturesRequest {
                        transport: Transport::BrEdr,
                        extended,
                        page,
                    },
                );
                ErrorCode::Success
            }
            _ => ErrorCode::UnknownConnectionIdentifier,
        }
    }

    fn le_create_connection(&mut self, p: &w::LeCreateConnection) -> ErrorCode {
        if self.le_connecting.is_some() {
            return ErrorCode::CommandDisallowed;
        }
        if p.initiator_filter_policy > 1 || p.connection_interval_min > p.connection_interval_max {
            return ErrorCode::InvalidHciCommandParameters;
        }
        if self.own_le_address(p.own_address_type).is_none() {
            return ErrorCode::InvalidHciCommandParameters;
        }
        self.le_connecting = Some(PendingLeConnection {
            filter_policy: p.initiator_filter_policy,
            peer_address_type: p.peer_address_type & 1,
            peer_address: p.peer_address,
            own_address_type: p.own_address_type,
            params: (
                p.connection_interval_max,
                p.max_latency,
                p.supervision_timeout,
            ),
            state: LeConnecting::Waiting,
        });
        self.send(Dest::Broadcast, LinkPdu::ScanStart);
        ErrorCode::Success
    }

    /// The current advertisement, if advertising.
    pub(super) fn advertisement(&self) -> Option<Advertisement> {
        if !self.host.advertising {
            return None;
        }
        let p = &self.host.advertising_parameters;
        let (address, address_type) = self.own_le_address(p.own_address_type)?;
        let direct = matches!(p.advertising_type, 1 | 4)
            .then_some((p.peer_address_type & 1, p.peer_address));
        Some(Advertisement {
            advertising_type: p.advertising_type,
            address,
            address_type,
            direct,
            data: self.host.advertising_data.clone(),
            scan_response: self.host.scan_response_data.clone(),
        })
    }

    /// Broadcasts the current advertisement (after enable or a data change).
    fn announce(&mut self) {
        if let Some(adv) = self.advertisement() {
            self.send(Dest::Broadcast, LinkPdu::Advertisement(adv));
        }
    }

    fn authentication_requested(&mut self, handle: u16) -> ErrorCode {
        let Some(conn) = self.connections.get_mut(&handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        if conn.transport != Transport::BrEdr {
            return ErrorCode::UnknownConnectionIdentifier;
        }
        if conn.auth != Auth::Idle {
            return ErrorCode::CommandDisallowed;
        }
        conn.auth = Auth::AwaitHostLinkKey;
        let addr = conn.peer_addr;
        self.push_event(HciEvent::LinkKeyRequest(w::LinkKeyRequest {
            bd_addr: addr,
        }));
        ErrorCode::Success
    }

    fn set_connection_encryption(&mut self, handle: u16, enable: u8) -> ErrorCode {
        let Some(conn) = self.connections.get_mut(&handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        if conn.transport != Transport::BrEdr || enable > 1 {
            return ErrorCode::InvalidHciCommandParameters;
        }
        if conn.link_key.is_none() {
            // Encryption needs an authenticated link (Vol 2, Part C, 4.2.5).
            return ErrorCode::InsufficientSecurity;
        }
        conn.encrypted = enable == 1;
        let peer = conn.peer;
        self.send(
            Dest::Adapter(peer),
            LinkPdu::StartEncryption {
                enable: enable == 1,
            },
        );
        self.push_event(HciEvent::EncryptionChange(w::EncryptionChange {
            status: ErrorCode::Success,
            connection_handle: handle,
            encryption_enabled: enable,
        }));
        ErrorCode::Success
    }

    fn le_enable_encryption(&mut self, p: &w::LeEnableEncryption) -> ErrorCode {
        let Some(conn) = self.connections.get_mut(&p.connection_handle) else {
            return ErrorCode::UnknownConnectionIdentifier;
        };
        if conn.transport != Transport::Le {
            return ErrorCode::UnknownConnectionIdentifier;
        }
        if conn.role != Role::Central || conn.le_enc != LeEnc::Idle {
            return ErrorCode::CommandDisallowed;
        }
        conn.le_enc = LeEnc::CentralWaiting;
        let peer = conn.peer;
        self.send(
            Dest::Adapter(peer),
            LinkPdu::LeEncryptionRequest {
                random_number: p.random_number,
                encrypted_diversifier: p.encrypted_diversifier,
                long_term_key: p.long_term_key,
            },
        );
        ErrorCode::Success
    }

    /// Answers the host's LTK reply; on success the Command Complete is queued here, before
    /// the encryption events, and an empty vector tells the dispatcher so.
    fn le_ltk_reply(&mut self, handle: u16, key: Option<[u8; 16]>) -> Vec<u8> {
        let Some(conn) = self.connections.get_mut(&handle) else {
            return status_handle(ErrorCode::UnknownConnectionIdentifier, handle);
        };
        let LeEnc::PeripheralAwaitHost { ltk } = conn.le_enc else {
            return status_handle(ErrorCode::CommandDisallowed, handle);
        };
        conn.le_enc = LeEnc::Idle;
        let peer = conn.peer;
        let was_encrypted = conn.encrypted;
        let outcome = match key {
            None => ErrorCode::PinOrKeyMissing,
            Some(k) if k == ltk => ErrorCode::Success,
            // Different keys give different session keys: the first packet fails its MIC.
            Some(_) => ErrorCode::ConnectionTerminatedMicFailure,
        };
        if outcome.is_success() {
            conn.encrypted = true;
        }
        self.send(
            Dest::Adapter(peer),
            LinkPdu::LeEncryptionResponse { status: outcome },
        );
        let opcode = if key.is_some() {
            w::LeLongTermKeyRequestReply::CODE
        } else {
            w::LeLongTermKeyRequestNegativeReply::CODE
        };
        self.push_event(HciEvent::command_complete(
            opcode,
            status_handle(ErrorCode::Success, handle),
        ));
        self.le_encryption_outcome(handle, outcome, was_encrypted);
        Vec::new()
    }
}
