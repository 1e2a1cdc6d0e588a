//! The [`UsbDevice`] trait and the URB types it carries.

use std::future::Future;
use std::pin::Pin;

use crate::SetupPacket;

/// The speed a device runs at. Each wire protocol maps it to its own numbering (USB/IP uses
/// Linux `enum usb_device_speed`, usbredir its own), so none of them leaks into the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Speed {
    /// Not known (a host device whose OS does not say).
    Unknown,
    /// Low speed, 1.5 Mbit/s.
    Low,
    /// Full speed, 12 Mbit/s.
    Full,
    /// High speed, 480 Mbit/s.
    High,
    /// Wireless USB.
    Wireless,
    /// SuperSpeed, 5 Gbit/s.
    Super,
    /// SuperSpeed+, 10 Gbit/s and up.
    SuperPlus,
}

impl Speed {
    /// Short human-readable name, as `lsusb` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Low => "1.5 Mb/s",
            Self::Full => "12 Mb/s",
            Self::High => "480 Mb/s",
            Self::Wireless => "wireless",
            Self::Super => "5 Gb/s",
            Self::SuperPlus => "10 Gb/s",
        }
    }
}

/// The direction of a transfer's data stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

/// The class triple of one interface (alternate setting 0), as device lists show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceClass {
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
}

/// One packet of an isochronous transfer: where it lies in the transfer buffer, and (in a
/// completion) what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoPacket {
    /// Offset of the packet in the transfer buffer.
    pub offset: u32,
    /// Length requested.
    pub length: u32,
    /// Length transferred.
    pub actual_length: u32,
    /// The packet's outcome; a submitted packet carries `Ok(())`.
    pub status: Result<(), TransferError>,
}

/// A boxed, sendable future: what [`UsbDevice::submit`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One USB Request Block as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urb {
    /// Endpoint number, 0..=15 (0 is the default control pipe).
    pub endpoint: u8,
    /// Direction of the data stage.
    pub direction: Direction,
    /// The SETUP packet (control transfers on endpoint 0 only).
    pub setup: SetupPacket,
    /// Linux `URB_*` transfer flags as the client sent them.
    pub transfer_flags: u32,
    /// Bytes asked for (IN) or carried in `data` (OUT).
    pub length: u32,
    /// OUT payload; empty for IN.
    pub data: Vec<u8>,
    /// ISO packet descriptors; empty for other transfer types.
    pub iso_packets: Vec<IsoPacket>,
    /// ISO start frame.
    pub start_frame: i32,
    /// Polling interval the client asked for.
    pub interval: i32,
}

impl Urb {
    /// The endpoint address: number with bit 7 set for IN.
    pub fn endpoint_address(&self) -> u8 {
        match self.direction {
            Direction::In => self.endpoint | 0x80,
            Direction::Out => self.endpoint,
        }
    }
}

/// A successfully completed URB.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// IN payload, at most the length asked for. Empty for OUT.
    pub data: Vec<u8>,
    /// Bytes transferred: `data.len()` for IN, bytes consumed for OUT.
    pub actual_length: u32,
    /// ISO packet results, one per submitted packet.
    pub iso_packets: Vec<IsoPacket>,
    /// ISO start frame.
    pub start_frame: i32,
    /// ISO packets that failed.
    pub error_count: u32,
}

impl Completion {
    /// An IN completion carrying `data`.
    pub fn data_in(data: Vec<u8>) -> Self {
        let actual_length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Self {
            data,
            actual_length,
            ..Self::default()
        }
    }

    /// An OUT completion that consumed `len` bytes.
    pub fn data_out(len: usize) -> Self {
        Self {
            actual_length: u32::try_from(len).unwrap_or(u32::MAX),
            ..Self::default()
        }
    }

    /// An IN completion of `data` cut to the `limit` the host asked for.
    pub fn data_in_limited(mut data: Vec<u8>, limit: u32) -> Self {
        data.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Self::data_in(data)
    }
}

/// Why a URB failed. Each wire protocol maps it to its own status codes (USB/IP to negative
/// Linux errnos); passthrough backends map their OS errors into this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The endpoint stalled (or the control request is not supported).
    #[error("endpoint stalled")]
    Stall,
    /// The URB was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The device is gone.
    #[error("device disconnected")]
    Disconnected,
    /// The device sent more than asked for.
    #[error("babble / overflow")]
    Overflow,
    /// A low-level protocol error (CRC, bit stuffing, ...).
    #[error("protocol error")]
    Protocol,
    /// The device did not answer in time.
    #[error("timed out")]
    Timeout,
    /// Any other failure.
    #[error("transfer fault")]
    Fault,
}

/// Why a device cannot be imported right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AttachError(pub String);

/// What a URB comes to.
pub type UrbResult = Result<Completion, TransferError>;

/// What the device list tells about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Speed the device runs at.
    pub speed: Speed,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bcdDevice.
    pub device_version: u16,
    /// bDeviceClass.
    pub class: u8,
    /// bDeviceSubClass.
    pub subclass: u8,
    /// bDeviceProtocol.
    pub protocol: u8,
    /// bConfigurationValue of the configuration in use (or the first one).
    pub configuration_value: u8,
    /// bNumConfigurations.
    pub num_configurations: u8,
    /// Interfaces of that configuration (alternate setting 0).
    pub interfaces: Vec<InterfaceClass>,
}

/// A USB device that periwire can export.
///
/// The server calls [`submit`](Self::submit) once per URB. For one endpoint and direction,
/// it awaits each future before submitting the next, so a device sees an endpoint's URBs one
/// at a time and in order; futures of different endpoints run concurrently. Dropping a future
/// cancels its URB, so futures must be cancel-safe: data a dropped IN future had not yet
/// returned stays queued for the next one.
pub trait UsbDevice: Send + Sync + 'static {
    /// What the device list shows.
    fn info(&self) -> DeviceInfo;

    /// Whether the device is there to be imported. The device list leaves out one that is
    /// not, and an import of it is refused as no such device: a host device unplugged, or not
    /// yet plugged in. Virtual devices are always there.
    fn present(&self) -> bool {
        true
    }

    /// Carries out one URB.
    fn submit(&self, urb: Urb) -> BoxFuture<'_, UrbResult>;

    /// A client is importing the device. An error refuses the import (the client is told the
    /// device is in an error state) and the device stays free; a passthrough device fails
    /// here when it cannot take the real device from its local drivers.
    fn attached(&self) -> Result<(), AttachError> {
        Ok(())
    }

    /// Resolves when the device has gone away for good while imported (a host device
    /// unplugged), even if no URB is in flight to notice it. The server then closes the
    /// client's connection, so its port detaches, as usbip-host does. Virtual devices never
    /// go away: the default never resolves.
    fn gone(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// The client has released the device (detach or disconnect): pending URBs have already
    /// been dropped. Storage devices make their writes durable here.
    fn detached(&self) {}

    /// The server is shutting down: make everything durable.
    fn shutdown(&self) {
        self.detached();
    }
}
