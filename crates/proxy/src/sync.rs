//! The proxy's sync loop: once both reflectors have listed, one full transaction
//! replaces whatever table an earlier run left (the kernel kept forwarding with it in the
//! meantime); after that every change of Services or Endpoints becomes the smallest
//! transaction that takes the kernel to the new ruleset. A refused transaction is
//! followed by a full one. UDP flows, and unanswered TCP connections, to removed endpoints
//! are flushed from conntrack.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Change, Client, ListParams, Reflector};
use flotilla_proto::api as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::announce::AnnounceConfig;
use crate::dns::{Dns, DnsConfig, Records};
use crate::error::ProxyError;
use crate::metrics::{KindLabel, ProxyMetrics};
use crate::model::{self, Protocol, ServicePort};
use crate::nft::{self, Apply, Ruleset, TableConfig, Transaction};
use crate::AbortOnDrop;

/// How a proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The table, and what its fixed part depends on.
    pub table: TableConfig,
    /// The command prefix for `conntrack` (stale flows to removed endpoints are deleted);
    /// empty: leave conntrack alone.
    pub conntrack: Vec<String>,
    /// Set the kernel up for service traffic (IP forwarding; bridged traffic through
    /// netfilter, so that a pod reaching a service whose endpoint shares its bridge is
    /// translated back).
    pub configure_kernel: bool,
    /// Cluster DNS, when this proxy serves it.
    pub dns: Option<DnsConfig>,
    /// Answering ARP for load-balancer addresses, when this proxy does.
    pub announce: Option<AnnounceConfig>,
    /// The cluster's service range: a node without a route covering it (no default
    /// route) gets one on its own interface, so that the node itself reaches cluster IPs
    /// (its packets need a route before they are translated).
    pub service_cidr: Option<String>,
}

impl ProxyConfig {
    /// A proxy for a node with `node_ips`, table `flotilla`.
    pub fn new(node_ips: Vec<Ipv4Addr>) -> ProxyConfig {
        ProxyConfig {
            table: TableConfig { table: "flotilla".into(), cluster_cidr: None, node_ips },
            conntrack: vec!["conntrack".into()],
            configure_kernel: true,
            dns: None,
            announce: None,
            service_cidr: None,
        }
    }
}

/// Writes a kernel setting; failures are the caller's to judge.
fn sysctl(path: &str, value: &str) -> Result<(), ProxyError> {
    let now = std::fs::read_to_string(path).map_err(|e| ProxyError::io(format!("reading {path}"), e))?;
    if now.trim() != value {
        std::fs::write(path, value).map_err(|e| ProxyError::io(format!("writing {value} to {path}"), e))?;
    }
    Ok(())
}

fn configure_kernel() -> Result<(), ProxyError> {
    sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    let bridged = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::path::Path::new(bridged).exists() {
        sysctl(bridged, "1")?;
    } else {
        tracing::warn!(
            "{bridged} is missing (load the br_netfilter module): a pod reaching a service whose endpoint is \
             on its own node's bridge will not get answers"
        );
    }
    Ok(())
}

/// How often the proxy makes sure its table is still in the kernel.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The route protocol number of the service range's route (the kubelet's are 199).
pub const ROUTE_PROTO: &str = "198";

