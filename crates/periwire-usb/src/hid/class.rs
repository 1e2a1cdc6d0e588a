//! HID class requests (HID 1.11 §7) as plain sans-IO code: decoding a SETUP packet into a
//! [`HidRequest`], and the interface state those requests set ([`HidInterfaceState`]).

use crate::descriptor::kind;
use crate::setup::{request, Recipient, RequestKind, SetupPacket};

/// HID class request codes (HID 1.11 §7.2, table "Class-Specific Requests").
pub mod class_request {
    /// GET_REPORT (HID 1.11 §7.2.1).
    pub const GET_REPORT: u8 = 0x01;
    /// GET_IDLE (HID 1.11 §7.2.3).
    pub const GET_IDLE: u8 = 0x02;
    /// GET_PROTOCOL (HID 1.11 §7.2.5).
    pub const GET_PROTOCOL: u8 = 0x03;
    /// SET_REPORT (HID 1.11 §7.2.2).
    pub const SET_REPORT: u8 = 0x09;
    /// SET_IDLE (HID 1.11 §7.2.4).
    pub const SET_IDLE: u8 = 0x0a;
    /// SET_PROTOCOL (HID 1.11 §7.2.6).
    pub const SET_PROTOCOL: u8 = 0x0b;
}

/// Report type, the high byte of wValue in GET_REPORT and SET_REPORT (HID 1.11 §7.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    /// 1: input report (device to host).
    Input,
    /// 2: output report (host to device, e.g. keyboard LEDs).
    Output,
    /// 3: feature report.
    Feature,
    /// Any other (reserved) value, kept as sent.
    Unknown(u8),
}

impl ReportType {
    /// The type from its wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Input,
            2 => Self::Output,
            3 => Self::Feature,
            n => Self::Unknown(n),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Input => 1,
            Self::Output => 2,
            Self::Feature => 3,
            Self::Unknown(n) => n,
        }
    }
}

/// The protocol a boot device speaks (HID 1.11 §7.2.5, §7.2.6; boot protocol: Appendix B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 0: the fixed boot report format of Appendix B.
    Boot,
    /// 1: the format the report descriptor describes. Devices start in this protocol
    /// (HID 1.11 §7.2.6).
    Report,
}

impl Protocol {
    /// The protocol from wValue of SET_PROTOCOL; `None` for values the spec does not define.
    pub fn from_value(v: u16) -> Option<Self> {
        match v {
            0 => Some(Self::Boot),
            1 => Some(Self::Report),
            _ => None,
        }
    }

    /// The byte GET_PROTOCOL returns.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Boot => 0,
            Self::Report => 1,
        }
    }
}

/// A control request addressed to a HID interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HidRequest<'a> {
    /// Standard GET_DESCRIPTOR with interface recipient, for a HID class descriptor
    /// (HID 1.11 §7.1.1): HID (0x21), report (0x22) or physical (0x23).
    GetDescriptor {
        /// Descriptor type, the high byte of wValue.
        descriptor_type: u8,
        /// Descriptor index, the low byte of wValue.
        index: u8,
    },
    /// GET_REPORT (HID 1.11 §7.2.1).
    GetReport {
        /// Report type.
        report_type: ReportType,
        /// Report ID (0 when the device uses none).
        report_id: u8,
    },
    /// SET_REPORT (HID 1.11 §7.2.2) with the report in the data stage.
    SetReport {
        /// Report type.
        report_type: ReportType,
        /// Report ID (0 when the device uses none).
        report_id: u8,
        /// The report.
        data: &'a [u8],
    },
    /// GET_IDLE (HID 1.11 §7.2.3).
    GetIdle {
        /// Report ID (0: all reports).
        report_id: u8,
    },
    /// SET_IDLE (HID 1.11 §7.2.4).
    SetIdle {
        /// Duration in 4 ms units; 0 means "only on change".
        duration: u8,
        /// Report ID (0: all reports).
        report_id: u8,
    },
    /// GET_PROTOCOL (HID 1.11 §7.2.5).
    GetProtocol,
    /// SET_PROTOCOL (HID 1.11 §7.2.6).
    SetProtocol(Protocol),
}

