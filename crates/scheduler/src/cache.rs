//! The scheduler's view of the cluster: every node with what is placed on it (pods the
//! informer shows bound, plus pods this scheduler has bound and not yet seen come back —
//! "assumed", as Kubernetes calls them), and each owner's pods per node for spreading.
//!
//! Built from the informers' caches and kept up to date from their change notifications;
//! the scheduling cycle reads it, and assumes a pod onto a node before its bind is sent,
//! so the next pod already counts it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use flotilla_proto::api as pb;

use crate::resources::Resources;

/// A host port a pod takes: (protocol, port, host IP or "" for every address).
pub type HostPort = (String, i32, String);

/// The label nodes carry their zone in.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the scheduler needs to know of one pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod as last seen.
    pub pod: Arc<pb::Pod>,
    /// `namespace/name`.
    pub key: String,
    /// Its requests (and one pod).
    pub requests: Resources,
    /// Host ports it takes.
    pub host_ports: Vec<HostPort>,
    /// The uid of its controlling owner (a ReplicaSet, ...), for spreading.
    pub owner: Option<String>,
}

impl PodInfo {
    /// Reads what the scheduler needs from `pod`.
    pub fn new(pod: Arc<pb::Pod>) -> PodInfo {
        let m = pod.metadata.clone().unwrap_or_default();
        let key = format!("{}/{}", m.namespace, m.name);
        let requests = Resources::requested(&pod);
        let host_ports = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| &c.ports)
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = if p.protocol.is_empty() { "TCP".to_string() } else { p.protocol.clone() };
                (proto, p.host_port, p.host_ip.clone())
            })
            .collect();
        let owner = m.owner_references.iter().find(|o| o.controller).map(|o| o.uid.clone());
        PodInfo { pod, key, requests, host_ports, owner }
    }

    /// The pod's spec (empty if absent).
    pub fn spec(&self) -> &pb::PodSpec {
        static EMPTY: std::sync::OnceLock<pb::PodSpec> = std::sync::OnceLock::new();
        self.pod.spec.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }
}

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node as last seen.
    pub node: Arc<pb::Node>,
    /// Its name.
    pub name: String,
    /// What it offers pods.
    pub allocatable: Resources,
    /// What the pods placed on it ask for.
    pub requested: Resources,
    /// Host ports taken.
    pub host_ports: HashSet<HostPort>,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Its zone label, if any.
    pub zone: Option<String>,
}

impl NodeInfo {
    fn new(node: Arc<pb::Node>) -> NodeInfo {
        let m = node.metadata.clone().unwrap_or_default();
        let ready = node.status.iter().flat_map(|s| &s.conditions).any(|c| c.r#type == "Ready" && c.status == "True");
        NodeInfo {
            name: m.name.clone(),
            allocatable: Resources::allocatable(&node),
            requested: Resources::default(),
            host_ports: HashSet::new(),
            ready,
            unschedulable: node.spec.as_ref().is_some_and(|s| s.unschedulable),
            zone: m.labels.get(ZONE_LABEL).cloned(),
            node,
        }
    }

    /// The node's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
        self.node.metadata.as_ref().map_or_else(|| EMPTY.get_or_init(BTreeMap::new), |m| &m.labels)
    }

    /// The node's taints.
    pub fn taints(&self) -> &[pb::Taint] {
        self.node.spec.as_ref().map_or(&[], |s| s.taints.as_slice())
    }

    fn place(&mut self, p: &PodInfo) {
        self.requested.add(&p.requests);
        self.host_ports.extend(p.host_ports.iter().cloned());
    }

    fn unplace(&mut self, p: &PodInfo) {
        self.requested.sub(&p.requests);
        for hp in &p.host_ports {
            self.host_ports.remove(hp);
        }
    }
}

/// Whether a pod still holds its node's resources (not finished).
fn holds_resources(pod: &pb::Pod) -> bool {
    !matches!(pod.status.as_ref().map(|s| s.phase.as_str()), Some("Succeeded" | "Failed"))
}

/// The node a pod is bound to, if any.
pub fn node_of(pod: &pb::Pod) -> Option<&str> {
    pod.spec.as_ref().map(|s| s.node_name.as_str()).filter(|n| !n.is_empty())
}

/// Nodes, pods placed on them, and owners' pods per node.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    /// Pods counted on a node: key → (node, info, assumed by this scheduler).
    placed: HashMap<String, (String, PodInfo, bool)>,
    /// Owner uid → node → pods of that owner placed there.
    owners: HashMap<String, HashMap<String, u32>>,
    /// Node names in a stable order, for the rotating start of each search.
    order: Vec<String>,
}

impl Cache {
    /// The nodes, by name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }

    /// Node names in a stable order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// Pods of `owner` placed on each node.
    pub fn owner_counts(&self, owner: &str) -> Option<&HashMap<String, u32>> {
        self.owners.get(owner)
    }

