//! The one place where the USB model ([`periwire_usb`]) meets USB/IP's encodings
//! ([`periwire_wire::usbip`]): speeds as Linux numbers them, directions, ISO descriptors,
//! negative errnos for transfer errors, and the URB a CMD_SUBMIT asks for.
//!
//! Neither crate knows the other: the model stays free of any protocol, so a second protocol
//! (usbredir) maps the same types to its own codes beside this module.

use periwire_usb::{
    Completion, Direction, InterfaceClass, IsoPacket, SetupPacket, Speed, TransferError, Urb,
};
use periwire_wire::usbip;

/// −ECONNRESET.
const ECONNRESET: i32 = -104;
/// −ESHUTDOWN.
const ESHUTDOWN: i32 = -108;
/// −EREMOTEIO: what Linux reports for a short IN that `URB_SHORT_NOT_OK` forbade.
const EREMOTEIO: i32 = -121;

/// The Linux `enum usb_device_speed` value of `speed`.
pub fn speed_to_wire(speed: Speed) -> usbip::Speed {
    match speed {
        Speed::Unknown => usbip::Speed::Unknown,
        Speed::Low => usbip::Speed::Low,
        Speed::Full => usbip::Speed::Full,
        Speed::High => usbip::Speed::High,
        Speed::Wireless => usbip::Speed::Wireless,
        Speed::Super => usbip::Speed::Super,
        Speed::SuperPlus => usbip::Speed::SuperPlus,
    }
}

/// The model speed of a speed a peer sent; numbers Linux does not define are unknown.
pub fn speed_from_wire(speed: usbip::Speed) -> Speed {
    match speed {
        usbip::Speed::Low => Speed::Low,
        usbip::Speed::Full => Speed::Full,
        usbip::Speed::High => Speed::High,
        usbip::Speed::Wireless => Speed::Wireless,
        usbip::Speed::Super => Speed::Super,
        usbip::Speed::SuperPlus => Speed::SuperPlus,
        usbip::Speed::Unknown | usbip::Speed::Other(_) => Speed::Unknown,
    }
}

/// USB/IP's direction of a model direction.
pub fn direction_to_wire(direction: Direction) -> usbip::Direction {
    match direction {
        Direction::Out => usbip::Direction::Out,
        Direction::In => usbip::Direction::In,
    }
}

/// The model direction of a USB/IP direction.
pub fn direction_from_wire(direction: usbip::Direction) -> Direction {
    match direction {
        usbip::Direction::Out => Direction::Out,
        usbip::Direction::In => Direction::In,
    }
}

/// The device-list record of an interface.
pub fn interface_to_wire(interface: InterfaceClass) -> usbip::InterfaceRecord {
    usbip::InterfaceRecord {
        class: interface.class,
        subclass: interface.subclass,
        protocol: interface.protocol,
    }
}

/// The model interface of a device-list record a server sent.
pub fn interface_from_wire(interface: usbip::InterfaceRecord) -> InterfaceClass {
    InterfaceClass {
        class: interface.class,
        subclass: interface.subclass,
        protocol: interface.protocol,
    }
}

/// The negative Linux errno USB/IP sends for `error`.
pub fn errno(error: TransferError) -> i32 {
    match error {
        TransferError::Stall => -32, // EPIPE
        TransferError::Cancelled => ECONNRESET,
        TransferError::Disconnected => ESHUTDOWN,
        TransferError::Overflow => -75, // EOVERFLOW
        TransferError::Protocol => -71, // EPROTO
        TransferError::Timeout => -62,  // ETIME
        TransferError::ShortPacket => EREMOTEIO,
        TransferError::Fault => -5, // EIO
    }
}

/// The outcome a USB/IP status stands for: [`errno`] reversed, with any errno it does not
/// produce read as a fault.
pub fn status_from_errno(status: i32) -> Result<(), TransferError> {
    match status {
        0 => Ok(()),
        -32 => Err(TransferError::Stall),
        ECONNRESET | -2 => Err(TransferError::Cancelled),
        ESHUTDOWN | -19 => Err(TransferError::Disconnected),
        -75 => Err(TransferError::Overflow),
        -71 | -84 => Err(TransferError::Protocol),
        -62 | -110 => Err(TransferError::Timeout),
        EREMOTEIO => Err(TransferError::ShortPacket),
        _ => Err(TransferError::Fault),
    }
}

/// The USB/IP descriptor of an ISO packet.
pub fn iso_to_wire(packet: &IsoPacket) -> usbip::IsoPacket {
    usbip::IsoPacket {
        offset: packet.offset,
        length: packet.length,
        actual_length: packet.actual_length,
        status: packet.status.err().map_or(0, errno),
    }
}

/// The model ISO packet of a USB/IP descriptor.
pub fn iso_from_wire(packet: &usbip::IsoPacket) -> IsoPacket {
    IsoPacket {
        offset: packet.offset,
        length: packet.length,
        actual_length: packet.actual_length,
        status: status_from_errno(packet.status),
    }
}

/// The URB a CMD_SUBMIT asks for, owning its OUT payload.
pub fn urb_from_submit(h: &usbip::SubmitHeader, data: Vec<u8>, iso: &[usbip::IsoPacket]) -> Urb {
    Urb {
        endpoint: h.ep,
        direction: direction_from_wire(h.direction),
        setup: SetupPacket::from_bytes(h.setup),
        transfer_flags: h.transfer_flags,
        length: h.transfer_buffer_length,
        data,
        iso_packets: iso.iter().map(iso_from_wire).collect(),
        start_frame: h.start_frame,
        interval: h.interval,
    }
}

/// What the USB/IP connection needs of a finished URB to build its RET_SUBMIT: the status
/// and, failed or not, what the URB moved.
pub fn urb_done(done: Completion) -> usbip::UrbDone {
    let Completion {
        status,
        data,
        actual_length,
        iso_packets,
        start_frame,
        error_count,
    } = done;
    usbip::UrbDone {
        status: status.err().map_or(0, errno),
        data,
        actual_length,
        start_frame,
        error_count,
        iso_packets: iso_packets.iter().map(iso_to_wire).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transfer_error_survives_its_errno() {
        for e in [
            TransferError::Stall,
            TransferError::Cancelled,
            TransferError::Disconnected,
            TransferError::Overflow,
            TransferError::Protocol,
            TransferError::Timeout,
            TransferError::ShortPacket,
            TransferError::Fault,
        ] {
            assert_eq!(status_from_errno(errno(e)), Err(e));
        }
        assert_eq!(status_from_errno(0), Ok(()));
    }

    #[test]
    fn a_failed_urb_still_reports_what_it_moved() {
        let short =
            urb_done(Completion::data_in(vec![9; 5]).with_status(Err(TransferError::ShortPacket)));
        assert_eq!(
            (short.status, short.actual_length, short.data),
            (EREMOTEIO, 5, vec![9; 5])
        );
        let partial = urb_done(Completion::data_out(1024).with_status(Err(TransferError::Stall)));
        assert_eq!((partial.status, partial.actual_length), (-32, 1024));
    }

    #[test]
    fn every_speed_survives_its_wire_value() {
        for s in [
            Speed::Unknown,
            Speed::Low,
            Speed::Full,
            Speed::High,
            Speed::Wireless,
            Speed::Super,
            Speed::SuperPlus,
        ] {
            let wire = speed_to_wire(s);
            assert_eq!(speed_from_wire(usbip::Speed::from_u32(wire.to_u32())), s);
        }
        assert_eq!(speed_from_wire(usbip::Speed::Other(9)), Speed::Unknown);
    }
}
