//! The one place where the USB model ([`periwire_usb`]) meets usbredir's encodings
//! ([`periwire_wire::usbredir`]): speeds, status codes, and the URB a usb-host transfer asks
//! for. [`crate::usbip_map`] does the same for USB/IP.

use periwire_usb::{Completion, Direction, SetupPacket, Speed, TransferError, Urb};
use periwire_wire::usbredir::host::{Transfer, TransferKind, TransferResult};
use periwire_wire::usbredir::{self, Status};

/// The device_connect speed of a model speed. usbredir has no number for SuperSpeed+ or
/// wireless: they are sent as the nearest it has.
pub fn speed_to_wire(speed: Speed) -> usbredir::Speed {
    match speed {
        Speed::Low => usbredir::Speed::Low,
        Speed::Full => usbredir::Speed::Full,
        Speed::High | Speed::Wireless => usbredir::Speed::High,
        Speed::Super | Speed::SuperPlus => usbredir::Speed::Super,
        Speed::Unknown => usbredir::Speed::Unknown,
    }
}

/// The usbredir status of a transfer error.
pub fn status(error: TransferError) -> Status {
    match error {
        TransferError::Stall => Status::Stall,
        TransferError::Cancelled => Status::Cancelled,
        TransferError::Overflow => Status::Babble,
        TransferError::Timeout => Status::Timeout,
        TransferError::Disconnected
        | TransferError::Protocol
        | TransferError::ShortPacket
        | TransferError::Fault => Status::IoError,
    }
}

/// The URB that carries out `transfer`.
pub fn urb_from_transfer(transfer: Transfer) -> Urb {
    let setup = match transfer.kind {
        TransferKind::Control { setup } => SetupPacket::from_bytes(setup),
        TransferKind::Bulk | TransferKind::Interrupt => SetupPacket::default(),
    };
    Urb {
        endpoint: transfer.endpoint & 0x0f,
        direction: if transfer.endpoint & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        },
        setup,
        transfer_flags: 0,
        length: transfer.length,
        data: transfer.data,
        iso_packets: Vec::new(),
        start_frame: 0,
        interval: 0,
    }
}

/// What the usb-host is told of a finished URB: its status and, failed or not, what it
/// moved.
pub fn transfer_result(done: Completion) -> TransferResult {
    TransferResult {
        status: done.status.err().map_or(Status::Success, status),
        data: done.data,
        actual_length: done.actual_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_in_transfer_is_a_urb_on_endpoint_zero() {
        let urb = urb_from_transfer(Transfer {
            endpoint: 0x80,
            kind: TransferKind::Control {
                setup: [0x80, 6, 0, 1, 0, 0, 18, 0],
            },
            length: 18,
            data: Vec::new(),
        });
        assert_eq!((urb.endpoint, urb.direction), (0, Direction::In));
        assert_eq!(
            (urb.setup.request, urb.setup.value, urb.setup.length),
            (6, 0x100, 18)
        );
        let urb = urb_from_transfer(Transfer {
            endpoint: 0x02,
            kind: TransferKind::Bulk,
            length: 3,
            data: vec![1, 2, 3],
        });
        assert_eq!((urb.endpoint_address(), urb.data.len()), (0x02, 3));
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            transfer_result(TransferError::Stall.into()).status,
            Status::Stall
        );
        assert_eq!(
            transfer_result(TransferError::Disconnected.into()).status,
            Status::IoError
        );
        assert_eq!(speed_to_wire(Speed::SuperPlus), usbredir::Speed::Super);
    }
}
