//! libFuzzer target: [`periwire_fuzz::hci_h4`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::hci_h4(data));
