//! Manifests: YAML or JSON files in the Kubernetes shape (`apiVersion`, `kind`,
//! `metadata`, `spec`), several documents per file. Every problem is reported with the
//! document it is in and the path of the field.

use flotilla_api::kinds::{self, Kind};
use flotilla_proto::api::object::Kind as O;
use serde::Deserialize;
use serde_json::Value;

use crate::CtlError;

/// Parses every document of `text` (from `source`, for messages) into objects.
pub fn parse(source: &str, text: &str) -> Result<Vec<O>, CtlError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{source}, document {}", i + 1);
        let v = Value::deserialize(doc).map_err(|e| CtlError::Manifest(format!("{at}: not valid YAML/JSON: {e}")))?;
        if v.is_null() {
            continue; // an empty document (`---` at the end)
        }
        out.push(object(&at, v)?);
    }
    if out.is_empty() {
        return Err(CtlError::Manifest(format!("{source}: no objects in it")));
    }
    Ok(out)
}

/// One document → one object.
pub fn object(at: &str, v: Value) -> Result<O, CtlError> {
    let Value::Object(mut map) = v else {
        return Err(CtlError::Manifest(format!("{at}: a manifest must be a mapping with apiVersion and kind")));
    };
    let kind_name = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(other) => return Err(CtlError::Manifest(format!("{at}: kind must be a string, not {other}"))),
        None => return Err(CtlError::Manifest(format!("{at}: kind is missing"))),
    };
    let kind = Kind::parse(&kind_name).map_err(|e| CtlError::Manifest(format!("{at}: {e}")))?;
    match map.remove("apiVersion") {
        Some(Value::String(v)) if v == kind.api_version() => {}
        Some(Value::String(v)) => {
            return Err(CtlError::Manifest(format!(
                "{at}: apiVersion {v:?} is wrong for {kind_name}; use {:?}",
                kind.api_version()
            )))
        }
        _ => return Err(CtlError::Manifest(format!("{at}: apiVersion is missing (use {:?})", kind.api_version()))),
    }
    kinds::from_json(kind, Value::Object(map)).map_err(|e| CtlError::Manifest(format!("{at} ({kind_name}): {e}")))
}

/// The manifest form of an object: apiVersion and kind, then its fields.
pub fn to_value(o: &O) -> Value {
    let kind = Kind::of(o);
    let mut map = serde_json::Map::new();
    map.insert("apiVersion".into(), Value::String(kind.api_version().into()));
    map.insert("kind".into(), Value::String(kind.name().into()));
    if let Value::Object(fields) = kinds::to_json(o) {
        map.extend(fields);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_parse_in_order() {
        let text =
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: apps/v1\nkind: Deployment\n\
                    metadata:\n  name: web\n  namespace: shop\nspec:\n  replicas: 2\n---\n";
        let objs = parse("m.yaml", text).expect("parse");
        assert_eq!(objs.len(), 2);
        assert_eq!(Kind::of(&objs[1]), Kind::Deployment);
    }

    #[test]
    fn bad_manifests_name_the_problem() {
        for (text, want) in [
            ("kind: Pod\nmetadata: {name: x}\n", "apiVersion is missing"),
            ("apiVersion: apps/v1\nkind: Pod\n", "apiVersion \"apps/v1\" is wrong for Pod"),
            ("apiVersion: v1\nkind: Gadget\n", "unknown kind \"Gadget\""),
            ("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: c\n    imag: x\n", "spec.containers[0].imag"),
            ("apiVersion: v1\nkind: Pod\nspec:\n  restartPolicy: [a]\n", "spec.restartPolicy"),
            ("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n", "not valid YAML"),
            ("- a\n- b\n", "must be a mapping"),
            ("", "no objects"),
        ] {
            let e = parse("m.yaml", text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("m.yaml"), "names the file: {e}");
        }
    }

    #[test]
    fn manifest_form_round_trips() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
        let o = parse("s.yaml", text).expect("parse").remove(0);
        let back = object("again", to_value(&o)).expect("again");
        assert_eq!(back, o);
    }
}
