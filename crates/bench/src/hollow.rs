//! Hollow nodes: Node objects that this process keeps alive and whose pods it "runs" as a
//! kubelet would report them, without containers — Kubernetes' kubemark and kwok idea,
//! for testing controllers and measuring the control plane at scale before (and beside)
//! real workers.
//!
//! For each name it registers a Ready Node with capacity, renews the node's Lease in
//! `kube-node-lease` every 10 s, and watches pods: a pod bound to one of its nodes is
//! reported Running and Ready (with a pod IP, a start time and one running container
//! status per container), and a pod on one of its nodes that is being deleted gracefully
//! is confirmed gone at once (deleted with grace 0, on its uid), as a kubelet does once
//! its containers have stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_client::reflector::Change;
use flotilla_client::{Client, ClientError, DeleteParams, ListParams, Reflector};
use flotilla_proto::api as pb;

/// Where node Leases live, as in Kubernetes.
pub const NODE_LEASES: &str = "kube-node-lease";
/// How often each node's Lease is renewed (as kubelets do).
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn quantities(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The Node object of hollow node `name`: Ready, 64 cpu, 256 GiB, 110 pods.
pub fn node(name: &str, labels: BTreeMap<String, String>) -> pb::Node {
    let cap = quantities(&[("cpu", "64"), ("memory", "256Gi"), ("pods", "110")]);
    pb::Node {
        metadata: Some(pb::ObjectMeta { name: name.into(), labels, ..Default::default() }),
        spec: None,
        status: Some(pb::NodeStatus {
            capacity: cap.clone(),
            allocatable: cap,
            conditions: vec![pb::Condition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "HollowNodeReady".into(),
                message: "a hollow node: no containers run here".into(),
                last_transition_time: now(),
                last_heartbeat_time: now(),
            }],
            ..Default::default()
        }),
    }
}

/// The Lease that says node `name` is alive.
pub fn node_lease(name: &str) -> pb::Lease {
    pb::Lease {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: NODE_LEASES.into(), ..Default::default() }),
        spec: Some(pb::LeaseSpec {
            holder_identity: name.into(),
            lease_duration_seconds: Some(40),
            renew_time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            ..Default::default()
        }),
    }
}

