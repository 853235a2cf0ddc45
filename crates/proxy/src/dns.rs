//! Cluster DNS, served by every worker's proxy from the Services it already watches:
//! `<service>.<namespace>.svc.<domain>` answers the service's cluster IP (a headless
//! service's: its ready endpoints' addresses, and `<hostname>.<service>...` each one's).
//! Pods reach it through the resolv.conf the kubelet writes (search path
//! `<namespace>.svc.<domain> svc.<domain> <domain>`, ndots:5). Names outside the domain
//! go to the node's own nameservers (its /etc/resolv.conf); UDP and TCP both.
//!
//! The wire format is hickory-proto's; the serving loop is small and ours, so that the
//! answers come straight from the proxy's caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_proto::api as pb;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::error::ProxyError;
use crate::metrics::{ProxyMetrics, RcodeLabel};
use crate::AbortOnDrop;
use flotilla_core::cidr::Cidr;

/// How the DNS server is set up.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where it listens (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster's domain (`cluster.local`).
    pub domain: String,
    /// Where names outside the domain are asked (empty: they are refused).
    pub upstreams: Vec<SocketAddr>,
    /// The TTL of answers, in seconds.
    pub ttl: u32,
    /// Clients whose names outside the domain are forwarded (address, prefix length);
    /// others are refused, so the server is no open resolver.
    pub forward_for: Vec<Cidr>,
}

impl DnsConfig {
    /// Listening on `listen` for `domain`, forwarding other names to the nameservers of
    /// this machine's /etc/resolv.conf (except itself).
    pub fn new(listen: SocketAddr, domain: &str) -> DnsConfig {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        DnsConfig {
            listen,
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            upstreams: nameservers(&conf, listen),
            ttl: 5,
            forward_for: private(),
        }
    }
}

/// The private and loopback ranges: whom names outside the domain are forwarded for by
/// default.
pub fn private() -> Vec<Cidr> {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]
        .iter()
        .filter_map(|c| Cidr::parse_within(c, 8, 16).ok())
        .collect()
}

/// The `nameserver` lines of a resolv.conf, as addresses on port 53, without `own`.
pub fn nameservers(conf: &str, own: SocketAddr) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| *a != own)
        .collect()
}

/// The names of the cluster domain and their addresses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    /// Lowercase name without the final dot → addresses.
    names: HashMap<String, Vec<Ipv4Addr>>,
    /// Names that exist without addresses of their own (`<namespace>.svc.<domain>`).
    interior: BTreeSet<String>,
}

impl Records {
    /// The records of `services` (headless ones answered from `endpoints`, keyed
    /// `namespace/name`) under `domain`.
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a pb::Service>,
        endpoints: &BTreeMap<String, pb::Endpoints>,
    ) -> Records {
        let mut r = Records::default();
        r.interior.insert(domain.to_string());
        r.interior.insert(format!("svc.{domain}"));
        for svc in services {
            let (Some(m), Some(spec)) = (svc.metadata.as_ref(), svc.spec.as_ref()) else { continue };
            let name = format!("{}.{}.svc.{domain}", m.name, m.namespace);
            r.interior.insert(format!("{}.svc.{domain}", m.namespace));
            if spec.cluster_ip == "None" {
                let mut ips = Vec::new();
                let subsets = endpoints.get(&format!("{}/{}", m.namespace, m.name)).map(|e| e.subsets.as_slice());
                for a in subsets.unwrap_or_default().iter().flat_map(|s| &s.addresses) {
                    let Ok(ip) = a.ip.parse::<Ipv4Addr>() else { continue };
                    ips.push(ip);
                    if !a.hostname.is_empty() {
                        r.names.entry(format!("{}.{name}", a.hostname.to_ascii_lowercase())).or_default().push(ip);
                    }
                }
                ips.sort_unstable();
                ips.dedup();
                r.names.insert(name, ips);
            } else if let Ok(ip) = spec.cluster_ip.parse::<Ipv4Addr>() {
                r.names.insert(name, vec![ip]);
            }
        }
        r
    }
}

/// The DNS server's state: the records, swapped whole when Services change.
pub struct Dns {
    cfg: DnsConfig,
    records: RwLock<Arc<Records>>,
    /// Whether the records have been set once (before, the domain is answered SERVFAIL:
    /// an empty cache must not deny names that exist).
    ready: std::sync::atomic::AtomicBool,
    metrics: Arc<ProxyMetrics>,
}

/// What to do with a query.
enum Reply {
    /// Answer with this.
    Local(Message),
    /// Ask an upstream.
    Forward,
}

