//! The DaemonSet controller: one pod of each DaemonSet on every node it is eligible for.
//!
//! A node is eligible when the template's `nodeSelector` and required node affinity
//! match its labels and every `NoSchedule`/`NoExecute` taint on it is tolerated — by the
//! template's tolerations or by those every daemon pod gets (as in Kubernetes: it stays
//! on a node that is not ready, unreachable or cordoned). The controller places its pods
//! itself (`spec.nodeName`), as Kubernetes did before its scheduler took this over: a
//! daemon belongs on its node whatever the node's load.
//!
//! [`plan`] is a pure function of the DaemonSet, the nodes and its pods: a pod for each
//! eligible node without one, extras deleted (the newest first), pods on nodes no longer
//! eligible deleted, failed pods replaced. Pods carry the template's hash
//! (`controller-revision-hash`); under `RollingUpdate` old pods are replaced node by node
//! while at most `maxUnavailable` eligible nodes are without an available pod (old pods
//! that are not available go first, spending nothing); under `OnDelete` an old pod is
//! replaced only once someone deletes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_api::select::{node_selected, tolerates};
use flotilla_client::reflector::{Cache, Change};
use flotilla_client::Client;
use flotilla_proto::api as pb;

use crate::deployment::template_hash;
use crate::informers::Informers;
use crate::manager::Context;
use crate::podcontrol::{owner_ref, PodControl};
use crate::pods::{available, meta, phase, ready_since};
use crate::queue::WorkQueue;
use crate::worker::Reconcile;
use crate::ControllerError;

/// The label holding the hash of the template a daemon pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// Tolerations every daemon pod gets, so that it stays on its node through what would
/// evict or keep out other pods.
pub fn daemon_tolerations() -> Vec<pb::Toleration> {
    let t = |key: &str, effect: &str| pb::Toleration {
        key: key.into(),
        operator: "Exists".into(),
        effect: effect.into(),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ]
}

fn spec(ds: &pb::DaemonSet) -> pb::DaemonSetSpec {
    ds.spec.clone().unwrap_or_default()
}

fn pod_spec(ds: &pb::DaemonSet) -> pb::PodSpec {
    spec(ds).template.and_then(|t| t.spec).unwrap_or_default()
}

/// Whether `ds` belongs on `node`.
pub fn eligible(ds: &pb::DaemonSet, node: &pb::Node) -> bool {
    let ps = pod_spec(ds);
    let labels = node.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    let mut tolerations = ps.tolerations.clone();
    tolerations.extend(daemon_tolerations());
    let taints = node.spec.as_ref().map(|s| s.taints.clone()).unwrap_or_default();
    node_selected(&ps, &labels)
        && taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// `maxUnavailable` as a count of `desired` nodes (a percentage rounded up), at least 1.
pub fn max_unavailable(ds: &pb::DaemonSet, desired: i32) -> i32 {
    let v = spec(ds)
        .update_strategy
        .and_then(|s| s.rolling_update)
        .map(|r| r.max_unavailable)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1".into());
    let n = match v.strip_suffix('%') {
        Some(p) => (i64::from(desired) * p.parse::<i64>().unwrap_or(0) + 99) / 100,
        None => v.parse::<i64>().unwrap_or(1),
    };
    i32::try_from(n).unwrap_or(i32::MAX).max(1)
}

/// What the controller does for one DaemonSet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to make a pod on.
    pub create_on: Vec<String>,
    /// Pods to delete: (name, uid).
    pub delete: Vec<(String, String)>,
    /// The status to write.
    pub status: pb::DaemonSetStatus,
}

