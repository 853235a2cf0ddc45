//! Fuzzing of every decoder the network reaches (issue 16), as proptests over arbitrary
//! input so that CI runs them (briefly) on every change: the resource API's objects from
//! protobuf and from JSON (through defaults and validation, as a create takes them),
//! selectors and fences from requests, the manifest parser, the peer protocol's log
//! entries, and the snapshot reader. Each must answer with an error, never panic. A
//! finding is kept as a regression test below (and proptest's own regression file).
//!
//! Longer runs: `PROPTEST_CASES=100000 cargo test -p flotilla --test fuzz`.

use flotilla_api::kinds::{self, Kind};
use flotilla_proto::api as pb;
use proptest::prelude::*;
use prost::Message;

/// What a create does with a decoded object: defaults, then validation. Neither may
/// panic, whatever the object holds.
fn admit(mut o: pb::object::Kind) {
    flotilla_api::defaults::object(&mut o);
    let _ = flotilla_api::validate::object(&o);
    let _ = kinds::to_json(&o);
    let _ = kinds::spec_bytes(&o);
}

/// JSON shaped like manifests: objects with the field names of the API, nested.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
        "[0-9]{1,6}(m|Mi|Gi|%)?".prop_map(Value::String),
    ];
    const FIELDS: &[&str] = &[
        "metadata",
        "name",
        "namespace",
        "labels",
        "spec",
        "status",
        "containers",
        "image",
        "ports",
        "port",
        "targetPort",
        "replicas",
        "selector",
        "matchLabels",
        "template",
        "strategy",
        "rollingUpdate",
        "maxSurge",
        "resources",
        "limits",
        "cpu",
        "memory",
        "rules",
        "verbs",
        "resources",
        "subjects",
        "roleRef",
        "kind",
        "taints",
        "effect",
        "podCIDR",
        "clusterIP",
        "type",
        "command",
        "env",
        "value",
        "ownerReferences",
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    // 512 cases each in CI (a few seconds); PROPTEST_CASES for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Stored or sent protobuf bytes of any kind.
    #[test]
    fn objects_from_arbitrary_protobuf_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for kind in Kind::ALL {
            if let Ok(o) = kinds::decode(kind, &bytes) {
                admit(o);
            }
        }
        if let Ok(o) = pb::Object::decode(bytes.as_slice()) {
            if let Ok(o) = kinds::unwrap(Some(o)) {
                admit(o);
            }
        }
        if let Ok(r) = pb::UpdateRequest::decode(bytes.as_slice()) {
            let _ = flotilla_api::Fence::from_request(r.fence.as_ref());
        }
    }

    /// Manifests and merge patches: JSON of the API's shape, for every kind.
    #[test]
    fn objects_from_arbitrary_json_never_panic(v in json()) {
        for kind in Kind::ALL {
            if let Ok(o) = kinds::from_json(kind, v.clone()) {
                admit(o);
            }
        }
    }

    /// flotctl's manifest parser, on any text and on YAML-looking text.
    #[test]
    fn the_manifest_parser_never_panics(text in ".{0,300}", v in json()) {
        let _ = flotilla_ctl::manifest::parse("fuzz", &text);
        let yaml = serde_yaml::to_string(&v).unwrap_or_default();
        let _ = flotilla_ctl::manifest::parse("fuzz", &yaml);
        let _ = flotilla_ctl::manifest::parse("fuzz", &format!("apiVersion: v1\nkind: Pod\n{yaml}"));
    }

    /// Label and field selectors as requests carry them.
    #[test]
    fn selectors_never_panic(s in ".{0,80}", t in "[a-z.=!, ()in]{0,40}") {
        for x in [&s, &t] {
            let _ = flotilla_core::selector::LabelSelector::parse(x);
            let _ = flotilla_core::selector::FieldSelector::parse(x);
        }
    }

    /// The peer protocol's log entries (what a peer sends in AppendEntries) and etcd key
    /// ranges.
    #[test]
    fn log_entries_and_key_ranges_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), end in prop::collection::vec(any::<u8>(), 0..4)) {
        let _ = flotilla_store::codec::decode_entry(&bytes);
        if let Ok(req) = flotilla_proto::raft::AppendEntriesRequest::decode(bytes.as_slice()) {
            for e in req.entries {
                let _ = flotilla_store::codec::entry_from_pb(e);
            }
        }
        let r = flotilla_core::keys::KeyRange::from_etcd(&bytes, &end);
        let _ = r.contains(b"/registry/pods/default/web");
    }

    /// A snapshot file, whole or damaged, from its header on.
    #[test]
    fn the_snapshot_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = flotilla_store::state_machine::check_snapshot(&bytes);
        let mut with_header = b"FLOTSNAP1".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = flotilla_store::state_machine::check_snapshot(&with_header);
    }
}
