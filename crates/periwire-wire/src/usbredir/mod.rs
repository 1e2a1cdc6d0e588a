//! The usbredir protocol (spice usbredir, `usb-redirection-protocol.txt` version 0.7): the
//! messages QEMU's `usb-redir` device (the *usb-guest*) exchanges with whoever owns the USB
//! device (the *usb-host*).
//!
//! Every message is a little-endian, packed header `u32 type, u32 length, id` (`id` is a
//! `u32`, or a `u64` once both hellos carry [`Cap::Ids64`]; the hello itself always has a
//! 32-bit id), followed by `length` bytes: a type-specific header and, for data packets and
//! filter strings, data. Which optional fields a message carries depends on the capabilities
//! both sides announced, so decoding and encoding go through a [`Codec`] that knows them.
//!
//! The codec checks every length before anything is buffered or allocated: the header's
//! `length` against the [`Limits`] as soon as the 12 or 16 header bytes are there, a fixed-size
//! message's length against its exact size, and a data packet's data against the length field
//! and the direction of its endpoint. [`host`] is the usb-host's state machine on top.

use crate::Reader;
use thiserror::Error;

pub mod fuzzing;
pub mod host;

#[cfg(test)]
mod tests;

pub use host::{Event, HostError, TransferId, TransferResult, UsbHost};

/// Length of the `version` field of a hello.
pub const VERSION_LEN: usize = 64;
/// Number of endpoint slots of an ep_info message: OUT 0–15, then IN 0–15.
pub const ENDPOINTS: usize = 32;
/// Most interfaces an interface_info message can carry.
pub const MAX_INTERFACES: usize = 32;
/// Most capability words this codec reads from a hello (the protocol defines 8 bits so far).
pub const MAX_CAP_WORDS: usize = 16;

/// Packet type codes (`usbredirproto.h`): control packets 0–27, data packets 100–104.
pub mod kind {
    #![allow(missing_docs)]
    pub const HELLO: u32 = 0;
    pub const DEVICE_CONNECT: u32 = 1;
    pub const DEVICE_DISCONNECT: u32 = 2;
    pub const RESET: u32 = 3;
    pub const INTERFACE_INFO: u32 = 4;
    pub const EP_INFO: u32 = 5;
    pub const SET_CONFIGURATION: u32 = 6;
    pub const GET_CONFIGURATION: u32 = 7;
    pub const CONFIGURATION_STATUS: u32 = 8;
    pub const SET_ALT_SETTING: u32 = 9;
    pub const GET_ALT_SETTING: u32 = 10;
    pub const ALT_SETTING_STATUS: u32 = 11;
    pub const START_ISO_STREAM: u32 = 12;
    pub const STOP_ISO_STREAM: u32 = 13;
    pub const ISO_STREAM_STATUS: u32 = 14;
    pub const START_INTERRUPT_RECEIVING: u32 = 15;
    pub const STOP_INTERRUPT_RECEIVING: u32 = 16;
    pub const INTERRUPT_RECEIVING_STATUS: u32 = 17;
    pub const ALLOC_BULK_STREAMS: u32 = 18;
    pub const FREE_BULK_STREAMS: u32 = 19;
    pub const BULK_STREAMS_STATUS: u32 = 20;
    pub const CANCEL_DATA_PACKET: u32 = 21;
    pub const FILTER_REJECT: u32 = 22;
    pub const FILTER_FILTER: u32 = 23;
    pub const DEVICE_DISCONNECT_ACK: u32 = 24;
    pub const START_BULK_RECEIVING: u32 = 25;
    pub const STOP_BULK_RECEIVING: u32 = 26;
    pub const BULK_RECEIVING_STATUS: u32 = 27;
    pub const CONTROL_PACKET: u32 = 100;
    pub const BULK_PACKET: u32 = 101;
    pub const ISO_PACKET: u32 = 102;
    pub const INTERRUPT_PACKET: u32 = 103;
    pub const BUFFERED_BULK_PACKET: u32 = 104;
}

/// One capability a side announces in its hello (its bit number in the capability words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// USB 3 bulk streams; ep_info carries `max_streams`.
    BulkStreams = 0,
    /// device_connect carries `device_version_bcd`.
    ConnectDeviceVersion = 1,
    /// filter_reject and filter_filter.
    Filter = 2,
    /// The guest acknowledges a device_disconnect.
    DeviceDisconnectAck = 3,
    /// ep_info carries `max_packet_size`.
    EpInfoMaxPacketSize = 4,
    /// Headers carry 64-bit ids.
    Ids64 = 5,
    /// Bulk packets carry `length_high`.
    BulkLength32 = 6,
    /// Buffered bulk input.
    BulkReceiving = 7,
}

/// The first capability word of a hello (every capability defined so far lives there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(pub u32);

impl Caps {
    /// The set of `caps`.
    pub fn of(caps: &[Cap]) -> Self {
        Self(caps.iter().fold(0, |bits, &c| bits | 1 << c as u32))
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap as u32) != 0
    }

    /// The capabilities both sets have.
    pub fn common(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// The status field of replies. Unknown values round-trip and count as errors, as the
/// protocol asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Success,
    /// The transfer was cancelled.
    Cancelled,
    /// Invalid packet type, length, endpoint...
    Inval,
    /// I/O error.
    IoError,
    /// The endpoint stalled.
    Stall,
    /// The request timed out.
    Timeout,
    /// The device babbled (sent more than asked for).
    Babble,
    /// A value this codec does not know.
    Unknown(u8),
}

