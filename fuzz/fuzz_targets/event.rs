//! Fuzz target `event`: feeds each input to `runledger::fuzzing::event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::event(data));
