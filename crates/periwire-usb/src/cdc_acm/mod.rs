//! A CDC-ACM virtual serial port (USB CDC 1.2 with the PSTN 1.2 Abstract Control Model),
//! driven in a Linux guest by the stock `cdc_acm` driver (`/dev/ttyACM*`).
//!
//! [`CdcAcm::new`] gives the device and a [`SerialLink`], the host side of the wire:
//!
//! ```no_run
//! # async fn demo() -> Result<(), periwire_usb::cdc_acm::SerialError> {
//! use periwire_usb::cdc_acm::{CdcAcm, CdcAcmConfig};
//! let (port, link) = CdcAcm::new(CdcAcmConfig::default());
//! // ... export `port` through the server ...
//! link.write(b"hello guest\n").await?;   // the guest reads it from /dev/ttyACM0
//! let from_guest = link.read().await;     // what the guest wrote (None: device gone)
//! # Ok(()) }
//! ```
//!
//! Layout (USB 2.0 §9.6, CDC 1.2 §5, PSTN 1.2 §5.3), high speed:
//! - device class 0x02 (communications), 1209:7703;
//! - interface 0, 02/02/01 (communication, ACM, AT commands), with header, call management,
//!   ACM and union functional descriptors and an interrupt IN notification endpoint 0x81;
//! - interface 1, 0A/00/00 (data), bulk IN 0x82 and bulk OUT 0x02, 512 bytes.
//!
//! Flow control is USB's own: each direction has a bounded buffer
//! ([`CdcAcmConfig::buffer_size`]). When the host side does not read, bulk OUT URBs stay
//! pending (the guest's writes block); when the guest does not read, [`SerialLink::write`]
//! waits. A bulk IN URB with nothing to send stays pending until data comes or it is
//! unlinked; it takes bytes off the buffer only in the poll that completes it, so an unlinked
//! URB loses nothing, and a bulk OUT URB is taken whole or not at all. The notification
//! endpoint never completes (SERIAL_STATE is optional, PSTN 1.2 §6.5.4).
//!
//! The protocol itself — descriptors, line coding, request decoding — is the sans-IO
//! [`protocol`] module; this module adds the buffers and the [`UsbDevice`] glue.

mod pipe;
pub mod protocol;

use std::sync::Arc;

use tokio::sync::watch;

use self::pipe::Pipe;
use self::protocol::{
    acm_capabilities, acm_descriptor, call_management_descriptor, header_descriptor,
    union_descriptor, CLASS_COMMUNICATION, CLASS_DATA, PROTOCOL_AT_V250, SUBCLASS_ACM,
};
pub use self::protocol::{
    AcmReply, AcmRequest, BreakRequest, ControlLineState, LineCoding, Parity, SerialSettings,
    StopBits,
};
use crate::descriptor::{DeviceDescriptors, Endpoint, Interface, TransferType};
use crate::device::{
    BoxFuture, Completion, DeviceInfo, Direction, Speed, TransferError, Urb, UsbDevice,
};
use crate::standard::{StandardEvent, StandardRequests};
use crate::SetupPacket;

/// idVendor (pid.codes).
pub const VENDOR_ID: u16 = 0x1209;
/// idProduct of the virtual serial port.
pub const PRODUCT_ID: u16 = 0x7703;
/// Default buffer size in each direction.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// The communication interface.
pub const COMM_INTERFACE: u8 = 0;
/// The data interface.
pub const DATA_INTERFACE: u8 = 1;
/// Interrupt IN endpoint for notifications.
pub const NOTIFY_IN: u8 = 0x81;
/// Bulk IN endpoint: bytes for the guest.
pub const DATA_IN: u8 = 0x82;
/// Bulk OUT endpoint: bytes from the guest.
pub const DATA_OUT: u8 = 0x02;

/// How to build a [`CdcAcm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcAcmConfig {
    /// iSerialNumber string.
    pub serial_number: String,
    /// Bytes buffered in each direction before the writer waits (at least 1).
    pub buffer_size: usize,
    /// Line coding until the guest sets one.
    pub line_coding: LineCoding,
}

