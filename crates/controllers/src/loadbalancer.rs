//! The bare-metal load-balancer allocator, for clusters without a cloud (what MetalLB's
//! controller does): a Service of type LoadBalancer gets an address from the configured
//! pool (`--load-balancer-pool`) in `status.loadBalancer.ingress`; the address is free
//! again when the Service is deleted or stops being a LoadBalancer, and is never given to
//! two Services. Announcing the address on the network is the service proxy's part.
//!
//! As Node IPAM does, it reads which addresses are taken from the Services themselves,
//! listed from the apiserver (a linearizable read, not the cache) before each round, and
//! writes each address with a compare-and-swap on the Service's resourceVersion, fenced
//! by the controller manager's lock. When the pool is used up the Service gets an Event
//! `AllocationFailed` and waits for an address to be freed.
//!
//! Off unless `--load-balancer-pool` is given.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flotilla_client::ListParams;
use flotilla_core::cidr::Cidr;
use flotilla_proto::api as pb;

use crate::allocator::{self, Round};
use crate::informers::Informers;
use crate::manager::Context;

/// The addresses the allocator hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<Cidr>,
}

impl Pool {
    /// Parses `--load-balancer-pool`: CIDRs, comma-separated (`192.168.240.0/28`; a /32 is
    /// one address). Every address of each range is handed out, in order.
    pub fn parse(s: &str) -> Result<Pool, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let c = Cidr::parse_within(part, 16, 32).map_err(|e| format!("--load-balancer-pool: {e}"))?;
            if let Some(o) = ranges.iter().find(|o: &&Cidr| o.contains(&c) || c.contains(o)) {
                return Err(format!("--load-balancer-pool: {c} overlaps {o}"));
            }
            ranges.push(c);
        }
        if ranges.is_empty() {
            return Err(format!("--load-balancer-pool {s:?} holds no range"));
        }
        Ok(Pool { ranges })
    }

    /// Whether `ip` is one of the pool's.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|r| r.contains_ip(ip))
    }

    /// The `want` lowest addresses not in `taken`, in pool order; fewer when it runs out.
    pub fn allocate(&self, taken: &BTreeSet<Ipv4Addr>, want: usize) -> Vec<Ipv4Addr> {
        self.ranges
            .iter()
            .flat_map(|r| (0..r.blocks(32)).map(move |i| r.block(32, i).base))
            .filter(|ip| !taken.contains(ip))
            .take(want)
            .collect()
    }
}

fn is_lb(s: &pb::Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| sp.r#type == "LoadBalancer")
}

fn ingress_ips(s: &pb::Service) -> Vec<Ipv4Addr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .map(|lb| lb.ingress.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default()
}

/// What the allocator should do with one Service.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: it has an address of the pool, or is no LoadBalancer and holds none.
    Nothing,
    /// A LoadBalancer without one of the pool's addresses: give it one.
    Address,
    /// Not (any more) a LoadBalancer, but it holds one of the pool's addresses: free it.
    Release,
}

/// What `s` needs.
pub fn need(pool: &Pool, s: &pb::Service) -> Need {
    let ours = ingress_ips(s).into_iter().any(|ip| pool.contains(ip));
    match (is_lb(s), ours) {
        (true, false) => Need::Address,
        (false, true) => Need::Release,
        _ => Need::Nothing,
    }
}

/// Starts the informers the allocator reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Service>();
}

