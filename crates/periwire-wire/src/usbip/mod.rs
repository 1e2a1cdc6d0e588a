//! USB/IP v1.1.1 messages, byte-compatible with Linux `drivers/usb/usbip` and the `usbip` tools.
//!
//! The protocol has two phases on one TCP stream. In the *operation* phase the client sends an
//! [`OpRequest`] (device list or import) and the server answers with an [`OpReply`]. After a
//! successful import the stream switches to the *URB* phase: the client sends [`CmdSubmit`]
//! and [`CmdUnlink`], the server answers with [`RetSubmit`] and [`RetUnlink`].
//!
//! All decoders are streaming: they return `Ok(None)` while the buffer holds only part of a
//! message, `Ok(Some((message, consumed)))` once it holds a whole one, and a [`WireError`] as
//! soon as the bytes seen so far cannot be a valid message. Every length is checked against
//! [`Limits`] before anything is allocated. Fields follow `usbip_common.h` and
//! `Documentation/usb/usbip_protocol.rst`.

use crate::Reader;
use thiserror::Error;

pub mod connection;

pub use connection::{Event, ReplySink, ServerConnection, SubmitError, UrbDone};

/// The protocol version this codec speaks (v1.1.1).
pub const USBIP_VERSION: u16 = 0x0111;
/// The IANA-registered USB/IP TCP port.
pub const USBIP_PORT: u16 = 3240;

/// Operation code of OP_REQ_DEVLIST.
pub const OP_REQ_DEVLIST: u16 = 0x8005;
/// Operation code of OP_REP_DEVLIST.
pub const OP_REP_DEVLIST: u16 = 0x0005;
/// Operation code of OP_REQ_IMPORT.
pub const OP_REQ_IMPORT: u16 = 0x8003;
/// Operation code of OP_REP_IMPORT.
pub const OP_REP_IMPORT: u16 = 0x0003;

/// Command code of USBIP_CMD_SUBMIT.
pub const CMD_SUBMIT: u32 = 1;
/// Command code of USBIP_CMD_UNLINK.
pub const CMD_UNLINK: u32 = 2;
/// Command code of USBIP_RET_SUBMIT.
pub const RET_SUBMIT: u32 = 3;
/// Command code of USBIP_RET_UNLINK.
pub const RET_UNLINK: u32 = 4;

/// Size of `op_common`.
pub const OP_HEADER_LEN: usize = 8;
/// Size of `usbip_usb_device`.
pub const DEVICE_RECORD_LEN: usize = 312;
/// Size of `usbip_usb_interface`.
pub const INTERFACE_RECORD_LEN: usize = 4;
/// Size of every URB-phase header (`usbip_header`).
pub const URB_HEADER_LEN: usize = 48;
/// Size of one `usbip_iso_packet_descriptor`.
pub const ISO_DESCRIPTOR_LEN: usize = 16;
/// Size of the `path` field of a device record.
pub const PATH_LEN: usize = 256;
/// Size of the `busid` field of a device record and of OP_REQ_IMPORT.
pub const BUSID_LEN: usize = 32;

/// The most ISO packets one URB may carry (Linux `USBIP_MAX_ISO_PACKETS`).
pub const MAX_ISO_PACKETS: u32 = 1024;

/// Caps applied while decoding, so that memory is bounded whatever the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `transfer_buffer_length` accepted in a CMD_SUBMIT or RET_SUBMIT.
    pub max_transfer_length: u32,
    /// Largest ISO `number_of_packets` accepted.
    pub max_iso_packets: u32,
    /// Largest device count accepted in an OP_REP_DEVLIST.
    pub max_devices: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_transfer_length: 4 * 1024 * 1024,
            max_iso_packets: MAX_ISO_PACKETS,
            max_devices: 4096,
        }
    }
}

