//! An emulated controller presented as a USB Bluetooth dongle, so that it travels over USB/IP
//! like any other device and the guest's own `btusb` driver binds it.
//!
//! The USB transport is Core Specification Vol 4, Part B: HCI commands arrive on the default
//! control pipe as class requests (bmRequestType 0x20, bRequest 0); events leave on an
//! interrupt IN endpoint; ACL data uses a bulk pair; interface 1 carries SCO on isochronous
//! endpoints (present so `btusb` finds the layout it expects; this controller has no SCO).
//!
//! The controller hands out one stream of packets for the host; this device splits it into the
//! event and ACL endpoints. Whichever endpoint's URB is waiting pulls from the controller and
//! files what it gets under its type, so neither endpoint waits on the other — up to a small
//! bound per type, beyond which a puller stops pulling (backpressure, as a real dongle's
//! buffers give).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};

use periwire_hci::controller::ToHost;
use periwire_hci::BdAddr;
use periwire_usb::descriptor::{DeviceDescriptors, Endpoint, Interface, TransferType};
use periwire_usb::device::{Direction, Speed};
use periwire_usb::standard::{StandardEvent, StandardRequests};
use periwire_usb::{AttachError, BoxFuture, Completion, DeviceInfo, TransferError, Urb, UsbDevice};
use tokio::sync::Notify;

use crate::{AdapterHandle, ControllerConfig, Medium};

/// Event endpoint (interrupt IN).
pub const EP_EVENTS: u8 = 0x81;
/// ACL data from the controller (bulk IN).
pub const EP_ACL_IN: u8 = 0x82;
/// ACL data to the controller (bulk OUT).
pub const EP_ACL_OUT: u8 = 0x02;
/// pid.codes test product id of the dongle (vendor 0x1209, which no `btusb` quirk matches,
/// so no vendor firmware loading is attempted).
pub const PRODUCT_ID: u16 = 0x7710;

/// Packets of one type held for their endpoint before a puller stops pulling.
const DEMUX_DEPTH: usize = 32;
/// Largest ACL packet accepted from the host: 4-byte header + the largest data length a
/// controller may advertise.
const MAX_ACL_PACKET: usize = 4 + 0xffff;

/// Packets from the controller, sorted by endpoint, each possibly part-sent.
#[derive(Default)]
struct Demux {
    events: VecDeque<Vec<u8>>,
    acl: VecDeque<Vec<u8>>,
    /// Bytes of the front event already sent (events longer than the interrupt URB go out in
    /// pieces; `btusb` reassembles them by the event header's length).
    event_offset: usize,
    acl_offset: usize,
    /// Bytes of an ACL packet from the host that arrived split over several bulk OUT URBs.
    acl_out: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Events,
    Acl,
}

impl Demux {
    fn queue(&mut self, s: Stream) -> (&mut VecDeque<Vec<u8>>, &mut usize) {
        match s {
            Stream::Events => (&mut self.events, &mut self.event_offset),
            Stream::Acl => (&mut self.acl, &mut self.acl_offset),
        }
    }

    /// Up to `limit` bytes of the front packet of `s`.
    fn take(&mut self, s: Stream, limit: usize) -> Option<Vec<u8>> {
        let (q, offset) = self.queue(s);
        let front = q.front()?;
        let end = front.len().min(offset.saturating_add(limit.max(1)));
        let piece = front.get(*offset..end).unwrap_or_default().to_vec();
        if end >= front.len() {
            q.pop_front();
            *offset = 0;
        } else {
            *offset = end;
        }
        Some(piece)
    }

    fn file(&mut self, packet: ToHost) {
        match packet {
            ToHost::Event(e) => self.events.push_back(e),
            ToHost::Acl(a) => self.acl.push_back(a),
        }
    }

