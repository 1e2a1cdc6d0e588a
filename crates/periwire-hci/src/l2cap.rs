//! L2CAP wire formats (Core Specification v5.4, Vol 3, Part A): the basic frame header, the
//! BR/EDR signalling channel's commands and the configuration options.
//!
//! Sans-IO codecs in the style of [`crate::wire`]: `parse` from a byte slice (every length
//! checked, truncation and trailing garbage are errors, never a panic), `emit` into a buffer.
//! Unknown signalling codes and configuration options round-trip instead of failing, so the
//! state machine above can answer them (Command Reject, "unknown options").

use crate::wire::Reader;

/// The signalling channel's CID on ACL-U (Vol 3, Part A, 2.1).
pub const CID_SIGNALING: u16 = 0x0001;
/// The connectionless channel's CID.
pub const CID_CONNECTIONLESS: u16 = 0x0002;
/// The first CID of the dynamically allocated range on ACL-U.
pub const CID_DYNAMIC_FIRST: u16 = 0x0040;
/// The MTU every BR/EDR L2CAP implementation accepts when none is configured (Vol 3, Part A,
/// 5.1).
pub const DEFAULT_MTU: u16 = 672;
/// The smallest MTU a BR/EDR channel may configure (Vol 3, Part A, 5.1: MTU_min for ACL-U).
pub const MIN_MTU: u16 = 48;
/// The basic L2CAP header: length and channel id.
pub const HEADER_LEN: usize = 4;

/// Why an L2CAP frame or signalling command could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum L2capError {
    /// The frame ends before its header or its announced length.
    #[error("L2CAP frame truncated")]
    Truncated,
    /// A signalling command's length field does not match its body.
    #[error("L2CAP signalling command {code:#04x} has a bad length")]
    BadCommandLength {
        /// The command code.
        code: u8,
        /// The identifier, to name the command in a Command Reject.
        identifier: u8,
    },
}

/// The basic L2CAP header (Vol 3, Part A, 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicHeader {
    /// Length of the information payload, header excluded.
    pub length: u16,
    /// Destination channel id.
    pub cid: u16,
}

impl BasicHeader {
    /// Reads the header at the start of `frame`.
    pub fn parse(frame: &[u8]) -> Result<Self, L2capError> {
        let mut r = Reader::new(frame);
        let length = r.u16().ok_or(L2capError::Truncated)?;
        let cid = r.u16().ok_or(L2capError::Truncated)?;
        Ok(Self { length, cid })
    }

    /// A whole frame: this header for `payload` on `cid`.
    pub fn frame(cid: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        // Callers never build payloads above 64 KiB: SDUs are capped by u16 MTUs.
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&cid.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// Connection Response results (Vol 3, Part A, 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResult {
    /// 0x0000 Connection successful.
    Success,
    /// 0x0001 Connection pending.
    Pending,
    /// 0x0002 Connection refused – PSM not supported.
    PsmNotSupported,
    /// 0x0003 Connection refused – security block.
    SecurityBlock,
    /// 0x0004 Connection refused – no resources available.
    NoResources,
    /// 0x0006 Connection refused – invalid Source CID.
    InvalidSourceCid,
    /// 0x0007 Connection refused – Source CID already allocated.
    SourceCidAlreadyAllocated,
    /// Any other value.
    Unknown(u16),
}

impl ConnectionResult {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Success => 0,
            Self::Pending => 1,
            Self::PsmNotSupported => 2,
            Self::SecurityBlock => 3,
            Self::NoResources => 4,
            Self::InvalidSourceCid => 6,
            Self::SourceCidAlreadyAllocated => 7,
            Self::Unknown(v) => v,
        }
    }

    /// The result for a wire value.
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::Pending,
            2 => Self::PsmNotSupported,
            3 => Self::SecurityBlock,
            4 => Self::NoResources,
            6 => Self::InvalidSourceCid,
            7 => Self::SourceCidAlreadyAllocated,
            v => Self::Unknown(v),
        }
    }
}

