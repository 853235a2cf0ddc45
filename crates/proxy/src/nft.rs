//! The proxy's nftables ruleset, on the design of kube-proxy's nftables mode: a table of
//! its own; verdict maps from `address . protocol . port` to a chain per service port;
//! random balancing (`numgen`) over a chain per endpoint that DNATs; node ports on the
//! node's addresses; load-balancer addresses; masquerading of hairpin, off-cluster and
//! external traffic; an immediate reject for service ports without endpoints; and
//! ClientIP session affinity through a dynamic set per endpoint.
//!
//! [`Ruleset::build`] turns service ports into the table's variable part (chains, sets,
//! map elements); [`full`] writes the whole table as one transaction that replaces any
//! table already there, and [`diff`] the transaction taking the kernel from one ruleset
//! to the next. Running a transaction is behind [`Apply`]: [`NftCli`] feeds it to
//! `nft -f -`, so that the kernel applies it atomically or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::error::ProxyError;
use crate::model::ServicePort;

/// How long a client sticks to its endpoint under ClientIP affinity (Kubernetes' default).
const AFFINITY_TIMEOUT: &str = "10800s";

/// What the fixed part of the table depends on.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// The table's name (family `ip`).
    pub table: String,
    /// Traffic to a cluster IP from outside this range is masqueraded (as kube-proxy's
    /// --cluster-cidr); None: only hairpin and external traffic is.
    pub cluster_cidr: Option<String>,
    /// The node's addresses: node ports answer on these.
    pub node_ips: Vec<Ipv4Addr>,
}

/// The variable part of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Regular chains and their rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Sets (their declaration, e.g. `{ type ipv4_addr; ... }`).
    pub sets: BTreeMap<String, String>,
    /// Elements of the maps: map → key → verdict.
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// A transaction: nft commands, one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The commands.
    pub commands: Vec<String>,
}

impl Transaction {
    fn push(&mut self, c: String) {
        self.commands.push(c);
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The script for `nft -f`.
    pub fn script(&self) -> String {
        let mut s = String::with_capacity(self.commands.iter().map(|c| c.len() + 1).sum());
        for c in &self.commands {
            s.push_str(c);
            s.push('\n');
        }
        s
    }
}

/// Runs transactions against the kernel.
pub trait Apply: Send + Sync + 'static {
    /// Applies `t` atomically, or fails having changed nothing.
    fn apply(&self, t: &Transaction) -> impl std::future::Future<Output = Result<(), ProxyError>> + Send;

    /// Whether the table `table` (family ip) is in the kernel (someone may have flushed
    /// the ruleset behind the proxy's back).
    fn exists(&self, table: &str) -> impl std::future::Future<Output = Result<bool, ProxyError>> + Send;
}

/// Transactions through Debian's `nft` (`nft -f -`): the kernel commits each whole or
/// not at all.
#[derive(Debug, Clone)]
pub struct NftCli {
    /// The program run (`nft`, or a wrapper such as `nsenter`).
    pub program: String,
    /// Its arguments before `-f -` (for a wrapper: its own, then `nft`).
    pub args: Vec<String>,
}

impl Default for NftCli {
    fn default() -> NftCli {
        NftCli { program: "nft".into(), args: Vec::new() }
    }
}

impl NftCli {
    /// nft run in the network namespace `ip netns` calls `netns` (for benchmarks and
    /// tests that keep the machine's own namespace untouched).
    pub fn in_netns(netns: &str) -> NftCli {
        NftCli { program: "nsenter".into(), args: vec![format!("--net=/run/netns/{netns}"), "nft".into()] }
    }
}

