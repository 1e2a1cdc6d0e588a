//! The CDC-ACM protocol as plain sans-IO code: functional descriptors (CDC 1.2 §5.2.3,
//! PSTN 1.2 §5.3), the line coding and control line structures (PSTN 1.2 §6.3), and the
//! decoding of the class requests an ACM communication interface answers.

use crate::descriptor::kind;
use crate::setup::{Recipient, RequestKind, SetupPacket};

/// bInterfaceClass / bDeviceClass of a communication interface (CDC 1.2 §4.2, §4.1).
pub const CLASS_COMMUNICATION: u8 = 0x02;
/// bInterfaceSubClass Abstract Control Model (CDC 1.2 §4.3, table 4).
pub const SUBCLASS_ACM: u8 = 0x02;
/// bInterfaceProtocol AT commands, ITU-T V.250 (CDC 1.2 §4.4, table 5).
pub const PROTOCOL_AT_V250: u8 = 0x01;
/// bInterfaceClass of a data interface (CDC 1.2 §4.5).
pub const CLASS_DATA: u8 = 0x0a;

/// bDescriptorSubtype of functional descriptors (CDC 1.2 §5.2.3, table 13).
pub mod subtype {
    /// Header functional descriptor.
    pub const HEADER: u8 = 0x00;
    /// Call management functional descriptor.
    pub const CALL_MANAGEMENT: u8 = 0x01;
    /// Abstract control management functional descriptor.
    pub const ACM: u8 = 0x02;
    /// Union functional descriptor.
    pub const UNION: u8 = 0x06;
}

/// Class request codes of a PSTN ACM interface (PSTN 1.2 §6.3, table 13).
pub mod class_request {
    /// SEND_ENCAPSULATED_COMMAND (CDC 1.2 §6.2.1).
    pub const SEND_ENCAPSULATED_COMMAND: u8 = 0x00;
    /// GET_ENCAPSULATED_RESPONSE (CDC 1.2 §6.2.2).
    pub const GET_ENCAPSULATED_RESPONSE: u8 = 0x01;
    /// SET_LINE_CODING (PSTN 1.2 §6.3.10).
    pub const SET_LINE_CODING: u8 = 0x20;
    /// GET_LINE_CODING (PSTN 1.2 §6.3.11).
    pub const GET_LINE_CODING: u8 = 0x21;
    /// SET_CONTROL_LINE_STATE (PSTN 1.2 §6.3.12).
    pub const SET_CONTROL_LINE_STATE: u8 = 0x22;
    /// SEND_BREAK (PSTN 1.2 §6.3.13).
    pub const SEND_BREAK: u8 = 0x23;
}

/// ACM bmCapabilities bits (PSTN 1.2 §5.3.2, table 4).
pub mod acm_capabilities {
    /// D1: SET_LINE_CODING, SET_CONTROL_LINE_STATE, GET_LINE_CODING and SERIAL_STATE.
    pub const LINE: u8 = 0x02;
    /// D2: SEND_BREAK.
    pub const SEND_BREAK: u8 = 0x04;
}

/// Header functional descriptor (CDC 1.2 §5.2.3.1, table 15): the CDC release, `bcd_cdc`.
pub fn header_descriptor(bcd_cdc: u16) -> [u8; 5] {
    let [lo, hi] = bcd_cdc.to_le_bytes();
    [5, kind::CS_INTERFACE, subtype::HEADER, lo, hi]
}

/// Call management functional descriptor (PSTN 1.2 §5.3.1, table 3).
pub fn call_management_descriptor(capabilities: u8, data_interface: u8) -> [u8; 5] {
    [
        5,
        kind::CS_INTERFACE,
        subtype::CALL_MANAGEMENT,
        capabilities,
        data_interface,
    ]
}

/// Abstract control management functional descriptor (PSTN 1.2 §5.3.2, table 4).
pub fn acm_descriptor(capabilities: u8) -> [u8; 4] {
    [4, kind::CS_INTERFACE, subtype::ACM, capabilities]
}

/// Union functional descriptor with one subordinate interface (CDC 1.2 §5.2.3.2, table 16).
pub fn union_descriptor(control_interface: u8, subordinate_interface: u8) -> [u8; 5] {
    [
        5,
        kind::CS_INTERFACE,
        subtype::UNION,
        control_interface,
        subordinate_interface,
    ]
}

