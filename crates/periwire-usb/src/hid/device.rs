//! The part every periwire HID boot device shares: descriptors, control requests, and the
//! bounded report queue between the input handles and the interrupt IN endpoint.
//!
//! The protocol state lives in [`Inner`], a plain struct whose methods answer control
//! requests and hand out reports without any I/O. [`Shared`] adds the thin async layer: a
//! `std` mutex around `Inner` and a [`Notify`] that wakes whoever waits for a change.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::class::{ControlReply, HidInterfaceState, HidRequest, Protocol, ReportType};
use super::InputError;
use crate::descriptor::{kind, DeviceDescriptors, Endpoint, Interface, TransferType};
use crate::device::{BoxFuture, Completion, DeviceInfo, Speed, TransferError, Urb};
use crate::standard::{StandardEvent, StandardRequests};
use crate::SetupPacket;

/// The one interface of a boot device.
pub(crate) const INTERFACE: u8 = 0;
/// Its interrupt IN endpoint.
pub(crate) const INTERRUPT_IN: u8 = 0x81;
/// Its polling interval in ms (full speed: bInterval counts frames, USB 2.0 §9.6.6).
pub(crate) const INTERVAL_MS: u8 = 10;
/// The least time between two reports on the interrupt IN endpoint.
///
/// vhci-hcd does not honour bInterval: it forwards each interrupt URB at once and usbhid
/// resubmits as soon as one completes, so without this a burst of queued input reaches the
/// guest at network speed. A real device is polled once per interval, and guests are built
/// for that: evdev keeps 64 events per reader and drops the whole buffer (SYN_DROPPED) when a
/// slow reader, say in a loaded VM, falls behind a burst.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(INTERVAL_MS as u64);

/// What distinguishes one boot device (keyboard, mouse) from another.
pub(crate) trait BootFunction: Send + 'static {
    /// One queued input event.
    type Report: Copy + Send + 'static;
    /// The report descriptor served for GET_DESCRIPTOR(0x22).
    const REPORT_DESCRIPTOR: &'static [u8];

    /// The input report bytes of `report` in `protocol` (HID 1.11 Appendix B for boot).
    fn encode(report: &Self::Report, protocol: Protocol) -> Vec<u8>;
    /// GET_REPORT; `None` stalls.
    fn get_report(&self, report_type: ReportType, protocol: Protocol) -> Option<Vec<u8>>;
    /// SET_REPORT; `false` stalls.
    fn set_report(&mut self, report_type: ReportType, data: &[u8]) -> bool;
    /// `report` went to the host on the interrupt IN endpoint.
    fn delivered(&mut self, report: &Self::Report);
    /// SET_CONFIGURATION or port reset: back to power-on state (queued input stays).
    fn reset(&mut self);
}

/// Protocol state of a boot device: sans-IO.
pub(crate) struct Inner<F: BootFunction> {
    pub(crate) function: F,
    pub(crate) queue: VecDeque<F::Report>,
    capacity: usize,
    hid: HidInterfaceState,
    hid_descriptor: [u8; 9],
    /// The device is gone: handles fail instead of waiting forever.
    closed: bool,
    /// When the last report went to the host, for [`REPORT_INTERVAL`].
    last_report: Option<Instant>,
}

