//! The periwire runtime: tokio glue around the sans-IO codecs and device models.
//!
//! - [`server`]: the USB/IP server (operation phase, URB phase, caps, shutdown) over any
//!   byte stream.
//! - [`session`]: one claimed device and its endpoint queues, for any wire protocol.
//! - [`usbip_map`]: the USB model's types in USB/IP's encodings.
//! - [`usbredir`]: the usbredir server (periwire as QEMU `usb-redir`'s usb-host), one device
//!   per listener, over any byte stream.
//! - [`usbredir_map`]: the USB model's types in usbredir's encodings.
//! - [`urb_stream`]: the URB phase's reads and writes, with a payload copied once.
//! - [`registry`]: the exported devices and who holds each.
//! - [`client`]: a USB/IP client for listing and importing devices.
//! - [`stats`]: what each import and each device has moved.
//! - [`secure`]: identities, pins, mutual TLS and the plain-USB/IP policy.
//! - [`front_door`]: one port for TLS and plain USB/IP, told apart by the first byte; the
//!   access rules (plain_allow, allow lists) of every listener.
//! - [`accept`]: the accept loop every listener runs, with an orderly stop.
//! - [`serial`]: bridges between a virtual serial port and a host TCP socket.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod client;
pub mod framing;
pub mod front_door;
pub mod registry;
pub mod secure;
pub mod serial;
pub mod server;
pub mod session;
pub mod stats;
pub mod urb_stream;
pub mod usbip_map;
pub mod usbredir;
pub mod usbredir_map;

pub use registry::{ClaimInfo, DeviceTotals, Export, Peer, Registry};
pub use server::{serve, serve_stream, serve_stream_gated, ServerConfig};
pub use session::DeviceSession;
