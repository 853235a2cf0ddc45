//! The Endpoints controller: for every Service with a selector, an Endpoints object of the
//! same name listing the addresses of the pods it selects, and their ports.
//!
//! [`endpoints_for`] is a pure function of a Service and the pods of its namespace: pods
//! that match the selector, are bound to a node, have an IP and are neither finished nor
//! being deleted are listed — ready ones under `addresses`, the others under
//! `notReadyAddresses`. Each Service port's target is resolved per pod: a number as is,
//! a name through that pod's container ports (a pod without a port of that name is left
//! out of that port). Pods with the same resolved ports share a subset. Addresses and
//! subsets are sorted, so an unchanged set of pods is an unchanged object and nothing is
//! written.
//!
//! Event-driven: a pod's change queues the Services whose selectors match its labels
//! before or after, so a readiness change reaches the Endpoints within one write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::reflector::{Cache, Change};
use flotilla_client::{Client, DeleteParams};
use flotilla_proto::api as pb;

use crate::informers::Informers;
use crate::manager::Context;
use crate::pods::{active, meta, ready_since};
use crate::queue::WorkQueue;
use crate::worker::Reconcile;
use crate::ControllerError;

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port `sp` targets in `pod`, if the pod has it.
fn target_port(sp: &pb::ServicePort, pod: &pb::Pod) -> Option<i32> {
    if sp.target_port_name.is_empty() {
        return Some(if sp.target_port != 0 { sp.target_port } else { sp.port });
    }
    let proto = if sp.protocol.is_empty() { "TCP" } else { sp.protocol.as_str() };
    pod.spec.as_ref()?.containers.iter().flat_map(|c| &c.ports).find_map(|cp| {
        let cproto = if cp.protocol.is_empty() { "TCP" } else { cp.protocol.as_str() };
        (cp.name == sp.target_port_name && cproto == proto).then_some(cp.container_port)
    })
}

/// The subsets of the Endpoints of `svc`, from the pods of its namespace.
pub fn endpoints_for(svc: &pb::Service, pods: &[&pb::Pod]) -> Vec<pb::EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    // Resolved ports → (ready addresses, not-ready addresses).
    type Addresses = (Vec<pb::EndpointAddress>, Vec<pb::EndpointAddress>);
    let mut subsets: BTreeMap<Vec<(String, i32, String)>, Addresses> = BTreeMap::new();
    for p in pods {
        let m = meta(p);
        let (node, ip) =
            (p.spec.as_ref().map_or("", |s| s.node_name.as_str()), p.status.as_ref().map_or("", |s| s.pod_ip.as_str()));
        if !selects(&spec.selector, &m.labels) || !active(p) || node.is_empty() || ip.is_empty() {
            continue;
        }
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .filter_map(|sp| {
                let proto = if sp.protocol.is_empty() { "TCP".to_string() } else { sp.protocol.clone() };
                target_port(sp, p).map(|port| (sp.name.clone(), port, proto))
            })
            .collect();
        if ports.is_empty() && !spec.ports.is_empty() {
            continue;
        }
        let address = pb::EndpointAddress {
            ip: ip.into(),
            node_name: node.into(),
            hostname: String::new(),
            target_ref: Some(pb::ObjectReference {
                kind: "Pod".into(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                uid: m.uid.clone(),
                ..Default::default()
            }),
        };
        let entry = subsets.entry(ports).or_default();
        if ready_since(p).is_some() {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    subsets
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            pb::EndpointSubset {
                addresses: ready,
                not_ready_addresses: not_ready,
                ports: ports
                    .into_iter()
                    .map(|(name, port, protocol)| pb::EndpointPort { name, port, protocol })
                    .collect(),
            }
        })
        .collect()
}

/// The running controller.
pub struct EndpointsController {
    client: Client,
    services: Cache<pb::Service>,
    pods: Cache<pb::Pod>,
    endpoints: Cache<pb::Endpoints>,
}

impl EndpointsController {
    /// A controller over these caches, writing through `client`.
    pub fn new(
        client: Client,
        services: Cache<pb::Service>,
        pods: Cache<pb::Pod>,
        endpoints: Cache<pb::Endpoints>,
    ) -> EndpointsController {
        EndpointsController { client, services, pods, endpoints }
    }

