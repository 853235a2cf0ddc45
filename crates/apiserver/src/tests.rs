//! Property test of the JSON merge patch (RFC 7386) the registry applies to patches.

use proptest::prelude::*;
use serde_json::Value;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-c]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn without_nulls(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => m.values().all(without_nulls),
        _ => true,
    }
}

proptest! {
    /// RFC 7386 laws: an empty patch changes nothing; a patch applied twice is the same as
    /// once; a patch without nulls leaves every key it names equal to the patch's value
    /// (for object values, recursively merged); a null removes its key.
    #[test]
    fn merge_patch_laws(doc in json(), patch in json()) {
        let mut d = doc.clone();
        json_patch::merge(&mut d, &Value::Object(Default::default()));
        if doc.is_object() {
            prop_assert_eq!(&d, &doc);
        }
        let mut once = doc.clone();
        json_patch::merge(&mut once, &patch);
        let mut twice = once.clone();
        json_patch::merge(&mut twice, &patch);
        prop_assert_eq!(&twice, &once);
        if let (Value::Object(p), Value::Object(r)) = (&patch, &once) {
            for (k, v) in p {
                if v.is_null() {
                    prop_assert!(!r.contains_key(k), "null removes {}", k);
                } else if !v.is_object() && without_nulls(v) {
                    prop_assert_eq!(r.get(k), Some(v));
                }
            }
        } else if !patch.is_object() {
            prop_assert_eq!(&once, &patch, "a non-object patch replaces the document");
        }
    }

}