/// Configuration Response results (Vol 3, Part A, 4.5).
pub mod config_result {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Failure – unacceptable parameters.
    pub const UNACCEPTABLE_PARAMETERS: u16 = 0x0001;
    /// Failure – rejected (no reason provided).
    pub const REJECTED: u16 = 0x0002;
    /// Failure – unknown options.
    pub const UNKNOWN_OPTIONS: u16 = 0x0003;
    /// Pending.
    pub const PENDING: u16 = 0x0004;
}

/// Command Reject reasons (Vol 3, Part A, 4.1).
pub mod reject_reason {
    /// Command not understood.
    pub const NOT_UNDERSTOOD: u16 = 0x0000;
    /// Signaling MTU exceeded.
    pub const MTU_EXCEEDED: u16 = 0x0001;
    /// Invalid CID in request.
    pub const INVALID_CID: u16 = 0x0002;
}

/// Information Request types (Vol 3, Part A, 4.10).
pub mod info_type {
    /// Connectionless MTU.
    pub const CONNECTIONLESS_MTU: u16 = 0x0001;
    /// Extended features supported.
    pub const EXTENDED_FEATURES: u16 = 0x0002;
    /// Fixed channels supported.
    pub const FIXED_CHANNELS: u16 = 0x0003;
}

/// One command on the signalling channel (Vol 3, Part A, 4), without its header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum L2capSignal {
    /// 0x01 L2CAP_COMMAND_REJECT_RSP.
    CommandReject {
        /// Reason.
        reason: u16,
        /// Reason data (the CIDs for "invalid CID", the MTU for "MTU exceeded").
        data: Vec<u8>,
    },
    /// 0x02 L2CAP_CONNECTION_REQ.
    ConnectionRequest {
        /// The protocol/service multiplexer asked for.
        psm: u16,
        /// The requester's channel endpoint.
        scid: u16,
    },
    /// 0x03 L2CAP_CONNECTION_RSP.
    ConnectionResponse {
        /// The responder's channel endpoint.
        dcid: u16,
        /// The requester's channel endpoint.
        scid: u16,
        /// Result.
        result: ConnectionResult,
        /// Status, when pending (0 no information, 1 authentication pending, 2 authorisation
        /// pending).
        status: u16,
    },
    /// 0x04 L2CAP_CONFIGURATION_REQ.
    ConfigurationRequest {
        /// The recipient's channel endpoint.
        dcid: u16,
        /// Flags (bit 0: continuation).
        flags: u16,
        /// The options, raw (see [`ConfigOption`]).
        options: Vec<u8>,
    },
    /// 0x05 L2CAP_CONFIGURATION_RSP.
    ConfigurationResponse {
        /// The requester's channel endpoint (the recipient of this response).
        scid: u16,
        /// Flags (bit 0: continuation).
        flags: u16,
        /// Result (see [`config_result`]).
        result: u16,
        /// The options, raw.
        options: Vec<u8>,
    },
    /// 0x06 L2CAP_DISCONNECTION_REQ.
    DisconnectionRequest {
        /// The recipient's channel endpoint.
        dcid: u16,
        /// The sender's channel endpoint.
        scid: u16,
    },
    /// 0x07 L2CAP_DISCONNECTION_RSP.
    DisconnectionResponse {
        /// The responder's channel endpoint (the dcid of the request).
        dcid: u16,
        /// The requester's channel endpoint (the scid of the request).
        scid: u16,
    },
    /// 0x08 L2CAP_ECHO_REQ.
    EchoRequest(Vec<u8>),
    /// 0x09 L2CAP_ECHO_RSP.
    EchoResponse(Vec<u8>),
    /// 0x0A L2CAP_INFORMATION_REQ.
    InformationRequest {
        /// InfoType (see [`info_type`]).
        info_type: u16,
    },
    /// 0x0B L2CAP_INFORMATION_RSP.
    InformationResponse {
        /// InfoType.
        info_type: u16,
        /// 0 success, 1 not supported.
        result: u16,
        /// The information.
        data: Vec<u8>,
    },
    /// Any other code (AMP, LE credit-based, ...): kept whole so it can be rejected.
    Unknown {
        /// Code.
        code: u8,
        /// Body.
        data: Vec<u8>,
    },
}