async fn ip(args: &[&str]) -> Result<String, ProxyError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| ProxyError::io("running ip (install iproute2)", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ProxyError::Config(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Routes `cidr` on the interface of `node_ip` unless some route already covers it.
async fn service_route(cidr: &str, node_ip: Ipv4Addr) -> Result<(), ProxyError> {
    let probe = cidr.split('/').next().unwrap_or_default();
    if ip(&["-4", "route", "get", probe]).await.is_ok() {
        return Ok(());
    }
    let shown = ip(&["-o", "-4", "addr", "show", "to", &format!("{node_ip}/32")]).await?;
    let dev = shown.split_whitespace().nth(1).map(|d| d.trim_end_matches(':').to_string());
    let dev = dev.ok_or_else(|| ProxyError::Config(format!("no interface has the node's address {node_ip}")))?;
    ip(&["route", "replace", cidr, "dev", &dev, "proto", ROUTE_PROTO, "scope", "link"]).await?;
    tracing::info!(%cidr, %dev, "no route covered the service range: routed it on the node's interface");
    Ok(())
}

/// Keeps the kernel's table in step with the cluster's Services and Endpoints until `stop`
/// resolves. The table stays when it returns (traffic keeps flowing); remove it with
/// [`nft::cleanup`].
pub async fn run<A: Apply>(
    client: Client,
    cfg: ProxyConfig,
    kernel: A,
    metrics: Arc<ProxyMetrics>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ProxyError> {
    if cfg.configure_kernel {
        configure_kernel()?;
        if let (Some(cidr), Some(ip)) = (&cfg.service_cidr, cfg.table.node_ips.first()) {
            service_route(cidr, *ip).await?;
        }
    }
    let dns = cfg.dns.clone().map(|c| Dns::new(c, metrics.clone()));
    let _dns_task = match &dns {
        Some(d) => Some(spawn_checked(d.clone().serve()).await?),
        None => None,
    };
    let (lb_tx, lb_rx) = tokio::sync::watch::channel(std::collections::BTreeSet::new());
    let _announcer = match cfg.announce.clone() {
        Some(a) => Some(spawn_checked(crate::announce::run(client.clone(), a, lb_rx, metrics.clone())).await?),
        None => None,
    };
    let (stx, mut srx) = mpsc::unbounded_channel::<Change<pb::Service>>();
    let (etx, mut erx) = mpsc::unbounded_channel::<Change<pb::Endpoints>>();
    let mut services = Reflector::<pb::Service>::start_notifying(client.clone(), ListParams::default(), Some(stx));
    let mut endpoints = Reflector::<pb::Endpoints>::start_notifying(client, ListParams::default(), Some(etx));
    metrics.count_lists(services.list_counter());
    metrics.count_lists(endpoints.list_counter());
    tokio::pin!(stop);
    tokio::select! {
        _ = async { services.wait_synced().await; endpoints.wait_synced().await } => {}
        () = &mut stop => return Ok(()),
    }
    let mut syncer = Syncer { cfg, kernel, metrics, applied: None, ports: BTreeMap::new(), synced_once: false };
    let mut since = Instant::now();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Now and then, make sure the table is still there: a `flush ruleset` behind the
    // proxy's back is repaired with a full sync.
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        let svcs = services.snapshot();
        let eps: BTreeMap<String, pb::Endpoints> = endpoints
            .snapshot()
            .into_iter()
            .filter_map(|e| {
                let m = e.metadata.as_ref()?;
                Some((format!("{}/{}", m.namespace, m.name), e))
            })
            .collect();
        let ports = model::service_ports(&svcs, &eps);
        if let Some(d) = &dns {
            d.set(Records::build(&d.domain(), &svcs, &eps));
        }
        lb_tx.send_if_modified(|cur| {
            let lbs = ports.iter().flat_map(|p| p.load_balancer_ips.iter().copied()).collect();
            (*cur != lbs).then(|| *cur = lbs).is_some()
        });
        let ok = syncer.sync(ports, since).await;
        // Wait for the next change (or, after a failure, retry in a second); take every
        // change already queued along with it. A table check that finds the table in
        // place is no reason to rebuild anything.
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                Some(_) = srx.recv() => break,
                Some(_) = erx.recv() => break,
                _ = retry.tick(), if !ok => break,
                _ = check.tick() => match syncer.kernel.exists(&syncer.cfg.table.table).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(table = %syncer.cfg.table.table, "the table is gone from the kernel; writing it again whole");
                        syncer.applied = None;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look at the kernel's tables"),
                },
            }
        }
        since = Instant::now();
        while srx.try_recv().is_ok() || erx.try_recv().is_ok() {}
    }
}

/// Runs `task` in the background; if it fails within its first 200 ms (a port taken, an
/// interface missing), that failure is returned instead.
async fn spawn_checked(
    task: impl std::future::Future<Output = Result<(), ProxyError>> + Send + 'static,
) -> Result<AbortOnDrop<()>, ProxyError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let r = task.await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "proxy task failed");
        }
        let _ = tx.send(r);
    });
    tokio::select! {
        r = rx => if let Ok(Err(e)) = r { return Err(e) },
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    Ok(AbortOnDrop(handle))
}

