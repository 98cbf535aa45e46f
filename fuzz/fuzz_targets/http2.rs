//! libFuzzer entry point; the input types and the properties are in `switchyard_fuzz::http2`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_fuzz::http2::check(data));