/// A signalling command with its identifier (Vol 3, Part A, 4: code, identifier, length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalCommand {
    /// Matches a response with its request.
    pub identifier: u8,
    /// The command.
    pub signal: L2capSignal,
}

impl SignalCommand {
    /// Every command of one C-frame's payload (several may share a frame).
    pub fn parse_all(payload: &[u8]) -> Result<Vec<SignalCommand>, L2capError> {
        let mut r = Reader::new(payload);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let code = r.u8().ok_or(L2capError::Truncated)?;
            let identifier = r.u8().ok_or(L2capError::Truncated)?;
            let length = r.u16().ok_or(L2capError::Truncated)?;
            let body = r
                .take(usize::from(length))
                .ok_or(L2capError::BadCommandLength { code, identifier })?;
            let signal = L2capSignal::parse(code, body)
                .ok_or(L2capError::BadCommandLength { code, identifier })?;
            out.push(SignalCommand { identifier, signal });
        }
        Ok(out)
    }

    /// Appends the command's wire form to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let code = self.signal.emit_body(&mut body);
        out.push(code);
        out.push(self.identifier);
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
    }

    /// The command as a whole C-frame on the signalling channel.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        self.emit(&mut payload);
        BasicHeader::frame(CID_SIGNALING, &payload)
    }
}

impl L2capSignal {
    /// The command code.
    pub fn code(&self) -> u8 {
        match self {
            Self::CommandReject { .. } => 0x01,
            Self::ConnectionRequest { .. } => 0x02,
            Self::ConnectionResponse { .. } => 0x03,
            Self::ConfigurationRequest { .. } => 0x04,
            Self::ConfigurationResponse { .. } => 0x05,
            Self::DisconnectionRequest { .. } => 0x06,
            Self::DisconnectionResponse { .. } => 0x07,
            Self::EchoRequest(_) => 0x08,
            Self::EchoResponse(_) => 0x09,
            Self::InformationRequest { .. } => 0x0a,
            Self::InformationResponse { .. } => 0x0b,
            Self::Unknown { code, .. } => *code,
        }
    }

    /// Decodes a body; `None` when it is too short or too long for the code.
    fn parse(code: u8, body: &[u8]) -> Option<Self> {
        let mut r = Reader::new(body);
        let s = match code {
            0x01 => Self::CommandReject {
                reason: r.u16()?,
                data: r.rest().to_vec(),
            },
            0x02 => Self::ConnectionRequest {
                psm: r.u16()?,
                scid: r.u16()?,
            },
            0x03 => Self::ConnectionResponse {
                dcid: r.u16()?,
                scid: r.u16()?,
                result: ConnectionResult::from_u16(r.u16()?),
                status: r.u16()?,
            },
            0x04 => Self::ConfigurationRequest {
                dcid: r.u16()?,
                flags: r.u16()?,
                options: r.rest().to_vec(),
            },
            0x05 => Self::ConfigurationResponse {
                scid: r.u16()?,
                flags: r.u16()?,
                result: r.u16()?,
                options: r.rest().to_vec(),
            },
            0x06 => Self::DisconnectionRequest {
                dcid: r.u16()?,
                scid: r.u16()?,
            },
            0x07 => Self::DisconnectionResponse {
                dcid: r.u16()?,
                scid: r.u16()?,
            },
            0x08 => Self::EchoRequest(r.rest().to_vec()),
            0x09 => Self::EchoResponse(r.rest().to_vec()),
            0x0a => Self::InformationRequest {
                info_type: r.u16()?,
            },
            0x0b => Self::InformationResponse {
                info_type: r.u16()?,
                result: r.u16()?,
                data: r.rest().to_vec(),
            },
            _ => Self::Unknown {
                code,
                data: r.rest().to_vec(),
            },
        };
        (r.remaining() == 0).then_some(s)
    }

