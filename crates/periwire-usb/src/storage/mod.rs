//! USB mass storage: a virtual disk backed by a raw image file, driven by the stock Linux
//! `usb-storage` + `sd` drivers (or any other host's).
//!
//! Layers, from the wire up:
//! - [`bot`]: USB Mass Storage Class Bulk-Only Transport 1.0: the CBW/CSW codecs and a
//!   sans-IO state machine ([`BulkOnlyTransport`]) for the command / data / status cycle
//!   and the thirteen cases of host/device disagreement.
//! - [`scsi`]: the SCSI block device (SPC-4 / SBC-3 commands Linux sends) behind it.
//! - [`store`]: the [`BlockStore`] the protocol reads and writes through; [`FileStore`] is
//!   the image file.
//! - [`MassStorage`]: the thin [`UsbDevice`] glue: descriptors (interface class 08/06/50,
//!   bulk IN 0x81 and bulk OUT 0x02 at 512 bytes, high speed), the class requests, halted
//!   pipes, and URBs in and out of the state machine.
//!
//! [`create_demo_image`] makes a small FAT image to export.

pub mod bot;
mod demo;
pub mod scsi;
pub mod store;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::{fmt, io};

use tokio::sync::Notify;

pub use bot::{
    BulkIn, BulkOnlyTransport, CommandBlockWrapper, CommandStatusWrapper, CswStatus, Stalled,
};
pub use demo::{create_demo_image, DEMO_VOLUME_LABEL};
pub use scsi::{DataTransfer, Identity, LogicalUnit, SenseData};
pub use store::{BlockStore, FileStore, MemoryStore, BLOCK_SIZE};

use crate::descriptor::{DeviceDescriptors, Endpoint, Interface, TransferType};
use crate::device::{BoxFuture, Completion, DeviceInfo, Speed, TransferError, Urb};
use crate::setup::{Recipient, RequestKind, SetupPacket};
use crate::standard::{StandardEvent, StandardRequests};
use crate::{AttachError, UsbDevice};

/// idVendor: the pid.codes test vendor ID.
pub const VENDOR_ID: u16 = 0x1209;
/// idProduct of the virtual disk.
pub const PRODUCT_ID: u16 = 0x7702;
/// bcdDevice, also the INQUIRY PRODUCT REVISION LEVEL ("0100").
pub const DEVICE_VERSION: u16 = 0x0100;
/// bInterfaceClass: Mass Storage (USB MSC Overview 1.4 §2).
pub const CLASS_MASS_STORAGE: u8 = 0x08;
/// bInterfaceSubClass: SCSI transparent command set (MSC Overview §2, table 1).
pub const SUBCLASS_SCSI: u8 = 0x06;
/// bInterfaceProtocol: Bulk-Only Transport (MSC Overview §3, table 2).
pub const PROTOCOL_BULK_ONLY: u8 = 0x50;
/// bEndpointAddress of the bulk IN endpoint.
pub const BULK_IN_ENDPOINT: u8 = 0x81;
/// bEndpointAddress of the bulk OUT endpoint.
pub const BULK_OUT_ENDPOINT: u8 = 0x02;
/// wMaxPacketSize of both bulk endpoints (high speed).
pub const BULK_MAX_PACKET_SIZE: u16 = 512;
/// bInterfaceNumber of the mass-storage interface.
const INTERFACE_NUMBER: u8 = 0;

/// Default manufacturer string and T10 vendor identification.
pub const DEFAULT_VENDOR: &str = "periwire";
/// Default product string and T10 product identification.
pub const DEFAULT_PRODUCT: &str = "Virtual Disk";

/// How to open a [`MassStorage`] device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The raw image file (or block device).
    pub path: PathBuf,
    /// Size in bytes to create the image with when it is missing (sparse); a multiple of
    /// 512. `None`: a missing image is an error. An existing image keeps its size.
    pub size: Option<u64>,
    /// Export read-only: the file is opened read-only, MODE SENSE reports WP and writes fail
    /// with DATA PROTECT.
    pub read_only: bool,
    /// Manufacturer string; its first 8 characters are the INQUIRY vendor identification.
    pub vendor: String,
    /// Product string; its first 16 characters are the INQUIRY product identification.
    pub product: String,
    /// Serial number string (also the Unit Serial Number VPD page). BOT 1.0 §4.1.1 asks for
    /// at least 12 characters `0-9A-F`, and Linux `usb-storage` complains otherwise; empty
    /// means one derived from `path` with [`serial_number`].
    pub serial: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            size: None,
            read_only: false,
            vendor: DEFAULT_VENDOR.to_owned(),
            product: DEFAULT_PRODUCT.to_owned(),
            serial: String::new(),
        }
    }
}

impl StorageConfig {
    /// The defaults for the image at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }
}