    fn all(&self, queue: &WorkQueue) {
        for k in self.services.read().unwrap_or_else(|p| p.into_inner()).keys() {
            queue.add(k);
        }
    }

    /// Takes in a change of the Service cache.
    pub fn service_changed(&self, queue: &WorkQueue, c: &Change<pb::Service>) {
        match c {
            Change::Listed => self.all(queue),
            Change::Upsert { new: s, .. } | Change::Deleted(s) => {
                if let Some(m) = &s.metadata {
                    queue.add(&format!("{}/{}", m.namespace, m.name));
                }
            }
        }
    }

    /// Takes in a change of the pod cache: queues the Services that select the pod, by its
    /// labels before and after.
    pub fn pod_changed(&self, queue: &WorkQueue, c: &Change<pb::Pod>) {
        let pods: Vec<&pb::Pod> = match c {
            Change::Listed => return self.all(queue),
            Change::Upsert { old, new } => old.iter().chain([new]).collect(),
            Change::Deleted(p) => vec![p],
        };
        let services = self.services.read().unwrap_or_else(|p| p.into_inner());
        for p in pods {
            let m = meta(p);
            let prefix = format!("{}/", m.namespace);
            for (k, s) in services.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                if s.spec.as_ref().is_some_and(|sp| selects(&sp.selector, &m.labels)) {
                    queue.add(k);
                }
            }
        }
    }

    /// Takes in a change of the Endpoints cache: an Endpoints changed by someone else is
    /// put back (its Service's key is queued).
    pub fn endpoints_changed(&self, queue: &WorkQueue, c: &Change<pb::Endpoints>) {
        if let Change::Upsert { new: e, .. } | Change::Deleted(e) = c {
            if let Some(m) = &e.metadata {
                let key = format!("{}/{}", m.namespace, m.name);
                if self.services.read().unwrap_or_else(|p| p.into_inner()).contains_key(&key) {
                    queue.add(&key);
                }
            }
        }
    }
}

