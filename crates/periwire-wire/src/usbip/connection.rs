//! The server side of the URB phase as a sans-IO state machine: which URBs are in flight, what
//! a completion or an unlink means for each, and the RET_SUBMIT and RET_UNLINK bytes that
//! follow.
//!
//! The driver reads commands off the stream (decoding them with [`UrbCommandHeader`], so that it
//! can read an OUT payload straight into the URB's own buffer) and feeds them in with
//! [`ServerConnection::handle_submit`] and [`ServerConnection::handle_unlink`]; it feeds in
//! what the device did with [`ServerConnection::handle_completion`]. Out come events for the
//! device ([`ServerConnection::poll_event`]) and replies for the stream
//! ([`ServerConnection::poll_transmit`]). Nothing here does I/O, so the rules are tested
//! without a socket or a runtime.
//!
//! The rules follow Linux `usbip-host` (`stub_rx.c`, `stub_tx.c`): a URB answered by an
//! unlink with −ECONNRESET never gets a RET_SUBMIT; a URB that completed before its unlink
//! arrived gets its RET_SUBMIT first and the unlink is answered with status 0.
//!
//! [`UrbCommandHeader`]: super::UrbCommandHeader

use std::collections::{HashMap, VecDeque};

use super::{encode_iso_packets, CmdUnlink, Direction, IsoPacket, RetSubmit, RetUnlink};
use super::{SubmitHeader, URB_HEADER_LEN};

/// −ECONNRESET: the status of a RET_UNLINK that cancelled its URB.
pub const ECONNRESET: i32 = -104;

/// Why a CMD_SUBMIT is refused. The client broke the protocol, so the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The sequence number is already in flight.
    #[error("sequence number {0} is already in flight")]
    DuplicateSeqnum(u32),
    /// The command names another device than the one imported (Linux `usbip-host` drops
    /// such a connection, `stub_rx.c` `valid_request`).
    #[error("command for device {found:#010x}, but {imported:#010x} is imported")]
    WrongDevice {
        /// The devid of the imported device.
        imported: u32,
        /// The devid the command carries.
        found: u32,
    },
}

/// What the device made of a URB, in USB/IP's terms: what a RET_SUBMIT is built from.
///
/// A completion carries its status and its data together, so a transfer that fails partway
/// can still report what it moved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UrbDone {
    /// 0 or a negative Linux errno.
    pub status: i32,
    /// IN payload; cut to the length asked for if the device returned more.
    pub data: Vec<u8>,
    /// Bytes transferred. Used as sent for ISO IN and for OUT (capped at the length asked
    /// for); a non-ISO IN reply reports the payload it carries instead.
    pub actual_length: u32,
    /// ISO start frame.
    pub start_frame: i32,
    /// ISO packets that failed.
    pub error_count: u32,
    /// ISO packet results.
    pub iso_packets: Vec<IsoPacket>,
}

impl UrbDone {
    /// A URB that failed with `status` and moved nothing.
    pub fn failed(status: i32) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
}

/// Where [`ServerConnection::poll_transmit`] puts replies: bytes to append, and payload
/// buffers that follow them, which a driver may write from where they are (a vectored
/// write) rather than copy.
pub trait ReplySink {
    /// The buffer headers, ISO descriptors and other bytes are appended to.
    fn bytes(&mut self) -> &mut Vec<u8>;
    /// `data[..len]` follows the bytes appended so far.
    fn payload(&mut self, data: Vec<u8>, len: usize);
}

impl ReplySink for Vec<u8> {
    fn bytes(&mut self) -> &mut Vec<u8> {
        self
    }

    fn payload(&mut self, data: Vec<u8>, len: usize) {
        self.extend_from_slice(&data[..len.min(data.len())]);
    }
}

/// Something the device side must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Cancel the URB `seqnum`: the client unlinked it and was told so. Its completion, if
    /// one still comes, is dropped.
    Cancel {
        /// The URB's sequence number.
        seqnum: u32,
    },
}

