//! `flotilla bench pods`: pod startup latency on real workers — the time from a pod's
//! create to its container running, as a client watching the pods sees it (Kubernetes'
//! pod startup SLO: p99 ≤ 5 s, images present). The pods are created at a steady rate in a
//! namespace of their own, placed by the cluster's scheduler on whatever workers there
//! are, and the namespace is deleted afterwards.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use flotilla_client::{DeleteParams, ListParams, WatchEvent};
use flotilla_proto::api as pb;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct PodsBench {
    /// Masters.
    pub endpoints: Vec<String>,
    /// Pods to start.
    pub pods: usize,
    /// Creates per second.
    pub rate: f64,
    /// The image (present on the workers, or pullable).
    pub image: String,
    /// What the container runs (a long sleep by default).
    pub command: Vec<String>,
    /// Only on nodes with these labels.
    pub node_selector: BTreeMap<String, String>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Print progress on stderr.
    pub progress: bool,
    /// Leave the pods (and their namespace) in place.
    pub keep: bool,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct PodsReport {
    /// Pods started.
    pub pods: usize,
    /// Creates per second asked.
    pub rate: f64,
    /// Nodes the pods ran on.
    pub nodes: usize,
    /// The workers' container runtimes (from their Nodes).
    pub runtimes: Vec<String>,
    /// create → running, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

fn pod(ns: &str, i: usize, b: &PodsBench) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            name: format!("startup-{i}"),
            namespace: ns.into(),
            labels: [("app".to_string(), "bench-pods".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(pb::PodSpec {
            node_selector: b.node_selector.clone(),
            termination_grace_period_seconds: Some(1),
            containers: vec![pb::Container {
                name: "main".into(),
                image: b.image.clone(),
                command: b.command.clone(),
                image_pull_policy: "IfNotPresent".into(),
                resources: Some(pb::ResourceRequirements {
                    requests: [("cpu".to_string(), "10m".to_string()), ("memory".to_string(), "8Mi".to_string())]
                        .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn running(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase == "Running"
            && s.container_statuses.iter().all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
            && !s.container_statuses.is_empty()
    })
}

/// Runs the benchmark.
pub async fn run(b: &PodsBench) -> Result<PodsReport, BenchError> {
    if b.pods == 0 || b.rate <= 0.0 {
        return Err(BenchError::Invalid("--pods and --rate must be positive".into()));
    }
    let client = crate::workload::api_client(&b.endpoints).map_err(|e| err("--endpoints", e))?;
    let nodes = client.list::<pb::Node>(&ListParams::default()).await.map_err(|e| err("listing nodes", e))?;
    let mut runtimes: Vec<String> = nodes
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref().map(|i| i.container_runtime_version.clone()))
        .filter(|r| !r.is_empty())
        .collect();
    runtimes.sort();
    runtimes.dedup();
    if runtimes.is_empty() {
        return Err(BenchError::Setup("no worker has registered (start workers first)".into()));
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ns = format!("bench-pods-{stamp}");
    client
        .create(pb::Namespace {
            metadata: Some(pb::ObjectMeta { name: ns.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating the namespace", e))?;
    let p = ListParams { namespace: ns.clone(), ..Default::default() };
    let list = client.list::<pb::Pod>(&p).await.map_err(|e| err("listing pods", e))?;
    let mut events = client.watch::<pb::Pod>(&p, &list.resource_version).await.map_err(|e| err("watching pods", e))?;
    let created: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let creator = {
        let (client, created, b, ns) = (client.clone(), created.clone(), b.clone(), ns.clone());
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / b.rate);
            let mut tick = tokio::time::interval(every);
            for i in 0..b.pods {
                tick.tick().await;
                let pod = pod(&ns, i, &b);
                let name = format!("startup-{i}");
                created.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Instant::now());
                let c = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.create(pod).await {
                        eprintln!("creating {name}: {e}");
                    }
                });
            }
        })
    };
    let deadline = Instant::now() + b.timeout;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).map_err(|e| err("histogram", e))?;
    let mut done: HashMap<String, String> = HashMap::new();
    let mut last_report = Instant::now();
    while done.len() < b.pods {
        let ev = match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(ev)) => ev.map_err(|e| err("the pod watch", e))?,
            Ok(None) => return Err(BenchError::Setup("the pod watch ended".into())),
            Err(_) => {
                return Err(BenchError::Setup(format!(
                    "after {:?}: {} of {} pods running (pods left in namespace {ns})",
                    b.timeout,
                    done.len(),
                    b.pods
                )))
            }
        };
        let seen = Instant::now();
        if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = ev {
            let name = pod.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            if running(&pod) && !done.contains_key(&name) {
                if let Some(t) = created.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
                    let ms = u64::try_from(seen.duration_since(*t).as_millis()).unwrap_or(u64::MAX).max(1);
                    let _ = hist.record(ms);
                    let node = pod.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
                    done.insert(name, node);
                }
            }
        }
        if b.progress && last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("{} of {} pods running", done.len(), b.pods);
            last_report = Instant::now();
        }
    }
    let _ = creator.await;
    if !b.keep {
        let _ = client.delete::<pb::Namespace>("", &ns, &DeleteParams::default()).await;
    }
    let mut nodes_used: Vec<&String> = done.values().collect();
    nodes_used.sort();
    nodes_used.dedup();
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    Ok(PodsReport {
        pods: b.pods,
        rate: b.rate,
        nodes: nodes_used.len(),
        runtimes,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        max_ms: hist.max() as f64,
    })
}
