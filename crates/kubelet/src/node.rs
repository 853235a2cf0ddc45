//! The worker's Node: registered with what the machine has, kept alive by renewing its
//! Lease in `kube-node-lease`, and its `Ready` condition written when it changes — not on
//! every beat (the Lease is the heartbeat, as in Kubernetes).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_client::Client;
use flotilla_proto::api as pb;

use crate::{KubeletError, WorkerConfig};

/// Where node Leases live.
pub const NODE_LEASES: &str = "kube-node-lease";

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The machine's memory in KiB (from /proc/meminfo), if it can be read.
fn memory_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.lines().next().unwrap_or_default().trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// Capacity: the machine's cpus and memory, and the pods it takes.
pub fn capacity(max_pods: u32) -> BTreeMap<String, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut c = BTreeMap::from([("cpu".to_string(), cpus.to_string()), ("pods".to_string(), max_pods.to_string())]);
    if let Some(kib) = memory_kib() {
        c.insert("memory".into(), format!("{kib}Ki"));
    }
    c
}

/// The Node object this worker registers.
pub fn node_object(cfg: &WorkerConfig, runtime_version: &str) -> pb::Node {
    let cap = capacity(cfg.max_pods);
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), std::env::consts::ARCH.into());
    pb::Node {
        metadata: Some(pb::ObjectMeta { name: cfg.name.clone(), labels, ..Default::default() }),
        spec: Some(pb::NodeSpec { pod_cidr: cfg.pod_cidr.clone(), taints: cfg.taints.clone(), ..Default::default() }),
        status: Some(pb::NodeStatus {
            allocatable: cap.clone(),
            capacity: cap,
            conditions: vec![ready_condition()],
            addresses: vec![
                pb::NodeAddress { r#type: "InternalIP".into(), address: cfg.node_ip.clone() },
                pb::NodeAddress { r#type: "Hostname".into(), address: cfg.name.clone() },
            ],
            daemon_endpoints: Some(pb::NodeDaemonEndpoints {
                kubelet_endpoint: Some(pb::DaemonEndpoint { port: i32::from(cfg.kubelet_port) }),
            }),
            node_info: Some(pb::NodeSystemInfo {
                machine_id: first_line("/etc/machine-id"),
                kernel_version: first_line("/proc/sys/kernel/osrelease"),
                os_image: os_image(),
                container_runtime_version: runtime_version.into(),
                kubelet_version: format!("flotilla-{}", env!("CARGO_PKG_VERSION")),
                architecture: std::env::consts::ARCH.into(),
                operating_system: "linux".into(),
            }),
        }),
    }
}

fn ready_condition() -> pb::Condition {
    pb::Condition {
        r#type: "Ready".into(),
        status: "True".into(),
        reason: "KubeletReady".into(),
        message: "flotilla worker is posting ready status".into(),
        last_transition_time: now(),
        last_heartbeat_time: now(),
    }
}

/// Registers the Node, or brings an existing one (this worker restarted) up to date: its
/// status, labels and taints are this worker's; a podCIDR given to it is kept.
pub async fn register(client: &Client, cfg: &WorkerConfig, runtime_version: &str) -> Result<pb::Node, KubeletError> {
    let want = node_object(cfg, runtime_version);
    match client.create(want.clone()).await {
        Ok(n) => return Ok(n),
        Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    for _ in 0..5 {
        let mut n: pb::Node = client.get("", &cfg.name).await?;
        let m = n.metadata.get_or_insert_with(Default::default);
        m.labels.extend(want.metadata.clone().unwrap_or_default().labels);
        let spec = n.spec.get_or_insert_with(Default::default);
        let wanted = want.spec.clone().unwrap_or_default();
        for t in wanted.taints {
            if !spec.taints.iter().any(|x| x.key == t.key && x.effect == t.effect) {
                spec.taints.push(t);
            }
        }
        if spec.pod_cidr.is_empty() {
            spec.pod_cidr = wanted.pod_cidr;
        }
        let n = match client.update(n).await {
            Ok(n) => n,
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        };
        let mut n = n;
        n.status = want.status.clone();
        match client.update_status(n).await {
            Ok(n) => return Ok(n),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(KubeletError::Runtime(format!("node {} kept changing while it was registered", cfg.name)))
}

/// Puts `node`'s Ready condition back to True when something else (the controller
/// manager, while this worker could not reach the masters) changed it; a failed write is
/// tried again on the next pass.
pub async fn ensure_ready(client: &Client, mut node: pb::Node) {
    let st = node.status.get_or_insert_with(Default::default);
    if st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True") {
        return;
    }
    st.conditions.retain(|c| c.r#type != "Ready");
    st.conditions.push(ready_condition());
    match client.update_status(node).await {
        Ok(_) => tracing::info!("node Ready again"),
        Err(e) => tracing::debug!(error = %e, "could not put the node's Ready condition back"),
    }
}

/// The Lease that says this node is alive.
fn lease(name: &str, duration: Duration) -> pb::Lease {
    pb::Lease {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: NODE_LEASES.into(), ..Default::default() }),
        spec: Some(pb::LeaseSpec {
            holder_identity: name.into(),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(40).max(1)),
            renew_time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            ..Default::default()
        }),
    }
}

/// Renews the node's Lease every `every` until `stop` completes. A failed renewal is
/// tried again at the next beat (the client moves to another master by itself).
pub async fn renew_lease(client: Client, name: String, every: Duration, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let fresh = lease(&name, every * 20);
        let result = match client.get::<pb::Lease>(NODE_LEASES, &name).await {
            Ok(mut l) => {
                l.spec = fresh.spec;
                client.update(l).await.map(|_| ())
            }
            Err(e) if e.is_not_found() => client.create(fresh).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "node lease not renewed; trying again at the next beat");
        }
    }
}
