//! `flotctl cordon|uncordon|drain` against real masters (their scheduler and controller
//! manager) and hollow nodes: a cordoned node gets no new pods; a drain refuses while a
//! pod no controller owns is on the node, changing nothing; with --force it cordons,
//! deletes the node's pods gracefully and waits until they are gone, and the Deployment's
//! pods are running on the other node.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams};
use flotilla_proto::api as pb;

/// Pod names on `node`, and how many of the Deployment's pods are Ready elsewhere.
async fn placement(client: &Client, node: &str) -> (Vec<String>, usize) {
    let all = client.list::<pb::Pod>(&ListParams::default()).await.expect("pods").items;
    let on = |p: &pb::Pod| p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
    let ready = |p: &pb::Pod| {
        p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
    };
    let here = all.iter().filter(|p| on(p) == node).map(|p| p.metadata.clone().unwrap_or_default().name).collect();
    let elsewhere = all
        .iter()
        .filter(|p| on(p) != node && !on(p).is_empty() && ready(p))
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.deletion_timestamp.is_empty() && m.name.starts_with("web-")))
        .count();
    (here, elsewhere)
}

fn unschedulable(rt: &tokio::runtime::Runtime, client: &Client, node: &str) -> bool {
    rt.block_on(client.get::<pb::Node>("", node)).expect("node").spec.is_some_and(|s| s.unschedulable)
}

#[test]
fn draining_a_node_moves_its_pods_and_refuses_what_would_be_lost() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let _nodes = rt.block_on(hollow_nodes(&client, &["h1", "h2"]));

    // Cordon, twice, and back.
    assert_eq!(ctl_ok(&eps, &["cordon", "h1"]), "node/h1 cordoned\n");
    assert_eq!(ctl_ok(&eps, &["cordon", "h1"]), "node/h1 already cordoned\n");
    assert!(unschedulable(&rt, &client, "h1"));
    assert_eq!(ctl_ok(&eps, &["uncordon", "h1"]), "node/h1 uncordoned\n");
    assert!(!unschedulable(&rt, &client, "h1"));
    let err = ctl_fails(&eps, &["cordon", "nosuch"]);
    assert!(err.contains("nosuch") && err.contains("not found"), "{err}");

    // Four replicas over both nodes, and a pod of nobody's on h1.
    rt.block_on(async {
        client.create(deployment("web", 4)).await.expect("deployment");
        let mut lone = pb::Pod {
            metadata: Some(pb::ObjectMeta { name: "lone".into(), namespace: "default".into(), ..Default::default() }),
            spec: replicaset("x", 1).spec.and_then(|s| s.template).and_then(|t| t.spec),
            status: None,
        };
        lone.spec.as_mut().expect("spec").node_name = "h1".into();
        client.create(lone).await.expect("lone pod");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (on_h1, _) = placement(&client, "h1").await;
            let (on_h2, _) = placement(&client, "h2").await;
            if on_h1.len() >= 2 && on_h2.len() + on_h1.len() == 5 {
                break;
            }
            assert!(Instant::now() < deadline, "pods not spread: h1 {on_h1:?} h2 {on_h2:?}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Refused, naming the pod; the node is not even cordoned.
    let err = ctl_fails(&eps, &["drain", "h1"]);
    assert!(err.contains("default/lone") && err.contains("--force"), "{err}");
    assert!(!unschedulable(&rt, &client, "h1"), "a refused drain changes nothing");
    let err = ctl_fails(&eps, &["drain", "h1", "--timeout", "soon"]);
    assert!(err.contains("--timeout"), "{err}");

    // Forced: cordoned, evicted, drained; the Deployment's four run on h2.
    let out = ctl_ok(&eps, &["drain", "h1", "--force", "--timeout", "60s"]);
    assert!(out.starts_with("node/h1 cordoned\n"), "{out}");
    assert!(out.contains("evicting pod default/lone\n"), "{out}");
    assert!(out.ends_with("node/h1 drained\n"), "{out}");
    assert!(unschedulable(&rt, &client, "h1"));
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (on_h1, ready_elsewhere) = placement(&client, "h1").await;
            if on_h1.is_empty() && ready_elsewhere == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "h1 {on_h1:?}, {ready_elsewhere} ready elsewhere\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(ctl_ok(&eps, &["uncordon", "h1"]), "node/h1 uncordoned\n");
}