    /// Adds or replaces a node (keeping what is placed on it).
    pub fn upsert_node(&mut self, node: Arc<pb::Node>) {
        let mut info = NodeInfo::new(node);
        match self.nodes.get(&info.name) {
            Some(old) => {
                info.requested = old.requested;
                info.host_ports = old.host_ports.clone();
            }
            None => {
                self.order.push(info.name.clone());
                // Pods seen bound to it before the node itself.
                for (node, p, _) in self.placed.values() {
                    if *node == info.name {
                        info.place(p);
                    }
                }
            }
        }
        self.nodes.insert(info.name.clone(), info);
    }

    /// Removes a node (pods placed on it stay counted, should it come back).
    pub fn remove_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.order.retain(|n| n != name);
        }
    }

    /// Takes in a pod as the informer shows it: counts it on its node if bound and not
    /// finished (replacing an assumption), forgets it otherwise.
    pub fn upsert_pod(&mut self, pod: Arc<pb::Pod>) {
        let info = PodInfo::new(pod);
        match node_of(&info.pod).filter(|_| holds_resources(&info.pod)).map(str::to_string) {
            Some(node) => {
                self.forget(&info.key);
                self.add(node, info, false);
            }
            None => {
                if self.placed.get(&info.key).is_some_and(|(_, _, assumed)| *assumed) && node_of(&info.pod).is_none() {
                    // Still shown unbound while our bind is in flight: keep the assumption.
                    return;
                }
                self.forget(&info.key);
            }
        }
    }

    /// A pod was deleted.
    pub fn remove_pod(&mut self, key: &str) {
        self.forget(key);
    }

    /// Counts `pod` on `node` before its bind is confirmed.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        self.forget(&pod.key);
        self.add(node.to_string(), pod.clone(), true);
    }

    /// Drops an assumption whose bind failed.
    pub fn forget_assumed(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|(_, _, assumed)| *assumed) {
            self.forget(key);
        }
    }

    /// Whether `key` is counted on a node (bound, or assumed).
    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    fn add(&mut self, node: String, info: PodInfo, assumed: bool) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.place(&info);
        }
        if let Some(o) = &info.owner {
            *self.owners.entry(o.clone()).or_default().entry(node.clone()).or_default() += 1;
        }
        self.placed.insert(info.key.clone(), (node, info, assumed));
    }

    fn forget(&mut self, key: &str) {
        let Some((node, info, _)) = self.placed.remove(key) else { return };
        if let Some(n) = self.nodes.get_mut(&node) {
            n.unplace(&info);
        }
        if let Some(o) = &info.owner {
            if let Some(per_node) = self.owners.get_mut(o) {
                if let Some(c) = per_node.get_mut(&node) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        per_node.remove(&node);
                    }
                }
                if per_node.is_empty() {
                    self.owners.remove(o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str) -> Arc<pb::Node> {
        Arc::new(pb::Node {
            metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
            status: Some(pb::NodeStatus {
                allocatable: [("cpu".to_string(), cpu.to_string()), ("pods".to_string(), "10".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pod(name: &str, node: &str, cpu: &str) -> Arc<pb::Pod> {
        Arc::new(pb::Pod {
            metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "d".into(), ..Default::default() }),
            spec: Some(pb::PodSpec {
                node_name: node.into(),
                containers: vec![pb::Container {
                    resources: Some(pb::ResourceRequirements {
                        requests: [("cpu".to_string(), cpu.to_string())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
    }

    /// An assumed pod counts on its node until the informer shows it bound (then it
    /// counts once) or its bind fails (then not at all); pods seen before their node are
    /// counted when the node appears.
    #[test]
    fn assumed_and_bound_pods_count_once() {
        let mut c = Cache::default();
        c.upsert_pod(pod("early", "n1", "100m"));
        c.upsert_node(node("n1", "2"));
        assert_eq!(c.nodes()["n1"].requested.cpu, 100);
        let p = PodInfo::new(pod("p", "", "500m"));
        c.assume(&p, "n1");
        assert_eq!(c.nodes()["n1"].requested.cpu, 600);
        c.upsert_pod(pod("p", "", "500m")); // still unbound in the informer
        assert_eq!(c.nodes()["n1"].requested.cpu, 600);
        c.upsert_pod(pod("p", "n1", "500m")); // the bind came back
        assert_eq!(c.nodes()["n1"].requested.cpu, 600);
        c.forget_assumed("d/p"); // not an assumption any more: no effect
        assert_eq!(c.nodes()["n1"].requested.cpu, 600);
        let q = PodInfo::new(pod("q", "", "1"));
        c.assume(&q, "n1");
        c.forget_assumed(&q.key);
        assert_eq!(c.nodes()["n1"].requested.cpu, 600);
        c.remove_pod("d/p");
        assert_eq!(c.nodes()["n1"].requested.cpu, 100);
    }
}
