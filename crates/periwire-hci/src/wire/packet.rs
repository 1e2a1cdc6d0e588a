//! Zero-copy views of the five HCI packet types (Vol 4, Part E, 5.4) and their `Repr`s.
//!
//! Each view checks its length once in `new_checked`; after that no accessor can panic.

use std::ops::Range;

/// Why a buffer is not a well-formed HCI packet of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The buffer ends before the header or before the length the header announces.
    #[error("packet truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes in the buffer.
        have: usize,
        /// Bytes the header asks for.
        need: usize,
    },
    /// The buffer holds bytes after the announced length.
    #[error("{0} bytes after the packet")]
    TrailingBytes(usize),
}

/// H4 packet indicators (Vol 4, Part A, 2), also used to tag packets on other transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// HCI Command packet (0x01).
    Command,
    /// HCI ACL Data packet (0x02).
    Acl,
    /// HCI Synchronous Data packet (0x03).
    Sco,
    /// HCI Event packet (0x04).
    Event,
    /// HCI ISO Data packet (0x05).
    Iso,
}

impl PacketType {
    /// The type from its H4 indicator, `None` for any other byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x01 => Some(Self::Command),
            0x02 => Some(Self::Acl),
            0x03 => Some(Self::Sco),
            0x04 => Some(Self::Event),
            0x05 => Some(Self::Iso),
            _ => None,
        }
    }

    /// The H4 indicator.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Command => 0x01,
            Self::Acl => 0x02,
            Self::Sco => 0x03,
            Self::Event => 0x04,
            Self::Iso => 0x05,
        }
    }

    /// Length of this packet type's header (after the H4 indicator).
    pub fn header_len(self) -> usize {
        match self {
            Self::Command => 3,
            Self::Acl => 4,
            Self::Sco => 3,
            Self::Event => 2,
            Self::Iso => 4,
        }
    }

    /// The payload length a complete header announces; `header` holds at least
    /// [`header_len`](Self::header_len) bytes.
    pub fn payload_len(self, header: &[u8]) -> Option<usize> {
        Some(match self {
            Self::Command | Self::Sco => usize::from(*header.get(2)?),
            Self::Event => usize::from(*header.get(1)?),
            Self::Acl => usize::from(u16::from_le_bytes([*header.get(2)?, *header.get(3)?])),
            Self::Iso => {
                usize::from(u16::from_le_bytes([*header.get(2)?, *header.get(3)?]) & 0x3fff)
            }
        })
    }
}

fn check_len(buf: &[u8], ty: PacketType) -> Result<(), PacketError> {
    let hl = ty.header_len();
    if buf.len() < hl {
        return Err(PacketError::Truncated {
            have: buf.len(),
            need: hl,
        });
    }
    let need = hl + ty.payload_len(buf).unwrap_or(0);
    match buf.len() {
        n if n < need => Err(PacketError::Truncated { have: n, need }),
        n if n > need => Err(PacketError::TrailingBytes(n - need)),
        _ => Ok(()),
    }
}

mod command_field {
    use super::Range;
    pub const OPCODE: Range<usize> = 0..2;
    pub const LENGTH: usize = 2;
    pub const PARAMETERS: usize = 3;
}

