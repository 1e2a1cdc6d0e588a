//! Isochronous transfers where there is no usbfs: none. A device with isochronous
//! interfaces cannot be imported (opening the handle fails).

use std::path::Path;

use periwire_usb::{Completion, TransferError, Urb};

/// Stands for the usbfs handle of Linux; never opens.
#[derive(Debug)]
pub(crate) struct IsoInterfaces;

impl IsoInterfaces {
    pub(crate) fn open(_node: &Path) -> std::io::Result<Self> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    pub(crate) fn claim(&self, _number: u8) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    pub(crate) fn holds(&self, _number: u8) -> bool {
        false
    }
    pub(crate) fn numbers(&self) -> Vec<u8> {
        Vec::new()
    }
    pub(crate) fn set_interface(&self, _number: u8, _alternate: u8) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    pub(crate) fn release(&self) {}
    pub(crate) async fn transfer(&self, _urb: &Urb) -> Completion {
        TransferError::Fault.into()
    }
}
