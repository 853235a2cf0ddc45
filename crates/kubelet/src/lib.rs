//! Flotilla's kubelet: the node agent of a worker. It registers the worker's Node,
//! renews the node's Lease, and runs the pods bound to it through a container runtime,
//! reporting their status.
//!
//! * [`node`]: the Node (capacity from the machine, addresses, labels, taints, node info)
//!   and its Lease;
//! * [`runtime`]: the `Runtime` trait; [`process`] runs containers as host processes under
//!   a shim (development and tests without root); [`containerd`] runs real containers;
//! * [`pods`]: the pod sync loop — start, restart with back-off, stop gracefully, status;
//! * [`prober`]: startup, liveness and readiness probes (exec, TCP, HTTP);
//! * [`metrics`]: lists (relists), the master in use, containers, sync passes;
//! * [`logs`]: the log endpoint the apiserver forwards `PodLogs` to.
//!
//! It talks to the masters only through the client crate (which moves between masters by
//! itself and resumes its watches without a relist); it must not depend on the store or
//! the apiserver.

pub mod containerd;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pods;
pub mod prober;
pub mod process;
pub mod runtime;
pub mod volumes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Client, ListParams, Reflector};
use flotilla_proto::api as pb;

pub use error::KubeletError;
pub use runtime::Runtime;

/// How a worker's kubelet is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Node's name.
    pub name: String,
    /// The node's address (its InternalIP).
    pub node_ip: String,
    /// Labels the Node gets (besides the `kubernetes.io/` ones it always has).
    pub labels: BTreeMap<String, String>,
    /// Taints the Node is registered with.
    pub taints: Vec<pb::Taint>,
    /// A podCIDR of its own, when Node IPAM does not give one.
    pub pod_cidr: String,
    /// Pods the node takes.
    pub max_pods: u32,
    /// How often the node's Lease is renewed.
    pub lease_interval: Duration,
    /// How often every pod is looked at even without a change.
    pub resync: Duration,
    /// The port of the kubelet's endpoint (logs) on `node_ip`.
    pub kubelet_port: u16,
    /// TLS of that endpoint (client certificates required; only masters are answered).
    /// None: plaintext.
    pub kubelet_tls: Option<Arc<flotilla_tls::ServerTls>>,
    /// Cluster DNS servers written into pods' /etc/resolv.conf (empty: pods keep their
    /// image's).
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Resources kept back from pods (`cpu`, `memory`): allocatable = capacity - these.
    pub reserved: BTreeMap<String, String>,
    /// The worker's directory (its disk is the one DiskPressure watches).
    pub dir: std::path::PathBuf,
    /// Container logs are rotated past this many bytes.
    pub log_max_size: u64,
    /// Rotated logs kept per container (besides the current one).
    pub log_max_files: usize,
}

impl WorkerConfig {
    /// A configuration with the defaults: 110 pods, Lease every 2 s, resync every second.
    pub fn new(name: &str, node_ip: &str) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            node_ip: node_ip.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            pod_cidr: String::new(),
            max_pods: 110,
            lease_interval: Duration::from_secs(2),
            resync: Duration::from_secs(1),
            kubelet_port: 10250,
            kubelet_tls: None,
            reserved: BTreeMap::new(),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            dir: std::path::PathBuf::from("/var/lib/flotilla/worker").join(name),
            log_max_size: 10 << 20,
            log_max_files: 1,
        }
    }

    /// /etc/resolv.conf of a pod in `namespace` on the pod network, as Kubernetes' ClusterFirst
    /// policy writes it: the cluster DNS servers, the search path that makes `web` and
    /// `web.prod` resolve, and ndots:5 so that names with fewer dots try it first. None
    /// without cluster DNS.
    pub fn resolv_conf(&self, namespace: &str) -> Option<String> {
        if self.cluster_dns.is_empty() {
            return None;
        }
        let d = &self.cluster_domain;
        let mut s: String = self.cluster_dns.iter().map(|ip| format!("nameserver {ip}\n")).collect();
        s.push_str(&format!("search {namespace}.svc.{d} svc.{d} {d}\noptions ndots:5\n"));
        Some(s)
    }
}

/// The kubelet's endpoint in TLS answers masters only (their certificates are in
/// `system:masters`): a node's or a user's certificate from the cluster CA is refused.
fn masters_only(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match flotilla_tls::peer_identity(&req) {
        Some(Ok(id)) if id.groups.iter().any(|g| g == MASTERS_GROUP) => Ok(req),
        Some(Ok(id)) => Err(tonic::Status::permission_denied(format!(
            "user {:?} may not read container logs from this kubelet (only {MASTERS_GROUP} may)",
            id.user
        ))),
        Some(Err(e)) => Err(tonic::Status::unauthenticated(e.to_string())),
        None => Err(tonic::Status::unauthenticated("a client certificate is required")),
    }
}