/// The `conntrack -D` arguments that forget flows made stale by going from `was` to
/// `now`. UDP: flows DNATed to an endpoint that left (by cluster IP, load-balancer address
/// or node port), and flows to a service that had no endpoints (rejected) and now has.
/// TCP: connections DNATed to an endpoint that left that never got an answer (SYN_SENT):
/// such an entry lives on for two minutes, and a new connection that happens to reuse its
/// source port would match it and be sent to the dead endpoint again. Answered TCP
/// connections are left alone (a terminating pod finishes what it serves).
pub fn stale_flows(was: &BTreeMap<String, ServicePort>, now: &BTreeMap<String, ServicePort>) -> Vec<Vec<String>> {
    let mut deletions: Vec<Vec<String>> = Vec::new();
    for (key, old) in was {
        let proto: &[&str] = match old.protocol {
            Protocol::Udp => &["-p", "udp"],
            Protocol::Tcp => &["-p", "tcp", "--state", "SYN_SENT"],
        };
        let with = |rest: Vec<String>| proto.iter().map(|s| s.to_string()).chain(rest).collect::<Vec<String>>();
        let is = now.get(key);
        for ep in &old.endpoints {
            if is.is_some_and(|p| p.endpoints.contains(ep)) {
                continue;
            }
            let mut dsts: Vec<String> = vec![old.cluster_ip.to_string()];
            dsts.extend(old.load_balancer_ips.iter().map(Ipv4Addr::to_string));
            for d in dsts {
                deletions.push(with(vec!["--orig-dst".into(), d, "--dst-nat".into(), ep.0.to_string()]));
            }
            if let Some(np) = old.node_port {
                deletions.push(with(vec![
                    "--orig-port-dst".into(),
                    np.to_string(),
                    "--dst-nat".into(),
                    ep.0.to_string(),
                ]));
            }
        }
    }
    for (key, is) in now.iter().filter(|(_, p)| p.protocol == Protocol::Udp && !p.endpoints.is_empty()) {
        if was.get(key).is_none_or(|p| p.endpoints.is_empty()) {
            deletions.push(["-p", "udp", "--orig-dst", &is.cluster_ip.to_string()].map(String::from).to_vec());
        }
    }
    deletions
}

struct Syncer<A: Apply> {
    cfg: ProxyConfig,
    kernel: A,
    metrics: Arc<ProxyMetrics>,
    /// What the kernel holds, when known (None: the next sync is full).
    applied: Option<Ruleset>,
    /// The service ports as last applied, by key.
    ports: BTreeMap<String, ServicePort>,
    /// Whether a transaction has committed since the proxy started.
    synced_once: bool,
}

impl<A: Apply> Syncer<A> {
    /// Takes the kernel to `ports`; false if the kernel refused.
    async fn sync(&mut self, ports: Vec<ServicePort>, since: Instant) -> bool {
        let new = Ruleset::build(&self.cfg.table, &ports);
        let (t, kind): (Transaction, &str) = match &self.applied {
            Some(old) if *old == new => return true,
            Some(old) => (nft::diff(&self.cfg.table, old, &new), "partial"),
            None => (nft::full(&self.cfg.table, &new), "full"),
        };
        match self.kernel.apply(&t).await {
            Ok(()) => {
                let ops = t.commands.len() as u64;
                self.metrics.syncs.get_or_create(&KindLabel { kind: kind.into() }).inc();
                self.metrics.nft_operations.observe(ops as f64);
                self.metrics.nft_operations_total.inc_by(ops);
                self.metrics.sync_seconds.observe(since.elapsed().as_secs_f64());
                self.metrics.service_ports.set(i64::try_from(ports.len()).unwrap_or(i64::MAX));
                tracing::debug!(kind, ops, ports = ports.len(), "nft: committed");
                let now: BTreeMap<String, ServicePort> = ports.into_iter().map(|p| (p.key.clone(), p)).collect();
                // Not after the first sync of a (re)started proxy: it knows nothing of what
                // was programmed before, and live flows are fine.
                if self.synced_once {
                    self.flush_stale_flows(&now).await;
                }
                self.synced_once = true;
                self.ports = now;
                self.applied = Some(new);
                true
            }
            Err(e) => {
                self.metrics.sync_failures.inc();
                tracing::error!(kind, error = %e, "nft transaction refused; the next sync rewrites the whole table");
                self.applied = None;
                false
            }
        }
    }

