//! Address allocators of the controller manager against real masters: Node IPAM gives
//! each Node a podCIDR from `--cluster-cidr`, never two the same, and a deleted Node's
//! block goes to a node that waited; the bare-metal load-balancer allocator gives each
//! LoadBalancer Service an address of `--load-balancer-pool`, never two the same, freed
//! when a Service stops being a LoadBalancer or is deleted. Used-up ranges say so in
//! Events. Bad flags are refused before the master starts.

mod common;

use common::*;
use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_proto::api as pb;
use std::collections::BTreeSet;

/// Node name → podCIDR ("" when none).
async fn cidrs(client: &Client) -> Vec<(String, String)> {
    let nodes = client.list::<pb::Node>(&ListParams::default()).await.expect("nodes").items;
    nodes
        .into_iter()
        .map(|n| (n.metadata.map(|m| m.name).unwrap_or_default(), n.spec.map(|s| s.pod_cidr).unwrap_or_default()))
        .collect()
}

/// Service name → its ingress addresses.
async fn ingress(client: &Client) -> Vec<(String, Vec<String>)> {
    let p = ListParams { namespace: "default".into(), ..Default::default() };
    let services = client.list::<pb::Service>(&p).await.expect("services").items;
    services
        .into_iter()
        .filter(|s| s.metadata.as_ref().is_some_and(|m| m.name.starts_with("lb")))
        .map(|s| {
            let ips = s
                .status
                .and_then(|st| st.load_balancer)
                .map(|lb| lb.ingress.into_iter().map(|i| i.ip).collect())
                .unwrap_or_default();
            (s.metadata.map(|m| m.name).unwrap_or_default(), ips)
        })
        .collect()
}

async fn has_event(client: &Client, reason: &str, about: &str) -> bool {
    let events = client.list::<pb::Event>(&ListParams::default()).await.expect("events").items;
    events.iter().any(|e| e.reason == reason && e.involved_object.as_ref().is_some_and(|o| o.name == about))
}

fn lb(name: &str) -> pb::Service {
    pb::Service {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::ServiceSpec {
            r#type: "LoadBalancer".into(),
            selector: labels(&[("app", name)]),
            ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn nodes_get_distinct_pod_cidrs_and_load_balancers_distinct_addresses() {
    // Four /24 blocks and two load-balancer addresses.
    let c = Cluster::start_with_scheduler(
        3,
        &[
            "--disable-scheduler",
            "--cluster-cidr",
            "10.244.0.0/22",
            "--node-cidr-mask-size",
            "24",
            "--load-balancer-pool",
            "192.168.240.10/31",
        ],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    rt.block_on(async {
        // Five nodes for four blocks: four distinct blocks; the fifth waits, and says why.
        for n in ["a", "b", "c", "d", "e"] {
            client.create(flotilla_bench::hollow::node(n, Default::default())).await.expect("node");
        }
        let got = until(&c, "four nodes with a podCIDR", || async {
            let all = cidrs(&client).await;
            (all.iter().filter(|(_, c)| !c.is_empty()).count() == 4).then_some(all)
        })
        .await;
        let blocks: BTreeSet<&str> = got.iter().map(|(_, c)| c.as_str()).filter(|c| !c.is_empty()).collect();
        let all: BTreeSet<&str> = ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"].into();
        assert_eq!(blocks, all, "{got:?}");
        let waiting = got.iter().find(|(_, c)| c.is_empty()).map(|(n, _)| n.clone()).expect("one waits");
        until(&c, "a CIDRNotAvailable event", || async {
            has_event(&client, "CIDRNotAvailable", &waiting).await.then_some(())
        })
        .await;
        // A node goes: its block goes to the one that waited.
        let (gone, freed) = got.iter().find(|(_, c)| !c.is_empty()).cloned().expect("a node with a block");
        client.delete::<pb::Node>("", &gone, &DeleteParams::default()).await.expect("delete node");
        let now = until(&c, "the waiting node gets the freed block", || async {
            let all = cidrs(&client).await;
            all.iter().all(|(_, c)| !c.is_empty()).then_some(all)
        })
        .await;
        assert!(now.contains(&(waiting.clone(), freed.clone())), "{now:?}");

        // Three LoadBalancers for two addresses.
        for s in ["lb1", "lb2", "lb3"] {
            client.create(lb(s)).await.expect("service");
        }
        let got = until(&c, "two LoadBalancers with an address", || async {
            let all = ingress(&client).await;
            (all.iter().filter(|(_, ips)| !ips.is_empty()).count() == 2).then_some(all)
        })
        .await;
        let ips: BTreeSet<String> = got.iter().flat_map(|(_, ips)| ips.clone()).collect();
        assert_eq!(ips, BTreeSet::from(["192.168.240.10".to_string(), "192.168.240.11".to_string()]), "{got:?}");
        let waiting = got.iter().find(|(_, ips)| ips.is_empty()).map(|(n, _)| n.clone()).expect("one waits");
        until(&c, "an AllocationFailed event", || async {
            has_event(&client, "AllocationFailed", &waiting).await.then_some(())
        })
        .await;
        // One stops being a LoadBalancer: its address is freed and goes to the waiting one.
        let (first, first_ips) = got.iter().find(|(_, ips)| !ips.is_empty()).cloned().expect("one with an address");
        let mut s: pb::Service = client.get("default", &first).await.expect("service");
        s.spec.as_mut().expect("spec").r#type = "ClusterIP".into();
        client.update(s).await.expect("to ClusterIP");
        let now = until(&c, "the address moves to the waiting service", || async {
            let all = ingress(&client).await;
            all.iter().any(|(n, ips)| n == &waiting && !ips.is_empty()).then_some(all)
        })
        .await;
        assert!(now.contains(&(waiting.clone(), first_ips.clone())), "{now:?}");
        assert!(now.contains(&(first.clone(), vec![])), "the ClusterIP service holds none: {now:?}");
        // A deleted LoadBalancer frees its address for a new one.
        let holder = now.iter().find(|(n, ips)| n != &waiting && !ips.is_empty()).cloned().expect("holder");
        client.delete::<pb::Service>("default", &holder.0, &DeleteParams::default()).await.expect("delete");
        client.create(lb("lb4")).await.expect("service");
        until(&c, "the new service gets the freed address", || async {
            ingress(&client).await.contains(&("lb4".to_string(), holder.1.clone())).then_some(())
        })
        .await;
    });
}

#[test]
fn bad_address_flags_are_refused_naming_the_flag() {
    for (args, want) in [
        (vec!["--cluster-cidr", "10.244.0.0"], "--cluster-cidr"),
        (vec!["--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "8"], "--node-cidr-mask-size"),
        (vec!["--node-cidr-mask-size", "24"], "needs --cluster-cidr"),
        (vec!["--load-balancer-pool", "192.168.0.0/24,192.168.0.4/30"], "overlaps"),
    ] {
        refused(&[&["controller-manager", "--masters", "127.0.0.1:1"][..], &args].concat(), want);
    }
}
