//! The pod garbage collector: pods bound to a node that does not exist (it was deleted,
//! or never registered) are force-deleted — no kubelet will ever confirm them — and
//! finished pods (Succeeded, Failed) beyond `--terminated-pod-gc-threshold` are deleted,
//! oldest first.
//!
//! A pod is only taken for orphaned when its node was missing on two looks at least
//! [`QUARANTINE`] apart, so that a pod bound just before its Node reached the cache is
//! left alone.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use flotilla_client::DeleteParams;
use flotilla_proto::api as pb;
use tokio::time::Instant;

use crate::informers::Informers;
use crate::manager::Context;
use crate::pods::{meta, phase};

/// How often pods are looked at.
const EVERY: Duration = Duration::from_secs(2);
/// How long a pod's node must have been missing before the pod is deleted.
pub const QUARANTINE: Duration = Duration::from_secs(5);

/// The finished pods beyond `threshold`, oldest first: (namespace, name, uid).
pub fn finished_beyond(pods: &[&pb::Pod], threshold: usize) -> Vec<(String, String, String)> {
    let mut done: Vec<&pb::Pod> = pods.iter().copied().filter(|p| matches!(phase(p), "Succeeded" | "Failed")).collect();
    if done.len() <= threshold {
        return vec![];
    }
    done.sort_by(|a, b| {
        meta(a).creation_timestamp.cmp(&meta(b).creation_timestamp).then(meta(a).name.cmp(&meta(b).name))
    });
    done[..done.len() - threshold]
        .iter()
        .map(|p| (meta(p).namespace.clone(), meta(p).name.clone(), meta(p).uid.clone()))
        .collect()
}

/// Starts the informers the pod garbage collector reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Node>();
    informers.get::<pb::Pod>();
}

/// Runs the pod garbage collector for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (nodes, pods) = (ctx.informers.get::<pb::Node>(), ctx.informers.get::<pb::Pod>());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { nodes.wait_synced().await; pods.wait_synced().await; } => {}
    }
    let metrics = ctx.metrics("podgc");
    let threshold = ctx.settings.terminated_pod_gc_threshold;
    // Pods (by uid) first seen on a missing node, and when.
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = ctx.stopped() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let exists: BTreeSet<String> = nodes
            .cache()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|k| k.trim_start_matches('/').to_string())
            .collect();
        let (orphans, finished) = {
            let cache = pods.cache();
            let all = cache.read().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let mut orphans = Vec::new();
            let mut seen = BTreeSet::new();
            for p in all.values() {
                let node = p.spec.as_ref().map_or("", |s| s.node_name.as_str());
                if node.is_empty() || exists.contains(node) {
                    continue;
                }
                let m = meta(p);
                seen.insert(m.uid.clone());
                let since = *missing_since.entry(m.uid.clone()).or_insert(now);
                if now.duration_since(since) >= QUARANTINE {
                    orphans.push((m.namespace.clone(), m.name.clone(), m.uid.clone(), node.to_string()));
                }
            }
            missing_since.retain(|uid, _| seen.contains(uid));
            let list: Vec<&pb::Pod> = all.values().collect();
            (orphans, finished_beyond(&list, threshold))
        };
        let mut failed = false;
        for (ns, name, uid, node) in orphans {
            let p = DeleteParams { uid, grace_period_seconds: Some(0), ..Default::default() };
            match ctx.client.delete::<pb::Pod>(&ns, &name, &p).await {
                Ok(_) => tracing::info!(pod = %name, %node, "deleted a pod whose node does not exist"),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "pod gc: delete failed");
                    failed = true;
                }
            }
        }
        for (ns, name, uid) in finished {
            let p = DeleteParams { uid, ..Default::default() };
            match ctx.client.delete::<pb::Pod>(&ns, &name, &p).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(_) => failed = true,
            }
        }
        metrics.observe(started.elapsed(), !failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_pods_beyond_the_threshold_go_oldest_first() {
        let pod = |name: &str, phase: &str, created: &str| pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                creation_timestamp: created.into(),
                ..Default::default()
            }),
            spec: None,
            status: Some(pb::PodStatus { phase: phase.into(), ..Default::default() }),
        };
        let pods = [
            pod("a", "Succeeded", "2026-01-01T00:00:03Z"),
            pod("b", "Failed", "2026-01-01T00:00:01Z"),
            pod("c", "Running", "2026-01-01T00:00:00Z"),
            pod("d", "Succeeded", "2026-01-01T00:00:02Z"),
        ];
        let refs: Vec<&pb::Pod> = pods.iter().collect();
        let names = |v: Vec<(String, String, String)>| v.into_iter().map(|(_, n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(finished_beyond(&refs, 1)), vec!["b", "d"]);
        assert_eq!(names(finished_beyond(&refs, 3)), Vec::<String>::new());
    }
}
