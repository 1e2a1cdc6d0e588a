//! Feeds arbitrary bytes to the usbredir codec (both roles, every capability set) and to the
//! usb-host state machine as if a guest sent them: nothing may panic, and whatever decodes
//! must encode back to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use periwire_wire::usbredir::fuzzing;

fuzz_target!(|data: &[u8]| fuzzing::exercise(data));
