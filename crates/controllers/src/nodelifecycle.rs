//! The node lifecycle controller: notices nodes that stopped reporting, marks them, and
//! moves their pods elsewhere — unless so many stop at once that a partition is the
//! likelier cause.
//!
//! Every kubelet renews its node's Lease in `kube-node-lease` (and posts the node's
//! status). This controller remembers, per node, when *it* last saw either change, on its
//! own monotonic clock; renewTime is never compared with this machine's clock, so clocks
//! of different machines need not agree. A node unseen for the grace period
//! (`--node-monitor-grace-period`, default 15 s, for kubelets renewing every 10 s) is
//! *silent*: its Ready condition becomes Unknown and it gets the
//! `node.kubernetes.io/unreachable` taints (NoSchedule, NoExecute). Its pods that do not
//! tolerate the NoExecute taint are evicted (deleted; their ReplicaSets replace them
//! elsewhere) at once, those that tolerate it for `tolerationSeconds` after that, those
//! that tolerate it without a limit never. A node heard from again loses the taints.
//!
//! Never on old data: every term of leadership starts every node's grace afresh, and so
//! does a relist of the node or lease caches, or a pause of this controller longer than
//! half the grace (its view may be stale).
//!
//! **Partition-aware**: when at least half of all nodes — or of one zone
//! (`topology.kubernetes.io/zone`) — are silent at the same time, and at least two, no
//! pod of those nodes is evicted, and an Event on each says why: losing that many machines
//! at once is less likely than losing the network to them, and evicting would empty the
//! cluster for nothing. (Kubernetes evicts at a reduced rate instead.)

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use flotilla_api::select::tolerates;
use flotilla_client::events::object_ref;
use flotilla_client::{Change, DeleteParams};
use flotilla_proto::api as pb;
use tokio::time::Instant;

use crate::informers::Informers;
use crate::manager::Context;
use crate::pods::{active, meta};

/// The taint key of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The namespace of node Leases.
pub const NODE_LEASES: &str = "kube-node-lease";
/// The label naming a node's zone.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// How often nodes are looked at.
const TICK: Duration = Duration::from_millis(500);

/// What this controller last saw of a node, and when (its own clock).
struct Seen {
    probe: (String, String),
    at: Instant,
    /// When this controller saw the node tainted NoExecute unreachable.
    tainted_at: Option<Instant>,
}

fn node_meta(n: &pb::Node) -> &pb::ObjectMeta {
    static EMPTY: std::sync::OnceLock<pb::ObjectMeta> = std::sync::OnceLock::new();
    n.metadata.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn unreachable_taint(effect: &str) -> pb::Taint {
    pb::Taint { key: UNREACHABLE.into(), value: String::new(), effect: effect.into(), time_added: String::new() }
}

fn has_taint(n: &pb::Node, effect: &str) -> bool {
    n.spec.as_ref().is_some_and(|s| s.taints.iter().any(|t| t.key == UNREACHABLE && t.effect == effect))
}

fn ready_status(n: &pb::Node) -> &str {
    n.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready")).map_or("", |c| c.status.as_str())
}

/// Which zones (by name; `None` = the whole cluster) have so many silent nodes that no
/// pod of theirs is evicted: at least two silent, and at least half of the zone's nodes.
pub fn disrupted(nodes: &[(&str, bool)]) -> (bool, Vec<String>) {
    let mut zones: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut silent, total) = (0, nodes.len());
    for (zone, s) in nodes {
        let z = zones.entry(zone).or_default();
        z.1 += 1;
        if *s {
            z.0 += 1;
            silent += 1;
        }
    }
    let many = |silent: usize, total: usize| silent >= 2 && silent * 2 >= total;
    let all = many(silent, total);
    let zones = zones.into_iter().filter(|(_, (s, t))| many(*s, *t)).map(|(z, _)| z.to_string()).collect();
    (all, zones)
}

/// When a pod on a silent node goes: `Some(Duration::ZERO)` at once, `Some(d)` after `d`
/// tainted, `None` never (it tolerates the taint without a limit).
pub fn eviction_delay(pod: &pb::Pod) -> Option<Duration> {
    let taint = unreachable_taint("NoExecute");
    let tolerations = pod.spec.as_ref().map(|s| s.tolerations.as_slice()).unwrap_or_default();
    let matching: Vec<&pb::Toleration> = tolerations.iter().filter(|t| tolerates(t, &taint)).collect();
    if matching.is_empty() {
        return Some(Duration::ZERO);
    }
    // The longest toleration wins; one without a limit tolerates forever.
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    let secs = matching.iter().filter_map(|t| t.toleration_seconds).max().unwrap_or(0);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Starts the informers the node lifecycle controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Node>();
    informers.get::<pb::Lease>();
    informers.get::<pb::Pod>();
}