/// Creates `o`, or takes the existing one (a hollow node restarted).
async fn ensure<T: flotilla_client::Resource>(client: &Client, o: T) -> Result<(), ClientError> {
    match client.create(o).await {
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The status a running, ready pod reports.
fn running_status(pod: &pb::Pod, node_ip: &str, pod_ip: String) -> pb::PodStatus {
    let t = now();
    let condition = |kind: &str| pb::Condition {
        r#type: kind.into(),
        status: "True".into(),
        last_transition_time: t.clone(),
        ..Default::default()
    };
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    pb::PodStatus {
        phase: "Running".into(),
        conditions: ["PodScheduled", "Initialized", "ContainersReady", "Ready"].into_iter().map(condition).collect(),
        host_ip: node_ip.into(),
        pod_ip,
        start_time: t.clone(),
        container_statuses: containers
            .iter()
            .map(|c| pb::ContainerStatus {
                name: c.name.clone(),
                state: Some(pb::ContainerState {
                    running: Some(pb::ContainerStateRunning { started_at: t.clone() }),
                    ..Default::default()
                }),
                ready: true,
                started: true,
                image: c.image.clone(),
                container_id: format!("hollow://{}", c.name),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Runs hollow nodes `names` until `shutdown` completes. Each node's address is
/// `10.255.0.<i>`-like and its pods get addresses from `10.<i>.0.0/16`-like ranges (never
/// routed: nothing listens on them).
pub async fn run(
    client: Client,
    names: Vec<String>,
    labels: BTreeMap<String, String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    // Not (yet) one of the built-in namespaces.
    let ns = pb::Namespace {
        metadata: Some(pb::ObjectMeta { name: NODE_LEASES.into(), ..Default::default() }),
        ..Default::default()
    };
    ensure(&client, ns).await?;
    for n in &names {
        ensure(&client, node(n, labels.clone())).await?;
        ensure(&client, node_lease(n)).await?;
    }
    let ours: Arc<BTreeSet<String>> = Arc::new(names.iter().cloned().collect());
    let index: BTreeMap<String, usize> = names.iter().cloned().enumerate().map(|(i, n)| (n, i + 1)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pods = Reflector::<pb::Pod>::start_notifying(client.clone(), ListParams::default(), Some(tx));
    let next_ip = Arc::new(AtomicU32::new(2));
    let node_cache = Reflector::<pb::Node>::start(client.clone(), ListParams::default());
    let renew = {
        let (client, names, nodes) = (client.clone(), names.clone(), node_cache.cache());
        async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            loop {
                tick.tick().await;
                for n in &names {
                    let _ = client.update(node_lease(n)).await;
                }
                // A node marked Ready Unknown while it was silent says Ready again, as a
                // kubelet posting its status does.
                let unready: Vec<pb::Node> = nodes
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter(|n| n.metadata.as_ref().is_some_and(|m| ours_names(&names, &m.name)))
                    .filter(|n| {
                        !n.status
                            .as_ref()
                            .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
                    })
                    .cloned()
                    .collect();
                for mut n in unready {
                    let name = n.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                    let fresh = node(&name, BTreeMap::new()).status.unwrap_or_default().conditions;
                    let st = n.status.get_or_insert_with(Default::default);
                    st.conditions.retain(|c| c.r#type != "Ready");
                    st.conditions.extend(fresh);
                    let _ = client.update_status(n).await;
                }
            }
        }
    };
    let act = |pod: pb::Pod| {
        let (client, ours, next_ip) = (client.clone(), ours.clone(), next_ip.clone());
        let node = pod.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
        let i = index.get(&node).copied().unwrap_or(0);
        async move {
            if !ours.contains(&node) {
                return;
            }
            let mut pod = pod;
            let mut pod_ip = None;
            // A report whose outcome is unknown (a master died mid-call) is made again
            // after a pause, from the pod as it is then, as a kubelet's next sync would.
            for attempt in 0..8u32 {
                let m = pod.metadata.clone().unwrap_or_default();
                let result = if !m.deletion_timestamp.is_empty() {
                    let p = DeleteParams { uid: m.uid.clone(), grace_period_seconds: Some(0), ..Default::default() };
                    client.delete::<pb::Pod>(&m.namespace, &m.name, &p).await.map(|_| ())
                } else if pod.status.as_ref().is_some_and(|s| s.phase == "Running") {
                    return;
                } else {
                    let ip = pod_ip.get_or_insert_with(|| {
                        let n = next_ip.fetch_add(1, Ordering::Relaxed);
                        format!("10.{}.{}.{}", 100 + i % 100, (n >> 8) & 0xff, n & 0xff)
                    });
                    let mut running = pod.clone();
                    running.status = Some(running_status(&pod, &format!("10.255.{}.{}", i >> 8, i & 0xff), ip.clone()));
                    // A compare-and-swap on the version seen: a pod changed meanwhile
                    // comes back through the watch.
                    client.update_status(running).await.map(|_| ())
                };
                match result {
                    Ok(()) => return,
                    Err(e) if e.is_not_found() || e.is_conflict() => return,
                    Err(e) => {
                        tracing::warn!(pod = %m.name, error = %e, attempt, "hollow node: reporting a pod failed");
                        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
                        match client.get::<pb::Pod>(&m.namespace, &m.name).await {
                            Ok(p) if p.metadata.as_ref().is_some_and(|pm| pm.uid == m.uid) => pod = p,
                            Ok(_) => return,
                            Err(e) if e.is_not_found() => return,
                            Err(_) => {}
                        }
                    }
                }
            }
        }
    };
    let cache = pods.cache();
    let dispatch = async {
        while let Some(c) = rx.recv().await {
            match c {
                Change::Upsert { new, .. } => {
                    tokio::spawn(act(new));
                }
                Change::Listed => {
                    let all: Vec<pb::Pod> = cache.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                    for p in all {
                        tokio::spawn(act(p));
                    }
                }
                Change::Deleted(_) => {}
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = renew => {}
        () = dispatch => {}
    }
    drop((pods, node_cache));
    Ok(())
}

fn ours_names(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}