/// Why bytes from the peer are not a valid USB/IP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The operation header names a version other than 0x0111.
    #[error("unsupported USB/IP version {0:#06x}")]
    UnsupportedVersion(u16),
    /// The operation code is not one this side accepts.
    #[error("unexpected operation code {0:#06x}")]
    UnexpectedOpCode(u16),
    /// The URB-phase command is not one this side accepts.
    #[error("unexpected URB command {0}")]
    UnexpectedCommand(u32),
    /// `direction` is neither 0 (out) nor 1 (in).
    #[error("invalid direction {0}")]
    InvalidDirection(u32),
    /// `ep` is not an endpoint number 0..=15.
    #[error("invalid endpoint number {0}")]
    InvalidEndpoint(u32),
    /// The transfer is longer than the configured cap.
    #[error("transfer length {len} exceeds the limit of {max}")]
    TransferTooLong {
        /// Length the peer asked for.
        len: u32,
        /// The cap.
        max: u32,
    },
    /// An ISO URB carries more packets than the configured cap.
    #[error("{count} ISO packets exceed the limit of {max}")]
    TooManyIsoPackets {
        /// Packet count the peer sent.
        count: u32,
        /// The cap.
        max: u32,
    },
    /// An ISO packet descriptor lies outside the transfer buffer.
    #[error("ISO packet {index} (offset {offset}, length {length}) lies outside the {buffer} byte buffer")]
    IsoPacketOutOfBounds {
        /// Index of the packet.
        index: u32,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// The transfer buffer length.
        buffer: u32,
    },
    /// The sum of ISO actual lengths does not match the payload carried.
    #[error("ISO actual lengths add up to {sum}, but the payload is {actual} bytes")]
    IsoLengthMismatch {
        /// Sum of the packets' actual lengths.
        sum: u64,
        /// The message's actual_length.
        actual: u32,
    },
    /// A reply's actual length exceeds what was asked for.
    #[error("actual length {actual} exceeds the requested {requested}")]
    ActualLengthTooLong {
        /// Length the peer reported.
        actual: u32,
        /// Length that was requested.
        requested: u32,
    },
    /// A bus id is empty, not NUL-terminated within its field, or not printable ASCII.
    #[error("invalid bus id")]
    InvalidBusId,
    /// A device list announces more devices than the configured cap.
    #[error("{count} devices exceed the limit of {max}")]
    TooManyDevices {
        /// Count the peer announced.
        count: u32,
        /// The cap.
        max: u32,
    },
    /// The server answered a request with a failure status and nothing else.
    #[error("the server failed the request: {0}")]
    RequestFailed(OpStatus),
    /// A reply arrived for a sequence number with no request outstanding.
    #[error("reply for unknown sequence number {0}")]
    UnknownSeqnum(u32),
    /// The input ended inside a message (only from the `*_exact` decoders).
    #[error("message truncated")]
    Truncated,
    /// The input holds bytes after a complete message (only from the `*_exact` decoders).
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Status of an operation reply (`ST_*` in `usbip_common.h`). Unknown codes round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// ST_OK: request completed.
    Ok,
    /// ST_NA: device not available (not exported).
    NotAvailable,
    /// ST_DEV_BUSY: device already imported by another client.
    DeviceBusy,
    /// ST_DEV_ERR: device in an error state.
    DeviceError,
    /// ST_NODEV: no such device.
    NoDevice,
    /// ST_ERROR: unexpected error.
    Error,
    /// A status this codec does not name.
    Unknown(u32),
}

impl OpStatus {
    /// The status from its wire value.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::NotAvailable,
            2 => Self::DeviceBusy,
            3 => Self::DeviceError,
            4 => Self::NoDevice,
            5 => Self::Error,
            n => Self::Unknown(n),
        }
    }

    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::NotAvailable => 1,
            Self::DeviceBusy => 2,
            Self::DeviceError => 3,
            Self::NoDevice => 4,
            Self::Error => 5,
            Self::Unknown(n) => n,
        }
    }
}

impl std::fmt::Display for OpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::NotAvailable => f.write_str("device not available"),
            Self::DeviceBusy => f.write_str("device busy (imported by another client)"),
            Self::DeviceError => f.write_str("device in error state"),
            Self::NoDevice => f.write_str("no such device"),
            Self::Error => f.write_str("unexpected error"),
            Self::Unknown(n) => write!(f, "unknown status {n}"),
        }
    }
}

/// Device speed as Linux `enum usb_device_speed` numbers it. Mapped explicitly, never cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Speed {
    /// USB_SPEED_UNKNOWN.
    Unknown,
    /// USB_SPEED_LOW, 1.5 Mbit/s.
    Low,
    /// USB_SPEED_FULL, 12 Mbit/s.
    Full,
    /// USB_SPEED_HIGH, 480 Mbit/s.
    High,
    /// USB_SPEED_WIRELESS.
    Wireless,
    /// USB_SPEED_SUPER, 5 Gbit/s.
    Super,
    /// USB_SPEED_SUPER_PLUS, 10 Gbit/s and up.
    SuperPlus,
    /// A value this codec does not name.
    Other(u32),
}

impl Speed {
    /// The speed from its wire value.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Low,
            2 => Self::Full,
            3 => Self::High,
            4 => Self::Wireless,
            5 => Self::Super,
            6 => Self::SuperPlus,
            n => Self::Other(n),
        }
    }

    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::Unknown => 0,
            Self::Low => 1,
            Self::Full => 2,
            Self::High => 3,
            Self::Wireless => 4,
            Self::Super => 5,
            Self::SuperPlus => 6,
            Self::Other(n) => n,
        }
    }
}

/// Transfer direction of a URB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device (USBIP_DIR_OUT = 0).
    Out,
    /// Device to host (USBIP_DIR_IN = 1).
    In,
}