    /// Appends the body and returns the code.
    fn emit_body(&self, out: &mut Vec<u8>) -> u8 {
        let mut put = |v: u16| out.extend_from_slice(&v.to_le_bytes());
        match self {
            Self::CommandReject { reason, .. } => put(*reason),
            Self::ConnectionRequest { psm, scid } => {
                put(*psm);
                put(*scid);
            }
            Self::ConnectionResponse {
                dcid,
                scid,
                result,
                status,
            } => {
                put(*dcid);
                put(*scid);
                put(result.to_u16());
                put(*status);
            }
            Self::ConfigurationRequest { dcid, flags, .. } => {
                put(*dcid);
                put(*flags);
            }
            Self::ConfigurationResponse {
                scid,
                flags,
                result,
                ..
            } => {
                put(*scid);
                put(*flags);
                put(*result);
            }
            Self::DisconnectionRequest { dcid, scid }
            | Self::DisconnectionResponse { dcid, scid } => {
                put(*dcid);
                put(*scid);
            }
            Self::InformationRequest { info_type } => put(*info_type),
            Self::InformationResponse {
                info_type, result, ..
            } => {
                put(*info_type);
                put(*result);
            }
            Self::EchoRequest(_) | Self::EchoResponse(_) | Self::Unknown { .. } => {}
        }
        match self {
            Self::CommandReject { data, .. }
            | Self::InformationResponse { data, .. }
            | Self::Unknown { data, .. }
            | Self::EchoRequest(data)
            | Self::EchoResponse(data) => out.extend_from_slice(data),
            Self::ConfigurationRequest { options, .. }
            | Self::ConfigurationResponse { options, .. } => out.extend_from_slice(options),
            _ => {}
        }
        self.code()
    }
}

/// One configuration option (Vol 3, Part A, 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOption {
    /// 0x01 MTU: the largest SDU the sender of the request can receive.
    Mtu(u16),
    /// 0x02 Flush timeout.
    FlushTimeout(u16),
    /// 0x04 Retransmission and flow control: only the mode is kept (0 is basic mode).
    RetransmissionAndFlowControl {
        /// Mode.
        mode: u8,
        /// The rest of the option, as sent.
        rest: Vec<u8>,
    },
    /// Any other option type; `hint` options may be ignored, others must be refused.
    Other {
        /// The type, hint bit included.
        kind: u8,
        /// The value.
        value: Vec<u8>,
    },
}

/// The hint bit of an option type: the recipient may skip the option if it does not know it.
pub const OPTION_HINT: u8 = 0x80;

impl ConfigOption {
    /// Every option of a Configuration Request or Response.
    pub fn parse_all(options: &[u8]) -> Result<Vec<ConfigOption>, L2capError> {
        let mut r = Reader::new(options);
        let mut out = Vec::new();
        while r.remaining() > 0 {
            let kind = r.u8().ok_or(L2capError::Truncated)?;
            let len = r.u8().ok_or(L2capError::Truncated)?;
            let value = r.take(usize::from(len)).ok_or(L2capError::Truncated)?;
            let short = || L2capError::Truncated;
            let o = match (kind & !OPTION_HINT, value.len()) {
                (0x01, 2) => Self::Mtu(u16::from_le_bytes([value[0], value[1]])),
                (0x02, 2) => Self::FlushTimeout(u16::from_le_bytes([value[0], value[1]])),
                (0x04, n) if n >= 1 => Self::RetransmissionAndFlowControl {
                    mode: *value.first().ok_or_else(short)?,
                    rest: value.get(1..).ok_or_else(short)?.to_vec(),
                },
                _ => Self::Other {
                    kind,
                    value: value.to_vec(),
                },
            };
            out.push(o);
        }
        Ok(out)
    }

