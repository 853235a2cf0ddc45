//! The Deployment controller against real masters (their own elected controller manager
//! and scheduler) and hollow nodes that report pods Ready as a kubelet would.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams, WatchEvent};
use flotilla_proto::api as pb;
use tokio_stream::StreamExt;

fn deployment(name: &str, replicas: i32, image: &str, surge: &str, unavailable: &str) -> pb::Deployment {
    let rs = replicaset(name, replicas).spec.expect("spec");
    let mut template = rs.template.expect("template");
    template.spec.as_mut().expect("pod spec").containers[0].image = image.into();
    pb::Deployment {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::DeploymentSpec {
            replicas: Some(replicas),
            selector: rs.selector,
            template: Some(template),
            strategy: Some(pb::DeploymentStrategy {
                r#type: "RollingUpdate".into(),
                rolling_update: Some(pb::RollingUpdateDeployment {
                    max_surge: surge.into(),
                    max_unavailable: unavailable.into(),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn image_of(p: &pb::Pod) -> String {
    p.spec.as_ref().map(|s| s.containers[0].image.clone()).unwrap_or_default()
}

fn live(p: &pb::Pod) -> bool {
    p.metadata.as_ref().is_some_and(|m| m.deletion_timestamp.is_empty())
        && p.status.as_ref().is_none_or(|s| s.phase != "Succeeded" && s.phase != "Failed")
}

fn ready(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.r#type == "Ready" && c.status == "True"))
}

/// What a watch on the Deployment's pods saw, after every change.
#[derive(Debug, Default)]
struct Extremes {
    most_live: usize,
    least_ready: usize,
    /// Whether live pods of the new image and of another ran at the same time.
    mixed: bool,
    /// Live pods of `image` all ready, as many as the Deployment asks, and no other live pod.
    done: bool,
}

/// Lists and then watches the pods labelled `app=<app>` until all `want` live pods run
/// `image` and are ready and no other pod is live (or `within` passes), tracking the most
/// live pods and the fewest ready ones after any change. After each change `progress` is
/// sent the number of ready pods running `image`. `listed` is told when the watch runs.
async fn watch_rollout(
    client: Client,
    app: String,
    image: String,
    want: usize,
    within: Duration,
    listed: tokio::sync::oneshot::Sender<()>,
    progress: tokio::sync::watch::Sender<usize>,
) -> Extremes {
    let p = ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
    let list = client.list::<pb::Pod>(&p).await.expect("list pods");
    let mut pods: BTreeMap<String, pb::Pod> =
        list.items.into_iter().map(|p| (p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), p)).collect();
    let mut events = client.watch::<pb::Pod>(&p, &list.resource_version).await.expect("watch pods");
    let _ = listed.send(());
    let mut x = Extremes { most_live: 0, least_ready: usize::MAX, mixed: false, done: false };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let live: Vec<&pb::Pod> = pods.values().filter(|p| live(p)).collect();
        let ready_n = live.iter().filter(|p| ready(p)).count();
        x.most_live = x.most_live.max(live.len());
        x.least_ready = x.least_ready.min(ready_n);
        x.mixed |= live.iter().any(|p| image_of(p) == image) && live.iter().any(|p| image_of(p) != image);
        let _ = progress.send(live.iter().filter(|p| ready(p) && image_of(p) == image).count());
        if live.len() == want && live.iter().all(|p| ready(p) && image_of(p) == image) {
            x.done = true;
            return x;
        }
        let ev = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(ev)) => ev.expect("watch event"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => return x,
        };
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                pods.insert(p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), p);
            }
            WatchEvent::Deleted(p) => {
                pods.remove(&p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default());
            }
        }
    }
}

/// Sets the Deployment's image (a read-modify-write, retried on conflict).
async fn set_image(client: &Client, name: &str, image: &str) {
    for _ in 0..20 {
        let mut d: pb::Deployment = client.get("default", name).await.expect("get deployment");
        let t = d.spec.as_mut().and_then(|s| s.template.as_mut()).and_then(|t| t.spec.as_mut()).expect("template");
        t.containers[0].image = image.into();
        match client.update(d).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("updating {name}: {e}"),
        }
    }
    panic!("updating {name}: 20 conflicts in a row");
}