impl<'a> HidRequest<'a> {
    /// Decodes `setup` (with the OUT data stage `data`) as a request to HID interface
    /// `interface`. `None` for anything else — another recipient, another interface, a wrong
    /// direction, an unknown request or an undefined protocol value; the device stalls those.
    pub fn parse(setup: SetupPacket, data: &'a [u8], interface: u8) -> Option<Self> {
        if setup.recipient() != Recipient::Interface || setup.index != u16::from(interface) {
            return None;
        }
        let [low, high] = setup.value.to_le_bytes();
        use class_request as c;
        let req = match (setup.kind(), setup.request, setup.is_in()) {
            (RequestKind::Standard, request::GET_DESCRIPTOR, true) => Self::GetDescriptor {
                descriptor_type: high,
                index: low,
            },
            (RequestKind::Class, c::GET_REPORT, true) => Self::GetReport {
                report_type: ReportType::from_u8(high),
                report_id: low,
            },
            (RequestKind::Class, c::SET_REPORT, false) => Self::SetReport {
                report_type: ReportType::from_u8(high),
                report_id: low,
                data,
            },
            (RequestKind::Class, c::GET_IDLE, true) => Self::GetIdle { report_id: low },
            (RequestKind::Class, c::SET_IDLE, false) => Self::SetIdle {
                duration: high,
                report_id: low,
            },
            (RequestKind::Class, c::GET_PROTOCOL, true) => Self::GetProtocol,
            (RequestKind::Class, c::SET_PROTOCOL, false) => {
                Self::SetProtocol(Protocol::from_value(setup.value)?)
            }
            _ => return None,
        };
        Some(req)
    }
}

/// What a control request comes to, before it is turned into a URB result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// An IN data stage (cut to wLength by the caller).
    Data(Vec<u8>),
    /// A status stage with no data (OUT requests).
    Ack,
    /// The request is not supported: STALL.
    Stall,
}

/// The state HID class requests set on a boot interface: protocol and idle rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HidInterfaceState {
    /// The protocol in use.
    pub protocol: Protocol,
    /// Idle rate in 4 ms units (0: report only on change). Remembered and reported; periwire
    /// devices send reports on change only (they never repeat an unchanged report), which is
    /// what hosts ask for with SET_IDLE(0) — Linux usbhid and Windows both do.
    pub idle: u8,
    default_idle: u8,
}

impl HidInterfaceState {
    /// State after reset: report protocol (HID 1.11 §7.2.6) and `default_idle` — 125 (500 ms)
    /// for keyboards, 0 for mice, as HID 1.11 §7.2.4 recommends.
    pub fn new(default_idle: u8) -> Self {
        Self {
            protocol: Protocol::Report,
            idle: default_idle,
            default_idle,
        }
    }

    /// Back to the state after reset (SET_CONFIGURATION, port reset).
    pub fn reset(&mut self) {
        *self = Self::new(self.default_idle);
    }

    /// Answers the requests that only touch this state — GET/SET_IDLE and
    /// GET/SET_PROTOCOL for report ID 0 — and `None` for the others (descriptors and
    /// reports, which depend on the device).
    pub fn handle(&mut self, req: &HidRequest<'_>) -> Option<ControlReply> {
        let reply = match *req {
            HidRequest::GetIdle { report_id: 0 } => ControlReply::Data(vec![self.idle]),
            HidRequest::SetIdle {
                duration,
                report_id: 0,
            } => {
                self.idle = duration;
                ControlReply::Ack
            }
            // These devices use no report IDs.
            HidRequest::GetIdle { .. } | HidRequest::SetIdle { .. } => ControlReply::Stall,
            HidRequest::GetProtocol => ControlReply::Data(vec![self.protocol.to_u8()]),
            HidRequest::SetProtocol(p) => {
                self.protocol = p;
                ControlReply::Ack
            }
            _ => return None,
        };
        Some(reply)
    }
}

