//! The worker's Node: registered with what the machine has (less what is reserved), kept
//! alive by renewing its Lease in `kube-node-lease`, and its `Ready`, `MemoryPressure`,
//! `DiskPressure` and `PIDPressure` conditions written when they change — not on every
//! beat (the Lease is the heartbeat, as in Kubernetes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use flotilla_core::quantity::Quantity;

use flotilla_client::Client;
use flotilla_proto::api as pb;

use crate::{KubeletError, WorkerConfig};

/// Where node Leases live.
pub const NODE_LEASES: &str = "kube-node-lease";

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A /proc/meminfo figure in KiB, if it can be read.
fn meminfo_kib(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn memory_kib() -> Option<u64> {
    meminfo_kib("MemTotal")
}

/// How often memory, disk and pid pressure are measured.
pub const PRESSURE_EVERY: Duration = Duration::from_secs(10);
/// Memory pressure below this much available (Kubernetes' default eviction threshold).
pub const MEMORY_AVAILABLE_MIN_KIB: u64 = 100 * 1024;
/// Disk pressure below this share of the worker directory's filesystem free.
pub const DISK_AVAILABLE_MIN: f64 = 0.10;
/// PID pressure above this share of `kernel.pid_max` in use.
pub const PIDS_IN_USE_MAX: f64 = 0.90;

/// The node's pressure conditions as measured now: (type, under pressure, message).
pub fn pressure(dir: &Path) -> Vec<(&'static str, bool, String)> {
    let mut out = Vec::new();
    if let Some(avail) = meminfo_kib("MemAvailable") {
        out.push((
            "MemoryPressure",
            avail < MEMORY_AVAILABLE_MIN_KIB,
            format!("{} MiB available (pressure below {} MiB)", avail / 1024, MEMORY_AVAILABLE_MIN_KIB / 1024),
        ));
    }
    if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
        let total = st.blocks() as f64;
        let free = st.blocks_available() as f64;
        if total > 0.0 {
            let share = free / total;
            out.push((
                "DiskPressure",
                share < DISK_AVAILABLE_MIN,
                format!(
                    "{:.0}% of {} free (pressure below {:.0}%)",
                    share * 100.0,
                    dir.display(),
                    DISK_AVAILABLE_MIN * 100.0
                ),
            ));
        }
    }
    let max: f64 = first_line("/proc/sys/kernel/pid_max").parse().unwrap_or(0.0);
    if max > 0.0 {
        let used = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count()
            })
            .unwrap_or(0) as f64;
        out.push((
            "PIDPressure",
            used / max > PIDS_IN_USE_MAX,
            format!("{used} processes of pid_max {max} (pressure above {:.0}%)", PIDS_IN_USE_MAX * 100.0),
        ));
    }
    out
}

