//! Fuzz target `workload`: feeds each input to `runledger::fuzzing::workload`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::workload(data));
