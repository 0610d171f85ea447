#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = apilb::testing::fuzzing::readyz_answer(data);
});
