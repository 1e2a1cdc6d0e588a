//! One claimed device and the URBs a client has asked of it, whatever protocol that client
//! speaks: per-endpoint queues, submit, complete, cancel and release.
//!
//! A protocol driver (the USB/IP server today, usbredir next) owns one [`DeviceSession`]. It
//! submits URBs under ids of its own protocol (USB/IP sequence numbers, usbredir packet ids),
//! awaits their completions with [`DeviceSession::next_completion`], cancels them by id, and
//! ends with [`DeviceSession::close`], which waits until the device has dropped every URB
//! and then releases the device for the next client.
//!
//! Each active endpoint gets a task that hands the device its URBs in submission order, as
//! many at once as the device takes ([`UsbDevice::queue_depth`]: one, unless it queues them
//! in an OS as a host device does), and completes them in that order, so a slow endpoint (an interrupt IN that
//! waits for a key press) never holds up another. Completions of all endpoints meet in one
//! channel, in the order they finish.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use periwire_usb::{Completion, Urb, UsbDevice};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::registry::{Claim, Export};
use crate::stats::Meters;

/// A finished URB.
#[derive(Debug)]
pub struct Completed<K, H> {
    /// The id it was submitted under.
    pub id: K,
    /// What the device made of it.
    pub completion: Completion,
    /// What the driver handed in with it (an in-flight permit, say), kept alive until now.
    pub hold: H,
}

/// Work for an endpoint task.
struct Work<K, H> {
    id: K,
    urb: Urb,
    hold: H,
    /// Fires, or is dropped, when the URB is cancelled or the session closes.
    cancel: oneshot::Receiver<()>,
}

/// One device held by one client: see the [module documentation](self).
///
/// `K` is the protocol's URB id; ids must be unique among the URBs in flight. `H` is whatever
/// the driver wants kept alive exactly as long as the URB: it comes back with the completion,
/// or is dropped when a cancelled URB leaves the device.
pub struct DeviceSession<K, H> {
    claim: Claim,
    device: Arc<dyn UsbDevice>,
    /// URBs handed to an endpoint task and not yet completed or cancelled.
    cancels: HashMap<K, oneshot::Sender<()>>,
    endpoints: HashMap<u8, mpsc::UnboundedSender<Work<K, H>>>,
    tasks: JoinSet<()>,
    done_tx: mpsc::UnboundedSender<Completed<K, H>>,
    done_rx: mpsc::UnboundedReceiver<Completed<K, H>>,
}

/// Endpoint 0 carries control transfers in both directions, in one order; other endpoints
/// are queued per direction.
fn queue_key(urb: &Urb) -> u8 {
    if urb.endpoint == 0 {
        0
    } else {
        urb.endpoint_address()
    }
}