impl Status {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Cancelled => 1,
            Self::Inval => 2,
            Self::IoError => 3,
            Self::Stall => 4,
            Self::Timeout => 5,
            Self::Babble => 6,
            Self::Unknown(v) => v,
        }
    }

    /// The status of a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::Cancelled,
            2 => Self::Inval,
            3 => Self::IoError,
            4 => Self::Stall,
            5 => Self::Timeout,
            6 => Self::Babble,
            v => Self::Unknown(v),
        }
    }
}

/// Device speed as device_connect numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    /// Low speed.
    Low,
    /// Full speed.
    Full,
    /// High speed.
    High,
    /// SuperSpeed.
    Super,
    /// Not known (255).
    Unknown,
    /// Another value.
    Other(u8),
}

impl Speed {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Low => 0,
            Self::Full => 1,
            Self::High => 2,
            Self::Super => 3,
            Self::Unknown => 255,
            Self::Other(v) => v,
        }
    }

    /// The speed of a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Low,
            1 => Self::Full,
            2 => Self::High,
            3 => Self::Super,
            255 => Self::Unknown,
            v => Self::Other(v),
        }
    }
}

/// Endpoint type as ep_info numbers it (the USB bmAttributes numbering, 255 for no endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointType {
    /// Control.
    Control,
    /// Isochronous.
    Iso,
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
    /// No such endpoint (255).
    #[default]
    Invalid,
    /// Another value.
    Other(u8),
}

impl EndpointType {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Control => 0,
            Self::Iso => 1,
            Self::Bulk => 2,
            Self::Interrupt => 3,
            Self::Invalid => 255,
            Self::Other(v) => v,
        }
    }

    /// The type of a wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Control,
            1 => Self::Iso,
            2 => Self::Bulk,
            3 => Self::Interrupt,
            255 => Self::Invalid,
            v => Self::Other(v),
        }
    }
}

/// The ep_info slot of an endpoint address: OUT endpoints 0–15, IN endpoints 16–31.
pub fn endpoint_index(address: u8) -> usize {
    usize::from(((address & 0x80) >> 3) | (address & 0x0f))
}

/// The endpoint address of an ep_info slot (`index` below 32).
pub fn endpoint_address(index: usize) -> u8 {
    // Only the low five bits of an index mean anything.
    let i = (index & 0x1f) as u8;
    ((i & 0x10) << 3) | (i & 0x0f)
}

/// device_connect: the device that is now there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConnect {
    /// Speed.
    pub speed: Speed,
    /// bDeviceClass.
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice; on the wire only with [`Cap::ConnectDeviceVersion`] on both sides (0
    /// otherwise).
    pub device_version: u16,
}

/// One interface of an interface_info message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceEntry {
    /// bInterfaceNumber.
    pub number: u8,
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
}

/// One endpoint slot of an ep_info message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointEntry {
    /// Transfer type, [`EndpointType::Invalid`] for no endpoint.
    pub kind: EndpointType,
    /// bInterval.
    pub interval: u8,
    /// bInterfaceNumber of the interface it belongs to.
    pub interface: u8,
    /// Max packet size in bytes (not wMaxPacketSize's encoding); on the wire only with
    /// [`Cap::EpInfoMaxPacketSize`] on both sides.
    pub max_packet_size: u16,
    /// Bulk streams; on the wire only with [`Cap::BulkStreams`] on both sides.
    pub max_streams: u32,
}

/// The fixed part of a control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlHeader {
    /// 0x00 or 0x80 (the direction of the request).
    pub endpoint: u8,
    /// bRequest.
    pub request: u8,
    /// bmRequestType.
    pub request_type: u8,
    /// Status (replies only).
    pub status: Status,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength in a request, bytes moved in a reply.
    pub length: u16,
}

/// The fixed part of a bulk packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkHeader {
    /// Endpoint address.
    pub endpoint: u8,
    /// Status (replies only).
    pub status: Status,
    /// Bytes asked for or moved; above 0xffff only with [`Cap::BulkLength32`] on both sides
    /// (the encoder drops the high half otherwise).
    pub length: u32,
    /// Stream id (0 without bulk streams).
    pub stream_id: u32,
}

/// The fixed part of an iso or interrupt packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointHeader {
    /// Endpoint address.
    pub endpoint: u8,
    /// Status (from the host only).
    pub status: Status,
    /// Bytes asked for or moved.
    pub length: u16,
}

/// The fixed part of a buffered bulk packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferedBulkHeader {
    /// Stream id.
    pub stream_id: u32,
    /// Bytes carried.
    pub length: u32,
    /// Endpoint address.
    pub endpoint: u8,
    /// Status.
    pub status: Status,
}

