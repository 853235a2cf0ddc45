//! Load-balancer addresses answered for on the node's network, as MetalLB's layer-2 mode
//! does: for each address one node answers ARP, chosen the same way by every proxy — the
//! first live proxy in an order hashed from node name and address — so that addresses
//! spread over nodes and an address moves only when its node goes. When this node takes
//! an address it says so with gratuitous ARP, so that neighbours re-point at once.
//!
//! Liveness: each proxy renews a Lease `kube-system/flotilla-proxy-<node>` every
//! `renew_every` (500 ms); a proxy whose Lease has not changed for `lease_duration` (3 s, timed on this
//! process's clock from the last change it saw) is dead. A proxy that does not see its own
//! renewals within a third of that (no master answers) changes nothing: it keeps
//! answering what it answered, as the data path must not depend on the masters; when it
//! sees again, every proxy gets a whole lease from then to show its renewals.
//!
//! ARP is answered in user space on a packet socket bound to the node's interface: when
//! the proxy dies, its node stops answering — nothing is left in the kernel to go stale.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use flotilla_client::{Change, Client, ListParams, Reflector};
use flotilla_proto::api as pb;
use nix::sys::socket::{LinkAddr, SockaddrLike};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::AbortOnDrop;

/// The namespace of the proxies' Leases.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The prefix of a proxy's Lease name (then the node's name).
pub const LEASE_PREFIX: &str = "flotilla-proxy-";
const ETH_P_ARP: u16 = 0x0806;

/// How announcing is set up.
#[derive(Debug, Clone)]
pub struct AnnounceConfig {
    /// This node's name.
    pub node: String,
    /// This node's address: ARP is answered on the interface that has it.
    pub node_ip: Ipv4Addr,
    /// A proxy silent this long is dead.
    pub lease_duration: Duration,
    /// How often this proxy renews its Lease.
    pub renew_every: Duration,
}

impl AnnounceConfig {
    /// Renewing twice a second, dead after three seconds: an address moves within about
    /// 3.5 s of its node's death, and a renewal or two lost to a master's failover is no
    /// death.
    pub fn new(node: &str, node_ip: Ipv4Addr) -> AnnounceConfig {
        AnnounceConfig {
            node: node.into(),
            node_ip,
            lease_duration: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
        }
    }
}

/// The node that answers for `ip` among `alive` (None if none is).
pub fn winner<'a>(ip: Ipv4Addr, alive: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    alive.into_iter().min_by_key(|node| {
        let h = Sha256::digest(format!("{node}#{ip}").as_bytes());
        (h[..8].to_vec(), *node)
    })
}

/// The interface with `ip`: its name, link address (for binding) and MAC.
fn interface_of(ip: Ipv4Addr) -> Result<(String, LinkAddr, [u8; 6]), ProxyError> {
    let err = |e: nix::Error| ProxyError::io("listing interfaces", std::io::Error::from(e));
    let name = nix::ifaddrs::getifaddrs()
        .map_err(err)?
        .find(|i| i.address.as_ref().and_then(|a| a.as_sockaddr_in()).is_some_and(|a| a.ip() == ip))
        .map(|i| i.interface_name)
        .ok_or_else(|| {
            ProxyError::Config(format!(
                "no interface has the node's address {ip} to answer ARP on (--node-ip; --disable-lb-announce runs \
                 without answering for load-balancer addresses)"
            ))
        })?;
    let link = nix::ifaddrs::getifaddrs()
        .map_err(err)?
        .filter(|i| i.interface_name == name)
        .find_map(|i| i.address.as_ref().and_then(|a| a.as_link_addr().copied()))
        .ok_or_else(|| ProxyError::Config(format!("interface {name} has no link-layer address")))?;
    let mac = link.addr().ok_or_else(|| ProxyError::Config(format!("interface {name} has no MAC address")))?;
    Ok((name, link, mac))
}

/// A packet socket for ARP on one interface.
struct ArpSocket {
    sock: socket2::Socket,
    mac: [u8; 6],
}