/// Waits until the Deployment's status says `want` updated, ready and available pods of
/// the generation it has now, and returns it.
async fn rolled_out(c: &Cluster, client: &Client, name: &str, want: i32) -> pb::Deployment {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d: pb::Deployment = client.get("default", name).await.expect("get deployment");
        let s = d.status.clone().unwrap_or_default();
        let generation = d.metadata.as_ref().map_or(0, |m| m.generation);
        let progressing = s.conditions.iter().find(|c| c.r#type == "Progressing").map(|c| c.reason.clone());
        if s.observed_generation == generation
            && (s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas) == (want, want, want, want)
            && progressing.as_deref() == Some("NewReplicaSetAvailable")
        {
            return d;
        }
        assert!(Instant::now() < deadline, "{name} did not roll out: {s:?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The master whose controller manager holds the lock, if one does.
fn manager_leader(c: &Cluster) -> Option<usize> {
    (0..c.members.len()).find(|&i| {
        c.members[i].child.is_some() && metric(&c.members[i], "flotilla_controller_manager_is_leader") == Some(1.0)
    })
}

/// A rolling update of 10 replicas with maxSurge 2 and maxUnavailable 1, watched pod by
/// pod: never more than 12 live pods, never fewer than 9 ready. In the middle of a second
/// one the master whose controller manager leads is SIGKILLed; another master's takes
/// over and the rollout completes within the same bounds. The ReplicaSets carry
/// revisions 1, 2 and 3.
#[test]
fn a_rolling_update_stays_within_surge_and_unavailability_through_a_controller_manager_failover() {
    let mut c = Cluster::start_with_scheduler(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let stop_nodes = rt.block_on(async {
        let stop = hollow_nodes(&client, &["h1", "h2", "h3"]).await;
        client.create(deployment("web", 10, "busybox:1.36", "2", "1")).await.expect("create deployment");
        rolled_out(&c, &client, "web", 10).await;
        stop
    });
    for (round, image, kill) in [(1, "busybox:1.37", false), (2, "busybox:1.38", true)] {
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
        let watcher = rt.spawn(watch_rollout(
            client.clone(),
            "web".into(),
            image.into(),
            10,
            Duration::from_secs(90),
            listed_tx,
            progress_tx,
        ));
        rt.block_on(async {
            listed.await.expect("the watch runs");
            set_image(&client, "web", image).await;
        });
        if kill {
            rt.block_on(async {
                let _ = progress.wait_for(|n| *n >= 3).await;
            });
            let leader = manager_leader(&c).expect("a controller manager leads");
            c.kill(leader);
            eprintln!("round {round}: killed master {leader}, whose controller manager led, mid-rollout");
        }
        let x = rt.block_on(watcher).expect("watcher");
        assert!(x.done, "round {round}: the rollout to {image} did not complete: {x:?}\n{}", c.logs());
        assert!(x.most_live <= 12, "round {round}: {} live pods, more than 10 + maxSurge 2", x.most_live);
        assert!(x.least_ready >= 9, "round {round}: {} ready pods, fewer than 10 - maxUnavailable 1", x.least_ready);
        eprintln!("round {round}: at most {} live pods, at least {} ready", x.most_live, x.least_ready);
    }
    rt.block_on(async {
        let d = rolled_out(&c, &client, "web", 10).await;
        let rev = d.metadata.as_ref().and_then(|m| m.annotations.get("deployment.kubernetes.io/revision").cloned());
        assert_eq!(rev.as_deref(), Some("3"));
        let sets = client
            .list::<pb::ReplicaSet>(&ListParams { namespace: "default".into(), ..Default::default() })
            .await
            .expect("replicasets")
            .items;
        let revisions: BTreeSet<(String, i32)> = sets
            .iter()
            .map(|rs| {
                let m = rs.metadata.clone().unwrap_or_default();
                (
                    m.annotations.get("deployment.kubernetes.io/revision").cloned().unwrap_or_default(),
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(
            revisions,
            BTreeSet::from([("1".to_string(), 0), ("2".to_string(), 0), ("3".to_string(), 10)]),
            "one ReplicaSet per template, only the newest scaled up"
        );
        let _ = stop_nodes.send(());
    });
}

/// Starts watching a rollout of `app` to `image` (returns once the watch runs).
fn watch_in_background(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    app: &str,
    image: &str,
    want: usize,
) -> tokio::task::JoinHandle<Extremes> {
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let (progress, _) = tokio::sync::watch::channel(0usize);
    let w = rt.spawn(watch_rollout(
        client.clone(),
        app.into(),
        image.into(),
        want,
        Duration::from_secs(60),
        listed_tx,
        progress,
    ));
    rt.block_on(listed).expect("the watch runs");
    w
}

fn pod_images(rt: &tokio::runtime::Runtime, client: &Client, app: &str) -> BTreeMap<String, String> {
    rt.block_on(async {
        let p = ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
        client
            .list::<pb::Pod>(&p)
            .await
            .expect("pods")
            .items
            .into_iter()
            .filter(live)
            .map(|p| (p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), image_of(&p)))
            .collect()
    })
}

/// flotctl drives rollouts: `rollout status` waits for each; `set image` rolls to a new
/// template (and names a container that does not exist); `rollout history` lists the
/// revisions; `rollout undo` puts the previous template back (its ReplicaSet becomes the
/// newest revision); a paused Deployment does not roll until resumed; `rollout restart`
/// replaces every pod; the Recreate strategy never runs old and new pods together; a
/// rollout that cannot progress is reported past its deadline, and `rollout status` fails.
#[test]
fn flotctl_rolls_out_undoes_pauses_and_restarts_deployments() {
    let c = Cluster::start_with_scheduler(3, &[]);
    let eps = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let stop_nodes = rt.block_on(async {
        let stop = hollow_nodes(&client, &["h1", "h2"]).await;
        client.create(deployment("api", 3, "busybox:v1", "1", "0")).await.expect("create deployment");
        stop
    });
    let status = |c: &Cluster| {
        let out = ctl_ok(&eps, &["rollout", "status", "deployment/api", "--timeout", "60s"]);
        assert!(out.trim_end().ends_with("\"api\" successfully rolled out"), "{out}\n{}", c.logs());
    };
    status(&c);
    let images = |want: &str| {
        let imgs = pod_images(&rt, &client, "api");
        assert_eq!(imgs.len(), 3, "{imgs:?}");
        assert!(imgs.values().all(|i| i == want), "not all {want}: {imgs:?}");
        imgs
    };
    images("busybox:v1");

    // set image: a new revision.
    assert!(ctl_ok(&eps, &["set", "image", "deployment/api", "main=busybox:v2"]).contains("image updated"));
    status(&c);
    images("busybox:v2");
    let err = ctl_fails(&eps, &["set", "image", "deployment/api", "nope=busybox:v9"]);
    assert!(err.contains("no container \"nope\" (it has: main)"), "{err}");
    let history = ctl_ok(&eps, &["rollout", "history", "deployment/api"]);
    let rows: Vec<Vec<&str>> = history.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, vec![vec!["1", "busybox:v1", "<none>"], vec!["2", "busybox:v2", "<none>"]], "{history}");

    // undo: back to v1, which becomes revision 3.
    assert!(ctl_ok(&eps, &["rollout", "undo", "deployment/api"]).contains("rolled back to revision 1"));
    status(&c);
    images("busybox:v1");
    let history = ctl_ok(&eps, &["rollout", "history", "deployment/api"]);
    let revs: Vec<&str> = history.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revs, vec!["2", "3"], "{history}");
    let shown = ctl_ok(&eps, &["rollout", "history", "deployment/api", "--revision", "3"]);
    assert!(shown.contains("image: busybox:v1"), "{shown}");

    // pause: a template change waits (observed, but no ReplicaSet for it) until resume.
    assert!(ctl_ok(&eps, &["rollout", "pause", "deployment/api"]).contains("paused"));
    ctl_ok(&eps, &["set", "image", "deployment/api", "main=busybox:v3"]);
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d: pb::Deployment = client.get("default", "api").await.expect("get");
            let s = d.status.clone().unwrap_or_default();
            let paused = s.conditions.iter().any(|c| c.r#type == "Progressing" && c.reason == "DeploymentPaused");
            if paused && s.observed_generation == d.metadata.as_ref().map_or(0, |m| m.generation) {
                break;
            }
            assert!(Instant::now() < deadline, "the paused deployment's change was not observed: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let err = ctl_fails(&eps, &["rollout", "status", "deployment/api"]);
    assert!(err.contains("is paused"), "{err}");
    images("busybox:v1");
    let sets = rt.block_on(client.list::<pb::ReplicaSet>(&ListParams::default())).expect("replicasets").items;
    assert_eq!(sets.len(), 2, "no ReplicaSet for the paused template");
    assert!(ctl_ok(&eps, &["rollout", "resume", "deployment/api"]).contains("resumed"));
    status(&c);
    images("busybox:v3");

    // restart: every pod replaced, same image.
    let before = images("busybox:v3");
    assert!(ctl_ok(&eps, &["rollout", "restart", "deployment/api"]).contains("restarted"));
    status(&c);
    let after = images("busybox:v3");
    assert!(before.keys().all(|n| !after.contains_key(n)), "every pod replaced: {before:?} {after:?}");

    // Recreate: the old pods are gone before any new one runs.
    rt.block_on(async {
        let mut d: pb::Deployment = client.get("default", "api").await.expect("get");
        d.spec.as_mut().expect("spec").strategy =
            Some(pb::DeploymentStrategy { r#type: "Recreate".into(), rolling_update: None });
        client.update(d).await.expect("switch to Recreate");
    });
    let w = watch_in_background(&rt, &client, "api", "busybox:v4", 3);
    ctl_ok(&eps, &["set", "image", "deployment/api", "main=busybox:v4"]);
    let x = rt.block_on(w).expect("watcher");
    assert!(x.done, "the Recreate rollout did not complete: {x:?}\n{}", c.logs());
    assert!(!x.mixed, "old and new pods ran together under Recreate");
    status(&c);

    // A rollout that cannot progress (its pods fit no node) passes its deadline.
    rt.block_on(async {
        let mut d: pb::Deployment = client.get("default", "api").await.expect("get");
        let spec = d.spec.as_mut().expect("spec");
        spec.progress_deadline_seconds = Some(2);
        let t = spec.template.as_mut().and_then(|t| t.spec.as_mut()).expect("template");
        t.containers[0].resources =
            Some(pb::ResourceRequirements { requests: labels(&[("cpu", "1000")]), ..Default::default() });
        client.update(d).await.expect("an unschedulable template");
    });
    let err = ctl_fails(&eps, &["rollout", "status", "deployment/api", "--timeout", "60s"]);
    assert!(err.contains("exceeded its progress deadline"), "{err}\n{}", c.logs());
    let _ = stop_nodes.send(());
}