/// What the connection keeps for each URB in flight: replies carry neither.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    direction: Direction,
    /// Bytes the client asked for; a reply never reports more.
    requested: u32,
}

/// A reply waiting for [`ServerConnection::poll_transmit`].
#[derive(Debug)]
enum Reply {
    Submit {
        seqnum: u32,
        urb: InFlight,
        done: UrbDone,
    },
    Unlink(RetUnlink),
}

/// The URB phase of one imported device, server side.
#[derive(Debug)]
pub struct ServerConnection {
    /// The imported device's id (`busnum << 16 | devnum`); every command must carry it.
    devid: u32,
    in_flight: HashMap<u32, InFlight>,
    replies: VecDeque<Reply>,
    events: VecDeque<Event>,
}

impl ServerConnection {
    /// A connection that has just answered OP_REP_IMPORT for the device `devid`.
    pub fn new(devid: u32) -> Self {
        Self {
            devid,
            in_flight: HashMap::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn check_device(&self, devid: u32) -> Result<(), SubmitError> {
        if devid == self.devid {
            Ok(())
        } else {
            Err(SubmitError::WrongDevice {
                imported: self.devid,
                found: devid,
            })
        }
    }

    /// Number of URBs submitted and neither completed nor unlinked.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A CMD_SUBMIT arrived. On success the driver hands the URB to the device, to be
    /// answered through [`handle_completion`](Self::handle_completion).
    pub fn handle_submit(&mut self, header: &SubmitHeader) -> Result<(), SubmitError> {
        self.check_device(header.devid)?;
        let urb = InFlight {
            direction: header.direction,
            requested: header.transfer_buffer_length,
        };
        match self.in_flight.entry(header.seqnum) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(SubmitError::DuplicateSeqnum(header.seqnum))
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(urb);
                Ok(())
            }
        }
    }

    /// A CMD_UNLINK arrived. Queues its RET_UNLINK: −ECONNRESET with an [`Event::Cancel`] if
    /// the URB is still in flight, 0 if it already completed (its RET_SUBMIT is queued or
    /// sent already, so it reaches the client first). An unlink for another device breaks
    /// the protocol: the connection ends.
    pub fn handle_unlink(&mut self, unlink: &CmdUnlink) -> Result<(), SubmitError> {
        self.check_device(unlink.devid)?;
        let status = match self.in_flight.remove(&unlink.unlink_seqnum) {
            Some(_) => {
                self.events.push_back(Event::Cancel {
                    seqnum: unlink.unlink_seqnum,
                });
                ECONNRESET
            }
            None => 0,
        };
        self.replies.push_back(Reply::Unlink(RetUnlink {
            seqnum: unlink.seqnum,
            status,
        }));
        Ok(())
    }

    /// The device finished URB `seqnum`. Queues its RET_SUBMIT and returns `true`, or returns
    /// `false` if the URB was unlinked meanwhile: the client was told −ECONNRESET and
    /// expects nothing more for it (Linux vhci drops a connection that sends a RET_SUBMIT for
    /// a sequence number it does not know).
    pub fn handle_completion(&mut self, seqnum: u32, done: UrbDone) -> bool {
        let Some(urb) = self.in_flight.remove(&seqnum) else {
            return false;
        };
        self.replies.push_back(Reply::Submit { seqnum, urb, done });
        true
    }

    /// The next thing the device side must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether replies wait for [`poll_transmit`](Self::poll_transmit).
    pub fn has_transmit(&self) -> bool {
        !self.replies.is_empty()
    }

    /// Encodes the next reply into `sink`; `false` if none waits.
    pub fn poll_transmit(&mut self, sink: &mut impl ReplySink) -> bool {
        match self.replies.pop_front() {
            None => false,
            Some(Reply::Unlink(r)) => {
                r.encode(sink.bytes());
                true
            }
            Some(Reply::Submit { seqnum, urb, done }) => {
                encode_ret_submit(seqnum, urb, done, sink);
                true
            }
        }
    }

