//! H4 framing: the UART transport layer (Vol 4, Part A), also used raw over TCP and Unix
//! sockets (Bumble's `tcp-client:` transport, QEMU's `-chardev` HCI, Android's root-canal).
//!
//! Each packet is preceded by a one-byte packet indicator ([`PacketType`]); the packet's own
//! header gives its length. The stream has no checksum or delimiter, so after garbage the
//! decoder resynchronises by skipping bytes until it finds an indicator whose header announces
//! a length within the caps, and reports how much it skipped.

use super::PacketType;

/// Caps on what the decoder accepts, so memory is bounded whatever the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H4Limits {
    /// Largest ACL data length accepted (the controller's advertised ACL buffer size is the
    /// natural choice; the wire allows 65535).
    pub max_acl_data: usize,
    /// Largest ISO data load accepted (the wire allows 16383).
    pub max_iso_data: usize,
    /// Accept command packets (the controller side of a link).
    pub accept_commands: bool,
    /// Accept event packets (the host side of a link).
    pub accept_events: bool,
}

impl H4Limits {
    /// Limits for a controller reading what a host sends: commands, ACL, SCO and ISO.
    pub fn controller() -> Self {
        Self {
            max_acl_data: 4096,
            max_iso_data: 4096,
            accept_commands: true,
            accept_events: false,
        }
    }

    /// Limits for a host reading what a controller sends: events, ACL, SCO and ISO.
    pub fn host() -> Self {
        Self {
            max_acl_data: 4096,
            max_iso_data: 4096,
            accept_commands: false,
            accept_events: true,
        }
    }

    fn max_payload(&self, ty: PacketType) -> Option<usize> {
        match ty {
            PacketType::Command if self.accept_commands => Some(255),
            PacketType::Event if self.accept_events => Some(255),
            PacketType::Sco => Some(255),
            PacketType::Acl => Some(self.max_acl_data.min(usize::from(u16::MAX))),
            PacketType::Iso => Some(self.max_iso_data.min(0x3fff)),
            _ => None,
        }
    }

    /// The largest whole packet (indicator, header and payload) these limits accept.
    pub fn max_frame_len(&self) -> usize {
        1 + 4 + 255.max(self.max_acl_data).max(self.max_iso_data)
    }
}

impl Default for H4Limits {
    fn default() -> Self {
        Self::controller()
    }
}

/// One packet taken off an H4 stream: its type and its bytes without the indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H4Packet {
    /// The packet indicator.
    pub packet_type: PacketType,
    /// The packet: header and payload.
    pub bytes: Vec<u8>,
}

impl H4Packet {
    /// Appends the packet with its indicator to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.packet_type.to_u8());
        out.extend_from_slice(&self.bytes);
    }
}

/// A non-fatal decoding event: the stream held bytes that are not a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum H4Error {
    /// Bytes were skipped to find the next plausible packet.
    #[error("skipped {skipped} bytes of garbage to resynchronise")]
    Resynchronised {
        /// Bytes dropped.
        skipped: usize,
    },
}

/// Splits an H4 byte stream into packets.
///
/// Feed bytes with [`push`](Self::push), then call [`next_packet`](Self::next_packet) until it
/// returns `None`. The buffered bytes never exceed one maximal frame plus the last push.
#[derive(Debug, Clone)]
pub struct H4Decoder {
    limits: H4Limits,
    buf: Vec<u8>,
    start: usize,
    skipped: usize,
}

impl H4Decoder {
    /// A decoder applying `limits`.
    pub fn new(limits: H4Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            start: 0,
            skipped: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &H4Limits {
        &self.limits
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next packet, `None` when more bytes are needed, or an error that reports skipped
    /// garbage (decoding goes on after it).
    pub fn next_packet(&mut self) -> Option<Result<H4Packet, H4Error>> {
        loop {
            let avail = &self.buf[self.start..];
            let Some(&indicator) = avail.first() else {
                return self.take_skipped();
            };
            let ty = PacketType::from_u8(indicator);
            let cap = ty.and_then(|t| self.limits.max_payload(t).map(|c| (t, c)));
            let Some((ty, cap)) = cap else {
                self.skip();
                continue;
            };
            let header_len = ty.header_len();
            let Some(header) = avail.get(1..1 + header_len) else {
                return self.take_skipped();
            };
            let len = ty.payload_len(header).unwrap_or(usize::MAX);
            if len > cap {
                self.skip();
                continue;
            }
            let total = 1 + header_len + len;
            if avail.len() < total {
                return self.take_skipped();
            }
            if self.skipped > 0 {
                return self.take_skipped();
            }
            let bytes = self.buf[self.start + 1..self.start + total].to_vec();
            self.start += total;
            return Some(Ok(H4Packet {
                packet_type: ty,
                bytes,
            }));
        }
    }

    fn skip(&mut self) {
        self.start += 1;
        self.skipped += 1;
    }

    fn take_skipped(&mut self) -> Option<Result<H4Packet, H4Error>> {
        match std::mem::take(&mut self.skipped) {
            0 => None,
            skipped => Some(Err(H4Error::Resynchronised { skipped })),
        }
    }
}

/// Frames one packet for an H4 stream: the indicator, then the packet bytes.
pub fn h4_frame(packet_type: PacketType, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(packet_type.to_u8());
    out.extend_from_slice(bytes);
    out
}
