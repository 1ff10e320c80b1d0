//! Fuzz target: see `xcache::fuzzing::template_params` for the properties checked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xcache::fuzzing::template_params(data));
