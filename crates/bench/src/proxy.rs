//! `flotilla bench proxy`: how long an Endpoints change takes to reach the kernel — from
//! just before the write to the store until the nft transaction that carries it has
//! committed — with many services programmed. The bench makes --services Services (no
//! selector) with --endpoints addresses each, runs the real proxy (the library, as
//! `flotilla worker` does) against real nftables in a network namespace of its own, and
//! then replaces one endpoint of a random service at --rate per second. Needs root (the
//! namespace, nft); nothing in the machine's own namespace is touched. The objects'
//! namespace and the network namespace are removed afterwards.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_client::{Client, DeleteParams};
use flotilla_proto::api as pb;
use flotilla_proxy::metrics::ProxyMetrics;
use flotilla_proxy::nft::{Apply, NftCli, Transaction};
use flotilla_proxy::{ProxyConfig, ProxyError};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProxyBench {
    /// Masters.
    pub endpoints: Vec<String>,
    /// Services to program.
    pub services: usize,
    /// Endpoints per service.
    pub per_service: usize,
    /// Endpoint changes to time.
    pub updates: usize,
    /// Changes per second.
    pub rate: f64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyReport {
    /// Services programmed.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints_per_service: usize,
    /// The first (full) transaction: its nft operations and how long nft took.
    pub full_sync_ops: usize,
    /// Milliseconds nft took for it.
    pub full_sync_ms: f64,
    /// Changes timed.
    pub updates: usize,
    /// Changes per second asked.
    pub rate: f64,
    /// Partial transactions committed.
    pub partial_syncs: usize,
    /// nft operations per partial transaction, on average.
    pub ops_per_partial: f64,
    /// Milliseconds nft took per partial transaction, on average.
    pub nft_ms_per_partial: f64,
    /// Endpoints change written → rule committed, in milliseconds.
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

/// A committed transaction: when, its script, and how long nft took.
type Committed = (Instant, String, Duration);

/// Runs transactions through nft and reports each committed one.
struct Recording {
    nft: NftCli,
    tx: mpsc::UnboundedSender<Committed>,
}

impl Apply for Recording {
    async fn apply(&self, t: &Transaction) -> Result<(), ProxyError> {
        let began = Instant::now();
        self.nft.apply(t).await?;
        let _ = self.tx.send((Instant::now(), t.script(), began.elapsed()));
        Ok(())
    }

    async fn exists(&self, table: &str) -> Result<bool, ProxyError> {
        self.nft.exists(table).await
    }
}

/// The network namespace the proxy programs; removed (with its table) when dropped.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Result<Netns, BenchError> {
        let _ =
            std::process::Command::new("ip").args(["netns", "del", name]).stderr(std::process::Stdio::null()).status();
        let st = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .map_err(|e| err("running ip (iproute2)", e))?;
        if !st.success() {
            return Err(BenchError::Setup(format!("ip netns add {name} failed (the proxy bench needs root)")));
        }
        Ok(Netns(name.into()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The i-th address of 10.200.0.0/16 (the services' first endpoints) or, for changes,
/// of 10.201.0.0/16 onwards: addresses inside the bench's own namespace only.
fn address(base: u32, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(base + u32::try_from(i).unwrap_or(u32::MAX))
}

fn endpoints(ns: &str, name: &str, ips: &[Ipv4Addr]) -> pb::Endpoints {
    pb::Endpoints {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: ns.into(), ..Default::default() }),
        subsets: vec![pb::EndpointSubset {
            addresses: ips.iter().map(|ip| pb::EndpointAddress { ip: ip.to_string(), ..Default::default() }).collect(),
            ports: vec![pb::EndpointPort { name: "http".into(), port: 8080, protocol: "TCP".into() }],
            ..Default::default()
        }],
    }
}

/// Creates `items` with at most 32 calls in flight.
async fn create_all<T, F, Fut>(items: Vec<T>, f: F) -> Result<(), BenchError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    use futures::StreamExt;
    let mut s = futures::stream::iter(items.into_iter().map(f)).buffer_unordered(32);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(b: &ProxyBench) -> Result<ProxyReport, BenchError> {
    if b.services == 0 || b.per_service == 0 || b.rate <= 0.0 {
        return Err(BenchError::Setup("--services, --endpoints and --rate must be positive".into()));
    }
    if b.services * b.per_service > 65_000 {
        return Err(BenchError::Setup("at most 65,000 endpoints in all (one /16 of addresses)".into()));
    }
    let client = crate::workload::api_client(&b.endpoints).map_err(|e| err("--endpoints", e))?;
    let tag = format!("bench-proxy-{}", std::process::id());
    let netns = Netns::create(&tag)?;
    let say = |m: String| {
        if b.progress {
            eprintln!("{m}");
        }
    };
    let ns = pb::Namespace {
        metadata: Some(pb::ObjectMeta { name: tag.clone(), ..Default::default() }),
        ..Default::default()
    };
    client.create(ns).await.map_err(|e| err("creating the namespace", e))?;
    let result = measure(b, &client, &tag, &netns, &say).await;
    let _ = client.delete::<pb::Namespace>("", &tag, &DeleteParams::default()).await;
    result
}

async fn measure(
    b: &ProxyBench,
    client: &Client,
    tag: &str,
    netns: &Netns,
    say: &impl Fn(String),
) -> Result<ProxyReport, BenchError> {
    let base = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let made = Instant::now();
    create_all((0..b.services).collect(), |i| async move {
        let svc = pb::Service {
            metadata: Some(pb::ObjectMeta { name: format!("s{i}"), namespace: tag.into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec {
                ports: vec![pb::ServicePort { name: "http".into(), port: 80, target_port: 8080, ..Default::default() }],
                ..Default::default()
            }),
            status: None,
        };
        client.create(svc).await.map(|_| ()).map_err(|e| err("creating a service", e))
    })
    .await?;
    create_all((0..b.services).collect(), |i| async move {
        let ips: Vec<Ipv4Addr> = (0..b.per_service).map(|k| address(base, i * b.per_service + k)).collect();
        client
            .create(endpoints(tag, &format!("s{i}"), &ips))
            .await
            .map(|_| ())
            .map_err(|e| err("creating endpoints", e))
    })
    .await?;
    say(format!(
        "created {} services with {} endpoints each in {:.1} s",
        b.services,
        b.per_service,
        made.elapsed().as_secs_f64()
    ));

    // The proxy, programming the bench's namespace only.
    let (tx, mut commits) = mpsc::unbounded_channel::<Committed>();
    let kernel = Recording { nft: NftCli::in_netns(&netns.0), tx };
    let mut cfg = ProxyConfig::new(vec![Ipv4Addr::new(192, 0, 2, 1)]);
    cfg.configure_kernel = false;
    cfg.conntrack = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(ProxyMetrics::new());
    let proxy = tokio::spawn(flotilla_proxy::run(client.clone(), cfg, kernel, metrics, async move {
        let _ = stop_rx.await;
    }));
    let deadline = tokio::time::Instant::now() + b.timeout;
    let (_, script, took) = tokio::time::timeout_at(deadline, commits.recv())
        .await
        .map_err(|_| BenchError::Setup("the proxy made no transaction in time".into()))?
        .ok_or_else(|| BenchError::Setup("the proxy stopped".into()))?;
    let full_sync_ops = script.lines().count();
    // The first sync may predate the last creates reaching the watch: wait for all.
    let want = format!("dnat to {}:8080", address(base, b.services * b.per_service - 1));
    let mut last = script;
    while !last.contains(&want) {
        let (_, s, _) = tokio::time::timeout_at(deadline, commits.recv())
            .await
            .map_err(|_| BenchError::Setup("not every service reached the kernel in time".into()))?
            .ok_or_else(|| BenchError::Setup("the proxy stopped".into()))?;
        last = s;
    }
    say(format!("full sync: {full_sync_ops} nft operations committed in {:.0} ms", took.as_secs_f64() * 1e3));

    // Changes at --rate: endpoint k of service s becomes a fresh address.
    let pending: Arc<Mutex<HashMap<Ipv4Addr, Instant>>> = Arc::default();
    let changed = u32::from(Ipv4Addr::new(10, 201, 0, 0));
    let mut hist = Histogram::<u64>::new(3).map_err(|e| err("histogram", e))?;
    let (mut partials, mut ops, mut nft_time) = (0usize, 0usize, Duration::ZERO);
    let mut current: Vec<Vec<Ipv4Addr>> =
        (0..b.services).map(|i| (0..b.per_service).map(|k| address(base, i * b.per_service + k)).collect()).collect();
    let writer = {
        let (client, pending, tag) = (client.clone(), pending.clone(), tag.to_string());
        let (services, per_service, updates, rate) = (b.services, b.per_service, b.updates, b.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for u in 0..updates {
                tick.tick().await;
                // An endpoint whose last change has not reached the kernel yet is left
                // alone: the proxy could take both changes at once, and the first would
                // never be seen.
                let (s, k) = loop {
                    let (s, k) = {
                        let mut r = rand::rng();
                        (r.random_range(0..services), r.random_range(0..per_service))
                    };
                    if !pending.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&current[s][k]) {
                        break (s, k);
                    }
                };
                let ip = address(changed, u);
                current[s][k] = ip;
                let mut cur = match client.get::<pb::Endpoints>(&tag, &format!("s{s}")).await {
                    Ok(c) => c,
                    Err(e) => return Err(err("reading endpoints", e)),
                };
                cur.subsets = endpoints(&tag, &format!("s{s}"), &current[s]).subsets;
                // Timed from just before the write.
                pending.lock().unwrap_or_else(|p| p.into_inner()).insert(ip, Instant::now());
                client.update(cur).await.map_err(|e| err("updating endpoints", e))?;
            }
            Ok::<(), BenchError>(())
        })
    };
    let (mut seen, mut next_report) = (0usize, 100usize);
    while seen < b.updates {
        let (at, script, took) = tokio::time::timeout_at(deadline, commits.recv())
            .await
            .map_err(|_| BenchError::Setup(format!("only {seen} of {} changes reached the kernel in time", b.updates)))?
            .ok_or_else(|| BenchError::Setup("the proxy stopped".into()))?;
        partials += 1;
        ops += script.lines().count();
        nft_time += took;
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        for part in script.split("dnat to ").skip(1) {
            let Some(ip) = part.split(':').next().and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
            if let Some(t0) = p.remove(&ip) {
                hist.record(u64::try_from(at.duration_since(t0).as_micros()).unwrap_or(u64::MAX)).ok();
                seen += 1;
            }
        }
        drop(p);
        if b.progress && seen >= next_report {
            eprintln!("{seen} changes in the kernel");
            next_report += 100;
        }
    }
    writer.await.map_err(|e| err("the writer", e))??;
    let _ = stop_tx.send(());
    let _ = proxy.await;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(ProxyReport {
        services: b.services,
        endpoints_per_service: b.per_service,
        full_sync_ops,
        full_sync_ms: took.as_secs_f64() * 1e3,
        updates: b.updates,
        rate: b.rate,
        partial_syncs: partials,
        ops_per_partial: ops as f64 / partials.max(1) as f64,
        nft_ms_per_partial: nft_time.as_secs_f64() * 1e3 / partials.max(1) as f64,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    })
}