/// A view of an HCI Command packet (Vol 4, Part E, 5.4.1): opcode, parameter total length,
/// parameters.
#[derive(Debug, Clone)]
pub struct CommandPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CommandPacket<T> {
    /// Wraps `buffer`, checking that it holds exactly one command packet.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        check_len(buffer.as_ref(), PacketType::Command)?;
        Ok(Self { buffer })
    }

    /// The opcode.
    pub fn opcode(&self) -> super::Opcode {
        let b = &self.buffer.as_ref()[command_field::OPCODE];
        super::Opcode(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Parameter_Total_Length.
    pub fn parameter_total_length(&self) -> u8 {
        self.buffer.as_ref()[command_field::LENGTH]
    }

    /// The parameters.
    pub fn parameters(&self) -> &[u8] {
        &self.buffer.as_ref()[command_field::PARAMETERS..]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// A view of an HCI Event packet (Vol 4, Part E, 5.4.4): event code, parameter total length,
/// parameters.
#[derive(Debug, Clone)]
pub struct EventPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EventPacket<T> {
    /// Wraps `buffer`, checking that it holds exactly one event packet.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        check_len(buffer.as_ref(), PacketType::Event)?;
        Ok(Self { buffer })
    }

    /// The event code.
    pub fn event_code(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Parameter_Total_Length.
    pub fn parameter_total_length(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The parameters.
    pub fn parameters(&self) -> &[u8] {
        &self.buffer.as_ref()[2..]
    }
}

/// Packet_Boundary_Flag of an ACL packet (Vol 4, Part E, 5.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketBoundary {
    /// 0b00: first non-automatically-flushable packet (host to controller only).
    FirstNonFlushable,
    /// 0b01: continuing fragment.
    Continuing,
    /// 0b10: first automatically flushable packet.
    FirstFlushable,
    /// 0b11: a complete L2CAP PDU, automatically flushable (not used on LE-U or ACL-U).
    Complete,
}

impl PacketBoundary {
    /// The flag from its two bits.
    pub fn from_bits(v: u8) -> Self {
        match v & 0b11 {
            0b00 => Self::FirstNonFlushable,
            0b01 => Self::Continuing,
            0b10 => Self::FirstFlushable,
            _ => Self::Complete,
        }
    }

    /// The two bits.
    pub fn to_bits(self) -> u8 {
        match self {
            Self::FirstNonFlushable => 0b00,
            Self::Continuing => 0b01,
            Self::FirstFlushable => 0b10,
            Self::Complete => 0b11,
        }
    }

    /// Whether this fragment starts an L2CAP PDU.
    pub fn is_first(self) -> bool {
        !matches!(self, Self::Continuing)
    }
}

/// A view of an HCI ACL Data packet (Vol 4, Part E, 5.4.2): handle (12 bits), PB flag (2),
/// BC flag (2), data total length (16), data.
#[derive(Debug, Clone)]
pub struct AclPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AclPacket<T> {
    /// Wraps `buffer`, checking that it holds exactly one ACL packet.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        check_len(buffer.as_ref(), PacketType::Acl)?;
        Ok(Self { buffer })
    }

    fn word(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Connection_Handle.
    pub fn handle(&self) -> u16 {
        self.word() & 0x0fff
    }

    /// Packet_Boundary_Flag.
    pub fn packet_boundary(&self) -> PacketBoundary {
        PacketBoundary::from_bits((self.word() >> 12) as u8)
    }

    /// Broadcast_Flag (0 point-to-point).
    pub fn broadcast_flag(&self) -> u8 {
        ((self.word() >> 14) & 0b11) as u8
    }

    /// Data_Total_Length.
    pub fn data_total_length(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[2], b[3]])
    }

    /// The data.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[4..]
    }
}

/// The meaning of an ACL Data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclRepr<'a> {
    /// Connection_Handle (12 bits).
    pub handle: u16,
    /// Packet_Boundary_Flag.
    pub packet_boundary: PacketBoundary,
    /// Broadcast_Flag.
    pub broadcast_flag: u8,
    /// The data (at most 65535 bytes).
    pub data: &'a [u8],
}

impl<'a> AclRepr<'a> {
    /// Parses a checked view.
    pub fn parse(packet: &AclPacket<&'a [u8]>) -> Self {
        let b: &'a [u8] = packet.buffer;
        Self {
            handle: packet.handle(),
            packet_boundary: packet.packet_boundary(),
            broadcast_flag: packet.broadcast_flag(),
            data: &b[4..],
        }
    }

    /// Parses `bytes`, which must hold exactly one ACL packet.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let p = AclPacket::new_checked(bytes)?;
        Ok(Self {
            handle: p.handle(),
            packet_boundary: p.packet_boundary(),
            broadcast_flag: p.broadcast_flag(),
            data: &bytes[4..],
        })
    }

    /// Length of the emitted packet.
    pub fn buffer_len(&self) -> usize {
        4 + self.data.len().min(usize::from(u16::MAX))
    }

    /// Appends the packet to `out`. Data beyond 65535 bytes is cut.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let n = self.data.len().min(usize::from(u16::MAX));
        let word = (self.handle & 0x0fff)
            | (u16::from(self.packet_boundary.to_bits()) << 12)
            | (u16::from(self.broadcast_flag & 0b11) << 14);
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&self.data[..n]);
    }

    /// The emitted packet as a new buffer.
    pub fn to_packet(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buffer_len());
        self.emit(&mut v);
        v
    }
}

