//! `flotilla bench`: flags → [`flotilla_bench`].

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use flotilla_bench::{Common, Consistency, Workload};

/// Flags shared by every workload, named like etcd's benchmark tool's.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated endpoints (host:port or http://host:port; https:// with --cacert).
    #[arg(long, default_value = "127.0.0.1:2379", global = true)]
    endpoints: String,
    /// CA certificate (PEM) of endpoints that serve TLS (etcdctl's flag).
    #[arg(long, value_name = "FILE", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present.
    #[arg(long, value_name = "FILE", global = true)]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", global = true)]
    key: Option<std::path::PathBuf>,
    /// gRPC connections, spread over the endpoints.
    #[arg(long, default_value_t = 1, global = true)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 1, global = true)]
    clients: usize,
    /// Stop after this many requests (default 10000 unless --duration is given).
    #[arg(long, global = true)]
    total: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS", global = true)]
    duration: Option<f64>,
    /// Key size in bytes.
    #[arg(long, default_value_t = 32, global = true)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256, global = true)]
    val_size: usize,
    /// Number of distinct keys (for range and txn, the keys prefilled and read).
    #[arg(long, default_value_t = 10000, global = true)]
    key_space_size: u64,
    /// Write keys in sequence instead of at random.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Print the report as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    workload: WorkloadArgs,
}