impl Dns {
    /// A server for `cfg` with no records yet.
    pub fn new(cfg: DnsConfig, metrics: Arc<ProxyMetrics>) -> Arc<Dns> {
        let ready = std::sync::atomic::AtomicBool::new(false);
        Arc::new(Dns { cfg, records: RwLock::new(Arc::new(Records::default())), ready, metrics })
    }

    /// The cluster's domain.
    pub fn domain(&self) -> String {
        self.cfg.domain.clone()
    }

    /// Replaces the records.
    pub fn set(&self, r: Records) {
        let mut cur = self.records.write().unwrap_or_else(|p| p.into_inner());
        if **cur != r {
            *cur = Arc::new(r);
        }
        self.ready.store(true, std::sync::atomic::Ordering::Release);
    }

    fn soa(&self) -> Option<Record> {
        let zone = Name::from_ascii(format!("{}.", self.cfg.domain)).ok()?;
        let ns = Name::from_ascii(format!("ns.dns.{}.", self.cfg.domain)).ok()?;
        let mail = Name::from_ascii(format!("hostmaster.{}.", self.cfg.domain)).ok()?;
        let soa = SOA::new(ns, mail, 1, 7200, 1800, 86400, self.cfg.ttl);
        Some(Record::from_rdata(zone, self.cfg.ttl, RData::SOA(soa)))
    }

    fn reply(&self, req: &Message, from: std::net::IpAddr) -> Reply {
        let meta = &req.metadata;
        let mut resp = Message::response(meta.id, meta.op_code);
        resp.metadata.recursion_desired = meta.recursion_desired;
        resp.metadata.recursion_available = !self.cfg.upstreams.is_empty();
        if meta.message_type != MessageType::Query || meta.op_code != OpCode::Query || req.queries.len() != 1 {
            resp.metadata.response_code =
                if meta.op_code == OpCode::Query { ResponseCode::FormErr } else { ResponseCode::NotImp };
            return Reply::Local(resp);
        }
        let q = &req.queries[0];
        resp.add_query(q.clone());
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let domain = &self.cfg.domain;
        if name != *domain && !name.ends_with(&format!(".{domain}")) {
            let allowed =
                matches!(from, std::net::IpAddr::V4(ip) if self.cfg.forward_for.iter().any(|c| c.contains_ip(ip)));
            if self.cfg.upstreams.is_empty() || !allowed {
                resp.metadata.response_code = ResponseCode::Refused;
                return Reply::Local(resp);
            }
            return Reply::Forward;
        }
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            resp.metadata.response_code = ResponseCode::ServFail;
            return Reply::Local(resp);
        }
        resp.metadata.authoritative = true;
        let records = self.records.read().unwrap_or_else(|p| p.into_inner()).clone();
        match records.names.get(&name) {
            Some(ips) if q.query_type() == RecordType::A || q.query_type() == RecordType::ANY => {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(q.name().clone(), self.cfg.ttl, RData::A(A(*ip))));
                }
            }
            Some(_) => resp.authorities.extend(self.soa()),
            None if records.interior.contains(&name) => resp.authorities.extend(self.soa()),
            None => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.authorities.extend(self.soa());
            }
        }
        Reply::Local(resp)
    }

    /// The answer to the query in `bytes` (None: not a query worth an answer). `limit` is
    /// the most a UDP answer may take; a longer one is truncated (the client asks again
    /// over TCP).
    async fn handle(&self, bytes: &[u8], udp: bool, from: std::net::IpAddr) -> Option<Vec<u8>> {
        // Responses are never answered (two servers must not bounce errors forever).
        if bytes.len() < 3 || bytes[2] & 0x80 != 0 {
            return None;
        }
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                return self.encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr), 512);
            }
        };
        let limit = if udp { usize::from(req.max_payload()) } else { usize::MAX };
        match self.reply(&req, from) {
            Reply::Local(resp) => self.encode(resp, limit),
            Reply::Forward => match forward(&self.cfg.upstreams, bytes, udp).await {
                Some(answer) => {
                    self.count(
                        &Message::from_vec(&answer).map(|m| m.metadata.response_code).unwrap_or(ResponseCode::NoError),
                    );
                    Some(answer)
                }
                None => self.encode(Message::error_msg(req.metadata.id, OpCode::Query, ResponseCode::ServFail), limit),
            },
        }
    }

    fn count(&self, rc: &ResponseCode) {
        self.metrics.dns_queries.get_or_create(&RcodeLabel { rcode: rc.to_str().to_string() }).inc();
    }

    fn encode(&self, mut resp: Message, limit: usize) -> Option<Vec<u8>> {
        self.count(&resp.metadata.response_code);
        let bytes = resp.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        resp.answers.clear();
        resp.metadata.truncation = true;
        resp.to_vec().ok()
    }

    /// Serves UDP and TCP on the configured address until the task is dropped.
    pub async fn serve(self: Arc<Dns>) -> Result<(), ProxyError> {
        let listen = self.cfg.listen;
        let what = |proto: &str| format!("cluster DNS on {proto} {listen} (--dns-listen, or --disable-dns)");
        let udp = Arc::new(UdpSocket::bind(listen).await.map_err(|e| ProxyError::io(what("udp"), e))?);
        let tcp = TcpListener::bind(listen).await.map_err(|e| ProxyError::io(what("tcp"), e))?;
        tracing::info!(%listen, domain = %self.cfg.domain, upstreams = ?self.cfg.upstreams, "cluster DNS serving");
        let me = self.clone();
        let tcp_task = tokio::spawn(async move {
            // At most this many TCP clients at once; an accept error (out of descriptors)
            // backs off instead of spinning.
            let slots = Arc::new(tokio::sync::Semaphore::new(256));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (mut conn, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS: accepting a TCP client");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let idle = Duration::from_secs(10);
                    loop {
                        let mut len = [0u8; 2];
                        if !matches!(tokio::time::timeout(idle, conn.read_exact(&mut len)).await, Ok(Ok(_))) {
                            return;
                        }
                        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if !matches!(tokio::time::timeout(idle, conn.read_exact(&mut buf)).await, Ok(Ok(_))) {
                            return;
                        }
                        let Some(out) = me.handle(&buf, false, peer.ip()).await else { return };
                        let Ok(n) = u16::try_from(out.len()) else { return };
                        if conn.write_all(&n.to_be_bytes()).await.is_err() || conn.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let _guard = AbortOnDrop(tcp_task);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = match udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS: receiving");
                    continue;
                }
            };
            let (me, sock, query) = (self.clone(), udp.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(out) = me.handle(&query, true, from.ip()).await {
                    let _ = sock.send_to(&out, from).await;
                }
            });
        }
    }
}