impl Direction {
    fn from_u32(v: u32) -> Result<Self, WireError> {
        match v {
            0 => Ok(Self::Out),
            1 => Ok(Self::In),
            n => Err(WireError::InvalidDirection(n)),
        }
    }

    fn to_u32(self) -> u32 {
        match self {
            Self::Out => 0,
            Self::In => 1,
        }
    }
}

/// A USB bus id such as `1-1.2`: 1 to 31 printable ASCII bytes, so it fits a 32-byte field
/// with its NUL terminator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusId(String);

impl BusId {
    /// Validates `s` as a bus id.
    pub fn new(s: &str) -> Result<Self, WireError> {
        let ok = !s.is_empty() && s.len() < BUSID_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(WireError::InvalidBusId)
        }
    }

    /// The bus id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_field(field: &[u8]) -> Result<Self, WireError> {
        let end = field
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::InvalidBusId)?;
        let s = std::str::from_utf8(&field[..end]).map_err(|_| WireError::InvalidBusId)?;
        Self::new(s)
    }

    fn emit(&self, out: &mut Vec<u8>) {
        emit_padded(out, self.0.as_bytes(), BUSID_LEN);
    }
}

impl std::fmt::Display for BusId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn emit_padded(out: &mut Vec<u8>, bytes: &[u8], field: usize) {
    // Always leave room for a NUL terminator, as the C side expects one.
    let n = bytes.len().min(field - 1);
    out.extend_from_slice(&bytes[..n]);
    out.resize(out.len() + field - n, 0);
}

/// `usbip_usb_device`: what a server tells about one exported device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// sysfs path of the device (informational; at most 255 bytes are sent).
    pub path: String,
    /// Bus id the client names in OP_REQ_IMPORT.
    pub busid: BusId,
    /// Bus number.
    pub busnum: u32,
    /// Device number on its bus.
    pub devnum: u32,
    /// Device speed.
    pub speed: Speed,
    /// idVendor.
    pub id_vendor: u16,
    /// idProduct.
    pub id_product: u16,
    /// bcdDevice.
    pub bcd_device: u16,
    /// bDeviceClass.
    pub device_class: u8,
    /// bDeviceSubClass.
    pub device_subclass: u8,
    /// bDeviceProtocol.
    pub device_protocol: u8,
    /// bConfigurationValue of the active configuration.
    pub configuration_value: u8,
    /// bNumConfigurations.
    pub num_configurations: u8,
    /// bNumInterfaces of the active configuration.
    pub num_interfaces: u8,
}

impl DeviceRecord {
    /// The device id used in URB headers: `busnum << 16 | devnum`.
    pub fn devid(&self) -> u32 {
        (self.busnum << 16) | (self.devnum & 0xffff)
    }

    fn parse(r: &mut Reader<'_>) -> Option<Result<Self, WireError>> {
        let path_field = r.take(PATH_LEN)?;
        let busid_field = r.take(BUSID_LEN)?;
        let busnum = r.u32()?;
        let devnum = r.u32()?;
        let speed = Speed::from_u32(r.u32()?);
        let id_vendor = r.u16()?;
        let id_product = r.u16()?;
        let bcd_device = r.u16()?;
        let [device_class, device_subclass, device_protocol, configuration_value, num_configurations, num_interfaces] =
            r.array::<6>()?;
        let path_end = path_field.iter().position(|&b| b == 0).unwrap_or(PATH_LEN);
        let path = String::from_utf8_lossy(&path_field[..path_end]).into_owned();
        Some(BusId::from_field(busid_field).map(|busid| Self {
            path,
            busid,
            busnum,
            devnum,
            speed,
            id_vendor,
            id_product,
            bcd_device,
            device_class,
            device_subclass,
            device_protocol,
            configuration_value,
            num_configurations,
            num_interfaces,
        }))
    }

    fn emit(&self, out: &mut Vec<u8>) {
        emit_padded(out, self.path.as_bytes(), PATH_LEN);
        self.busid.emit(out);
        out.extend_from_slice(&self.busnum.to_be_bytes());
        out.extend_from_slice(&self.devnum.to_be_bytes());
        out.extend_from_slice(&self.speed.to_u32().to_be_bytes());
        out.extend_from_slice(&self.id_vendor.to_be_bytes());
        out.extend_from_slice(&self.id_product.to_be_bytes());
        out.extend_from_slice(&self.bcd_device.to_be_bytes());
        out.extend_from_slice(&[
            self.device_class,
            self.device_subclass,
            self.device_protocol,
            self.configuration_value,
            self.num_configurations,
            self.num_interfaces,
        ]);
    }
}

/// `usbip_usb_interface`: class triple of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceRecord {
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
}

/// One device of an OP_REP_DEVLIST with its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedDevice {
    /// The device record.
    pub device: DeviceRecord,
    /// Its interfaces; as many as `device.num_interfaces` says.
    pub interfaces: Vec<InterfaceRecord>,
}

