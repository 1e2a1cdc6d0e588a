//! Sans-IO wire codecs for periwire.
//!
//! Every codec here parses from `&[u8]` and emits into a caller-owned buffer. Nothing here
//! does I/O, spawns tasks or reads the clock, so the same code serves the server, the client,
//! fuzzing and property tests. Every length read from the wire is checked before it is used.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod reader;
pub mod usb_descriptor;
pub mod usbip;
pub mod usbredir;

pub use reader::Reader;