/// bCharFormat of the line coding (PSTN 1.2 §6.3.11, table 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopBits {
    /// 0: one stop bit.
    One,
    /// 1: one and a half stop bits.
    OneAndHalf,
    /// 2: two stop bits.
    Two,
    /// Any other value, kept as the host sent it.
    Unknown(u8),
}

impl StopBits {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::One,
            1 => Self::OneAndHalf,
            2 => Self::Two,
            n => Self::Unknown(n),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::One => 0,
            Self::OneAndHalf => 1,
            Self::Two => 2,
            Self::Unknown(n) => n,
        }
    }
}

/// bParityType of the line coding (PSTN 1.2 §6.3.11, table 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// 0: none.
    None,
    /// 1: odd.
    Odd,
    /// 2: even.
    Even,
    /// 3: mark.
    Mark,
    /// 4: space.
    Space,
    /// Any other value, kept as the host sent it.
    Unknown(u8),
}

impl Parity {
    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Odd,
            2 => Self::Even,
            3 => Self::Mark,
            4 => Self::Space,
            n => Self::Unknown(n),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Odd => 1,
            Self::Even => 2,
            Self::Mark => 3,
            Self::Space => 4,
            Self::Unknown(n) => n,
        }
    }
}

/// The line coding structure (PSTN 1.2 §6.3.11, table 17): what SET_LINE_CODING sets and
/// GET_LINE_CODING returns. A virtual port carries bytes at any "rate"; the values are
/// remembered so the guest reads back what it set, and so the host side can see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineCoding {
    /// dwDTERate: data terminal rate in bits per second.
    pub baud_rate: u32,
    /// bCharFormat.
    pub stop_bits: StopBits,
    /// bParityType.
    pub parity: Parity,
    /// bDataBits: 5, 6, 7, 8 or 16.
    pub data_bits: u8,
}

impl Default for LineCoding {
    /// 115200 baud, 8 data bits, no parity, one stop bit.
    fn default() -> Self {
        Self {
            baud_rate: 115_200,
            stop_bits: StopBits::One,
            parity: Parity::None,
            data_bits: 8,
        }
    }
}

impl LineCoding {
    /// Length on the wire.
    pub const LEN: usize = 7;

    /// Parses the first 7 bytes of `b`; `None` if there are fewer.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; 7] = b.get(..Self::LEN)?.try_into().ok()?;
        Some(Self {
            baud_rate: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            stop_bits: StopBits::from_u8(b[4]),
            parity: Parity::from_u8(b[5]),
            data_bits: b[6],
        })
    }

    /// The 7 bytes.
    pub fn to_bytes(self) -> [u8; 7] {
        let r = self.baud_rate.to_le_bytes();
        [
            r[0],
            r[1],
            r[2],
            r[3],
            self.stop_bits.to_u8(),
            self.parity.to_u8(),
            self.data_bits,
        ]
    }
}

/// The control signals SET_CONTROL_LINE_STATE sets (PSTN 1.2 §6.3.12, table 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ControlLineState {
    /// D0: DTR, the terminal is present (Linux raises it when the tty is opened).
    pub dtr: bool,
    /// D1: RTS, carrier control for half duplex.
    pub rts: bool,
}

impl ControlLineState {
    /// From wValue.
    pub fn from_value(v: u16) -> Self {
        Self {
            dtr: v & 0x01 != 0,
            rts: v & 0x02 != 0,
        }
    }

    /// wValue.
    pub fn to_value(self) -> u16 {
        u16::from(self.dtr) | u16::from(self.rts) << 1
    }
}

/// SEND_BREAK's wValue (PSTN 1.2 §6.3.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakRequest {
    /// 0: end a break.
    Off,
    /// A break of this many milliseconds.
    Millis(u16),
    /// 0xFFFF: a break until a SEND_BREAK with 0.
    UntilCleared,
}

impl BreakRequest {
    /// From wValue.
    pub fn from_value(v: u16) -> Self {
        match v {
            0 => Self::Off,
            0xffff => Self::UntilCleared,
            ms => Self::Millis(ms),
        }
    }
}

