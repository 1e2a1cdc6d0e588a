//! Parameter field codecs (Vol 4, Part E, 5.2: little-endian, packed, no padding).

use super::{BdAddr, ClassOfDevice, ErrorCode, Opcode};

/// A bounds-checked little-endian reader over a byte slice. Every accessor returns `None`
/// instead of reading past the end, so nothing built on it can over-read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// One octet.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
}

/// A parameter field: read from a [`Reader`], written to a buffer.
pub trait Field: Sized {
    /// Reads the field, `None` if the input ends first.
    fn read(r: &mut Reader<'_>) -> Option<Self>;
    /// Appends the field's wire form to `out`.
    fn write(&self, out: &mut Vec<u8>);
}

impl Field for u8 {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        r.u8()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Field for i8 {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(r.u8()? as i8)
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
}

impl Field for u16 {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        r.u16()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Field for u32 {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        r.u32()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl<const N: usize> Field for [u8; N] {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        r.array()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Field for BdAddr {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(BdAddr(r.array()?))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Field for Opcode {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Opcode(r.u16()?))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
    }
}

impl Field for ClassOfDevice {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let [a, b, c] = r.array()?;
        Some(ClassOfDevice(u32::from_le_bytes([a, b, c, 0])))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes()[..3]);
    }
}

impl Field for ErrorCode {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(ErrorCode::from_u8(r.u8()?))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.to_u8());
    }
}

/// Every byte up to the end of the parameters (must be the last field).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rest(pub Vec<u8>);

impl Field for Rest {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        Some(Rest(r.rest().to_vec()))
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

/// Bytes preceded by their length in one octet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LenBytes(pub Vec<u8>);

impl Field for LenBytes {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let n = r.u8()?;
        Some(LenBytes(r.take(usize::from(n))?.to_vec()))
    }
    fn write(&self, out: &mut Vec<u8>) {
        // The length octet caps the field at 255 bytes; longer input is cut, never wrapped.
        let n = self.0.len().min(255);
        out.push(n as u8);
        out.extend_from_slice(&self.0[..n]);
    }
}

/// Records preceded by their count in one octet (`Num_Responses`, `Num_Handles`, ...). The
/// records are laid out one after another, as Linux (`struct inquiry_info`,
/// `hci_comp_pkts_info`, `hci_ev_le_advertising_info`) and every controller lay them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted<T>(pub Vec<T>);

impl<T> Default for Counted<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Field> Field for Counted<T> {
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let n = r.u8()?;
        // At most 255 records, each at least one byte: bounded by the parameter length.
        let mut v = Vec::with_capacity(usize::from(n).min(r.remaining()));
        for _ in 0..n {
            v.push(T::read(r)?);
        }
        Some(Counted(v))
    }
    fn write(&self, out: &mut Vec<u8>) {
        let n = self.0.len().min(255);
        out.push(n as u8);
        for item in &self.0[..n] {
            item.write(out);
        }
    }
}