impl<K, H> DeviceSession<K, H>
where
    K: Copy + Eq + Hash + Send + 'static,
    H: Send + 'static,
{
    /// A session on the device `claim` holds; the claim is released by [`close`](Self::close).
    pub fn new(claim: Claim) -> Self {
        let device = Arc::clone(&claim.export().device);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            claim,
            device,
            cancels: HashMap::new(),
            endpoints: HashMap::new(),
            tasks: JoinSet::new(),
            done_tx,
            done_rx,
        }
    }

    /// The export this session holds.
    pub fn export(&self) -> &Export {
        self.claim.export()
    }

    /// Resolves when the device is withdrawn from the client (unbound): see
    /// [`Claim::withdrawn`].
    pub fn withdrawn(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.claim.withdrawn()
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn UsbDevice> {
        &self.device
    }

    /// Number of URBs submitted and neither completed (as seen by
    /// [`next_completion`](Self::next_completion)) nor cancelled.
    pub fn in_flight(&self) -> usize {
        self.cancels.len()
    }

    /// Queues `urb` on its endpoint. Its completion comes back under `id`, with `hold`.
    pub fn submit(&mut self, id: K, urb: Urb, hold: H) {
        let (cancel_tx, cancel) = oneshot::channel();
        // A reused id replaces (and so cancels) the URB before it; drivers refuse reuse
        // before it gets here.
        self.cancels.insert(id, cancel_tx);
        let queue = self.endpoints.entry(queue_key(&urb)).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(run_endpoint(
                Arc::clone(&self.device),
                queue_key(&urb),
                rx,
                self.done_tx.clone(),
                self.claim.meters().clone(),
            ));
            tx
        });
        // The endpoint task lives as long as the session, so this cannot fail; if it did,
        // dropping the work cancels the URB as `cancel` would.
        let _ = queue.send(Work {
            id,
            urb,
            hold,
            cancel,
        });
    }

    /// Cancels URB `id`: a URB still queued is never handed to the device, one the device
    /// works on has its future dropped. Returns `false` if `id` is not in flight. A URB that
    /// finished just before may still come out of [`next_completion`](Self::next_completion);
    /// the driver's protocol rules say what becomes of it.
    pub fn cancel(&mut self, id: K) -> bool {
        match self.cancels.remove(&id) {
            Some(cancel) => {
                let _ = cancel.send(());
                true
            }
            None => false,
        }
    }

    /// The next URB to finish, on any endpoint. Cancel-safe (use it in `select!`); pending
    /// while nothing is in flight.
    pub async fn next_completion(&mut self) -> Completed<K, H> {
        // The session holds a sender itself, so the channel never closes.
        let Some(done) = self.done_rx.recv().await else {
            return std::future::pending().await;
        };
        self.cancels.remove(&done.id);
        done
    }

    /// A URB that has finished already, if any.
    pub fn try_completion(&mut self) -> Option<Completed<K, H>> {
        let done = self.done_rx.try_recv().ok()?;
        self.cancels.remove(&done.id);
        Some(done)
    }

    /// Cancels everything in flight, waits until the device has dropped every URB, and then
    /// releases the device, so that the release (and the next client) sees a quiet device.
    pub async fn close(mut self) {
        self.cancels.clear();
        self.endpoints.clear();
        self.tasks.shutdown().await;
        drop(self.claim);
    }
}

/// A URB the device is working on, in an endpoint task.
struct Running<'d, K, H> {
    id: K,
    hold: H,
    cancel: oneshot::Receiver<()>,
    direction: periwire_usb::Direction,
    flags: u32,
    length: u32,
    /// The device's future; `None` once it has finished.
    future: Option<periwire_usb::BoxFuture<'d, Completion>>,
    done: Option<Completion>,
}

impl<'d, K, H> Running<'d, K, H> {
    fn start(device: &'d dyn UsbDevice, work: Work<K, H>) -> Self {
        let Work {
            id,
            urb,
            hold,
            cancel,
        } = work;
        Self {
            id,
            hold,
            cancel,
            direction: urb.direction,
            flags: urb.transfer_flags,
            length: urb.length,
            future: Some(device.submit(urb)),
            done: None,
        }
    }
}