/// Runs the node lifecycle controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let grace = ctx.settings.node_monitor_grace_period;
    let (nodes, leases, pods) =
        (ctx.informers.get::<pb::Node>(), ctx.informers.get::<pb::Lease>(), ctx.informers.get::<pb::Pod>());
    let (mut node_rx, mut lease_rx) = (nodes.subscribe(), leases.subscribe());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { nodes.wait_synced().await; leases.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let metrics = ctx.metrics("nodelifecycle");
    let mut seen: HashMap<String, Seen> = HashMap::new();
    // Silent nodes whose suppressed eviction was already told in an Event (once per
    // silence, not once per look).
    let mut told: std::collections::HashSet<String> = Default::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            () = ctx.stopped() => return,
            _ = tick.tick() => {}
        }
        // A relist, or a pause of this process: what it saw may be old. Start over.
        let mut relisted = false;
        while let Ok(c) = node_rx.try_recv() {
            relisted |= matches!(c, Change::Listed);
        }
        while let Ok(c) = lease_rx.try_recv() {
            relisted |= matches!(c, Change::Listed);
        }
        let now = Instant::now();
        if relisted || now.duration_since(last_tick) > grace / 2 {
            if !seen.is_empty() {
                tracing::info!(relisted, "node lifecycle: the view may be stale: every node's grace starts again");
            }
            seen.clear();
        }
        last_tick = now;
        let started = std::time::Instant::now();
        let node_list: Vec<pb::Node> =
            nodes.cache().read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let lease_cache = leases.cache();
        let mut silent: Vec<(pb::Node, bool)> = Vec::new();
        {
            let leases = lease_cache.read().unwrap_or_else(|p| p.into_inner());
            for n in node_list {
                let name = node_meta(&n).name.clone();
                let lease = leases.get(&format!("{NODE_LEASES}/{name}"));
                let probe = (
                    lease.and_then(|l| l.metadata.as_ref()).map(|m| m.resource_version.clone()).unwrap_or_default(),
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
                        .map(|c| c.last_heartbeat_time.clone())
                        .unwrap_or_default(),
                );
                let s = seen.entry(name).or_insert_with(|| Seen { probe: probe.clone(), at: now, tainted_at: None });
                if s.probe != probe {
                    s.probe = probe;
                    s.at = now;
                }
                if has_taint(&n, "NoExecute") {
                    s.tainted_at.get_or_insert(now);
                } else {
                    s.tainted_at = None;
                }
                let is_silent = now.duration_since(s.at) > grace;
                silent.push((n, is_silent));
            }
        }
        let names: std::collections::HashSet<String> = silent.iter().map(|(n, _)| node_meta(n).name.clone()).collect();
        seen.retain(|k, _| names.contains(k));
        let zones: Vec<(&str, bool)> =
            silent.iter().map(|(n, s)| (node_meta(n).labels.get(ZONE).map_or("", String::as_str), *s)).collect();
        let (all_disrupted, zones_disrupted) = disrupted(&zones);
        let mut failed = false;
        for (n, is_silent) in &silent {
            let m = node_meta(n);
            if *is_silent {
                if !mark(&ctx, n).await {
                    failed = true;
                    continue;
                }
                let zone = m.labels.get(ZONE).map_or("", String::as_str);
                if all_disrupted || zones_disrupted.iter().any(|z| z == zone) {
                    let count = zones.iter().filter(|(_, s)| *s).count();
                    let why = if all_disrupted {
                        format!("{count} of {} nodes stopped reporting at once", zones.len())
                    } else {
                        let (s, t) = zones
                            .iter()
                            .filter(|(z, _)| *z == zone)
                            .fold((0, 0), |(s, t), (_, x)| (s + usize::from(*x), t + 1));
                        format!("{s} of {t} nodes in zone {zone:?} stopped reporting at once")
                    };
                    let msg = format!(
                        "{why}: not evicting this node's pods (a partition is likelier than that many dead machines)"
                    );
                    if !told.contains(&m.name) {
                        tracing::warn!(node = %m.name, "{msg}");
                        let e = "EvictionSuppressed";
                        if ctx.recorder.record(&ctx.client, object_ref(n), "Warning", e, &msg).await.is_ok() {
                            told.insert(m.name.clone());
                        }
                    }
                    continue;
                }
                let tainted_for = seen.get(&m.name).and_then(|s| s.tainted_at).map(|t| now.duration_since(t));
                let Some(tainted_for) = tainted_for else { continue };
                failed |= !evict(&ctx, &pods.cache(), n, tainted_for).await;
            } else if has_taint(n, "NoExecute") || has_taint(n, "NoSchedule") {
                told.remove(&m.name);
                failed |= !unmark(&ctx, n).await;
            }
        }
        metrics.observe(started.elapsed(), !failed);
    }
}