/// One usbredir message, without its id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Packet {
    /// The first message of each side.
    Hello {
        /// Free-form version string (up to 63 bytes on the wire; decoded as printable
        /// ASCII).
        version: String,
        /// Capability words; word 0 holds every capability defined so far.
        capabilities: Vec<u32>,
    },
    /// A device is there (host to guest).
    DeviceConnect(DeviceConnect),
    /// The device is gone (host to guest).
    DeviceDisconnect,
    /// Reset the device (guest to host).
    Reset,
    /// The interfaces of the active configuration (host to guest).
    InterfaceInfo(Vec<InterfaceEntry>),
    /// The endpoints of the active configuration and alt settings (host to guest).
    EpInfo(Box<[EndpointEntry; ENDPOINTS]>),
    /// Select a configuration.
    SetConfiguration {
        /// bConfigurationValue.
        configuration: u8,
    },
    /// Ask for the active configuration.
    GetConfiguration,
    /// Reply to set/get_configuration.
    ConfigurationStatus {
        /// Outcome.
        status: Status,
        /// The active configuration.
        configuration: u8,
    },
    /// Select an alt setting.
    SetAltSetting {
        /// bInterfaceNumber.
        interface: u8,
        /// bAlternateSetting.
        alt: u8,
    },
    /// Ask for an interface's alt setting.
    GetAltSetting {
        /// bInterfaceNumber.
        interface: u8,
    },
    /// Reply to set/get_alt_setting.
    AltSettingStatus {
        /// Outcome.
        status: Status,
        /// bInterfaceNumber.
        interface: u8,
        /// The active alt setting.
        alt: u8,
    },
    /// Start an iso stream.
    StartIsoStream {
        /// Endpoint address.
        endpoint: u8,
        /// Packets per URB.
        packets_per_urb: u8,
        /// URBs.
        urbs: u8,
    },
    /// Stop an iso stream.
    StopIsoStream {
        /// Endpoint address.
        endpoint: u8,
    },
    /// Reply to start/stop_iso_stream.
    IsoStreamStatus {
        /// Outcome.
        status: Status,
        /// Endpoint address.
        endpoint: u8,
    },
    /// Start polling an interrupt IN endpoint.
    StartInterruptReceiving {
        /// Endpoint address.
        endpoint: u8,
    },
    /// Stop polling an interrupt IN endpoint.
    StopInterruptReceiving {
        /// Endpoint address.
        endpoint: u8,
    },
    /// Reply to start/stop_interrupt_receiving.
    InterruptReceivingStatus {
        /// Outcome.
        status: Status,
        /// Endpoint address.
        endpoint: u8,
    },
    /// Allocate bulk streams.
    AllocBulkStreams {
        /// Bit mask of ep_info slots.
        endpoints: u32,
        /// Streams asked for.
        streams: u32,
    },
    /// Free bulk streams.
    FreeBulkStreams {
        /// Bit mask of ep_info slots.
        endpoints: u32,
    },
    /// Reply to alloc/free_bulk_streams.
    BulkStreamsStatus {
        /// Bit mask of ep_info slots.
        endpoints: u32,
        /// Streams allocated.
        streams: u32,
        /// Outcome.
        status: Status,
    },
    /// Cancel the data packet with this message's id.
    CancelDataPacket,
    /// The guest's filter rejects the device.
    FilterReject,
    /// The sender's device filter.
    FilterFilter {
        /// Rules, `class,vendor,product,version,allow` joined by `|` (no NUL).
        rules: String,
    },
    /// The guest has seen the device_disconnect.
    DeviceDisconnectAck,
    /// Start buffered bulk input.
    StartBulkReceiving {
        /// Stream id.
        stream_id: u32,
        /// Bytes per transfer.
        bytes_per_transfer: u32,
        /// Endpoint address.
        endpoint: u8,
        /// Transfers kept in flight.
        transfers: u8,
    },
    /// Stop buffered bulk input.
    StopBulkReceiving {
        /// Stream id.
        stream_id: u32,
        /// Endpoint address.
        endpoint: u8,
    },
    /// Reply to start/stop_bulk_receiving.
    BulkReceivingStatus {
        /// Stream id.
        stream_id: u32,
        /// Endpoint address.
        endpoint: u8,
        /// Outcome.
        status: Status,
    },
    /// A control transfer, or its reply.
    Control(ControlHeader, Vec<u8>),
    /// A bulk transfer, or its reply.
    Bulk(BulkHeader, Vec<u8>),
    /// Iso data.
    Iso(EndpointHeader, Vec<u8>),
    /// An interrupt transfer, or its reply, or data from a polled IN endpoint.
    Interrupt(EndpointHeader, Vec<u8>),
    /// Buffered bulk input data.
    BufferedBulk(BufferedBulkHeader, Vec<u8>),
}