    /// Whether a puller may take another packet from the controller without overfilling a
    /// queue it cannot drain itself.
    fn has_room(&self) -> bool {
        self.events.len() < DEMUX_DEPTH && self.acl.len() < DEMUX_DEPTH
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A USB Bluetooth dongle backed by an emulated controller on the shared radio.
pub struct UsbDongle {
    standard: StandardRequests,
    adapter: AdapterHandle,
    demux: Mutex<Demux>,
    /// Signalled whenever a packet is filed or taken.
    changed: Notify,
    /// Held by the one URB that is waiting on the controller.
    puller: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for UsbDongle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbDongle")
            .field("adapter", &self.adapter.id())
            .finish_non_exhaustive()
    }
}

/// The descriptors Linux `btusb` binds: device class E0/01/01, interface 0 with the event,
/// ACL IN and ACL OUT endpoints, interface 1 with two isochronous alternate settings.
pub fn descriptors(address: BdAddr) -> DeviceDescriptors {
    let ep = |address, transfer, max_packet_size, interval| Endpoint {
        address,
        transfer,
        max_packet_size,
        interval,
    };
    let iso = |alternate, max_packet_size| Interface {
        number: 1,
        alternate,
        class: 0xe0,
        subclass: 0x01,
        protocol: 0x01,
        string: 0,
        class_descriptors: Vec::new(),
        endpoints: vec![
            ep(0x83, TransferType::Isochronous, max_packet_size, 1),
            ep(0x03, TransferType::Isochronous, max_packet_size, 1),
        ],
    };
    DeviceDescriptors {
        speed: Speed::Full,
        usb_version: 0x0200,
        class: 0xe0,
        subclass: 0x01,
        protocol: 0x01,
        max_packet_size0: 64,
        vendor_id: 0x1209,
        product_id: PRODUCT_ID,
        device_version: 0x0100,
        manufacturer: "periwire".into(),
        product: "Virtual Bluetooth Adapter".into(),
        serial: address.to_string().replace(':', ""),
        configuration_value: 1,
        // No remote wakeup: btusb needs it to autosuspend an idle open adapter, and a device
        // behind USB/IP cannot wake a suspended port, so a suspended dongle would never
        // deliver the next event (an Inquiry Complete 10 s later, a Connection Request).
        configuration_attributes: 0,
        max_power: 50,
        configuration_extra: Vec::new(),
        interfaces: vec![
            Interface {
                number: 0,
                alternate: 0,
                class: 0xe0,
                subclass: 0x01,
                protocol: 0x01,
                string: 0,
                class_descriptors: Vec::new(),
                endpoints: vec![
                    ep(EP_EVENTS, TransferType::Interrupt, 16, 1),
                    ep(EP_ACL_IN, TransferType::Bulk, 64, 0),
                    ep(EP_ACL_OUT, TransferType::Bulk, 64, 0),
                ],
            },
            iso(0, 0),
            iso(1, 9),
        ],
        extra_strings: Vec::new(),
    }
}

/// HCI_Reset (Vol 4, Part E, 7.3.2): what a dongle's power cycle amounts to.
const HCI_RESET: [u8; 3] = [0x03, 0x0c, 0x00];

impl UsbDongle {
    /// A dongle whose controller has `config`, attached to `medium`.
    pub fn new(medium: &Medium, config: ControllerConfig) -> Self {
        let standard = StandardRequests::new(descriptors(config.address));
        Self {
            standard,
            adapter: medium.attach(config),
            demux: Mutex::new(Demux::default()),
            changed: Notify::new(),
            puller: tokio::sync::Mutex::new(()),
        }
    }

    /// The controller behind the dongle.
    pub fn adapter(&self) -> &AdapterHandle {
        &self.adapter
    }

