//! The URB phase's byte streams, with as few copies and system calls as the protocol allows.
//!
//! - [`CommandReader`] reads client commands. Headers, ISO descriptors and whatever else
//!   arrives with them pass through one small buffer; a large OUT payload is read straight
//!   into the URB's own buffer, so its bytes are copied once, by the kernel.
//! - [`Outbox`] gathers replies until the session writes them. Headers and small payloads are
//!   copied into one buffer; a large IN payload stays in the buffer the device returned and
//!   goes out with the headers around it in one vectored write.

use std::io::{self, IoSlice};

use bytes::BufMut;
use periwire_wire::usbip::{
    Limits, ReplySink, SubmitHeader, UrbCommandHeader, WireError, URB_HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framing::FrameError;

/// Size of the read buffer: a header with the most ISO descriptors a URB may carry (1024 of
/// 16 bytes) fits, and one read takes hundreds of small commands.
const INBOX_LEN: usize = 32 * 1024;

/// Bytes a payload's direct reads take beyond the payload (at most the read buffer's size):
/// room for the next header and the start of its payload.
const READ_AHEAD: usize = 4 * 1024;

/// Reads client commands off the URB-phase stream.
pub struct CommandReader<R> {
    rd: R,
    buf: Box<[u8]>,
    /// Received bytes not yet consumed are `buf[start..end]`.
    start: usize,
    end: usize,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> CommandReader<R> {
    /// A reader over `rd`; `leftover` are bytes already read from it (after the import).
    pub fn new(rd: R, leftover: &[u8], limits: Limits) -> Self {
        let mut buf = vec![0u8; INBOX_LEN.max(leftover.len())].into_boxed_slice();
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            rd,
            buf,
            start: 0,
            end: leftover.len(),
            limits,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads until at least `n` bytes (at most the buffer's size) are buffered. Returns
    /// `false` if the stream ended first.
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n {
                // Not enough room behind the unread bytes: move them to the front.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.rd.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Ok(false);
            }
            self.end += read;
        }
        Ok(true)
    }

    /// Waits for the next command's header. `None` on a clean end of stream between
    /// commands. After a CMD_SUBMIT header, call [`read_payload`](Self::read_payload).
    pub async fn next(&mut self) -> Result<Option<UrbCommandHeader>, FrameError> {
        if !self.fill(URB_HEADER_LEN).await? {
            return if self.start == self.end {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        let header = UrbCommandHeader::decode(self.buffered(), &self.limits)?
            .ok_or(FrameError::Protocol(WireError::Truncated))?;
        self.start += URB_HEADER_LEN;
        Ok(Some(header))
    }

    /// Reads the OUT payload and ISO descriptors that follow `header`: the payload into a
    /// buffer of its own (what the device will own), the bytes not yet received straight from
    /// the socket into it.
    ///
    /// Those direct reads ask for up to [`READ_AHEAD`] bytes more than the payload, so that
    /// the next command's header usually comes with the payload's last read instead of costing
    /// a read of its own; the extra bytes move to the read buffer.
    pub async fn read_payload(
        &mut self,
        header: &SubmitHeader,
    ) -> Result<(Vec<u8>, Vec<periwire_wire::usbip::IsoPacket>), FrameError> {
        let len = header.data_len();
        let buffered = len.min(self.end - self.start);
        let mut data = if buffered == len {
            Vec::with_capacity(len)
        } else {
            Vec::with_capacity(len + READ_AHEAD)
        };
        data.extend_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        while data.len() < len {
            let want = len + READ_AHEAD - data.len();
            if self.rd.read_buf(&mut (&mut data).limit(want)).await? == 0 {
                return Err(FrameError::Truncated);
            }
        }
        if data.len() > len {
            // Everything buffered went into the payload, so the read buffer is empty.
            let extra = &data[len..];
            self.buf[..extra.len()].copy_from_slice(extra);
            self.start = 0;
            self.end = extra.len();
            data.truncate(len);
        }
        let iso_len = header.iso_len();
        if iso_len == 0 {
            return Ok((data, Vec::new()));
        }
        if !self.fill(iso_len).await? {
            return Err(FrameError::Truncated);
        }
        let iso = header.decode_iso_packets(&self.buf[self.start..self.start + iso_len])?;
        self.start += iso_len;
        Ok((data, iso))
    }
}

/// Payloads shorter than this are copied next to their header: cheaper than an iovec.
const COPY_BELOW: usize = 4 * 1024;
/// Large payloads per write: the iovecs stay far below Linux's `IOV_MAX` (1024).
const MAX_PAYLOADS: usize = 128;
/// Bytes per write, past which the session stops gathering and writes.
const FLUSH_AT: usize = 512 * 1024;

/// A large payload, written right after `bytes[..at]`.
struct Payload {
    at: usize,
    data: Vec<u8>,
    len: usize,
}

/// Replies waiting to be written.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    payloads: Vec<Payload>,
    payload_bytes: usize,
}

impl ReplySink for Outbox {
    /// Where headers and small payloads are encoded.
    fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Appends `data[..len]` as the payload of the reply whose header was just encoded:
    /// copied if small, else kept for a vectored write.
    fn payload(&mut self, data: Vec<u8>, len: usize) {
        let len = len.min(data.len());
        if len < COPY_BELOW {
            self.bytes.extend_from_slice(&data[..len]);
        } else {
            self.payload_bytes += len;
            self.payloads.push(Payload {
                at: self.bytes.len(),
                data,
                len,
            });
        }
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(64 * 1024),
            payloads: Vec::with_capacity(MAX_PAYLOADS),
            payload_bytes: 0,
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.payloads.is_empty()
    }

    /// Whether it is time to write rather than gather more.
    pub fn is_full(&self) -> bool {
        self.payloads.len() >= MAX_PAYLOADS || self.bytes.len() + self.payload_bytes >= FLUSH_AT
    }

    /// Writes everything gathered, in order, with as few (vectored) writes as the socket
    /// takes, and empties the outbox.
    pub async fn flush(&mut self, wr: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
        if self.payloads.is_empty() {
            wr.write_all(&self.bytes).await?;
        } else {
            let mut iov = Vec::with_capacity(2 * self.payloads.len() + 1);
            let mut from = 0;
            for p in &self.payloads {
                if p.at > from {
                    iov.push(IoSlice::new(&self.bytes[from..p.at]));
                }
                iov.push(IoSlice::new(&p.data[..p.len]));
                from = p.at;
            }
            if from < self.bytes.len() {
                iov.push(IoSlice::new(&self.bytes[from..]));
            }
            let mut slices = &mut iov[..];
            while !slices.is_empty() {
                let n = wr.write_vectored(slices).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut slices, n);
            }
        }
        self.bytes.clear();
        self.payloads.clear();
        self.payload_bytes = 0;
        // A TLS stream may keep records back until flushed; on TCP this does nothing.
        wr.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periwire_wire::usbip::{CmdSubmit, CmdUnlink, Direction, IsoPacket, SubmitHeader};

    fn submit(seqnum: u32, direction: Direction, data: &[u8], iso: Vec<IsoPacket>) -> Vec<u8> {
        let mut out = Vec::new();
        CmdSubmit {
            header: SubmitHeader {
                seqnum,
                devid: 1,
                direction,
                ep: 2,
                transfer_flags: 0,
                transfer_buffer_length: data.len().max(64) as u32,
                start_frame: 0,
                non_iso_marker: false,
                interval: 0,
                setup: [0; 8],
                number_of_packets: u32::try_from(iso.len()).unwrap_or(u32::MAX),
            },
            data,
            iso_packets: iso,
        }
        .encode(&mut out);
        out
    }

    #[tokio::test]
    async fn commands_split_anywhere_decode_the_same() {
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let small = [7u8; 64];
        let iso = vec![IsoPacket {
            offset: 0,
            length: 10,
            actual_length: 0,
            status: 0,
        }];
        let mut stream = submit(1, Direction::Out, &big, Vec::new());
        stream.extend(submit(2, Direction::In, &[], iso.clone()));
        let mut unlink = Vec::new();
        CmdUnlink {
            seqnum: 3,
            devid: 1,
            unlink_seqnum: 2,
        }
        .encode(&mut unlink);
        stream.extend(unlink);
        stream.extend(submit(4, Direction::Out, &small, Vec::new()));
        for leftover in [0, 10, 47, 48, 5000] {
            // A reader that hands out at most 7000 bytes per read.
            let (client, server) = tokio::io::duplex(7000);
            let bytes = stream.clone();
            let writer = tokio::spawn(async move {
                let mut client = client;
                client.write_all(&bytes[leftover..]).await.unwrap();
            });
            let mut r = CommandReader::new(server, &stream[..leftover], Limits::default());
            let Some(UrbCommandHeader::Submit(h)) = r.next().await.unwrap() else {
                panic!("submit 1")
            };
            assert_eq!(h.seqnum, 1);
            assert_eq!(r.read_payload(&h).await.unwrap(), (big.clone(), Vec::new()));
            let Some(UrbCommandHeader::Submit(h)) = r.next().await.unwrap() else {
                panic!("submit 2")
            };
            assert_eq!(r.read_payload(&h).await.unwrap(), (Vec::new(), iso.clone()));
            assert!(matches!(
                r.next().await.unwrap(),
                Some(UrbCommandHeader::Unlink(CmdUnlink { seqnum: 3, .. }))
            ));
            let Some(UrbCommandHeader::Submit(h)) = r.next().await.unwrap() else {
                panic!("submit 4")
            };
            assert_eq!(r.read_payload(&h).await.unwrap().0, small.to_vec());
            writer.await.unwrap();
            assert!(r.next().await.unwrap().is_none(), "clean end of stream");
        }
    }

    #[tokio::test]
    async fn stream_ending_inside_a_payload_is_truncated() {
        let bytes = submit(1, Direction::Out, &[1; 1000], Vec::new());
        let mut r = CommandReader::new(&bytes[..500], &[], Limits::default());
        let Some(UrbCommandHeader::Submit(h)) = r.next().await.unwrap() else {
            panic!("submit")
        };
        assert!(matches!(
            r.read_payload(&h).await,
            Err(FrameError::Truncated)
        ));
        let mut r = CommandReader::new(&bytes[..20], &[], Limits::default());
        assert!(matches!(r.next().await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn outbox_writes_headers_and_payloads_in_order() {
        let mut out = Outbox::new();
        let mut expected = Vec::new();
        for i in 0..300u32 {
            let header = [i as u8; 48];
            out.bytes().extend_from_slice(&header);
            expected.extend_from_slice(&header);
            let len = if i % 3 == 0 { 10 } else { 5000 + i as usize };
            let data = vec![(i * 7) as u8; len + 3];
            expected.extend_from_slice(&data[..len]);
            out.payload(data, len);
            if out.is_full() {
                break;
            }
        }
        assert!(out.is_full(), "stops gathering at the payload cap");
        let mut written = Vec::new();
        out.flush(&mut written).await.unwrap();
        assert_eq!(written, expected);
        assert!(out.is_empty());
    }
}
