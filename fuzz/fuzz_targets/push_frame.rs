//! See `flotilla_shared::fuzzing::push_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_shared::fuzzing::push_frame(data));
