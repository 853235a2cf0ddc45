//! `flotilla worker`: flags → the kubelet and the service proxy of one worker against
//! any masters; and
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
    /// containerd with runc: real containers from images (pulled from registries or
    /// imported from --image-dir), with cgroup limits.
    Containerd,
    /// Host processes under a shim each: for development and tests without root; refuses
    /// images it would have to pull, limits and host ports.
    Process,
}

/// Flags of `flotilla worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// YAML file with any of these flags, by name without the dashes (e.g. `node-ip:
    /// 10.0.1.5`, `masters: [a:2379, b:2379]`, `disable-dns: true`); the command line wins.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// The Node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Masters to talk to (comma-separated host:port); the worker moves between them by
    /// itself.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', required = true, env = "FLOTILLA_ENDPOINTS")]
    masters: Vec<String>,
    #[command(flatten)]
    credentials: flotilla_ctl::CredentialArgs,
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
    /// Resources kept back from pods for the system and the worker itself:
    /// cpu=QUANTITY,memory=QUANTITY (the Node's allocatable is its capacity less these).
    #[arg(long, value_name = "RESOURCES", value_delimiter = ',')]
    system_reserved: Vec<String>,
    /// A container's log is rotated when it grows past this (a quantity, e.g. 10Mi).
    #[arg(long, value_name = "SIZE", default_value = "10Mi")]
    container_log_max_size: String,
    /// Rotated logs kept per container, besides the one being written.
    #[arg(long, value_name = "N", default_value_t = 1)]
    container_log_max_files: usize,
    /// Unused images are removed, least recently used first, while the disk of the
    /// worker's directory is fuller than this percentage (0: every unused image).
    #[arg(long, value_name = "PERCENT", default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// ...until it is at most this full.
    #[arg(long, value_name = "PERCENT", default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// How often the image garbage collector looks.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    image_gc_period: String,
    /// How often the node's Lease is renewed (a node silent for the controller manager's
    /// --node-monitor-grace-period is marked and its pods moved).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    lease_interval: String,
    /// The port of the kubelet's endpoint on --node-ip (the apiserver fetches pod logs
    /// there).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Certificate (PEM) the kubelet's endpoint serves (the node's, from `flotilla certs
    /// issue node`); with --tls-private-key-file and --client-ca-file the endpoint speaks
    /// TLS and answers only masters' certificates. Needed when the masters serve TLS (they
    /// then dial kubelets in TLS). Reloaded when the file changes.
    #[arg(long, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    tls_private_key_file: Option<PathBuf>,
    /// CA (PEM) that the masters' client certificates chain to, for the kubelet's endpoint.
    #[arg(long, value_name = "FILE")]
    client_ca_file: Option<PathBuf>,
    /// containerd's socket (--runtime containerd).
    #[arg(long, value_name = "PATH", default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// The containerd namespace of this worker's containers [default: flotilla-<name>].
    #[arg(long, value_name = "NAMESPACE")]
    containerd_namespace: Option<String>,
    /// A directory of image archives (OCI image layouts or `docker save` tars, *.tar) to
    /// import, for machines without a registry; looked at again when an image is missing.
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// Registry settings (YAML): `HOST[:PORT]: {insecure: true, username: U, password: P}`.
    /// Loopback registries are reached over plain HTTP without it.
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Where the CNI plugins are (bridge, host-local, loopback, portmap: Debian's
    /// containernetworking-plugins). Each pod gets a network namespace and an address from
    /// the node's podCIDR on --bridge.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The bridge pods are attached to (the pods' gateway).
    #[arg(long, value_name = "NAME", default_value = "flotilla0")]
    bridge: String,
    /// Every pod on the node's own network, without CNI (as hostNetwork pods are).
    #[arg(long)]
    host_network_only: bool,
    /// The cgroup containers are put under (cgroup v1 path).
    #[arg(long, value_name = "PATH", default_value = "/flotilla")]
    cgroup_parent: String,
    /// Address serving /healthz and /metrics: HOST:PORT or http://HOST:PORT in plain
    /// HTTP, e.g. 127.0.0.1:10248; https://HOST:PORT in TLS with --tls-cert-file (and, with
    /// --client-ca-file, for scrapers presenting a certificate from that CA only).
    #[arg(long, value_name = "[SCHEME://]HOST:PORT")]
    listen_metrics: Option<String>,
    /// Do not run the service proxy here (run `flotilla proxy` instead, or none).
    #[arg(long)]
    disable_proxy: bool,
    /// DNS servers for pods' resolv.conf (comma-separated) [default: this worker's cluster
    /// DNS, unless --disable-proxy or --disable-dns].
    #[arg(long, value_name = "IPS", value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    #[command(flatten)]
    proxy: crate::proxy::ProxyFlags,
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

/// The node's name: `given`, or the host name.
pub fn node_name(given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(n) => Ok(n.to_string()),
        None => {
            Ok(std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?.trim().into())
        }
    }
}

