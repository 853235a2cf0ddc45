//! The whole plane end to end: masters with their scheduler and controller manager, two
//! workers on containerd with the pod network and the service proxy, each worker a
//! network namespace of its own; clients call a Service from inside a worker's namespace
//! (pod and service addresses are never reached from the machine's own).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nodes::*;
use common::workers::*;
use common::*;
use flotilla_proto::api as pb;

fn manifest(version: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && echo $VERSION > /www/index.html && exec httpd -f -p 80 -h /www"]
        env:
        - {{name: VERSION, value: "{version}"}}
        ports:
        - {{name: http, containerPort: 80}}
        readinessProbe:
          httpGet: {{path: /, port: 80}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {{command: ["sleep", "2"]}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#,
        image = busybox_name()
    )
}

/// A Deployment of two web servers behind a Service, rolled from v1 to v2 (maxSurge 1,
/// maxUnavailable 0, a preStop pause) while a client calls the Service every 50 ms from a
/// worker's namespace: not one request fails, both versions answer during the rollout,
/// and only v2 after it.
#[test]
fn a_rolling_update_behind_a_service_fails_no_request() {
    let s = setup_with(&["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let eps = s.c.endpoints();
    let file = s.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("v1", 2)).expect("manifest");
    ctl_ok(&eps, &["apply", "-f", &file.display().to_string()]);
    let vip = rt.block_on(async {
        until(&s.c, "two ready v1 pods behind the service", || async {
            let svc = client.get::<pb::Service>("default", "web").await.ok()?;
            let pods = client.list::<pb::Pod>(&Default::default()).await.ok()?.items;
            (pods.iter().filter(|p| ready(p)).count() == 2).then_some(())?;
            svc.spec.map(|s| s.cluster_ip)
        })
        .await
    });
    let (w1, url) = (s.hosts.hosts[0].0.clone(), format!("http://{vip}/"));
    let get = move || get(&w1, &url);
    rt.block_on(async { until(&s.c, "the service answering", || async { get().ok() }).await });

    // The client: a request every 50 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let caller = {
        let (stop, ok, failed, answers, get) = (stop.clone(), ok.clone(), failed.clone(), answers.clone(), get.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get() {
                    Ok(body) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        answers.lock().expect("lock").push((Instant::now(), body));
                    }
                    Err(e) => failed.lock().expect("lock").push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::fs::write(&file, manifest("v2", 2)).expect("manifest");
    let began = Instant::now();
    ctl_ok(&eps, &["apply", "-f", &file.display().to_string()]);
    rt.block_on(async {
        until(&s.c, "the rollout done: two ready v2 pods and nothing else", || async {
            let pods = client.list::<pb::Pod>(&Default::default()).await.ok()?.items;
            let v2 = |p: &pb::Pod| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers[0].env.iter().any(|e| e.name == "VERSION" && e.value == "v2"))
            };
            (pods.len() == 2 && pods.iter().all(|p| v2(p) && ready(p))).then_some(())
        })
        .await
    });
    let (rolled, done) = (began.elapsed(), Instant::now());
    // A little longer, to see the new version alone.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(1) {
        assert_eq!(get().expect("an answer"), "v2");
    }
    stop.store(true, Ordering::Relaxed);
    caller.join().expect("caller");
    let failed = failed.lock().expect("lock").clone();
    let ok = ok.load(Ordering::Relaxed);
    println!("rolled v1 -> v2 in {rolled:?}: {ok} requests answered, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed during the rollout: {failed:?}");
    assert!(ok >= 20, "the client kept calling: {ok}");
    let during: std::collections::BTreeSet<String> = answers
        .lock()
        .expect("lock")
        .iter()
        .filter(|(at, _)| *at >= began && *at <= done)
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(during, ["v1", "v2"].map(String::from).into(), "both versions answered while it rolled");
}