/// Gives and frees addresses, from a fresh list of the Services.
async fn allocate_round(ctx: &Context, pool: &Pool) -> Result<Round, flotilla_client::ClientError> {
    let services = ctx.client.list::<pb::Service>(&ListParams::default()).await?.items;
    let taken: BTreeSet<Ipv4Addr> =
        services.iter().filter(|s| is_lb(s)).flat_map(ingress_ips).filter(|ip| pool.contains(*ip)).collect();
    let mut round = Round::default();
    let wanting: Vec<&pb::Service> = services.iter().filter(|s| need(pool, s) == Need::Address).collect();
    let addresses = pool.allocate(&taken, wanting.len());
    let id = |s: &pb::Service| s.metadata.as_ref().map(|m| (m.namespace.clone(), m.name.clone())).unwrap_or_default();
    round.exhausted = wanting
        .iter()
        .skip(addresses.len())
        .map(|s| {
            let (namespace, name) = id(s);
            pb::ObjectReference { kind: "Service".into(), namespace, name, ..Default::default() }
        })
        .collect();
    round.unfinished = !round.exhausted.is_empty();
    let mut writes: Vec<(pb::Service, Option<Ipv4Addr>)> =
        wanting.into_iter().zip(addresses).map(|(s, ip)| (s.clone(), Some(ip))).collect();
    writes.extend(services.iter().filter(|s| need(pool, s) == Need::Release).map(|s| (s.clone(), None)));
    for (mut s, ip) in writes {
        let (ns, name) = id(&s);
        let lb = s.status.get_or_insert_with(Default::default).load_balancer.get_or_insert_with(Default::default);
        lb.ingress.retain(|i| i.ip.parse().is_ok_and(|a| !pool.contains(a)));
        if let Some(ip) = ip {
            lb.ingress.push(pb::LoadBalancerIngress { ip: ip.to_string(), hostname: String::new() });
        }
        // The resourceVersion from the list: a Service changed meanwhile is looked at again.
        match ctx.client.update_status(s).await {
            Ok(_) => match ip {
                Some(ip) => tracing::info!(service = %format!("{ns}/{name}"), %ip, "load-balancer address assigned"),
                None => tracing::info!(service = %format!("{ns}/{name}"), "load-balancer address freed"),
            },
            Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::Aborted) => round.unfinished = true,
            Err(e) => return Err(e),
        }
    }
    Ok(round)
}

/// Runs the allocator for one term (until `ctx` says stop); idle without a pool.
pub async fn start(ctx: Context) {
    let Some(pool) = ctx.settings.load_balancer_pool.clone() else {
        tracing::debug!("the load-balancer allocator is off: no --load-balancer-pool");
        return ctx.stopped().await;
    };
    let needs = |s: &pb::Service| need(&pool, s) != Need::Nothing;
    let used_up = ("AllocationFailed", "no address of --load-balancer-pool is free");
    allocator::run(&ctx, "loadbalancer", needs, || allocate_round(&ctx, &pool), used_up).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(kind: &str, ips: &[&str]) -> pb::Service {
        pb::Service {
            metadata: Some(pb::ObjectMeta { name: "s".into(), namespace: "default".into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec { r#type: kind.into(), ..Default::default() }),
            status: Some(pb::ServiceStatus {
                load_balancer: Some(pb::LoadBalancerStatus {
                    ingress: ips
                        .iter()
                        .map(|ip| pb::LoadBalancerIngress { ip: ip.to_string(), ..Default::default() })
                        .collect(),
                }),
            }),
        }
    }

    #[test]
    fn the_pool_hands_out_its_addresses_in_order_and_never_a_taken_one() {
        let pool = Pool::parse("192.168.240.0/31, 192.168.241.9/32").expect("pool");
        let taken: BTreeSet<Ipv4Addr> = ["192.168.240.0".parse().expect("ip")].into();
        let got: Vec<String> = pool.allocate(&taken, 5).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, vec!["192.168.240.1", "192.168.241.9"]);
        assert!(Pool::parse("192.168.0.0/24,192.168.0.8/29").expect_err("overlap").contains("overlaps"));
        assert!(Pool::parse("192.168.0.0").expect_err("not a cidr").contains("--load-balancer-pool"));
        assert!(Pool::parse(" , ").expect_err("empty").contains("no range"));
    }

    #[test]
    fn only_load_balancers_hold_pool_addresses() {
        let pool = Pool::parse("192.168.240.0/28").expect("pool");
        assert_eq!(need(&pool, &svc("LoadBalancer", &[])), Need::Address);
        assert_eq!(need(&pool, &svc("LoadBalancer", &["10.0.0.1"])), Need::Address, "not one of ours");
        assert_eq!(need(&pool, &svc("LoadBalancer", &["192.168.240.3"])), Need::Nothing);
        assert_eq!(need(&pool, &svc("ClusterIP", &["192.168.240.3"])), Need::Release);
        assert_eq!(need(&pool, &svc("ClusterIP", &[])), Need::Nothing);
    }
}