/// Runs the worker until SIGINT or SIGTERM (its containers keep running).
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let name = node_name(args.name.as_deref())?;
    let mut cfg = WorkerConfig::new(&name, &args.node_ip.to_string());
    cfg.labels = labels(&args.node_labels)?;
    cfg.taints = taints(&args.register_with_taints)?;
    cfg.max_pods = args.max_pods;
    cfg.kubelet_port = args.kubelet_port;
    cfg.kubelet_tls = match (&args.tls_cert_file, &args.tls_private_key_file, &args.client_ca_file) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => Some(flotilla_tls::ServerTls::new(flotilla_tls::ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: Some(ca.clone()),
            auth: flotilla_tls::ClientAuth::Required,
            protocol: flotilla_tls::Protocol::Grpc,
        })?),
        _ => bail!(
            "--tls-cert-file, --tls-private-key-file and --client-ca-file go together (the kubelet's endpoint in TLS)"
        ),
    };
    cfg.lease_interval = humantime::parse_duration(&args.lease_interval)
        .with_context(|| format!("--lease-interval {:?} is not a duration like 2s", args.lease_interval))?;
    for kv in args.system_reserved.iter().filter(|s| !s.is_empty()) {
        let (k, v) =
            kv.split_once('=').with_context(|| format!("--system-reserved {kv:?}: expected cpu=... or memory=..."))?;
        if k != "cpu" && k != "memory" {
            bail!("--system-reserved {kv:?}: only cpu and memory can be reserved");
        }
        flotilla_core::quantity::Quantity::parse(v).map_err(|e| anyhow::anyhow!("--system-reserved {kv:?}: {e}"))?;
        cfg.reserved.insert(k.into(), v.into());
    }
    let size = flotilla_core::quantity::Quantity::parse(&args.container_log_max_size)
        .map_err(|e| anyhow::anyhow!("--container-log-max-size {:?}: {e}", args.container_log_max_size))?;
    cfg.log_max_size = u64::try_from(size.units_ceil()).unwrap_or(0);
    if cfg.log_max_size < 1024 {
        bail!("--container-log-max-size {:?}: at least 1Ki", args.container_log_max_size);
    }
    cfg.log_max_files = args.container_log_max_files.max(1);
    if args.image_gc_low_threshold > args.image_gc_high_threshold || args.image_gc_high_threshold > 100 {
        bail!("--image-gc-low-threshold must be at most --image-gc-high-threshold, both percentages");
    }
    let image_gc_period = humantime::parse_duration(&args.image_gc_period)
        .with_context(|| format!("--image-gc-period {:?} is not a duration like 5m", args.image_gc_period))?;
    if let Some(c) = &args.pod_cidr {
        flotilla_core::cidr::Cidr::parse_within(c, 8, 30).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
        cfg.pod_cidr = c.clone();
    }
    cfg.cluster_domain = args.proxy.domain();
    cfg.cluster_dns = if !args.cluster_dns.is_empty() {
        args.cluster_dns.iter().map(ToString::to_string).collect()
    } else if args.disable_proxy {
        Vec::new()
    } else {
        args.proxy.dns_server(args.node_ip).map(|ip| ip.to_string()).into_iter().collect()
    };
    let proxy = if args.disable_proxy { None } else { Some(args.proxy.config(&name, args.node_ip)?) };
    let dir = args.dir.clone().unwrap_or_else(|| cfg.dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    cfg.dir = dir.clone();
    let registries = match &args.registry_config {
        Some(p) => flotilla_kubelet::containerd::images::load_registries(p).context("--registry-config")?,
        None => Default::default(),
    };
    if let Some(d) = &args.image_dir {
        if !d.is_dir() {
            bail!("--image-dir {}: not a directory", d.display());
        }
    }
    if args.runtime == RuntimeKind::Process && (args.image_dir.is_some() || args.registry_config.is_some()) {
        bail!("--image-dir and --registry-config are for --runtime containerd; the process runtime runs no images");
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    // The registry client's TLS uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async move {
        match args.runtime {
            RuntimeKind::Process => {
                let shim = std::env::current_exe().context("finding the flotilla binary for the process shim")?;
                let runtime = flotilla_kubelet::process::ProcessRuntime::new(&dir, &shim)?;
                serve(args, name, dir, cfg, proxy, runtime).await
            }
            RuntimeKind::Containerd => {
                let ccfg = flotilla_kubelet::containerd::ContainerdConfig {
                    socket: args.containerd_socket.clone(),
                    namespace: args
                        .containerd_namespace
                        .clone()
                        .unwrap_or_else(|| flotilla_kubelet::containerd::namespace_for(&name)),
                    dir: dir.clone(),
                    image_dir: args.image_dir.clone(),
                    registries,
                    snapshotter: "overlayfs".into(),
                    cgroup_parent: args.cgroup_parent.clone(),
                    cni_bin_dir: (!args.host_network_only).then(|| args.cni_bin_dir.clone()),
                    bridge: args.bridge.clone(),
                    image_gc: flotilla_kubelet::containerd::ImageGc {
                        high: args.image_gc_high_threshold,
                        low: args.image_gc_low_threshold,
                        period: image_gc_period,
                    },
                };
                let runtime = flotilla_kubelet::containerd::ContainerdRuntime::connect(ccfg).await?;
                serve(args, name, dir, cfg, proxy, runtime).await
            }
        }
    })
}