/// Applies the web Deployment (v1, `replicas`) and Service and waits for its ready pods.
fn deploy(s: &Setup, rt: &tokio::runtime::Runtime, replicas: u32) -> Vec<pb::Pod> {
    let file = s.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("v1", replicas)).expect("manifest");
    ctl_ok(&s.c.endpoints(), &["apply", "-f", &file.display().to_string()]);
    let client = s.c.client(rt);
    rt.block_on(async {
        until(&s.c, &format!("{replicas} ready web pods"), || async {
            let pods = live_pods(&client).await?;
            (pods.len() == replicas as usize && pods.iter().all(ready)).then_some(pods)
        })
        .await
    })
}

/// The web pods not being deleted.
async fn live_pods(client: &flotilla_client::Client) -> Option<Vec<pb::Pod>> {
    let pods = client.list::<pb::Pod>(&Default::default()).await.ok()?.items;
    Some(pods.into_iter().filter(|p| p.metadata.as_ref().is_some_and(|m| m.deletion_timestamp.is_empty())).collect())
}

fn name_of(p: &pb::Pod) -> String {
    p.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

fn node_of(p: &pb::Pod) -> String {
    p.spec.as_ref().map(|s| s.node_name.clone()).unwrap_or_default()
}

/// Self-healing on containerd with the default timings: a container killed behind the
/// kubelet's back is restarted in its pod; a deleted pod is replaced; a worker killed with
/// kill -9 (its node stops renewing its Lease) has its pods replaced on the other worker
/// within 30 s (the node grace period is 15 s).
#[test]
fn a_deployment_heals_a_killed_container_a_deleted_pod_and_a_lost_worker() {
    let mut s = setup_with(&["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = s.c.client(&rt);
    let pods = deploy(&s, &rt, 2);

    // A container killed: the same pod runs it again and is ready again.
    let victim = pods[0].clone();
    let worker = s.workers.iter().find(|w| w.name == node_of(&victim)).expect("the pod's worker");
    let killed = s.ctd.ctr(&["-n", &worker.ns, "tasks", "kill", "-s", "SIGKILL", &container_id(&victim)]);
    assert!(killed.status.success(), "ctr tasks kill: {}", String::from_utf8_lossy(&killed.stderr));
    let since = Instant::now();
    rt.block_on(async {
        until(&s.c, "the killed container restarted in its pod, which is ready again", || async {
            let p = client.get::<pb::Pod>("default", &name_of(&victim)).await.ok()?;
            (main_status(&p).restart_count >= 1 && ready(&p) && container_id(&p) != container_id(&victim)).then_some(())
        })
        .await
    });
    println!("killed container: running and ready again in its pod after {:?}", since.elapsed());

    // A pod deleted: another takes its place.
    let deleted = name_of(&pods[1]);
    let since = Instant::now();
    rt.block_on(client.delete::<pb::Pod>("default", &deleted, &Default::default())).expect("delete");
    rt.block_on(async {
        until(&s.c, "the deleted pod replaced", || async {
            let pods = live_pods(&client).await?;
            let ok = pods.len() == 2 && pods.iter().all(|p| ready(p) && name_of(p) != deleted);
            ok.then_some(())
        })
        .await
    });
    println!("deleted pod: replaced and ready after {:?}", since.elapsed());

    // A worker killed: its pods run on the other one within 30 s.
    let pods = rt.block_on(live_pods(&client)).expect("pods");
    let lost = node_of(&pods[0]);
    let since = Instant::now();
    s.workers.iter_mut().find(|w| w.name == lost).expect("worker").kill();
    let took = rt.block_on(async {
        until(&s.c, "the lost worker's pods running and ready elsewhere", || async {
            let pods = live_pods(&client).await?;
            let ok = pods.len() == 2 && pods.iter().all(|p| ready(p) && node_of(p) != lost);
            ok.then(|| since.elapsed())
        })
        .await
    });
    println!("killed worker {lost}: its pods running and ready on the other worker after {took:?}");
    assert!(took <= Duration::from_secs(30), "replaced after {took:?}");
}

/// The master (index) whose `component` (`scheduler`, `controller_manager`) leads.
fn holder(c: &Cluster, component: &str) -> Option<usize> {
    let name = format!("flotilla_{component}_is_leader");
    let leading: Vec<usize> = (0..c.members.len())
        .filter(|&i| c.members[i].child.is_some() && metric(&c.members[i], &name) == Some(1.0))
        .collect();
    (leading.len() == 1).then(|| leading[0])
}

/// kill -9 of the master running the active scheduler and controller manager: the other
/// masters' candidates take over within 2 s, and a scale-up asked for just after the
/// kill is carried out (pods created, bound and running on containerd).
#[test]
fn killing_the_master_of_the_scheduler_and_controller_manager_hands_both_over_and_a_scale_up_completes() {
    let mut s = setup_with(&["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    deploy(&s, &rt, 1);
    // Both locks on one master: while they are not, the controller manager's master is
    // restarted (its lock moves to one of the others).
    let mut victim = None;
    for _ in 0..12 {
        let (mut sched, mut cm) = (None, None);
        s.c.eventually(Duration::from_secs(30), "one scheduler and one controller manager lead", || {
            (sched, cm) = (holder(&s.c, "scheduler"), holder(&s.c, "controller_manager"));
            sched.is_some() && cm.is_some()
        });
        let (sched, cm) = (sched.expect("scheduler"), cm.expect("controller manager"));
        if sched == cm {
            victim = Some(sched);
            break;
        }
        s.c.kill(cm);
        s.c.eventually(Duration::from_secs(30), "another controller manager leading", || {
            holder(&s.c, "controller_manager").is_some()
        });
        s.c.spawn(cm, "new");
        s.c.wait_leader(Duration::from_secs(30));
    }
    let victim = victim.expect("the scheduler and the controller manager never led on the same master");
    let survivors: Vec<String> = (0..3).filter(|&i| i != victim).map(|i| s.c.members[i].endpoint()).collect();
    let client = rt.block_on(async { common::admin_client(&survivors) }).expect("client");
    let before: std::collections::BTreeSet<String> =
        rt.block_on(live_pods(&client)).expect("pods").iter().map(name_of).collect();
    let since = Instant::now();
    s.c.kill(victim);
    // Through the survivors, again while the store elects a new leader if it must.
    s.c.eventually(Duration::from_secs(10), "the scale-up accepted", || {
        ctl(&survivors.join(","), &["scale", "deployment", "web", "--replicas", "3"]).status.success()
    });
    // Both take over; the first new pod is created (controller manager) and bound
    // (scheduler).
    let (mut sched_at, mut cm_at, mut created_at, mut bound_at) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (sched_at, cm_at, created_at, bound_at) = loop {
        if let (Some(a), Some(b), Some(c), Some(d)) = (sched_at, cm_at, created_at, bound_at) {
            break (a, b, c, d);
        }
        assert!(Instant::now() < deadline, "no takeover within 30 s\n{}", s.c.logs());
        if sched_at.is_none() && holder(&s.c, "scheduler").is_some() {
            sched_at = Some(since.elapsed());
        }
        if cm_at.is_none() && holder(&s.c, "controller_manager").is_some() {
            cm_at = Some(since.elapsed());
        }
        let pods = rt.block_on(live_pods(&client)).unwrap_or_default();
        let new: Vec<&pb::Pod> = pods.iter().filter(|p| !before.contains(&name_of(p))).collect();
        if created_at.is_none() && !new.is_empty() {
            created_at = Some(since.elapsed());
        }
        if bound_at.is_none() && new.iter().any(|p| !node_of(p).is_empty()) {
            bound_at = Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "killed master {}: scheduler leading again after {sched_at:?}, controller manager after {cm_at:?}; \
         first new pod created after {created_at:?}, bound after {bound_at:?}",
        s.c.members[victim].name
    );
    assert!(sched_at <= Duration::from_secs(2) && cm_at <= Duration::from_secs(2), "takeover too slow");
    assert!(
        created_at <= Duration::from_secs(2) && bound_at <= Duration::from_secs(2),
        "the new leaders too slow to act"
    );
    rt.block_on(async {
        until(&s.c, "the scale-up done: 3 running, ready pods", || async {
            let pods = live_pods(&client).await?;
            (pods.len() == 3 && pods.iter().all(|p| running(p) && ready(p))).then_some(())
        })
        .await
    });
    println!("scale-up complete after {:?}", since.elapsed());
}

/// Every master's data restored from a snapshot (`flotilla snapshot restore
/// --bump-revision --mark-compacted`) while the workers run on: they list again and
/// reconcile with the restored state — a pod created after the snapshot is stopped, the
/// snapshot's pods keep their containers, and a scale-up afterwards is carried out.
#[test]
fn workers_reconcile_against_a_cluster_restored_from_a_snapshot() {
    let mut s = setup_with(&["--cluster-cidr", "10.244.0.0/16"], &["--cluster-cidr", "10.244.0.0/16"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let before = deploy(&s, &rt, 2);
    let file = s.dir.path().join("backup.snap");
    ctl_ok(&s.c.endpoints(), &["cluster", "snapshot", "save", &file.display().to_string()]);

    // After the snapshot: a pod the restored cluster will not know.
    let client = s.c.client(&rt);
    rt.block_on(client.create(pod("late", "w1", &busybox_name(), "exec sleep 1000"))).expect("create");
    let late = rt.block_on(async {
        until(&s.c, "the late pod running", || async {
            let p = client.get::<pb::Pod>("default", "late").await.ok()?;
            running(&p).then(|| container_id(&p))
        })
        .await
    });
    drop(client);

    // Every master killed, wiped and restored from the file.
    for i in 0..3 {
        s.c.kill(i);
        std::fs::remove_dir_all(&s.c.members[i].data_dir).expect("wipe");
    }
    for i in 0..3 {
        let out = std::process::Command::new(bin())
            .args(["snapshot", "restore", &file.display().to_string(), "--name", &s.c.members[i].name])
            .args(["--initial-cluster", &s.c.initial_cluster])
            .args(["--data-dir", &s.c.members[i].data_dir.display().to_string()])
            .args(["--bump-revision", "1000000", "--mark-compacted"])
            .output()
            .expect("flotilla snapshot restore");
        assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    for i in 0..3 {
        s.c.spawn(i, "new");
    }
    s.c.wait_leader(Duration::from_secs(30));
    let client = s.c.client(&rt);

    // The workers listed again; w1 stopped the pod the restored state does not hold.
    let w1 = s.workers.iter().find(|w| w.name == "w1").expect("w1");
    s.c.eventually(Duration::from_secs(30), "the late pod's container stopped on w1", || {
        // Listed successfully (a failed `ctr` must not pass for "stopped").
        let out = s.ctd.ctr(&["-n", &w1.ns, "tasks", "ls"]);
        assert!(out.status.success(), "ctr tasks ls: {}", String::from_utf8_lossy(&out.stderr));
        !s.ctd.tasks(&w1.ns).iter().any(|(id, _, status)| *id == late && status == "RUNNING")
    });
    for w in &s.workers {
        let lists =
            w.metrics().lines().find_map(|l| l.strip_prefix("flotilla_kubelet_pod_lists ")?.parse::<u64>().ok());
        assert!(lists.is_some_and(|n| n >= 2), "{} listed again after the restore: {lists:?}", w.name);
    }
    // The snapshot's pods: the same containers, never restarted, ready.
    let want: std::collections::BTreeMap<String, String> =
        before.iter().map(|p| (name_of(p), container_id(p))).collect();
    rt.block_on(async {
        until(&s.c, "the snapshot's pods ready on their first containers", || async {
            let pods = live_pods(&client).await?;
            let have: std::collections::BTreeMap<String, String> = pods
                .iter()
                .filter(|p| ready(p) && main_status(p).restart_count == 0)
                .map(|p| (name_of(p), container_id(p)))
                .collect();
            (have == want).then_some(())
        })
        .await
    });
    assert!(
        rt.block_on(client.get::<pb::Pod>("default", "late")).is_err(),
        "the late pod is not in the restored state"
    );

    // And the restored cluster runs the workers as before.
    ctl_ok(&s.c.endpoints(), &["scale", "deployment", "web", "--replicas", "3"]);
    rt.block_on(async {
        until(&s.c, "the scale-up after the restore done", || async {
            let pods = live_pods(&client).await?;
            (pods.len() == 3 && pods.iter().all(|p| running(p) && ready(p))).then_some(())
        })
        .await
    });
}
