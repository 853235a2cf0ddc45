//! The scheduler against three real masters, each running a scheduler candidate: the
//! elected one places pods (by each filter and score), reports pods that fit nowhere,
//! and only one candidate leads at a time.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use flotilla_client::{Client, ListParams};
use flotilla_proto::api as pb;

/// A Ready node with `cpu` cores, 8 GiB and room for 20 pods.
fn node(name: &str, cpu: &str, node_labels: &[(&str, &str)], taints: Vec<pb::Taint>) -> pb::Node {
    let cap: BTreeMap<String, String> = labels(&[("cpu", cpu), ("memory", "8Gi"), ("pods", "20")]);
    pb::Node {
        metadata: Some(pb::ObjectMeta { name: name.into(), labels: labels(node_labels), ..Default::default() }),
        spec: Some(pb::NodeSpec { taints, ..Default::default() }),
        status: Some(pb::NodeStatus {
            capacity: cap.clone(),
            allocatable: cap,
            conditions: vec![pb::Condition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        }),
    }
}

fn pod(name: &str, cpu: &str, f: impl FnOnce(&mut pb::PodSpec)) -> pb::Pod {
    let mut spec = pb::PodSpec {
        containers: vec![pb::Container {
            name: "main".into(),
            image: "busybox:1.36".into(),
            resources: Some(pb::ResourceRequirements {
                requests: labels(&[("cpu", cpu), ("memory", "64Mi")]),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    f(&mut spec);
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(spec),
        status: None,
    }
}

fn endpoints(c: &Cluster) -> Vec<String> {
    c.members.iter().map(|m| m.endpoint()).collect()
}

/// Waits until `pod` exists and is bound; its node.
async fn bound_node(client: &Client, name: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node = match client.get::<pb::Pod>("default", name).await {
            Ok(p) => p.spec.map(|s| s.node_name).unwrap_or_default(),
            Err(e) if e.is_not_found() => String::new(), // not created yet
            Err(e) => panic!("get pod {name}: {e}"),
        };
        if !node.is_empty() {
            return node;
        }
        if std::time::Instant::now() >= deadline {
            let pods = client.list::<pb::Pod>(&ListParams { namespace: "default".into(), ..Default::default() }).await;
            let summary: Vec<String> = pods
                .map(|l| l.items)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let m = p.metadata.clone().unwrap_or_default();
                    let n = p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default();
                    format!("{}@{}:{}", m.name, m.resource_version, n)
                })
                .collect();
            panic!("pod {name} was not bound within 30 s; pods: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `pod` is reported unschedulable; the condition's message.
async fn unschedulable_message(client: &Client, name: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p: pb::Pod = client.get("default", name).await.expect("get pod");
        assert!(p.spec.as_ref().is_some_and(|s| s.node_name.is_empty()), "{name} must stay unbound");
        let cond = p.status.iter().flat_map(|s| &s.conditions).find(|c| c.r#type == "PodScheduled").cloned();
        if let Some(c) = cond {
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Unschedulable"));
            return c.message;
        }
        assert!(std::time::Instant::now() < deadline, "pod {name} was not reported within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Exactly one master's scheduler leads (`flotilla_scheduler_is_leader`).
fn leaders(c: &Cluster) -> usize {
    c.members.iter().filter(|m| metric(m, "flotilla_scheduler_is_leader") == Some(1.0)).count()
}

/// Every filter: a pod goes only where it fits (cpu), where its nodeSelector and required
/// affinity match, where it tolerates the taints, and where its host port is free; one
/// that fits nowhere stays Pending with a reason counting each cause, and an Event.
#[test]
fn pods_go_only_where_every_filter_allows_and_the_rest_are_told_why() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let rt = rt();
    rt.block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        let dedicated = pb::Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        for n in [
            node("small", "1", &[("disk", "hdd")], vec![]),
            node("big", "8", &[("disk", "ssd"), ("gen", "5")], vec![]),
            node("db", "8", &[("disk", "ssd"), ("gen", "3")], vec![dedicated]),
        ] {
            client.create(n).await.expect("node");
        }
        // Resources: 2 cores fit only on big (db is tainted).
        client.create(pod("cpu", "2", |_| {})).await.expect("pod");
        assert_eq!(bound_node(&client, "cpu").await, "big");
        // nodeSelector: ssd, untainted → big.
        client.create(pod("sel", "100m", |s| s.node_selector = labels(&[("disk", "ssd")]))).await.expect("pod");
        assert_eq!(bound_node(&client, "sel").await, "big");
        // Required affinity with Lt, and a toleration → db.
        client
            .create(pod("aff", "100m", |s| {
                s.affinity = Some(pb::Affinity {
                    node_affinity: Some(pb::NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(pb::NodeSelector {
                            node_selector_terms: vec![pb::NodeSelectorTerm {
                                match_expressions: vec![pb::NodeSelectorRequirement {
                                    key: "gen".into(),
                                    operator: "Lt".into(),
                                    values: vec!["4".into()],
                                }],
                            }],
                        }),
                        ..Default::default()
                    }),
                });
                s.tolerations = vec![pb::Toleration {
                    key: "dedicated".into(),
                    operator: "Equal".into(),
                    value: "db".into(),
                    ..Default::default()
                }];
            }))
            .await
            .expect("pod");
        assert_eq!(bound_node(&client, "aff").await, "db");
        // Host ports: two pods want 8080 on hdd nodes; only small has hdd.
        let port = |s: &mut pb::PodSpec| {
            s.node_selector = labels(&[("disk", "hdd")]);
            s.containers[0].ports =
                vec![pb::ContainerPort { container_port: 80, host_port: 8080, ..Default::default() }];
        };
        client.create(pod("port1", "100m", port)).await.expect("pod");
        assert_eq!(bound_node(&client, "port1").await, "small");
        client.create(pod("port2", "100m", port)).await.expect("pod");
        let msg = unschedulable_message(&client, "port2").await;
        assert!(msg.starts_with("0/3 nodes are available: "), "{msg}");
        assert!(msg.contains("1 node(s) didn't have free ports for the requested pod ports"), "{msg}");
        assert!(msg.contains("1 node(s) didn't match Pod's node affinity/selector"), "{msg}");
        assert!(msg.contains("1 node(s) had untolerated taint {dedicated: db}"), "{msg}");
        // Too big for any node: every cause counted.
        client.create(pod("huge", "16", |_| {})).await.expect("pod");
        let msg = unschedulable_message(&client, "huge").await;
        assert!(msg.contains("2 Insufficient cpu"), "{msg}");
        assert!(msg.contains("1 node(s) had untolerated taint {dedicated: db}"), "{msg}");
        // The Event is written after the pod's condition: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = client
                .list::<pb::Event>(&ListParams {
                    namespace: "default".into(),
                    field_selector: "involvedObject.name=huge".into(),
                    ..Default::default()
                })
                .await
                .expect("events");
            if events.items.iter().any(|e| e.reason == "FailedScheduling" && e.message == msg) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no FailedScheduling Event with {msg:?}: {:?}", events.items);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing else moved.
        let port2: pb::Pod = client.get("default", "port2").await.expect("get");
        assert!(port2.spec.expect("spec").node_name.is_empty());
    });
    // flotctl shows where pods went, and why one is pending.
    let ctl = |args: &[&str]| {
        let out = ctl_command(&c.endpoints()).args(args).output().expect("flotilla ctl");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let wide = ctl(&["get", "pods", "-o", "wide"]);
    assert!(wide.lines().next().is_some_and(|h| h.contains("NODE")), "{wide}");
    assert!(wide.lines().any(|l| l.starts_with("cpu ") && l.trim_end().ends_with("big")), "{wide}");
    let described = ctl(&["describe", "pod", "huge"]);
    assert!(described.contains("PodScheduled") && described.contains("Insufficient cpu"), "{described}");
    assert!(described.contains("FailedScheduling"), "{described}");
    assert_eq!(leaders(&c), 1, "exactly one scheduler leads");
}

/// A pod that fits nowhere is placed as soon as a node that fits it appears: it waits
/// for a cluster change, not for a timer.
#[test]
fn an_unschedulable_pod_is_placed_when_a_node_that_fits_appears() {
    let c = Cluster::start_with_scheduler(3, &[]);
    rt().block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        client.create(node("n1", "1", &[], vec![])).await.expect("node");
        client.create(pod("wide", "4", |_| {})).await.expect("pod");
        let msg = unschedulable_message(&client, "wide").await;
        assert!(msg.contains("1 Insufficient cpu"), "{msg}");
        client.create(node("n2", "8", &[], vec![])).await.expect("node");
        // bound_node gives up after 30 s, far below the queue's 60 s safety flush: only
        // the node's arrival can have woken the pod in time.
        assert_eq!(bound_node(&client, "wide").await, "n2");
    });
}

/// Scores, each in a setup where the others would choose differently: a ReplicaSet's pods
/// spread over zones; a PreferNoSchedule taint steers pods away from the emptiest node;
/// preferred node affinity wins over being emptiest. (Balanced and least allocated, which
/// agree on small pods, each have a test of their own below.)
#[test]
fn scores_pick_the_best_node() {
    let c = Cluster::start_with_scheduler(3, &[]);
    rt().block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        let prefer = pb::Taint { key: "spot".into(), effect: "PreferNoSchedule".into(), ..Default::default() };
        for n in [
            node("a1", "4", &[("topology.kubernetes.io/zone", "a"), ("disk", "ssd")], vec![]),
            node("a2", "4", &[("topology.kubernetes.io/zone", "a")], vec![]),
            node("b1", "4", &[("topology.kubernetes.io/zone", "b")], vec![prefer]),
        ] {
            client.create(n).await.expect("node");
        }
        // Spread: two replicas of a ReplicaSet already run on a1 (zone a), and another pod
        // loads b1 a little. Resources alone would pick a2; spreading over zones picks b1.
        let owner = pb::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "rs-web-uid".into(),
            controller: true,
            ..Default::default()
        };
        let tolerate = |s: &mut pb::PodSpec| {
            s.tolerations =
                vec![pb::Toleration { key: "spot".into(), operator: "Exists".into(), ..Default::default() }];
        };
        for (name, on, cpu, owned) in
            [("web-0", "a1", "10m", true), ("web-1", "a1", "10m", true), ("filler", "b1", "500m", false)]
        {
            let mut p = pod(name, cpu, |s| {
                tolerate(s);
                s.node_name = on.into();
            });
            if owned {
                p.metadata.as_mut().expect("meta").owner_references = vec![owner.clone()];
            }
            client.create(p).await.expect("pod");
        }
        let mut p = pod("web-2", "10m", tolerate);
        p.metadata.as_mut().expect("meta").owner_references = vec![owner.clone()];
        client.create(p).await.expect("pod");
        assert_eq!(bound_node(&client, "web-2").await, "b1", "the other zone, though b1 is busier");
        client.delete::<pb::Pod>("default", "filler", &Default::default()).await.expect("delete");
        // Now a1 and a2 carry a core each, b1 almost nothing: b1 is the emptiest node.
        for (name, on) in [("load-a1", "a1"), ("load-a2", "a2")] {
            client.create(pod(name, "1", |s| s.node_name = on.into())).await.expect("pod");
        }
        // PreferNoSchedule: a pod that does not tolerate b1's taint avoids it anyway.
        client.create(pod("plain", "100m", |_| {})).await.expect("pod");
        assert_ne!(bound_node(&client, "plain").await, "b1", "PreferNoSchedule steers away from the emptiest node");
        // Least allocated: one that tolerates it takes the emptiest node.
        client.create(pod("least", "100m", tolerate)).await.expect("pod");
        assert_eq!(bound_node(&client, "least").await, "b1", "the least allocated node");
        // Preferred affinity (ssd, weight 100) wins over being least allocated.
        client
            .create(pod("prefers-ssd", "100m", |s| {
                tolerate(s);
                s.affinity = Some(pb::Affinity {
                    node_affinity: Some(pb::NodeAffinity {
                        preferred_during_scheduling_ignored_during_execution: vec![pb::PreferredSchedulingTerm {
                            weight: 100,
                            preference: Some(pb::NodeSelectorTerm {
                                match_expressions: vec![pb::NodeSelectorRequirement {
                                    key: "disk".into(),
                                    operator: "In".into(),
                                    values: vec!["ssd".into()],
                                }],
                            }),
                        }],
                        ..Default::default()
                    }),
                });
            }))
            .await
            .expect("pod");
        assert_eq!(bound_node(&client, "prefers-ssd").await, "a1");
    });
}

/// Balanced allocation: a memory-heavy pod goes to the node whose cpu is already used, so
/// that its cpu and memory end up used alike, rather than to the emptier node.
#[test]
fn a_lopsided_pod_goes_where_it_balances_the_node() {
    let c = Cluster::start_with_scheduler(3, &[]);
    rt().block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        for n in ["x1", "x2"] {
            client.create(node(n, "4", &[], vec![])).await.expect("node");
        }
        client.create(pod("cpu-heavy", "3", |s| s.node_name = "x1".into())).await.expect("pod");
        let mut p = pod("mem-heavy", "0", |_| {});
        let req = &mut p.spec.as_mut().expect("spec").containers[0].resources.as_mut().expect("resources").requests;
        req.insert("memory".into(), "6Gi".into());
        client.create(p).await.expect("pod");
        assert_eq!(bound_node(&client, "mem-heavy").await, "x1");
    });
}