fn parse_op_header(r: &mut Reader<'_>) -> Option<Result<(u16, u32), WireError>> {
    let version = r.u16()?;
    let code = r.u16()?;
    let status = r.u32()?;
    if version != USBIP_VERSION {
        return Some(Err(WireError::UnsupportedVersion(version)));
    }
    Some(Ok((code, status)))
}

fn emit_op_header(out: &mut Vec<u8>, code: u16, status: u32) {
    out.extend_from_slice(&USBIP_VERSION.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
}

/// A decoded message and the number of bytes it took.
pub type Decoded<T> = Option<(T, usize)>;

/// Runs a parser that yields `None` on short input, turning the outcome into a streaming
/// result.
fn streaming<T>(
    buf: &[u8],
    parse: impl FnOnce(&mut Reader<'_>) -> Option<Result<T, WireError>>,
) -> Result<Decoded<T>, WireError> {
    let mut r = Reader::new(buf);
    match parse(&mut r) {
        None => Ok(None),
        Some(Err(e)) => Err(e),
        Some(Ok(v)) => Ok(Some((v, r.position()))),
    }
}

/// Turns a streaming result on a whole buffer into an exact one.
fn exact<T>(buf: &[u8], decoded: Result<Decoded<T>, WireError>) -> Result<T, WireError> {
    match decoded? {
        None => Err(WireError::Truncated),
        Some((v, n)) if n == buf.len() => Ok(v),
        Some((_, n)) => Err(WireError::TrailingBytes(buf.len() - n)),
    }
}

/// A request of the operation phase, sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    /// OP_REQ_DEVLIST: list the exported devices.
    Devlist,
    /// OP_REQ_IMPORT: import the device with this bus id.
    Import {
        /// The device to import.
        busid: BusId,
    },
}

impl OpRequest {
    /// Decodes a request from the start of `buf` (streaming).
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, WireError> {
        streaming(buf, |r| {
            let (code, _status) = match parse_op_header(r)? {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            Some(match code {
                OP_REQ_DEVLIST => Ok(Self::Devlist),
                OP_REQ_IMPORT => {
                    BusId::from_field(r.take(BUSID_LEN)?).map(|busid| Self::Import { busid })
                }
                other => Err(WireError::UnexpectedOpCode(other)),
            })
        })
    }

    /// Decodes exactly one request filling `buf`.
    pub fn decode_exact(buf: &[u8]) -> Result<Self, WireError> {
        exact(buf, Self::decode(buf))
    }

    /// Appends the encoded request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Devlist => emit_op_header(out, OP_REQ_DEVLIST, 0),
            Self::Import { busid } => {
                emit_op_header(out, OP_REQ_IMPORT, 0);
                busid.emit(out);
            }
        }
    }
}

/// The reply to a request that [`OpRequest::decode`] refused, when the protocol has one: an
/// operation header with the reply code of the request's code (OP_REP_DEVLIST,
/// OP_REP_IMPORT) and `status`, nothing after it, which the usbip tools and the kernel read
/// as the request having failed. Returns `false`, appending nothing, while `request` holds
/// less than a header or names a code no reply answers; the connection then just ends.
pub fn encode_op_failure(request: &[u8], status: OpStatus, out: &mut Vec<u8>) -> bool {
    let Some(&[_, _, hi, lo]) = request.get(..4) else {
        return false;
    };
    let reply = match u16::from_be_bytes([hi, lo]) {
        OP_REQ_DEVLIST => OP_REP_DEVLIST,
        OP_REQ_IMPORT => OP_REP_IMPORT,
        _ => return false,
    };
    emit_op_header(out, reply, status.to_u32());
    true
}

/// A reply of the operation phase, sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpReply {
    /// OP_REP_DEVLIST with the exported devices (status is always OK on the wire).
    Devlist(Vec<ExportedDevice>),
    /// OP_REP_IMPORT: the device record on success, or the refusal status.
    Import(Result<DeviceRecord, OpStatus>),
}

impl OpReply {
    /// Decodes a reply from the start of `buf` (streaming). The device count of a device
    /// list is checked against `limits` before any device is read.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded<Self>, WireError> {
        streaming(buf, |r| {
            let (code, status) = match parse_op_header(r)? {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            match code {
                OP_REP_DEVLIST => {
                    if status != 0 {
                        return Some(Err(WireError::RequestFailed(OpStatus::from_u32(status))));
                    }
                    let count = r.u32()?;
                    if count > limits.max_devices {
                        return Some(Err(WireError::TooManyDevices {
                            count,
                            max: limits.max_devices,
                        }));
                    }
                    let mut devices = Vec::new();
                    for _ in 0..count {
                        let device = match DeviceRecord::parse(r)? {
                            Ok(d) => d,
                            Err(e) => return Some(Err(e)),
                        };
                        let mut interfaces = Vec::with_capacity(device.num_interfaces.into());
                        for _ in 0..device.num_interfaces {
                            let [class, subclass, protocol, _pad] = r.array::<4>()?;
                            interfaces.push(InterfaceRecord {
                                class,
                                subclass,
                                protocol,
                            });
                        }
                        devices.push(ExportedDevice { device, interfaces });
                    }
                    Some(Ok(Self::Devlist(devices)))
                }
                OP_REP_IMPORT => {
                    let status = OpStatus::from_u32(status);
                    if status != OpStatus::Ok {
                        return Some(Ok(Self::Import(Err(status))));
                    }
                    Some(DeviceRecord::parse(r)?.map(|d| Self::Import(Ok(d))))
                }
                other => Some(Err(WireError::UnexpectedOpCode(other))),
            }
        })
    }

