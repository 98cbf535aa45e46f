//! libFuzzer entry point; the input type and the properties are in `switchyard_fuzz::response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_fuzz::response::check(data));
