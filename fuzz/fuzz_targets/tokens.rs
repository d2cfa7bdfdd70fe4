//! See `flotilla_shared::fuzzing::tokens`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_shared::fuzzing::tokens(data));