    /// Appends the option's wire form to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let (kind, value): (u8, Vec<u8>) = match self {
            Self::Mtu(m) => (0x01, m.to_le_bytes().to_vec()),
            Self::FlushTimeout(t) => (0x02, t.to_le_bytes().to_vec()),
            Self::RetransmissionAndFlowControl { mode, rest } => {
                let mut v = vec![*mode];
                v.extend_from_slice(rest);
                (0x04, v)
            }
            Self::Other { kind, value } => (*kind, value.clone()),
        };
        out.push(kind);
        out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&value[..value.len().min(255)]);
    }

    /// Options as the bytes of a configuration command.
    pub fn emit_all(options: &[ConfigOption]) -> Vec<u8> {
        let mut out = Vec::new();
        for o in options {
            o.emit(&mut out);
        }
        out
    }
}

/// Reassembles L2CAP frames from the fragments of one ACL-U logical link (Vol 3, Part A, 7.2):
/// a start fragment carries the basic header, continuation fragments follow until its length
/// is reached. Memory is bounded by the header's u16 length. The caller counts fragments
/// itself (each one frees a controller buffer once it is consumed).
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Option<Vec<u8>>,
}

/// The outcome of feeding one fragment to a [`Reassembler`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// The frame is not complete yet.
    Incomplete,
    /// A whole frame, header included.
    Frame(Vec<u8>),
    /// The fragments broke the rules (a continuation with no start, a frame longer than its
    /// header said); what was collected is dropped.
    Dropped,
}