async fn serve<R: flotilla_kubelet::Runtime>(
    args: WorkerArgs,
    name: String,
    dir: PathBuf,
    cfg: WorkerConfig,
    proxy: Option<flotilla_proxy::ProxyConfig>,
    runtime: R,
) -> anyhow::Result<()> {
    let client = args.credentials.client(&args.masters).context("--masters")?;
    let metrics = std::sync::Arc::new(flotilla_kubelet::metrics::KubeletMetrics::new());
    let proxy_metrics = std::sync::Arc::new(flotilla_proxy::metrics::ProxyMetrics::new());
    if let Some(listen) = &args.listen_metrics {
        let files = crate::metrics_endpoint::Files {
            cert: args.tls_cert_file.clone(),
            key: args.tls_private_key_file.clone(),
            ca: args.client_ca_file.clone(),
        };
        let (m, pm) = (metrics.clone(), proxy_metrics.clone());
        crate::metrics_endpoint::start(listen, &files, move || {
            flotilla_core::exposition::join([m.render(), pm.render()])
        })
        .await?;
    }
    tracing::info!(node = %name, masters = ?args.masters, dir = %dir.display(), proxy = proxy.is_some(), "worker started");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy_task = proxy.map(|pcfg| {
        let (client, stop) = (client.clone(), stopped(stop_rx.clone()));
        tokio::spawn(flotilla_proxy::run(client, pcfg, flotilla_proxy::nft::NftCli::default(), proxy_metrics, stop))
    });
    let kubelet = flotilla_kubelet::run(client, cfg, runtime, metrics, stopped(stop_rx));
    tokio::pin!(kubelet);
    let signal = crate::scheduler::signalled();
    tokio::pin!(signal);
    // The proxy's outcome (a worker without one waits forever here).
    let has_proxy = proxy_task.is_some();
    let proxy = async {
        match proxy_task {
            Some(p) => match p.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e)
                    .context("the service proxy (it needs root; --disable-proxy runs the worker without it)")),
                Err(e) => Err(anyhow::anyhow!("the service proxy: {e}")),
            },
            None => std::future::pending().await,
        }
    };
    tokio::pin!(proxy);
    // The kubelet and the proxy run until a signal; either failing stops the worker.
    tokio::select! {
        r = &mut kubelet => r.map_err(Into::into),
        r = &mut proxy => r,
        () = &mut signal => {
            let _ = stop_tx.send(true);
            if let Some(Err(e)) = if has_proxy { Some((&mut proxy).await) } else { None } {
                tracing::warn!(error = %format!("{e:#}"), "the service proxy stopped with an error");
            }
            kubelet.await.map_err(Into::into)
        }
    }
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
