//! Resource amounts the scheduler counts: cpu (millicores), memory (bytes) and pods, read
//! from the quantities in node status and container requests.

use std::collections::BTreeMap;

use flotilla_core::quantity::Quantity;
use flotilla_proto::api as pb;

/// An amount of each resource the scheduler counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Pods.
    pub pods: i64,
}

fn millis(m: &BTreeMap<String, String>, name: &str) -> i64 {
    m.get(name).and_then(|q| Quantity::parse(q).ok()).map_or(0, |q| q.millis().clamp(0, i64::MAX as i128) as i64)
}

fn units(m: &BTreeMap<String, String>, name: &str) -> i64 {
    m.get(name).and_then(|q| Quantity::parse(q).ok()).map_or(0, |q| q.units_ceil().clamp(0, i64::MAX as i128) as i64)
}

impl Resources {
    /// What a node offers pods (`status.allocatable`, else `status.capacity`).
    pub fn allocatable(node: &pb::Node) -> Resources {
        let Some(st) = &node.status else { return Resources::default() };
        let m = if st.allocatable.is_empty() { &st.capacity } else { &st.allocatable };
        Resources { cpu: millis(m, "cpu"), memory: units(m, "memory"), pods: units(m, "pods") }
    }

    /// What a pod asks for: the sum of its containers' requests, and one pod.
    pub fn requested(pod: &pb::Pod) -> Resources {
        let mut r = Resources { pods: 1, ..Default::default() };
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            if let Some(req) = c.resources.as_ref().map(|x| &x.requests) {
                r.cpu = r.cpu.saturating_add(millis(req, "cpu"));
                r.memory = r.memory.saturating_add(units(req, "memory"));
            }
        }
        r
    }

    /// `self + other`.
    pub fn add(&mut self, other: &Resources) {
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.pods = self.pods.saturating_add(other.pods);
    }

    /// `self - other`.
    pub fn sub(&mut self, other: &Resources) {
        self.cpu = self.cpu.saturating_sub(other.cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn requests_add_up_over_containers_and_allocatable_falls_back_to_capacity() {
        let c = |cpu: &str, mem: &str| pb::Container {
            resources: Some(pb::ResourceRequirements {
                requests: map(&[("cpu", cpu), ("memory", mem)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pb::Pod {
            spec: Some(pb::PodSpec { containers: vec![c("250m", "64Mi"), c("1", "1Gi")], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(Resources::requested(&pod), Resources { cpu: 1250, memory: (64 << 20) + (1 << 30), pods: 1 });
        let node = pb::Node {
            status: Some(pb::NodeStatus {
                capacity: map(&[("cpu", "4"), ("memory", "8Gi"), ("pods", "110")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Resources::allocatable(&node), Resources { cpu: 4000, memory: 8 << 30, pods: 110 });
    }
}
