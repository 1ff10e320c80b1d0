//! Fuzz target: see `xcache::fuzzing::resp` for the properties checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xcache::fuzzing::resp(data));