#[derive(Subcommand, Debug)]
enum WorkloadArgs {
    /// Puts.
    Put,
    /// Single-key ranges over a prefilled key space.
    Range {
        /// l = linearizable, s = serializable.
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
    },
    /// Read then compare-and-swap on mod_revision, over --key-space-size hot keys.
    Txn,
    /// Watchers on one key; puts carry their send time; reports put → event latency.
    Watch {
        /// Number of watchers (spread over --conns streams).
        #[arg(long, default_value_t = 100)]
        watchers: usize,
    },
    /// Steady writes; kills the leader with --kill-cmd; reports time to the first
    /// acknowledged write after the kill and the longest gap with none.
    Failover {
        /// Shell command that kills a member; `{endpoint}` is replaced by the leader's
        /// endpoint as given in --endpoints.
        #[arg(long)]
        kill_cmd: String,
        /// Seconds from the start to the kill.
        #[arg(long, default_value_t = 2.0)]
        kill_after: f64,
        /// Writes per second across all clients (0 = as fast as possible).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// Run the workload matrix against a 3-member etcd and a 3-member Flotilla on this
    /// machine and print both with their ratio (see bench/compare).
    Compare(CompareArgs),
    /// Scheduling throughput and latency on a Flotilla cluster: fake nodes, pending pods
    /// created first, then binds per second from the first to the last; then create → bound
    /// latency at half that rate. Runs its own scheduler (start the masters with
    /// --disable-scheduler) unless --external-scheduler.
    Scheduler {
        /// Fake nodes (objects only: Ready, 64 cpu, 256 GiB, 250 pods; their Leases renewed).
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pods created before scheduling starts (100m cpu, 128 MiB each).
        #[arg(long, default_value_t = 10000)]
        pods: usize,
        /// Pods for the latency phase [default: a fifth of --pods]; 0 skips it.
        #[arg(long)]
        latency_pods: Option<usize>,
        /// Let the cluster's own scheduler place the pods (as they are created).
        #[arg(long)]
        external_scheduler: bool,
        /// Concurrent creates.
        #[arg(long, default_value_t = 64)]
        creators: usize,
    },
    /// Pod startup latency on real workers: pods created at --rate, placed by the
    /// cluster's scheduler; time from each create until its container runs, as a client
    /// watching sees it (p50/p90/p99). Needs workers with the image present (or
    /// pullable); the pods' namespace is deleted afterwards.
    Pods {
        /// Pods to start.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Creates per second.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// The image the pods run (the process runtime ignores it).
        #[arg(long, default_value = "flotilla.local/busybox:1")]
        image: String,
        /// The container's command.
        #[arg(long, value_delimiter = ' ', default_value = "sleep 3600")]
        command: Vec<String>,
        /// Only on nodes with these labels: key=value,...
        #[arg(long, value_delimiter = ',')]
        node_selector: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Leave the pods and their namespace.
        #[arg(long)]
        keep: bool,
    },
    /// Service proxy update latency: --services Services with --endpoints-per-service
    /// endpoints each, programmed by the real proxy into nftables in a network namespace
    /// of the bench's own; then one endpoint replaced at --rate: time from the Endpoints
    /// write until its nft transaction has committed (p50/p90/p99). Needs root.
    Proxy {
        /// Services.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoints per service.
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        /// Endpoint changes to time.
        #[arg(long, default_value_t = 500)]
        updates: usize,
        /// Changes per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// A Deployment's pods made and placed by the cluster's own controller manager and
    /// scheduler: hollow nodes, one Deployment of --replicas, time until every pod exists
    /// and until every pod is bound. Run against a fresh cluster of normal masters.
    Controllers {
        /// Hollow nodes (Node objects with renewed Leases; bound pods reported Running).
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Replicas of the Deployment (100m cpu, 64 MiB each).
        #[arg(long, default_value_t = 5000)]
        replicas: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

/// Flags of `flotilla bench compare`.
#[derive(Args, Debug)]
struct CompareArgs {
    /// The etcd server binary (Debian package etcd-server).
    #[arg(long, default_value = "etcd")]
    etcd_bin: std::path::PathBuf,
    /// The flotilla binary to benchmark [default: this one].
    #[arg(long)]
    flotilla_bin: Option<std::path::PathBuf>,
    /// Directory for compare.txt, compare.json and throughput.png.
    #[arg(long, default_value = "bench-results")]
    out_dir: std::path::PathBuf,
    /// A short run (under two minutes): one round, short phases, 100k keys for memory.
    #[arg(long)]
    quick: bool,
    /// Rounds of A B alternation.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Keep the clusters' data dirs and logs.
    #[arg(long)]
    keep: bool,
    /// Both clusters with TLS on every port and client certificates required (etcd's
    /// flags on both), the clients with an admin's certificate: the cost of TLS.
    #[arg(long)]
    tls: bool,
}

/// Runs the chosen workload and prints its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    if let Some(tls) =
        flotilla_client::tls_from_files(args.cacert.as_deref(), args.cert.as_deref(), args.key.as_deref())?
    {
        if matches!(args.workload, WorkloadArgs::Compare(_)) {
            anyhow::bail!("compare starts its own clusters: give it --tls instead of --cacert/--cert/--key");
        }
        flotilla_bench::workload::use_tls(tls)?;
    }
    if let WorkloadArgs::Compare(c) = args.workload {
        let flotilla_bin = match c.flotilla_bin {
            Some(b) => b,
            None => std::env::current_exe().context("cannot find this binary; give --flotilla-bin")?,
        };
        let cfg = flotilla_bench::compare::CompareConfig {
            etcd_bin: c.etcd_bin,
            flotilla_bin,
            out_dir: c.out_dir,
            quick: c.quick,
            rounds: c.rounds,
            keep: c.keep,
            tls: c.tls,
        };
        return rt.block_on(flotilla_bench::compare::run(cfg)).map_err(Into::into);
    }
    if let WorkloadArgs::Scheduler { nodes, pods, latency_pods, external_scheduler, creators } = args.workload {
        let b = flotilla_bench::scheduler::SchedulerBench {
            endpoints: args.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            nodes,
            pods,
            latency_pods: latency_pods.unwrap_or(pods / 5),
            external_scheduler,
            creators,
            progress: !args.json,
        };
        let r = rt.block_on(async move { flotilla_bench::scheduler::run(&b).await })?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "scheduler ({}): {} pods on {} nodes: {:.0} pods/s (created at {:.0}/s); \
                 create->bound at {:.0}/s over {} pods: p50 {:.1} ms, p99 {:.1} ms",
                r.scheduler,
                r.pods,
                r.nodes,
                r.pods_per_second,
                r.creates_per_second,
                r.latency_rate,
                r.latency_pods,
                r.p50_ms,
                r.p99_ms
            );
        }
        return Ok(());
    }
    if let WorkloadArgs::Pods { pods, rate, image, command, node_selector, timeout, keep } = args.workload {
        let mut selector = std::collections::BTreeMap::new();
        for kv in node_selector.iter().filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').with_context(|| format!("--node-selector {kv:?}: expected key=value"))?;
            selector.insert(k.to_string(), v.to_string());
        }
        let b = flotilla_bench::pods::PodsBench {
            endpoints: args.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            pods,
            rate,
            image,
            command,
            node_selector: selector,
            timeout: Duration::from_secs(timeout),
            progress: !args.json,
            keep,
        };
        let r = rt.block_on(async move { flotilla_bench::pods::run(&b).await })?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "pods ({}): {} pods at {}/s on {} nodes: create->running p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                r.runtimes.join(", "),
                r.pods,
                r.rate,
                r.nodes,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.max_ms
            );
        }
        return Ok(());
    }
    if let WorkloadArgs::Proxy { services, endpoints_per_service, updates, rate, timeout } = args.workload {
        let b = flotilla_bench::proxy::ProxyBench {
            endpoints: args.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            services,
            per_service: endpoints_per_service,
            updates,
            rate,
            timeout: Duration::from_secs(timeout),
            progress: !args.json,
        };
        let r = rt.block_on(async move { flotilla_bench::proxy::run(&b).await })?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "proxy: {} services x {} endpoints (full sync: {} nft operations in {:.0} ms); {} endpoint changes at {}/s \
                 in {} transactions ({:.1} operations, {:.1} ms of nft each): change->kernel p50 {:.0} ms, p90 {:.0} ms, \
                 p99 {:.0} ms, max {:.0} ms",
                r.services,
                r.endpoints_per_service,
                r.full_sync_ops,
                r.full_sync_ms,
                r.updates,
                r.rate,
                r.partial_syncs,
                r.ops_per_partial,
                r.nft_ms_per_partial,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.max_ms
            );
        }
        return Ok(());
    }
    if let WorkloadArgs::Controllers { nodes, replicas, timeout } = args.workload {
        let b = flotilla_bench::controllers::ControllersBench {
            endpoints: args.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            nodes,
            replicas,
            timeout: Duration::from_secs(timeout),
            progress: !args.json,
        };
        let r = rt.block_on(async move { flotilla_bench::controllers::run(&b).await })?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "controllers: a Deployment of {} replicas on {} hollow nodes: all created after {:.2} s ({:.0} pods/s), \
                 all bound after {:.2} s ({:.0} pods/s)",
                r.replicas, r.nodes, r.all_created_seconds, r.created_per_second, r.all_bound_seconds, r.pods_per_second
            );
        }
        return Ok(());
    }
    let duration = args.duration.map(Duration::from_secs_f64);
    let common = Common {
        endpoints: args.endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        conns: args.conns,
        clients: args.clients,
        total: if duration.is_none() && args.total.is_none() { Some(10_000) } else { args.total },
        duration,
        key_size: args.key_size,
        val_size: args.val_size,
        key_space_size: args.key_space_size,
        sequential_keys: args.sequential_keys,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let workload = match args.workload {
        WorkloadArgs::Put => Workload::Put,
        WorkloadArgs::Range { consistency } => {
            Workload::Range(if consistency == "s" { Consistency::Serializable } else { Consistency::Linearizable })
        }
        WorkloadArgs::Txn => Workload::Txn,
        WorkloadArgs::Watch { watchers } => Workload::Watch { watchers },
        WorkloadArgs::Failover { kill_cmd, kill_after, rate } => {
            Workload::Failover { kill_cmd, kill_after: Duration::from_secs_f64(kill_after), rate }
        }
        WorkloadArgs::Compare(_)
        | WorkloadArgs::Scheduler { .. }
        | WorkloadArgs::Controllers { .. }
        | WorkloadArgs::Proxy { .. }
        | WorkloadArgs::Pods { .. } => {
            unreachable!("handled above")
        }
    };
    let report = rt.block_on(flotilla_bench::workload::run(&common, &workload))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
