#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apilb::testing::fuzzing::discovery_answer(data));
