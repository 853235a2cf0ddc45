//! The etcd API's requests (Range, Put, DeleteRange, Txn) from protobuf bytes, validated
//! as the services take them.
#![no_main]

#[path = "../../crates/flotilla/tests/decoders/mod.rs"]
mod decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::etcd_requests(data));