impl Packet {
    /// The type code on the wire.
    pub fn kind(&self) -> u32 {
        match self {
            Self::Hello { .. } => kind::HELLO,
            Self::DeviceConnect(_) => kind::DEVICE_CONNECT,
            Self::DeviceDisconnect => kind::DEVICE_DISCONNECT,
            Self::Reset => kind::RESET,
            Self::InterfaceInfo(_) => kind::INTERFACE_INFO,
            Self::EpInfo(_) => kind::EP_INFO,
            Self::SetConfiguration { .. } => kind::SET_CONFIGURATION,
            Self::GetConfiguration => kind::GET_CONFIGURATION,
            Self::ConfigurationStatus { .. } => kind::CONFIGURATION_STATUS,
            Self::SetAltSetting { .. } => kind::SET_ALT_SETTING,
            Self::GetAltSetting { .. } => kind::GET_ALT_SETTING,
            Self::AltSettingStatus { .. } => kind::ALT_SETTING_STATUS,
            Self::StartIsoStream { .. } => kind::START_ISO_STREAM,
            Self::StopIsoStream { .. } => kind::STOP_ISO_STREAM,
            Self::IsoStreamStatus { .. } => kind::ISO_STREAM_STATUS,
            Self::StartInterruptReceiving { .. } => kind::START_INTERRUPT_RECEIVING,
            Self::StopInterruptReceiving { .. } => kind::STOP_INTERRUPT_RECEIVING,
            Self::InterruptReceivingStatus { .. } => kind::INTERRUPT_RECEIVING_STATUS,
            Self::AllocBulkStreams { .. } => kind::ALLOC_BULK_STREAMS,
            Self::FreeBulkStreams { .. } => kind::FREE_BULK_STREAMS,
            Self::BulkStreamsStatus { .. } => kind::BULK_STREAMS_STATUS,
            Self::CancelDataPacket => kind::CANCEL_DATA_PACKET,
            Self::FilterReject => kind::FILTER_REJECT,
            Self::FilterFilter { .. } => kind::FILTER_FILTER,
            Self::DeviceDisconnectAck => kind::DEVICE_DISCONNECT_ACK,
            Self::StartBulkReceiving { .. } => kind::START_BULK_RECEIVING,
            Self::StopBulkReceiving { .. } => kind::STOP_BULK_RECEIVING,
            Self::BulkReceivingStatus { .. } => kind::BULK_RECEIVING_STATUS,
            Self::Control(..) => kind::CONTROL_PACKET,
            Self::Bulk(..) => kind::BULK_PACKET,
            Self::Iso(..) => kind::ISO_PACKET,
            Self::Interrupt(..) => kind::INTERRUPT_PACKET,
            Self::BufferedBulk(..) => kind::BUFFERED_BULK_PACKET,
        }
    }
}

/// Which side of the protocol this end is; it says which way data travels in the data
/// packets it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Owns the device; receives requests (OUT data in them) and sends replies.
    Host,
    /// Uses the device (QEMU); sends requests and receives replies (IN data in them).
    Guest,
}

/// Caps on what a peer can make this end buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk or buffered bulk data length accepted.
    pub max_bulk_length: u32,
    /// Largest filter string accepted.
    pub max_filter_length: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk_length: 16 * 1024 * 1024,
            max_filter_length: 64 * 1024,
        }
    }
}

impl Limits {
    /// The longest `length` a header may carry: the largest type header and data.
    pub fn max_packet_length(&self) -> u32 {
        let fixed = 1024; // above every fixed-size message (ep_info is 288 bytes at most)
        self.max_bulk_length
            .max(self.max_filter_length)
            .max(u32::from(u16::MAX))
            .saturating_add(fixed)
    }
}

/// Why bytes from the peer are not a valid usbredir message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The type code is not one the protocol defines.
    #[error("unknown packet type {0}")]
    UnknownType(u32),
    /// The header's length exceeds what this end buffers.
    #[error("packet type {kind} of {length} bytes exceeds the limit of {max}")]
    TooLong {
        /// Type code.
        kind: u32,
        /// Length in the header.
        length: u32,
        /// The cap.
        max: u32,
    },
    /// The header's length does not fit the packet type.
    #[error("packet type {kind} cannot be {length} bytes long")]
    BadLength {
        /// Type code.
        kind: u32,
        /// Length in the header.
        length: u32,
    },
    /// interface_info counts more interfaces than it has room for.
    #[error("interface_info counts {0} interfaces (at most 32)")]
    TooManyInterfaces(u32),
    /// A data packet's data does not match its length field and direction.
    #[error(
        "packet type {kind} for endpoint {endpoint:#04x} says {length} bytes but carries {data}"
    )]
    DataMismatch {
        /// Type code.
        kind: u32,
        /// Endpoint address.
        endpoint: u8,
        /// Its length field.
        length: u32,
        /// Data bytes carried.
        data: usize,
    },
    /// A filter string is not NUL-terminated, or is not text.
    #[error("filter string is not a NUL-terminated string")]
    BadFilter,
}

/// Header length with 32-bit ids.
const HEADER_LEN_32: usize = 12;
/// Header length with 64-bit ids.
const HEADER_LEN_64: usize = 16;

/// Encodes and decodes messages as the capabilities both sides announced say.
///
/// Before both hellos are known ([`Codec::new`]) no optional field is present and ids are 32
/// bits, which is how each side's hello goes out; [`Codec::negotiate`] then applies the
/// common capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    role: Role,
    caps: Caps,
    limits: Limits,
}

/// A decoded message and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The id from the header.
    pub id: u64,
    /// The message.
    pub packet: Packet,
}

