//! The machine's own USB devices, for periwire: list them, and pass one through over USB/IP.
//!
//! [`HostDevice`] implements [`periwire_usb::UsbDevice`] over [nusb], so a real device travels
//! the same server path as the virtual ones. While a client has it imported, periwire holds
//! every interface of the device, taken from its local drivers; when the client lets go, the
//! interfaces are released and the local drivers are asked to bind again, as `usbip unbind`
//! would. Linux is the platform this is built and tested on (usbfs under `/dev/bus/usb`).
//!
//! Isochronous endpoints are carried on Linux through a small module of periwire's own over
//! usbfs (nusb 0.2 has no isochronous transfers): the interfaces that have them are claimed
//! on a usbfs handle of periwire's, the others through nusb.

mod endpoint;
mod list;
mod passthrough;
#[cfg(target_os = "linux")]
mod usbfs;
#[cfg(not(target_os = "linux"))]
#[path = "usbfs_unsupported.rs"]
mod usbfs;
mod watch;

pub use list::{list_devices, HostDeviceSummary};
pub use passthrough::HostDevice;
pub use watch::DeviceWatch;

/// Why the host's devices cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The system's device list could not be read.
    #[error("listing USB devices: {0}")]
    List(#[source] std::io::Error),
}

/// Whether this machine has USB at all. A kernel without USB support has no
/// `/sys/bus/usb`; that is no devices, not a failure to list them.
fn usb_present() -> bool {
    !cfg!(target_os = "linux") || std::path::Path::new("/sys/bus/usb/devices").exists()
}

/// The periwire speed of a speed as nusb reports it.
fn speed(speed: Option<nusb::Speed>) -> periwire_usb::device::Speed {
    use periwire_usb::device::Speed;
    match speed {
        Some(nusb::Speed::Low) => Speed::Low,
        Some(nusb::Speed::Full) => Speed::Full,
        Some(nusb::Speed::High) => Speed::High,
        Some(nusb::Speed::Super) => Speed::Super,
        Some(nusb::Speed::SuperPlus) => Speed::SuperPlus,
        _ => Speed::Unknown,
    }
}

/// The bus id of a device (`1-1`, `3-2.4`): the name of its sysfs directory, which is what
/// `usbip list -l` and `usbip bind -b` use.
fn busid(info: &nusb::DeviceInfo) -> Option<String> {
    info.sysfs_path()
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
}
