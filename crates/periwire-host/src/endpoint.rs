//! One opened bulk or interrupt endpoint of a host device, and the URBs queued on it.
//!
//! The server keeps up to [`QUEUE_DEPTH`] URBs of an endpoint in flight at once (see
//! `UsbDevice::queue_depth`); each becomes one nusb transfer (two for an OUT that ends with
//! a zero-length packet), and nusb completes them in submission order, as a host controller
//! does. Each URB's future takes the completions that have arrived off the endpoint, for
//! whichever URB they belong to, and wakes that URB's future.
//!
//! Cancelling one URB (dropping its future) is the hard part: nusb can only cancel every
//! transfer of an endpoint. So a cancel cancels them all, and while their completions come
//! back ("draining"), the other URBs' transfers that were cancelled before they moved a byte
//! are submitted again, in their order; one that had moved data finishes with what it moved
//! (an IN as a short read; an OUT carries on with what it had not sent). URBs submitted
//! while draining wait until it ends, so the order on the bus stays the order of submission.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use nusb::transfer::{Buffer, Bulk, Completion as NusbCompletion, In, Interrupt, Out};
use nusb::Endpoint;
use periwire_usb::device::Direction;
use periwire_usb::{Completion, TransferError, Urb};

/// URBs of one bulk or interrupt endpoint kept in flight at once: enough that a network or
/// serial adapter always has an IN transfer waiting, and a bound on what one endpoint holds.
pub(crate) const QUEUE_DEPTH: usize = 16;

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

    fn poll_next_complete(&mut self, cx: &mut Context<'_>) -> Poll<NusbCompletion> {
        on_endpoint!(self, ep => ep.poll_next_complete(cx))
    }

    fn cancel_all(&mut self) {
        on_endpoint!(self, ep => ep.cancel_all())
    }

    fn clear_halt(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), nusb::Error>> + Send>> {
        on_endpoint!(self, ep => Box::pin(std::future::IntoFuture::into_future(ep.clear_halt())))
    }
}

/// A URB's ticket in its endpoint's queue.
type Ticket = u64;

/// One nusb transfer: whose it is and whether it is the zero-length end of an OUT.
#[derive(Clone, Copy)]
struct Part {
    ticket: Ticket,
    zlp: bool,
}

/// A URB on the endpoint, from submission until its future takes the result.
struct UrbState {
    direction: Direction,
    /// Bytes asked for (IN).
    asked: usize,
    /// Transfers submitted or held for it and not yet back.
    parts: usize,
    /// Bytes moved so far.
    data: Vec<u8>,
    moved: usize,
    status: Result<(), TransferError>,
    /// Set once every part is back.
    done: bool,
    waker: Option<Waker>,
}

/// An opened endpoint and the URBs on it: see the [module documentation](self).
pub(crate) struct EndpointQueue {
    endpoint: AnyEndpoint,
    max_packet: usize,
    /// Transfers handed to nusb, oldest first.
    submitted: VecDeque<Part>,
    urbs: HashMap<Ticket, UrbState>,
    next_ticket: Ticket,
    /// Transfers still to come back from a `cancel_all`.
    draining: usize,
    /// Transfers a cancel took from other URBs, to submit again once draining ends.
    resubmit: VecDeque<(Part, Buffer)>,
    /// Transfers of URBs submitted while draining, to submit after `resubmit`.
    waiting: VecDeque<(Part, Buffer)>,
}

/// The shared handle of an endpoint's queue.
pub(crate) type SharedQueue = Arc<Mutex<EndpointQueue>>;