/// A view of an HCI Synchronous Data packet (Vol 4, Part E, 5.4.3): handle (12 bits), packet
/// status flag (2), reserved (2), data total length (8), data.
#[derive(Debug, Clone)]
pub struct ScoPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ScoPacket<T> {
    /// Wraps `buffer`, checking that it holds exactly one synchronous data packet.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        check_len(buffer.as_ref(), PacketType::Sco)?;
        Ok(Self { buffer })
    }

    /// Connection_Handle.
    pub fn handle(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[0], b[1]]) & 0x0fff
    }

    /// Packet_Status_Flag.
    pub fn packet_status(&self) -> u8 {
        (self.buffer.as_ref()[1] >> 4) & 0b11
    }

    /// The data.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[3..]
    }
}

/// The meaning of a Synchronous Data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoRepr<'a> {
    /// Connection_Handle (12 bits).
    pub handle: u16,
    /// Packet_Status_Flag.
    pub packet_status: u8,
    /// The data (at most 255 bytes).
    pub data: &'a [u8],
}

impl<'a> ScoRepr<'a> {
    /// Parses `bytes`, which must hold exactly one synchronous data packet.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let p = ScoPacket::new_checked(bytes)?;
        Ok(Self {
            handle: p.handle(),
            packet_status: p.packet_status(),
            data: &bytes[3..],
        })
    }

    /// Appends the packet to `out`. Data beyond 255 bytes is cut.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let n = self.data.len().min(255);
        let word = (self.handle & 0x0fff) | (u16::from(self.packet_status & 0b11) << 12);
        out.extend_from_slice(&word.to_le_bytes());
        out.push(n as u8);
        out.extend_from_slice(&self.data[..n]);
    }
}

/// A view of an HCI ISO Data packet (Vol 4, Part E, 5.4.5): handle (12 bits), PB flag (2),
/// TS flag (1), RFU (1), data load length (14 bits), RFU (2), ISO data load.
#[derive(Debug, Clone)]
pub struct IsoPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IsoPacket<T> {
    /// Wraps `buffer`, checking that it holds exactly one ISO packet.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        check_len(buffer.as_ref(), PacketType::Iso)?;
        Ok(Self { buffer })
    }

    fn word(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Connection_Handle.
    pub fn handle(&self) -> u16 {
        self.word() & 0x0fff
    }

    /// PB_Flag.
    pub fn pb_flag(&self) -> u8 {
        ((self.word() >> 12) & 0b11) as u8
    }

    /// TS_Flag.
    pub fn ts_flag(&self) -> bool {
        (self.word() >> 14) & 1 == 1
    }

    /// The ISO data load (with the optional time stamp and SDU header, not split here).
    pub fn data_load(&self) -> &[u8] {
        &self.buffer.as_ref()[4..]
    }
}

/// The meaning of an ISO Data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoRepr<'a> {
    /// Connection_Handle (12 bits).
    pub handle: u16,
    /// PB_Flag.
    pub pb_flag: u8,
    /// TS_Flag.
    pub ts_flag: bool,
    /// The ISO data load (at most 16383 bytes).
    pub data_load: &'a [u8],
}

impl<'a> IsoRepr<'a> {
    /// Parses `bytes`, which must hold exactly one ISO packet.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let p = IsoPacket::new_checked(bytes)?;
        Ok(Self {
            handle: p.handle(),
            pb_flag: p.pb_flag(),
            ts_flag: p.ts_flag(),
            data_load: &bytes[4..],
        })
    }

    /// Appends the packet to `out`. A data load beyond 16383 bytes is cut.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let n = self.data_load.len().min(0x3fff);
        let word = (self.handle & 0x0fff)
            | (u16::from(self.pb_flag & 0b11) << 12)
            | (u16::from(self.ts_flag) << 14);
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&self.data_load[..n]);
    }
}
