//! Fuzz target: see `xcache::fuzzing::metadata` for the properties checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xcache::fuzzing::metadata(data));
