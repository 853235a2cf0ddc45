//! Pod networking with the standard CNI plugins (`containernetworking-plugins`): each pod
//! gets a network namespace of its own (`ip netns add`), `lo` up (the `loopback` plugin)
//! and an `eth0` on the node's bridge (`bridge` with `host-local` addresses from the
//! node's podCIDR, the bridge as the pods' gateway), and `portmap` when it asks for host
//! ports. The plugins are run as the CNI spec says: the command and the pod's namespace in
//! the environment, the network's configuration on stdin, the result on stdout.
//!
//! Pods on different nodes reach each other as flannel's host-gw backend makes them: a
//! route to every other node's podCIDR via that node's InternalIP ([`sync_routes`], kept
//! in step with the Node objects). The routes are installed with protocol number
//! [`ROUTE_PROTO`], so the ones this worker owns are found again after a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use flotilla_proto::api as pb;
use tokio::io::AsyncWriteExt;

use crate::KubeletError;

/// The route protocol number of the routes to other nodes' pods.
pub const ROUTE_PROTO: &str = "199";
/// The network's name in CNI configuration (and host-local's state).
const NETWORK: &str = "flotilla";
const CNI_VERSION: &str = "1.0.0";

/// A pod's network namespace and address, as set up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    /// The pod's uid.
    pub uid: String,
    /// The namespace's name (`ip netns`), empty for a pod on the host's network.
    pub netns: String,
    /// The pod's address.
    pub ip: String,
    /// The node's pod range it was given an address from.
    #[serde(default)]
    pub pod_cidr: String,
    /// The results of the plugins' ADD (their DEL is given them back).
    #[serde(default)]
    pub results: Vec<serde_json::Value>,
    /// The host ports mapped (for portmap's DEL).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The pod's volumes: name → path on the node.
    #[serde(default)]
    pub volumes: BTreeMap<String, String>,
    /// Memory-backed volumes mounted for the pod (unmounted with the sandbox).
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// The pod's resolv.conf on the node (mounted at /etc/resolv.conf), if it has one.
    #[serde(default)]
    pub resolv_conf: String,
}

impl Sandbox {
    /// The namespace's path, for the OCI spec.
    pub fn netns_path(&self) -> Option<String> {
        (!self.netns.is_empty()).then(|| format!("/run/netns/{}", self.netns))
    }
}

/// One host port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The node's port.
    pub host_port: i32,
    /// The container's port.
    pub container_port: i32,
    /// tcp or udp.
    pub protocol: String,
}

/// The host ports a pod asks for.
pub fn port_mappings(spec: &pb::PodSpec) -> Vec<PortMapping> {
    spec.containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.host_port != 0)
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: if p.protocol.is_empty() { "tcp".into() } else { p.protocol.to_lowercase() },
        })
        .collect()
}

/// The node's pod network: CNI plugins from `bin_dir`, state under `dir`.
#[derive(Debug, Clone)]
pub struct CniNetwork {
    bin_dir: PathBuf,
    dir: PathBuf,
    bridge: String,
}

