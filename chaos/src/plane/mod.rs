//! The plane suite (`chaos/run plane`): faults across the whole control plane and its
//! workers, with a Service's clients watching the data path.
//!
//! A run: three masters (the store suite's topology, each with its scheduler and
//! controller-manager candidates), three workers on a containerd of the run's own (each in
//! a host namespace on the same bridge, with the pod network and the service proxy), and
//! a Deployment of three web servers behind a Service (rolling updates with maxSurge 1).
//! A client in every worker's namespace calls the Service's cluster IP every 100 ms.
//! Faults come one at a time; after each heal the Deployment must be whole again (three
//! ready pods) within 30 s before the next.
//!
//! Recorded for the checkers ([`crate::checker::plane`]): every request; every pod event
//! (one watch, in the store's order); which pods' containers containerd runs in each
//! worker's namespace, sampled every 500 ms; the node Leases' renewals and the node
//! lifecycle controller's evictions; the masters' leadership and fenced-write metrics.

pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_client::{Client, ListParams, WatchEvent};
use flotilla_proto::api as pb;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::checker::plane::{self as check, Allowance, Eviction, PodEvent, Window};
use crate::topology::Topology;
use crate::ChaosError;
use world::{http_get, metric, Clients, Containerd, Worker};

/// Replicas of the workload, and its maxSurge.
const REPLICAS: usize = 3;
const MAX_SURGE: usize = 1;
/// How long most faults are held.
const HOLD: Duration = Duration::from_secs(3);
/// How long the Deployment may take to be whole again after a heal.
const CONVERGE: Duration = Duration::from_secs(30);

/// A fault of the plane suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum PlaneFault {
    /// kill -9 the store's Raft leader (restarted at the heal).
    KillLeader,
    /// SIGSTOP the store's leader for the hold time.
    PauseLeader,
    /// Cut the store's leader off from the other masters.
    PartitionLeader,
    /// kill -9 a random master.
    KillRandom,
    /// kill -9 two of the three masters (the store stops taking writes).
    KillMajority,
    /// kill -9 every master (the workers and the data path are on their own).
    KillAll,
    /// kill -9 the master running the active scheduler.
    KillScheduler,
    /// kill -9 the master running the active controller manager.
    KillControllerManager,
    /// SIGSTOP the master running the active controller manager for the hold time.
    PauseControllerManager,
    /// kill -9 a worker (kubelet and proxy; its containers run on), restarted at the heal.
    KillKubelet,
    /// Cut a worker off from the masters for longer than the node grace period (its pods
    /// are moved; the workers still reach each other).
    PartitionWorker,
    /// Cut the workers off from each other (not from the masters) for the hold time.
    PartitionWorkers,
    /// Cut a worker off from everything for longer than the node grace period: a
    /// machine lost, as far as anyone can tell.
    LoseWorker,
    /// kill -9 one web server's container behind its kubelet's back.
    KillContainer,
}

impl PlaneFault {
    /// Every fault, the matrix of `--runs N`.
    pub const ALL: [PlaneFault; 14] = [
        PlaneFault::KillLeader,
        PlaneFault::PauseLeader,
        PlaneFault::PartitionLeader,
        PlaneFault::KillRandom,
        PlaneFault::KillMajority,
        PlaneFault::KillAll,
        PlaneFault::KillScheduler,
        PlaneFault::KillControllerManager,
        PlaneFault::PauseControllerManager,
        PlaneFault::KillKubelet,
        PlaneFault::PartitionWorker,
        PlaneFault::PartitionWorkers,
        PlaneFault::LoseWorker,
        PlaneFault::KillContainer,
    ];
    /// The CI smoke run.
    pub const SMOKE: [PlaneFault; 4] =
        [PlaneFault::KillScheduler, PlaneFault::KillKubelet, PlaneFault::LoseWorker, PlaneFault::KillContainer];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PlaneFault::KillLeader => "kill-leader",
            PlaneFault::PauseLeader => "pause-leader",
            PlaneFault::PartitionLeader => "partition-leader",
            PlaneFault::KillRandom => "kill-random",
            PlaneFault::KillMajority => "kill-majority",
            PlaneFault::KillAll => "kill-all",
            PlaneFault::KillScheduler => "kill-scheduler",
            PlaneFault::KillControllerManager => "kill-controller-manager",
            PlaneFault::PauseControllerManager => "pause-controller-manager",
            PlaneFault::KillKubelet => "kill-kubelet",
            PlaneFault::PartitionWorker => "partition-worker",
            PlaneFault::PartitionWorkers => "partition-workers",
            PlaneFault::LoseWorker => "lose-worker",
            PlaneFault::KillContainer => "kill-container",
        }
    }
}