/// Marks a silent node: Ready Unknown, unreachable taints. Whether it is marked.
async fn mark(ctx: &Context, n: &pb::Node) -> bool {
    let m = node_meta(n);
    if ready_status(n) != "Unknown" {
        let mut u = n.clone();
        let st = u.status.get_or_insert_with(Default::default);
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let c = pb::Condition {
            r#type: "Ready".into(),
            status: "Unknown".into(),
            reason: "NodeStatusUnknown".into(),
            message: "Kubelet stopped posting node status.".into(),
            last_transition_time: now.clone(),
            last_heartbeat_time: st
                .conditions
                .iter()
                .find(|c| c.r#type == "Ready")
                .map(|c| c.last_heartbeat_time.clone())
                .unwrap_or_default(),
        };
        st.conditions.retain(|c| c.r#type != "Ready");
        st.conditions.push(c);
        if let Err(e) = ctx.client.update_status(u).await {
            tracing::debug!(node = %m.name, error = %e, "node lifecycle: marking Ready Unknown failed");
            return false; // the next tick tries again, from the cache
        }
        tracing::warn!(node = %m.name, "node stopped reporting: Ready Unknown, tainted unreachable");
        let _ = ctx
            .recorder
            .record(
                &ctx.client,
                object_ref(n),
                "Normal",
                "NodeNotReady",
                &format!("Node {} status is now: NodeNotReady", m.name),
            )
            .await;
        return true; // taints on the next tick, over the version this write made
    }
    if has_taint(n, "NoExecute") && has_taint(n, "NoSchedule") {
        return true;
    }
    let mut u = n.clone();
    let spec = u.spec.get_or_insert_with(Default::default);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for effect in ["NoSchedule", "NoExecute"] {
        if !spec.taints.iter().any(|t| t.key == UNREACHABLE && t.effect == effect) {
            spec.taints.push(pb::Taint { time_added: stamp.clone(), ..unreachable_taint(effect) });
        }
    }
    match ctx.client.update(u).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(node = %m.name, error = %e, "node lifecycle: tainting failed");
            false
        }
    }
}

/// Takes the unreachable taints off a node heard from again.
async fn unmark(ctx: &Context, n: &pb::Node) -> bool {
    let mut u = n.clone();
    if let Some(s) = u.spec.as_mut() {
        s.taints.retain(|t| t.key != UNREACHABLE);
    }
    match ctx.client.update(u).await {
        Ok(_) => {
            tracing::info!(node = %node_meta(n).name, "node reports again: unreachable taints removed");
            true
        }
        Err(e) => {
            tracing::debug!(node = %node_meta(n).name, error = %e, "node lifecycle: untainting failed");
            false
        }
    }
}

/// Evicts the pods of a silent node whose tolerations have run out. Whether every
/// eviction went through.
async fn evict(
    ctx: &Context,
    pods: &flotilla_client::reflector::Cache<pb::Pod>,
    n: &pb::Node,
    tainted_for: Duration,
) -> bool {
    let name = &node_meta(n).name;
    let due: Vec<pb::Pod> = pods
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|p| p.spec.as_ref().is_some_and(|s| &s.node_name == name) && active(p))
        .filter(|p| eviction_delay(p).is_some_and(|d| tainted_for >= d))
        .cloned()
        .collect();
    let mut ok = true;
    for p in due {
        let m = meta(&p);
        let params = DeleteParams { uid: m.uid.clone(), ..Default::default() };
        match ctx.client.delete::<pb::Pod>(&m.namespace, &m.name, &params).await {
            Ok(_) => {
                tracing::info!(pod = %m.name, node = %name, "evicted from a node that stopped reporting");
                let msg = format!("Marking for deletion Pod {}/{}", m.namespace, m.name);
                let _ = ctx.recorder.record(&ctx.client, object_ref(&p), "Normal", "TaintManagerEviction", &msg).await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::debug!(pod = %m.name, error = %e, "eviction failed");
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_the_nodes_or_of_a_zone_silent_at_once_is_a_disruption() {
        assert_eq!(disrupted(&[("", true), ("", false), ("", false)]), (false, vec![]), "one of three: evict");
        assert_eq!(disrupted(&[("", true), ("", false)]), (false, vec![]), "a single silent node is a dead machine");
        assert!(disrupted(&[("", true), ("", true), ("", false), ("", false)]).0, "half of all");
        let (all, zones) = disrupted(&[("a", true), ("a", true), ("b", false), ("b", false), ("b", false)]);
        assert!(!all);
        assert_eq!(zones, vec!["a".to_string()], "all of zone a, two of five overall");
    }

    #[test]
    fn pods_go_at_once_after_their_toleration_or_never() {
        let pod = |tolerations: Vec<pb::Toleration>| pb::Pod {
            spec: Some(pb::PodSpec { tolerations, ..Default::default() }),
            ..Default::default()
        };
        let t = |key: &str, op: &str, effect: &str, secs: Option<i64>| pb::Toleration {
            key: key.into(),
            operator: op.into(),
            value: String::new(),
            effect: effect.into(),
            toleration_seconds: secs,
        };
        assert_eq!(eviction_delay(&pod(vec![])), Some(Duration::ZERO));
        assert_eq!(eviction_delay(&pod(vec![t("other", "Exists", "", None)])), Some(Duration::ZERO));
        assert_eq!(
            eviction_delay(&pod(vec![t(UNREACHABLE, "Exists", "NoExecute", Some(20))])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            eviction_delay(&pod(vec![t(UNREACHABLE, "Exists", "NoSchedule", None)])),
            Some(Duration::ZERO),
            "wrong effect"
        );
        assert_eq!(eviction_delay(&pod(vec![t("", "Exists", "", None)])), None, "tolerates everything");
    }
}