impl Default for CdcAcmConfig {
    fn default() -> Self {
        Self {
            serial_number: "PW7703".into(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            line_coding: LineCoding::default(),
        }
    }
}

/// The host side is no longer connected to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// The [`CdcAcm`] was dropped.
    #[error("the serial device is gone")]
    DeviceGone,
}

#[derive(Debug)]
struct Shared {
    /// Bulk OUT data, guest to host.
    to_host: Pipe,
    /// Bulk IN data, host to guest.
    to_guest: Pipe,
    settings: watch::Sender<SerialSettings>,
}

/// A virtual CDC-ACM serial port. See the [module documentation](self).
pub struct CdcAcm {
    standard: StandardRequests,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CdcAcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcAcm")
            .field("settings", &*self.shared.settings.borrow())
            .finish_non_exhaustive()
    }
}

fn descriptors(config: &CdcAcmConfig) -> DeviceDescriptors {
    let mut functional = Vec::new();
    functional.extend_from_slice(&header_descriptor(0x0120));
    // The host does call management itself (bmCapabilities 0), over the data interface.
    functional.extend_from_slice(&call_management_descriptor(0, DATA_INTERFACE));
    functional.extend_from_slice(&acm_descriptor(
        acm_capabilities::LINE | acm_capabilities::SEND_BREAK,
    ));
    functional.extend_from_slice(&union_descriptor(COMM_INTERFACE, DATA_INTERFACE));
    DeviceDescriptors {
        speed: Speed::High,
        usb_version: 0x0200,
        class: CLASS_COMMUNICATION,
        subclass: 0,
        protocol: 0,
        max_packet_size0: 64,
        vendor_id: VENDOR_ID,
        product_id: PRODUCT_ID,
        device_version: 0x0100,
        manufacturer: "periwire".into(),
        product: "Virtual Serial Port".into(),
        serial: config.serial_number.clone(),
        configuration_value: 1,
        configuration_attributes: 0,
        max_power: 50,
        configuration_extra: vec![],
        interfaces: vec![
            Interface {
                number: COMM_INTERFACE,
                alternate: 0,
                class: CLASS_COMMUNICATION,
                subclass: SUBCLASS_ACM,
                protocol: PROTOCOL_AT_V250,
                string: 0,
                class_descriptors: functional,
                endpoints: vec![Endpoint {
                    address: NOTIFY_IN,
                    transfer: TransferType::Interrupt,
                    // A SERIAL_STATE notification is 10 bytes (PSTN 1.2 §6.5.4).
                    max_packet_size: 16,
                    // 2^(9-1) microframes = 32 ms (USB 2.0 §9.6.6).
                    interval: 9,
                }],
            },
            Interface {
                number: DATA_INTERFACE,
                alternate: 0,
                class: CLASS_DATA,
                subclass: 0,
                protocol: 0,
                string: 0,
                class_descriptors: vec![],
                endpoints: vec![
                    Endpoint {
                        address: DATA_IN,
                        transfer: TransferType::Bulk,
                        max_packet_size: 512,
                        interval: 0,
                    },
                    Endpoint {
                        address: DATA_OUT,
                        transfer: TransferType::Bulk,
                        max_packet_size: 512,
                        interval: 0,
                    },
                ],
            },
        ],
        extra_strings: vec![],
    }
}

impl CdcAcm {
    /// A serial port and the host side of its link.
    pub fn new(config: CdcAcmConfig) -> (Self, SerialLink) {
        let settings = SerialSettings {
            line_coding: config.line_coding,
            ..SerialSettings::default()
        };
        let shared = Arc::new(Shared {
            to_host: Pipe::new(config.buffer_size),
            to_guest: Pipe::new(config.buffer_size),
            settings: watch::Sender::new(settings),
        });
        let port = Self {
            standard: StandardRequests::new(descriptors(&config)),
            shared: Arc::clone(&shared),
        };
        (port, SerialLink { shared })
    }

    /// The settings the guest made.
    pub fn settings(&self) -> SerialSettings {
        *self.shared.settings.borrow()
    }

    /// The line coding the guest set last (or the configured one).
    pub fn line_coding(&self) -> LineCoding {
        self.settings().line_coding
    }