/// One plane run.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Seeds the fault order and the targets.
    pub seed: u64,
    /// The flotilla binary.
    pub bin: PathBuf,
    /// Where the run's data, logs and report go.
    pub dir: PathBuf,
    /// A directory holding the `flotilla.local/busybox:1` image archive.
    pub image_dir: PathBuf,
    /// The faults, in this order (shuffled by the seed when `shuffle`).
    pub faults: Vec<PlaneFault>,
    /// Shuffle the faults by the seed.
    pub shuffle: bool,
    /// Workers.
    pub workers: usize,
    /// The masters' --node-monitor-grace-period.
    pub grace: Duration,
    /// TLS on every port, client certificates required (else plaintext).
    pub tls: bool,
}

/// What one fault did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    /// The fault.
    pub fault: String,
    /// What it hit.
    pub target: String,
    /// Injected at (seconds since the start).
    pub at: f64,
    /// From the fault to another master's scheduler leading (when it hit the scheduler's).
    pub scheduler_failover: Option<f64>,
    /// Likewise for the controller manager.
    pub controller_manager_failover: Option<f64>,
    /// Master faults: from the fault until every worker that talked to the master hit
    /// talks to another; kill-kubelet: from its restart to its node's next Lease renewal.
    pub kubelet_failover: Option<f64>,
    /// Worker losses: from the fault until the Deployment's pods all run, ready,
    /// elsewhere.
    pub pods_elsewhere_after: Option<f64>,
    /// From the heal until the Deployment was whole again.
    pub converged_after: Option<f64>,
    /// Requests made while this was the latest fault, and how many failed.
    pub requests: (u64, u64),
}