impl Apply for NftCli {
    async fn apply(&self, t: &Transaction) -> Result<(), ProxyError> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProxyError::Nft(format!("cannot run {}: {e} (install nftables)", self.program)))?;
        let script = t.script();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(|e| ProxyError::Nft(format!("writing to nft: {e}")))?;
        }
        let out = child.wait_with_output().await.map_err(|e| ProxyError::Nft(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let first: String = err.lines().take(6).collect::<Vec<_>>().join("; ");
            Err(ProxyError::Nft(format!("nft -f failed ({}): {first}", out.status)))
        }
    }

    async fn exists(&self, table: &str) -> Result<bool, ProxyError> {
        let out = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args(["list", "tables", "ip"])
            .output()
            .await
            .map_err(|e| ProxyError::Nft(format!("cannot run {}: {e} (install nftables)", self.program)))?;
        if !out.status.success() {
            return Err(ProxyError::Nft(format!("nft list tables: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == format!("table ip {table}")))
    }
}

/// Removes the table `table` (nothing if it is not there).
pub fn cleanup(table: &str) -> Transaction {
    Transaction { commands: vec![format!("add table ip {table}"), format!("delete table ip {table}")] }
}

/// The chains' name prefix for a service port: a hash (so names stay unique whatever the
/// readable part) and the key.
fn hashed(prefix: &str, key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    format!("{prefix}-{:02X}{:02X}{:02X}{:02X}-{key}", h[0], h[1], h[2], h[3])
}

/// The chain of a service port (balancing over its endpoints).
pub fn service_chain(sp: &ServicePort) -> String {
    hashed("service", &sp.key)
}

/// The chain of external traffic (node port, load-balancer address) to a service port.
pub fn external_chain(sp: &ServicePort) -> String {
    hashed("external", &sp.key)
}

/// The chain of one endpoint of a service port (DNAT to it).
pub fn endpoint_chain(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    hashed("endpoint", &format!("{}__{}/{}", sp.key, ep.0, ep.1))
}

fn affinity_set(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    hashed("affinity", &format!("{}__{}/{}", sp.key, ep.0, ep.1))
}

/// The maps and sets of the fixed part whose elements the ruleset holds.
const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const NODEPORT_IPS: &str = "nodeport-ips";

impl Ruleset {
    /// The variable part of the table for `ports` (sorted by key, as
    /// [`crate::model::service_ports`] returns them).
    pub fn build(cfg: &TableConfig, ports: &[ServicePort]) -> Ruleset {
        let mut r = Ruleset::default();
        for m in [SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, NODEPORT_IPS] {
            r.elements.insert(m, BTreeMap::new());
        }
        let el = |r: &mut Ruleset, map: &'static str, k: String, v: String| {
            r.elements.entry(map).or_default().insert(k, v);
        };
        for ip in &cfg.node_ips {
            el(&mut r, NODEPORT_IPS, ip.to_string(), String::new());
        }
        for sp in ports {
            let proto = sp.protocol.nft();
            let svc_key = format!("{} . {proto} . {}", sp.cluster_ip, sp.port);
            if sp.endpoints.is_empty() {
                el(&mut r, NO_ENDPOINT_SERVICES, svc_key, "goto reject-chain".into());
                for lb in &sp.load_balancer_ips {
                    el(
                        &mut r,
                        NO_ENDPOINT_SERVICES,
                        format!("{lb} . {proto} . {}", sp.port),
                        "goto reject-chain".into(),
                    );
                }
                if let Some(np) = sp.node_port {
                    el(&mut r, NO_ENDPOINT_NODEPORTS, format!("{proto} . {np}"), "goto reject-chain".into());
                }
                continue;
            }
            let chain = service_chain(sp);
            let mut rules = Vec::new();
            if let Some(cidr) = &cfg.cluster_cidr {
                rules.push(format!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
                    sp.cluster_ip, sp.port
                ));
            }
            // Each endpoint's chain (and affinity set) name, hashed once.
            let names: Vec<(String, Option<String>)> = sp
                .endpoints
                .iter()
                .map(|ep| (endpoint_chain(sp, *ep), sp.affinity.then(|| affinity_set(sp, *ep))))
                .collect();
            for (ep_chain, set) in &names {
                if let Some(set) = set {
                    rules.push(format!("ip saddr @{set} goto {ep_chain}"));
                    r.sets.insert(
                        set.clone(),
                        format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {AFFINITY_TIMEOUT}; }}"),
                    );
                }
            }
            let mut balance = format!("numgen random mod {} vmap {{ ", sp.endpoints.len());
            for (i, (ep_chain, _)) in names.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(balance, "{sep}{i} : goto {ep_chain}");
            }
            balance.push_str(" }");
            rules.push(balance);
            r.chains.insert(chain.clone(), rules);
            for (ep, (ep_chain, set)) in sp.endpoints.iter().zip(names) {
                let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.0)];
                if let Some(set) = set {
                    rules.push(format!("update @{set} {{ ip saddr }}"));
                }
                rules.push(format!("meta l4proto {proto} dnat to {}:{}", ep.0, ep.1));
                r.chains.insert(ep_chain, rules);
            }
            el(&mut r, SERVICE_IPS, svc_key, format!("goto {chain}"));
            if sp.node_port.is_some() || !sp.load_balancer_ips.is_empty() {
                let ext = external_chain(sp);
                r.chains.insert(ext.clone(), vec!["jump mark-for-masquerade".into(), format!("goto {chain}")]);
                for lb in &sp.load_balancer_ips {
                    el(&mut r, SERVICE_IPS, format!("{lb} . {proto} . {}", sp.port), format!("goto {ext}"));
                }
                if let Some(np) = sp.node_port {
                    el(&mut r, SERVICE_NODEPORTS, format!("{proto} . {np}"), format!("goto {ext}"));
                }
            }
        }
        r
    }

    /// Chains plus map and set elements: what a transaction writing it all would carry.
    pub fn size(&self) -> usize {
        self.chains.len() + self.elements.values().map(BTreeMap::len).sum::<usize>()
    }
}