/// A class request an ACM communication interface answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmRequest {
    /// SET_LINE_CODING with its 7-byte data stage.
    SetLineCoding(LineCoding),
    /// GET_LINE_CODING.
    GetLineCoding,
    /// SET_CONTROL_LINE_STATE.
    SetControlLineState(ControlLineState),
    /// SEND_BREAK.
    SendBreak(BreakRequest),
}

impl AcmRequest {
    /// Decodes `setup` (with OUT data `data`) as a class request to communication interface
    /// `interface`. `None` for anything else — other recipients or interfaces, wrong
    /// directions, unsupported requests (the encapsulated command pair), a short line coding;
    /// the device stalls those.
    pub fn parse(setup: SetupPacket, data: &[u8], interface: u8) -> Option<Self> {
        if setup.kind() != RequestKind::Class
            || setup.recipient() != Recipient::Interface
            || setup.index != u16::from(interface)
        {
            return None;
        }
        use class_request as c;
        match (setup.request, setup.is_in()) {
            (c::SET_LINE_CODING, false) => LineCoding::parse(data).map(Self::SetLineCoding),
            (c::GET_LINE_CODING, true) => Some(Self::GetLineCoding),
            (c::SET_CONTROL_LINE_STATE, false) => Some(Self::SetControlLineState(
                ControlLineState::from_value(setup.value),
            )),
            (c::SEND_BREAK, false) => Some(Self::SendBreak(BreakRequest::from_value(setup.value))),
            _ => None,
        }
    }
}

/// What the host side can see of the port's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SerialSettings {
    /// The line coding the guest set last.
    pub line_coding: LineCoding,
    /// DTR and RTS as the guest set them last.
    pub control_lines: ControlLineState,
    /// A break is on (SEND_BREAK 0xFFFF until SEND_BREAK 0; Linux `tcsendbreak` and
    /// `TIOCSBRK` use this form).
    pub break_on: bool,
    /// SEND_BREAK requests that started a break, timed or not.
    pub breaks: u32,
}

/// The reply of the communication interface to a control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmReply {
    /// IN data stage (cut to wLength by the caller).
    Data(Vec<u8>),
    /// Status stage only.
    Ack,
}

impl SerialSettings {
    /// Carries out `req` on these settings (sans-IO).
    pub fn handle(&mut self, req: AcmRequest) -> AcmReply {
        match req {
            AcmRequest::SetLineCoding(lc) => {
                self.line_coding = lc;
                AcmReply::Ack
            }
            AcmRequest::GetLineCoding => AcmReply::Data(self.line_coding.to_bytes().to_vec()),
            AcmRequest::SetControlLineState(s) => {
                self.control_lines = s;
                AcmReply::Ack
            }
            AcmRequest::SendBreak(b) => {
                match b {
                    BreakRequest::Off => self.break_on = false,
                    BreakRequest::Millis(_) => self.breaks = self.breaks.saturating_add(1),
                    BreakRequest::UntilCleared => {
                        if !self.break_on {
                            self.breaks = self.breaks.saturating_add(1);
                        }
                        self.break_on = true;
                    }
                }
                AcmReply::Ack
            }
        }
    }