/// A plane run's verdict and figures (`report.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlaneReport {
    /// Its seed.
    pub seed: u64,
    /// Every fault.
    pub faults: Vec<FaultReport>,
    /// The service requests judged against each fault's allowance.
    pub requests: check::RequestVerdict,
    /// The workload's pods: surge bound and rebinding.
    pub pods: check::PodVerdict,
    /// Pods whose containers ran on two workers at once: (at, uid, workers).
    pub on_two_nodes: Vec<(f64, String, Vec<usize>)>,
    /// Containerd samples taken.
    pub samples: usize,
    /// Every failed request (after the warm-up), with the pod that held its endpoint's
    /// address then, if any: for reading a failure.
    pub failed_requests: Vec<(check::Request, Option<String>)>,
    /// Evictions seen, and those from nodes that kept renewing.
    pub evictions: usize,
    /// The unjust ones.
    pub unjust_evictions: Vec<Eviction>,
    /// Writes of deposed schedulers and controller managers the store refused as fenced.
    pub fenced_refusals: u64,
    /// Heals after which the Deployment was not whole within 30 s.
    pub not_converged: Vec<String>,
    /// Processes that exited by themselves, panics in the logs.
    pub problems: Vec<String>,
    /// The verdict.
    pub passed: bool,
    /// The run's directory.
    pub dir: String,
}

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {REPLICAS}
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: {MAX_SURGE}, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
        ports:
        - {{name: http, containerPort: 80}}
        readinessProbe:
          httpGet: {{path: /, port: 80}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {{command: ["sleep", "2"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#
    )
}

/// What the background observers share with the fault loop.
#[derive(Default)]
struct Seen {
    pods: Vec<PodEvent>,
    /// uid → node, for every pod ever bound.
    nodes: HashMap<String, String>,
    /// node → Lease renewTimes (Unix seconds).
    renewals: BTreeMap<String, Vec<f64>>,
    evictions: Vec<Eviction>,
    /// (at, per worker: pod uids with running containers).
    samples: Vec<(f64, Vec<BTreeSet<String>>)>,
    /// (at, master index) whenever the scheduler's or controller manager's leading
    /// master (as the responding masters say) changes; None: none or several.
    scheduler: Vec<(f64, Option<usize>)>,
    controller_manager: Vec<(f64, Option<usize>)>,
    /// (at, worker index, the master it talks to).
    kubelet_masters: Vec<(f64, usize, String)>,
    /// Per master: fenced refusals counted by processes since gone, and the running one's.
    fenced: Vec<(u64, u64)>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn unix_of(rfc3339: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

/// Runs one plane run; `Err` only when it could not complete.
pub async fn run(cfg: &PlaneConfig) -> Result<PlaneReport, ChaosError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| ChaosError::Setup(format!("{}: {e}", cfg.dir.display())))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let now = move || start.elapsed().as_secs_f64();

    // Masters.
    let mut t = Topology::create(3, &cfg.dir, &cfg.bin, false, cfg.tls)?;
    let grace = format!("{}s", cfg.grace.as_secs());
    t.extra_args =
        ["--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "24", "--node-monitor-grace-period", &grace]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for i in 0..3 {
        t.start(i)?;
    }
    crate::runner::leader(&t, Duration::from_secs(30)).await?;
    let urls = t.client_urls();
    let masters: Vec<String> =
        urls.iter().map(|u| u.trim_start_matches("https://").trim_start_matches("http://").to_string()).collect();
    let metrics_addrs: Vec<String> = t.members.iter().map(|m| format!("{}:2381", m.ip)).collect();
    let opts = flotilla_client::Options { tls: crate::topology::client_tls(), ..Default::default() };
    let client = Client::with_options(&masters, opts).map_err(|e| ChaosError::Cluster(format!("client: {e}")))?;

    // Containerd and the workers.
    let hosts = t.add_hosts(cfg.workers)?;
    let mut ctd = Containerd::start(&std::path::Path::new("/var/tmp").join(format!(
        "flotilla-chaos-{}-{}",
        std::process::id(),
        cfg.seed
    )))?;
    let mut workers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let name = format!("w{}", i + 1);
        let ctd_ns = format!("flotilla-chaos-{}-{name}", std::process::id());
        ctd.namespaces.push(ctd_ns.clone());
        let mut flags: Vec<String> = [
            "--runtime",
            "containerd",
            "--masters",
            &masters.join(","),
            "--containerd-socket",
            &ctd.ctr.socket.display().to_string(),
            "--image-dir",
            &cfg.image_dir.display().to_string(),
            "--cluster-cidr",
            "10.244.0.0/16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        flags.extend(t.worker_tls_flags(&name, &h.1)?);
        let mut w = Worker::new(&cfg.bin, &name, h, &cfg.dir, &ctd_ns, flags);
        w.start()?;
        workers.push(w);
    }
    let seen: Shared = Arc::new(Mutex::new(Seen { fenced: vec![(0, 0); 3], ..Default::default() }));
    let observers = observe(&client, &seen, &ctd, &workers, &metrics_addrs, now).await?;
    wait_for(&format!("{} Ready nodes", cfg.workers), Duration::from_secs(60), || async {
        let nodes = client.list::<pb::Node>(&ListParams::default()).await.ok()?.items;
        let ready = nodes.iter().filter(|n| node_ready(n)).count();
        (ready == cfg.workers).then_some(())
    })
    .await?;

    // The workload and its clients.
    for o in flotilla_ctl::manifest::parse("web", &manifest("flotilla.local/busybox:1"))
        .map_err(|e| ChaosError::Setup(format!("the workload's manifest: {e}")))?
    {
        client.create_object(o).await.map_err(|e| ChaosError::Cluster(format!("creating the workload: {e}")))?;
    }
    wait_for("the Deployment whole", Duration::from_secs(90), || converged(&client)).await?;
    let vip = wait_for("the Service's cluster IP", Duration::from_secs(10), || async {
        let s = client.get::<pb::Service>("default", "web").await.ok()?;
        s.spec.map(|s| s.cluster_ip).filter(|ip| !ip.is_empty())
    })
    .await?;
    let addr = format!("{vip}:80").parse().map_err(|e| ChaosError::Setup(format!("cluster IP {vip}: {e}")))?;
    let netns: Vec<String> = workers.iter().map(|w| w.netns.clone()).collect();
    let clients = Clients::start(&netns, addr, start)?;
    // Every client answered before the first fault.
    wait_for("every client answered", Duration::from_secs(20), || async {
        let r = clients.requests.lock().unwrap_or_else(|p| p.into_inner());
        let answered: BTreeSet<usize> = r.iter().filter(|q| q.ok).map(|q| q.client).collect();
        (answered.len() == cfg.workers).then_some(())
    })
    .await?;
    // Judged from here: requests before this point were the warm-up.
    let judged_from = now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut faults = cfg.faults.clone();
    if cfg.shuffle {
        faults.shuffle(&mut rng);
    }
    let mut report = PlaneReport { seed: cfg.seed, dir: cfg.dir.display().to_string(), ..Default::default() };
    let mut windows: Vec<Window> = Vec::new();
    for f in faults {
        let mut fr = FaultReport { fault: f.name().into(), ..Default::default() };
        let at = now();
        fr.at = at;
        println!("  {at:>7.2}s  {}", f.name());
        let mut window = Window { fault: f.name().into(), start: at, allowance: Allowance::None };
        // Where each web pod runs (IP → node), for allowances by endpoint.
        let placed = placement(&client).await;
        let on = |node: &str, yes: bool| -> BTreeSet<String> {
            placed.iter().filter(|(_, n)| (n == node) == yes).map(|(ip, _)| ip.clone()).collect()
        };
        let (sched0, cm0) = {
            let s = lock(&seen);
            (holder(&s.scheduler), holder(&s.controller_manager))
        };
        let mut hit_master = None;
        let mut restart_worker = None;
        let mut isolated: Vec<usize> = Vec::new();
        match f {
            PlaneFault::KillLeader | PlaneFault::PauseLeader | PlaneFault::PartitionLeader => {
                let l = crate::runner::leader(&t, Duration::from_secs(30)).await?;
                fr.target = t.members[l].name.clone();
                hit_master = Some(l);
                match f {
                    PlaneFault::KillLeader => t.kill(l),
                    PlaneFault::PauseLeader => t.signal(l, "STOP"),
                    _ => {
                        let others: Vec<usize> = (0..3).filter(|&o| o != l).collect();
                        t.isolate(l, &others)?;
                    }
                }
                tokio::time::sleep(HOLD).await;
            }
            PlaneFault::KillRandom | PlaneFault::KillMajority | PlaneFault::KillAll => {
                let mut all: Vec<usize> = (0..3).collect();
                all.shuffle(&mut rng);
                let n = match f {
                    PlaneFault::KillRandom => 1,
                    PlaneFault::KillMajority => 2,
                    _ => 3,
                };
                let hit: Vec<usize> = all[..n].to_vec();
                fr.target = hit.iter().map(|&i| t.members[i].name.clone()).collect::<Vec<_>>().join(",");
                for &i in &hit {
                    t.kill(i);
                }
                // Failovers are measured for a single master's loss.
                hit_master = (n == 1).then(|| hit[0]);
                tokio::time::sleep(HOLD).await;
            }
            PlaneFault::KillScheduler | PlaneFault::KillControllerManager | PlaneFault::PauseControllerManager => {
                let m = if f == PlaneFault::KillScheduler { sched0 } else { cm0 };
                let m = m.ok_or_else(|| ChaosError::Cluster(format!("{}: nobody leads", f.name())))?;
                fr.target = t.members[m].name.clone();
                hit_master = Some(m);
                if f == PlaneFault::PauseControllerManager {
                    t.signal(m, "STOP");
                } else {
                    t.kill(m);
                }
                tokio::time::sleep(HOLD).await;
            }
            PlaneFault::KillKubelet => {
                let w = rng.random_range(0..workers.len());
                fr.target = workers[w].name.clone();
                workers[w].kill();
                restart_worker = Some(w);
                tokio::time::sleep(HOLD).await;
            }
            PlaneFault::PartitionWorker | PlaneFault::LoseWorker => {
                let w = rng.random_range(0..workers.len());
                fr.target = workers[w].name.clone();
                if f == PlaneFault::LoseWorker {
                    for chain_if in [["INPUT", "-i"], ["FORWARD", "-i"], ["FORWARD", "-o"], ["OUTPUT", "-o"]] {
                        workers[w].iptables(&["-A", chain_if[0], chain_if[1], "eth0", "-j", "DROP"])?;
                    }
                    // The others' requests to its endpoints, for the grace period + 2 s;
                    // its own client, anything until it is back (set at the heal).
                    let lost = on(&workers[w].name, true);
                    window.allowance = Allowance::Until {
                        until: at + cfg.grace.as_secs_f64() + 2.0,
                        endpoints: vec![lost; workers.len()],
                        anything_from: Some((w, f64::MAX)),
                    };
                } else {
                    for m in &t.members {
                        workers[w].iptables(&["-A", "INPUT", "-s", &m.ip, "-j", "DROP"])?;
                        workers[w].iptables(&["-A", "OUTPUT", "-d", &m.ip, "-j", "DROP"])?;
                    }
                }
                isolated.push(w);
                let lost = workers[w].name.clone();
                let deadline = Instant::now() + cfg.grace + Duration::from_secs(4);
                while Instant::now() < deadline {
                    if fr.pods_elsewhere_after.is_none() && whole_without(&client, &lost).await {
                        fr.pods_elsewhere_after = Some(now() - at);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // Measured on: the pods may still be moving.
                let until = Instant::now() + CONVERGE;
                while fr.pods_elsewhere_after.is_none() && Instant::now() < until {
                    if whole_without(&client, &lost).await {
                        fr.pods_elsewhere_after = Some(now() - at);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            PlaneFault::PartitionWorkers => {
                fr.target = "all workers".into();
                let ips: Vec<String> = workers.iter().map(|w| w.ip.clone()).collect();
                // Only what comes in is dropped, each worker dropping the others': a
                // request's first packet still leaves, so its sender's connection
                // tracking keeps the endpoint it was sent to (the checker's evidence).
                for (i, w) in workers.iter().enumerate() {
                    for ip in ips.iter().filter(|ip| **ip != w.ip) {
                        w.iptables(&["-A", "INPUT", "-s", ip, "-j", "DROP"])?;
                        w.iptables(&["-A", "FORWARD", "-s", ip, "-j", "DROP"])?;
                    }
                    for chain in ["INPUT", "FORWARD"] {
                        w.iptables(&["-A", chain, "-i", "eth0", "-s", "10.244.0.0/16", "-j", "DROP"])?;
                    }
                    isolated.push(i);
                }
                tokio::time::sleep(HOLD).await;
            }
            PlaneFault::KillContainer => {
                let pods = live_pods(&client).await;
                if pods.is_empty() {
                    return Err(ChaosError::Cluster("kill-container: no web pod".into()));
                }
                let p = pods[rng.random_range(0..pods.len())].clone();
                let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
                let w = workers
                    .iter()
                    .position(|w| w.name == node)
                    .ok_or_else(|| ChaosError::Cluster(format!("kill-container: pod on unknown node {node:?}")))?;
                let id = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.first())
                    .map(|c| c.container_id.trim_start_matches("flotilla://").to_string())
                    .unwrap_or_default();
                fr.target = format!("{}@{node}", p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""));
                let ip = p.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default();
                window.allowance = Allowance::Until {
                    until: at + 5.0,
                    endpoints: vec![[ip].into(); workers.len()],
                    anything_from: None,
                };
                let out = ctd.ctr.run(&["-n", &workers[w].ctd_ns, "tasks", "kill", "-s", "SIGKILL", &id]);
                if !out.status.success() {
                    return Err(ChaosError::Cluster(format!(
                        "kill-container: ctr: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
        }
        // Heal.
        let healed = now();
        t.heal()?;
        for &w in &isolated {
            workers[w].iptables(&["-F"])?;
        }
        if f == PlaneFault::PartitionWorkers {
            // Each client's requests to the other workers' endpoints, until 2 s after.
            window.allowance = Allowance::Until {
                until: healed + 2.0,
                endpoints: workers.iter().map(|w| on(&w.name, false)).collect(),
                anything_from: None,
            };
        }
        if let Allowance::Until { anything_from: Some((_, own_until)), .. } = &mut window.allowance {
            *own_until = healed + 2.0;
        }
        for i in 0..3 {
            if !t.running(i) {
                t.start(i)?;
            }
        }
        if let Some(w) = restart_worker {
            workers[w].start()?;
        }
        // Whole again within 30 s.
        let converge_from = Instant::now();
        loop {
            if converged(&client).await.is_some() {
                fr.converged_after = Some(converge_from.elapsed().as_secs_f64());
                break;
            }
            if converge_from.elapsed() > CONVERGE {
                report.not_converged.push(format!("{} at {at:.1}s", f.name()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A restarted worker: from its restart to its node's next Lease renewal (it must
        // come within 15 s).
        if let Some(w) = restart_worker {
            let name = workers[w].name.clone();
            let unix_healed = unix_now() - (now() - healed);
            let renewed = wait_for("the restarted worker's Lease renewed", Duration::from_secs(15), || async {
                let s = lock(&seen);
                s.renewals.get(&name).and_then(|rs| rs.iter().find(|r| **r > unix_healed)).copied()
            })
            .await;
            match renewed {
                Ok(r) => fr.kubelet_failover = Some(r - unix_healed),
                Err(e) => report.problems.push(format!("{} at {at:.1}s: {e}", f.name())),
            }
        }
        // Failovers, from what the observers saw.
        {
            let s = lock(&seen);
            if let Some(m) = hit_master {
                if sched0 == Some(m) {
                    fr.scheduler_failover = first_other(&s.scheduler, at, m);
                }
                if cm0 == Some(m) {
                    fr.controller_manager_failover = first_other(&s.controller_manager, at, m);
                }
                let addr = &masters[m];
                fr.kubelet_failover = kubelets_moved(&s.kubelet_masters, at, addr, workers.len());
            }
        }
        windows.push(window);
        report.faults.push(fr);
        // A moment of calm between faults.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let requests: Vec<check::Request> = clients.finish().into_iter().filter(|r| r.at >= judged_from).collect();
    drop(observers);

    // Judge.
    report.requests = check::requests(&requests, &windows);
    for (fr, (_, made, failed, _)) in report.faults.iter_mut().zip(&report.requests.per_fault) {
        fr.requests = (*made, *failed);
    }
    {
        let s = lock(&seen);
        // Who held a failed request's endpoint address at the time: the last pod seen
        // with that IP before the request.
        for r in requests.iter().filter(|r| !r.ok) {
            let holder = r.endpoint.as_ref().and_then(|ip| {
                s.pods.iter().rev().find(|e| e.at <= r.at && e.ip == *ip).map(|e| {
                    let state = if e.deleted {
                        "deleted"
                    } else if e.active {
                        "active"
                    } else {
                        "terminating"
                    };
                    format!("{} on {} ({state} at {:.2}s)", e.name, e.node, e.at)
                })
            });
            report.failed_requests.push((r.clone(), holder));
        }
        report.pods = check::pods(&s.pods, REPLICAS + MAX_SURGE);
        report.on_two_nodes = check::on_two_nodes(&s.samples);
        report.samples = s.samples.len();
        report.evictions = s.evictions.len();
        report.unjust_evictions =
            check::unjust_evictions(&s.evictions, &s.renewals, cfg.grace.as_secs_f64()).into_iter().cloned().collect();
        report.fenced_refusals = s.fenced.iter().map(|(gone, now)| gone + now).sum();
    }
    for i in 0..3 {
        if let Some(how) = t.exited(i) {
            report.problems.push(format!("master {} exited by itself: {how}", t.members[i].name));
        }
    }
    for w in workers.iter_mut() {
        if let Some(how) = w.exited() {
            report.problems.push(format!("worker {} exited by itself: {how}", w.name));
        }
    }
    let logs = t.members.iter().map(|m| m.log.clone()).chain(workers.iter().map(|w| w.log.clone()));
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("panicked at")) {
            report.problems.push(format!("{}: {l}", log.display()));
        }
    }
    if report.samples == 0 {
        report.problems.push("containerd was never sampled".into());
    }
    report.passed = report.requests.valid()
        && report.pods.valid()
        && report.on_two_nodes.is_empty()
        && report.unjust_evictions.is_empty()
        && report.not_converged.is_empty()
        && report.problems.is_empty();
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let _ = std::fs::write(cfg.dir.join("report.json"), json);
    // Teardown order: workers (and the pods' namespaces they made), containerd, then
    // the masters and every namespace.
    drop(workers);
    drop(ctd);
    drop(t);
    Ok(report)
}

/// Polls `f` until it gives a value, for up to `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T, ChaosError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Cluster(format!("waited {within:?} for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn node_ready(n: &pb::Node) -> bool {
    n.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

fn pod_ready(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

fn active(p: &pb::Pod) -> bool {
    let deleting = p.metadata.as_ref().is_some_and(|m| !m.deletion_timestamp.is_empty());
    let finished = p.status.as_ref().is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed");
    !deleting && !finished
}

/// The web pods that count as replicas.
async fn live_pods(client: &Client) -> Vec<pb::Pod> {
    let p = ListParams { namespace: "default".into(), label_selector: "app=web".into(), ..Default::default() };
    client.list::<pb::Pod>(&p).await.map(|l| l.items).unwrap_or_default().into_iter().filter(active).collect()
}

/// The Deployment whole: as many active pods as replicas, every one bound and ready.
async fn converged(client: &Client) -> Option<()> {
    let pods = live_pods(client).await;
    (pods.len() == REPLICAS && pods.iter().all(pod_ready)).then_some(())
}

/// Every web pod with an address: (pod IP, node).
async fn placement(client: &Client) -> Vec<(String, String)> {
    let p = ListParams { namespace: "default".into(), label_selector: "app=web".into(), ..Default::default() };
    let pods = client.list::<pb::Pod>(&p).await.map(|l| l.items).unwrap_or_default();
    pods.iter()
        .filter_map(|p| {
            let ip = p.status.as_ref().map(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty())?;
            Some((ip, p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default()))
        })
        .collect()
}

/// Whole, with no pod on `node`.
async fn whole_without(client: &Client, node: &str) -> bool {
    let pods = live_pods(client).await;
    pods.len() == REPLICAS && pods.iter().all(|p| pod_ready(p) && p.spec.as_ref().is_some_and(|s| s.node_name != node))
}

/// The latest holder in a leadership history.
fn holder(history: &[(f64, Option<usize>)]) -> Option<usize> {
    history.last().and_then(|(_, h)| *h)
}

/// How long after `at` a master other than `m` was seen leading.
fn first_other(history: &[(f64, Option<usize>)], at: f64, m: usize) -> Option<f64> {
    history.iter().find(|(t, h)| *t >= at && h.is_some_and(|h| h != m)).map(|(t, _)| t - at)
}

/// How long after `at` every worker that talked to `master` at `at` talked to another.
fn kubelets_moved(history: &[(f64, usize, String)], at: f64, master: &str, workers: usize) -> Option<f64> {
    let mut latest: Vec<Option<&str>> = vec![None; workers];
    for (_, w, m) in history.iter().filter(|(t, _, _)| *t < at) {
        latest[*w] = Some(m.as_str());
    }
    let on: Vec<usize> = (0..workers).filter(|&w| latest[w].is_some_and(|m| m.contains(master))).collect();
    if on.is_empty() {
        return None;
    }
    let mut moved_at = 0.0f64;
    for w in on {
        let t = history.iter().find(|(t, ww, m)| *t >= at && *ww == w && !m.contains(master)).map(|(t, _, _)| *t)?;
        moved_at = moved_at.max(t - at);
    }
    Some(moved_at)
}

/// The background observers; stopped when dropped.
struct Observers(
    Vec<tokio::task::JoinHandle<()>>,
    Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Drop for Observers {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.2.take() {
            let _ = t.join();
        }
    }
}

/// Starts the watches (pods, node Leases, eviction Events), the metrics poller and the
/// containerd sampler.
async fn observe(
    client: &Client,
    seen: &Shared,
    ctd: &Containerd,
    workers: &[Worker],
    metrics_addrs: &[String],
    now: impl Fn() -> f64 + Send + Sync + Clone + 'static,
) -> Result<Observers, ChaosError> {
    let watch_err = |what: &str, e: flotilla_client::ClientError| ChaosError::Cluster(format!("watching {what}: {e}"));
    let web = ListParams { namespace: "default".into(), label_selector: "app=web".into(), ..Default::default() };
    let mut pods = client.watch::<pb::Pod>(&web, "").await.map_err(|e| watch_err("pods", e))?;
    let leases = ListParams { namespace: "kube-node-lease".into(), ..Default::default() };
    let mut leases = client.watch::<pb::Lease>(&leases, "").await.map_err(|e| watch_err("node leases", e))?;
    let events = ListParams { namespace: "default".into(), ..Default::default() };
    let mut events = client.watch::<pb::Event>(&events, "").await.map_err(|e| watch_err("events", e))?;
    let mut tasks = Vec::new();
    {
        let (seen, now) = (seen.clone(), now.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = pods.next().await {
                let deleted = matches!(ev, WatchEvent::Deleted(_));
                let p = ev.object();
                let m = p.metadata.clone().unwrap_or_default();
                let node = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
                let mut s = lock(&seen);
                if !node.is_empty() {
                    s.nodes.insert(m.uid.clone(), node.clone());
                }
                let ip = p.status.as_ref().map(|s| s.pod_ip.clone()).unwrap_or_default();
                s.pods.push(PodEvent { at: now(), uid: m.uid, name: m.name, node, ip, active: active(p), deleted });
            }
        }));
    }
    {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = leases.next().await {
                let l = ev.object();
                let name = l.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                if let Some(r) = l.spec.as_ref().and_then(|s| unix_of(&s.renew_time)) {
                    lock(&seen).renewals.entry(name).or_default().push(r);
                }
            }
        }));
    }
    {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(ev)) = events.next().await {
                let WatchEvent::Added(e) = ev else { continue };
                if e.reason != "TaintManagerEviction" {
                    continue;
                }
                let o = e.involved_object.unwrap_or_default();
                let mut s = lock(&seen);
                let node = s.nodes.get(&o.uid).cloned().unwrap_or_default();
                s.evictions.push(Eviction { at: unix_now(), pod: o.name, node });
            }
        }));
    }
    {
        let (seen, now) = (seen.clone(), now.clone());
        let masters = metrics_addrs.to_vec();
        let kubelets: Vec<String> = workers.iter().map(|w| format!("{}:10255", w.ip)).collect();
        tasks.push(tokio::spawn(async move {
            loop {
                let (m2, k2) = (masters.clone(), kubelets.clone());
                let scraped = tokio::task::spawn_blocking(move || {
                    let t = Duration::from_millis(300);
                    let ms: Vec<Option<String>> = m2.iter().map(|a| http_get(a, "/metrics", t)).collect();
                    let ks: Vec<Option<String>> = k2.iter().map(|a| http_get(a, "/metrics", t)).collect();
                    (ms, ks)
                })
                .await;
                let Ok((ms, ks)) = scraped else { return };
                let at = now();
                let leading = |name: &str| {
                    let l: Vec<usize> = (0..ms.len())
                        .filter(|&i| ms[i].as_deref().and_then(|m| metric(m, name)) == Some(1.0))
                        .collect();
                    (l.len() == 1).then(|| l[0])
                };
                let (sched, cm) =
                    (leading("flotilla_scheduler_is_leader"), leading("flotilla_controller_manager_is_leader"));
                {
                    let mut s = lock(&seen);
                    if s.scheduler.last().map(|(_, h)| *h) != Some(sched) {
                        s.scheduler.push((at, sched));
                    }
                    if s.controller_manager.last().map(|(_, h)| *h) != Some(cm) {
                        s.controller_manager.push((at, cm));
                    }
                    for (i, m) in ms.iter().enumerate() {
                        let Some(m) = m else { continue };
                        let n = metric(m, "flotilla_scheduler_fenced_writes_total").unwrap_or(0.0)
                            + metric(m, "flotilla_controller_manager_fenced_writes_total").unwrap_or(0.0);
                        let n = n as u64;
                        let (gone, cur) = s.fenced[i];
                        // A smaller count: a new process; the last one's count is kept.
                        s.fenced[i] = if n < cur { (gone + cur, n) } else { (gone, n) };
                    }
                    for (w, k) in ks.iter().enumerate() {
                        let master = k.as_deref().and_then(|k| {
                            k.lines()
                                .find(|l| l.starts_with("flotilla_kubelet_master{") && l.ends_with(" 1"))
                                .and_then(|l| l.split('"').nth(1))
                                .map(str::to_string)
                        });
                        if let Some(m) = master {
                            let last =
                                s.kubelet_masters.iter().rev().find(|(_, ww, _)| *ww == w).map(|(_, _, m)| m.clone());
                            if last.as_deref() != Some(m.as_str()) {
                                s.kubelet_masters.push((at, w, m));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // containerd, sampled from a thread of its own (ctr is a process per call).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (seen, stop, now) = (seen.clone(), stop.clone(), now.clone());
        let ctr = ctd.ctr.clone();
        let namespaces: Vec<String> = workers.iter().map(|w| w.ctd_ns.clone()).collect();
        std::thread::spawn(move || {
            let mut uids: HashMap<String, String> = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = now();
                let mut round = Vec::new();
                for ns in &namespaces {
                    let mut here = BTreeSet::new();
                    for id in ctr.running(ns) {
                        if !uids.contains_key(&id) {
                            if let Some(u) = ctr.pod_uid(ns, &id) {
                                uids.insert(id.clone(), u);
                            }
                        }
                        if let Some(u) = uids.get(&id) {
                            here.insert(u.clone());
                        }
                    }
                    round.push(here);
                }
                lock(&seen).samples.push((at, round));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    Ok(Observers(tasks, stop, Some(sampler)))
}

/// The terminal summary of a plane run.
pub fn summary(r: &PlaneReport) -> String {
    let mut s = format!("seed {} (plane): {}\n", r.seed, if r.passed { "PASSED" } else { "FAILED" });
    let secs = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}s"));
    s.push_str(&format!(
        "  {:>7}  {:<24} {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}\n",
        "at", "fault", "target", "sched", "ctrl-mgr", "kubelet", "moved", "whole", "req failed"
    ));
    for f in &r.faults {
        s.push_str(&format!(
            "  {:>6.1}s  {:<24} {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}/{:<6}\n",
            f.at,
            f.fault,
            f.target,
            secs(f.scheduler_failover),
            secs(f.controller_manager_failover),
            secs(f.kubelet_failover),
            secs(f.pods_elsewhere_after),
            secs(f.converged_after),
            f.requests.1,
            f.requests.0
        ));
    }
    let v = &r.requests;
    s.push_str(&format!(
        "  requests: {}\n",
        if v.valid() {
            "every failure within its fault's allowance".to_string()
        } else {
            let mut lines = format!("FAILED beyond their allowance (before any fault: {:?} made, failed):", v.before);
            for (fault, client, at, endpoint, error) in &v.violations {
                let holder = r
                    .failed_requests
                    .iter()
                    .find(|(q, _)| q.client == *client && q.at == *at)
                    .and_then(|(_, h)| h.clone())
                    .unwrap_or_else(|| "no pod known".into());
                lines.push_str(&format!(
                    "\n    {at:.2}s during {fault}: from w{} to {} ({holder}): {}",
                    client + 1,
                    endpoint.as_deref().unwrap_or("an unknown endpoint"),
                    error.as_deref().unwrap_or("?")
                ));
            }
            lines
        }
    ));
    s.push_str(&format!(
        "  pods: at most {} active at once (bound {}){}{}\n",
        r.pods.most_active,
        REPLICAS + MAX_SURGE,
        r.pods.over_surge.map_or(String::new(), |(at, n)| format!("; OVER THE BOUND at {at:.1}s: {n}")),
        if r.pods.rebound.is_empty() { String::new() } else { format!("; BOUND TWICE: {:?}", r.pods.rebound) }
    ));
    s.push_str(&format!(
        "  containerd: {} samples; {}\n",
        r.samples,
        if r.on_two_nodes.is_empty() {
            "no pod ran on two workers at once".to_string()
        } else {
            format!("PODS ON TWO WORKERS: {:?}", r.on_two_nodes)
        }
    ));
    s.push_str(&format!(
        "  evictions: {}; {}\n",
        r.evictions,
        if r.unjust_evictions.is_empty() {
            "none from a node that kept renewing its Lease".to_string()
        } else {
            format!("FROM RENEWING NODES: {:?}", r.unjust_evictions)
        }
    ));
    s.push_str(&format!("  writes of deposed leaders refused as fenced: {}\n", r.fenced_refusals));
    if !r.not_converged.is_empty() {
        s.push_str(&format!("  NOT WHOLE within 30 s of the heal: {}\n", r.not_converged.join(", ")));
    }
    for p in &r.problems {
        s.push_str(&format!("  PROBLEM: {p}\n"));
    }
    s
}
