//! `flotilla bench controllers`: how fast a Deployment's pods come to exist and be placed
//! on a real cluster — its controller manager (Deployment and ReplicaSet controllers) and
//! scheduler, as the masters run them.
//!
//! It starts N hollow nodes (Node objects and renewed Leases; bound pods reported
//! Running, as kubelets would), creates one Deployment of R replicas in a namespace of its
//! own, and watches the pods: the time from the create until all R exist, and until all R
//! are bound. Pods per second = R / time until all bound. Run it against masters started
//! normally (their own scheduler and controller manager), on a fresh cluster.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use flotilla_client::{ListParams, WatchEvent};
use flotilla_proto::api as pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ControllersBench {
    /// Masters.
    pub endpoints: Vec<String>,
    /// Hollow nodes.
    pub nodes: usize,
    /// Replicas of the Deployment.
    pub replicas: usize,
    /// Give up after this long.
    pub timeout: Duration,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct ControllersReport {
    /// Hollow nodes.
    pub nodes: usize,
    /// Replicas.
    pub replicas: usize,
    /// Seconds from the Deployment's create until every pod existed.
    pub all_created_seconds: f64,
    /// Seconds from the Deployment's create until every pod was bound.
    pub all_bound_seconds: f64,
    /// Pods created per second (replicas / all_created_seconds).
    pub created_per_second: f64,
    /// Pods created and bound per second (replicas / all_bound_seconds).
    pub pods_per_second: f64,
}

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn deployment(ns: &str, replicas: usize) -> pb::Deployment {
    let app = labels(&[("app", "bench")]);
    pb::Deployment {
        metadata: Some(pb::ObjectMeta { name: "bench".into(), namespace: ns.into(), ..Default::default() }),
        spec: Some(pb::DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: Some(pb::LabelSelector { match_labels: app.clone(), ..Default::default() }),
            template: Some(pb::PodTemplateSpec {
                metadata: Some(pb::ObjectMeta { labels: app, ..Default::default() }),
                spec: Some(pb::PodSpec {
                    containers: vec![pb::Container {
                        name: "main".into(),
                        image: "busybox:1.36".into(),
                        resources: Some(pb::ResourceRequirements {
                            requests: labels(&[("cpu", "100m"), ("memory", "64Mi")]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs the benchmark.
pub async fn run(b: &ControllersBench) -> Result<ControllersReport, BenchError> {
    let client = crate::workload::api_client(&b.endpoints).map_err(|e| err("--endpoints", e))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ns = format!("bench-controllers-{stamp}");
    client
        .create(pb::Namespace {
            metadata: Some(pb::ObjectMeta { name: ns.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating the namespace", e))?;
    if b.progress {
        eprintln!("starting {} hollow nodes...", b.nodes);
    }
    let names: Vec<String> = (0..b.nodes).map(|i| format!("bench-{stamp}-node-{i}")).collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let nodes = tokio::spawn(crate::hollow::run(client.clone(), names.clone(), BTreeMap::new(), async move {
        let _ = stopped.await;
    }));
    // Every node registered (and cached by the scheduler a moment later).
    let deadline = Instant::now() + b.timeout;
    loop {
        let n = client.list::<pb::Node>(&ListParams::default()).await.map_err(|e| err("listing nodes", e))?;
        let have: HashSet<String> =
            n.items.iter().filter_map(|n| n.metadata.as_ref().map(|m| m.name.clone())).collect();
        if names.iter().all(|n| have.contains(n)) {
            break;
        }
        if nodes.is_finished() || Instant::now() > deadline {
            return Err(BenchError::Setup("the hollow nodes did not all register".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = ListParams { namespace: ns.clone(), ..Default::default() };
    let list = client.list::<pb::Pod>(&p).await.map_err(|e| err("listing pods", e))?;
    let mut events = client.watch::<pb::Pod>(&p, &list.resource_version).await.map_err(|e| err("watching pods", e))?;
    if b.progress {
        eprintln!("creating a Deployment of {} replicas...", b.replicas);
    }
    let t0 = Instant::now();
    client.create(deployment(&ns, b.replicas)).await.map_err(|e| err("creating the Deployment", e))?;
    let (mut created, mut bound): (HashSet<String>, HashSet<String>) = Default::default();
    let (mut all_created, mut all_bound) = (None, None);
    let mut last_report = Instant::now();
    while all_bound.is_none() {
        let ev = match tokio::time::timeout_at((t0 + b.timeout).into(), events.next()).await {
            Ok(Some(ev)) => ev.map_err(|e| err("the pod watch", e))?,
            Ok(None) => return Err(BenchError::Setup("the pod watch ended".into())),
            Err(_) => {
                return Err(BenchError::Setup(format!(
                    "after {:?}: {} of {} pods created, {} bound",
                    b.timeout,
                    created.len(),
                    b.replicas,
                    bound.len()
                )))
            }
        };
        if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = ev {
            let name = pod.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            if pod.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
                bound.insert(name.clone());
            }
            created.insert(name);
        }
        if all_created.is_none() && created.len() >= b.replicas {
            all_created = Some(t0.elapsed());
        }
        if bound.len() >= b.replicas {
            all_bound = Some(t0.elapsed());
        }
        if b.progress && last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("{:>6.1} s: {} created, {} bound", t0.elapsed().as_secs_f64(), created.len(), bound.len());
            last_report = Instant::now();
        }
    }
    let _ = stop.send(());
    let _ = nodes.await;
    let (c, bd) = (all_created.unwrap_or_default().as_secs_f64(), all_bound.unwrap_or_default().as_secs_f64());
    Ok(ControllersReport {
        nodes: b.nodes,
        replicas: b.replicas,
        all_created_seconds: c,
        all_bound_seconds: bd,
        created_per_second: b.replicas as f64 / c.max(1e-9),
        pods_per_second: b.replicas as f64 / bd.max(1e-9),
    })
}