/// The plan for `ds` over `nodes`, given the pods it controls.
pub fn plan(ds: &pb::DaemonSet, nodes: &[&pb::Node], pods: &[&pb::Pod], now: SystemTime) -> Plan {
    let hash = template_hash(&spec(ds).template.unwrap_or_default());
    let min_ready = Duration::from_secs(u64::try_from(spec(ds).min_ready_seconds).unwrap_or(0));
    let on_delete = spec(ds).update_strategy.is_some_and(|s| s.r#type == "OnDelete");
    let mut by_node: BTreeMap<&str, Vec<&pb::Pod>> = BTreeMap::new();
    let mut out = Plan::default();
    for p in pods {
        let m = meta(p);
        if !m.deletion_timestamp.is_empty() {
            continue;
        }
        if phase(p) == "Failed" {
            // Replaced: deleted here, made again when it is gone.
            out.delete.push((m.name.clone(), m.uid.clone()));
            continue;
        }
        by_node.entry(p.spec.as_ref().map_or("", |s| s.node_name.as_str())).or_default().push(p);
    }
    let current = |p: &pb::Pod| meta(p).labels.get(HASH_LABEL) == Some(&hash);
    let mut st = pb::DaemonSetStatus {
        observed_generation: ds.metadata.as_ref().map_or(0, |m| m.generation),
        ..Default::default()
    };
    // Old pods on eligible nodes, available or not.
    let (mut old_available, mut old_unavailable) = (Vec::new(), Vec::new());
    let mut unavailable_nodes = 0;
    for n in nodes {
        let name = n.metadata.as_ref().map_or("", |m| m.name.as_str());
        let mut here = by_node.remove(name).unwrap_or_default();
        if !eligible(ds, n) {
            if !here.is_empty() {
                st.number_misscheduled += 1;
            }
            out.delete.extend(here.iter().map(|p| (meta(p).name.clone(), meta(p).uid.clone())));
            continue;
        }
        st.desired_number_scheduled += 1;
        if here.is_empty() {
            out.create_on.push(name.to_string());
            unavailable_nodes += 1;
            continue;
        }
        // Keep one: the current template's first, then the oldest.
        here.sort_by(|a, b| {
            current(b).cmp(&current(a)).then(meta(a).creation_timestamp.cmp(&meta(b).creation_timestamp))
        });
        out.delete.extend(here[1..].iter().map(|p| (meta(p).name.clone(), meta(p).uid.clone())));
        let kept = here[0];
        st.current_number_scheduled += 1;
        if ready_since(kept).is_some() {
            st.number_ready += 1;
        }
        let is_available = available(kept, min_ready, now);
        if is_available {
            st.number_available += 1;
        } else {
            unavailable_nodes += 1;
        }
        if current(kept) {
            st.updated_number_scheduled += 1;
        } else if is_available {
            old_available.push(kept);
        } else {
            old_unavailable.push(kept);
        }
    }
    // Pods on nodes that do not exist (pod GC deletes them too).
    for ps in by_node.values() {
        out.delete.extend(ps.iter().map(|p| (meta(p).name.clone(), meta(p).uid.clone())));
    }
    st.number_unavailable = st.desired_number_scheduled - st.number_available;
    if !on_delete {
        let old = |p: &&pb::Pod| (meta(p).name.clone(), meta(p).uid.clone());
        // An old pod that is not available costs nothing to replace.
        out.delete.extend(old_unavailable.iter().map(old));
        let budget = max_unavailable(ds, st.desired_number_scheduled) - unavailable_nodes;
        old_available.sort_by(|a, b| meta(a).name.cmp(&meta(b).name));
        out.delete.extend(old_available.iter().take(usize::try_from(budget).unwrap_or(0)).map(old));
    }
    out.status = st;
    out
}

/// The pod `ds` makes on `node`.
fn new_pod(ds: &pb::DaemonSet, node: &str) -> pb::Pod {
    let m = ds.metadata.clone().unwrap_or_default();
    let template = spec(ds).template.unwrap_or_default();
    let hash = template_hash(&template);
    let tm = template.metadata.unwrap_or_default();
    let mut labels = tm.labels;
    labels.insert(HASH_LABEL.into(), hash);
    let mut ps = template.spec.unwrap_or_default();
    ps.node_name = node.into();
    for t in daemon_tolerations() {
        if !ps.tolerations.contains(&t) {
            ps.tolerations.push(t);
        }
    }
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            generate_name: format!("{}-", m.name),
            namespace: m.namespace.clone(),
            labels,
            annotations: tm.annotations,
            owner_references: vec![owner_ref::<pb::DaemonSet>(&m, "apps/v1")],
            ..Default::default()
        }),
        spec: Some(ps),
        status: None,
    }
}

/// The running controller.
pub struct DaemonSetController {
    client: Client,
    sets: Cache<pb::DaemonSet>,
    nodes: Cache<pb::Node>,
    pods: Cache<pb::Pod>,
    control: PodControl<pb::DaemonSet>,
}