impl Codec {
    /// A codec for `role` before the hellos: no capabilities in common.
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            role,
            caps: Caps::default(),
            limits,
        }
    }

    /// Applies the capabilities both hellos announced.
    pub fn negotiate(&mut self, ours: Caps, theirs: Caps) {
        self.caps = ours.common(theirs);
    }

    /// The capabilities both sides have.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Whether both sides have `cap`.
    pub fn has(&self, cap: Cap) -> bool {
        self.caps.has(cap)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn header_len(&self, kind: u32) -> usize {
        if kind != kind::HELLO && self.has(Cap::Ids64) {
            HEADER_LEN_64
        } else {
            HEADER_LEN_32
        }
    }

    /// Decodes one message from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// otherwise the message and the bytes it took. The header's length is checked against
    /// the limits as soon as the header is there, so a caller that reads until this returns
    /// never buffers more than one maximal message.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
        let mut r = Reader::new(buf);
        let (Some(kind), Some(length)) = (r.u32_le(), r.u32_le()) else {
            return Ok(None);
        };
        let id = if self.header_len(kind) == HEADER_LEN_64 {
            r.u64_le()
        } else {
            r.u32_le().map(u64::from)
        };
        let max = self.limits.max_packet_length();
        if length > max {
            return Err(WireError::TooLong { kind, length, max });
        }
        check_type(kind)?;
        let Some(id) = id else {
            return Ok(None);
        };
        // `length` is below the cap, so it fits a usize.
        let Some(body) = r.take(length as usize) else {
            return Ok(None);
        };
        let packet = self.decode_body(kind, body)?;
        Ok(Some((Frame { id, packet }, r.position())))
    }

    fn decode_body(&self, kind: u32, body: &[u8]) -> Result<Packet, WireError> {
        let length = body.len() as u32;
        let bad = || WireError::BadLength { kind, length };
        let mut r = Reader::new(body);
        let fixed = |n: usize| if body.len() == n { Ok(()) } else { Err(bad()) };
        let st = Status::from_u8;
        let packet = match kind {
            kind::HELLO => {
                let words = body.len().checked_sub(VERSION_LEN).ok_or_else(bad)?;
                if words % 4 != 0 || words / 4 > MAX_CAP_WORDS {
                    return Err(bad());
                }
                let version = r.take(VERSION_LEN).ok_or_else(bad)?;
                // A log string: printable ASCII up to the NUL (or 63 bytes), the rest '?'.
                let version = version
                    .iter()
                    .take(VERSION_LEN - 1)
                    .take_while(|&&b| b != 0)
                    .map(|&b| {
                        if (0x20..0x7f).contains(&b) {
                            char::from(b)
                        } else {
                            '?'
                        }
                    })
                    .collect();
                let mut capabilities = Vec::with_capacity(words / 4);
                while let Some(w) = r.u32_le() {
                    capabilities.push(w);
                }
                Packet::Hello {
                    version,
                    capabilities,
                }
            }
            kind::DEVICE_CONNECT => {
                let with_version = self.has(Cap::ConnectDeviceVersion);
                fixed(if with_version { 10 } else { 8 })?;
                let [speed, class, subclass, protocol] = r.array().ok_or_else(bad)?;
                let vendor_id = r.u16_le().ok_or_else(bad)?;
                let product_id = r.u16_le().ok_or_else(bad)?;
                let device_version = if with_version {
                    r.u16_le().ok_or_else(bad)?
                } else {
                    0
                };
                Packet::DeviceConnect(DeviceConnect {
                    speed: Speed::from_u8(speed),
                    class,
                    subclass,
                    protocol,
                    vendor_id,
                    product_id,
                    device_version,
                })
            }
            kind::DEVICE_DISCONNECT => fixed(0).map(|()| Packet::DeviceDisconnect)?,
            kind::RESET => fixed(0).map(|()| Packet::Reset)?,
            kind::INTERFACE_INFO => {
                fixed(4 + 4 * MAX_INTERFACES)?;
                let count = r.u32_le().ok_or_else(bad)?;
                if count as usize > MAX_INTERFACES {
                    return Err(WireError::TooManyInterfaces(count));
                }
                let numbers: [u8; MAX_INTERFACES] = r.array().ok_or_else(bad)?;
                let classes: [u8; MAX_INTERFACES] = r.array().ok_or_else(bad)?;
                let subclasses: [u8; MAX_INTERFACES] = r.array().ok_or_else(bad)?;
                let protocols: [u8; MAX_INTERFACES] = r.array().ok_or_else(bad)?;
                Packet::InterfaceInfo(
                    (0..count as usize)
                        .map(|i| InterfaceEntry {
                            number: numbers[i],
                            class: classes[i],
                            subclass: subclasses[i],
                            protocol: protocols[i],
                        })
                        .collect(),
                )
            }
            kind::EP_INFO => {
                let mps = self.has(Cap::EpInfoMaxPacketSize);
                let streams = self.has(Cap::BulkStreams);
                fixed(3 * ENDPOINTS + usize::from(mps) * 64 + usize::from(streams) * 128)?;
                let types: [u8; ENDPOINTS] = r.array().ok_or_else(bad)?;
                let intervals: [u8; ENDPOINTS] = r.array().ok_or_else(bad)?;
                let interfaces: [u8; ENDPOINTS] = r.array().ok_or_else(bad)?;
                let mut eps = Box::new([EndpointEntry::default(); ENDPOINTS]);
                for (i, ep) in eps.iter_mut().enumerate() {
                    ep.kind = EndpointType::from_u8(types[i]);
                    ep.interval = intervals[i];
                    ep.interface = interfaces[i];
                }
                if mps {
                    for ep in eps.iter_mut() {
                        ep.max_packet_size = r.u16_le().ok_or_else(bad)?;
                    }
                }
                if streams {
                    for ep in eps.iter_mut() {
                        ep.max_streams = r.u32_le().ok_or_else(bad)?;
                    }
                }
                Packet::EpInfo(eps)
            }
            kind::SET_CONFIGURATION => {
                fixed(1)?;
                Packet::SetConfiguration {
                    configuration: r.u8().ok_or_else(bad)?,
                }
            }
            kind::GET_CONFIGURATION => fixed(0).map(|()| Packet::GetConfiguration)?,
            kind::CONFIGURATION_STATUS => {
                fixed(2)?;
                let [status, configuration] = r.array().ok_or_else(bad)?;
                Packet::ConfigurationStatus {
                    status: st(status),
                    configuration,
                }
            }
            kind::SET_ALT_SETTING => {
                fixed(2)?;
                let [interface, alt] = r.array().ok_or_else(bad)?;
                Packet::SetAltSetting { interface, alt }
            }
            kind::GET_ALT_SETTING => {
                fixed(1)?;
                Packet::GetAltSetting {
                    interface: r.u8().ok_or_else(bad)?,
                }
            }
            kind::ALT_SETTING_STATUS => {
                fixed(3)?;
                let [status, interface, alt] = r.array().ok_or_else(bad)?;
                Packet::AltSettingStatus {
                    status: st(status),
                    interface,
                    alt,
                }
            }
            kind::START_ISO_STREAM => {
                fixed(3)?;
                let [endpoint, packets_per_urb, urbs] = r.array().ok_or_else(bad)?;
                Packet::StartIsoStream {
                    endpoint,
                    packets_per_urb,
                    urbs,
                }
            }
            kind::STOP_ISO_STREAM => {
                fixed(1)?;
                Packet::StopIsoStream {
                    endpoint: r.u8().ok_or_else(bad)?,
                }
            }
            kind::ISO_STREAM_STATUS => {
                fixed(2)?;
                let [status, endpoint] = r.array().ok_or_else(bad)?;
                Packet::IsoStreamStatus {
                    status: st(status),
                    endpoint,
                }
            }
            kind::START_INTERRUPT_RECEIVING => {
                fixed(1)?;
                Packet::StartInterruptReceiving {
                    endpoint: r.u8().ok_or_else(bad)?,
                }
            }
            kind::STOP_INTERRUPT_RECEIVING => {
                fixed(1)?;
                Packet::StopInterruptReceiving {
                    endpoint: r.u8().ok_or_else(bad)?,
                }
            }
            kind::INTERRUPT_RECEIVING_STATUS => {
                fixed(2)?;
                let [status, endpoint] = r.array().ok_or_else(bad)?;
                Packet::InterruptReceivingStatus {
                    status: st(status),
                    endpoint,
                }
            }
            kind::ALLOC_BULK_STREAMS => {
                fixed(8)?;
                Packet::AllocBulkStreams {
                    endpoints: r.u32_le().ok_or_else(bad)?,
                    streams: r.u32_le().ok_or_else(bad)?,
                }
            }
            kind::FREE_BULK_STREAMS => {
                fixed(4)?;
                Packet::FreeBulkStreams {
                    endpoints: r.u32_le().ok_or_else(bad)?,
                }
            }
            kind::BULK_STREAMS_STATUS => {
                fixed(9)?;
                Packet::BulkStreamsStatus {
                    endpoints: r.u32_le().ok_or_else(bad)?,
                    streams: r.u32_le().ok_or_else(bad)?,
                    status: st(r.u8().ok_or_else(bad)?),
                }
            }
            kind::CANCEL_DATA_PACKET => fixed(0).map(|()| Packet::CancelDataPacket)?,
            kind::FILTER_REJECT => fixed(0).map(|()| Packet::FilterReject)?,
            kind::FILTER_FILTER => {
                if length > self.limits.max_filter_length {
                    return Err(WireError::TooLong {
                        kind,
                        length,
                        max: self.limits.max_filter_length,
                    });
                }
                let (&last, text) = body.split_last().ok_or(WireError::BadFilter)?;
                if last != 0 || text.contains(&0) {
                    return Err(WireError::BadFilter);
                }
                let rules = std::str::from_utf8(text).map_err(|_| WireError::BadFilter)?;
                Packet::FilterFilter {
                    rules: rules.to_owned(),
                }
            }
            kind::DEVICE_DISCONNECT_ACK => fixed(0).map(|()| Packet::DeviceDisconnectAck)?,
            kind::START_BULK_RECEIVING => {
                fixed(10)?;
                let stream_id = r.u32_le().ok_or_else(bad)?;
                let bytes_per_transfer = r.u32_le().ok_or_else(bad)?;
                let [endpoint, transfers] = r.array().ok_or_else(bad)?;
                Packet::StartBulkReceiving {
                    stream_id,
                    bytes_per_transfer,
                    endpoint,
                    transfers,
                }
            }
            kind::STOP_BULK_RECEIVING => {
                fixed(5)?;
                Packet::StopBulkReceiving {
                    stream_id: r.u32_le().ok_or_else(bad)?,
                    endpoint: r.u8().ok_or_else(bad)?,
                }
            }
            kind::BULK_RECEIVING_STATUS => {
                fixed(6)?;
                let stream_id = r.u32_le().ok_or_else(bad)?;
                let [endpoint, status] = r.array().ok_or_else(bad)?;
                Packet::BulkReceivingStatus {
                    stream_id,
                    endpoint,
                    status: st(status),
                }
            }
            kind::CONTROL_PACKET => {
                let [endpoint, request, request_type, status] = r.array().ok_or_else(bad)?;
                let value = r.u16_le().ok_or_else(bad)?;
                let index = r.u16_le().ok_or_else(bad)?;
                let len = r.u16_le().ok_or_else(bad)?;
                let data = r.rest();
                self.check_data(kind, endpoint, u32::from(len), data.len(), false)?;
                Packet::Control(
                    ControlHeader {
                        endpoint,
                        request,
                        request_type,
                        status: st(status),
                        value,
                        index,
                        length: len,
                    },
                    data.to_vec(),
                )
            }
            kind::BULK_PACKET => {
                let [endpoint, status] = r.array().ok_or_else(bad)?;
                let low = r.u16_le().ok_or_else(bad)?;
                let stream_id = r.u32_le().ok_or_else(bad)?;
                let high = if self.has(Cap::BulkLength32) {
                    r.u16_le().ok_or_else(bad)?
                } else {
                    0
                };
                let len = u32::from(high) << 16 | u32::from(low);
                if len > self.limits.max_bulk_length {
                    return Err(WireError::TooLong {
                        kind,
                        length: len,
                        max: self.limits.max_bulk_length,
                    });
                }
                let data = r.rest();
                self.check_data(kind, endpoint, len, data.len(), false)?;
                Packet::Bulk(
                    BulkHeader {
                        endpoint,
                        status: st(status),
                        length: len,
                        stream_id,
                    },
                    data.to_vec(),
                )
            }
            kind::ISO_PACKET | kind::INTERRUPT_PACKET => {
                let [endpoint, status] = r.array().ok_or_else(bad)?;
                let len = r.u16_le().ok_or_else(bad)?;
                let data = r.rest();
                let always = kind == kind::ISO_PACKET;
                self.check_data(kind, endpoint, u32::from(len), data.len(), always)?;
                let header = EndpointHeader {
                    endpoint,
                    status: st(status),
                    length: len,
                };
                if always {
                    Packet::Iso(header, data.to_vec())
                } else {
                    Packet::Interrupt(header, data.to_vec())
                }
            }
            kind::BUFFERED_BULK_PACKET => {
                let stream_id = r.u32_le().ok_or_else(bad)?;
                let len = r.u32_le().ok_or_else(bad)?;
                let [endpoint, status] = r.array().ok_or_else(bad)?;
                let data = r.rest();
                self.check_data(kind, endpoint, len, data.len(), true)?;
                Packet::BufferedBulk(
                    BufferedBulkHeader {
                        stream_id,
                        length: len,
                        endpoint,
                        status: st(status),
                    },
                    data.to_vec(),
                )
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(packet)
    }

    /// Checks a data packet's data against its length field: data travels OUT in requests
    /// (guest to host) and IN in replies (host to guest), always for iso and buffered bulk.
    fn check_data(
        &self,
        kind: u32,
        endpoint: u8,
        length: u32,
        data: usize,
        always: bool,
    ) -> Result<(), WireError> {
        let is_in = endpoint & 0x80 != 0;
        let carries = always
            || match self.role {
                // We are the host: the guest sends OUT data.
                Role::Host => !is_in,
                Role::Guest => is_in,
            };
        let expected = if carries { length as usize } else { 0 };
        if data == expected {
            Ok(())
        } else {
            Err(WireError::DataMismatch {
                kind,
                endpoint,
                length,
                data,
            })
        }
    }

    /// Appends `packet` with `id` to `out`. Optional fields are written as the negotiated
    /// capabilities say; the hello always goes with a 32-bit id.
    pub fn encode(&self, id: u64, packet: &Packet, out: &mut Vec<u8>) {
        let kind = packet.kind();
        out.extend_from_slice(&kind.to_le_bytes());
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        if self.header_len(kind) == HEADER_LEN_64 {
            out.extend_from_slice(&id.to_le_bytes());
        } else {
            // A 32-bit header carries the low half; ids a peer chose fit.
            out.extend_from_slice(&(id as u32).to_le_bytes());
        }
        let body_at = out.len();
        self.encode_body(packet, out);
        // Bodies are capped far below 4 GiB by construction (data lengths are u16 or capped).
        let length = u32::try_from(out.len() - body_at).unwrap_or(u32::MAX);
        out[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
    }

    fn encode_body(&self, packet: &Packet, out: &mut Vec<u8>) {
        let le16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
        let le32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        match packet {
            Packet::Hello {
                version,
                capabilities,
            } => {
                let mut v = [0u8; VERSION_LEN];
                // Room for the terminating NUL; the string goes out as printable ASCII.
                let text = version.bytes().filter(|b| (0x20..0x7f).contains(b));
                for (slot, b) in v[..VERSION_LEN - 1].iter_mut().zip(text) {
                    *slot = b;
                }
                out.extend_from_slice(&v);
                for &w in capabilities.iter().take(MAX_CAP_WORDS) {
                    le32(out, w);
                }
            }
            Packet::DeviceConnect(d) => {
                out.extend_from_slice(&[d.speed.to_u8(), d.class, d.subclass, d.protocol]);
                le16(out, d.vendor_id);
                le16(out, d.product_id);
                if self.has(Cap::ConnectDeviceVersion) {
                    le16(out, d.device_version);
                }
            }
            Packet::DeviceDisconnect
            | Packet::Reset
            | Packet::GetConfiguration
            | Packet::CancelDataPacket
            | Packet::FilterReject
            | Packet::DeviceDisconnectAck => {}
            Packet::InterfaceInfo(list) => {
                let list = &list[..list.len().min(MAX_INTERFACES)];
                le32(out, list.len() as u32);
                let mut cols = [[0u8; MAX_INTERFACES]; 4];
                for (i, e) in list.iter().enumerate() {
                    cols[0][i] = e.number;
                    cols[1][i] = e.class;
                    cols[2][i] = e.subclass;
                    cols[3][i] = e.protocol;
                }
                cols.iter().for_each(|c| out.extend_from_slice(c));
            }
            Packet::EpInfo(eps) => {
                out.extend(eps.iter().map(|e| e.kind.to_u8()));
                out.extend(eps.iter().map(|e| e.interval));
                out.extend(eps.iter().map(|e| e.interface));
                if self.has(Cap::EpInfoMaxPacketSize) {
                    eps.iter().for_each(|e| le16(out, e.max_packet_size));
                }
                if self.has(Cap::BulkStreams) {
                    eps.iter().for_each(|e| le32(out, e.max_streams));
                }
            }
            Packet::SetConfiguration { configuration } => out.push(*configuration),
            Packet::ConfigurationStatus {
                status,
                configuration,
            } => out.extend_from_slice(&[status.to_u8(), *configuration]),
            Packet::SetAltSetting { interface, alt } => out.extend_from_slice(&[*interface, *alt]),
            Packet::GetAltSetting { interface } => out.push(*interface),
            Packet::AltSettingStatus {
                status,
                interface,
                alt,
            } => out.extend_from_slice(&[status.to_u8(), *interface, *alt]),
            Packet::StartIsoStream {
                endpoint,
                packets_per_urb,
                urbs,
            } => out.extend_from_slice(&[*endpoint, *packets_per_urb, *urbs]),
            Packet::StopIsoStream { endpoint }
            | Packet::StartInterruptReceiving { endpoint }
            | Packet::StopInterruptReceiving { endpoint } => out.push(*endpoint),
            Packet::IsoStreamStatus { status, endpoint }
            | Packet::InterruptReceivingStatus { status, endpoint } => {
                out.extend_from_slice(&[status.to_u8(), *endpoint])
            }
            Packet::AllocBulkStreams { endpoints, streams } => {
                le32(out, *endpoints);
                le32(out, *streams);
            }
            Packet::FreeBulkStreams { endpoints } => le32(out, *endpoints),
            Packet::BulkStreamsStatus {
                endpoints,
                streams,
                status,
            } => {
                le32(out, *endpoints);
                le32(out, *streams);
                out.push(status.to_u8());
            }
            Packet::FilterFilter { rules } => {
                out.extend(rules.bytes().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::StartBulkReceiving {
                stream_id,
                bytes_per_transfer,
                endpoint,
                transfers,
            } => {
                le32(out, *stream_id);
                le32(out, *bytes_per_transfer);
                out.extend_from_slice(&[*endpoint, *transfers]);
            }
            Packet::StopBulkReceiving {
                stream_id,
                endpoint,
            } => {
                le32(out, *stream_id);
                out.push(*endpoint);
            }
            Packet::BulkReceivingStatus {
                stream_id,
                endpoint,
                status,
            } => {
                le32(out, *stream_id);
                out.extend_from_slice(&[*endpoint, status.to_u8()]);
            }
            Packet::Control(h, data) => {
                out.extend_from_slice(&[h.endpoint, h.request, h.request_type, h.status.to_u8()]);
                le16(out, h.value);
                le16(out, h.index);
                le16(out, h.length);
                out.extend_from_slice(data);
            }
            Packet::Bulk(h, data) => {
                out.extend_from_slice(&[h.endpoint, h.status.to_u8()]);
                le16(out, h.length as u16);
                le32(out, h.stream_id);
                if self.has(Cap::BulkLength32) {
                    le16(out, (h.length >> 16) as u16);
                }
                out.extend_from_slice(data);
            }
            Packet::Iso(h, data) | Packet::Interrupt(h, data) => {
                out.extend_from_slice(&[h.endpoint, h.status.to_u8()]);
                le16(out, h.length);
                out.extend_from_slice(data);
            }
            Packet::BufferedBulk(h, data) => {
                le32(out, h.stream_id);
                le32(out, h.length);
                out.extend_from_slice(&[h.endpoint, h.status.to_u8()]);
                out.extend_from_slice(data);
            }
        }
    }
}

/// Refuses type codes the protocol does not define before their body is waited for.
fn check_type(kind: u32) -> Result<(), WireError> {
    match kind {
        0..=27 | 100..=104 => Ok(()),
        other => Err(WireError::UnknownType(other)),
    }
}