    fn control(&self, setup: SetupPacket, data: &[u8]) -> Result<Completion, TransferError> {
        if let Some((result, event)) = self.standard.handle(setup, data) {
            if event == StandardEvent::Reset {
                self.shared.settings.send_if_modified(|s| {
                    let before = *s;
                    s.reset();
                    *s != before
                });
            }
            return result;
        }
        let Some(req) = AcmRequest::parse(setup, data, COMM_INTERFACE) else {
            tracing::debug!(?setup, "CDC-ACM stalls control request");
            return Err(TransferError::Stall);
        };
        let mut reply = AcmReply::Ack;
        self.shared.settings.send_if_modified(|s| {
            let before = *s;
            reply = s.handle(req);
            *s != before
        });
        tracing::trace!(?req, "CDC-ACM request");
        match reply {
            AcmReply::Data(d) => Ok(Completion::data_in_limited(d, setup.length.into())),
            AcmReply::Ack => Ok(Completion::data_out(data.len())),
        }
    }
}

impl Drop for CdcAcm {
    fn drop(&mut self) {
        self.shared.to_host.close_writer();
        self.shared.to_guest.close_reader();
    }
}

impl UsbDevice for CdcAcm {
    fn info(&self) -> DeviceInfo {
        self.standard.descriptors().info()
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        if urb.endpoint == 0 {
            let result = self.control(urb.setup, &urb.data);
            return Box::pin(std::future::ready(result.into()));
        }
        let address = urb.endpoint_address();
        if self.standard.descriptors().endpoint(address).is_none()
            || self.standard.is_halted(address)
        {
            return Box::pin(std::future::ready(TransferError::Stall.into()));
        }
        match (address, urb.direction) {
            (DATA_OUT, Direction::Out) => Box::pin(async move {
                // With no one reading on the host side the bytes are dropped (Err(Closed)),
                // as a serial line with nothing attached drops them.
                let _ = self.shared.to_host.push_whole(&urb.data).await;
                Completion::data_out(urb.data.len())
            }),
            (DATA_IN, Direction::In) => {
                let max = usize::try_from(urb.length).unwrap_or(usize::MAX);
                if max == 0 {
                    return Box::pin(std::future::ready(Completion::default()));
                }
                Box::pin(async move {
                    match self.shared.to_guest.pop(max).await {
                        Some(data) => Completion::data_in(data),
                        // The host side is gone and everything it wrote is delivered.
                        None => std::future::pending().await,
                    }
                })
            }
            // No SERIAL_STATE notifications: the notification URB waits until unlinked.
            (NOTIFY_IN, Direction::In) => Box::pin(std::future::pending()),
            _ => Box::pin(std::future::ready(TransferError::Stall.into())),
        }
    }
}

/// The host side of a [`CdcAcm`]: reads what the guest writes, writes what the guest reads,
/// and shows the settings the guest made. Dropping it leaves the device working: the guest's
/// writes are then discarded, and its reads wait.
///
/// Methods take `&self`, so one task can read and write at once (e.g. with `tokio::join!`).
pub struct SerialLink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink").finish_non_exhaustive()
    }
}

impl SerialLink {
    /// Waits for bytes the guest wrote and returns all that are buffered (at least one).
    /// `None` once the device is gone and its buffered bytes are read (like a channel's
    /// `recv`). Cancel-safe: if the future is dropped, no bytes are lost.
    pub async fn read(&self) -> Option<Vec<u8>> {
        self.shared.to_host.pop(usize::MAX).await
    }

    /// Queues `data` for the guest, waiting while the buffer is full (the guest is not
    /// reading). Returns once all of it is buffered; bulk IN URBs then carry it, at most a
    /// URB's length each. If the future is dropped, a prefix of `data` may have been queued.
    pub async fn write(&self, data: &[u8]) -> Result<(), SerialError> {
        self.shared
            .to_guest
            .push_stream(data)
            .await
            .map_err(|_| SerialError::DeviceGone)
    }

    /// Bytes written and not yet taken by the guest.
    pub fn pending_to_guest(&self) -> usize {
        self.shared.to_guest.len()
    }

    /// The settings the guest made.
    pub fn settings(&self) -> SerialSettings {
        *self.shared.settings.borrow()
    }

    /// The line coding the guest set last (or the configured one).
    pub fn line_coding(&self) -> LineCoding {
        self.settings().line_coding
    }