impl ArpSocket {
    fn open(ip: Ipv4Addr) -> Result<(String, ArpSocket), ProxyError> {
        let (name, link, mac) = interface_of(ip)?;
        let sock = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )
        .map_err(|e| ProxyError::io("opening a packet socket for ARP (needs CAP_NET_RAW)", e))?;
        // The link address from getifaddrs carries the interface's index; a zero protocol
        // in it keeps the socket's (ARP).
        if link.protocol() != 0 {
            return Err(ProxyError::Config(format!("interface {name}: unexpected link protocol {}", link.protocol())));
        }
        nix::sys::socket::bind(sock.as_raw_fd(), &link)
            .map_err(|e| ProxyError::io(format!("binding the ARP socket to {name} ({})", link.len()), e.into()))?;
        // Reads wake up twice a second to see whether to stop.
        sock.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| ProxyError::io("ARP socket", e))?;
        Ok((name, ArpSocket { sock, mac }))
    }

    fn send(&self, frame: &[u8]) {
        if let Err(e) = self.sock.send(frame) {
            tracing::warn!(error = %e, "sending ARP");
        }
    }

    /// Answers requests for `announced` (on a thread of its own: a blocking read) until
    /// `stop` is set.
    fn answer(&self, announced: &RwLock<BTreeSet<Ipv4Addr>>, stop: &AtomicBool) {
        let mut buf = [0u8; 1600];
        while !stop.load(Ordering::Relaxed) {
            let n = match (&self.sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The interface going down and up (ENETDOWN) and the like: keep answering
                // once it is back.
                Err(e) => {
                    tracing::warn!(error = %e, "receiving ARP; trying again in a second");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(req) = ArpRequest::parse(&buf[..n]) else { continue };
            if req.sender_mac == self.mac
                || !announced.read().unwrap_or_else(|p| p.into_inner()).contains(&req.target_ip)
            {
                continue;
            }
            self.send(&reply(self.mac, &req));
        }
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An ARP request seen on the wire.
#[derive(Debug, PartialEq, Eq)]
struct ArpRequest {
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
}

impl ArpRequest {
    /// An Ethernet/IPv4 ARP request from `frame` (with its Ethernet header).
    fn parse(frame: &[u8]) -> Option<ArpRequest> {
        if frame.len() < 42 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
            return None;
        }
        let arp = &frame[14..42];
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
        if arp[0..2] != [0, 1] || arp[2..4] != [8, 0] || arp[4] != 6 || arp[5] != 4 || arp[6..8] != [0, 1] {
            return None;
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Some(ArpRequest {
            sender_mac: arp[8..14].try_into().ok()?,
            sender_ip: ip(&arp[14..18]),
            target_ip: ip(&arp[24..28]),
        })
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], op: u8, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Our answer to `req`: its target address is at `mac`.
fn reply(mac: [u8; 6], req: &ArpRequest) -> Vec<u8> {
    frame(req.sender_mac, mac, 2, mac, req.target_ip, req.sender_mac, req.sender_ip)
}

/// A gratuitous ARP request: `ip` is at `mac`, to everyone.
fn gratuitous(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    frame([0xff; 6], mac, 1, mac, ip, [0; 6], ip)
}

fn proxy_lease(cfg: &AnnounceConfig) -> pb::Lease {
    pb::Lease {
        metadata: Some(pb::ObjectMeta {
            name: format!("{LEASE_PREFIX}{}", cfg.node),
            namespace: LEASE_NAMESPACE.into(),
            ..Default::default()
        }),
        spec: Some(pb::LeaseSpec {
            holder_identity: cfg.node.clone(),
            lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(3).max(1)),
            lease_duration_millis: Some(i32::try_from(cfg.lease_duration.as_millis()).unwrap_or(3000)),
            renew_time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            ..Default::default()
        }),
    }
}

/// Renews this proxy's Lease every `renew_every`: one update of the Lease as last
/// written (read again only after a conflict), each attempt given up after two periods
/// so that a master that went away mid-call holds no renewal back.
async fn heartbeat(client: Client, cfg: AnnounceConfig) {
    let mut tick = tokio::time::interval(cfg.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let name = format!("{LEASE_PREFIX}{}", cfg.node);
    let mut last: Option<pb::Lease> = None;
    loop {
        tick.tick().await;
        let fresh = proxy_lease(&cfg);
        let attempt = async {
            let cur = match last.take() {
                Some(l) => l,
                None => match client.get::<pb::Lease>(LEASE_NAMESPACE, &name).await {
                    Ok(l) => l,
                    Err(e) if e.is_not_found() => return client.create(fresh).await,
                    Err(e) => return Err(e),
                },
            };
            client.update(pb::Lease { spec: fresh.spec, ..cur }).await
        };
        match tokio::time::timeout(cfg.renew_every * 2, attempt).await {
            Ok(Ok(l)) => last = Some(l),
            Ok(Err(e)) => tracing::info!(error = %e, "proxy lease not renewed; trying again at the next beat"),
            Err(_) => tracing::info!("proxy lease renewal timed out; trying again at the next beat"),
        }
    }
}

/// Answers ARP for the load-balancer addresses in `addresses` that fall to this node,
/// until dropped. Fails at once if the node's interface cannot be used.
pub async fn run(
    client: Client,
    cfg: AnnounceConfig,
    mut addresses: watch::Receiver<BTreeSet<Ipv4Addr>>,
    metrics: Arc<ProxyMetrics>,
) -> Result<(), ProxyError> {
    let (iface, sock) = ArpSocket::open(cfg.node_ip)?;
    let sock = Arc::new(sock);
    tracing::info!(interface = %iface, node = %cfg.node, "answering ARP for the load-balancer addresses this node holds");
    let announced: Arc<RwLock<BTreeSet<Ipv4Addr>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _answering = StopOnDrop(stop.clone());
    {
        let (sock, announced) = (sock.clone(), announced.clone());
        std::thread::Builder::new()
            .name("arp".into())
            .spawn(move || sock.answer(&announced, &stop))
            .map_err(|e| ProxyError::io("starting the ARP thread", e))?;
    }
    let _beat = AbortOnDrop(tokio::spawn(heartbeat(client.clone(), cfg.clone())));
    let (tx, mut changes) = mpsc::unbounded_channel::<Change<pb::Lease>>();
    let p = ListParams { namespace: LEASE_NAMESPACE.into(), ..Default::default() };
    let leases = Reflector::<pb::Lease>::start_notifying(client, p, Some(tx));
    metrics.count_lists(leases.list_counter());
    // When each proxy's Lease was last seen to change.
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut garp: Vec<(Instant, Ipv4Addr)> = Vec::new();
    let mut stale = false;
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Some(Change::Upsert { new, .. }) => {
                    if let Some(node) = new.metadata.as_ref().and_then(|m| m.name.strip_prefix(LEASE_PREFIX)) {
                        seen.insert(node.to_string(), Instant::now());
                    }
                }
                Some(Change::Deleted(old)) => {
                    if let Some(node) = old.metadata.as_ref().and_then(|m| m.name.strip_prefix(LEASE_PREFIX)) {
                        seen.remove(node);
                    }
                }
                // A relist: every proxy is as fresh as its Lease now says, so start the clocks again.
                Some(Change::Listed) => {
                    for l in leases.snapshot() {
                        if let Some(node) = l.metadata.as_ref().and_then(|m| m.name.strip_prefix(LEASE_PREFIX)) {
                            seen.entry(node.to_string()).or_insert_with(Instant::now);
                        }
                    }
                }
                None => return Ok(()),
            },
            r = addresses.changed() => if r.is_err() { return Ok(()) },
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let alive = |t: &Instant| now.duration_since(*t) < cfg.lease_duration;
        // Without our own renewals in view, what we see is stale: change nothing. Our
        // own must be fresher than others' need be, so that when the masters go, we
        // stop judging before anyone else's Lease looks old.
        let own_window = cfg.lease_duration / 3;
        if seen.get(&cfg.node).is_none_or(|t| now.duration_since(*t) >= own_window) {
            stale = true;
            continue;
        }
        if stale {
            // Back in view: every proxy gets a whole lease from now to show its renewals
            // (we could not see them meanwhile), so nobody is taken for dead in haste.
            stale = false;
            for t in seen.values_mut() {
                *t = now;
            }
            continue;
        }
        let live: Vec<&str> = seen.iter().filter(|(_, t)| alive(t)).map(|(n, _)| n.as_str()).collect();
        let want: BTreeSet<Ipv4Addr> = addresses
            .borrow()
            .iter()
            .copied()
            .filter(|ip| winner(*ip, live.iter().copied()) == Some(cfg.node.as_str()))
            .collect();
        let gained: Vec<Ipv4Addr> = {
            let mut cur = announced.write().unwrap_or_else(|p| p.into_inner());
            if *cur == want {
                Vec::new()
            } else {
                tracing::debug!(?live, addresses = ?addresses.borrow(), ?want, "announcing changes");
                let gained = want.difference(&cur).copied().collect();
                for lost in cur.difference(&want) {
                    tracing::info!(address = %lost, "no longer answering for the load-balancer address");
                }
                *cur = want.clone();
                gained
            }
        };
        metrics.announced.set(i64::try_from(want.len()).unwrap_or(i64::MAX));
        for ip in gained {
            tracing::info!(address = %ip, interface = %iface, "answering for the load-balancer address");
            sock.send(&gratuitous(sock.mac, ip));
            // Once more in a moment, in case the first was lost.
            garp.push((now + Duration::from_millis(500), ip));
        }
        garp.retain(|(at, ip)| {
            if *at > now {
                return true;
            }
            if want.contains(ip) {
                sock.send(&gratuitous(sock.mac, *ip));
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proxy_picks_the_same_node_and_addresses_spread_and_move_only_with_their_node() {
        let nodes = ["w1", "w2", "w3"];
        let ips: Vec<Ipv4Addr> = (1..=30).map(|i| Ipv4Addr::new(10, 88, 0, 200 + (i % 50))).collect();
        let owners: Vec<&str> = ips.iter().map(|ip| winner(*ip, nodes).expect("a winner")).collect();
        for n in nodes {
            assert!(owners.contains(&n), "{n} holds some address: {owners:?}");
        }
        // Order of the live list does not matter.
        assert!(ips.iter().all(|ip| winner(*ip, ["w3", "w1", "w2"]) == winner(*ip, nodes)));
        // w2 dies: only its addresses move.
        for (ip, was) in ips.iter().zip(&owners) {
            let now = winner(*ip, ["w1", "w3"]).expect("a winner");
            if *was != "w2" {
                assert_eq!(now, *was);
            }
        }
        assert_eq!(winner(ips[0], []), None);
    }

    #[test]
    fn a_request_for_an_address_is_answered_from_our_mac() {
        let (us, them) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 9]);
        let (lb, client) = (Ipv4Addr::new(10, 88, 0, 200), Ipv4Addr::new(10, 88, 0, 50));
        let req = frame([0xff; 6], them, 1, them, client, [0; 6], lb);
        let parsed = ArpRequest::parse(&req).expect("a request");
        assert_eq!(parsed, ArpRequest { sender_mac: them, sender_ip: client, target_ip: lb });
        let rep = reply(us, &parsed);
        assert_eq!(&rep[0..6], &them, "to the asker");
        assert_eq!(&rep[20..22], &[0, 2], "a reply");
        assert_eq!(&rep[22..28], &us);
        assert_eq!(&rep[28..32], &lb.octets());
        assert!(ArpRequest::parse(&rep).is_none(), "replies are not requests");
        assert!(ArpRequest::parse(&req[..30]).is_none(), "short frames are ignored");
        let g = gratuitous(us, lb);
        assert_eq!((&g[28..32], &g[38..42]), (&lb.octets()[..], &lb.octets()[..]));
    }
}
