//! The ReplicaSet controller against real masters: run by the masters' own controller
//! managers (one elected), and once in the test process with a frozen cache.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_proto::api as pb;

/// Sets the ReplicaSet's replicas, reading it again when the controller's status write
/// got in between (as any client must).
async fn scale(client: &Client, name: &str, replicas: i32) {
    for _ in 0..20 {
        let mut rs: pb::ReplicaSet = client.get("default", name).await.expect("get replicaset");
        rs.spec.as_mut().expect("spec").replicas = Some(replicas);
        match client.update(rs).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("scaling {name}: {e}"),
        }
    }
    panic!("scaling {name}: 20 conflicts in a row");
}

/// The live (not being deleted) pods labelled `app=<app>`, by name.
async fn live_pods(client: &Client, app: &str) -> Vec<pb::Pod> {
    let p = ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
    let mut pods: Vec<pb::Pod> = client
        .list::<pb::Pod>(&p)
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.deletion_timestamp.is_empty()))
        .collect();
    pods.sort_by_key(|p| p.metadata.as_ref().map(|m| m.name.clone()));
    pods
}

fn name(p: &pb::Pod) -> String {
    p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

/// Waits until exactly `n` live pods of `app` exist, all controlled by the ReplicaSet
/// `app`, and its status says so; fails if more than `most` are ever seen.
async fn settles_at(c: &Cluster, client: &Client, app: &str, n: usize, most: usize) -> Vec<pb::Pod> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pods = live_pods(client, app).await;
        assert!(
            pods.len() <= most,
            "{} pods of {app}, more than {most}: {:?}",
            pods.len(),
            pods.iter().map(name).collect::<Vec<_>>()
        );
        let rs: pb::ReplicaSet = client.get("default", app).await.expect("get replicaset");
        let uid = rs.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
        let owned = pods.iter().all(|p| {
            p.metadata.as_ref().is_some_and(|m| m.owner_references.iter().any(|r| r.controller && r.uid == uid))
        });
        let status = rs.status.clone().unwrap_or_default();
        let generation = rs.metadata.as_ref().map_or(0, |m| m.generation);
        if pods.len() == n && owned && status.replicas as usize == n && status.observed_generation == generation {
            return pods;
        }
        if Instant::now() > deadline {
            panic!(
                "{app} did not settle at {n}: pods {:?}, owned by it: {owned}, status {status:?}\n{}",
                pods.iter().map(name).collect::<Vec<_>>(),
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master whose controller manager holds the lock, if one does.
fn manager_leader(c: &Cluster) -> Option<usize> {
    (0..c.members.len()).find(|&i| {
        c.members[i].child.is_some() && metric(&c.members[i], "flotilla_controller_manager_is_leader") == Some(1.0)
    })
}

/// A ReplicaSet gets its pods; a deleted pod is replaced; scaling down deletes the
/// surplus; a matching orphan is adopted (and, being surplus and newest, deleted). Then
/// the master whose controller manager leads is SIGKILLed: another master's takes over
/// from its own caches, changes nothing, and scaled up makes exactly the difference. The
/// count never goes above what was asked plus the one orphan the test adds.
#[test]
fn a_replicaset_keeps_its_count_through_deletes_scaling_orphans_and_failover() {
    let mut c = Cluster::start_with_scheduler(3, &["--disable-scheduler"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let kept = rt.block_on(async {
        client.create(replicaset("web", 3)).await.expect("create replicaset");
        let pods = settles_at(&c, &client, "web", 3, 3).await;

        // A pod deleted is replaced by a new one.
        let gone = name(&pods[0]);
        client.delete::<pb::Pod>("default", &gone, &DeleteParams::default()).await.expect("delete pod");
        let pods = settles_at(&c, &client, "web", 3, 3).await;
        assert!(pods.iter().all(|p| name(p) != gone), "{gone} came back");

        // Scaled down: two go.
        scale(&client, "web", 1).await;
        let pods = settles_at(&c, &client, "web", 1, 3).await;
        let kept = name(&pods[0]);

        // An orphan that matches is adopted; being the newest, it is the surplus deleted.
        // (Creation times have one-second resolution: it is made in a later second than
        // the pod it competes with, and named to sort after it, so that only its age can
        // make it the one to go.)
        let kept_created = pods[0].metadata.as_ref().map(|m| m.creation_timestamp.clone()).unwrap_or_default();
        let kept_at = humantime::parse_rfc3339_weak(&kept_created).expect("creationTimestamp");
        while std::time::SystemTime::now().duration_since(kept_at).map_or(true, |d| d < Duration::from_millis(1100)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut stray = pods[0].clone();
        stray.metadata = Some(pb::ObjectMeta {
            name: "zz-stray".into(),
            namespace: "default".into(),
            labels: labels(&[("app", "web")]),
            ..Default::default()
        });
        stray.spec.as_mut().expect("spec").node_name.clear();
        stray.status = None;
        client.create(stray).await.expect("create orphan");
        let pods = settles_at(&c, &client, "web", 1, 2).await;
        assert_eq!(name(&pods[0]), kept, "the older pod stays");
        kept
    });

    // Failover: the leading controller manager's master dies; another takes over.
    let mut leader = None;
    c.eventually(Duration::from_secs(10), "a controller manager leads", || {
        leader = manager_leader(&c);
        leader.is_some()
    });
    let killed = leader.expect("leader");
    let t0 = Instant::now();
    c.kill(killed);
    let mut successor = None;
    c.eventually(Duration::from_secs(20), "another master's controller manager takes over", || {
        successor = manager_leader(&c);
        successor.is_some()
    });
    eprintln!("controller-manager failover after SIGKILL of its master: {} ms", t0.elapsed().as_millis());
    assert_ne!(successor, Some(killed));
    rt.block_on(async {
        scale(&client, "web", 2).await;
        let pods = settles_at(&c, &client, "web", 2, 2).await;
        assert!(pods.iter().any(|p| name(p) == kept), "the old pod was kept");
    });
}

/// A pod cache that lags behind the controller's own creates (here: one that never sees
/// them) never makes it create twice: the second reconcile waits for the creations it
/// expects instead of counting from the stale cache.
#[test]
fn a_cache_behind_its_own_creates_never_makes_extra_pods() {
    use flotilla_controllers::replicaset::ReplicaSetController;
    use flotilla_controllers::worker::Reconcile;
    use std::sync::{Arc, RwLock};

    let c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        let rs = client.create(replicaset("lag", 3)).await.expect("create replicaset");
        // The ReplicaSet cache is current (refreshed before each round); the pod cache
        // stays empty.
        let sets = Arc::new(RwLock::new(BTreeMap::from([("default/lag".to_string(), rs)])));
        let frozen_pods = Arc::new(RwLock::new(BTreeMap::new()));
        let ctl = ReplicaSetController::new(client.clone(), sets.clone(), frozen_pods);
        for round in 0..3 {
            let rs: pb::ReplicaSet = client.get("default", "lag").await.expect("get");
            sets.write().expect("lock").insert("default/lag".into(), rs);
            ctl.reconcile("default/lag").await.unwrap_or_else(|e| panic!("reconcile {round}: {e}"));
        }
        let pods = live_pods(&client, "lag").await;
        assert_eq!(pods.len(), 3, "{:?}", pods.iter().map(name).collect::<Vec<_>>());
    });
}

/// A ReplicaSet the apiserver would refuse (here put straight into the controller's cache,
/// as one stored before a rule existed would be) gets an Event saying why, and is left
/// alone — no error, no retry loop — while a good one beside it is served.
#[test]
fn a_bad_replicaset_gets_an_event_and_the_others_go_on() {
    use flotilla_controllers::replicaset::ReplicaSetController;
    use flotilla_controllers::worker::Reconcile;
    use std::sync::{Arc, RwLock};

    let c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        let good = client.create(replicaset("good", 2)).await.expect("create replicaset");
        let mut bad = client.create(replicaset("bad", 2)).await.expect("create replicaset");
        let sel = bad.spec.as_mut().and_then(|s| s.selector.as_mut()).expect("selector");
        sel.match_expressions.push(pb::LabelSelectorRequirement {
            key: "app".into(),
            operator: "Sideways".into(),
            values: vec![],
        });
        let sets = Arc::new(RwLock::new(BTreeMap::from([
            ("default/good".to_string(), good),
            ("default/bad".to_string(), bad),
        ])));
        let ctl = ReplicaSetController::new(client.clone(), sets, Arc::new(RwLock::new(BTreeMap::new())));
        let again = ctl.reconcile("default/bad").await.expect("a bad object is no error");
        assert_eq!(again, None, "and not looked at again until it changes");
        ctl.reconcile("default/good").await.expect("the good one");
        assert_eq!(live_pods(&client, "good").await.len(), 2);
        assert_eq!(live_pods(&client, "bad").await.len(), 0);
        let events = client.list::<pb::Event>(&ListParams::default()).await.expect("events").items;
        let said = events
            .iter()
            .find(|e| e.reason == "InvalidSpec" && e.involved_object.as_ref().is_some_and(|o| o.name == "bad"));
        let said = said.unwrap_or_else(|| panic!("no InvalidSpec event: {events:?}"));
        assert!(said.message.contains("Sideways"), "{}", said.message);
    });
}

/// Waits until the ReplicaSet `app` counts `n` pods ready and available and `n` live pods
/// exist; those pods.
async fn all_ready(c: &Cluster, client: &Client, app: &str, n: i32) -> Vec<pb::Pod> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rs: pb::ReplicaSet = client.get("default", app).await.expect("get");
        let s = rs.status.clone().unwrap_or_default();
        let pods = live_pods(client, app).await;
        if (s.replicas, s.ready_replicas, s.available_replicas) == (n, n, n) && pods.len() == n as usize {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "{app}: not {n} ready: {s:?}, pods {:?}\n{}",
            pods.iter()
                .map(|p| format!(
                    "{}@{}:{}",
                    name(p),
                    p.spec.as_ref().map(|s| s.node_name.as_str()).unwrap_or_default(),
                    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or_default()
                ))
                .collect::<Vec<_>>(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// End to end on the control plane: a ReplicaSet's pods are made by the masters'
/// controller manager, placed by their scheduler on hollow nodes (which report them Running and Ready,
/// as a kubelet would), and counted ready and available in its status; spread over both
/// nodes. A pod deleted gracefully is confirmed by its node and replaced.
#[test]
fn replicaset_pods_are_scheduled_reported_ready_and_replaced() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        let (stop_nodes, nodes_stopped) = tokio::sync::oneshot::channel::<()>();
        let nodes = tokio::spawn(flotilla_bench::hollow::run(
            client.clone(),
            vec!["h1".into(), "h2".into()],
            BTreeMap::new(),
            async move {
                let _ = nodes_stopped.await;
            },
        ));
        // Both nodes registered before any pod is placed.
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in ["h1", "h2"] {
            while client.get::<pb::Node>("", n).await.is_err() {
                assert!(!nodes.is_finished(), "the hollow nodes stopped early");
                assert!(Instant::now() < deadline, "hollow node {n} did not register");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client.create(replicaset("api", 4)).await.expect("create replicaset");
        let pods = all_ready(&c, &client, "api", 4).await;
        let on: std::collections::BTreeSet<String> =
            pods.iter().map(|p| p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default()).collect();
        assert_eq!(on, ["h1", "h2"].iter().map(|s| s.to_string()).collect(), "spread over both nodes");
        assert!(pods.iter().all(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running" && !s.pod_ip.is_empty())));

        // A graceful delete (60 s) only marks the pod; its node confirms it (as a kubelet
        // does once the containers stopped), well before the grace period ends.
        let gone = name(&pods[0]);
        let graceful = DeleteParams { grace_period_seconds: Some(60), ..Default::default() };
        let removed = client.delete::<pb::Pod>("default", &gone, &graceful).await.expect("delete pod");
        assert!(!removed, "a pod on a node is only marked for deletion");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get::<pb::Pod>("default", &gone).await.is_ok() {
            assert!(Instant::now() < deadline, "{gone} was not confirmed deleted by its node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pods = all_ready(&c, &client, "api", 4).await;
        assert!(pods.iter().all(|p| name(p) != gone));
        let _ = stop_nodes.send(());
        nodes.await.expect("hollow nodes").expect("hollow nodes ran");
    });
}
