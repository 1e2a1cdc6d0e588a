//! Sans-IO Bluetooth HCI for periwire.
//!
//! Three layers, none of which does I/O, spawns tasks or reads the clock:
//!
//! - [`wire`]: HCI packets (Core Specification v5.4, Vol 4, Part E, 5.4) as zero-copy views and
//!   typed `Repr`s, the command and event parameter codecs (Vol 4, Part E, 7), and H4 stream
//!   framing (Vol 4, Part A) with resynchronisation after garbage.
//! - [`controller`]: one emulated controller per virtual adapter. Commands are dispatched by
//!   a handler table keyed by opcode; the Supported Commands mask and the feature bits are
//!   derived from that table. Input comes in through `handle_*` methods, output leaves through
//!   `poll_*` methods, and time is passed in.
//! - [`medium`]: the vocabulary between a controller and the medium it is on, below both.
//! - [`radio`]: the simulated radio all controllers of a process share. It routes link-layer
//!   messages between controllers (inquiry, paging, advertising, connections, ACL, pairing).
//! - [`host_link`]: the other medium, where every remote is one the host's Bluetooth stack
//!   reaches: it ends the guest's L2CAP signalling and asks its runtime for one host socket
//!   per channel ([`l2cap`] is its codec).
//!
//! The controller API is packet-typed, not byte-stream-typed: an H4 transport, a USB dongle
//! (commands on EP0, events on interrupt IN, ACL on bulk) or `/dev/vhci` all drive it the same
//! way.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod controller;
pub mod host_link;
pub mod l2cap;
pub mod medium;
pub mod radio;
mod rng;
pub mod wire;

pub use controller::{Controller, ControllerConfig, ToHost};
pub use medium::AdapterId;
pub use radio::Radio;
pub use wire::{BdAddr, HciCommand, HciEvent};