    /// Decodes exactly one reply filling `buf`.
    pub fn decode_exact(buf: &[u8], limits: &Limits) -> Result<Self, WireError> {
        exact(buf, Self::decode(buf, limits))
    }

    /// Appends the encoded reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Devlist(devices) => {
                emit_op_header(out, OP_REP_DEVLIST, 0);
                let count = u32::try_from(devices.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for d in devices {
                    d.device.emit(out);
                    // The record's count is what the peer will read, so send exactly that many.
                    for i in 0..usize::from(d.device.num_interfaces) {
                        let rec = d.interfaces.get(i).copied().unwrap_or(InterfaceRecord {
                            class: 0,
                            subclass: 0,
                            protocol: 0,
                        });
                        out.extend_from_slice(&[rec.class, rec.subclass, rec.protocol, 0]);
                    }
                }
            }
            Self::Import(Ok(device)) => {
                emit_op_header(out, OP_REP_IMPORT, 0);
                device.emit(out);
            }
            Self::Import(Err(status)) => emit_op_header(out, OP_REP_IMPORT, status.to_u32()),
        }
    }
}

/// One `usbip_iso_packet_descriptor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IsoPacket {
    /// Offset of the packet in the transfer buffer.
    pub offset: u32,
    /// Length requested.
    pub length: u32,
    /// Length transferred.
    pub actual_length: u32,
    /// Status as a negative errno, 0 on success.
    pub status: i32,
}

impl IsoPacket {
    fn parse(r: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            offset: r.u32()?,
            length: r.u32()?,
            actual_length: r.u32()?,
            status: r.i32()?,
        })
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.actual_length.to_be_bytes());
        out.extend_from_slice(&self.status.to_be_bytes());
    }
}

/// Appends ISO packet descriptors, as they follow the payload of a CMD_SUBMIT or RET_SUBMIT.
pub fn encode_iso_packets(packets: &[IsoPacket], out: &mut Vec<u8>) {
    for p in packets {
        p.emit(out);
    }
}

/// `number_of_packets` value the protocol documentation gives for non-ISO transfers. Linux
/// sends 0 instead; both mean "not isochronous".
pub const NON_ISO_PACKETS: u32 = 0xffff_ffff;

fn iso_count(raw: u32, limits: &Limits) -> Result<u32, WireError> {
    match raw {
        NON_ISO_PACKETS => Ok(0),
        n if n > limits.max_iso_packets => Err(WireError::TooManyIsoPackets {
            count: n,
            max: limits.max_iso_packets,
        }),
        n => Ok(n),
    }
}

fn parse_iso(r: &mut Reader<'_>, count: u32) -> Option<Vec<IsoPacket>> {
    let mut v = Vec::with_capacity(count as usize);
    for _ in 0..count {
        v.push(IsoPacket::parse(r)?);
    }
    Some(v)
}

/// USBIP_CMD_SUBMIT: the client submits a URB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdSubmit<'a> {
    /// The 48-byte header; its `number_of_packets` is `iso_packets.len()`.
    pub header: SubmitHeader,
    /// OUT payload (empty for IN).
    pub data: &'a [u8],
    /// ISO packet descriptors (empty for non-ISO).
    pub iso_packets: Vec<IsoPacket>,
}

/// USBIP_CMD_UNLINK: the client cancels a URB it submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdUnlink {
    /// Sequence number of this unlink request.
    pub seqnum: u32,
    /// Target device.
    pub devid: u32,
    /// Sequence number of the URB to cancel.
    pub unlink_seqnum: u32,
}

/// A URB-phase message sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrbCommand<'a> {
    /// CMD_SUBMIT.
    Submit(CmdSubmit<'a>),
    /// CMD_UNLINK.
    Unlink(CmdUnlink),
}

struct BasicHeader {
    command: u32,
    seqnum: u32,
    devid: u32,
    direction: u32,
    ep: u32,
}

