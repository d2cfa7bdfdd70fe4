//! See `flotilla_shared::fuzzing::agent_bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_shared::fuzzing::agent_bodies(data));
