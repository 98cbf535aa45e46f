//! libFuzzer entry point; the input type and the properties are in `switchyard_fuzz::registry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_fuzz::registry::check(data));
