//! The peer protocol's log entries (AppendEntries as a peer sends it) and etcd key ranges:
//! the first byte says how many of the last bytes are the range's end.
#![no_main]

#[path = "../../crates/flotilla/tests/decoders/mod.rs"]
mod decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(b % 5)).min(data.len().saturating_sub(1));
    let (bytes, end) = data.get(1..).unwrap_or_default().split_at(data.len().saturating_sub(1 + split));
    decoders::peer_entries(bytes, end);
});
