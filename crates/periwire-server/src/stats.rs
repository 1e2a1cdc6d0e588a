//! Counters of what a device moved: per import (the client's view) and per device since the
//! server started (the metrics' view). Updated by [`DeviceSession`](crate::DeviceSession)
//! whatever protocol drives it; read without locks.

use std::sync::atomic::{AtomicU64, Ordering};

use periwire_usb::device::Direction;
use periwire_usb::Completion;

/// Counters of URBs and payload bytes, each way.
#[derive(Debug, Default)]
pub struct TransferStats {
    urbs: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of [`TransferStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// URBs completed (with any status).
    pub urbs: u64,
    /// URBs that completed with an error status (stall, disconnect, ...; not cancels).
    pub errors: u64,
    /// Payload bytes from the device to the client (IN).
    pub bytes_in: u64,
    /// Payload bytes from the client to the device (OUT), counted as the device takes them.
    pub bytes_out: u64,
}

impl TransferStats {
    /// Counts a finished URB: the bytes it moved (a failed one may have moved some) and
    /// whether it failed.
    pub fn record(&self, direction: Direction, done: &Completion) {
        self.urbs.fetch_add(1, Ordering::Relaxed);
        let counter = match direction {
            Direction::In => &self.bytes_in,
            Direction::Out => &self.bytes_out,
        };
        counter.fetch_add(u64::from(done.actual_length), Ordering::Relaxed);
        match done.status {
            Ok(()) | Err(periwire_usb::TransferError::Cancelled) => {}
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters now.
    pub fn counts(&self) -> TransferCounts {
        TransferCounts {
            urbs: self.urbs.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periwire_usb::{Completion, TransferError};

    #[test]
    fn bytes_go_the_way_of_the_urb_and_errors_exclude_cancels() {
        let stats = TransferStats::default();
        stats.record(Direction::In, &Completion::data_in(vec![0; 10]));
        stats.record(Direction::Out, &Completion::data_out(7));
        stats.record(Direction::In, &Completion::failed(TransferError::Stall));
        stats.record(
            Direction::Out,
            &Completion::failed(TransferError::Cancelled),
        );
        assert_eq!(
            stats.counts(),
            TransferCounts {
                urbs: 4,
                errors: 1,
                bytes_in: 10,
                bytes_out: 7
            }
        );
    }
}

/// The two counters a finished URB goes to: its import's and its device's.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    /// This import's.
    pub import: std::sync::Arc<TransferStats>,
    /// The device's since the server started.
    pub device: std::sync::Arc<TransferStats>,
}

impl Meters {
    /// Counts a finished URB in both.
    pub fn record(&self, direction: Direction, done: &Completion) {
        self.import.record(direction, done);
        self.device.record(direction, done);
    }
}
