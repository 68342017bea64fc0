//! Fuzz target `verify_export`: feeds each input to `runledger::fuzzing::verify_export_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::verify_export_file(data));
