//! The 8-byte SETUP packet of a control transfer (USB 2.0 §9.3).

/// A parsed SETUP packet. Fields are little-endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetupPacket {
    /// bmRequestType: direction, type and recipient.
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: bytes of the data stage.
    pub length: u16,
}

/// Who a control request is addressed to (bmRequestType bits 4..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    /// The device.
    Device,
    /// An interface; wIndex low byte names it.
    Interface,
    /// An endpoint; wIndex low byte is its address.
    Endpoint,
    /// Anything else.
    Other,
}

/// Kind of a control request (bmRequestType bits 6..5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Defined by USB 2.0 chapter 9.
    Standard,
    /// Defined by a class specification.
    Class,
    /// Defined by the vendor.
    Vendor,
    /// Reserved.
    Reserved,
}

/// Standard request codes (USB 2.0 table 9-4).
pub mod request {
    /// GET_STATUS.
    pub const GET_STATUS: u8 = 0x00;
    /// CLEAR_FEATURE.
    pub const CLEAR_FEATURE: u8 = 0x01;
    /// SET_FEATURE.
    pub const SET_FEATURE: u8 = 0x03;
    /// SET_ADDRESS.
    pub const SET_ADDRESS: u8 = 0x05;
    /// GET_DESCRIPTOR.
    pub const GET_DESCRIPTOR: u8 = 0x06;
    /// SET_DESCRIPTOR.
    pub const SET_DESCRIPTOR: u8 = 0x07;
    /// GET_CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 0x08;
    /// SET_CONFIGURATION.
    pub const SET_CONFIGURATION: u8 = 0x09;
    /// GET_INTERFACE.
    pub const GET_INTERFACE: u8 = 0x0a;
    /// SET_INTERFACE.
    pub const SET_INTERFACE: u8 = 0x0b;
}

impl SetupPacket {
    /// Parses the raw 8 bytes carried in a USB/IP CMD_SUBMIT.
    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }

    /// The raw 8 bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let v = self.value.to_le_bytes();
        let i = self.index.to_le_bytes();
        let l = self.length.to_le_bytes();
        [
            self.request_type,
            self.request,
            v[0],
            v[1],
            i[0],
            i[1],
            l[0],
            l[1],
        ]
    }

    /// Whether the data stage goes device to host.
    pub fn is_in(self) -> bool {
        self.request_type & 0x80 != 0
    }

    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match (self.request_type >> 5) & 3 {
            0 => RequestKind::Standard,
            1 => RequestKind::Class,
            2 => RequestKind::Vendor,
            _ => RequestKind::Reserved,
        }
    }

    /// The recipient.
    pub fn recipient(self) -> Recipient {
        match self.request_type & 0x1f {
            0 => Recipient::Device,
            1 => Recipient::Interface,
            2 => Recipient::Endpoint,
            _ => Recipient::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_descriptor_round_trips() {
        let raw = [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00];
        let s = SetupPacket::from_bytes(raw);
        assert_eq!(s.request, request::GET_DESCRIPTOR);
        assert_eq!(s.value, 0x0100);
        assert_eq!(s.length, 18);
        assert!(s.is_in());
        assert_eq!(s.kind(), RequestKind::Standard);
        assert_eq!(s.recipient(), Recipient::Device);
        assert_eq!(s.to_bytes(), raw);
    }
}
