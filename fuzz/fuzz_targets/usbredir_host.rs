//! libFuzzer target: [`periwire_fuzz::usbredir_host`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::usbredir_host(data));