impl Reassembler {
    /// Feeds one fragment (`first`: the ACL packet boundary flag said "start"). A start while
    /// a frame is incomplete discards the old one (Vol 3, Part A, 7.2.2 lets the receiver).
    pub fn push(&mut self, first: bool, data: &[u8]) -> Reassembled {
        let mut buf = match (first, self.partial.take()) {
            (true, _) => Vec::with_capacity(data.len()),
            (false, Some(b)) => b,
            (false, None) => return Reassembled::Dropped,
        };
        buf.extend_from_slice(data);
        let Ok(h) = BasicHeader::parse(&buf) else {
            self.partial = Some(buf);
            return Reassembled::Incomplete;
        };
        let want = HEADER_LEN + usize::from(h.length);
        match buf.len().cmp(&want) {
            std::cmp::Ordering::Less => {
                self.partial = Some(buf);
                Reassembled::Incomplete
            }
            std::cmp::Ordering::Equal => Reassembled::Frame(buf),
            std::cmp::Ordering::Greater => Reassembled::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Linux 6.1 guest's first signalling frame on a new link, as btmon shows it:
    /// Information Request, extended features mask.
    const INFO_REQ: [u8; 10] = [0x06, 0x00, 0x01, 0x00, 0x0a, 0x01, 0x02, 0x00, 0x02, 0x00];

    #[test]
    fn information_request_parses_and_emits_the_same_bytes() {
        let h = BasicHeader::parse(&INFO_REQ).unwrap();
        assert_eq!((h.length, h.cid), (6, CID_SIGNALING));
        let cmds = SignalCommand::parse_all(&INFO_REQ[4..]).unwrap();
        assert_eq!(
            cmds,
            vec![SignalCommand {
                identifier: 1,
                signal: L2capSignal::InformationRequest {
                    info_type: info_type::EXTENDED_FEATURES
                }
            }]
        );
        assert_eq!(cmds[0].to_frame(), INFO_REQ);
    }

    #[test]
    fn configuration_request_with_mtu_and_unknown_hint() {
        let opts = ConfigOption::emit_all(&[
            ConfigOption::Mtu(1013),
            ConfigOption::Other {
                kind: 0x85,
                value: vec![1],
            },
        ]);
        assert_eq!(opts, [0x01, 0x02, 0xf5, 0x03, 0x85, 0x01, 0x01]);
        let parsed = ConfigOption::parse_all(&opts).unwrap();
        assert_eq!(parsed[0], ConfigOption::Mtu(1013));
        assert!(matches!(parsed[1], ConfigOption::Other { kind: 0x85, .. }));
    }

    #[test]
    fn a_command_whose_length_lies_is_an_error_naming_it() {
        // Connection Request claiming 4 bytes of body but carrying 3.
        let bad = [0x02, 0x07, 0x04, 0x00, 0x01, 0x10, 0x40];
        assert_eq!(
            SignalCommand::parse_all(&bad),
            Err(L2capError::BadCommandLength {
                code: 2,
                identifier: 7
            })
        );
        // A Disconnection Request with trailing bytes inside its length.
        let long = [0x06, 0x01, 0x05, 0x00, 0x40, 0x00, 0x41, 0x00, 0xff];
        assert!(SignalCommand::parse_all(&long).is_err());
    }

    #[test]
    fn reassembly_across_fragments_and_recovery_after_a_lost_start() {
        let frame = BasicHeader::frame(0x40, &[7u8; 10]);
        let mut r = Reassembler::default();
        assert_eq!(r.push(true, &frame[..5]), Reassembled::Incomplete);
        assert_eq!(r.push(false, &frame[5..9]), Reassembled::Incomplete);
        assert_eq!(
            r.push(false, &frame[9..]),
            Reassembled::Frame(frame.clone())
        );
        assert_eq!(r.push(false, &frame[..3]), Reassembled::Dropped);
        assert_eq!(r.push(true, &frame[..3]), Reassembled::Incomplete);
        assert_eq!(r.push(true, &frame), Reassembled::Frame(frame.clone()));
        let mut long = frame.clone();
        long.push(0);
        assert_eq!(r.push(true, &long), Reassembled::Dropped);
    }

    fn signal() -> impl Strategy<Value = L2capSignal> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (any::<u16>(), bytes())
                .prop_map(|(reason, data)| L2capSignal::CommandReject { reason, data }),
            (any::<u16>(), any::<u16>())
                .prop_map(|(psm, scid)| L2capSignal::ConnectionRequest { psm, scid }),
            (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(
                |(dcid, scid, r, status)| L2capSignal::ConnectionResponse {
                    dcid,
                    scid,
                    result: ConnectionResult::from_u16(r),
                    status
                }
            ),
            (any::<u16>(), any::<u16>(), bytes()).prop_map(|(dcid, flags, options)| {
                L2capSignal::ConfigurationRequest {
                    dcid,
                    flags,
                    options,
                }
            }),
            (any::<u16>(), any::<u16>(), any::<u16>(), bytes()).prop_map(
                |(scid, flags, result, options)| L2capSignal::ConfigurationResponse {
                    scid,
                    flags,
                    result,
                    options
                }
            ),
            (any::<u16>(), any::<u16>())
                .prop_map(|(dcid, scid)| L2capSignal::DisconnectionRequest { dcid, scid }),
            bytes().prop_map(L2capSignal::EchoRequest),
            any::<u16>().prop_map(|info_type| L2capSignal::InformationRequest { info_type }),
            (0x0cu8..=0xff, bytes()).prop_map(|(code, data)| L2capSignal::Unknown { code, data }),
        ]
    }

    proptest! {
        #[test]
        fn signals_round_trip_and_every_prefix_fails_cleanly(
            s in signal(), identifier in any::<u8>()
        ) {
            let cmd = SignalCommand { identifier, signal: s };
            let mut bytes = Vec::new();
            cmd.emit(&mut bytes);
            prop_assert_eq!(SignalCommand::parse_all(&bytes).unwrap(), vec![cmd]);
            for n in 1..bytes.len() {
                prop_assert!(SignalCommand::parse_all(&bytes[..n]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SignalCommand::parse_all(&data);
            let _ = ConfigOption::parse_all(&data);
            let mut r = Reassembler::default();
            for chunk in data.chunks(7) {
                let _ = r.push(chunk.first().is_some_and(|b| b & 1 == 1), chunk);
            }
        }
    }
}
