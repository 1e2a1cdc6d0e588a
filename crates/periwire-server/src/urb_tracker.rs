//! Sequence-number bookkeeping of one imported device: which URBs are in flight, and what a
//! completion or an unlink means for each. Plain state, no I/O: the connection feeds it events
//! and writes what it says.
//!
//! The rules follow Linux `usbip-host` (`stub_rx.c`, `stub_tx.c`): a URB answered by an
//! unlink with −ECONNRESET never gets a RET_SUBMIT; a URB that completed before its unlink
//! arrived gets its RET_SUBMIT first and the unlink is answered with status 0.

use std::collections::HashMap;

use periwire_wire::usbip::Direction;

/// −ECONNRESET: the status of a RET_UNLINK that cancelled its URB.
pub const ECONNRESET: i32 = -104;

/// What the tracker keeps for each URB in flight.
#[derive(Debug)]
pub struct InFlight<H> {
    /// Direction, needed to encode the reply (replies do not carry it).
    pub direction: Direction,
    /// Bytes the client asked for; an IN reply never carries more.
    pub requested: u32,
    /// Whatever cancels the URB when dropped or used.
    pub cancel: H,
}

/// Why a submission is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The sequence number is already in flight: the client broke the protocol.
    #[error("sequence number {0} is already in flight")]
    DuplicateSeqnum(u32),
}

/// The outcome of a CMD_UNLINK.
#[derive(Debug)]
pub enum Unlinked<H> {
    /// The URB was in flight: cancel it with the handle; reply −ECONNRESET; send no
    /// RET_SUBMIT for it.
    Cancelled(InFlight<H>),
    /// The URB had already completed (its RET_SUBMIT has been queued): reply status 0.
    AlreadyDone,
}

impl<H> Unlinked<H> {
    /// The RET_UNLINK status for this outcome.
    pub fn status(&self) -> i32 {
        match self {
            Self::Cancelled(_) => ECONNRESET,
            Self::AlreadyDone => 0,
        }
    }
}

/// URBs in flight on one connection, by sequence number.
#[derive(Debug)]
pub struct UrbTracker<H> {
    in_flight: HashMap<u32, InFlight<H>>,
}

impl<H> Default for UrbTracker<H> {
    fn default() -> Self {
        Self {
            in_flight: HashMap::new(),
        }
    }
}

impl<H> UrbTracker<H> {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of URBs in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A CMD_SUBMIT arrived.
    pub fn submitted(&mut self, seqnum: u32, urb: InFlight<H>) -> Result<(), TrackError> {
        if self.in_flight.contains_key(&seqnum) {
            return Err(TrackError::DuplicateSeqnum(seqnum));
        }
        self.in_flight.insert(seqnum, urb);
        Ok(())
    }

    /// A URB finished on the device. Returns what is needed to send its RET_SUBMIT, or `None`
    /// if it was unlinked meanwhile (then nothing is sent: the client has forgotten it).
    pub fn completed(&mut self, seqnum: u32) -> Option<InFlight<H>> {
        self.in_flight.remove(&seqnum)
    }

    /// A CMD_UNLINK arrived for `unlink_seqnum`.
    pub fn unlink(&mut self, unlink_seqnum: u32) -> Unlinked<H> {
        match self.in_flight.remove(&unlink_seqnum) {
            Some(urb) => Unlinked::Cancelled(urb),
            None => Unlinked::AlreadyDone,
        }
    }

    /// The connection ends: every URB still in flight, for cancelling.
    pub fn drain(&mut self) -> impl Iterator<Item = InFlight<H>> + '_ {
        self.in_flight.drain().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urb(tag: u8) -> InFlight<u8> {
        InFlight {
            direction: Direction::In,
            requested: 8,
            cancel: tag,
        }
    }

    #[test]
    fn unlink_before_completion_cancels_and_swallows_the_completion() {
        let mut t = UrbTracker::new();
        t.submitted(5, urb(1)).unwrap();
        let u = t.unlink(5);
        assert_eq!(u.status(), ECONNRESET);
        assert!(matches!(u, Unlinked::Cancelled(InFlight { cancel: 1, .. })));
        assert!(
            t.completed(5).is_none(),
            "no RET_SUBMIT after a cancelling unlink"
        );
    }

    #[test]
    fn unlink_after_completion_answers_zero() {
        let mut t = UrbTracker::new();
        t.submitted(7, urb(2)).unwrap();
        assert!(t.completed(7).is_some());
        assert_eq!(t.unlink(7).status(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn duplicate_seqnum_is_refused() {
        let mut t = UrbTracker::new();
        t.submitted(1, urb(1)).unwrap();
        assert_eq!(t.submitted(1, urb(2)), Err(TrackError::DuplicateSeqnum(1)));
        assert_eq!(t.drain().count(), 1);
        assert!(t.is_empty());
    }
}
