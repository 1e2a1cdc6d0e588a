//! libFuzzer target: [`periwire_fuzz::scsi`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| periwire_fuzz::scsi(data));
