//! Feeds the fuzzer's bytes to `rewire::fuzzing::interpolate` (see there for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rewire::fuzzing::interpolate(data));