fn lock(queue: &Mutex<EndpointQueue>) -> MutexGuard<'_, EndpointQueue> {
    // Every change under the lock keeps the queue consistent between statements that can
    // panic only on allocation, so a poisoned lock is sound to use.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl EndpointQueue {
    pub(crate) fn new(endpoint: AnyEndpoint) -> SharedQueue {
        let max_packet = endpoint.max_packet_size().max(1);
        Arc::new(Mutex::new(Self {
            endpoint,
            max_packet,
            submitted: VecDeque::new(),
            urbs: HashMap::new(),
            next_ticket: 0,
            draining: 0,
            resubmit: VecDeque::new(),
            waiting: VecDeque::new(),
        }))
    }

    /// Hands a transfer to nusb, or holds it while a cancel drains.
    fn push(&mut self, part: Part, buffer: Buffer) {
        if self.draining > 0 {
            self.waiting.push_back((part, buffer));
        } else {
            self.endpoint.submit(buffer);
            self.submitted.push_back(part);
        }
    }

    /// Queues `urb`; its transfers go to the device at once (unless a cancel drains).
    fn enqueue(&mut self, urb: Urb) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let mut state = UrbState {
            direction: urb.direction,
            asked: usize::try_from(urb.length).unwrap_or(usize::MAX),
            parts: 0,
            data: Vec::new(),
            moved: 0,
            status: Ok(()),
            done: false,
            waker: None,
        };
        let mut parts = Vec::with_capacity(2);
        match urb.direction {
            Direction::In if state.asked == 0 => {}
            Direction::In => {
                // nusb (like a host controller) reads whole packets, so ask for the packets
                // that cover the URB; more than asked for is babble, as on a real bus.
                let whole = state.asked.div_ceil(self.max_packet);
                parts.push((false, Buffer::new(whole.saturating_mul(self.max_packet))));
            }
            Direction::Out => {
                let len = urb.data.len();
                let zero_packet = urb.transfer_flags & URB_ZERO_PACKET != 0
                    && len > 0
                    && len.is_multiple_of(self.max_packet);
                parts.push((false, Buffer::from(urb.data)));
                if zero_packet {
                    parts.push((true, Buffer::new(0)));
                }
            }
        }
        state.parts = parts.len();
        state.done = parts.is_empty();
        self.urbs.insert(ticket, state);
        for (zlp, buffer) in parts {
            self.push(Part { ticket, zlp }, buffer);
        }
        ticket
    }

    /// Takes every completion that has arrived off the endpoint and gives it to its URB.
    /// Registers `cx` to hear of the next one while any transfer is out.
    fn progress(&mut self, cx: &mut Context<'_>) {
        while !self.submitted.is_empty() {
            let Poll::Ready(c) = self.endpoint.poll_next_complete(cx) else {
                return;
            };
            let Some(part) = self.submitted.pop_front() else {
                return;
            };
            self.complete(part, c);
            if self.draining > 0 {
                self.draining -= 1;
                if self.draining == 0 {
                    self.end_drain();
                }
            }
        }
    }

    /// Submits what a cancel held back: the others' transfers again, then newer ones.
    fn end_drain(&mut self) {
        let held: Vec<_> = self
            .resubmit
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        for (part, buffer) in held {
            self.push(part, buffer);
        }
    }

    fn complete(&mut self, part: Part, c: NusbCompletion) {
        let Some(state) = self.urbs.get_mut(&part.ticket) else {
            // A cancelled URB's transfer: nothing waits for it.
            return;
        };
        let cancelled_here = c.status == Err(nusb::transfer::TransferError::Cancelled);
        if cancelled_here && self.draining > 0 {
            // Another URB's cancel took this one along.
            if c.actual_len == 0 {
                self.resubmit.push_back((part, c.buffer));
                return;
            }
            if state.direction == Direction::Out && !part.zlp {
                // Carry on with what had not been sent.
                state.moved += c.actual_len;
                let mut sent = c.buffer.into_vec();
                let rest = sent.split_off(c.actual_len.min(sent.len()));
                self.resubmit.push_back((part, Buffer::from(rest)));
                return;
            }
        }
        state.parts -= 1;
        match state.direction {
            Direction::In => {
                let mut data = c.buffer.into_vec();
                data.truncate(c.actual_len);
                if cancelled_here && self.draining > 0 {
                    // Moved data before the cancel: a short read, not a failure.
                } else if let Err(e) = c.status {
                    state.status = Err(transfer_error(e));
                }
                if data.len() > state.asked {
                    data.truncate(state.asked);
                    state.status = Err(TransferError::Overflow);
                }
                state.moved = data.len();
                state.data = data;
            }
            Direction::Out => {
                if !part.zlp {
                    state.moved += c.actual_len;
                }
                if let Err(e) = c.status {
                    if state.status.is_ok() {
                        state.status = Err(transfer_error(e));
                    }
                }
            }
        }
        if state.parts == 0 {
            state.done = true;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }

    /// Takes URB `ticket`'s completion if it is done; otherwise keeps `cx` to wake.
    fn poll_urb(&mut self, ticket: Ticket, cx: &mut Context<'_>) -> Poll<Completion> {
        self.progress(cx);
        let Some(state) = self.urbs.get_mut(&ticket) else {
            return Poll::Ready(TransferError::Cancelled.into());
        };
        if !state.done {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(state) = self.urbs.remove(&ticket) else {
            return Poll::Ready(TransferError::Cancelled.into());
        };
        let completion = match state.direction {
            Direction::In => Completion::data_in(state.data),
            Direction::Out => Completion::data_out(state.moved),
        };
        Poll::Ready(completion.with_status(state.status))
    }

    /// URB `ticket`'s future was dropped before it finished.
    fn cancel(&mut self, ticket: Ticket) {
        let Some(state) = self.urbs.remove(&ticket) else {
            return;
        };
        if state.done {
            return;
        }
        // Transfers not yet handed to nusb just go; ones in nusb need the cancel of all.
        self.waiting.retain(|(p, _)| p.ticket != ticket);
        self.resubmit.retain(|(p, _)| p.ticket != ticket);
        if self.submitted.iter().any(|p| p.ticket == ticket) {
            self.endpoint.cancel_all();
            self.draining = self.submitted.len();
        }
        // Whoever was registered to hear of completions may have been this URB: let the
        // others poll again so one of them listens.
        for other in self.urbs.values_mut() {
            if let Some(waker) = other.waker.take() {
                waker.wake();
            }
        }
    }

    /// Ends every held transfer's URB as cancelled.
    fn drop_held(&mut self) {
        let held: Vec<Part> = self
            .waiting
            .drain(..)
            .chain(self.resubmit.drain(..))
            .map(|(p, _)| p)
            .collect();
        for part in held {
            if let Some(state) = self.urbs.get_mut(&part.ticket) {
                state.status = Err(TransferError::Cancelled);
                state.parts -= 1;
                if state.parts == 0 {
                    state.done = true;
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                }
            }
        }
    }

    /// Whether no transfer is out or held.
    fn is_idle(&self) -> bool {
        self.submitted.is_empty() && self.waiting.is_empty() && self.resubmit.is_empty()
    }
}

/// Carries out a bulk or interrupt URB on the endpoint `queue`. A URB that fails partway
/// still reports what it moved; `URB_SHORT_NOT_OK` is applied by the server for every
/// device. Dropping the future cancels the URB (see the [module documentation](self)).
pub(crate) async fn transfer(queue: SharedQueue, urb: Urb) -> Completion {
    let ticket = lock(&queue).enqueue(urb);
    let mut guard = CancelOnDrop {
        queue: &queue,
        ticket,
        finished: false,
    };
    let completion = std::future::poll_fn(|cx| lock(&queue).poll_urb(ticket, cx)).await;
    guard.finished = true;
    completion
}

/// Cancels its URB unless it finished.
struct CancelOnDrop<'a> {
    queue: &'a SharedQueue,
    ticket: Ticket,
    finished: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.finished {
            lock(self.queue).cancel(self.ticket);
        }
    }
}

/// Cancels every URB on the endpoint: each ends with what it moved, as cancelled (or with
/// the status the device gave it, if it finished first).
pub(crate) fn cancel_everything(queue: &SharedQueue) {
    let mut q = lock(queue);
    if !q.submitted.is_empty() {
        q.endpoint.cancel_all();
    }
    // What comes back now ends its URB rather than being submitted again.
    q.draining = 0;
    q.drop_held();
}

/// Resets the endpoint's halt, on the device and in the host's data toggle. URBs in flight
/// on it are cancelled first (they come back with what they moved and the status the
/// device gave them), as nusb wants no transfer pending for this.
pub(crate) async fn clear_halt(queue: &SharedQueue) -> Result<(), nusb::Error> {
    cancel_everything(queue);
    std::future::poll_fn(|cx| {
        let mut q = lock(queue);
        q.progress(cx);
        if q.is_idle() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let halt = lock(queue).endpoint.clear_halt();
    halt.await
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
