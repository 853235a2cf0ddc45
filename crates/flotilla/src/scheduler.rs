//! `flotilla scheduler`: flags → a scheduler candidate of its own, against any masters;
//! and the flags a master uses for the candidate it runs itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use flotilla_scheduler::{SchedulerConfig, SchedulerMetrics};

/// Scheduler settings shared by `flotilla scheduler` and the candidate every master runs.
#[derive(Args, Debug, Default, Clone)]
pub struct SchedulerFlags {
    /// Scheduler plugins to switch off (comma-separated names, e.g. NodePorts,SelectorSpread).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub scheduler_disable_plugins: Vec<String>,
    /// Score weights that differ from the defaults: NAME=WEIGHT,... (0 switches a score off).
    #[arg(long, value_name = "NAME=W,...")]
    pub scheduler_weights: Option<String>,
    /// How long the scheduler lock lasts without renewal, in milliseconds (its holder
    /// renews every quarter of it; a successor takes over this long after the holder
    /// crashes; a holder stopped with SIGTERM hands over at once) [default: 800].
    #[arg(long, value_name = "MS")]
    pub scheduler_lease_duration: Option<u64>,
}

impl SchedulerFlags {
    /// The scheduler configuration, campaigning as `identity`.
    pub fn config(&self, identity: &str) -> anyhow::Result<SchedulerConfig> {
        let mut cfg = SchedulerConfig::new(identity);
        cfg.disabled_plugins = self.scheduler_disable_plugins.clone();
        if let Some(w) = &self.scheduler_weights {
            let mut weights = BTreeMap::new();
            for part in w.split(',').filter(|p| !p.is_empty()) {
                let (name, weight) = part
                    .split_once('=')
                    .with_context(|| format!("--scheduler-weights: {part:?} is not NAME=WEIGHT"))?;
                let weight: i64 = weight
                    .parse()
                    .with_context(|| format!("--scheduler-weights: {weight:?} (for {name}) is not a whole number"))?;
                weights.insert(name.to_string(), weight);
            }
            cfg.weights = weights;
        }
        lease_duration("scheduler-lease-duration", self.scheduler_lease_duration, &mut cfg.elector)?;
        // Unknown plugin names and bad weights are refused here, before anything runs.
        flotilla_scheduler::plugins::build(&cfg.disabled_plugins, &cfg.weights).map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }
}

/// Applies a `--*-lease-duration` flag (milliseconds) to an elector: the lease, renewed
/// every quarter of it.
pub fn lease_duration(flag: &str, ms: Option<u64>, elector: &mut flotilla_client::ElectorConfig) -> anyhow::Result<()> {
    if let Some(ms) = ms {
        if ms < 200 {
            bail!("--{flag} must be at least 200 ms, not {ms}");
        }
        elector.lease_duration = Duration::from_millis(ms);
        elector.renew_every = Duration::from_millis(ms / 4);
    }
    Ok(())
}

/// Flags of `flotilla scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Masters to talk to (comma-separated host:port or http://host:port); the scheduler
    /// moves between them by itself.
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
    flags: SchedulerFlags,
}

/// Waits for SIGINT or SIGTERM.
pub async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs a scheduler candidate until SIGINT or SIGTERM (then releases the lock).
pub fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let identity = args.identity.clone().unwrap_or_else(flotilla_client::elector::unique_identity);
    let cfg = args.flags.config(&identity)?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let client = args.credentials.client(&args.masters).context("--masters")?;
        let metrics = Arc::new(SchedulerMetrics::new());
        let m = metrics.clone();
        args.metrics.start(move || m.render()).await?;
        tracing::info!(%identity, masters = ?args.masters, "scheduler candidate started");
        flotilla_scheduler::run(client, cfg, metrics, signalled()).await?;
        Ok(())
    })
}