/// A serial number of 16 characters `0-9A-F` derived from `seed` (a bus id, a path), as
/// BOT 1.0 §4.1.1 wants: the same seed always gives the same serial.
pub fn serial_number(seed: &str) -> String {
    // FNV-1a, 64 bits.
    let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016X}")
}

fn is_bot_serial(serial: &str) -> bool {
    serial.len() >= 12 && serial.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A USB flash drive: one mass-storage interface (Bulk-Only Transport, SCSI transparent
/// command set) with one LUN over a [`BlockStore`] — a [`FileStore`] unless built with
/// [`with_store`](Self::with_store).
///
/// File I/O is synchronous inside the URB futures: each URB moves at most one transfer's
/// worth of data (a CBW, up to [`bot::MAX_IN_TRANSFER`] bytes in, or the bytes of one OUT
/// URB) with one positioned read or write, which the page cache usually serves at once.
pub struct MassStorage<S: BlockStore = FileStore> {
    standard: StandardRequests,
    transport: Mutex<BulkOnlyTransport<S>>,
    /// Woken when the transport may have something for a pending bulk IN transfer.
    bulk_in_ready: Notify,
}

impl<S: BlockStore> fmt::Debug for MassStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MassStorage")
            .field("serial", &self.standard.descriptors().serial)
            .finish_non_exhaustive()
    }
}

impl MassStorage<FileStore> {
    /// Opens (or creates, see [`StorageConfig::size`]) the image and builds the device.
    pub fn open(config: StorageConfig) -> io::Result<Self> {
        let store = FileStore::open(&config.path, config.size, config.read_only)?;
        let serial = if config.serial.is_empty() {
            serial_number(&config.path.to_string_lossy())
        } else {
            config.serial
        };
        if !is_bot_serial(&serial) {
            tracing::warn!(
                %serial,
                "storage: serial number is not 12+ hex digits (BOT 1.0 §4.1.1); hosts may complain"
            );
        }
        tracing::info!(
            path = %config.path.display(),
            bytes = store.size(),
            read_only = config.read_only,
            "storage: image opened"
        );
        Ok(Self::with_store(
            store,
            Identity {
                vendor: config.vendor,
                product: config.product,
                revision: format!("{DEVICE_VERSION:04X}"),
                serial,
            },
        ))
    }
}

impl<S: BlockStore> MassStorage<S> {
    /// A device over any store. The USB manufacturer, product and serial strings are the
    /// identity's vendor, product and serial.
    pub fn with_store(store: S, identity: Identity) -> Self {
        Self {
            standard: StandardRequests::new(descriptors(&identity)),
            transport: Mutex::new(BulkOnlyTransport::new(store, identity)),
            bulk_in_ready: Notify::new(),
        }
    }

    /// The descriptors served.
    pub fn descriptors(&self) -> &DeviceDescriptors {
        self.standard.descriptors()
    }

    /// Number of 512-byte blocks.
    pub fn block_count(&self) -> u64 {
        self.transport().store().block_count()
    }

    /// Whether the disk is exported read-only.
    pub fn is_read_only(&self) -> bool {
        self.transport().store().is_read_only()
    }

    /// Makes every completed write durable (`fdatasync` for an image file).
    pub fn flush(&self) -> io::Result<()> {
        self.transport().flush()
    }