/// The fixed part: base chains hooked into netfilter, the dispatch chains and the maps.
fn skeleton(cfg: &TableConfig, t: &mut Transaction) {
    let tb = &cfg.table;
    let base = [
        ("nat-prerouting", "type nat hook prerouting priority dstnat; policy accept;", "jump services"),
        ("nat-output", "type nat hook output priority -100; policy accept;", "jump services"),
        ("nat-postrouting", "type nat hook postrouting priority srcnat; policy accept;", "jump masquerading"),
    ];
    t.push(format!("add table ip {tb} {{ comment \"flotilla service proxy\"; }}"));
    let maps = [
        (SERVICE_IPS, "type ipv4_addr . inet_proto . inet_service : verdict;"),
        (NO_ENDPOINT_SERVICES, "type ipv4_addr . inet_proto . inet_service : verdict;"),
        (SERVICE_NODEPORTS, "type inet_proto . inet_service : verdict;"),
        (NO_ENDPOINT_NODEPORTS, "type inet_proto . inet_service : verdict;"),
    ];
    for (name, ty) in maps {
        t.push(format!("add map ip {tb} {name} {{ {ty} }}"));
    }
    t.push(format!("add set ip {tb} {NODEPORT_IPS} {{ type ipv4_addr; }}"));
    // Packets to masquerade on their way out carry the mark 0x4000.
    let chains: [(&str, &[&str]); 6] = [
        // A reset refuses a TCP connection at once (ECONNREFUSED); others get ICMP.
        ("reject-chain", &["meta l4proto tcp reject with tcp reset", "reject"]),
        ("mark-for-masquerade", &["meta mark set meta mark or 0x4000"]),
        (
            "masquerading",
            &["meta mark & 0x4000 == 0 return", "meta mark set meta mark xor 0x4000", "masquerade fully-random"],
        ),
        (
            "services",
            &[
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            ],
        ),
        ("service-endpoints-check", &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]),
        ("nodeport-endpoints-check", &["ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"]),
    ];
    for (name, rules) in chains {
        t.push(format!("add chain ip {tb} {name}"));
        for r in rules {
            t.push(format!("add rule ip {tb} {name} {r}"));
        }
    }
    // Filter chains run before DNAT (priority -110), so a service port without endpoints
    // is refused at once instead of timing out.
    let filters = [
        (
            "filter-input",
            "input",
            &["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"][..],
        ),
        ("filter-forward", "forward", &["ct state new jump service-endpoints-check"][..]),
        ("filter-output", "output", &["ct state new jump service-endpoints-check"][..]),
    ];
    for (name, hook, rules) in filters {
        t.push(format!("add chain ip {tb} {name} {{ type filter hook {hook} priority -110; policy accept; }}"));
        for r in rules {
            t.push(format!("add rule ip {tb} {name} {r}"));
        }
    }
    for (name, spec, rule) in base {
        t.push(format!("add chain ip {tb} {name} {{ {spec} }}"));
        t.push(format!("add rule ip {tb} {name} {rule}"));
    }
}

fn add_elements(tb: &str, map: &str, els: &[(&String, &String)], t: &mut Transaction) {
    for chunk in els.chunks(1000) {
        let body: Vec<String> =
            chunk.iter().map(|(k, v)| if v.is_empty() { (*k).clone() } else { format!("{k} : {v}") }).collect();
        t.push(format!("add element ip {tb} {map} {{ {} }}", body.join(", ")));
    }
}

fn delete_elements(tb: &str, map: &str, keys: &[&String], t: &mut Transaction) {
    for chunk in keys.chunks(1000) {
        let body: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
        t.push(format!("delete element ip {tb} {map} {{ {} }}", body.join(", ")));
    }
}