    fn demux(&self) -> MutexGuard<'_, Demux> {
        // The demux is consistent between statements; a panic elsewhere leaves it usable.
        self.demux.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for up to `limit` bytes of the next packet of `stream`. Cancel-safe: a packet
    /// is taken from the controller or the demux only in the poll that returns it or files it.
    async fn next(&self, stream: Stream, limit: usize) -> Vec<u8> {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let may_pull = {
                let mut demux = self.demux();
                if let Some(piece) = demux.take(stream, limit) {
                    drop(demux);
                    self.changed.notify_waiters();
                    return piece;
                }
                demux.has_room()
            };
            if !may_pull {
                changed.await;
                continue;
            }
            tokio::select! {
                guard = self.puller.lock() => {
                    tokio::select! {
                        packet = self.adapter.recv() => {
                            if let ToHost::Event(e) = &packet {
                                tracing::trace!(adapter = %self.adapter.id(), code = ?e.first(), len = e.len(), "event from controller");
                            }
                            self.demux().file(packet);
                            self.changed.notify_waiters();
                        }
                        () = &mut changed => {}
                    }
                    drop(guard);
                }
                () = &mut changed => {}
            }
        }
    }

    fn command(&self, data: &[u8]) -> Result<Completion, TransferError> {
        match self.adapter.send_command(data) {
            Ok(()) => Ok(Completion::data_out(data.len())),
            Err(e) => {
                tracing::debug!(error = %e, "HCI command refused");
                Err(TransferError::Stall)
            }
        }
    }

    fn acl_out(&self, data: &[u8]) -> Result<Completion, TransferError> {
        // btusb sends one packet per URB; still, reassemble by the header's length so a
        // packet split over URBs (or two in one) is handled.
        let mut demux = self.demux();
        demux.acl_out.extend_from_slice(data);
        loop {
            let buffered = &demux.acl_out;
            let Some(len) = buffered
                .get(2..4)
                .map(|l| 4 + usize::from(u16::from_le_bytes([l[0], l[1]])))
            else {
                break;
            };
            if buffered.len() < len {
                if buffered.len() > MAX_ACL_PACKET {
                    demux.acl_out.clear();
                    return Err(TransferError::Stall);
                }
                break;
            }
            let packet: Vec<u8> = demux.acl_out.drain(..len).collect();
            if let Err(e) = self.adapter.send_acl(&packet) {
                tracing::debug!(error = %e, "ACL packet refused");
                demux.acl_out.clear();
                return Err(TransferError::Stall);
            }
        }
        Ok(Completion::data_out(data.len()))
    }

    /// Starts afresh: what the dongle held for a previous host is dropped and the controller
    /// is reset, as unplugging a dongle would.
    fn power_cycle(&self) {
        let _ = self.adapter.send_command(&HCI_RESET);
        while self.adapter.try_recv().is_some() {}
        self.demux().clear();
        self.changed.notify_waiters();
    }
}

impl UsbDongle {
    /// Carries out one URB; none fails partway.
    async fn transfer(&self, urb: Urb) -> Result<Completion, TransferError> {
        let limit = usize::try_from(urb.length).unwrap_or(usize::MAX);
        match (urb.endpoint_address(), urb.direction) {
            (0 | 0x80, _) => {
                if let Some((result, event)) = self.standard.handle(urb.setup, &urb.data) {
                    if event == StandardEvent::Reset {
                        self.demux().clear();
                    }
                    return result;
                }
                // HCI command: class request to the device or interface, bRequest 0.
                let s = urb.setup;
                if matches!(s.request_type, 0x20 | 0x21) && s.request == 0 {
                    return self.command(&urb.data);
                }
                Err(TransferError::Stall)
            }
            (EP_EVENTS, Direction::In) => {
                Ok(Completion::data_in(self.next(Stream::Events, limit).await))
            }
            (EP_ACL_IN, Direction::In) => {
                Ok(Completion::data_in(self.next(Stream::Acl, limit).await))
            }
            (EP_ACL_OUT, Direction::Out) => self.acl_out(&urb.data),
            // SCO: no synchronous links on this controller; the isochronous pipes stay
            // idle until the host gives up on them.
            (0x83 | 0x03, _) => std::future::pending().await,
            _ => Err(TransferError::Stall),
        }
    }
}