/// Hands the device an endpoint's URBs: up to its [`UsbDevice::queue_depth`] at once, in
/// submission order, completing them in that order. A cancelled URB's future is dropped
/// where it stands; one still queued never reaches the device.
async fn run_endpoint<K, H>(
    device: Arc<dyn UsbDevice>,
    address: u8,
    mut queue: mpsc::UnboundedReceiver<Work<K, H>>,
    done: mpsc::UnboundedSender<Completed<K, H>>,
    meters: Meters,
) {
    let device: &dyn UsbDevice = &*device;
    let depth = device.queue_depth(address).max(1);
    let mut running: VecDeque<Running<'_, K, H>> = VecDeque::with_capacity(depth);
    let mut closed = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            // Dropping a cancelled URB's future cancels it in the device. This comes before
            // the queue is read: the slot a cancel frees must be filled in the same poll, as
            // nothing else would wake the task for the URBs already waiting in the queue.
            running
                .retain_mut(|r| r.done.is_some() || Pin::new(&mut r.cancel).poll(cx).is_pending());
            while !closed && running.len() < depth {
                match queue.poll_recv(cx) {
                    Poll::Ready(Some(work)) => {
                        // Cancelled while queued: it never reaches the device.
                        let mut work = work;
                        if Pin::new(&mut work.cancel).poll(cx).is_ready() {
                            continue;
                        }
                        running.push_back(Running::start(device, work));
                    }
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            for r in running.iter_mut() {
                if let Some(future) = r.future.as_mut() {
                    if let Poll::Ready(c) = future.as_mut().poll(cx) {
                        r.future = None;
                        r.done = Some(c);
                    }
                }
            }
            if running.front().is_some_and(|r| r.done.is_some()) {
                return Poll::Ready(running.pop_front());
            }
            if closed && running.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(r) = next else {
            return;
        };
        let Some(completion) = r.done else {
            continue;
        };
        // The host controller's rule, applied here once for every device.
        let completion = completion.short_not_ok(r.direction, r.flags, r.length);
        meters.record(r.direction, &completion);
        let completed = Completed {
            id: r.id,
            completion,
            hold: r.hold,
        };
        if done.send(completed).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use periwire_usb::source_sink::{SourceSink, EP_INTERRUPT, EP_SOURCE};
    use periwire_usb::{Direction, SetupPacket};
    use periwire_wire::usbip::BusId;

    use super::*;
    use crate::registry::Registry;

    fn session() -> (
        DeviceSession<u32, Arc<()>>,
        Registry,
        periwire_usb::source_sink::SourceSinkHandle,
    ) {
        let registry = Registry::new();
        let (device, handle) = SourceSink::new();
        let busid = BusId::new("1-1").unwrap();
        registry
            .add(Export {
                busid: busid.clone(),
                busnum: 1,
                devnum: 2,
                name: "ss".into(),
                device: Arc::new(device),
            })
            .unwrap();
        let claim = registry.claim(&busid).unwrap();
        (DeviceSession::new(claim), registry, handle)
    }

    fn urb_in(address: u8, length: u32) -> Urb {
        Urb {
            endpoint: address & 0x0f,
            direction: Direction::In,
            setup: SetupPacket::from_bytes([0; 8]),
            transfer_flags: 0,
            length,
            data: Vec::new(),
            iso_packets: Vec::new(),
            start_frame: 0,
            interval: 0,
        }
    }

    async fn next(s: &mut DeviceSession<u32, Arc<()>>) -> Completed<u32, Arc<()>> {
        tokio::time::timeout(Duration::from_secs(5), s.next_completion())
            .await
            .expect("a completion")
    }

    #[tokio::test]
    async fn a_pending_endpoint_does_not_hold_up_another() {
        let (mut s, _registry, handle) = session();
        let hold = Arc::new(());
        s.submit(1, urb_in(EP_INTERRUPT, 8), Arc::clone(&hold));
        s.submit(2, urb_in(EP_SOURCE, 16), Arc::clone(&hold));
        let done = next(&mut s).await;
        assert_eq!(done.id, 2);
        assert_eq!(
            (done.completion.status, done.completion.data.len()),
            (Ok(()), 16)
        );
        assert_eq!(s.in_flight(), 1);
        handle.send_interrupt(vec![7; 8]).await.unwrap();
        let done = next(&mut s).await;
        assert_eq!(
            (done.id, done.completion),
            (1, Completion::data_in(vec![7; 8]))
        );
        assert_eq!(s.in_flight(), 0);
        s.close().await;
    }

    #[tokio::test]
    async fn a_short_in_with_short_not_ok_comes_back_failed_with_its_data() {
        let (mut s, _registry, handle) = session();
        let mut urb = urb_in(EP_INTERRUPT, 16);
        urb.transfer_flags = periwire_usb::URB_SHORT_NOT_OK;
        s.submit(1, urb, Arc::new(()));
        handle.send_interrupt(vec![5; 8]).await.unwrap();
        let done = next(&mut s).await.completion;
        assert_eq!(done.status, Err(periwire_usb::TransferError::ShortPacket));
        assert_eq!((done.actual_length, done.data), (8, vec![5; 8]));
        s.close().await;
    }

    #[tokio::test]
    async fn cancelling_the_urb_a_device_works_on_lets_the_queued_one_in() {
        // One URB at a time on the interrupt endpoint: the second waits in the queue until
        // the first is cancelled (as a driver closing and reopening a tty does).
        let (mut s, _registry, handle) = session();
        s.submit(1, urb_in(EP_INTERRUPT, 8), Arc::new(()));
        s.submit(2, urb_in(EP_INTERRUPT, 8), Arc::new(()));
        tokio::task::yield_now().await;
        assert!(s.cancel(1));
        handle.send_interrupt(vec![9; 8]).await.unwrap();
        let done = next(&mut s).await;
        assert_eq!(
            (done.id, done.completion),
            (2, Completion::data_in(vec![9; 8]))
        );
        s.close().await;
    }

    /// A device that takes three URBs of an endpoint at once; URB `n` (its length) finishes
    /// once `n` is in the released set.
    struct Gated {
        started: std::sync::atomic::AtomicUsize,
        released: tokio::sync::watch::Sender<Vec<u32>>,
    }

    impl UsbDevice for Gated {
        fn info(&self) -> periwire_usb::DeviceInfo {
            SourceSink::new().0.info()
        }

        fn queue_depth(&self, _endpoint_address: u8) -> usize {
            3
        }

        fn submit(&self, urb: Urb) -> periwire_usb::BoxFuture<'_, Completion> {
            self.started
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut released = self.released.subscribe();
            Box::pin(async move {
                let n = urb.length;
                let _ = released.wait_for(|r| r.contains(&n)).await;
                Completion::data_in(vec![0; n as usize])
            })
        }
    }

    fn gated() -> (DeviceSession<u32, ()>, Arc<Gated>, Registry) {
        let registry = Registry::new();
        let device = Arc::new(Gated {
            started: Default::default(),
            released: tokio::sync::watch::channel(Vec::new()).0,
        });
        let busid = BusId::new("1-2").unwrap();
        registry
            .add(Export {
                busid: busid.clone(),
                busnum: 1,
                devnum: 3,
                name: "gated".into(),
                device: Arc::clone(&device) as Arc<dyn UsbDevice>,
            })
            .unwrap();
        let claim = registry.claim(&busid).unwrap();
        (DeviceSession::new(claim), device, registry)
    }

    async fn started(device: &Gated, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while device.started.load(std::sync::atomic::Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("URBs handed to the device");
    }

    #[tokio::test]
    async fn a_queueing_device_gets_its_depth_of_urbs_and_they_complete_in_order() {
        let (mut s, device, _registry) = gated();
        for n in 1..=4 {
            s.submit(n, urb_in(EP_SOURCE, n), ());
        }
        started(&device, 3).await;
        tokio::task::yield_now().await;
        assert_eq!(
            device.started.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the depth bounds it"
        );
        // The third finishes first, but comes out only after the first two.
        device.released.send_replace(vec![3]);
        device.released.send_replace(vec![3, 1]);
        assert_eq!(next_gated(&mut s).await, (1, 1));
        started(&device, 4).await;
        device.released.send_replace(vec![1, 2, 3, 4]);
        assert_eq!(next_gated(&mut s).await, (2, 2));
        assert_eq!(next_gated(&mut s).await, (3, 3));
        assert_eq!(next_gated(&mut s).await, (4, 4));
        s.close().await;
    }

    #[tokio::test]
    async fn cancelling_a_urb_in_the_middle_of_a_queue_leaves_the_others() {
        let (mut s, device, _registry) = gated();
        for n in 1..=3 {
            s.submit(n, urb_in(EP_SOURCE, n), ());
        }
        started(&device, 3).await;
        assert!(s.cancel(2));
        device.released.send_replace(vec![1, 2, 3]);
        assert_eq!(next_gated(&mut s).await, (1, 1));
        assert_eq!(next_gated(&mut s).await, (3, 3));
        assert!(s.try_completion().is_none());
        s.close().await;
    }

    async fn next_gated(s: &mut DeviceSession<u32, ()>) -> (u32, usize) {
        let done = tokio::time::timeout(Duration::from_secs(5), s.next_completion())
            .await
            .expect("a completion");
        (done.id, done.completion.data.len())
    }

    #[tokio::test]
    async fn cancel_drops_the_urb_and_what_it_holds() {
        let (mut s, registry, _handle) = session();
        let hold = Arc::new(());
        s.submit(1, urb_in(EP_INTERRUPT, 8), Arc::clone(&hold));
        // Queued behind the first on the same endpoint: never reaches the device.
        s.submit(2, urb_in(EP_INTERRUPT, 8), Arc::clone(&hold));
        assert!(s.cancel(1));
        assert!(s.cancel(2));
        assert!(!s.cancel(2), "already cancelled");
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&hold) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("both URBs dropped");
        assert!(
            s.try_completion().is_none(),
            "a cancelled URB does not complete"
        );
        let busid = s.export().busid.clone();
        assert!(registry.is_claimed(&busid));
        s.close().await;
        assert!(!registry.is_claimed(&busid), "close releases the device");
    }
}
