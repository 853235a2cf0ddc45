//! The resource API's objects from protobuf bytes (every kind, wrapped objects, fences)
//! and, when the bytes are JSON, from JSON: defaulted and validated as a create takes them.
#![no_main]

#[path = "../../crates/flotilla/tests/decoders/mod.rs"]
mod decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decoders::protobuf_objects(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        decoders::json_objects(&v);
    }
});