fn parse_basic(r: &mut Reader<'_>) -> Option<BasicHeader> {
    Some(BasicHeader {
        command: r.u32()?,
        seqnum: r.u32()?,
        devid: r.u32()?,
        direction: r.u32()?,
        ep: r.u32()?,
    })
}

fn emit_basic(out: &mut Vec<u8>, command: u32, seqnum: u32, devid: u32, dir: u32, ep: u32) {
    for v in [command, seqnum, devid, dir, ep] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// The fixed 48-byte header of a CMD_SUBMIT, validated, without what follows it: the OUT
/// payload ([`data_len`](Self::data_len) bytes), then the ISO packet descriptors
/// ([`iso_len`](Self::iso_len) bytes). A server that reads the payload straight into the
/// URB's own buffer decodes this first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitHeader {
    /// Sequence number; replies echo it.
    pub seqnum: u32,
    /// Target device: `busnum << 16 | devnum`.
    pub devid: u32,
    /// Transfer direction.
    pub direction: Direction,
    /// Endpoint number, 0..=15.
    pub ep: u8,
    /// URB transfer flags (`URB_*`, Linux values).
    pub transfer_flags: u32,
    /// Bytes to transfer, checked against [`Limits::max_transfer_length`].
    pub transfer_buffer_length: u32,
    /// ISO start frame.
    pub start_frame: i32,
    /// ISO packet count (0 for non-ISO), checked against [`Limits::max_iso_packets`].
    pub number_of_packets: u32,
    /// Whether the sender wrote 0xffffffff rather than 0 for a non-ISO URB.
    pub non_iso_marker: bool,
    /// Polling interval.
    pub interval: i32,
    /// The setup packet of a control transfer (raw, little-endian fields).
    pub setup: [u8; 8],
}

impl SubmitHeader {
    /// Bytes of OUT payload after the header (0 for IN).
    pub fn data_len(&self) -> usize {
        match self.direction {
            Direction::Out => self.transfer_buffer_length as usize,
            Direction::In => 0,
        }
    }

    /// Bytes of ISO packet descriptors after the payload.
    pub fn iso_len(&self) -> usize {
        self.number_of_packets as usize * ISO_DESCRIPTOR_LEN
    }

    /// Decodes the [`iso_len`](Self::iso_len) bytes of ISO descriptors that follow the
    /// payload, checking that each packet lies inside the transfer buffer.
    pub fn decode_iso_packets(&self, buf: &[u8]) -> Result<Vec<IsoPacket>, WireError> {
        if buf.len() != self.iso_len() {
            return Err(if buf.len() < self.iso_len() {
                WireError::Truncated
            } else {
                WireError::TrailingBytes(buf.len() - self.iso_len())
            });
        }
        let mut r = Reader::new(buf);
        let packets = parse_iso(&mut r, self.number_of_packets).ok_or(WireError::Truncated)?;
        let len = self.transfer_buffer_length;
        for (index, p) in (0u32..).zip(&packets) {
            if u64::from(p.offset) + u64::from(p.length) > u64::from(len) {
                return Err(WireError::IsoPacketOutOfBounds {
                    index,
                    offset: p.offset,
                    length: p.length,
                    buffer: len,
                });
            }
        }
        Ok(packets)
    }

    /// The whole command, given its payload and decoded ISO packets.
    pub fn with_payload(self, data: &[u8], iso_packets: Vec<IsoPacket>) -> CmdSubmit<'_> {
        CmdSubmit {
            header: self,
            data,
            iso_packets,
        }
    }

    /// Appends the 48-byte header to `out`. A non-ISO URB is sent with 0 packets (as Linux
    /// does) unless it arrived with the documented 0xffffffff.
    pub fn encode(&self, out: &mut Vec<u8>) {
        emit_basic(
            out,
            CMD_SUBMIT,
            self.seqnum,
            self.devid,
            self.direction.to_u32(),
            self.ep.into(),
        );
        let packets = if self.number_of_packets == 0 && self.non_iso_marker {
            NON_ISO_PACKETS
        } else {
            self.number_of_packets
        };
        out.extend_from_slice(&self.transfer_flags.to_be_bytes());
        out.extend_from_slice(&self.transfer_buffer_length.to_be_bytes());
        out.extend_from_slice(&self.start_frame.to_be_bytes());
        out.extend_from_slice(&packets.to_be_bytes());
        out.extend_from_slice(&self.interval.to_be_bytes());
        out.extend_from_slice(&self.setup);
    }
}

/// A client command known from its 48-byte header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrbCommandHeader {
    /// CMD_SUBMIT; its payload and ISO descriptors follow.
    Submit(SubmitHeader),
    /// CMD_UNLINK, complete in its header.
    Unlink(CmdUnlink),
}