/// Asks the upstreams in turn (2 s each), over UDP or TCP as the client asked; the first
/// answer wins.
async fn forward(upstreams: &[SocketAddr], query: &[u8], udp: bool) -> Option<Vec<u8>> {
    for up in upstreams {
        let answer = if udp { forward_udp(*up, query).await } else { forward_tcp(*up, query).await };
        if answer.is_some() {
            return answer;
        }
    }
    None
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.send_to(query, up).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        // Only the upstream's answer to this query's id counts.
        if from == up && n >= 2 && buf[..2] == query[..2] {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(query.len()).ok()?;
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(up).await.ok()?;
        conn.write_all(&len.to_be_bytes()).await.ok()?;
        conn.write_all(query).await.ok()?;
        let mut n = [0u8; 2];
        conn.read_exact(&mut n).await.ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(n))];
        conn.read_exact(&mut buf).await.ok()?;
        (buf.len() >= 2 && buf[..2] == query[..2]).then_some(buf)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hickory_proto::op::Query;

    use super::*;
    use crate::model::tests::{endpoints, service};

    fn dns(upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        let cfg = DnsConfig {
            listen: "127.0.0.1:0".parse().expect("test value"),
            domain: "cluster.local".into(),
            upstreams,
            ttl: 5,
            forward_for: private(),
        };
        let d = Dns::new(cfg, Arc::new(ProxyMetrics::new()));
        let web = service("prod", "web", "ClusterIP", "10.96.0.10", &[("http", "TCP", 80, 0)]);
        let db = service("prod", "db", "ClusterIP", "None", &[("pg", "TCP", 5432, 0)]);
        let mut eps = endpoints("prod", "db", &["10.244.1.7", "10.244.2.8"], &["10.244.2.9"], &[("pg", "TCP", 5432)]);
        eps.subsets[0].addresses[0].hostname = "db-0".into();
        let all = BTreeMap::from([("prod/db".to_string(), eps)]);
        d.set(Records::build("cluster.local", [&web, &db], &all));
        d
    }

    fn ask(d: &Dns, name: &str, ty: RecordType) -> Option<Message> {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(name).expect("test value"), ty));
        match d.reply(&q, "10.244.1.9".parse().expect("test value")) {
            Reply::Local(m) => Some(m),
            Reply::Forward => None,
        }
    }

    fn local() -> std::net::IpAddr {
        "127.0.0.1".parse().expect("test value")
    }

    fn addresses(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_service_name_answers_its_cluster_ip_and_a_headless_one_its_ready_endpoints() {
        let d = dns(vec![]);
        let m = ask(&d, "web.prod.svc.cluster.local.", RecordType::A).expect("local");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(addresses(&m), vec!["10.96.0.10"]);
        assert_eq!(m.metadata.id, 7);
        let m = ask(&d, "DB.prod.svc.cluster.local.", RecordType::A).expect("local");
        assert_eq!(addresses(&m), vec!["10.244.1.7", "10.244.2.8"], "ready endpoints only, case-insensitive");
        let m = ask(&d, "db-0.db.prod.svc.cluster.local.", RecordType::A).expect("local");
        assert_eq!(addresses(&m), vec!["10.244.1.7"]);
    }

    #[test]
    fn unknown_names_in_the_domain_are_nxdomain_and_others_are_forwarded_or_refused() {
        let d = dns(vec![]);
        let m = ask(&d, "nope.prod.svc.cluster.local.", RecordType::A).expect("local");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1, "with the zone's SOA for negative caching");
        let m = ask(&d, "prod.svc.cluster.local.", RecordType::A).expect("local");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "a namespace exists, without addresses");
        let m = ask(&d, "web.prod.svc.cluster.local.", RecordType::AAAA).expect("local");
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "no IPv6 address");
        let m = ask(&d, "example.org.", RecordType::A).expect("refused without upstreams");
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(ask(&dns(vec!["127.0.0.1:53".parse().expect("test value")]), "example.org.", RecordType::A).is_none());
    }

    #[tokio::test]
    async fn garbage_gets_formerr_and_long_udp_answers_are_truncated() {
        let d = dns(vec![]);
        let out = d.handle(&[0x12, 0x34, 0x01], true, local()).await.expect("an answer");
        let m = Message::from_vec(&out).expect("a message");
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, ResponseCode::FormErr));
        let svcs: Vec<pb::Service> = vec![service("a", "big", "ClusterIP", "None", &[])];
        let ips: Vec<String> = (0..100).map(|i| format!("10.244.3.{i}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let all = BTreeMap::from([("a/big".to_string(), endpoints("a", "big", &ips, &[], &[]))]);
        d.set(Records::build("cluster.local", &svcs, &all));
        let mut q = Message::new(9, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("big.a.svc.cluster.local.").expect("test value"), RecordType::A));
        let bytes = q.to_vec().expect("test value");
        let m = Message::from_vec(&d.handle(&bytes, true, local()).await.expect("test value")).expect("test value");
        assert!(m.metadata.truncation && m.answers.is_empty(), "over 512 bytes on UDP");
        let m = Message::from_vec(&d.handle(&bytes, false, local()).await.expect("test value")).expect("test value");
        assert_eq!(m.answers.len(), 100, "whole over TCP");
    }

    #[tokio::test]
    async fn responses_get_no_answer_strangers_no_forwarding_and_the_domain_waits_for_its_records() {
        let d = dns(vec!["127.0.0.1:53".parse().expect("test value")]);
        let name = |n: &str| Name::from_ascii(n).expect("test value");
        let mut r = Message::new(5, MessageType::Response, OpCode::Query);
        r.add_query(Query::query(name("web.prod.svc.cluster.local."), RecordType::A));
        assert!(d.handle(&r.to_vec().expect("test value"), true, local()).await.is_none(), "no answer to an answer");
        let mut q = Message::new(6, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name("example.org."), RecordType::A));
        match d.reply(&q, "203.0.113.9".parse().expect("test value")) {
            Reply::Local(m) => assert_eq!(m.metadata.response_code, ResponseCode::Refused),
            Reply::Forward => panic!("forwarded for a public address"),
        }
        let cfg = DnsConfig {
            listen: "127.0.0.1:0".parse().expect("test value"),
            domain: "cluster.local".into(),
            upstreams: vec![],
            ttl: 5,
            forward_for: private(),
        };
        let fresh = Dns::new(cfg, Arc::new(ProxyMetrics::new()));
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name("web.prod.svc.cluster.local."), RecordType::A));
        match fresh.reply(&q, local()) {
            Reply::Local(m) => {
                assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "not NXDOMAIN before the first list")
            }
            Reply::Forward => panic!("forwarded a cluster name"),
        }
    }

    #[test]
    fn resolv_conf_nameservers_are_the_upstreams_except_the_server_itself() {
        let conf = "# x\nnameserver 10.0.0.2\nsearch a\nnameserver 10.88.0.11\nnameserver bad\n";
        assert_eq!(
            nameservers(conf, "10.88.0.11:53".parse().expect("test value")),
            vec!["10.0.0.2:53".parse().expect("test value")]
        );
    }
}