impl UsbDevice for UsbDongle {
    fn info(&self) -> DeviceInfo {
        self.standard.descriptors().info()
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        Box::pin(async move { self.transfer(urb).await.into() })
    }

    fn attached(&self) -> Result<(), AttachError> {
        self.power_cycle();
        Ok(())
    }

    fn detached(&self) {
        self.power_cycle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periwire_usb::SetupPacket;

    fn urb(endpoint: u8, direction: Direction, setup: [u8; 8], data: Vec<u8>, length: u32) -> Urb {
        Urb {
            endpoint,
            direction,
            setup: SetupPacket::from_bytes(setup),
            transfer_flags: 0,
            length,
            data,
            iso_packets: Vec::new(),
            start_frame: 0,
            interval: 0,
        }
    }

    fn hci_command(packet: &[u8]) -> Urb {
        let len = packet.len() as u8;
        urb(
            0,
            Direction::Out,
            [0x20, 0, 0, 0, 0, 0, len, 0],
            packet.to_vec(),
            len.into(),
        )
    }

    fn config(last: u8) -> ControllerConfig {
        ControllerConfig::new(BdAddr([last, 0x00, 0x00, 0x77, 0x12, 0x00]))
    }

    #[test]
    fn descriptors_have_the_btusb_layout() {
        let d = descriptors(BdAddr([1, 2, 3, 4, 5, 6]));
        let info = d.info();
        assert_eq!(
            (info.class, info.subclass, info.protocol),
            (0xe0, 0x01, 0x01)
        );
        assert_eq!(info.interfaces.len(), 2, "interface 1 alt 0 counts once");
        let c = d.configuration_descriptor();
        assert_eq!(u16::from_le_bytes([c[2], c[3]]) as usize, c.len());
        assert_eq!(
            d.endpoint(EP_EVENTS).map(|e| e.transfer),
            Some(TransferType::Interrupt)
        );
    }

    #[tokio::test]
    async fn reset_is_answered_on_the_event_endpoint_in_16_byte_pieces() {
        let radio = crate::Medium::Simulated(crate::SharedRadio::new());
        let dongle = UsbDongle::new(&radio, config(1));
        dongle.attached().unwrap();
        dongle
            .submit(hci_command(&HCI_RESET))
            .await
            .into_result()
            .unwrap();
        let c = dongle
            .submit(urb(1, Direction::In, [0; 8], vec![], 16))
            .await
            .into_result()
            .unwrap();
        // Command Complete, 4 parameter bytes: num packets, opcode 0x0c03, status 0.
        assert_eq!(c.data, [0x0e, 0x04, 0x01, 0x03, 0x0c, 0x00]);

        // Read Local Supported Commands: 64-byte mask, so a 69-byte event in pieces of 16.
        dongle
            .submit(hci_command(&[0x02, 0x10, 0x00]))
            .await
            .into_result()
            .unwrap();
        let mut event = Vec::new();
        loop {
            let c = dongle
                .submit(urb(1, Direction::In, [0; 8], vec![], 16))
                .await
                .into_result()
                .unwrap();
            assert!(c.data.len() <= 16);
            event.extend_from_slice(&c.data);
            if event.len() >= 2 && event.len() == 2 + usize::from(event[1]) {
                break;
            }
        }
        assert_eq!(&event[..6], &[0x0e, 0x44, 0x01, 0x02, 0x10, 0x00]);
    }

    #[tokio::test]
    async fn a_pending_acl_in_does_not_hold_up_events() {
        let radio = crate::Medium::Simulated(crate::SharedRadio::new());
        let dongle = std::sync::Arc::new(UsbDongle::new(&radio, config(2)));
        // An ACL IN URB waits, as btusb keeps one pending (it may be the one pulling).
        let waiting = dongle.clone();
        let acl = tokio::spawn(async move {
            waiting
                .submit(urb(2, Direction::In, [0; 8], vec![], 1024))
                .await
        });
        dongle
            .submit(hci_command(&HCI_RESET))
            .await
            .into_result()
            .unwrap();
        let c = dongle
            .submit(urb(1, Direction::In, [0; 8], vec![], 16))
            .await
            .into_result()
            .unwrap();
        assert_eq!(c.data[0], 0x0e, "the event reaches the event endpoint");
        assert!(!acl.is_finished(), "ACL IN still pends");
        acl.abort();
    }

    #[tokio::test]
    async fn malformed_commands_stall_instead_of_panicking() {
        let radio = crate::Medium::Simulated(crate::SharedRadio::new());
        let dongle = UsbDongle::new(&radio, config(3));
        for bad in [vec![], vec![0x03], vec![0x03, 0x0c, 0x05, 0x00]] {
            let r = dongle.submit(hci_command(&bad)).await;
            assert_eq!(
                r,
                periwire_usb::Completion::failed(TransferError::Stall),
                "{bad:?}"
            );
        }
        let r = dongle
            .submit(urb(2, Direction::Out, [0; 8], vec![0xff; 70_000], 70_000))
            .await;
        assert!(r.is_ok() || r == periwire_usb::Completion::failed(TransferError::Stall));
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;
    use periwire_usb::SetupPacket;

    fn cmd(packet: &[u8]) -> Urb {
        let len = packet.len() as u8;
        Urb {
            endpoint: 0,
            direction: Direction::Out,
            setup: SetupPacket::from_bytes([0x20, 0, 0, 0, 0, 0, len, 0]),
            transfer_flags: 0,
            length: len.into(),
            data: packet.to_vec(),
            iso_packets: Vec::new(),
            start_frame: 0,
            interval: 0,
        }
    }

    fn event_in() -> Urb {
        Urb {
            endpoint: 1,
            direction: Direction::In,
            setup: SetupPacket::default(),
            transfer_flags: 0,
            length: 16,
            data: Vec::new(),
            iso_packets: Vec::new(),
            start_frame: 0,
            interval: 0,
        }
    }

    async fn next_event(d: &UsbDongle) -> Vec<u8> {
        let mut e = Vec::new();
        loop {
            let c = d.submit(event_in()).await.into_result().unwrap();
            e.extend_from_slice(&c.data);
            if e.len() >= 2 && e.len() == 2 + usize::from(e[1]) {
                return e;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inquiry_completes_on_time() {
        let radio = crate::Medium::Simulated(crate::SharedRadio::new());
        let a = std::sync::Arc::new(UsbDongle::new(
            &radio,
            ControllerConfig::new(BdAddr([1, 0, 0, 0, 0, 0])),
        ));
        let b = UsbDongle::new(&radio, ControllerConfig::new(BdAddr([2, 0, 0, 0, 0, 0])));
        b.submit(cmd(&[0x1a, 0x0c, 0x01, 0x03]))
            .await
            .into_result()
            .unwrap();
        let _ = next_event(&b).await;
        let waiting = a.clone();
        let acl = tokio::spawn(async move {
            let urb = Urb {
                endpoint: 2,
                length: 1024,
                ..event_in()
            };
            waiting.submit(urb).await
        });
        let started = std::time::Instant::now();
        // Inquiry, GIAC, length 1 (1.28 s), unlimited responses.
        a.submit(cmd(&[0x01, 0x04, 0x05, 0x33, 0x8b, 0x9e, 0x01, 0x00]))
            .await
            .into_result()
            .unwrap();
        let mut codes = Vec::new();
        loop {
            let e = tokio::time::timeout(std::time::Duration::from_secs(10), next_event(&a))
                .await
                .expect("inquiry complete within 10 s");
            codes.push(e[0]);
            if e[0] == 0x01 {
                break;
            }
        }
        println!("{codes:?} after {:?}", started.elapsed());
        acl.abort();
    }
}