impl UrbCommandHeader {
    /// Decodes and validates the header at the start of `buf`; `None` while fewer than 48
    /// bytes are in. An oversized length is refused here, before its payload is awaited.
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<Self>, WireError> {
        let Some(header) = buf.get(..URB_HEADER_LEN) else {
            return Ok(None);
        };
        let mut r = Reader::new(header);
        // The header is complete, so no read below can come up short.
        let h = parse_basic(&mut r).ok_or(WireError::Truncated)?;
        match h.command {
            CMD_SUBMIT => Self::decode_submit(h, r, limits).map(|s| Some(Self::Submit(s))),
            CMD_UNLINK => Ok(Some(Self::Unlink(CmdUnlink {
                seqnum: h.seqnum,
                devid: h.devid,
                unlink_seqnum: r.u32().ok_or(WireError::Truncated)?,
            }))),
            other => Err(WireError::UnexpectedCommand(other)),
        }
    }

    fn decode_submit(
        h: BasicHeader,
        mut r: Reader<'_>,
        limits: &Limits,
    ) -> Result<SubmitHeader, WireError> {
        let direction = Direction::from_u32(h.direction)?;
        let ep = u8::try_from(h.ep)
            .ok()
            .filter(|&e| e <= 15)
            .ok_or(WireError::InvalidEndpoint(h.ep))?;
        let fields = (|| {
            Some((
                r.u32()?,
                r.u32()?,
                r.i32()?,
                r.u32()?,
                r.i32()?,
                r.array::<8>()?,
            ))
        })();
        let (transfer_flags, len, start_frame, raw_packets, interval, setup) =
            fields.ok_or(WireError::Truncated)?;
        if len > limits.max_transfer_length {
            return Err(WireError::TransferTooLong {
                len,
                max: limits.max_transfer_length,
            });
        }
        Ok(SubmitHeader {
            seqnum: h.seqnum,
            devid: h.devid,
            direction,
            ep,
            transfer_flags,
            transfer_buffer_length: len,
            start_frame,
            number_of_packets: iso_count(raw_packets, limits)?,
            non_iso_marker: raw_packets == NON_ISO_PACKETS,
            interval,
            setup,
        })
    }
}

impl<'a> UrbCommand<'a> {
    /// Decodes a client command from the start of `buf` (streaming). Header fields are
    /// validated as soon as the 48-byte header is in, so an oversized length is refused before
    /// its payload is awaited.
    pub fn decode(buf: &'a [u8], limits: &Limits) -> Result<Decoded<Self>, WireError> {
        let Some(header) = UrbCommandHeader::decode(buf, limits)? else {
            return Ok(None);
        };
        match header {
            UrbCommandHeader::Unlink(u) => Ok(Some((Self::Unlink(u), URB_HEADER_LEN))),
            UrbCommandHeader::Submit(h) => {
                let data_end = URB_HEADER_LEN + h.data_len();
                let end = data_end + h.iso_len();
                let Some(body) = buf.get(URB_HEADER_LEN..end) else {
                    return Ok(None);
                };
                let (data, iso) = body.split_at(h.data_len());
                let iso_packets = h.decode_iso_packets(iso)?;
                Ok(Some((Self::Submit(h.with_payload(data, iso_packets)), end)))
            }
        }
    }

    /// Decodes exactly one command filling `buf`.
    pub fn decode_exact(buf: &'a [u8], limits: &Limits) -> Result<Self, WireError> {
        exact(buf, Self::decode(buf, limits))
    }

    /// Appends the encoded command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Submit(c) => c.encode(out),
            Self::Unlink(c) => c.encode(out),
        }
    }
}

impl CmdSubmit<'_> {
    /// Appends the encoded command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        if self.header.direction == Direction::Out {
            out.extend_from_slice(self.data);
        }
        for p in &self.iso_packets {
            p.emit(out);
        }
    }
}

impl CmdUnlink {
    /// Appends the encoded command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        emit_basic(out, CMD_UNLINK, self.seqnum, self.devid, 0, 0);
        out.extend_from_slice(&self.unlink_seqnum.to_be_bytes());
        out.resize(out.len() + URB_HEADER_LEN - 24, 0);
    }
}

/// USBIP_RET_SUBMIT: the server completes a URB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetSubmit<'a> {
    /// Sequence number of the CMD_SUBMIT this completes.
    pub seqnum: u32,
    /// Completion status: 0 or a negative Linux errno.
    pub status: i32,
    /// Bytes transferred.
    pub actual_length: u32,
    /// ISO start frame.
    pub start_frame: i32,
    /// ISO packet count (0 for non-ISO).
    pub number_of_packets: u32,
    /// ISO error count.
    pub error_count: u32,
    /// IN payload (empty for OUT). For ISO IN, packets are sent back to back.
    pub data: &'a [u8],
    /// ISO packet results.
    pub iso_packets: Vec<IsoPacket>,
}

/// USBIP_RET_UNLINK: the server answers a CMD_UNLINK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetUnlink {
    /// Sequence number of the CMD_UNLINK.
    pub seqnum: u32,
    /// `-ECONNRESET` if the URB was cancelled, 0 if it had already completed.
    pub status: i32,
}

