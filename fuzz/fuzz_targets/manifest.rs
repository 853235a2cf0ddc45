//! flotctl's manifest parser and the label and field selector parsers, on any text.
#![no_main]

#[path = "../../crates/flotilla/tests/decoders/mod.rs"]
mod decoders;

libfuzzer_sys::fuzz_target!(|text: &str| {
    decoders::manifest(text);
    decoders::selectors(text);
});
