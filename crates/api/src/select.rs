//! Selectors applied to objects: a list or watch request's label and field selectors, and
//! a ReplicaSet's or Deployment's structured selector; which nodes a pod may run on
//! (nodeSelector, node affinity, taints and tolerations).

use std::collections::BTreeMap;

use flotilla_core::selector::{FieldSelector, LabelSelector, Requirement};
use flotilla_proto::api::{self as pb, object::Kind as O};

use crate::kinds::{meta, Kind};
use crate::Error;

/// A structured selector (`matchLabels` + `matchExpressions`) as requirements.
pub fn from_proto(s: &pb::LabelSelector) -> Result<LabelSelector, String> {
    let mut requirements: Vec<Requirement> =
        s.match_labels.iter().map(|(k, v)| Requirement::Equals(k.clone(), v.clone())).collect();
    for (i, e) in s.match_expressions.iter().enumerate() {
        let r = match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), e.values.clone()),
            "NotIn" => Requirement::NotIn(e.key.clone(), e.values.clone()),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => {
                return Err(format!(
                    "matchExpressions[{i}].operator: {other:?} is not In, NotIn, Exists or DoesNotExist"
                ))
            }
        };
        r.validate().map_err(|err| format!("matchExpressions[{i}]: {err}"))?;
        requirements.push(r);
    }
    for r in &requirements {
        r.validate()?;
    }
    Ok(LabelSelector { requirements })
}

/// The value of a selectable field of an object.
fn field(o: &O, name: &str) -> Option<String> {
    let m = meta(o);
    match name {
        "metadata.name" => return Some(m.name.clone()),
        "metadata.namespace" => return Some(m.namespace.clone()),
        _ => {}
    }
    match o {
        O::Pod(p) => match name {
            "spec.nodeName" => p.spec.as_ref().map(|s| s.node_name.clone()),
            "status.phase" => p.status.as_ref().map(|s| s.phase.clone()),
            _ => None,
        },
        O::Node(n) if name == "spec.unschedulable" => {
            Some(n.spec.as_ref().is_some_and(|s| s.unschedulable).to_string())
        }
        O::Event(e) => match name {
            "involvedObject.name" => e.involved_object.as_ref().map(|i| i.name.clone()),
            "involvedObject.kind" => e.involved_object.as_ref().map(|i| i.kind.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A list or watch request's selectors, parsed and checked against the kind.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    /// Parses both selectors; an unknown field for the kind is refused.
    pub fn parse(kind: Kind, labels: &str, fields: &str) -> Result<Selectors, Error> {
        let labels = LabelSelector::parse(labels).map_err(Error::BadRequest)?;
        let fields = FieldSelector::parse(fields).map_err(Error::BadRequest)?;
        for r in &fields.requirements {
            if !kind.selectable_fields().contains(&r.field.as_str()) {
                return Err(Error::BadRequest(format!(
                    "field selector: {:?} is not a selectable field of {}; selectable: {}",
                    r.field,
                    kind.name(),
                    kind.selectable_fields().join(", ")
                )));
            }
        }
        Ok(Selectors { labels, fields })
    }

    /// Whether `o` is selected.
    pub fn matches(&self, o: &O) -> bool {
        self.labels.matches(&meta(o).labels) && self.fields.matches(|f| field(o, f))
    }

    /// Whether everything is selected.
    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.requirements.is_empty()
    }
}

/// Whether toleration `t` tolerates `taint` (key, value with Equal or any with Exists;
/// an empty key with Exists tolerates every taint; an empty effect every effect).
pub fn tolerates(t: &pb::Toleration, taint: &pb::Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    if t.key.is_empty() {
        return t.operator == "Exists";
    }
    if t.key != taint.key {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => true,
        _ => t.value == taint.value,
    }
}

/// Whether one requirement holds for `labels`.
pub fn requirement_matches(r: &pb::NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| r.values.contains(v)),
        "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) =
                (v.and_then(|v| v.parse::<i64>().ok()), r.values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether every requirement of a term holds (an empty term matches nothing, as in
/// Kubernetes).
pub fn term_matches(t: &pb::NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    !t.match_expressions.is_empty() && t.match_expressions.iter().all(|r| requirement_matches(r, labels))
}

/// Whether a pod with `spec` may run on a node with `labels`: its `nodeSelector` and its
/// required node affinity (terms ORed, requirements ANDed) hold.
pub fn node_selected(spec: &pb::PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = spec.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    selector_ok && required.is_none_or(|sel| sel.node_selector_terms.iter().any(|t| term_matches(t, labels)))
}
