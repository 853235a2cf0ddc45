//! Fuzzing of every decoder the network reaches (issue 16), as proptests over arbitrary
//! input so that CI runs them (briefly) on every change; what each decoder does with an
//! input is in `decoders/` (shared with the cargo-fuzz targets in `fuzz/`, for longer
//! runs). Each must answer with an error, never panic. A finding is kept as a
//! regression test below (and proptest's own regression file).
//!
//! Longer runs: `PROPTEST_CASES=100000 cargo test -p flotilla --test fuzz`, or
//! `fuzz/run` (cargo-fuzz; docs/security.md).

mod decoders;

use proptest::prelude::*;

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
        decoders::protobuf_objects(&bytes);
    }

    /// Manifests and merge patches: JSON of the API's shape, for every kind.
    #[test]
    fn objects_from_arbitrary_json_never_panic(v in json()) {
        decoders::json_objects(&v);
    }

    /// flotctl's manifest parser, on any text and on YAML-looking text.
    #[test]
    fn the_manifest_parser_never_panics(text in ".{0,300}", v in json()) {
        decoders::manifest(&text);
        decoders::manifest(&serde_yaml::to_string(&v).unwrap_or_default());
    }

    /// Label and field selectors as requests carry them.
    #[test]
    fn selectors_never_panic(s in ".{0,80}", t in "[a-z.=!, ()in]{0,40}") {
        decoders::selectors(&s);
        decoders::selectors(&t);
    }

    /// The etcd API's requests, from arbitrary bytes.
    #[test]
    fn etcd_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decoders::etcd_requests(&bytes);
    }

    /// The peer protocol's log entries (what a peer sends in AppendEntries) and etcd key
    /// ranges.
    #[test]
    fn log_entries_and_key_ranges_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), end in prop::collection::vec(any::<u8>(), 0..4)) {
        decoders::peer_entries(&bytes, &end);
    }

    /// A snapshot file, whole or damaged, from its header on.
    #[test]
    fn the_snapshot_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decoders::snapshot(&bytes);
    }
}