/// One transaction that replaces whatever table `cfg.table` there is by `r` whole.
pub fn full(cfg: &TableConfig, r: &Ruleset) -> Transaction {
    let tb = &cfg.table;
    let mut t = Transaction::default();
    t.push(format!("add table ip {tb}"));
    t.push(format!("delete table ip {tb}"));
    skeleton(cfg, &mut t);
    for (name, decl) in &r.sets {
        t.push(format!("add set ip {tb} {name} {decl}"));
    }
    for name in r.chains.keys() {
        t.push(format!("add chain ip {tb} {name}"));
    }
    for (name, rules) in &r.chains {
        for rule in rules {
            t.push(format!("add rule ip {tb} {name} {rule}"));
        }
    }
    for (map, els) in &r.elements {
        let els: Vec<(&String, &String)> = els.iter().collect();
        add_elements(tb, map, &els, &mut t);
    }
    t
}

/// The transaction taking the table from `old` (what the kernel holds) to `new`: new
/// sets and chains first, then chains whose rules changed are flushed and rewritten, map
/// elements replaced, and last the chains and sets nothing refers to any more removed.
pub fn diff(cfg: &TableConfig, old: &Ruleset, new: &Ruleset) -> Transaction {
    let tb = &cfg.table;
    let mut t = Transaction::default();
    for (name, decl) in &new.sets {
        if !old.sets.contains_key(name) {
            t.push(format!("add set ip {tb} {name} {decl}"));
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            t.push(format!("add chain ip {tb} {name}"));
        }
    }
    let empty = BTreeMap::new();
    let maps: BTreeSet<&&str> = old.elements.keys().chain(new.elements.keys()).collect();
    // Elements that go or change go first: they may point at chains removed below.
    for map in &maps {
        let (o, n) = (old.elements.get(**map).unwrap_or(&empty), new.elements.get(**map).unwrap_or(&empty));
        let gone: Vec<&String> = o.iter().filter(|(k, v)| n.get(*k) != Some(v)).map(|(k, _)| k).collect();
        delete_elements(tb, map, &gone, &mut t);
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(was) if was == rules => continue,
            Some(_) => t.push(format!("flush chain ip {tb} {name}")),
            None => {}
        }
        for rule in rules {
            t.push(format!("add rule ip {tb} {name} {rule}"));
        }
    }
    for map in &maps {
        let (o, n) = (old.elements.get(**map).unwrap_or(&empty), new.elements.get(**map).unwrap_or(&empty));
        let came: Vec<(&String, &String)> = n.iter().filter(|(k, v)| o.get(*k) != Some(v)).collect();
        add_elements(tb, map, &came, &mut t);
    }
    let gone: Vec<&String> = old.chains.keys().filter(|c| !new.chains.contains_key(*c)).collect();
    for name in &gone {
        t.push(format!("flush chain ip {tb} {name}"));
    }
    for name in &gone {
        t.push(format!("delete chain ip {tb} {name}"));
    }
    for name in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        t.push(format!("delete set ip {tb} {name}"));
    }
    t
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::service_ports;
    use crate::model::tests::{endpoints, service};

    fn cfg() -> TableConfig {
        TableConfig {
            table: "flotilla".into(),
            cluster_cidr: Some("10.244.0.0/16".into()),
            node_ips: vec!["10.88.0.11".parse().expect("test value")],
        }
    }

    fn ruleset(eps: &[&str], affinity: bool) -> Ruleset {
        let mut svc = service("default", "web", "LoadBalancer", "10.96.0.10", &[("http", "TCP", 80, 30080)]);
        if affinity {
            svc.spec.as_mut().expect("test value").session_affinity = "ClientIP".into();
        }
        svc.status = Some(flotilla_proto::api::ServiceStatus {
            load_balancer: Some(flotilla_proto::api::LoadBalancerStatus {
                ingress: vec![flotilla_proto::api::LoadBalancerIngress {
                    ip: "10.88.0.200".into(),
                    hostname: String::new(),
                }],
            }),
        });
        let all = BTreeMap::from([(
            "default/web".to_string(),
            endpoints("default", "web", eps, &[], &[("http", "TCP", 8080)]),
        )]);
        Ruleset::build(&cfg(), &service_ports([&svc], &all))
    }

    #[test]
    fn a_service_port_balances_over_a_chain_per_endpoint_that_dnats() {
        let r = ruleset(&["10.244.1.3", "10.244.2.4"], false);
        let svc = r.chains.iter().find(|(n, _)| n.starts_with("service-")).expect("service chain");
        assert!(svc.0.ends_with("-default/web/tcp/http"), "{}", svc.0);
        assert_eq!(svc.1[0], "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade");
        assert!(svc.1[1].starts_with("numgen random mod 2 vmap { 0 : goto endpoint-"), "{}", svc.1[1]);
        let ep = r.chains.iter().find(|(n, _)| n.ends_with("__10.244.2.4/8080")).expect("endpoint chain");
        assert_eq!(
            ep.1,
            &vec![
                "ip saddr 10.244.2.4 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.244.2.4:8080".to_string()
            ]
        );
        let ips = &r.elements[SERVICE_IPS];
        assert_eq!(ips.len(), 2, "the cluster IP and the load-balancer address");
        assert!(ips["10.88.0.200 . tcp . 80"].starts_with("goto external-"));
        assert!(r.elements[SERVICE_NODEPORTS]["tcp . 30080"].starts_with("goto external-"));
        assert!(r.elements[NO_ENDPOINT_SERVICES].is_empty());
        assert_eq!(r.elements[NODEPORT_IPS].keys().collect::<Vec<_>>(), vec!["10.88.0.11"]);
    }

    #[test]
    fn a_service_port_without_endpoints_is_rejected_on_every_address() {
        let r = ruleset(&[], false);
        assert!(r.chains.is_empty());
        assert!(r.elements[SERVICE_IPS].is_empty());
        let rejected: Vec<&String> = r.elements[NO_ENDPOINT_SERVICES].keys().collect();
        assert_eq!(rejected, vec!["10.88.0.200 . tcp . 80", "10.96.0.10 . tcp . 80"]);
        assert_eq!(r.elements[NO_ENDPOINT_NODEPORTS]["tcp . 30080"], "goto reject-chain");
    }

    #[test]
    fn client_ip_affinity_keeps_a_set_per_endpoint() {
        let r = ruleset(&["10.244.1.3"], true);
        assert_eq!(r.sets.len(), 1);
        let svc = r.chains.iter().find(|(n, _)| n.starts_with("service-")).expect("service chain");
        assert!(svc.1[1].starts_with("ip saddr @affinity-"), "{:?}", svc.1);
        let ep = r.chains.iter().find(|(n, _)| n.starts_with("endpoint-")).expect("endpoint chain");
        assert!(ep.1[1].starts_with("update @affinity-"), "{:?}", ep.1);
    }

    #[test]
    fn a_removed_endpoint_is_unhooked_before_its_chain_is_deleted() {
        let (a, b) = (ruleset(&["10.244.1.3", "10.244.2.4"], true), ruleset(&["10.244.1.3"], true));
        let t = diff(&cfg(), &a, &b);
        let pos = |p: &str| t.commands.iter().position(|c| c.starts_with(p)).unwrap_or_else(|| panic!("{p} in {t:?}"));
        assert!(pos("flush chain ip flotilla service-") < pos("delete chain ip flotilla endpoint-"));
        assert!(pos("delete chain ip flotilla endpoint-") < pos("delete set ip flotilla affinity-"));
        assert!(!t.script().contains("service-ips"), "the map elements did not change");
        assert!(diff(&cfg(), &b, &b).is_empty(), "nothing to do between equal rulesets");
        // Losing the last endpoint moves the service to the reject map.
        let t = diff(&cfg(), &b, &ruleset(&[], true));
        let s = t.script();
        assert!(
            s.contains("delete element ip flotilla service-ips { 10.88.0.200 . tcp . 80, 10.96.0.10 . tcp . 80 }"),
            "{s}"
        );
        assert!(s.contains("add element ip flotilla no-endpoint-services"), "{s}");
        assert!(
            s.find("delete element ip flotilla service-nodeports").expect("test value")
                < s.find("delete chain").expect("test value"),
            "{s}"
        );
    }

    #[test]
    fn a_full_sync_replaces_the_table_in_one_transaction() {
        let t = full(&cfg(), &ruleset(&["10.244.1.3"], false));
        assert_eq!(t.commands[0], "add table ip flotilla");
        assert_eq!(t.commands[1], "delete table ip flotilla");
        let s = t.script();
        let chain_adds = s.find("add chain ip flotilla service-").expect("test value");
        assert!(
            chain_adds < s.find("add element ip flotilla service-ips").expect("test value"),
            "chains before the elements naming them"
        );
    }
}