/// The group of masters' (and admins') certificates.
const MASTERS_GROUP: &str = "system:masters";

/// Runs the kubelet until `shutdown` completes: registers the Node, renews its Lease and
/// syncs its pods. Containers keep running when it stops (a restarted worker adopts them).
pub async fn run<R: Runtime>(
    client: Client,
    cfg: WorkerConfig,
    runtime: R,
    metrics: Arc<metrics::KubeletMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeletError> {
    let runtime = Arc::new(runtime);
    let cfg = Arc::new(cfg);
    // The log endpoint first: the Node says where it is.
    let addr = std::net::SocketAddr::new(
        cfg.node_ip.parse().map_err(|e| KubeletError::Runtime(format!("node IP {:?}: {e}", cfg.node_ip)))?,
        cfg.kubelet_port,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| KubeletError::Io { path: format!("kubelet endpoint {addr}"), source: e })?;
    let logs = logs::LogService::new(runtime.clone());
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = match cfg.kubelet_tls.clone() {
        None => tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::kubelet_server::KubeletServer::new(logs))
                .serve_with_incoming(tcp),
        ),
        Some(tls) => tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::kubelet_server::KubeletServer::with_interceptor(logs, masters_only))
                .serve_with_incoming(flotilla_tls::incoming(tcp, tls)),
        ),
    };
    tokio::pin!(shutdown);
    // Registration waits for a master to answer; until then nothing can be known.
    let node = loop {
        let version = runtime.version();
        let attempt = node::register(&client, &cfg, &version);
        let outcome = tokio::select! {
            () = &mut shutdown => {
                server.abort();
                return Ok(());
            }
            r = attempt => r,
        };
        match outcome {
            Ok(n) => break n,
            Err(KubeletError::Client(e)) => {
                tracing::warn!(error = %e, "cannot register the node yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut pressure_check = tokio::time::interval(node::PRESSURE_EVERY);
    tracing::info!(node = %cfg.name, pod_cidr = %node.spec.as_ref().map(|s| s.pod_cidr.clone()).unwrap_or_default(), runtime = %runtime.version(), "node registered");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let lease =
        tokio::spawn(node::renew_lease(client.clone(), cfg.name.clone(), cfg.lease_interval, stopped(stop_rx.clone())));
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let on_node = ListParams { field_selector: format!("spec.nodeName={}", cfg.name), ..Default::default() };
    let mut pods = Reflector::<pb::Pod>::start_notifying(client.clone(), on_node, Some(tx));
    tokio::select! {
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            server.abort();
            return Ok(());
        }
        () = pods.wait_synced() => {}
    }
    // This node, to put its Ready condition back when the controller manager marked it
    // Unknown while this worker could not reach the masters.
    let me = ListParams { field_selector: format!("metadata.name={}", cfg.name), ..Default::default() };
    let nodes = Reflector::<pb::Node>::start(client.clone(), me);
    metrics.count_lists(pods.list_counter());
    let housekeeping = {
        let (runtime, stop, metrics) = (runtime.clone(), stopped(stop_rx.clone()), metrics.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(runtime.housekeeping_period());
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = tick.tick() => {
                        runtime.housekeeping().await;
                        metrics.housekeeping_passes.inc();
                    }
                }
            }
        })
    };
    // Routes to the other nodes' pods, when pods have networks of their own.
    let routes = runtime
        .pod_network()
        .then(|| tokio::spawn(network::keep_routes(client.clone(), cfg.name.clone(), stopped(stop_rx.clone()))));
    let (probe_tx, mut probe_changes) = tokio::sync::mpsc::unbounded_channel();
    let sync = pods::PodSync::new(client.clone(), runtime, cfg.clone(), pods.cache(), probe_tx);
    let mut tick = tokio::time::interval(cfg.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
            Some(_) = changes.recv() => {
                // Take every change waiting, then one pass.
                while changes.try_recv().is_ok() {}
            }
            Some(()) = probe_changes.recv() => while probe_changes.try_recv().is_ok() {},
        }
        match sync.sync_all().await {
            Ok(running) => {
                metrics.running_containers.set(i64::try_from(running).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "pod sync pass failed"),
        }
        metrics.sync_passes.inc();
        metrics.set_master(&client.current_master());
        if let Some(n) = nodes.snapshot().into_iter().next() {
            sync.set_pod_cidr(n.spec.as_ref().map(|s| s.pod_cidr.as_str()).unwrap_or_default());
            // Pressure measured every few seconds; Ready checked every pass; written
            // only when one of them changed.
            let pressure = if futures::FutureExt::now_or_never(pressure_check.tick()).is_some() {
                Some(node::pressure(&cfg.dir))
            } else {
                None
            };
            node::keep_conditions(&client, n, pressure).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = lease.await;
    if let Some(r) = routes {
        let _ = r.await;
    }
    let _ = housekeeping.await;
    server.abort();
    Ok(())
}
