//! HCI wire formats: packets, parameters, H4 framing.
//!
//! Follows the Bluetooth Core Specification v5.4, Vol 4 (Host Controller Interface):
//! Part A (UART transport layer, i.e. H4) and Part E (HCI functional specification). All
//! multi-octet fields are little-endian (Vol 4, Part E, 5.2).
//!
//! The layout mirrors smoltcp's `wire`: each packet type has a view over a byte buffer
//! ([`CommandPacket`], [`EventPacket`], [`AclPacket`], [`ScoPacket`], [`IsoPacket`]) whose
//! accessors never panic once `new_checked` succeeded, and a typed representation
//! ([`HciCommand`], [`HciEvent`], [`AclRepr`], ...) that protocol logic works with. Command and
//! event parameters are declared once per opcode / event code (Bumble style) and parsed by table
//! lookup; unknown opcodes and event codes fall back to a generic variant that round-trips.

mod codes;
mod command;
mod event;
mod field;
mod h4;
mod packet;

#[cfg(test)]
mod tests;

pub use codes::{ErrorCode, LeSubeventCode};
pub use command::*;
pub use event::*;
pub use field::{Counted, Field, LenBytes, Reader, Rest};
pub use h4::{h4_frame, H4Decoder, H4Error, H4Limits, H4Packet};
pub use packet::*;

use std::fmt;

/// A Bluetooth device address (BD_ADDR, Vol 2, Part B, 1.2), stored in wire order (least
/// significant octet first) and printed most significant octet first, as `XX:XX:..`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BdAddr(pub [u8; 6]);

impl BdAddr {
    /// The all-zero address.
    pub const ANY: BdAddr = BdAddr([0; 6]);

    /// The address from its text form `XX:XX:XX:XX:XX:XX` (most significant octet first).
    pub fn parse_str(s: &str) -> Option<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in out.iter_mut().rev() {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *slot = u8::from_str_radix(p, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Self(out))
    }

    /// The address as a 48-bit integer.
    pub fn to_u64(self) -> u64 {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&self.0);
        u64::from_le_bytes(b)
    }

    /// The address from the low 48 bits of an integer.
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_le_bytes();
        Self([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The Lower Address Part (LAP, 24 bits) used in the access code (Vol 2, Part B, 1.2).
    pub fn lap(self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], 0])
    }
}

impl fmt::Display for BdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[5], b[4], b[3], b[2], b[1], b[0]
        )
    }
}

impl fmt::Debug for BdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A command opcode: OGF (6 bits) and OCF (10 bits) (Vol 4, Part E, 5.4.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Opcode(pub u16);

impl Opcode {
    /// The opcode of an OGF/OCF pair.
    pub const fn new(ogf: u8, ocf: u16) -> Self {
        Self(((ogf as u16) << 10) | (ocf & 0x03ff))
    }

    /// The OpCode Group Field.
    pub const fn ogf(self) -> u8 {
        (self.0 >> 10) as u8
    }

    /// The OpCode Command Field.
    pub const fn ocf(self) -> u16 {
        self.0 & 0x03ff
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opcode({:#06x})", self.0)
    }
}

/// Class of Device, 24 bits (Assigned Numbers, 2.8; carried as 3 octets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClassOfDevice(pub u32);

/// Why command or event parameters could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The parameters end before the last field.
    #[error("parameters truncated")]
    Truncated,
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes after the parameters")]
    TrailingBytes(usize),
}

impl ParamError {
    /// The status a controller answers with for a command whose parameters fail to decode.
    pub fn error_code(self) -> ErrorCode {
        ErrorCode::InvalidHciCommandParameters
    }
}

/// Decodes parameters that must take exactly `bytes`.
pub(crate) fn parse_exact<T>(
    bytes: &[u8],
    f: impl FnOnce(&mut Reader<'_>) -> Option<T>,
) -> Result<T, ParamError> {
    let mut r = Reader::new(bytes);
    let v = f(&mut r).ok_or(ParamError::Truncated)?;
    match r.remaining() {
        0 => Ok(v),
        n => Err(ParamError::TrailingBytes(n)),
    }
}
