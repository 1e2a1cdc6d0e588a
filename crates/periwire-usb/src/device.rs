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

/// What became of a URB: its status together with what it moved, as a host controller
/// reports it. A URB can fail after moving data (a short IN that `URB_SHORT_NOT_OK`
/// forbade, a transfer that stalls partway), so the bytes and the status travel together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// `Ok(())`, or why the URB failed.
    pub status: Result<(), TransferError>,
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

impl Default for Completion {
    fn default() -> Self {
        Self {
            status: Ok(()),
            data: Vec::new(),
            actual_length: 0,
            iso_packets: Vec::new(),
            start_frame: 0,
            error_count: 0,
        }
    }
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

    /// A URB that failed with `error` before moving anything.
    pub fn failed(error: TransferError) -> Self {
        Self {
            status: Err(error),
            ..Self::default()
        }
    }

    /// This completion with `status` in place of its own, keeping what it moved.
    pub fn with_status(mut self, status: Result<(), TransferError>) -> Self {
        self.status = status;
        self
    }

    /// Whether the URB succeeded.
    pub fn is_ok(&self) -> bool {
        self.status.is_ok()
    }

    /// The completion if it succeeded, else its error (dropping any data it moved).
    pub fn into_result(self) -> Result<Self, TransferError> {
        match self.status {
            Ok(()) => Ok(self),
            Err(e) => Err(e),
        }
    }

    /// Applies Linux `URB_SHORT_NOT_OK` as a host controller does: an IN URB of `length`
    /// that `flags` forbid to be short and that came back short, and otherwise succeeded,
    /// fails with [`TransferError::ShortPacket`] and keeps its data.
    pub fn short_not_ok(self, direction: Direction, flags: u32, length: u32) -> Self {
        let short = direction == Direction::In
            && flags & URB_SHORT_NOT_OK != 0
            && self.iso_packets.is_empty()
            && self.actual_length < length;
        if short && self.status.is_ok() {
            self.with_status(Err(TransferError::ShortPacket))
        } else {
            self
        }
    }
}

impl From<TransferError> for Completion {
    fn from(error: TransferError) -> Self {
        Self::failed(error)
    }
}

/// For devices whose URBs either succeed or fail having moved nothing (every virtual device).
impl From<Result<Completion, TransferError>> for Completion {
    fn from(result: Result<Completion, TransferError>) -> Self {
        result.unwrap_or_else(Self::failed)
    }
}

/// Linux `URB_SHORT_NOT_OK`: a short IN transfer is an error.
pub const URB_SHORT_NOT_OK: u32 = 0x0001;

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
    /// An IN URB came back short and its `URB_SHORT_NOT_OK` flag forbade it (Linux
    /// EREMOTEIO); the completion still carries the data.
    #[error("short packet")]
    ShortPacket,
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
/// it runs at most [`queue_depth`](Self::queue_depth) futures at once (by default one, so a
/// device sees an endpoint's URBs one at a time), in submission order, and completes them in
/// that order; futures of different endpoints run concurrently. Dropping a future
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
    fn submit(&self, urb: Urb) -> BoxFuture<'_, Completion>;

    /// How many URBs of the endpoint `endpoint_address` (number, bit 7 set for IN) the
    /// device takes at once. The server keeps up to this many of that endpoint's futures
    /// running and completes them in submission order. A host device queues several in the
    /// OS, as a host controller does; the default, one at a time, keeps a virtual device
    /// simple.
    fn queue_depth(&self, endpoint_address: u8) -> usize {
        let _ = endpoint_address;
        1
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_in_that_short_not_ok_forbids_fails_with_its_data() {
        let done =
            Completion::data_in(vec![1, 2, 3]).short_not_ok(Direction::In, URB_SHORT_NOT_OK, 8);
        assert_eq!(done.status, Err(TransferError::ShortPacket));
        assert_eq!((done.data, done.actual_length), (vec![1, 2, 3], 3));
    }

    #[test]
    fn short_not_ok_leaves_full_ins_outs_and_unflagged_urbs_alone() {
        let full = Completion::data_in(vec![0; 8]);
        assert_eq!(
            full.clone()
                .short_not_ok(Direction::In, URB_SHORT_NOT_OK, 8),
            full
        );
        let short = Completion::data_in(vec![0; 3]);
        assert_eq!(short.clone().short_not_ok(Direction::In, 0, 8), short);
        let out = Completion::data_out(3);
        assert_eq!(
            out.clone()
                .short_not_ok(Direction::Out, URB_SHORT_NOT_OK, 8),
            out
        );
        // An earlier failure is the one reported.
        let stalled = Completion::data_in(vec![0; 3]).with_status(Err(TransferError::Stall));
        assert_eq!(
            stalled
                .clone()
                .short_not_ok(Direction::In, URB_SHORT_NOT_OK, 8),
            stalled
        );
    }

    #[test]
    fn a_partial_out_keeps_what_it_moved() {
        let done = Completion::data_out(512).with_status(Err(TransferError::Stall));
        assert!(!done.is_ok());
        assert_eq!(done.actual_length, 512);
        assert_eq!(done.into_result(), Err(TransferError::Stall));
        let ok: Completion = Ok(Completion::data_out(4)).into();
        assert_eq!(ok.into_result(), Ok(Completion::data_out(4)));
    }
}
