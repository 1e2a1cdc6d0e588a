//! periwire's benchmark: its USB/IP server against the `usbip` crate's on the same work,
//! side by side in one run, with the machine's loopback TCP as the ceiling and a Linux guest
//! (vhci-hcd + usb-storage) reading and writing periwire's virtual disk.
//!
//! The command is `cargo bench -p periwire-bench --bench compare` (or `crates/periwire-bench/run`,
//! which first installs what the guest part needs). This library holds everything but the
//! peer, which is a dev-dependency: [`client`] (the one load generator every server faces),
//! [`target`] (the servers, each on its own runtime), [`loopback`] (the ceiling), [`bench`]
//! (rows, rounds, medians, the table), [`guest`] (the disk through a real kernel) and
//! [`passthrough`] (a guest's stick through periwire's passthrough against the kernel's).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod guest;
pub mod loopback;
pub mod passthrough;
pub mod target;
