//! The scheduling framework's plugins, in one descriptor table (as Kubernetes' scheduler
//! registers its in-tree plugins): filters say whether a pod may go on a node, and why not;
//! scores rank the nodes that may take it (0–100 each, times the plugin's weight).
//!
//! Filters: node ready and schedulable, `nodeName`, cpu/memory/pods requests against
//! allocatable minus what is placed, `nodeSelector` and required node affinity, taints
//! and tolerations, host ports. Scores: least allocated, balanced allocation, preferred
//! node affinity, `PreferNoSchedule` taints, and spreading one owner's pods across nodes
//! and zones.

use std::collections::{BTreeMap, HashMap};

use crate::cache::{Cache, NodeInfo, PodInfo};

/// Why a node cannot take a pod, in the words of the unschedulable message
/// ("3 Insufficient cpu").
pub type Reason = String;

/// A filter: may `pod` go on `node`?
pub trait Filter: Send + Sync {
    /// Err(reason) when it may not.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason>;
}

/// What scores may compute once per pod rather than once per node.
#[derive(Debug, Default)]
pub struct CycleState {
    /// Pods of the pod's owner per node (empty without an owner).
    pub owner_per_node: HashMap<String, u32>,
    /// Pods of the pod's owner per zone.
    pub owner_per_zone: HashMap<String, u32>,
}

impl CycleState {
    /// The state for scheduling `pod` in `cache`.
    pub fn new(pod: &PodInfo, cache: &Cache) -> CycleState {
        let mut s = CycleState::default();
        if let Some(counts) = pod.owner.as_deref().and_then(|o| cache.owner_counts(o)) {
            for (node, n) in counts {
                s.owner_per_node.insert(node.clone(), *n);
                if let Some(zone) = cache.nodes().get(node).and_then(|i| i.zone.clone()) {
                    *s.owner_per_zone.entry(zone).or_default() += n;
                }
            }
        }
        s
    }
}

/// A score: how good is `node` for `pod`?
pub trait Score: Send + Sync {
    /// A raw score for one node.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64;
    /// Turns the raw scores of the feasible nodes into 0–100 (by default: as they are,
    /// clamped).
    fn normalize(&self, scores: &mut [i64]) {
        for s in scores {
            *s = (*s).clamp(0, 100);
        }
    }
}

/// What a plugin is.
pub enum Plugin {
    /// A filter.
    Filter(Box<dyn Filter>),
    /// A score, with its default weight.
    Score(Box<dyn Score>, i64),
}

/// A plugin's entry in the table: its name (used in configuration) and constructor.
pub struct Descriptor {
    /// Name, as Kubernetes calls the plugin.
    pub name: &'static str,
    /// Builds it.
    pub new: fn() -> Plugin,
}

/// Every plugin, filters in the order they run (Kubernetes' order: a node is reported by
/// the first filter that refuses it, so a tainted node that is also full counts as
/// tainted).
pub const PLUGINS: &[Descriptor] = &[
    Descriptor { name: "NodeUnschedulable", new: || Plugin::Filter(Box::new(NodeUnschedulable)) },
    Descriptor { name: "NodeName", new: || Plugin::Filter(Box::new(NodeName)) },
    Descriptor { name: "TaintToleration", new: || Plugin::Filter(Box::new(TaintToleration)) },
    Descriptor { name: "NodeAffinity", new: || Plugin::Filter(Box::new(NodeAffinity)) },
    Descriptor { name: "NodePorts", new: || Plugin::Filter(Box::new(NodePorts)) },
    Descriptor { name: "NodeResourcesFit", new: || Plugin::Filter(Box::new(NodeResourcesFit)) },
    Descriptor { name: "NodeResourcesLeastAllocated", new: || Plugin::Score(Box::new(LeastAllocated), 1) },
    Descriptor { name: "NodeResourcesBalancedAllocation", new: || Plugin::Score(Box::new(BalancedAllocation), 1) },
    Descriptor { name: "NodeAffinityPreferred", new: || Plugin::Score(Box::new(PreferredAffinity), 2) },
    Descriptor { name: "TaintTolerationPreferNoSchedule", new: || Plugin::Score(Box::new(PreferNoSchedule), 3) },
    Descriptor { name: "SelectorSpread", new: || Plugin::Score(Box::new(Spread), 2) },
];

