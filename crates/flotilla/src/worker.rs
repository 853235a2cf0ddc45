//! `flotilla worker`: flags → the kubelet of one worker against any masters; and
//! `flotilla process-shim`, which the process runtime starts each container under.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use flotilla_kubelet::WorkerConfig;
use flotilla_proto::api as pb;

/// Container runtimes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// containerd with runc: real containers (not built yet: issue 13).
    Containerd,
    /// Host processes under a shim each: for development and tests without root; refuses
    /// images it would have to pull, limits and host ports.
    Process,
}

/// Flags of `flotilla worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The Node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Masters to talk to (comma-separated host:port); the worker moves between them by
    /// itself.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', required = true, env = "FLOTILLA_ENDPOINTS")]
    masters: Vec<String>,
    /// The node's address (its InternalIP; with the process runtime also its pods').
    #[arg(long, value_name = "IP")]
    node_ip: std::net::IpAddr,
    /// The container runtime.
    #[arg(long, value_enum, default_value = "containerd")]
    runtime: RuntimeKind,
    /// Where the worker keeps its state and its containers' output [default:
    /// /var/lib/flotilla/worker/<name>].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Labels for the Node: key=value,...
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints the Node registers with: key=value:Effect,...
    #[arg(long, value_name = "TAINTS", value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// The node's pod range, when the controller manager does not give one (--cluster-cidr).
    #[arg(long, value_name = "CIDR")]
    pod_cidr: Option<String>,
    /// Pods this node takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// How often the node's Lease is renewed (a node silent for the controller manager's
    /// --node-monitor-grace-period is marked and its pods moved).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    lease_interval: String,
    /// The port of the kubelet's endpoint on --node-ip (the apiserver fetches pod logs
    /// there).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Address serving /healthz and /metrics, e.g. 127.0.0.1:10248.
    #[arg(long, value_name = "HOST:PORT")]
    listen_metrics: Option<String>,
}

fn labels(list: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (k, v) = s.split_once('=').with_context(|| format!("--node-labels {s:?}: expected key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn taints(list: &[String]) -> anyhow::Result<Vec<pb::Taint>> {
    list.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (kv, effect) = s
                .rsplit_once(':')
                .with_context(|| format!("--register-with-taints {s:?}: expected key=value:Effect"))?;
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
                bail!("--register-with-taints {s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
            }
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok(pb::Taint { key: k.into(), value: v.into(), effect: effect.into(), ..Default::default() })
        })
        .collect()
}

/// Runs the worker until SIGINT or SIGTERM (its containers keep running).
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?.trim().into(),
    };
    let mut cfg = WorkerConfig::new(&name, &args.node_ip.to_string());
    cfg.labels = labels(&args.node_labels)?;
    cfg.taints = taints(&args.register_with_taints)?;
    cfg.max_pods = args.max_pods;
    cfg.kubelet_port = args.kubelet_port;
    cfg.lease_interval = humantime::parse_duration(&args.lease_interval)
        .with_context(|| format!("--lease-interval {:?} is not a duration like 2s", args.lease_interval))?;
    if let Some(c) = &args.pod_cidr {
        flotilla_core::cidr::Cidr::parse_within(c, 8, 30).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
        cfg.pod_cidr = c.clone();
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/flotilla/worker").join(&name));
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    if args.runtime == RuntimeKind::Containerd {
        bail!("--runtime containerd is not built yet (issue 13); use --runtime process");
    }
    let shim = std::env::current_exe().context("finding the flotilla binary for the process shim")?;
    let runtime = flotilla_kubelet::process::ProcessRuntime::new(&dir, &shim)?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let client = flotilla_client::Client::new(&args.masters).context("--masters")?;
        let metrics = std::sync::Arc::new(flotilla_kubelet::metrics::KubeletMetrics::new());
        if let Some(addr) = &args.listen_metrics {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--listen-metrics {addr}"))?;
            let m = metrics.clone();
            tokio::spawn(crate::scheduler::serve_metrics(l, move || m.render()));
        }
        tracing::info!(node = %name, masters = ?args.masters, dir = %dir.display(), "worker started");
        flotilla_kubelet::run(client, cfg, runtime, metrics, crate::scheduler::signalled()).await?;
        Ok(())
    })
}

/// Flags of `flotilla process-shim` (started by the process runtime, not by people).
#[derive(Args, Debug)]
pub struct ShimArgs {
    /// The container's directory.
    #[arg(long)]
    dir: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs the shim.
pub fn shim(args: ShimArgs) -> std::process::ExitCode {
    flotilla_kubelet::process::run_shim(&args.dir, &args.command)
}