    /// Deletes the conntrack entries of flows that would stick to endpoints no longer
    /// there, or to a service's rejection before it had endpoints ([`stale_flows`]).
    async fn flush_stale_flows(&self, now: &BTreeMap<String, ServicePort>) {
        let Some((prog, pre)) = self.cfg.conntrack.split_first() else { return };
        for args in stale_flows(&self.ports, now) {
            let out = tokio::process::Command::new(prog)
                .args(pre)
                .arg("-D")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .output()
                .await;
            match out {
                // conntrack exits 1 when nothing matched.
                Ok(o) if o.status.success() || o.status.code() == Some(1) => {}
                Ok(o) => tracing::warn!(?args, err = %String::from_utf8_lossy(&o.stderr).trim(), "conntrack -D failed"),
                Err(e) => tracing::warn!(error = %e, "cannot run conntrack (install conntrack)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(proto: Protocol, eps: &[(u8, u16)]) -> (String, ServicePort) {
        let sp = ServicePort {
            key: format!("default/dns/{}/53", proto.nft()),
            service: "default/dns".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            protocol: proto,
            port: 53,
            node_port: Some(30053),
            load_balancer_ips: vec![],
            affinity: false,
            endpoints: eps.iter().map(|(last, p)| (Ipv4Addr::new(10, 244, 1, *last), *p)).collect(),
        };
        (sp.key.clone(), sp)
    }

    /// Records transactions; refuses the ones while `fail` is set.
    #[derive(Default)]
    struct Fake {
        seen: std::sync::Mutex<Vec<Transaction>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Apply for Arc<Fake> {
        async fn apply(&self, t: &Transaction) -> Result<(), ProxyError> {
            self.seen.lock().expect("lock").push(t.clone());
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ProxyError::Nft("refused".into()));
            }
            Ok(())
        }

        async fn exists(&self, _table: &str) -> Result<bool, ProxyError> {
            Ok(true)
        }
    }

    #[tokio::test]
    async fn the_first_sync_is_full_then_partial_and_a_refused_one_is_followed_by_a_full_one() {
        let fake = Arc::new(Fake::default());
        let mut cfg = ProxyConfig::new(vec![Ipv4Addr::new(10, 88, 0, 11)]);
        cfg.conntrack = Vec::new();
        let mut s = Syncer {
            cfg,
            kernel: fake.clone(),
            metrics: Arc::new(ProxyMetrics::new()),
            applied: None,
            ports: BTreeMap::new(),
            synced_once: false,
        };
        let one = |eps: &[(u8, u16)]| vec![port(Protocol::Tcp, eps).1];
        let full = |t: &Transaction| t.commands.first().is_some_and(|c| c == "add table ip flotilla");
        assert!(s.sync(one(&[(3, 80)]), Instant::now()).await);
        assert!(s.sync(one(&[(3, 80)]), Instant::now()).await, "nothing changed");
        assert!(s.sync(one(&[(3, 80), (4, 80)]), Instant::now()).await);
        {
            let seen = fake.seen.lock().expect("lock");
            assert_eq!(seen.len(), 2, "an unchanged ruleset makes no transaction");
            assert!(full(&seen[0]) && !full(&seen[1]));
        }
        fake.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(!s.sync(one(&[(4, 80)]), Instant::now()).await);
        fake.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(s.sync(one(&[(4, 80)]), Instant::now()).await);
        let seen = fake.seen.lock().expect("lock");
        assert!(!full(&seen[2]), "the refused one was partial");
        assert!(full(&seen[3]), "after a refusal the whole table is written again");
    }

    #[test]
    fn flows_to_a_removed_endpoint_or_to_a_formerly_empty_service_are_flushed() {
        let was = BTreeMap::from([port(Protocol::Udp, &[(3, 53), (4, 53)])]);
        let now = BTreeMap::from([port(Protocol::Udp, &[(3, 53)])]);
        let d = stale_flows(&was, &now);
        assert_eq!(
            d,
            vec![
                vec!["-p", "udp", "--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.4"],
                vec!["-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.1.4"],
            ]
        );
        let empty = BTreeMap::from([port(Protocol::Udp, &[])]);
        let forgotten = vec![vec!["-p", "udp", "--orig-dst", "10.96.0.10"]];
        assert_eq!(stale_flows(&empty, &now), forgotten, "rejected flows forgotten");
        assert!(stale_flows(&now, &now).is_empty());
        // TCP: only the unanswered connections to the endpoint that left.
        let tcp_was = BTreeMap::from([port(Protocol::Tcp, &[(3, 53), (4, 53)])]);
        let tcp_now = BTreeMap::from([port(Protocol::Tcp, &[(3, 53)])]);
        assert_eq!(
            stale_flows(&tcp_was, &tcp_now),
            vec![
                vec!["-p", "tcp", "--state", "SYN_SENT", "--orig-dst", "10.96.0.10", "--dst-nat", "10.244.1.4"],
                vec!["-p", "tcp", "--state", "SYN_SENT", "--orig-port-dst", "30053", "--dst-nat", "10.244.1.4"],
            ]
        );
        let tcp_empty = BTreeMap::from([port(Protocol::Tcp, &[])]);
        assert!(stale_flows(&tcp_empty, &tcp_now).is_empty(), "a rejected TCP connect is answered with a reset");
    }
}
