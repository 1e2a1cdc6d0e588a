//! The tokio runtime around `periwire-hci`: the two media an emulated controller can be
//! attached to (one shared simulated radio per process, or the host's Bluetooth stack), and
//! the transports that each drive one controller (H4 over TCP and Unix sockets, a USB
//! dongle, `/dev/vhci`).
//!
//! The protocol logic lives in the sans-IO crate; this crate only reads bytes, feeds the state
//! machines, drains what they emit and arms their timers (quinn's split between quinn-proto
//! and quinn).
//!
//! - [`SharedRadio`]: the process-wide [`periwire_hci::Radio`] behind a mutex, with a timer task
//!   and a wake-up per adapter.
//! - [`host::HostMedium`]: the host link, on which each L2CAP channel a guest opens is one
//!   socket of the host kernel's Bluetooth stack, bound to one host controller.
//! - [`Medium`]: either of the two; [`AdapterHandle`]: one attached controller; packet-typed (`send_command`, `send_acl`,
//!   `recv`), so H4, a USB dongle or `/dev/vhci` can all drive it. Dropping it removes the
//!   adapter from the radio, which disconnects its links.
//! - [`serve_h4`]: H4 framing over any byte stream; [`H4Server`] accepts TCP or Unix
//!   clients and gives each its own adapter (what Bumble's `tcp-client:` transport connects to).
//! - [`usb_dongle::UsbDongle`]: an adapter presented as a USB Bluetooth dongle (a periwire
//!   `UsbDevice`), exported over USB/IP and bound by the guest's `btusb`.
//! - [`vhci::serve_vhci`]: an adapter registered with the local Linux kernel through
//!   `/dev/vhci`.

// Unsafe code only in `sys`, the HCI socket calls no crate offers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
mod bluez;
mod h4;
pub mod host;
mod shared;
#[allow(unsafe_code)]
mod sys;
pub mod usb_dongle;
pub mod vhci;

pub use adapter::{AdapterHandle, Medium};

pub use h4::{serve_h4, AdapterPlan, H4Server, ServeError};
pub use periwire_hci::{controller::ToHost, BdAddr, ControllerConfig};
pub use shared::SharedRadio;