/// What pods may have: capacity less `reserved` (cpu and memory; never below zero).
pub fn allocatable(
    capacity: &BTreeMap<String, String>,
    reserved: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = capacity.clone();
    for (name, r) in reserved {
        let (Some(c), Ok(r)) = (capacity.get(name).and_then(|c| Quantity::parse(c).ok()), Quantity::parse(r)) else {
            continue;
        };
        let left = (c.millis() - r.millis()).max(0);
        let text = if name == "memory" {
            format!("{}Ki", left / 1000 / 1024)
        } else {
            Quantity::from_millis(left).to_string()
        };
        out.insert(name.clone(), text);
    }
    out
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
    let alloc = allocatable(&cap, &cfg.reserved);
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), std::env::consts::ARCH.into());
    pb::Node {
        metadata: Some(pb::ObjectMeta { name: cfg.name.clone(), labels, ..Default::default() }),
        spec: Some(pb::NodeSpec { pod_cidr: cfg.pod_cidr.clone(), taints: cfg.taints.clone(), ..Default::default() }),
        status: Some(pb::NodeStatus {
            allocatable: alloc,
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
/// status and labels are this worker's. Its spec (podCIDR, taints) is set at
/// registration only and then belongs to the controllers and admins: the node authorizer
/// refuses a node's changes to it.
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
        let labels = want.metadata.clone().unwrap_or_default().labels;
        let n = if labels.iter().all(|(k, v)| m.labels.get(k) == Some(v)) {
            n
        } else {
            m.labels.extend(labels);
            match client.update(n).await {
                Ok(n) => n,
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
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

/// The node's conditions as they should be: Ready (put back to True when something else —
/// the controller manager, while this worker could not reach the masters — changed it)
/// and, when measured, the pressure conditions. Whether anything changed.
pub fn conditions(st: &mut pb::NodeStatus, pressure: Option<&[(&'static str, bool, String)]>) -> bool {
    let mut changed = false;
    if !st.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True") {
        st.conditions.retain(|c| c.r#type != "Ready");
        st.conditions.push(ready_condition());
        changed = true;
    }
    for (kind, on, message) in pressure.unwrap_or_default() {
        let status = if *on { "True" } else { "False" };
        let reason = match (*kind, *on) {
            ("MemoryPressure", true) => "KubeletHasInsufficientMemory",
            ("MemoryPressure", false) => "KubeletHasSufficientMemory",
            ("DiskPressure", true) => "KubeletHasDiskPressure",
            ("DiskPressure", false) => "KubeletHasNoDiskPressure",
            ("PIDPressure", true) => "KubeletHasInsufficientPID",
            _ => "KubeletHasSufficientPID",
        };
        if st.conditions.iter().any(|c| c.r#type == *kind && c.status == status) {
            continue; // unchanged: not written (the message's figures move all the time)
        }
        st.conditions.retain(|c| c.r#type != *kind);
        st.conditions.push(pb::Condition {
            r#type: (*kind).into(),
            status: status.into(),
            reason: reason.into(),
            message: message.clone(),
            last_transition_time: now(),
            last_heartbeat_time: now(),
        });
        changed = true;
    }
    changed
}

/// Writes `node`'s conditions when [`conditions`] changes them; a failed write is tried
/// again on a later pass.
pub async fn keep_conditions(client: &Client, mut node: pb::Node, pressure: Option<Vec<(&'static str, bool, String)>>) {
    let st = node.status.get_or_insert_with(Default::default);
    if !conditions(st, pressure.as_deref()) {
        return;
    }
    let said: Vec<String> = st.conditions.iter().map(|c| format!("{}={}", c.r#type, c.status)).collect();
    match client.update_status(node).await {
        Ok(_) => tracing::info!(conditions = ?said, "node conditions written"),
        Err(e) => tracing::debug!(error = %e, "could not write the node's conditions"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_is_capacity_less_what_is_reserved() {
        let cap = BTreeMap::from([
            ("cpu".to_string(), "2".to_string()),
            ("memory".to_string(), "4194304Ki".to_string()),
            ("pods".to_string(), "110".to_string()),
        ]);
        let reserved =
            BTreeMap::from([("cpu".to_string(), "500m".to_string()), ("memory".to_string(), "1Gi".to_string())]);
        let a = allocatable(&cap, &reserved);
        assert_eq!(a["cpu"], "1500m");
        assert_eq!(a["memory"], "3145728Ki");
        assert_eq!(a["pods"], "110");
        let all = BTreeMap::from([("cpu".to_string(), "8".to_string())]);
        assert_eq!(allocatable(&cap, &all)["cpu"], "0", "never below zero");
    }

    #[test]
    fn conditions_are_written_only_when_their_status_changes() {
        let mut st = pb::NodeStatus { conditions: vec![ready_condition()], ..Default::default() };
        let calm = [("MemoryPressure", false, "1000 MiB available".to_string())];
        assert!(conditions(&mut st, Some(&calm)), "a new condition");
        let calm_again = [("MemoryPressure", false, "990 MiB available".to_string())];
        assert!(!conditions(&mut st, Some(&calm_again)), "the same status: nothing to write");
        assert!(!conditions(&mut st, None), "not measured: nothing to write");
        let tight = [("MemoryPressure", true, "50 MiB available".to_string())];
        assert!(conditions(&mut st, Some(&tight)));
        let c = st.conditions.iter().find(|c| c.r#type == "MemoryPressure").expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "KubeletHasInsufficientMemory"));
        st.conditions.iter_mut().for_each(|c| {
            if c.r#type == "Ready" {
                c.status = "Unknown".into();
            }
        });
        assert!(conditions(&mut st, None), "Ready put back");
        assert_eq!(st.conditions.iter().filter(|c| c.r#type == "Ready").count(), 1);
        assert!(pressure(Path::new("/")).iter().any(|(k, _, _)| *k == "DiskPressure"), "measured here");
    }
}
