//! The node lifecycle controller against real masters (their elected controller manager
//! and scheduler, default settings) and hollow nodes, each run on its own so that one can
//! go silent: its Lease stops being renewed, as when its machine dies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams};
use flotilla_proto::api as pb;

/// One hollow node, running until its sender is used or dropped.
fn hollow(client: &Client, name: &str) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(flotilla_bench::hollow::run(client.clone(), vec![name.into()], BTreeMap::new(), async move {
        let _ = stopped.await;
    }));
    stop
}

fn node_of(p: &pb::Pod) -> String {
    p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default()
}

fn ready(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

fn terminating(p: &pb::Pod) -> bool {
    p.metadata.as_ref().is_some_and(|m| !m.deletion_timestamp.is_empty())
}

async fn pods(client: &Client, app: &str) -> Vec<pb::Pod> {
    let p = ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
    client.list::<pb::Pod>(&p).await.expect("pods").items
}

/// Waits until `app` has `n` live pods, all ready, none on `avoid`; the time it took.
async fn ready_elsewhere(
    c: &Cluster,
    client: &Client,
    app: &str,
    n: usize,
    avoid: &[&str],
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let all = pods(client, app).await;
        let live: Vec<&pb::Pod> = all.iter().filter(|p| !terminating(p)).collect();
        if live.len() == n && live.iter().all(|p| ready(p) && !avoid.contains(&node_of(p).as_str())) {
            return t0.elapsed();
        }
        if t0.elapsed() > within {
            let on: Vec<String> = live.iter().map(|p| format!("{}:{}", node_of(p), ready(p))).collect();
            panic!("{app}: not {n} ready pods off {avoid:?} within {within:?}: {on:?}\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node(client: &Client, name: &str) -> pb::Node {
    client.get::<pb::Node>("", name).await.expect("node")
}

fn ready_condition(n: &pb::Node) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn unreachable_taints(n: &pb::Node) -> BTreeSet<String> {
    n.spec
        .as_ref()
        .map(|s| {
            s.taints.iter().filter(|t| t.key == "node.kubernetes.io/unreachable").map(|t| t.effect.clone()).collect()
        })
        .unwrap_or_default()
}

async fn events(client: &Client, reason: &str) -> Vec<pb::Event> {
    let all = client.list::<pb::Event>(&ListParams::default()).await.expect("events").items;
    all.into_iter().filter(|e| e.reason == reason).collect()
}

/// One of three nodes stops renewing its Lease: it becomes Ready Unknown with the
/// unreachable taints, its pods are evicted and run on the other two within 30 s (default
/// settings: 15 s grace, kubelets renewing every 10 s). Back, it loses the taints.
#[test]
fn a_silent_nodes_pods_run_elsewhere_within_30_seconds() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        let mut nodes: BTreeMap<&str, tokio::sync::oneshot::Sender<()>> = BTreeMap::new();
        for n in ["h1", "h2", "h3"] {
            nodes.insert(n, hollow(&client, n));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in ["h1", "h2", "h3"] {
            while client.get::<pb::Node>("", n).await.is_err() {
                assert!(Instant::now() < deadline, "hollow node {n} did not register");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client.create(deployment("web", 6)).await.expect("create deployment");
        ready_elsewhere(&c, &client, "web", 6, &[], Duration::from_secs(60)).await;
        let on_h3 = pods(&client, "web").await.iter().filter(|p| node_of(p) == "h3").count();
        assert!(on_h3 > 0, "some pods run on h3");

        let t0 = Instant::now();
        drop(nodes.remove("h3"));
        let took = ready_elsewhere(&c, &client, "web", 6, &["h3"], Duration::from_secs(60)).await;
        eprintln!("pods of a silent node ready elsewhere after {:.1} s", took.as_secs_f64());
        assert!(t0.elapsed() <= Duration::from_secs(30), "took {:?}, more than 30 s", t0.elapsed());
        let h3 = node(&client, "h3").await;
        assert_eq!(ready_condition(&h3), "Unknown");
        assert_eq!(unreachable_taints(&h3), BTreeSet::from(["NoExecute".to_string(), "NoSchedule".to_string()]));
        assert!(events(&client, "TaintManagerEviction").await.len() >= on_h3, "an Event per evicted pod");

        // Back: the taints go (and the hollow node says Ready again).
        nodes.insert("h3", hollow(&client, "h3"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let h3 = node(&client, "h3").await;
            if unreachable_taints(&h3).is_empty() && ready_condition(&h3) == "True" {
                break;
            }
            assert!(Instant::now() < deadline, "h3 still marked: {h3:?}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Two of four nodes go silent at once: both are marked, but their pods are not evicted,
/// and an Event on each says why.
#[test]
fn no_eviction_when_half_the_nodes_go_silent_at_once() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        let mut nodes: BTreeMap<&str, tokio::sync::oneshot::Sender<()>> = BTreeMap::new();
        for n in ["h1", "h2", "h3", "h4"] {
            nodes.insert(n, hollow(&client, n));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in ["h1", "h2", "h3", "h4"] {
            while client.get::<pb::Node>("", n).await.is_err() {
                assert!(Instant::now() < deadline, "hollow node {n} did not register");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client.create(deployment("web", 8)).await.expect("create deployment");
        ready_elsewhere(&c, &client, "web", 8, &[], Duration::from_secs(60)).await;
        let silent_pods: BTreeSet<String> = pods(&client, "web")
            .await
            .iter()
            .filter(|p| ["h3", "h4"].contains(&node_of(p).as_str()))
            .filter_map(|p| p.metadata.as_ref().map(|m| m.name.clone()))
            .collect();
        assert!(!silent_pods.is_empty());

        drop(nodes.remove("h3"));
        drop(nodes.remove("h4"));
        // Where it would evict, the controller records why it does not.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let suppressed: BTreeSet<String> = events(&client, "EvictionSuppressed")
                .await
                .iter()
                .filter_map(|e| e.involved_object.as_ref().map(|o| o.name.clone()))
                .collect();
            if suppressed.contains("h3") && suppressed.contains("h4") {
                break;
            }
            assert!(Instant::now() < deadline, "no EvictionSuppressed Events: {suppressed:?}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let e = events(&client, "EvictionSuppressed").await;
        assert!(e[0].message.contains("2 of 4 nodes stopped reporting at once"), "{}", e[0].message);
        for n in ["h3", "h4"] {
            let node = node(&client, n).await;
            assert_eq!(ready_condition(&node), "Unknown", "{n} is marked");
        }
        let now: Vec<pb::Pod> = pods(&client, "web").await;
        for p in &now {
            let name = p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            if silent_pods.contains(&name) {
                assert!(!terminating(p), "{name} on a silent node was evicted");
            }
        }
        assert_eq!(now.len(), 8, "nothing replaced");
        assert!(events(&client, "TaintManagerEviction").await.is_empty());
    });
}
