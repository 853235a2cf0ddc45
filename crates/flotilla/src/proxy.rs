//! `flotilla proxy`: flags → the service proxy (nftables rules and cluster DNS) of one
//! node; the same flags are part of `flotilla worker`, which runs the proxy beside its
//! kubelet unless told not to.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use flotilla_proxy::dns::DnsConfig;
use flotilla_proxy::metrics::ProxyMetrics;
use flotilla_proxy::nft::{Apply, NftCli};
use flotilla_proxy::ProxyConfig;

/// The proxy's flags (shared by `flotilla proxy` and `flotilla worker`).
#[derive(Args, Debug, Clone)]
pub struct ProxyFlags {
    /// The nftables table (family ip) the proxy owns; it replaces it whole at start.
    #[arg(long, value_name = "NAME", default_value = "flotilla")]
    nft_table: String,
    /// The pods' address range: traffic to a cluster IP from outside it is masqueraded,
    /// so that answers come back through this node.
    #[arg(long, value_name = "CIDR")]
    cluster_cidr: Option<String>,
    /// The cluster's service range (the masters' --service-cluster-ip-range): a node
    /// without a route covering it gets one on its own interface.
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// The cluster's DNS domain.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Where cluster DNS listens (UDP and TCP) [default: the node's address, port 53].
    #[arg(long, value_name = "HOST:PORT")]
    dns_listen: Option<SocketAddr>,
    /// Do not serve cluster DNS (pods then keep their image's resolv.conf, unless the
    /// worker's --cluster-dns names servers).
    #[arg(long)]
    disable_dns: bool,
    /// Do not answer ARP for load-balancer addresses on this node (by default every proxy
    /// takes part, and each address is answered by one live node).
    #[arg(long)]
    disable_lb_announce: bool,
}

impl ProxyFlags {
    /// The proxy's configuration for the node `name` at `node_ip`.
    pub fn config(&self, name: &str, node_ip: IpAddr) -> anyhow::Result<ProxyConfig> {
        let IpAddr::V4(ip) = node_ip else { bail!("--node-ip {node_ip}: the proxy programs IPv4 services only") };
        let mut cfg = ProxyConfig::new(vec![ip]);
        if !valid_table(&self.nft_table) {
            bail!("--nft-table {:?}: letters, digits, '-' and '_' only, starting with a letter", self.nft_table);
        }
        cfg.table.table = self.nft_table.clone();
        if let Some(c) = &self.cluster_cidr {
            let cidr = flotilla_core::cidr::Cidr::parse_within(c, 1, 32)
                .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
            cfg.table.cluster_cidr = Some(cidr.to_string());
        }
        let svc = flotilla_core::cidr::Cidr::parse_within(&self.service_cidr, 1, 32)
            .map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
        cfg.service_cidr = Some(svc.to_string());
        if !self.disable_dns {
            let listen = self.dns_listen.unwrap_or_else(|| SocketAddr::new(node_ip, 53));
            let domain = self.cluster_domain.trim_matches('.');
            if domain.is_empty()
                || !domain.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                bail!("--cluster-domain {:?}: not a DNS domain", self.cluster_domain);
            }
            cfg.dns = Some(DnsConfig::new(listen, domain));
        }
        if !self.disable_lb_announce {
            cfg.announce = Some(flotilla_proxy::announce::AnnounceConfig::new(name, ip));
        }
        Ok(cfg)
    }

    /// The cluster DNS server pods should use (None without DNS).
    pub fn dns_server(&self, node_ip: IpAddr) -> Option<IpAddr> {
        (!self.disable_dns).then(|| self.dns_listen.map_or(node_ip, |a| a.ip()))
    }

    /// The cluster domain.
    pub fn domain(&self) -> String {
        self.cluster_domain.trim_matches('.').to_string()
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.nft_table
    }
}

fn valid_table(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && t.len() <= 64
}

/// Flags of `flotilla proxy`.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// YAML file with any of these flags, by name without the dashes (e.g. `node-ip:
    /// 10.0.1.5`, `masters: [a:2379, b:2379]`, `disable-dns: true`); the command line wins.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Masters to talk to (comma-separated host:port); the proxy moves between them by
    /// itself.
    #[arg(
        long,
        value_name = "ENDPOINTS",
        value_delimiter = ',',
        env = "FLOTILLA_ENDPOINTS",
        required_unless_present = "cleanup"
    )]
    masters: Vec<String>,
    #[command(flatten)]
    credentials: flotilla_ctl::CredentialArgs,
    /// The node's name (load-balancer addresses are shared out among nodes by name)
    /// [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// The node's address: node ports answer on it.
    #[arg(long, value_name = "IP", required_unless_present = "cleanup")]
    node_ip: Option<IpAddr>,
    /// Remove the proxy's nftables table and exit (traffic to services stops on this node).
    #[arg(long)]
    cleanup: bool,
    #[command(flatten)]
    metrics: crate::metrics_endpoint::MetricsArgs,
    #[command(flatten)]
    flags: ProxyFlags,
}

/// Runs the proxy until SIGINT or SIGTERM (its rules stay, so traffic keeps flowing).
pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        if args.cleanup {
            NftCli::default().apply(&flotilla_proxy::nft::cleanup(args.flags.table())).await?;
            eprintln!("removed nftables table ip {}", args.flags.table());
            return Ok(());
        }
        let node_ip = args.node_ip.context("--node-ip is required")?;
        let name = crate::worker::node_name(args.name.as_deref())?;
        let cfg = args.flags.config(&name, node_ip)?;
        let client = args.credentials.client(&args.masters).context("--masters")?;
        let metrics = Arc::new(ProxyMetrics::new());
        let m = metrics.clone();
        args.metrics.start(move || m.render()).await?;
        tracing::info!(masters = ?args.masters, table = %cfg.table.table, "proxy started");
        flotilla_proxy::run(client, cfg, NftCli::default(), metrics, crate::scheduler::signalled()).await?;
        Ok(())
    })
}