    /// The connection ends: the sequence numbers still in flight, for cancelling. Queued
    /// replies and events are dropped.
    pub fn close(&mut self) -> impl Iterator<Item = u32> + '_ {
        self.replies.clear();
        self.events.clear();
        self.in_flight.drain().map(|(seqnum, _)| seqnum)
    }
}

fn encode_ret_submit(seqnum: u32, urb: InFlight, done: UrbDone, sink: &mut impl ReplySink) {
    let mut header = RetSubmit {
        seqnum,
        status: done.status,
        actual_length: 0,
        start_frame: done.start_frame,
        number_of_packets: u32::try_from(done.iso_packets.len()).unwrap_or(u32::MAX),
        error_count: done.error_count,
        data: &[],
        iso_packets: Vec::new(),
    };
    let bytes = sink.bytes();
    bytes.reserve(URB_HEADER_LEN);
    match urb.direction {
        Direction::In => {
            // A device must not return more than asked: cut, as a host controller would.
            let limit = (urb.requested as usize).min(done.data.len());
            header.actual_length = if done.iso_packets.is_empty() {
                // `limit` is at most `requested`, a u32.
                u32::try_from(limit).unwrap_or(urb.requested)
            } else {
                done.actual_length
            };
            header.encode_header(bytes);
            sink.payload(done.data, limit);
        }
        Direction::Out => {
            header.actual_length = done.actual_length.min(urb.requested);
            header.encode_header(bytes);
        }
    }
    encode_iso_packets(&done.iso_packets, sink.bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usbip::{Limits, PendingUrb, UrbReply};

    const DEVID: u32 = 0x0001_0002;

    fn submit(seqnum: u32, direction: Direction, length: u32) -> SubmitHeader {
        SubmitHeader {
            seqnum,
            devid: 0x0001_0002,
            direction,
            ep: 1,
            transfer_flags: 0,
            transfer_buffer_length: length,
            start_frame: 0,
            number_of_packets: 0,
            non_iso_marker: false,
            interval: 0,
            setup: [0; 8],
        }
    }

    fn unlink(seqnum: u32, unlink_seqnum: u32) -> CmdUnlink {
        CmdUnlink {
            seqnum,
            devid: 0x0001_0002,
            unlink_seqnum,
        }
    }

    fn done_in(data: &[u8]) -> UrbDone {
        UrbDone {
            data: data.to_vec(),
            actual_length: u32::try_from(data.len()).unwrap_or(u32::MAX),
            ..UrbDone::default()
        }
    }

    /// Everything the connection has to send, decoded as a client would, with the directions
    /// and lengths of `pending` (the client's own record of what it submitted).
    fn replies(c: &mut ServerConnection, pending: &[(u32, PendingUrb)]) -> Vec<Reply2> {
        let mut wire = Vec::new();
        while c.poll_transmit(&mut wire) {}
        decode_all(&wire, pending)
    }

    fn decode_all(wire: &[u8], pending: &[(u32, PendingUrb)]) -> Vec<Reply2> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let lookup = |s| pending.iter().find(|(p, _)| *p == s).map(|(_, u)| *u);
            let (reply, n) = UrbReply::decode(&wire[at..], &Limits::default(), lookup)
                .expect("valid reply")
                .expect("whole reply");
            out.push(match reply {
                UrbReply::Submit(r) => Reply2::Submit {
                    seqnum: r.seqnum,
                    status: r.status,
                    data: r.data.to_vec(),
                    actual_length: r.actual_length,
                },
                UrbReply::Unlink(r) => Reply2::Unlink {
                    seqnum: r.seqnum,
                    status: r.status,
                },
            });
            at += n;
        }
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Reply2 {
        Submit {
            seqnum: u32,
            status: i32,
            data: Vec<u8>,
            actual_length: u32,
        },
        Unlink {
            seqnum: u32,
            status: i32,
        },
    }

    fn pending(direction: Direction, transfer_buffer_length: u32) -> PendingUrb {
        PendingUrb {
            direction,
            transfer_buffer_length,
        }
    }

    #[test]
    fn submit_in_is_answered_with_its_data_cut_to_the_length_asked() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(5, Direction::In, 4)).unwrap();
        assert_eq!(c.in_flight(), 1);
        assert!(
            !c.has_transmit(),
            "nothing to say before the device answers"
        );
        assert!(c.handle_completion(5, done_in(&[1, 2, 3, 4, 5, 6])));
        assert_eq!(
            replies(&mut c, &[(5, pending(Direction::In, 4))]),
            [Reply2::Submit {
                seqnum: 5,
                status: 0,
                data: vec![1, 2, 3, 4],
                actual_length: 4,
            }]
        );
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn submit_out_reports_what_the_device_took_at_most_the_length_sent() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(1, Direction::Out, 10)).unwrap();
        c.handle_submit(&submit(2, Direction::Out, 10)).unwrap();
        let took = |n| UrbDone {
            actual_length: n,
            ..UrbDone::default()
        };
        // Completions come in any order across endpoints; replies follow them.
        assert!(c.handle_completion(2, took(99)));
        assert!(c.handle_completion(1, took(7)));
        let p = [
            (1, pending(Direction::Out, 10)),
            (2, pending(Direction::Out, 10)),
        ];
        let sent = replies(&mut c, &p);
        assert!(matches!(
            sent[..],
            [
                Reply2::Submit {
                    seqnum: 2,
                    actual_length: 10,
                    ..
                },
                Reply2::Submit {
                    seqnum: 1,
                    actual_length: 7,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn a_failed_urb_carries_its_status_and_nothing_else() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(3, Direction::In, 64)).unwrap();
        assert!(c.handle_completion(3, UrbDone::failed(-32)));
        let mut wire = Vec::new();
        assert!(c.poll_transmit(&mut wire));
        assert_eq!(wire.len(), URB_HEADER_LEN);
        assert_eq!(
            decode_all(&wire, &[(3, pending(Direction::In, 64))]),
            [Reply2::Submit {
                seqnum: 3,
                status: -32,
                data: Vec::new(),
                actual_length: 0,
            }]
        );
    }

    #[test]
    fn unlink_before_completion_cancels_and_swallows_the_completion() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(5, Direction::In, 8)).unwrap();
        c.handle_unlink(&unlink(6, 5)).unwrap();
        assert_eq!(c.poll_event(), Some(Event::Cancel { seqnum: 5 }));
        assert_eq!(c.poll_event(), None);
        // The device finished before it saw the cancel: too late, the client forgot the URB.
        assert!(!c.handle_completion(5, done_in(&[1; 8])));
        assert_eq!(
            replies(&mut c, &[]),
            [Reply2::Unlink {
                seqnum: 6,
                status: ECONNRESET,
            }],
            "no RET_SUBMIT after a cancelling unlink"
        );
    }

    #[test]
    fn unlink_after_completion_follows_the_ret_submit_with_status_zero() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(7, Direction::In, 8)).unwrap();
        assert!(c.handle_completion(7, done_in(&[9; 8])));
        // The RET_SUBMIT is still queued when the unlink comes: it goes out first.
        c.handle_unlink(&unlink(8, 7)).unwrap();
        assert_eq!(c.poll_event(), None, "nothing left to cancel");
        assert_eq!(
            replies(&mut c, &[(7, pending(Direction::In, 8))]),
            [
                Reply2::Submit {
                    seqnum: 7,
                    status: 0,
                    data: vec![9; 8],
                    actual_length: 8,
                },
                Reply2::Unlink {
                    seqnum: 8,
                    status: 0,
                },
            ]
        );
        // And after it was sent: an unlink of a URB long answered is answered with 0 too.
        c.handle_unlink(&unlink(9, 7)).unwrap();
        assert_eq!(
            replies(&mut c, &[]),
            [Reply2::Unlink {
                seqnum: 9,
                status: 0,
            }]
        );
    }

    #[test]
    fn only_the_unlinked_urb_is_cancelled() {
        let mut c = ServerConnection::new(DEVID);
        for s in 1..=3 {
            c.handle_submit(&submit(s, Direction::In, 8)).unwrap();
        }
        c.handle_unlink(&unlink(10, 2)).unwrap();
        assert_eq!(c.poll_event(), Some(Event::Cancel { seqnum: 2 }));
        assert!(c.handle_completion(1, done_in(&[1])));
        assert!(c.handle_completion(3, done_in(&[3])));
        let p = [
            (1, pending(Direction::In, 8)),
            (3, pending(Direction::In, 8)),
        ];
        let seqnums: Vec<_> = replies(&mut c, &p)
            .into_iter()
            .map(|r| match r {
                Reply2::Submit { seqnum, .. } | Reply2::Unlink { seqnum, .. } => seqnum,
            })
            .collect();
        assert_eq!(seqnums, [10, 1, 3]);
    }

    #[test]
    fn duplicate_seqnum_is_refused_and_close_lists_what_is_in_flight() {
        let mut c = ServerConnection::new(DEVID);
        c.handle_submit(&submit(1, Direction::In, 8)).unwrap();
        assert_eq!(
            c.handle_submit(&submit(1, Direction::Out, 8)),
            Err(SubmitError::DuplicateSeqnum(1))
        );
        c.handle_submit(&submit(2, Direction::Out, 8)).unwrap();
        let mut open: Vec<_> = c.close().collect();
        open.sort_unstable();
        assert_eq!(open, [1, 2]);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_command_for_another_device_is_refused() {
        let mut c = ServerConnection::new(DEVID);
        let mut h = submit(1, Direction::In, 8);
        h.devid = DEVID + 1;
        assert_eq!(
            c.handle_submit(&h),
            Err(SubmitError::WrongDevice {
                imported: DEVID,
                found: DEVID + 1
            })
        );
        assert_eq!(c.in_flight(), 0, "nothing of it is kept");
        c.handle_submit(&submit(2, Direction::In, 8)).unwrap();
        let mut u = unlink(3, 2);
        u.devid = 0;
        assert!(matches!(
            c.handle_unlink(&u),
            Err(SubmitError::WrongDevice { found: 0, .. })
        ));
        assert_eq!(c.poll_event(), None, "and it cancels nothing");
        assert!(!c.has_transmit());
    }

    #[test]
    fn iso_in_reports_the_device_actual_length_and_its_descriptors() {
        let mut c = ServerConnection::new(DEVID);
        let mut h = submit(4, Direction::In, 16);
        h.number_of_packets = 2;
        c.handle_submit(&h).unwrap();
        let packet = |offset, actual_length| IsoPacket {
            offset,
            length: 8,
            actual_length,
            status: 0,
        };
        let done = UrbDone {
            data: vec![5; 11],
            actual_length: 11,
            iso_packets: vec![packet(0, 8), packet(8, 3)],
            ..UrbDone::default()
        };
        assert!(c.handle_completion(4, done));
        let mut wire = Vec::new();
        assert!(c.poll_transmit(&mut wire));
        let (reply, n) = UrbReply::decode(&wire, &Limits::default(), |_| {
            Some(pending(Direction::In, 16))
        })
        .unwrap()
        .unwrap();
        assert_eq!(n, wire.len());
        let UrbReply::Submit(r) = reply else {
            panic!("RET_SUBMIT expected")
        };
        assert_eq!((r.actual_length, r.data.len()), (11, 11));
        assert_eq!(r.iso_packets, [packet(0, 8), packet(8, 3)]);
    }
}