/// A URB-phase message sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrbReply<'a> {
    /// RET_SUBMIT.
    Submit(RetSubmit<'a>),
    /// RET_UNLINK.
    Unlink(RetUnlink),
}

impl RetSubmit<'_> {
    /// Appends the encoded reply to `out`. Replies carry devid, direction and ep as zero,
    /// as Linux `usbip-host` sends them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_header(out);
        out.extend_from_slice(self.data);
        encode_iso_packets(&self.iso_packets, out);
    }

    /// Appends only the 48-byte header (from `number_of_packets`, not `iso_packets`). The
    /// reply is complete once `data` and then the ISO descriptors ([`encode_iso_packets`])
    /// follow it on the wire, which lets a server send a large payload from its own buffer
    /// (a vectored write) instead of copying it behind the header.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        emit_basic(out, RET_SUBMIT, self.seqnum, 0, 0, 0);
        Self::encode_tail(
            out,
            self.status,
            self.actual_length,
            self.start_frame,
            self.number_of_packets,
            self.error_count,
        );
    }

    fn encode_tail(out: &mut Vec<u8>, status: i32, actual: u32, start: i32, n: u32, errs: u32) {
        out.extend_from_slice(&status.to_be_bytes());
        out.extend_from_slice(&actual.to_be_bytes());
        out.extend_from_slice(&start.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&errs.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
    }
}

impl RetUnlink {
    /// Appends the encoded reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        emit_basic(out, RET_UNLINK, self.seqnum, 0, 0, 0);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.resize(out.len() + URB_HEADER_LEN - 24, 0);
    }
}

/// What the client remembers of a URB it submitted, needed to decode its reply (replies do
/// not say their direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingUrb {
    /// Direction of the submitted URB.
    pub direction: Direction,
    /// Its `transfer_buffer_length`.
    pub transfer_buffer_length: u32,
}

impl<'a> UrbReply<'a> {
    /// Decodes a server reply from the start of `buf` (streaming). `pending` looks up the URB
    /// a RET_SUBMIT answers; an unknown sequence number is an error, as in Linux `vhci_rx`.
    pub fn decode(
        buf: &'a [u8],
        limits: &Limits,
        pending: impl FnOnce(u32) -> Option<PendingUrb>,
    ) -> Result<Decoded<Self>, WireError> {
        if buf.len() < URB_HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader::new(buf);
        let Some(h) = parse_basic(&mut r) else {
            return Ok(None);
        };
        let Some(status) = r.i32() else {
            return Ok(None);
        };
        match h.command {
            RET_UNLINK => Ok(Some((
                Self::Unlink(RetUnlink {
                    seqnum: h.seqnum,
                    status,
                }),
                URB_HEADER_LEN,
            ))),
            RET_SUBMIT => {
                let urb = pending(h.seqnum).ok_or(WireError::UnknownSeqnum(h.seqnum))?;
                let fields = (|| Some((r.u32()?, r.i32()?, r.u32()?, r.u32()?, r.take(8)?)))();
                let Some((actual, start_frame, raw_packets, error_count, _pad)) = fields else {
                    return Ok(None);
                };
                if actual > limits.max_transfer_length {
                    return Err(WireError::TransferTooLong {
                        len: actual,
                        max: limits.max_transfer_length,
                    });
                }
                if actual > urb.transfer_buffer_length {
                    return Err(WireError::ActualLengthTooLong {
                        actual,
                        requested: urb.transfer_buffer_length,
                    });
                }
                let packets = iso_count(raw_packets, limits)?;
                let data_len = if urb.direction == Direction::In {
                    actual
                } else {
                    0
                };
                let Some(data) = r.take(data_len as usize) else {
                    return Ok(None);
                };
                let Some(iso_packets) = parse_iso(&mut r, packets) else {
                    return Ok(None);
                };
                if urb.direction == Direction::In && !iso_packets.is_empty() {
                    let sum: u64 = iso_packets.iter().map(|p| u64::from(p.actual_length)).sum();
                    if sum != u64::from(actual) {
                        return Err(WireError::IsoLengthMismatch { sum, actual });
                    }
                }
                let consumed = r.position();
                Ok(Some((
                    Self::Submit(RetSubmit {
                        seqnum: h.seqnum,
                        status,
                        actual_length: actual,
                        start_frame,
                        number_of_packets: packets,
                        error_count,
                        data,
                        iso_packets,
                    }),
                    consumed,
                )))
            }
            other => Err(WireError::UnexpectedCommand(other)),
        }
    }

    /// Appends the encoded reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Submit(r) => r.encode(out),
            Self::Unlink(r) => r.encode(out),
        }
    }
}

#[cfg(test)]
mod tests;