impl DaemonSetController {
    /// A controller over these caches, writing through `client`.
    pub fn new(
        client: Client,
        sets: Cache<pb::DaemonSet>,
        nodes: Cache<pb::Node>,
        pods: Cache<pb::Pod>,
    ) -> DaemonSetController {
        let control = PodControl::new(client.clone(), sets.clone(), "daemonset-controller");
        DaemonSetController { client, sets, nodes, pods, control }
    }

    /// Takes in a change of the node cache: every DaemonSet is looked at (a node came,
    /// went, or changed its labels or taints).
    pub fn node_changed(&self, queue: &WorkQueue, c: &Change<pb::Node>) {
        let relevant = match c {
            Change::Listed | Change::Deleted(_) | Change::Upsert { old: None, .. } => true,
            Change::Upsert { old: Some(o), new } => {
                o.metadata.as_ref().map(|m| &m.labels) != new.metadata.as_ref().map(|m| &m.labels)
                    || o.spec.as_ref().map(|s| &s.taints) != new.spec.as_ref().map(|s| &s.taints)
            }
        };
        if relevant {
            for k in self.sets.read().unwrap_or_else(|p| p.into_inner()).keys() {
                queue.add(k);
            }
        }
    }
}

impl Reconcile for DaemonSetController {
    fn name(&self) -> &str {
        "daemonset"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let Some(ds) = self.sets.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            self.control.expectations.forget(key);
            return Ok(None);
        };
        let m = ds.metadata.clone().unwrap_or_default();
        if !m.deletion_timestamp.is_empty() {
            return Ok(None); // the garbage collector takes its pods
        }
        let satisfied = self.control.expectations.satisfied(key);
        let pods = self.control.owned(&self.pods, &m.namespace, &m.uid);
        let nodes: Vec<pb::Node> = self.nodes.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let plan = plan(&ds, &nodes.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        let mut errors = Vec::new();
        if satisfied {
            let creates = plan.create_on.iter().map(|n| new_pod(&ds, n)).collect();
            errors.extend(self.control.sync(key, &ds, creates, &plan.delete).await);
        }
        let current = ds.status.unwrap_or_default();
        if plan.status != current {
            let mut updated = ds.clone();
            updated.status = Some(plan.status);
            match self.client.update_status(updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(format!("writing status: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(ControllerError::Reconcile(errors.join("; ")));
        }
        // Pods ready but not yet available: look again when they may be.
        let min_ready = spec(&ds).min_ready_seconds;
        Ok((plan.status.number_ready > plan.status.number_available && min_ready > 0)
            .then(|| Duration::from_secs(u64::try_from(min_ready).unwrap_or(0))))
    }
}

/// Starts the informers the DaemonSet controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::DaemonSet>();
    informers.get::<pb::Node>();
    informers.get::<pb::Pod>();
}

/// Runs the DaemonSet controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (sets, nodes, pods) =
        (ctx.informers.get::<pb::DaemonSet>(), ctx.informers.get::<pb::Node>(), ctx.informers.get::<pb::Pod>());
    let (mut s_rx, mut n_rx, mut p_rx) = (sets.subscribe(), nodes.subscribe(), pods.subscribe());
    let ctl = Arc::new(DaemonSetController::new(ctx.client.clone(), sets.cache(), nodes.cache(), pods.cache()));
    let queue = Arc::new(WorkQueue::default());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { sets.wait_synced().await; nodes.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let dispatch = async {
        loop {
            tokio::select! {
                Some(c) = s_rx.recv() => ctl.control.owner_changed(&queue, &c),
                Some(c) = n_rx.recv() => ctl.node_changed(&queue, &c),
                Some(c) = p_rx.recv() => ctl.control.pod_changed(&queue, &c),
                else => return,
            }
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("daemonset"), dispatch, ctx.stopped())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ds(max_unavailable: &str, image: &str) -> pb::DaemonSet {
        pb::DaemonSet {
            metadata: Some(pb::ObjectMeta {
                name: "agent".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                ..Default::default()
            }),
            spec: Some(pb::DaemonSetSpec {
                selector: Some(pb::LabelSelector { match_labels: labels(&[("app", "agent")]), ..Default::default() }),
                template: Some(pb::PodTemplateSpec {
                    metadata: Some(pb::ObjectMeta { labels: labels(&[("app", "agent")]), ..Default::default() }),
                    spec: Some(pb::PodSpec {
                        node_selector: labels(&[("role", "worker")]),
                        containers: vec![pb::Container { name: "c".into(), image: image.into(), ..Default::default() }],
                        ..Default::default()
                    }),
                }),
                update_strategy: Some(pb::DaemonSetUpdateStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(pb::RollingUpdateDaemonSet { max_unavailable: max_unavailable.into() }),
                }),
                min_ready_seconds: 0,
            }),
            status: None,
        }
    }

    fn node(name: &str, role: &str, taint: Option<&str>) -> pb::Node {
        pb::Node {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                labels: labels(&[("role", role)]),
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                taints: taint
                    .map(|k| vec![pb::Taint { key: k.into(), effect: "NoSchedule".into(), ..Default::default() }])
                    .unwrap_or_default(),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod_of(d: &pb::DaemonSet, name: &str, node: &str, ready: bool) -> pb::Pod {
        let mut p = new_pod(d, node);
        let m = p.metadata.as_mut().expect("meta");
        m.name = name.into();
        m.uid = format!("uid-{name}");
        p.status = Some(pb::PodStatus {
            phase: "Running".into(),
            conditions: vec![pb::Condition {
                r#type: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn one_pod_per_eligible_node_and_none_elsewhere() {
        let d = ds("1", "v1");
        let nodes = [
            node("a", "worker", None),
            node("b", "worker", Some("node.kubernetes.io/unschedulable")), // cordoned: still one
            node("c", "worker", Some("dedicated")),                        // untolerated taint
            node("d", "db", None),                                         // not selected
        ];
        let on_d = pod_of(&d, "x", "d", true);
        let twice = [pod_of(&d, "p1", "a", true), pod_of(&d, "p2", "a", true)];
        let pods: Vec<&pb::Pod> = twice.iter().chain([&on_d]).collect();
        let p = plan(&d, &nodes.iter().collect::<Vec<_>>(), &pods, SystemTime::now());
        assert_eq!(p.create_on, vec!["b".to_string()]);
        let deleted: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        assert!(deleted.contains(&"x"), "the pod on a node it does not belong on");
        assert_eq!((p.status.desired_number_scheduled, p.status.current_number_scheduled), (2, 1));
        assert_eq!(p.status.number_misscheduled, 1);
    }

    #[test]
    fn a_rolling_update_replaces_at_most_max_unavailable_at_a_time() {
        let old = ds("1", "v1");
        let new = ds("1", "v2");
        let nodes: Vec<pb::Node> = ["a", "b", "c"].iter().map(|n| node(n, "worker", None)).collect();
        let mut pods: Vec<pb::Pod> =
            ["a", "b", "c"].iter().map(|n| pod_of(&old, &format!("old-{n}"), n, true)).collect();
        let p = plan(&new, &nodes.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        assert_eq!(p.delete.len(), 1, "one at a time: {:?}", p.delete);
        assert!(p.create_on.is_empty());
        // An old pod that is not ready goes without spending the budget.
        pods[2] = pod_of(&old, "old-c", "c", false);
        let p = plan(&new, &nodes.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        let deleted: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(deleted, vec!["old-c"], "the unavailable one already uses the budget");
        // With 2 of 3 unavailable allowed (50% rounds up), two go.
        let wide = ds("50%", "v2");
        pods[2] = pod_of(&old, "old-c", "c", true);
        let p = plan(&wide, &nodes.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        assert_eq!(p.delete.len(), 2);
        // OnDelete: nothing is replaced.
        let mut manual = ds("1", "v2");
        manual.spec.as_mut().expect("spec").update_strategy =
            Some(pb::DaemonSetUpdateStrategy { r#type: "OnDelete".into(), rolling_update: None });
        let p = plan(&manual, &nodes.iter().collect::<Vec<_>>(), &pods.iter().collect::<Vec<_>>(), SystemTime::now());
        assert!(p.delete.is_empty() && p.create_on.is_empty());
        assert_eq!(p.status.updated_number_scheduled, 0);
    }
}