/// Filters that run, by name.
pub type Filters = Vec<(&'static str, Box<dyn Filter>)>;
/// Scores that run, by name, with their weights.
pub type Scores = Vec<(&'static str, Box<dyn Score>, i64)>;

/// The plugins a scheduler runs: every one in [`PLUGINS`] but those `disabled`, with score
/// weights overridden by `weights`. Unknown names are an error naming them.
pub fn build(disabled: &[String], weights: &BTreeMap<String, i64>) -> Result<(Filters, Scores), String> {
    for name in disabled.iter().chain(weights.keys()) {
        if !PLUGINS.iter().any(|d| d.name == name) {
            let known: Vec<&str> = PLUGINS.iter().map(|d| d.name).collect();
            return Err(format!("unknown scheduler plugin {name:?} (known: {})", known.join(", ")));
        }
    }
    let (mut filters, mut scores) = (Vec::new(), Vec::new());
    for d in PLUGINS.iter().filter(|d| !disabled.iter().any(|x| x == d.name)) {
        match (d.new)() {
            Plugin::Filter(f) => filters.push((d.name, f)),
            Plugin::Score(s, w) => {
                let w = weights.get(d.name).copied().unwrap_or(w);
                if w < 0 {
                    return Err(format!("scheduler plugin {} has a negative weight {w}", d.name));
                }
                if w > 0 {
                    scores.push((d.name, s, w));
                }
            }
        }
    }
    Ok((filters, scores))
}

// ---------------------------------------------------------------- filters

/// The node must be Ready and not cordoned (`spec.unschedulable`).
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if node.unschedulable {
            return Err("node(s) were unschedulable".into());
        }
        if !node.ready {
            return Err("node(s) were not ready".into());
        }
        Ok(())
    }
}

/// A pod that names a node goes only there.
pub struct NodeName;

impl Filter for NodeName {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let want = &pod.spec().node_name;
        if !want.is_empty() && *want != node.name {
            return Err("node(s) didn't match the requested node name".into());
        }
        Ok(())
    }
}

/// Requests must fit in allocatable minus what is already placed.
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let (a, used, want) = (node.allocatable, node.requested, pod.requests);
        if used.pods + want.pods > a.pods {
            return Err("Too many pods".into());
        }
        if want.cpu > 0 && used.cpu + want.cpu > a.cpu {
            return Err("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > a.memory {
            return Err("Insufficient memory".into());
        }
        Ok(())
    }
}

pub use flotilla_api::select::{requirement_matches, term_matches};

/// `nodeSelector` and required node affinity (terms ORed, requirements ANDed).
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        if flotilla_api::select::node_selected(pod.spec(), node.labels()) {
            Ok(())
        } else {
            Err("node(s) didn't match Pod's node affinity/selector".into())
        }
    }
}

pub use flotilla_api::select::tolerates;

/// `NoSchedule` and `NoExecute` taints must be tolerated.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        let tolerations = &pod.spec().tolerations;
        for taint in node.taints().iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute") {
            if !tolerations.iter().any(|t| tolerates(t, taint)) {
                return Err(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value));
            }
        }
        Ok(())
    }
}

/// Host ports must be free (a port on every address conflicts with any on that port).
pub struct NodePorts;

impl Filter for NodePorts {
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
        for (proto, port, ip) in &pod.host_ports {
            let clash = node.host_ports.iter().any(|(p2, port2, ip2)| {
                p2 == proto && port2 == port && (ip.is_empty() || ip2.is_empty() || ip == ip2 || ip == "0.0.0.0")
            });
            if clash {
                return Err("node(s) didn't have free ports for the requested pod ports".into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- scores

fn fraction_free(alloc: i64, used: i64) -> f64 {
    if alloc <= 0 {
        0.0
    } else {
        ((alloc - used) as f64 / alloc as f64).clamp(0.0, 1.0)
    }
}

/// Prefers nodes with the most cpu and memory left after placing the pod.
pub struct LeastAllocated;

impl Score for LeastAllocated {
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let (a, u, r) = (node.allocatable, node.requested, pod.requests);
        let cpu = fraction_free(a.cpu, u.cpu + r.cpu);
        let mem = fraction_free(a.memory, u.memory + r.memory);
        ((cpu + mem) * 50.0).round() as i64
    }
}

/// Prefers nodes whose cpu and memory would be used in equal proportion.
pub struct BalancedAllocation;

impl Score for BalancedAllocation {
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let (a, u, r) = (node.allocatable, node.requested, pod.requests);
        let cpu = 1.0 - fraction_free(a.cpu, u.cpu + r.cpu);
        let mem = 1.0 - fraction_free(a.memory, u.memory + r.memory);
        ((1.0 - (cpu - mem).abs()) * 100.0).round() as i64
    }
}

/// Scales raw scores so the best is 100 (all zero stays zero); with `reverse`, the lowest
/// raw score becomes 100.
fn scale_to_100(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = match (max, reverse) {
            (0, false) => 0,
            (0, true) => 100,
            (m, false) => *s * 100 / m,
            (m, true) => (m - *s) * 100 / m,
        };
    }
}

/// Sums the weights of the pod's preferred node-affinity terms a node matches.
pub struct PreferredAffinity;

impl Score for PreferredAffinity {
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let labels = node.labels();
        pod.spec()
            .affinity
            .iter()
            .filter_map(|a| a.node_affinity.as_ref())
            .flat_map(|n| &n.preferred_during_scheduling_ignored_during_execution)
            .filter(|p| p.preference.as_ref().is_some_and(|t| term_matches(t, labels)))
            .map(|p| i64::from(p.weight))
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        scale_to_100(scores, false);
    }
}

/// Prefers nodes with fewer `PreferNoSchedule` taints the pod does not tolerate.
pub struct PreferNoSchedule;

impl Score for PreferNoSchedule {
    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let tolerations = &pod.spec().tolerations;
        node.taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerations.iter().any(|x| tolerates(x, t)))
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        scale_to_100(scores, true);
    }
}