impl<F: BootFunction> Inner<F> {
    pub(crate) fn new(function: F, capacity: usize, default_idle: u8) -> Self {
        let len = u16::try_from(F::REPORT_DESCRIPTOR.len()).unwrap_or(u16::MAX);
        Self {
            function,
            queue: VecDeque::new(),
            // Every handle operation needs room for at least a press and a release.
            capacity: capacity.max(2),
            hid: HidInterfaceState::new(default_idle),
            hid_descriptor: super::class::hid_descriptor(len),
            closed: false,
            last_report: None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    fn free(&self) -> usize {
        self.capacity.saturating_sub(self.queue.len())
    }

    /// Answers a request to the HID interface (HID 1.11 §7.1, §7.2).
    pub(crate) fn control(&mut self, req: &HidRequest<'_>) -> ControlReply {
        if let Some(reply) = self.hid.handle(req) {
            return reply;
        }
        match *req {
            HidRequest::GetDescriptor {
                descriptor_type: kind::HID,
                index: 0,
            } => ControlReply::Data(self.hid_descriptor.to_vec()),
            HidRequest::GetDescriptor {
                descriptor_type: kind::HID_REPORT,
                index: 0,
            } => ControlReply::Data(F::REPORT_DESCRIPTOR.to_vec()),
            HidRequest::GetReport {
                report_type,
                report_id: 0,
            } => self
                .function
                .get_report(report_type, self.hid.protocol)
                .map_or(ControlReply::Stall, ControlReply::Data),
            HidRequest::SetReport {
                report_type,
                report_id: 0,
                data,
            } => {
                if self.function.set_report(report_type, data) {
                    ControlReply::Ack
                } else {
                    ControlReply::Stall
                }
            }
            _ => ControlReply::Stall,
        }
    }

    /// The earliest time the next report may go to the host, if that is still to come.
    fn next_report_at(&self, now: Instant) -> Option<Instant> {
        let at = self.last_report? + REPORT_INTERVAL;
        (at > now).then_some(at)
    }

    /// Takes the next report for an interrupt IN URB of `length` bytes at time `now`; `None`
    /// when none is queued. A report longer than the URB is dropped with an overflow, as a
    /// host controller reports babble.
    pub(crate) fn take_report(
        &mut self,
        length: u32,
        now: Instant,
    ) -> Option<Result<Completion, TransferError>> {
        let report = self.queue.pop_front()?;
        self.last_report = Some(now);
        let bytes = F::encode(&report, self.hid.protocol);
        self.function.delivered(&report);
        if bytes.len() > usize::try_from(length).unwrap_or(usize::MAX) {
            return Some(Err(TransferError::Overflow));
        }
        Some(Ok(Completion::data_in(bytes)))
    }

    fn reset(&mut self) {
        self.hid.reset();
        self.function.reset();
    }
}

/// [`Inner`] shared between the device and its handles.
pub(crate) struct Shared<F: BootFunction> {
    inner: Mutex<Inner<F>>,
    /// Signalled after every change: a report queued or taken, LEDs set, device closed.
    changed: Notify,
}

impl<F: BootFunction> Shared<F> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<F>> {
        // A poisoned lock only means a panic elsewhere; the queue stays consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `step` returns `Some`, then signals the change. `step` runs under the lock
    /// and any change it makes happens in the same poll that completes the future, so
    /// dropping the future never loses a change (cancel-safe).
    pub(crate) async fn wait<T>(&self, mut step: impl FnMut(&mut Inner<F>) -> Option<T>) -> T {
        loop {
            let mut notified = pin!(self.changed.notified());
            // Register before looking, so a change between the look and the await wakes us.
            notified.as_mut().enable();
            let done = step(&mut self.lock());
            if let Some(v) = done {
                self.changed.notify_waiters();
                return v;
            }
            notified.await;
        }
    }

    /// Queues the reports `make` builds once `slots` places are free; `make` runs under the
    /// lock so it may read and update the function state (a mouse's held buttons). All of
    /// them are queued at once, so a key press is never separated from its release. `slots`
    /// is at most 2, which the capacity always allows.
    pub(crate) async fn push(
        &self,
        slots: usize,
        make: impl FnOnce(&mut F) -> Vec<F::Report>,
    ) -> Result<(), InputError> {
        debug_assert!(slots <= 2, "a wait for {slots} slots might never end");
        let mut make = Some(make);
        self.wait(|inner| Self::push_step(inner, slots, &mut make))
            .await
    }

    /// Like [`push`](Self::push) but fails with [`InputError::QueueFull`] instead of waiting.
    pub(crate) fn try_push(
        &self,
        slots: usize,
        make: impl FnOnce(&mut F) -> Vec<F::Report>,
    ) -> Result<(), InputError> {
        let mut make = Some(make);
        let result = Self::push_step(&mut self.lock(), slots, &mut make)
            .unwrap_or(Err(InputError::QueueFull));
        self.changed.notify_waiters();
        result
    }

    fn push_step(
        inner: &mut Inner<F>,
        slots: usize,
        make: &mut Option<impl FnOnce(&mut F) -> Vec<F::Report>>,
    ) -> Option<Result<(), InputError>> {
        if inner.closed {
            return Some(Err(InputError::DeviceGone));
        }
        if inner.free() < slots {
            return None;
        }
        let make = make.take()?;
        let reports = make(&mut inner.function);
        inner.queue.extend(reports);
        Some(Ok(()))
    }

    /// Waits until every queued report has gone to the host.
    pub(crate) async fn drained(&self) -> Result<(), InputError> {
        self.wait(|inner| {
            if inner.queue.is_empty() {
                Some(Ok(()))
            } else if inner.is_closed() {
                Some(Err(InputError::DeviceGone))
            } else {
                None
            }
        })
        .await
    }

    /// The client let go of the device: input queued for it is dropped (it would surface,
    /// stale, at the next attach) and the HID state returns to power-on. Waiting handles are
    /// woken, since the queue has room again.
    pub(crate) fn detach(&self) {
        let mut inner = self.lock();
        inner.queue.clear();
        inner.reset();
        drop(inner);
        self.changed.notify_waiters();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }
}

/// The device half: standard requests, HID requests and the interrupt IN endpoint.
pub(crate) struct HidDevice<F: BootFunction> {
    standard: StandardRequests,
    shared: Arc<Shared<F>>,
}

impl<F: BootFunction> HidDevice<F> {
    /// A boot device (interface 03/01/`interface_protocol`) with one interrupt IN endpoint
    /// of `max_packet_size` bytes.
    pub(crate) fn new(
        strings: BootStrings,
        interface_protocol: u8,
        max_packet_size: u16,
        inner: Inner<F>,
    ) -> Self {
        let descriptors = DeviceDescriptors {
            speed: Speed::Full,
            usb_version: 0x0200,
            // Class defined per interface.
            class: 0,
            subclass: 0,
            protocol: 0,
            max_packet_size0: 64,
            vendor_id: super::VENDOR_ID,
            product_id: strings.product_id,
            device_version: 0x0100,
            manufacturer: super::MANUFACTURER.into(),
            product: strings.product.into(),
            serial: strings.serial.into(),
            configuration_value: 1,
            configuration_attributes: 0,
            max_power: 50, // 100 mA
            configuration_extra: vec![],
            interfaces: vec![Interface {
                number: INTERFACE,
                alternate: 0,
                class: super::CLASS_HID,
                subclass: super::SUBCLASS_BOOT,
                protocol: interface_protocol,
                string: 0,
                class_descriptors: inner.hid_descriptor.to_vec(),
                endpoints: vec![Endpoint {
                    address: INTERRUPT_IN,
                    transfer: TransferType::Interrupt,
                    max_packet_size,
                    interval: INTERVAL_MS,
                }],
            }],
            extra_strings: vec![],
        };
        Self {
            standard: StandardRequests::new(descriptors),
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                changed: Notify::new(),
            }),
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared<F>> {
        Arc::clone(&self.shared)
    }

    pub(crate) fn info(&self) -> DeviceInfo {
        self.standard.descriptors().info()
    }

    #[cfg(test)]
    pub(crate) fn descriptors(&self) -> &DeviceDescriptors {
        self.standard.descriptors()
    }

    /// See [`Shared::detach`].
    pub(crate) fn detached(&self) {
        self.shared.detach();
    }

    pub(crate) fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        if urb.endpoint == 0 {
            let result = self.control(urb.setup, &urb.data);
            return Box::pin(std::future::ready(result.into()));
        }
        if urb.endpoint_address() != INTERRUPT_IN || self.standard.is_halted(INTERRUPT_IN) {
            return Box::pin(std::future::ready(TransferError::Stall.into()));
        }
        if urb.length == 0 {
            return Box::pin(std::future::ready(Completion::default()));
        }
        // Pends until a report is queued and the polling interval has passed; the report
        // leaves the queue only in the poll that completes the URB, so unlinking (dropping)
        // the URB loses nothing.
        let length = urb.length;
        let shared = &self.shared;
        Box::pin(async move {
            let next_report_at = shared.lock().next_report_at(Instant::now());
            if let Some(at) = next_report_at {
                tokio::time::sleep_until(at.into()).await;
            }
            shared
                .wait(move |inner| inner.take_report(length, Instant::now()))
                .await
                .into()
        })
    }

    fn control(&self, setup: SetupPacket, data: &[u8]) -> Result<Completion, TransferError> {
        if let Some((result, event)) = self.standard.handle(setup, data) {
            if event == StandardEvent::Reset {
                self.shared.lock().reset();
            }
            return result;
        }
        let reply = match HidRequest::parse(setup, data, INTERFACE) {
            Some(req) => {
                let reply = self.shared.lock().control(&req);
                tracing::trace!(?req, ?reply, "HID request");
                // SET_REPORT may have changed the LEDs someone waits for.
                self.shared.changed.notify_waiters();
                reply
            }
            None => ControlReply::Stall,
        };
        match reply {
            ControlReply::Data(d) => Ok(Completion::data_in_limited(d, setup.length.into())),
            ControlReply::Ack => Ok(Completion::data_out(data.len())),
            ControlReply::Stall => {
                tracing::debug!(?setup, "HID device stalls control request");
                Err(TransferError::Stall)
            }
        }
    }
}

impl<F: BootFunction> Drop for HidDevice<F> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// What each public boot device type (`Keyboard`, `Mouse`) shares: it wraps a `device:
/// HidDevice<_>` and its handle a `shared: Arc<Shared<_>>`. Gives the device `handle()`, its
/// [`UsbDevice`](crate::UsbDevice) impl and both `Debug` impls.
macro_rules! boot_device_wrapper {
    ($device:ident, $handle:ident) => {
        impl $device {
            /// Another handle.
            pub fn handle(&self) -> $handle {
                $handle {
                    shared: self.device.shared(),
                }
            }
        }

        impl std::fmt::Debug for $device {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($device)).finish_non_exhaustive()
            }
        }

        impl std::fmt::Debug for $handle {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($handle)).finish_non_exhaustive()
            }
        }

        impl $crate::UsbDevice for $device {
            fn info(&self) -> $crate::DeviceInfo {
                self.device.info()
            }

            fn submit(&self, urb: $crate::Urb) -> $crate::BoxFuture<'_, $crate::Completion> {
                self.device.submit(urb)
            }

            fn detached(&self) {
                self.device.detached();
            }
        }
    };
}

/// Identity strings of a boot device.
pub(crate) struct BootStrings {
    pub(crate) product_id: u16,
    pub(crate) product: &'static str,
    pub(crate) serial: &'static str,
}