/// Runs a command; its stdout, or an error with its stderr.
async fn run(cmd: &str, args: &[&str]) -> Result<String, KubeletError> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| KubeletError::Runtime(format!("cannot run {cmd}: {e}")))?;
    if !out.status.success() {
        return Err(KubeletError::Runtime(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl CniNetwork {
    /// The network, checking that the plugins it needs are in `bin_dir`.
    pub fn new(bin_dir: &Path, dir: &Path, bridge: &str) -> Result<CniNetwork, KubeletError> {
        for p in ["bridge", "host-local", "loopback", "portmap"] {
            if !bin_dir.join(p).is_file() {
                return Err(KubeletError::Runtime(format!(
                    "the CNI plugin {p:?} is not in {} (apt-get install containernetworking-plugins)",
                    bin_dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| KubeletError::io(dir, e))?;
        // A node forwards between its pods' bridge and the other nodes.
        let fwd = Path::new("/proc/sys/net/ipv4/ip_forward");
        if std::fs::read_to_string(fwd).map(|s| s.trim() != "1").unwrap_or(true) {
            std::fs::write(fwd, "1").map_err(|e| KubeletError::io(fwd, e))?;
        }
        Ok(CniNetwork { bin_dir: bin_dir.into(), dir: dir.into(), bridge: bridge.into() })
    }

    /// The plugins of the pod network, in order, for `pod_cidr`.
    fn plugins(&self, pod_cidr: &str, ports: &[PortMapping]) -> Vec<serde_json::Value> {
        let mut list = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.dir.join("ipam").display().to_string(),
            },
        })];
        if !ports.is_empty() {
            list.push(serde_json::json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": ports},
                "snat": true,
            }));
        }
        list
    }

    /// Runs one plugin; its result.
    async fn plugin(
        &self,
        command: &str,
        conf: &serde_json::Value,
        id: &str,
        netns: &str,
        ifname: &str,
        prev: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, KubeletError> {
        let mut conf = conf.clone();
        conf["cniVersion"] = CNI_VERSION.into();
        conf["name"] = NETWORK.into();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let kind = conf["type"].as_str().unwrap_or_default().to_string();
        let mut child = tokio::process::Command::new(self.bin_dir.join(&kind))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| KubeletError::Runtime(format!("cannot run the CNI plugin {kind}: {e}")))?;
        let input = serde_json::to_vec(&conf).map_err(|e| KubeletError::Runtime(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await.map_err(|e| KubeletError::Runtime(format!("CNI plugin {kind}: {e}")))?;
        }
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| KubeletError::Runtime(format!("CNI plugin {kind} {command} took over 60 s")))?
            .map_err(|e| KubeletError::Runtime(format!("CNI plugin {kind}: {e}")))?;
        if !out.status.success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let m = v["msg"].as_str()?.to_string();
                    Some(match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{m}: {d}"),
                        _ => m,
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(KubeletError::Runtime(format!("CNI plugin {kind} {command}: {msg}")));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| KubeletError::Runtime(format!("CNI plugin {kind} {command}: bad result: {e}")))
    }

    /// The namespace name of pod `uid`.
    fn netns_name(uid: &str) -> String {
        format!("flotilla-{uid}")
    }

    /// Sets up pod `uid`'s namespace and address on `pod_cidr`.
    pub async fn add(&self, uid: &str, pod_cidr: &str, ports: &[PortMapping]) -> Result<Sandbox, KubeletError> {
        let netns = Self::netns_name(uid);
        if !Path::new("/run/netns").join(&netns).exists() {
            run("ip", &["netns", "add", &netns]).await?;
        }
        let mut sb = Sandbox {
            uid: uid.into(),
            netns: netns.clone(),
            ip: String::new(),
            pod_cidr: pod_cidr.into(),
            results: vec![],
            ports: ports.into(),
            volumes: BTreeMap::new(),
            tmpfs: Vec::new(),
            resolv_conf: String::new(),
        };
        let added = async {
            self.plugin("ADD", &serde_json::json!({"type": "loopback"}), uid, &netns, "lo", None).await?;
            let mut prev: Option<serde_json::Value> = None;
            for conf in self.plugins(pod_cidr, ports) {
                let r = self.plugin("ADD", &conf, uid, &netns, "eth0", prev.as_ref()).await?;
                sb.results.push(r.clone());
                prev = Some(r);
            }
            let ip = prev
                .as_ref()
                .and_then(|r| r["ips"].as_array()?.first()?["address"].as_str().map(str::to_string))
                .ok_or_else(|| KubeletError::Runtime("the CNI bridge plugin gave the pod no address".into()))?;
            sb.ip = ip.split('/').next().unwrap_or_default().to_string();
            Ok::<(), KubeletError>(())
        }
        .await;
        if let Err(e) = added {
            // Undo what was done: a half-made sandbox holds an address.
            let _ = self.del(&sb).await;
            return Err(e);
        }
        Ok(sb)
    }

    /// Tears down a pod's network: the plugins' DEL (last first), then the namespace.
    pub async fn del(&self, sb: &Sandbox) -> Result<(), KubeletError> {
        if sb.netns.is_empty() {
            return Ok(());
        }
        let plugins = self.plugins(&sb.pod_cidr, &sb.ports);
        let mut failed = None;
        for (i, conf) in plugins.iter().enumerate().rev() {
            let prev = sb.results.get(i).filter(|r| !r.is_null());
            if let Err(e) = self.plugin("DEL", conf, &sb.uid, &sb.netns, "eth0", prev).await {
                failed = Some(e);
            }
        }
        if Path::new("/run/netns").join(&sb.netns).exists() {
            run("ip", &["netns", "delete", &sb.netns]).await?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The routes to other nodes' pods this worker should have: podCIDR → InternalIP.
pub fn wanted_routes(nodes: &[pb::Node], me: &str) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter(|n| n.metadata.as_ref().is_some_and(|m| m.name != me))
        .filter_map(|n| {
            let cidr = n.spec.as_ref().map(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty())?;
            let ip =
                n.status.as_ref()?.addresses.iter().find(|a| a.r#type == "InternalIP").map(|a| a.address.clone())?;
            Some((cidr, ip))
        })
        .collect()
}

/// Makes this worker's routes to other nodes' pods what `want` says (podCIDR → via).
pub async fn sync_routes(want: &BTreeMap<String, String>) -> Result<(), KubeletError> {
    let have = run("ip", &["-4", "route", "show", "proto", ROUTE_PROTO]).await?;
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    for line in have.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(dst), Some(i)) = (words.first(), words.iter().position(|w| *w == "via")) {
            if let Some(via) = words.get(i + 1) {
                current.insert((*dst).to_string(), (*via).to_string());
            }
        }
    }
    for (dst, via) in want {
        if current.get(dst) != Some(via) {
            run("ip", &["route", "replace", dst, "via", via, "proto", ROUTE_PROTO]).await?;
            tracing::info!(pods = %dst, via = %via, "route to another node's pods");
        }
    }
    for dst in current.keys().filter(|d| !want.contains_key(*d)) {
        run("ip", &["route", "del", dst, "proto", ROUTE_PROTO]).await?;
        tracing::info!(pods = %dst, "route to a node that is gone removed");
    }
    Ok(())
}

/// Keeps this worker's routes to the other nodes' pods in step with the Node objects
/// until `stop` completes.
pub async fn keep_routes(client: flotilla_client::Client, me: String, stop: impl std::future::Future<Output = ()>) {
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut nodes = flotilla_client::Reflector::<pb::Node>::start_notifying(client, Default::default(), Some(tx));
    let mut applied: Option<BTreeMap<String, String>> = None;
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(10));
    tokio::pin!(stop);
    // Nothing is changed before the nodes are known: routes from an empty cache would
    // remove every route a restarted worker's pods are using, until the first list.
    tokio::select! {
        () = &mut stop => return,
        () = nodes.wait_synced() => {}
    }
    loop {
        tokio::select! {
            () = &mut stop => return,
            Some(_) = changes.recv() => while changes.try_recv().is_ok() {},
            _ = retry.tick() => applied = None, // put back what someone else changed
        }
        let want = wanted_routes(&nodes.snapshot(), &me);
        if applied.as_ref() == Some(&want) {
            continue;
        }
        match sync_routes(&want).await {
            Ok(()) => applied = Some(want),
            Err(e) => tracing::warn!(error = %e, "cannot set the routes to other nodes' pods"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str) -> pb::Node {
        pb::Node {
            metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
            spec: Some(pb::NodeSpec { pod_cidr: cidr.into(), ..Default::default() }),
            status: Some(pb::NodeStatus {
                addresses: vec![pb::NodeAddress { r#type: "InternalIP".into(), address: ip.into() }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn routes_go_to_every_other_node_with_a_pod_range() {
        let nodes = [
            node("a", "10.244.0.0/24", "192.168.1.1"),
            node("b", "10.244.1.0/24", "192.168.1.2"),
            node("c", "", "192.168.1.3"),
        ];
        let want = wanted_routes(&nodes, "a");
        assert_eq!(want, BTreeMap::from([("10.244.1.0/24".to_string(), "192.168.1.2".to_string())]));
    }

    #[test]
    fn host_ports_are_collected_with_their_protocol() {
        let spec = pb::PodSpec {
            containers: vec![pb::Container {
                ports: vec![
                    pb::ContainerPort { container_port: 80, host_port: 8080, ..Default::default() },
                    pb::ContainerPort {
                        container_port: 53,
                        host_port: 0,
                        protocol: "UDP".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(port_mappings(&spec), [PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into() }]);
    }
}
