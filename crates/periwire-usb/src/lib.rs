//! The USB device model of periwire.
//!
//! Every device periwire exports — virtual now, host passthrough later — implements one trait,
//! [`UsbDevice`]: it describes itself for the device list and carries out URBs. The server
//! calls [`UsbDevice::submit`] once per URB, in submission order per endpoint, and runs the
//! returned futures of different endpoints concurrently, so an interrupt IN that waits for a
//! key press never holds up a bulk transfer. Cancelling a URB is dropping its future.
//!
//! Virtual devices are built from [`descriptor`] builders and share the standard-request
//! handling of [`standard`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod descriptor;
pub mod device;
pub mod setup;
pub mod standard;

pub use device::{
    AttachError, BoxFuture, Completion, DeviceInfo, Direction, InterfaceClass, IsoPacket, Speed,
    TransferError, Urb, UsbDevice, URB_SHORT_NOT_OK,
};
pub use setup::SetupPacket;

pub mod cdc_acm;
pub mod hid;
pub mod source_sink;
pub mod storage;