    /// Runs `f` on the store (tests, tools).
    pub fn with_store_mut<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(self.transport().store_mut())
    }

    fn transport(&self) -> MutexGuard<'_, BulkOnlyTransport<S>> {
        // A poisoned lock means a handler panicked mid-command; the machine state is still
        // well-formed, and the host recovers with a reset.
        self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush_logged(&self, why: &str) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, why, "storage: flushing the image failed");
        }
    }

    fn control(&self, urb: &Urb) -> Result<Completion, TransferError> {
        let setup = urb.setup;
        let result = if let Some((result, event)) = self.standard.handle(setup, &urb.data) {
            if event == StandardEvent::Reset {
                self.transport().reset();
            }
            result
        } else {
            self.class_request(setup)
        };
        // A halt set or cleared, or a reset, may change what a pending bulk IN gets.
        self.bulk_in_ready.notify_one();
        result
    }

    /// The class requests of BOT 1.0 §3.
    fn class_request(&self, setup: SetupPacket) -> Result<Completion, TransferError> {
        let to_us = setup.kind() == RequestKind::Class
            && setup.recipient() == Recipient::Interface
            && setup.index == u16::from(INTERFACE_NUMBER)
            && setup.value == 0;
        match setup.request {
            // §3.1: bmRequestType 0x21, wLength 0.
            bot::BULK_ONLY_MASS_STORAGE_RESET if to_us && !setup.is_in() && setup.length == 0 => {
                tracing::debug!("storage: Bulk-Only Mass Storage Reset");
                self.transport().reset();
                Ok(Completion::default())
            }
            // §3.2: bmRequestType 0xA1, wLength 1.
            bot::GET_MAX_LUN if to_us && setup.is_in() && setup.length >= 1 => Ok(
                Completion::data_in_limited(vec![bot::MAX_LUN], setup.length.into()),
            ),
            _ => {
                tracing::debug!(?setup, "storage: unsupported control request");
                Err(TransferError::Stall)
            }
        }
    }

    fn bulk_out(&self, urb: &Urb) -> Result<Completion, TransferError> {
        if self.standard.is_halted(BULK_OUT_ENDPOINT) {
            return Err(TransferError::Stall);
        }
        let mut transport = self.transport();
        let result = transport.handle_bulk_out(&urb.data);
        let awaiting_reset = transport.is_awaiting_reset();
        drop(transport);
        if awaiting_reset {
            // BOT §6.6.1: after a CBW that is not valid, both pipes STALL.
            self.standard.halt(BULK_IN_ENDPOINT);
            self.standard.halt(BULK_OUT_ENDPOINT);
        }
        self.bulk_in_ready.notify_one();
        match result {
            Ok(accepted) => Ok(Completion::data_out(accepted)),
            Err(Stalled) => {
                self.standard.halt(BULK_OUT_ENDPOINT);
                Err(TransferError::Stall)
            }
        }
    }

    async fn bulk_in(&self, urb: &Urb) -> Result<Completion, TransferError> {
        let max_len = usize::try_from(urb.length).unwrap_or(usize::MAX);
        loop {
            if self.standard.is_halted(BULK_IN_ENDPOINT) {
                return Err(TransferError::Stall);
            }
            // The transport gives data only when it returns it here, with no await in
            // between, so a dropped (unlinked) future loses nothing.
            let poll = self.transport().poll_bulk_in(max_len);
            match poll {
                BulkIn::Data(data) => return Ok(Completion::data_in(data)),
                BulkIn::Stall => {
                    self.standard.halt(BULK_IN_ENDPOINT);
                    return Err(TransferError::Stall);
                }
                // Stays pending until a CBW or a reset arrives (or the host unlinks it).
                // `notify_one` keeps a permit when nobody waits, so no wake-up is lost
                // between the poll above and this await.
                BulkIn::Pending => self.bulk_in_ready.notified().await,
            }
        }
    }
}

impl<S: BlockStore + Send + 'static> UsbDevice for MassStorage<S> {
    fn info(&self) -> DeviceInfo {
        self.standard.descriptors().info()
    }

    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion> {
        Box::pin(async move {
            let result = match urb.endpoint_address() {
                _ if urb.endpoint == 0 => self.control(&urb),
                BULK_OUT_ENDPOINT => self.bulk_out(&urb),
                BULK_IN_ENDPOINT => self.bulk_in(&urb).await,
                _ => {
                    tracing::debug!(
                        endpoint = urb.endpoint_address(),
                        "storage: no such endpoint"
                    );
                    Err(TransferError::Stall)
                }
            };
            result.into()
        })
    }

    fn attached(&self) -> Result<(), AttachError> {
        self.transport().reset();
        Ok(())
    }

    fn detached(&self) {
        self.transport().reset();
        self.flush_logged("detach");
    }

    fn shutdown(&self) {
        self.flush_logged("shutdown");
    }
}

impl<S: BlockStore> Drop for MassStorage<S> {
    /// Best effort: the server flushes on detach and shutdown already.
    fn drop(&mut self) {
        let transport = self.transport.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = transport.flush() {
            tracing::error!(error = %e, "storage: flushing the image on drop failed");
        }
    }
}

fn descriptors(identity: &Identity) -> DeviceDescriptors {
    let bulk = |address| Endpoint {
        address,
        transfer: TransferType::Bulk,
        max_packet_size: BULK_MAX_PACKET_SIZE,
        interval: 0,
    };
    DeviceDescriptors {
        speed: Speed::High,
        usb_version: 0x0200,
        // Class defined at the interface.
        class: 0,
        subclass: 0,
        protocol: 0,
        max_packet_size0: 64,
        vendor_id: VENDOR_ID,
        product_id: PRODUCT_ID,
        device_version: DEVICE_VERSION,
        manufacturer: identity.vendor.clone(),
        product: identity.product.clone(),
        serial: identity.serial.clone(),
        configuration_value: 1,
        configuration_attributes: 0,
        max_power: 50, // 100 mA
        configuration_extra: Vec::new(),
        interfaces: vec![Interface {
            number: INTERFACE_NUMBER,
            alternate: 0,
            class: CLASS_MASS_STORAGE,
            subclass: SUBCLASS_SCSI,
            protocol: PROTOCOL_BULK_ONLY,
            string: 0,
            class_descriptors: Vec::new(),
            endpoints: vec![bulk(BULK_IN_ENDPOINT), bulk(BULK_OUT_ENDPOINT)],
        }],
        extra_strings: Vec::new(),
    }
}