impl Reconcile for EndpointsController {
    fn name(&self) -> &str {
        "endpoints"
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let svc = self.services.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        let current = self.endpoints.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        let Some(svc) = svc.filter(|s| s.spec.as_ref().is_some_and(|sp| !sp.selector.is_empty())) else {
            // No Service (or one without a selector, whose Endpoints its owner writes):
            // an Endpoints this controller made goes with it.
            if let Some(e) =
                current.filter(|_| !self.services.read().unwrap_or_else(|p| p.into_inner()).contains_key(key))
            {
                let uid = e.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
                match self.client.delete::<pb::Endpoints>(ns, name, &DeleteParams { uid, ..Default::default() }).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() || e.code() == Some(tonic::Code::FailedPrecondition) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(None);
        };
        let subsets = {
            let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
            let prefix = format!("{ns}/");
            let in_ns: Vec<&pb::Pod> =
                pods.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, p)| p).collect();
            endpoints_for(&svc, &in_ns)
        };
        let labels = svc.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
        match current {
            Some(cur) if cur.subsets == subsets && cur.metadata.as_ref().is_some_and(|m| m.labels == labels) => {
                Ok(None)
            }
            Some(mut cur) => {
                cur.subsets = subsets;
                cur.metadata.get_or_insert_with(Default::default).labels = labels;
                // A compare-and-swap on the cached version: a conflict is retried with
                // the cache caught up.
                self.client.update(cur).await?;
                Ok(None)
            }
            None => {
                let e = pb::Endpoints {
                    metadata: Some(pb::ObjectMeta {
                        name: name.into(),
                        namespace: ns.into(),
                        labels,
                        ..Default::default()
                    }),
                    subsets,
                };
                match self.client.create(e).await {
                    Ok(_) => Ok(None),
                    // Made meanwhile (or the cache is behind): look again from the cache.
                    Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => {
                        Err(ControllerError::Reconcile(format!("endpoints {key} exist but are not cached yet")))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Starts the informers the Endpoints controller reads.
pub fn warm(informers: &Informers) {
    informers.get::<pb::Service>();
    informers.get::<pb::Pod>();
    informers.get::<pb::Endpoints>();
}

/// Runs the Endpoints controller for one term (until `ctx` says stop).
pub async fn start(ctx: Context) {
    let (svcs, pods, eps) =
        (ctx.informers.get::<pb::Service>(), ctx.informers.get::<pb::Pod>(), ctx.informers.get::<pb::Endpoints>());
    let (mut s_rx, mut p_rx, mut e_rx) = (svcs.subscribe(), pods.subscribe(), eps.subscribe());
    let ctl = Arc::new(EndpointsController::new(ctx.client.clone(), svcs.cache(), pods.cache(), eps.cache()));
    let queue = Arc::new(WorkQueue::default());
    tokio::select! {
        () = ctx.stopped() => return,
        () = async { svcs.wait_synced().await; pods.wait_synced().await; eps.wait_synced().await; } => {}
    }
    let dispatch = async {
        loop {
            tokio::select! {
                Some(c) = s_rx.recv() => ctl.service_changed(&queue, &c),
                Some(c) = p_rx.recv() => ctl.pod_changed(&queue, &c),
                Some(c) = e_rx.recv() => ctl.endpoints_changed(&queue, &c),
                else => return,
            }
        }
    };
    crate::worker::serve(queue.clone(), ctl.clone(), ctx.workers, ctx.metrics("endpoints"), dispatch, ctx.stopped())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> pb::Pod {
        pb::Pod {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: labels(&[("app", "web")]),
                ..Default::default()
            }),
            spec: Some(pb::PodSpec {
                node_name: "n1".into(),
                containers: vec![pb::Container {
                    name: "main".into(),
                    ports: vec![pb::ContainerPort {
                        name: port_name.into(),
                        container_port: port,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(pb::PodStatus {
                phase: "Running".into(),
                pod_ip: ip.into(),
                conditions: if ready {
                    vec![pb::Condition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
        }
    }

    fn service(ports: Vec<pb::ServicePort>) -> pb::Service {
        pb::Service {
            metadata: Some(pb::ObjectMeta { name: "web".into(), namespace: "default".into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec { selector: labels(&[("app", "web")]), ports, ..Default::default() }),
            status: None,
        }
    }

    #[test]
    fn ready_and_unready_pods_are_listed_apart_and_named_ports_resolved_per_pod() {
        let svc = service(vec![pb::ServicePort {
            name: "http".into(),
            port: 80,
            target_port_name: "web".into(),
            ..Default::default()
        }]);
        let a = pod("a", "10.0.0.2", true, "web", 8080);
        let b = pod("b", "10.0.0.3", false, "web", 8080);
        let c = pod("c", "10.0.0.4", true, "web", 9090); // the same name, another number
        let d = pod("d", "10.0.0.5", true, "other", 8080); // no port of that name
        let mut gone = pod("e", "10.0.0.6", true, "web", 8080);
        gone.metadata.as_mut().expect("meta").deletion_timestamp = "2026-01-01T00:00:00Z".into();
        let mut other = pod("f", "10.0.0.7", true, "web", 8080);
        other.metadata.as_mut().expect("meta").labels = labels(&[("app", "db")]);
        let subsets = endpoints_for(&svc, &[&a, &b, &c, &d, &gone, &other]);
        let view: Vec<(Vec<&str>, Vec<&str>, i32)> = subsets
            .iter()
            .map(|s| {
                (
                    s.addresses.iter().map(|x| x.ip.as_str()).collect(),
                    s.not_ready_addresses.iter().map(|x| x.ip.as_str()).collect(),
                    s.ports[0].port,
                )
            })
            .collect();
        assert_eq!(view, vec![(vec!["10.0.0.2"], vec!["10.0.0.3"], 8080), (vec!["10.0.0.4"], vec![], 9090)]);
    }

    #[test]
    fn a_numbered_target_port_is_the_same_for_every_pod() {
        let svc = service(vec![pb::ServicePort { port: 80, target_port: 8080, ..Default::default() }]);
        let a = pod("a", "10.0.0.2", true, "", 0);
        let mut unbound = pod("b", "10.0.0.3", true, "", 0);
        unbound.spec.as_mut().expect("spec").node_name.clear();
        let subsets = endpoints_for(&svc, &[&a, &unbound]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].addresses.len(), 1, "an unbound pod is not listed");
        assert_eq!(subsets[0].ports[0].port, 8080);
    }
}
