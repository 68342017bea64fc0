//! Fuzz target `frame`: feeds each input to `runledger::fuzzing::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::frame(data));
