//! libFuzzer target: [`periwire_fuzz::usbip_op`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::usbip_op(data));
