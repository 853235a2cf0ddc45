//! The snapshot reader on a whole or damaged file, from its header on.
#![no_main]

#[path = "../../crates/flotilla/tests/decoders/mod.rs"]
mod decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::snapshot(data));
