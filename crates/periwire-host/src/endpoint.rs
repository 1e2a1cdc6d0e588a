//! One opened bulk or interrupt endpoint of a host device, and the transfers of URBs on it.
//!
//! The server hands a device one URB per endpoint at a time, so an endpoint has at most one
//! URB's transfers in flight. A URB is cancelled by dropping its future; the transfers are
//! then cancelled in the kernel, but their completions still come back, and they must be
//! taken off the endpoint before the next URB's own completion can be read.

use nusb::transfer::{Buffer, Bulk, Completion as NusbCompletion, In, Interrupt, Out};
use nusb::Endpoint;
use periwire_usb::device::Direction;
use periwire_usb::{Completion, TransferError, Urb};
use tokio::sync::OwnedMutexGuard;

/// Linux `URB_ZERO_PACKET`: end an OUT transfer that fills its last packet with a
/// zero-length packet.
const URB_ZERO_PACKET: u32 = 0x0040;

/// An endpoint of one of the four kinds nusb carries.
pub(crate) enum AnyEndpoint {
    /// Bulk IN.
    BulkIn(Endpoint<Bulk, In>),
    /// Bulk OUT.
    BulkOut(Endpoint<Bulk, Out>),
    /// Interrupt IN.
    InterruptIn(Endpoint<Interrupt, In>),
    /// Interrupt OUT.
    InterruptOut(Endpoint<Interrupt, Out>),
}

/// Calls the same method on whichever endpoint kind this is.
macro_rules! on_endpoint {
    ($self:expr, $ep:ident => $call:expr) => {
        match $self {
            AnyEndpoint::BulkIn($ep) => $call,
            AnyEndpoint::BulkOut($ep) => $call,
            AnyEndpoint::InterruptIn($ep) => $call,
            AnyEndpoint::InterruptOut($ep) => $call,
        }
    };
}

impl AnyEndpoint {
    fn max_packet_size(&self) -> usize {
        on_endpoint!(self, ep => ep.max_packet_size())
    }

    fn submit(&mut self, buffer: Buffer) {
        on_endpoint!(self, ep => ep.submit(buffer))
    }

    async fn next_complete(&mut self) -> NusbCompletion {
        on_endpoint!(self, ep => ep.next_complete().await)
    }

    fn cancel_all(&mut self) {
        on_endpoint!(self, ep => ep.cancel_all())
    }

    async fn clear_halt(&mut self) -> Result<(), nusb::Error> {
        on_endpoint!(self, ep => ep.clear_halt().await)
    }
}

/// An opened endpoint and the count of cancelled transfers still to come back from it.
pub(crate) struct EndpointSlot {
    endpoint: AnyEndpoint,
    abandoned: usize,
}

impl EndpointSlot {
    pub(crate) fn new(endpoint: AnyEndpoint) -> Self {
        Self {
            endpoint,
            abandoned: 0,
        }
    }

    /// Takes the completions of cancelled transfers off the endpoint. Cancel-safe: a
    /// completion is counted off only once it has been taken.
    async fn settle(&mut self) {
        while self.abandoned > 0 {
            self.endpoint.next_complete().await;
            self.abandoned -= 1;
        }
    }

    /// Resets the endpoint's halt, on the device and in the host's data toggle.
    pub(crate) async fn clear_halt(&mut self) -> Result<(), nusb::Error> {
        self.settle().await;
        self.endpoint.clear_halt().await
    }
}

/// Transfers submitted for one URB. If the URB's future is dropped before they complete,
/// they are cancelled and left for [`EndpointSlot::settle`] to collect.
struct InFlight {
    slot: OwnedMutexGuard<EndpointSlot>,
    pending: usize,
}

impl InFlight {
    fn submit(&mut self, buffer: Buffer) {
        self.slot.endpoint.submit(buffer);
        self.pending += 1;
    }

    async fn next(&mut self) -> NusbCompletion {
        let c = self.slot.endpoint.next_complete().await;
        self.pending -= 1;
        c
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.slot.endpoint.cancel_all();
            self.slot.abandoned += self.pending;
        }
    }
}

/// Carries out a bulk or interrupt URB on its endpoint.
/// A transfer that fails partway still reports what it moved; `URB_SHORT_NOT_OK` is applied
/// by the server for every device.
pub(crate) async fn transfer(mut slot: OwnedMutexGuard<EndpointSlot>, urb: Urb) -> Completion {
    slot.settle().await;
    let max_packet = slot.endpoint.max_packet_size().max(1);
    let mut flight = InFlight { slot, pending: 0 };
    match urb.direction {
        Direction::In => {
            let asked = usize::try_from(urb.length).unwrap_or(usize::MAX);
            if asked == 0 {
                return Completion::default();
            }
            // nusb (like a host controller) reads whole packets, so ask for the packets that
            // cover the URB; more than asked for is babble, as it would be on a real bus.
            let whole_packets = asked.div_ceil(max_packet).saturating_mul(max_packet);
            flight.submit(Buffer::new(whole_packets));
            let c = flight.next().await;
            let status = c.status.map_err(transfer_error);
            let mut data = c.buffer.into_vec();
            if data.len() > asked {
                data.truncate(asked);
                return Completion::data_in(data).with_status(Err(TransferError::Overflow));
            }
            Completion::data_in(data).with_status(status)
        }
        Direction::Out => {
            let len = urb.data.len();
            let zero_packet = urb.transfer_flags & URB_ZERO_PACKET != 0
                && len > 0
                && len.is_multiple_of(max_packet);
            flight.submit(Buffer::from(urb.data));
            if zero_packet {
                flight.submit(Buffer::new(0));
            }
            let c = flight.next().await;
            let zlp = if zero_packet {
                Some(flight.next().await)
            } else {
                None
            };
            let status = c
                .status
                .and(zlp.map_or(Ok(()), |zlp| zlp.status))
                .map_err(transfer_error);
            Completion::data_out(c.actual_len).with_status(status)
        }
    }
}

/// The periwire error of a failed nusb transfer.
pub(crate) fn transfer_error(e: nusb::transfer::TransferError) -> TransferError {
    use nusb::transfer::TransferError as E;
    match e {
        E::Cancelled => TransferError::Cancelled,
        E::Stall => TransferError::Stall,
        E::Disconnected => TransferError::Disconnected,
        E::Fault => TransferError::Protocol,
        _ => TransferError::Fault,
    }
}
