//! `flotilla controller-manager`: flags → a controller-manager candidate of its own,
//! against any masters; and the flags a master uses for the candidate it runs itself.

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use flotilla_controllers::{ControllerMetrics, ManagerConfig};

fn controllers_help() -> String {
    let list: Vec<String> = flotilla_controllers::CONTROLLERS
        .iter()
        .map(|d| format!("{}{}: {}", d.name, if d.on_by_default { "" } else { " (off by default)" }, d.about))
        .collect();
    format!(
        "Controllers to run: `*` for those on by default, `name` to add one, `-name` to leave one out \
         (e.g. `*,-replicaset`). Known: {}",
        list.join("; ")
    )
}

/// Controller-manager settings shared by `flotilla controller-manager` and the candidate
/// every master runs.
#[derive(Args, Debug, Default, Clone)]
pub struct ControllerManagerFlags {
    #[arg(long, value_name = "LIST", default_value = "*", allow_hyphen_values = true, long_help = controllers_help())]
    pub controllers: String,
    /// Keys each controller reconciles at once [default: 5].
    #[arg(long, value_name = "N")]
    pub controller_workers: Option<usize>,
    /// How long the controller-manager lock lasts without renewal, in milliseconds (its
    /// holder renews every quarter of it; a successor takes over this long after the
    /// holder crashes; a holder stopped with SIGTERM hands over at once) [default: 800].
    #[arg(long, value_name = "MS")]
    pub controller_manager_lease_duration: Option<u64>,
    /// How long a node may go without renewing its Lease in kube-node-lease (or posting
    /// its status) before it is marked Ready=Unknown, tainted unreachable and its pods are
    /// evicted; keep it above the kubelets' renew interval (10 s) [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub node_monitor_grace_period: Option<String>,
    /// Finished pods (Succeeded, Failed) kept before the oldest are deleted [default: 12500].
    #[arg(long, value_name = "N")]
    pub terminated_pod_gc_threshold: Option<usize>,
    /// The cluster's pod address range: each Node gets a block of it as its podCIDR
    /// (`--node-cidr-mask-size` long), never one another node has [default: none; Node
    /// IPAM is off and kubelets bring their own --pod-cidr].
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: Option<String>,
    /// The prefix length of each Node's block of --cluster-cidr [default: 24].
    #[arg(long, value_name = "BITS")]
    pub node_cidr_mask_size: Option<u8>,
    /// Addresses for Services of type LoadBalancer, as CIDRs (comma-separated; a /32 is one
    /// address), handed out in order, each to one Service at a time [default: none; such
    /// Services get no address].
    #[arg(long, value_name = "CIDR,...")]
    pub load_balancer_pool: Option<String>,
}

impl ControllerManagerFlags {
    /// The configuration, campaigning as `identity`. Unknown controllers are refused here,
    /// before anything runs.
    pub fn config(&self, identity: &str) -> anyhow::Result<ManagerConfig> {
        let mut cfg = ManagerConfig::new(identity);
        cfg.select(if self.controllers.is_empty() { "*" } else { &self.controllers }).map_err(anyhow::Error::msg)?;
        if cfg.controllers.is_empty() {
            bail!("--controllers {:?} selects no controller", self.controllers);
        }
        if let Some(n) = self.controller_workers {
            if n == 0 {
                bail!("--controller-workers must be at least 1");
            }
            cfg.workers = n;
        }
        if let Some(g) = &self.node_monitor_grace_period {
            let d = humantime::parse_duration(g)
                .with_context(|| format!("--node-monitor-grace-period {g:?} is not a duration like 15s"))?;
            if d < std::time::Duration::from_secs(1) {
                bail!("--node-monitor-grace-period must be at least 1s, not {g}");
            }
            cfg.settings.node_monitor_grace_period = d;
        }
        if let Some(n) = self.terminated_pod_gc_threshold {
            cfg.settings.terminated_pod_gc_threshold = n;
        }
        match (&self.cluster_cidr, self.node_cidr_mask_size) {
            (Some(c), size) => {
                let r = flotilla_controllers::nodeipam::PodRanges::new(c, size.unwrap_or(24))
                    .map_err(anyhow::Error::msg)?;
                cfg.settings.pod_ranges = Some(r);
            }
            (None, Some(_)) => bail!("--node-cidr-mask-size needs --cluster-cidr"),
            (None, None) => {}
        }
        if let Some(p) = &self.load_balancer_pool {
            cfg.settings.load_balancer_pool =
                Some(flotilla_controllers::loadbalancer::Pool::parse(p).map_err(anyhow::Error::msg)?);
        }
        crate::scheduler::lease_duration(
            "controller-manager-lease-duration",
            self.controller_manager_lease_duration,
            &mut cfg.elector,
        )?;
        Ok(cfg)
    }
}

/// Flags of `flotilla controller-manager`.
#[derive(Args, Debug)]
pub struct ControllerManagerArgs {
    /// Masters to talk to (comma-separated host:port or http://host:port); the controller
    /// manager moves between them by itself.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', required = true, env = "FLOTILLA_ENDPOINTS")]
    masters: Vec<String>,
    #[command(flatten)]
    credentials: flotilla_ctl::CredentialArgs,
    #[command(flatten)]
    metrics: crate::metrics_endpoint::MetricsArgs,
    /// This candidate's identity in the lock [default: host/pid/random].
    #[arg(long)]
    identity: Option<String>,
    #[command(flatten)]
    flags: ControllerManagerFlags,
}

/// Runs a controller-manager candidate until SIGINT or SIGTERM (then releases the lock).
pub fn run(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let identity = args.identity.clone().unwrap_or_else(flotilla_client::elector::unique_identity);
    let cfg = args.flags.config(&identity)?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let client = args.credentials.client(&args.masters).context("--masters")?;
        let metrics = Arc::new(ControllerMetrics::new());
        let m = metrics.clone();
        args.metrics.start(move || m.render()).await?;
        tracing::info!(%identity, masters = ?args.masters, controllers = ?cfg.controllers, "controller-manager candidate started");
        flotilla_controllers::run(client, cfg, metrics, crate::scheduler::signalled()).await?;
        Ok(())
    })
}