    /// SET_CONFIGURATION or port reset: the control lines and break drop; the line coding
    /// stays (the guest sets it again anyway).
    pub fn reset(&mut self) {
        self.control_lines = ControlLineState::default();
        self.break_on = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(raw: [u8; 8]) -> SetupPacket {
        SetupPacket::from_bytes(raw)
    }

    #[test]
    fn functional_descriptors() {
        assert_eq!(header_descriptor(0x0120), [5, 0x24, 0, 0x20, 0x01]);
        assert_eq!(call_management_descriptor(0, 1), [5, 0x24, 1, 0, 1]);
        assert_eq!(acm_descriptor(0x06), [4, 0x24, 2, 0x06]);
        assert_eq!(union_descriptor(0, 1), [5, 0x24, 6, 0, 1]);
    }

    #[test]
    fn line_coding_round_trips() {
        // 9600 8N1, as Linux cdc_acm sets it at probe.
        let raw = [0x80, 0x25, 0, 0, 0, 0, 8];
        let lc = LineCoding::parse(&raw).unwrap();
        assert_eq!(lc.baud_rate, 9600);
        assert_eq!(lc.stop_bits, StopBits::One);
        assert_eq!(lc.parity, Parity::None);
        assert_eq!(lc.data_bits, 8);
        assert_eq!(lc.to_bytes(), raw);
        // Values the spec does not define survive.
        let odd = [1, 0, 0, 0, 9, 7, 5];
        assert_eq!(LineCoding::parse(&odd).unwrap().to_bytes(), odd);
        assert_eq!(LineCoding::parse(&raw[..6]), None);
        for v in 0..=255u8 {
            assert_eq!(StopBits::from_u8(v).to_u8(), v);
            assert_eq!(Parity::from_u8(v).to_u8(), v);
        }
    }

    #[test]
    fn decodes_requests() {
        let line = [0x00, 0xc2, 0x01, 0x00, 0x02, 0x02, 0x07]; // 115200 7E2
        let set_line = setup([0x21, 0x20, 0, 0, 0, 0, 7, 0]);
        assert_eq!(
            AcmRequest::parse(set_line, &line, 0),
            Some(AcmRequest::SetLineCoding(LineCoding {
                baud_rate: 115_200,
                stop_bits: StopBits::Two,
                parity: Parity::Even,
                data_bits: 7,
            }))
        );
        assert_eq!(AcmRequest::parse(set_line, &line[..3], 0), None);
        assert_eq!(AcmRequest::parse(set_line, &line, 1), None);
        let get_line = setup([0xa1, 0x21, 0, 0, 0, 0, 7, 0]);
        assert_eq!(
            AcmRequest::parse(get_line, &[], 0),
            Some(AcmRequest::GetLineCoding)
        );
        let lines = setup([0x21, 0x22, 0x03, 0, 0, 0, 0, 0]);
        assert_eq!(
            AcmRequest::parse(lines, &[], 0),
            Some(AcmRequest::SetControlLineState(ControlLineState {
                dtr: true,
                rts: true
            }))
        );
        let brk = setup([0x21, 0x23, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(
            AcmRequest::parse(brk, &[], 0),
            Some(AcmRequest::SendBreak(BreakRequest::UntilCleared))
        );
        // Wrong direction, encapsulated commands, standard requests: not ours.
        let wrong = setup([0xa1, 0x20, 0, 0, 0, 0, 7, 0]);
        assert_eq!(AcmRequest::parse(wrong, &[], 0), None);
        let encapsulated = setup([0xa1, 0x01, 0, 0, 0, 0, 64, 0]);
        assert_eq!(AcmRequest::parse(encapsulated, &[], 0), None);
        let standard = setup([0x81, 0x06, 0, 0x21, 0, 0, 9, 0]);
        assert_eq!(AcmRequest::parse(standard, &[], 0), None);
    }

    #[test]
    fn settings_follow_requests() {
        let mut s = SerialSettings::default();
        let lc = LineCoding {
            baud_rate: 9600,
            ..LineCoding::default()
        };
        assert_eq!(s.handle(AcmRequest::SetLineCoding(lc)), AcmReply::Ack);
        assert_eq!(
            s.handle(AcmRequest::GetLineCoding),
            AcmReply::Data(lc.to_bytes().to_vec())
        );
        s.handle(AcmRequest::SetControlLineState(
            ControlLineState::from_value(1),
        ));
        assert!(s.control_lines.dtr && !s.control_lines.rts);
        assert_eq!(s.control_lines.to_value(), 1);
        s.handle(AcmRequest::SendBreak(BreakRequest::UntilCleared));
        s.handle(AcmRequest::SendBreak(BreakRequest::UntilCleared));
        assert!(s.break_on);
        s.handle(AcmRequest::SendBreak(BreakRequest::Off));
        s.handle(AcmRequest::SendBreak(BreakRequest::Millis(250)));
        assert!(!s.break_on);
        assert_eq!(s.breaks, 2);
        s.reset();
        assert_eq!(s.control_lines, ControlLineState::default());
        assert_eq!(s.line_coding, lc);
    }
}
