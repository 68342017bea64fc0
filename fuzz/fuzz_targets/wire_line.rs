//! Fuzz target `wire_line`: feeds each input to `runledger::fuzzing::wire_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::wire_line(data));
