//! `flotilla bench scheduler`: how fast pods are placed on a real cluster.
//!
//! It creates N fake Nodes (objects only: Ready, with capacity, and node Leases it renews
//! every 10 s as kubelets do) and M pending pods with requests, all pods first; then a
//! scheduler places them, and it measures binds per second from the first bind to the
//! last. Then, with the scheduler running, it creates more pods open-loop at half that
//! rate and measures each one's create → bound latency (p50, p99).
//!
//! The scheduler is, by default, one it runs itself (the `flotilla-scheduler` crate: the
//! same code the masters run), so the pods can all be created before it starts: run the
//! masters with `--disable-scheduler`. With `--external-scheduler` the cluster's own
//! scheduler places them as they are created (then creation speed may be the limit).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::{Client, ListParams, WatchEvent};

use crate::hollow::{node_lease, NODE_LEASES};
use flotilla_proto::api as pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct SchedulerBench {
    /// Masters.
    pub endpoints: Vec<String>,
    /// Fake nodes to create.
    pub nodes: usize,
    /// Pods created before scheduling starts.
    pub pods: usize,
    /// Pods for the latency phase (0: skip it).
    pub latency_pods: usize,
    /// Use the cluster's scheduler instead of one run here.
    pub external_scheduler: bool,
    /// Concurrent creates.
    pub creators: usize,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulerReport {
    /// Nodes.
    pub nodes: usize,
    /// Pods scheduled in the throughput phase.
    pub pods: usize,
    /// Binds per second, first bind to last.
    pub pods_per_second: f64,
    /// Pods created per second before scheduling.
    pub creates_per_second: f64,
    /// Open-loop creation rate of the latency phase.
    pub latency_rate: f64,
    /// Pods of the latency phase.
    pub latency_pods: usize,
    /// Create → bound latency, median (ms).
    pub p50_ms: f64,
    /// Create → bound latency, 99th percentile (ms).
    pub p99_ms: f64,
    /// Which scheduler placed the pods.
    pub scheduler: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

fn q(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn node(name: &str, zone: usize) -> pb::Node {
    let cap = q(&[("cpu", "64"), ("memory", "256Gi"), ("pods", "250")]);
    pb::Node {
        metadata: Some(pb::ObjectMeta {
            name: name.into(),
            labels: q(&[("topology.kubernetes.io/zone", &format!("zone-{zone}")), ("flotilla.io/bench", "true")]),
            ..Default::default()
        }),
        spec: None,
        status: Some(pb::NodeStatus {
            capacity: cap.clone(),
            allocatable: cap,
            conditions: vec![pb::Condition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        }),
    }
}

fn pod(ns: &str, name: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: ns.into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox:1.36".into(),
                resources: Some(pb::ResourceRequirements {
                    requests: q(&[("cpu", "100m"), ("memory", "128Mi")]),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// Runs `f(i)` for `0..n`, `conc` at a time; the first error stops it.
async fn in_parallel<F, Fut>(n: usize, conc: usize, f: F) -> Result<(), BenchError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                f(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| err("a worker failed", e))??;
    }
    Ok(())
}

/// Creates, retrying what failed in transport (the object may exist then).
async fn create<T: flotilla_client::Resource>(client: &Client, o: T) -> Result<(), BenchError> {
    for _ in 0..5 {
        match client.create(o.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => return Ok(()),
            Err(flotilla_client::ClientError::Indeterminate(_) | flotilla_client::ClientError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(err(&format!("creating {} {}", T::KIND, o.name()), e)),
        }
    }
    Err(BenchError::Setup(format!("cannot create {} {}", T::KIND, o.name())))
}

/// Runs the benchmark.
pub async fn run(b: &SchedulerBench) -> Result<SchedulerReport, BenchError> {
    let client = crate::workload::api_client(&b.endpoints).map_err(|e| err("--endpoints", e))?;
    let suffix = format!("{:x}", std::process::id());
    let ns = format!("bench-sched-{suffix}");
    let say = |s: String| {
        if b.progress {
            eprintln!("bench scheduler: {s}");
        }
    };
    for n in [ns.as_str(), NODE_LEASES] {
        let o = pb::Namespace {
            metadata: Some(pb::ObjectMeta { name: n.into(), ..Default::default() }),
            ..Default::default()
        };
        create(&client, o).await?;
    }
    say(format!("creating {} nodes", b.nodes));
    let node_names: Arc<Vec<String>> = Arc::new((0..b.nodes).map(|i| format!("bench-{suffix}-{i}")).collect());
    {
        let (c, names) = (client.clone(), node_names.clone());
        in_parallel(b.nodes, b.creators, move |i| {
            let (c, name) = (c.clone(), names[i].clone());
            async move {
                create(&c, node(&name, i % 3)).await?;
                create(&c, node_lease(&name)).await
            }
        })
        .await?;
    }
    let renewer = tokio::spawn(renew_node_leases(client.clone(), node_names.clone()));
    // Watch the namespace's pods for binds, from before the first create.
    let start_rv = client
        .list_page(pb::ListRequest { kind: "Pod".into(), namespace: ns.clone(), limit: 1, ..Default::default() })
        .await
        .map_err(|e| err("listing pods", e))?
        .resource_version;
    let (bind_tx, mut binds) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = {
        let (client, ns) = (client.clone(), ns.clone());
        let mut events = client
            .watch::<pb::Pod>(&ListParams { namespace: ns, ..Default::default() }, &start_rv)
            .await
            .map_err(|e| err("watching pods", e))?;
        tokio::spawn(async move {
            while let Some(Ok(ev)) = events.next().await {
                if let WatchEvent::Modified(p) | WatchEvent::Added(p) = ev {
                    if p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
                        let name = p.metadata.map(|m| m.name).unwrap_or_default();
                        let _ = bind_tx.send((name, Instant::now()));
                    }
                }
            }
        })
    };
    say(format!("creating {} pods", b.pods));
    let created_at = Instant::now();
    {
        let (c, ns) = (client.clone(), ns.clone());
        in_parallel(b.pods, b.creators, move |i| {
            let (c, ns) = (c.clone(), ns.clone());
            async move { create(&c, pod(&ns, &format!("p-{i}"))).await }
        })
        .await?;
    }
    let creates_per_second = b.pods as f64 / created_at.elapsed().as_secs_f64();
    say(format!("created at {creates_per_second:.0}/s; scheduling"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = (!b.external_scheduler).then(|| {
        let cfg = flotilla_scheduler::SchedulerConfig::new(&format!("bench/{suffix}"));
        let metrics = Arc::new(flotilla_scheduler::SchedulerMetrics::new());
        let mut stop = stop_rx;
        tokio::spawn(flotilla_scheduler::run(client.clone(), cfg, metrics, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let mut seen = HashMap::new();
    let (mut first, mut last) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.len() < b.pods {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, binds.recv()).await {
            Ok(Some((name, at))) => {
                if seen.insert(name, at).is_none() {
                    first.get_or_insert(at);
                    last = Some(at);
                    if b.progress && seen.len() % 1000 == 0 {
                        say(format!("{} bound", seen.len()));
                    }
                }
            }
            _ => return Err(BenchError::Setup(format!("only {} of {} pods bound within 10 min", seen.len(), b.pods))),
        }
    }
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64().max(1e-6),
        _ => 1e-6,
    };
    let pods_per_second = (b.pods.saturating_sub(1)) as f64 / span;
    say(format!("{pods_per_second:.0} pods/s"));
    // Latency: open loop at half that rate.
    let rate = (pods_per_second / 2.0).max(1.0);
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut lat = Vec::new();
    if b.latency_pods > 0 {
        say(format!("latency: {} pods at {rate:.0}/s", b.latency_pods));
        let t0 = Instant::now();
        let (created_tx, mut created) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        for i in 0..b.latency_pods {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            let (c, ns, tx) = (client.clone(), ns.clone(), created_tx.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                let name = format!("l-{i}");
                let at = Instant::now();
                if create(&c, pod(&ns, &name)).await.is_ok() {
                    let _ = tx.send((name, at));
                }
            });
        }
        drop(created_tx);
        let mut bound: HashMap<String, Instant> = HashMap::new();
        while lat.len() < b.latency_pods {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                c = created.recv() => if let Some((n, at)) = c {
                    match bound.remove(&n) {
                        Some(b) => lat.push(b.saturating_duration_since(at)),
                        None => { sent.insert(n, at); }
                    }
                },
                r = binds.recv() => match r {
                    Some((n, at)) if n.starts_with("l-") => match sent.remove(&n) {
                        Some(s) => lat.push(at.saturating_duration_since(s)),
                        None => { bound.insert(n, at); }
                    },
                    Some(_) => {}
                    None => break,
                },
                () = tokio::time::sleep(left) => {
                    return Err(BenchError::Setup(format!("only {} latency pods bound", lat.len())));
                }
            }
        }
    }
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let report = SchedulerReport {
        nodes: b.nodes,
        pods: b.pods,
        pods_per_second,
        creates_per_second,
        latency_rate: rate,
        latency_pods: lat.len(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        scheduler: if b.external_scheduler { "the cluster's".into() } else { "in-process".into() },
    };
    let _ = stop_tx.send(true);
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    watch.abort();
    renewer.abort();
    say("cleaning up".into());
    let _ = client.delete::<pb::Namespace>("", &ns, &Default::default()).await;
    let names = node_names.clone();
    let c = client.clone();
    let _ = in_parallel(b.nodes, b.creators, move |i| {
        let (c, name) = (c.clone(), names[i].clone());
        async move {
            let _ = c.delete::<pb::Node>("", &name, &Default::default()).await;
            let _ = c.delete::<pb::Lease>(NODE_LEASES, &name, &Default::default()).await;
            Ok(())
        }
    })
    .await;
    Ok(report)
}

/// Renews every node Lease every 10 s, as kubelets do.
async fn renew_node_leases(client: Client, names: Arc<Vec<String>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        for name in names.iter() {
            let _ = client.update(node_lease(name)).await;
        }
    }
}