    /// DTR and RTS as the guest set them last.
    pub fn control_lines(&self) -> ControlLineState {
        self.settings().control_lines
    }

    /// A receiver that sees every change of the settings, e.g.
    /// `link.watch_settings().wait_for(|s| s.control_lines.dtr).await` waits for the guest to
    /// open the tty.
    pub fn watch_settings(&self) -> watch::Receiver<SerialSettings> {
        self.shared.settings.subscribe()
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        self.shared.to_host.close_reader();
        self.shared.to_guest.close_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hid::test_util::{control, poll_once, ready_now, urb_in, urb_out};

    fn small(buffer_size: usize) -> (CdcAcm, SerialLink) {
        CdcAcm::new(CdcAcmConfig {
            buffer_size,
            ..CdcAcmConfig::default()
        })
    }

    #[test]
    fn descriptors_match_cdc_and_pstn() {
        let (port, _) = CdcAcm::new(CdcAcmConfig::default());
        let d = port.standard.descriptors();
        let dev = d.device_descriptor();
        assert_eq!(dev[4], 0x02, "bDeviceClass communications");
        assert_eq!(&dev[8..12], &[0x09, 0x12, 0x03, 0x77]);
        assert!(d.device_qualifier().is_some(), "high speed");
        let c = d.configuration_descriptor();
        // config 9; comm interface 9 + functional 5+5+4+5 + endpoint 7; data 9 + 7 + 7.
        assert_eq!(c.len(), 67);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 67);
        assert_eq!(c[4], 2, "two interfaces");
        assert_eq!(&c[9..18], &[9, 4, 0, 0, 1, 2, 2, 1, 0]);
        assert_eq!(
            &c[18..37],
            &[
                5, 0x24, 0x00, 0x20, 0x01, // header, CDC 1.20
                5, 0x24, 0x01, 0x00, 0x01, // call management, data interface 1
                4, 0x24, 0x02, 0x06, // ACM: line coding + break
                5, 0x24, 0x06, 0x00, 0x01, // union 0 -> 1
            ]
        );
        assert_eq!(&c[37..44], &[7, 5, 0x81, 3, 16, 0, 9]);
        assert_eq!(&c[44..53], &[9, 4, 1, 0, 2, 0x0a, 0, 0, 0]);
        assert_eq!(&c[53..60], &[7, 5, 0x82, 2, 0x00, 0x02, 0]);
        assert_eq!(&c[60..67], &[7, 5, 0x02, 2, 0x00, 0x02, 0]);
        let info = port.info();
        assert_eq!((info.vendor_id, info.product_id), (0x1209, 0x7703));
        let ifs: Vec<_> = info
            .interfaces
            .iter()
            .map(|i| (i.class, i.subclass, i.protocol))
            .collect();
        assert_eq!(ifs, vec![(2, 2, 1), (0x0a, 0, 0)]);
    }

