//! libFuzzer target: [`periwire_fuzz::front_door`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::front_door(data));