/// Spreads one owner's pods: prefers nodes, and zones when nodes have a zone label, with
/// fewer of its pods (zones weigh two thirds, as in Kubernetes' SelectorSpread).
pub struct Spread;

impl Score for Spread {
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64 {
        if pod.owner.is_none() {
            return 0;
        }
        // Raw score: how many of the owner's pods are here (lower is better), in
        // thousandths so the zone part keeps its resolution.
        let on_node = i64::from(state.owner_per_node.get(&node.name).copied().unwrap_or(0));
        match node.zone.as_ref() {
            Some(z) if !state.owner_per_zone.is_empty() => {
                let in_zone = i64::from(state.owner_per_zone.get(z).copied().unwrap_or(0));
                on_node * 1000 + in_zone * 2000
            }
            _ => on_node * 3000,
        }
    }

    fn normalize(&self, scores: &mut [i64]) {
        scale_to_100(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flotilla_proto::api as pb;

    use super::*;
    use crate::cache::Cache;

    fn req(key: &str, op: &str, values: &[&str]) -> pb::NodeSelectorRequirement {
        pb::NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_affinity_operator_matches_as_kubernetes_does() {
        let l = labels(&[("zone", "a"), ("gen", "5")]);
        assert!(requirement_matches(&req("zone", "In", &["a", "b"]), &l));
        assert!(!requirement_matches(&req("zone", "In", &["b"]), &l));
        assert!(requirement_matches(&req("zone", "NotIn", &["b"]), &l));
        assert!(requirement_matches(&req("disk", "NotIn", &["ssd"]), &l), "absent key is not in any set");
        assert!(requirement_matches(&req("gen", "Exists", &[]), &l));
        assert!(requirement_matches(&req("disk", "DoesNotExist", &[]), &l));
        assert!(requirement_matches(&req("gen", "Gt", &["4"]), &l));
        assert!(!requirement_matches(&req("gen", "Lt", &["5"]), &l));
        assert!(!requirement_matches(&req("zone", "Gt", &["1"]), &l), "a non-number never compares");
        assert!(!term_matches(&pb::NodeSelectorTerm { match_expressions: vec![] }, &l));
    }

    #[test]
    fn tolerations_match_by_key_value_and_effect() {
        let taint = pb::Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: &str, op: &str, value: &str, effect: &str| pb::Toleration {
            key: key.into(),
            operator: op.into(),
            value: value.into(),
            effect: effect.into(),
            ..Default::default()
        };
        assert!(tolerates(&t("dedicated", "Equal", "db", ""), &taint));
        assert!(tolerates(&t("dedicated", "Exists", "", "NoSchedule"), &taint));
        assert!(tolerates(&t("", "Exists", "", ""), &taint), "an empty key with Exists tolerates everything");
        assert!(!tolerates(&t("dedicated", "Equal", "web", ""), &taint));
        assert!(!tolerates(&t("dedicated", "Exists", "", "NoExecute"), &taint));
    }

    #[test]
    fn the_table_can_switch_plugins_off_and_reweigh_them_and_names_unknown_ones() {
        let (f, s) = build(&[], &BTreeMap::new()).expect("defaults");
        assert_eq!(f.len() + s.len(), PLUGINS.len());
        let (f, s) = build(&["NodePorts".into()], &[("SelectorSpread".to_string(), 0)].into()).expect("valid");
        assert!(f.iter().all(|(n, _)| *n != "NodePorts"));
        assert!(s.iter().all(|(n, _, _)| *n != "SelectorSpread"), "weight 0 switches a score off");
        let e = build(&["Magic".into()], &BTreeMap::new()).err().expect("unknown");
        assert!(e.contains("\"Magic\""), "{e}");
    }

    #[test]
    fn spread_prefers_nodes_and_zones_with_fewer_of_the_owners_pods() {
        let node = |name: &str, zone: &str| {
            Arc::new(pb::Node {
                metadata: Some(pb::ObjectMeta {
                    name: name.into(),
                    labels: labels(&[(crate::cache::ZONE_LABEL, zone)]),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let pod = |name: &str, node: &str| {
            Arc::new(pb::Pod {
                metadata: Some(pb::ObjectMeta {
                    name: name.into(),
                    namespace: "d".into(),
                    owner_references: vec![pb::OwnerReference {
                        uid: "rs1".into(),
                        controller: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                spec: Some(pb::PodSpec { node_name: node.into(), ..Default::default() }),
                status: None,
            })
        };
        let mut c = Cache::default();
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            c.upsert_node(node(n, z));
        }
        c.upsert_pod(pod("p1", "a1"));
        let new = PodInfo::new(pod("p2", ""));
        let state = CycleState::new(&new, &c);
        let mut scores: Vec<i64> =
            ["a1", "a2", "b1"].iter().map(|n| Spread.score(&new, &c.nodes()[*n], &state)).collect();
        Spread.normalize(&mut scores);
        assert!(
            scores[2] > scores[1] && scores[1] > scores[0],
            "the other zone first, then the other node: {scores:?}"
        );
    }
}