/// The 9-byte HID descriptor with one report descriptor (HID 1.11 §6.2.1): bcdHID 1.11,
/// country code 0 (not localized), one class descriptor of type report (0x22).
pub fn hid_descriptor(report_descriptor_len: u16) -> [u8; 9] {
    let [bcd_lo, bcd_hi] = 0x0111u16.to_le_bytes();
    let [len_lo, len_hi] = report_descriptor_len.to_le_bytes();
    [
        9,
        kind::HID,
        bcd_lo,
        bcd_hi,
        0, // bCountryCode
        1, // bNumDescriptors
        kind::HID_REPORT,
        len_lo,
        len_hi,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(raw: [u8; 8]) -> SetupPacket {
        SetupPacket::from_bytes(raw)
    }

    #[test]
    fn decodes_report_descriptor_request() {
        // As Linux usbhid sends it: bmRequestType 0x81, GET_DESCRIPTOR, wValue 0x2200.
        let s = setup([0x81, 0x06, 0x00, 0x22, 0x00, 0x00, 0x3f, 0x00]);
        assert_eq!(
            HidRequest::parse(s, &[], 0),
            Some(HidRequest::GetDescriptor {
                descriptor_type: 0x22,
                index: 0
            })
        );
        // Another interface is not ours.
        assert_eq!(HidRequest::parse(s, &[], 1), None);
        // Device recipient is the standard handler's.
        let d = setup([0x80, 0x06, 0x00, 0x22, 0x00, 0x00, 0x3f, 0x00]);
        assert_eq!(HidRequest::parse(d, &[], 0), None);
    }

    #[test]
    fn decodes_class_requests() {
        let set_report = setup([0x21, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(
            HidRequest::parse(set_report, &[0x02], 0),
            Some(HidRequest::SetReport {
                report_type: ReportType::Output,
                report_id: 0,
                data: &[0x02]
            })
        );
        let get_report = setup([0xa1, 0x01, 0x00, 0x01, 0x00, 0x00, 0x08, 0x00]);
        assert_eq!(
            HidRequest::parse(get_report, &[], 0),
            Some(HidRequest::GetReport {
                report_type: ReportType::Input,
                report_id: 0
            })
        );
        let set_idle = setup([0x21, 0x0a, 0x00, 0x7d, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(
            HidRequest::parse(set_idle, &[], 0),
            Some(HidRequest::SetIdle {
                duration: 125,
                report_id: 0
            })
        );
        let set_protocol = setup([0x21, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(
            HidRequest::parse(set_protocol, &[], 0),
            Some(HidRequest::SetProtocol(Protocol::Boot))
        );
        // Undefined protocol value, wrong direction, unknown request: not decoded.
        let bad_protocol = setup([0x21, 0x0b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(HidRequest::parse(bad_protocol, &[], 0), None);
        let wrong_dir = setup([0xa1, 0x09, 0x00, 0x02, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(HidRequest::parse(wrong_dir, &[], 0), None);
        let unknown = setup([0xa1, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(HidRequest::parse(unknown, &[], 0), None);
    }

    #[test]
    fn idle_and_protocol_state() {
        let mut s = HidInterfaceState::new(125);
        assert_eq!(
            s.handle(&HidRequest::GetIdle { report_id: 0 }),
            Some(ControlReply::Data(vec![125]))
        );
        assert_eq!(
            s.handle(&HidRequest::SetIdle {
                duration: 0,
                report_id: 0
            }),
            Some(ControlReply::Ack)
        );
        assert_eq!(s.idle, 0);
        assert_eq!(
            s.handle(&HidRequest::SetIdle {
                duration: 3,
                report_id: 7
            }),
            Some(ControlReply::Stall)
        );
        assert_eq!(
            s.handle(&HidRequest::GetProtocol),
            Some(ControlReply::Data(vec![1]))
        );
        s.handle(&HidRequest::SetProtocol(Protocol::Boot));
        assert_eq!(s.protocol, Protocol::Boot);
        assert_eq!(
            s.handle(&HidRequest::GetProtocol),
            Some(ControlReply::Data(vec![0]))
        );
        assert_eq!(
            s.handle(&HidRequest::GetReport {
                report_type: ReportType::Input,
                report_id: 0
            }),
            None
        );
        s.reset();
        assert_eq!(s, HidInterfaceState::new(125));
    }

    #[test]
    fn hid_descriptor_bytes() {
        assert_eq!(
            hid_descriptor(63),
            [0x09, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, 0x3f, 0x00]
        );
    }

    #[test]
    fn report_type_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(ReportType::from_u8(v).to_u8(), v);
        }
    }
}
