//! Fuzz target `redis_envelope`: feeds each input to `runledger::fuzzing::redis_envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| runledger::fuzzing::redis_envelope(data));
