//! From Services and Endpoints to what the proxy programs: one [`ServicePort`] per port
//! of every service that has a cluster IP, with its node port, load-balancer addresses,
//! session affinity and ready endpoints. Pure data; nothing here touches the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use flotilla_proto::api as pb;

/// A transport protocol a service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// From a ServicePort's or EndpointPort's `protocol` ("" is TCP); None if unknown.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "" | "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// nft's name of it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port of one service, as the proxy programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/protocol/port-name` (the port number when the port has no name):
    /// unique, and the readable part of its chains' names.
    pub key: String,
    /// The service's `namespace/name`.
    pub service: String,
    /// The cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The node port (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
    /// Load-balancer ingress addresses (LoadBalancer services).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// sessionAffinity: ClientIP.
    pub affinity: bool,
    /// Ready endpoints (address, port), sorted, without duplicates.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The cluster IP of a service the proxy programs (None for headless services and those
/// whose address is not IPv4).
pub fn cluster_ip(svc: &pb::Service) -> Option<Ipv4Addr> {
    svc.spec.as_ref()?.cluster_ip.parse().ok()
}

/// Every programmable service port of `services`, with endpoints from `endpoints` (keyed
/// `namespace/name`, as the services are). Sorted by key.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a pb::Service>,
    endpoints: &BTreeMap<String, pb::Endpoints>,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(meta), Some(spec)) = (svc.metadata.as_ref(), svc.spec.as_ref()) else { continue };
        let Some(ip) = cluster_ip(svc) else { continue };
        let name = format!("{}/{}", meta.namespace, meta.name);
        let external = matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer");
        let lbs: Vec<Ipv4Addr> = if spec.r#type == "LoadBalancer" {
            let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).map(|l| l.ingress.as_slice());
            ingress.unwrap_or_default().iter().filter_map(|i| i.ip.parse().ok()).collect()
        } else {
            Vec::new()
        };
        for p in &spec.ports {
            let (Some(protocol), Ok(port)) = (Protocol::parse(&p.protocol), u16::try_from(p.port)) else { continue };
            if port == 0 {
                continue;
            }
            let port_name = if p.name.is_empty() { port.to_string() } else { p.name.clone() };
            let node_port = if external { u16::try_from(p.node_port).ok().filter(|n| *n != 0) } else { None };
            let mut eps: Vec<(Ipv4Addr, u16)> = endpoints
                .get(&name)
                .map(|e| e.subsets.as_slice())
                .unwrap_or_default()
                .iter()
                .flat_map(|s| {
                    let ports = s.ports.iter().filter(|ep| {
                        ep.name == p.name && Protocol::parse(&ep.protocol) == Some(protocol) && ep.port > 0
                    });
                    ports.flat_map(move |ep| {
                        s.addresses.iter().filter_map(move |a| Some((a.ip.parse().ok()?, u16::try_from(ep.port).ok()?)))
                    })
                })
                .collect();
            eps.sort_unstable();
            eps.dedup();
            out.push(ServicePort {
                key: format!("{name}/{}/{port_name}", protocol.nft()),
                service: name.clone(),
                cluster_ip: ip,
                protocol,
                port,
                node_port,
                load_balancer_ips: lbs.clone(),
                affinity: spec.session_affinity == "ClientIP",
                endpoints: eps,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn service(ns: &str, name: &str, ty: &str, ip: &str, ports: &[(&str, &str, i32, i32)]) -> pb::Service {
        pb::Service {
            metadata: Some(pb::ObjectMeta { namespace: ns.into(), name: name.into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec {
                r#type: ty.into(),
                cluster_ip: ip.into(),
                ports: ports
                    .iter()
                    .map(|(n, proto, port, node_port)| pb::ServicePort {
                        name: (*n).into(),
                        protocol: (*proto).into(),
                        port: *port,
                        node_port: *node_port,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn endpoints(
        ns: &str,
        name: &str,
        ready: &[&str],
        unready: &[&str],
        ports: &[(&str, &str, i32)],
    ) -> pb::Endpoints {
        let addr = |ip: &&str| pb::EndpointAddress { ip: (*ip).into(), ..Default::default() };
        pb::Endpoints {
            metadata: Some(pb::ObjectMeta { namespace: ns.into(), name: name.into(), ..Default::default() }),
            subsets: vec![pb::EndpointSubset {
                addresses: ready.iter().map(addr).collect(),
                not_ready_addresses: unready.iter().map(addr).collect(),
                ports: ports
                    .iter()
                    .map(|(n, proto, p)| pb::EndpointPort { name: (*n).into(), protocol: (*proto).into(), port: *p })
                    .collect(),
            }],
        }
    }

    #[test]
    fn ready_endpoints_are_matched_to_service_ports_by_name_and_protocol() {
        let svc =
            service("default", "web", "NodePort", "10.96.0.10", &[("http", "TCP", 80, 30080), ("dns", "UDP", 53, 0)]);
        let eps = endpoints(
            "default",
            "web",
            &["10.244.1.3", "10.244.2.4"],
            &["10.244.1.9"],
            &[("http", "TCP", 8080), ("dns", "UDP", 5353), ("dns", "TCP", 5353)],
        );
        let all = BTreeMap::from([("default/web".to_string(), eps)]);
        let ports = service_ports([&svc], &all);
        assert_eq!(ports.len(), 2);
        let dns = &ports[1];
        assert_eq!(dns.key, "default/web/udp/dns");
        assert_eq!(
            dns.endpoints,
            vec![("10.244.1.3".parse().expect("test value"), 5353), ("10.244.2.4".parse().expect("test value"), 5353)]
        );
        assert_eq!(dns.node_port, None, "a zero node port is none");
        let http = &ports[0];
        assert_eq!(http.key, "default/web/tcp/http");
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.endpoints.len(), 2, "the unready address is left out");
    }

    #[test]
    fn headless_services_and_foreign_protocols_are_not_programmed() {
        let headless = service("default", "db", "ClusterIP", "None", &[("", "TCP", 5432, 0)]);
        let sctp = service("default", "x", "ClusterIP", "10.96.0.11", &[("", "SCTP", 9, 0)]);
        let cip = service("default", "y", "ClusterIP", "10.96.0.12", &[("", "", 9, 30009)]);
        let ports = service_ports([&headless, &sctp, &cip], &BTreeMap::new());
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].key, "default/y/tcp/9");
        assert_eq!(ports[0].node_port, None, "a ClusterIP service has no node port");
        assert!(ports[0].endpoints.is_empty());
    }
}