    #[test]
    fn link_futures_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let (port, link) = CdcAcm::new(CdcAcmConfig::default());
        assert_send(&link.read());
        assert_send(&link.write(b"x"));
        assert_send(&port.submit(urb_in(2, 512)));
    }

    #[test]
    fn class_requests() {
        let (port, link) = CdcAcm::new(CdcAcmConfig::default());
        let run = |raw, data: &[u8]| ready_now(port.submit(control(raw, data)));
        let ok = |raw, data: &[u8]| run(raw, data).into_result().expect("request completes");
        // GET_LINE_CODING before any SET: the configured default, 115200 8N1.
        let r = ok([0xa1, 0x21, 0, 0, 0, 0, 7, 0], &[]);
        assert_eq!(r.data, [0x00, 0xc2, 0x01, 0x00, 0, 0, 8]);
        // SET_LINE_CODING 9600 8N1 (what Linux cdc_acm sends at probe), read back.
        let line = [0x80, 0x25, 0, 0, 0, 0, 8];
        let r = ok([0x21, 0x20, 0, 0, 0, 0, 7, 0], &line);
        assert_eq!(r.actual_length, 7);
        assert_eq!(link.line_coding().baud_rate, 9600);
        assert_eq!(port.line_coding().baud_rate, 9600);
        let r = ok([0xa1, 0x21, 0, 0, 0, 0, 7, 0], &[]);
        assert_eq!(r.data, line);
        // SET_CONTROL_LINE_STATE DTR | RTS.
        let mut watch = link.watch_settings();
        ok([0x21, 0x22, 0x03, 0, 0, 0, 0, 0], &[]);
        assert!(watch.has_changed().unwrap());
        assert_eq!(
            watch.borrow_and_update().control_lines,
            ControlLineState {
                dtr: true,
                rts: true
            }
        );
        // SEND_BREAK on and off.
        ok([0x21, 0x23, 0xff, 0xff, 0, 0, 0, 0], &[]);
        assert!(link.settings().break_on);
        ok([0x21, 0x23, 0, 0, 0, 0, 0, 0], &[]);
        assert!(!link.settings().break_on);
        assert_eq!(link.settings().breaks, 1);
        // Short line coding, wrong interface, encapsulated commands, vendor: stall.
        let stall = Completion::failed(TransferError::Stall);
        assert_eq!(run([0x21, 0x20, 0, 0, 0, 0, 3, 0], &[1, 2, 3]), stall);
        assert_eq!(run([0x21, 0x22, 0x01, 0, 1, 0, 0, 0], &[]), stall);
        assert_eq!(run([0xa1, 0x01, 0, 0, 0, 0, 64, 0], &[]), stall);
        assert_eq!(run([0xc0, 0x01, 0, 0, 0, 0, 64, 0], &[]), stall);
        // SET_CONFIGURATION drops the control lines, keeps the line coding.
        ok([0x00, 0x09, 0x01, 0, 0, 0, 0, 0], &[]);
        assert_eq!(link.control_lines(), ControlLineState::default());
        assert_eq!(link.line_coding().baud_rate, 9600);
    }

    #[tokio::test]
    async fn data_flows_both_ways() {
        let (port, link) = CdcAcm::new(CdcAcmConfig::default());
        // Host to guest: a pending bulk IN completes when the host writes.
        let mut urb = port.submit(urb_in(2, 4));
        assert!(poll_once(&mut urb).await.is_none());
        link.write(b"hello world").await.unwrap();
        assert_eq!(
            urb.await.into_result().unwrap().data,
            b"hell",
            "at most the URB's length"
        );
        let c = port.submit(urb_in(2, 512)).await.into_result().unwrap();
        assert_eq!(c.data, b"o world", "the leftover on the next URB");
        assert_eq!(c.actual_length, 7);
        // Guest to host.
        let c = port
            .submit(urb_out(2, b"ls -l\n"))
            .await
            .into_result()
            .unwrap();
        assert_eq!(c.actual_length, 6);
        port.submit(urb_out(2, b"pwd\n"))
            .await
            .into_result()
            .unwrap();
        assert_eq!(link.read().await.unwrap(), b"ls -l\npwd\n");
        // A host read waits for the guest.
        let mut read = Box::pin(link.read());
        assert!(poll_once(&mut read).await.is_none());
        port.submit(urb_out(2, b"x")).await.into_result().unwrap();
        assert_eq!(read.await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn dropping_a_pending_bulk_in_loses_nothing() {
        let (port, link) = CdcAcm::new(CdcAcmConfig::default());
        let mut urb = port.submit(urb_in(2, 512));
        assert!(poll_once(&mut urb).await.is_none());
        link.write(b"abc").await.unwrap();
        drop(urb); // unlinked after the data came, before it was polled again
        assert_eq!(link.pending_to_guest(), 3);
        assert_eq!(
            port.submit(urb_in(2, 512))
                .await
                .into_result()
                .unwrap()
                .data,
            b"abc"
        );
    }

    #[tokio::test]
    async fn host_write_waits_while_the_guest_does_not_read() {
        let (port, link) = small(8);
        let mut write = Box::pin(link.write(b"0123456789abcdef!"));
        assert!(poll_once(&mut write).await.is_none(), "buffer full: waits");
        assert_eq!(link.pending_to_guest(), 8);
        assert!(poll_once(&mut write).await.is_none(), "still waits");
        assert_eq!(
            port.submit(urb_in(2, 512))
                .await
                .into_result()
                .unwrap()
                .data,
            b"01234567"
        );
        assert!(poll_once(&mut write).await.is_none());
        assert_eq!(
            port.submit(urb_in(2, 3)).await.into_result().unwrap().data,
            b"89a"
        );
        assert_eq!(
            port.submit(urb_in(2, 512))
                .await
                .into_result()
                .unwrap()
                .data,
            b"bcdef"
        );
        write.await.unwrap();
        assert_eq!(
            port.submit(urb_in(2, 512))
                .await
                .into_result()
                .unwrap()
                .data,
            b"!"
        );
    }

    #[tokio::test]
    async fn bulk_out_pends_while_the_host_does_not_read() {
        let (port, link) = small(8);
        port.submit(urb_out(2, b"aaaaaa"))
            .await
            .into_result()
            .unwrap();
        let mut urb = port.submit(urb_out(2, b"bbbbbb"));
        assert!(poll_once(&mut urb).await.is_none(), "no room: NAKed");
        // Unlinking a pending OUT URB queues none of its bytes.
        drop(urb);
        let mut urb = port.submit(urb_out(2, b"cccccc"));
        assert!(poll_once(&mut urb).await.is_none());
        assert_eq!(link.read().await.unwrap(), b"aaaaaa");
        assert_eq!(urb.await.into_result().unwrap().actual_length, 6);
        assert_eq!(link.read().await.unwrap(), b"cccccc");
    }

    #[tokio::test]
    async fn notifications_pend_and_bad_endpoints_stall() {
        let (port, _link) = CdcAcm::new(CdcAcmConfig::default());
        let mut urb = port.submit(urb_in(1, 16));
        assert!(poll_once(&mut urb).await.is_none());
        assert!(poll_once(&mut urb).await.is_none());
        assert_eq!(
            port.submit(urb_out(1, b"x")).await,
            Completion::failed(TransferError::Stall)
        );
        assert_eq!(
            port.submit(urb_in(3, 8)).await,
            Completion::failed(TransferError::Stall)
        );
        assert_eq!(
            port.submit(urb_in(2, 0))
                .await
                .into_result()
                .unwrap()
                .actual_length,
            0
        );
        // A halted bulk endpoint stalls until CLEAR_FEATURE(ENDPOINT_HALT).
        ready_now(port.submit(control([0x02, 0x03, 0, 0, 0x02, 0, 0, 0], &[])))
            .into_result()
            .unwrap();
        assert_eq!(
            port.submit(urb_out(2, b"x")).await,
            Completion::failed(TransferError::Stall)
        );
        ready_now(port.submit(control([0x02, 0x01, 0, 0, 0x02, 0, 0, 0], &[])))
            .into_result()
            .unwrap();
        port.submit(urb_out(2, b"x")).await.into_result().unwrap();
    }

    #[tokio::test]
    async fn device_keeps_working_without_a_link() {
        let (port, link) = small(4);
        link.write(b"hi").await.unwrap();
        port.submit(urb_out(2, b"abcd"))
            .await
            .into_result()
            .unwrap();
        let mut pending_out = port.submit(urb_out(2, b"efgh"));
        assert!(poll_once(&mut pending_out).await.is_none());
        drop(link);
        // The waiting OUT URB and later ones complete; their bytes are discarded.
        assert_eq!(pending_out.await.into_result().unwrap().actual_length, 4);
        assert_eq!(
            port.submit(urb_out(2, &[0; 100]))
                .await
                .into_result()
                .unwrap()
                .actual_length,
            100
        );
        // What the host wrote before leaving is still delivered; then IN pends.
        assert_eq!(
            port.submit(urb_in(2, 512))
                .await
                .into_result()
                .unwrap()
                .data,
            b"hi"
        );
        let mut urb = port.submit(urb_in(2, 512));
        assert!(poll_once(&mut urb).await.is_none());
    }

    #[tokio::test]
    async fn link_fails_once_the_device_is_gone() {
        let (port, link) = small(4);
        port.submit(urb_out(2, b"bye")).await.into_result().unwrap();
        link.write(b"1234").await.unwrap();
        let mut write = Box::pin(link.write(b"5"));
        assert!(poll_once(&mut write).await.is_none());
        drop(port);
        assert_eq!(write.await, Err(SerialError::DeviceGone));
        assert_eq!(link.read().await.unwrap(), b"bye");
        assert_eq!(link.read().await, None);
    }
}
