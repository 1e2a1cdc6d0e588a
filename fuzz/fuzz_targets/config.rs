//! libFuzzer target: [`periwire_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::config(data));