/// Least allocated (balanced allocation switched off, which on small pods would agree):
/// small pods all go to the emptier node while it stays emptier.
#[test]
fn small_pods_go_to_the_least_allocated_node() {
    let c = Cluster::start_with_scheduler(3, &["--scheduler-weights", "NodeResourcesBalancedAllocation=0"]);
    rt().block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        for n in ["x1", "x2"] {
            client.create(node(n, "4", &[], vec![])).await.expect("node");
        }
        client.create(pod("busy", "2", |s| s.node_name = "x1".into())).await.expect("pod");
        for i in 0..5 {
            let name = format!("small-{i}");
            client.create(pod(&name, "100m", |_| {})).await.expect("pod");
            assert_eq!(bound_node(&client, &name).await, "x2", "{name}");
        }
    });
}

/// A node deleted while pods are being placed: the scheduler stops choosing it (a bind
/// to it is refused by the store, which checks the node in the bind's transaction, and
/// the pod is retried), so no pod bound after the delete is on it and every pod is placed
/// on the node that remains. Without the scheduler dropping the node, pods stay pending.
#[test]
fn no_pod_is_bound_to_a_node_deleted_while_placing() {
    let c = Cluster::start_with_scheduler(3, &[]);
    rt().block_on(async {
        let client = common::admin_client(&endpoints(&c)).expect("client");
        for n in ["stay", "going"] {
            let mut n = node(n, "64", &[], vec![]);
            let status = n.status.as_mut().expect("status");
            for m in [&mut status.capacity, &mut status.allocatable] {
                m.insert("pods".into(), "110".into());
            }
            client.create(n).await.expect("node");
        }
        let creator = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    client.create(pod(&format!("p{i}"), "10m", |_| {})).await.expect("pod");
                }
            })
        };
        // Delete it while the pods are coming, once some are placed; the answer carries
        // the delete's revision.
        bound_node(&client, "p9").await;
        let mut api = flotilla_proto::api::api_client::ApiClient::new(client.channel());
        let deleted = api
            .delete(pb::DeleteRequest { kind: "Node".into(), name: "going".into(), ..Default::default() })
            .await
            .expect("delete node")
            .into_inner();
        let deleted_at: i64 = match deleted.object.and_then(|o| o.kind) {
            Some(pb::object::Kind::Node(n)) => n.metadata.expect("meta").resource_version.parse().expect("rv"),
            other => panic!("{other:?}"),
        };
        creator.await.expect("creator");
        let mut after = 0;
        for i in 0..60 {
            let name = format!("p{i}");
            let on = bound_node(&client, &name).await;
            let p: pb::Pod = client.get("default", &name).await.expect("pod");
            let bound_at: i64 = p.metadata.expect("meta").resource_version.parse().expect("rv");
            // The bind is the pod's last write here: its revision is the bind's.
            if bound_at > deleted_at {
                after += 1;
                assert_eq!(on, "stay", "{name} was bound at revision {bound_at} to a node deleted at {deleted_at}");
            }
        }
        assert!(after > 0, "no pod was placed after the delete: the test proved nothing");
    });
}
