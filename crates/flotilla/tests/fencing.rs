//! Fencing proven by the store, not by the elector's good manners: a scheduler that keeps
//! acting after losing its lock (the debug-only FLOTILLA_FAULT_IGNORE_LEADERSHIP_LOSS) has
//! every bind, status write and Event refused as fenced, and no pod is bound twice; a
//! controller manager doing the same has its creates refused, and no ReplicaSet gets a
//! pod more than it asked for. CI
//! also runs these tests with the apiserver's fence compare switched off
//! (FLOTILLA_FAULT_NO_FENCE=1) and requires them to fail.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientError, ListParams};
use flotilla_proto::api as pb;

fn node(name: &str) -> pb::Node {
    let cap = labels(&[("cpu", "64"), ("memory", "64Gi"), ("pods", "200")]);
    pb::Node {
        metadata: Some(pb::ObjectMeta { name: name.into(), ..Default::default() }),
        spec: None,
        status: Some(pb::NodeStatus {
            capacity: cap.clone(),
            allocatable: cap,
            conditions: vec![pb::Condition { r#type: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        }),
    }
}

fn pod(name: &str, cpu: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: "main".into(),
                image: "busybox:1.36".into(),
                resources: Some(pb::ResourceRequirements { requests: labels(&[("cpu", cpu)]), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// A `flotilla scheduler` or `flotilla controller-manager` process; killed when dropped.
struct Candidate {
    child: Child,
    metrics: u16,
}

impl Candidate {
    /// Starts `flotilla <command>` (scheduler or controller-manager) against the cluster.
    fn start(c: &Cluster, command: &str, identity: &str, ignore_loss: bool) -> Candidate {
        let metrics = free_port();
        let log = std::fs::File::create(c.dir.path().join(format!("{command}-{identity}.log"))).expect("log");
        let mut cmd = Command::new(bin());
        cmd.args([command, "--masters", &c.endpoints(), "--identity", identity])
            .args(["--listen-metrics", &format!("127.0.0.1:{metrics}")])
            .env("FLOTILLA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if ignore_loss {
            cmd.env("FLOTILLA_FAULT_IGNORE_LEADERSHIP_LOSS", "1");
        }
        if let Some(pki) = c.pki() {
            // Its own certificate: the user RBAC knows it as, and whose writes need a fence.
            if !pki.join(format!("{command}.crt")).exists() {
                certs(&["issue", "--dir", &pki.display().to_string(), command]);
            }
            cmd.arg("--cacert").arg(pki.join("ca.crt"));
            cmd.arg("--cert").arg(pki.join(format!("{command}.crt")));
            cmd.arg("--key").arg(pki.join(format!("{command}.key")));
        }
        Candidate { child: cmd.spawn().unwrap_or_else(|e| panic!("spawn flotilla {command}: {e}")), metrics }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        metric_at(self.metrics, name)
    }

    fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Reads a metric from `/metrics` on a local port.
fn metric_at(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits for `f`, up to `within`.
fn wait_for(c: &Cluster, within: Duration, what: &str, f: impl FnMut() -> bool) {
    c.eventually(within, what, f);
}

/// Creates a pod as a careful client does while a master may be paused: a create whose
/// outcome is unknown (the master stopped answering mid-call) is sent again, and
/// "already exists" after such a retry means the first one landed.
async fn create_once(client: &Client, p: pb::Pod) {
    let mut unsure = false;
    for _ in 0..10 {
        match client.create(p.clone()).await {
            Ok(_) => return,
            Err(ClientError::Indeterminate(_)) | Err(ClientError::Unavailable(_)) => unsure = true,
            Err(e) if unsure && e.code() == Some(tonic::Code::AlreadyExists) => return,
            Err(e) => panic!("create pod: {e}"),
        }
    }
    panic!("create pod: no outcome after 10 tries");
}

/// Creates `n` schedulable pods named `prefix-i` and one that fits nowhere, and waits
/// until the first are bound and the last is reported unschedulable.
async fn churn(c: &Cluster, client: &Client, prefix: &str, n: usize) {
    for i in 0..n {
        create_once(client, pod(&format!("{prefix}-{i}"), "100m")).await;
    }
    create_once(client, pod(&format!("{prefix}-huge"), "1000")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = client.list::<pb::Pod>(&ListParams { namespace: "default".into(), ..Default::default() }).await;
        let pods = pods.expect("list").items;
        let mine: Vec<&pb::Pod> =
            pods.iter().filter(|p| p.metadata.as_ref().is_some_and(|m| m.name.starts_with(prefix))).collect();
        let bound = mine.iter().filter(|p| p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty())).count();
        let reported = mine.iter().any(|p| {
            p.status.iter().flat_map(|s| &s.conditions).any(|c| c.r#type == "PodScheduled" && c.status == "False")
        });
        if bound == n && reported {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix}: {bound}/{n} bound, reported: {reported}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every pod has at most one Scheduled Event, and the node its Event names is the node
/// it is bound to: no pod was bound twice, and no deposed scheduler's Event landed.
async fn bound_once(client: &Client) {
    let events = client
        .list::<pb::Event>(&ListParams { namespace: "default".into(), ..Default::default() })
        .await
        .expect("events")
        .items;
    let pods = client.list::<pb::Pod>(&ListParams { namespace: "default".into(), ..Default::default() }).await;
    for p in pods.expect("pods").items {
        let m = p.metadata.clone().unwrap_or_default();
        let node = p.spec.map(|s| s.node_name).unwrap_or_default();
        let scheduled: Vec<&pb::Event> = events
            .iter()
            .filter(|e| e.reason == "Scheduled" && e.involved_object.as_ref().is_some_and(|o| o.name == m.name))
            .collect();
        assert!(scheduled.len() <= 1, "{}: {} Scheduled events: {scheduled:?}", m.name, scheduled.len());
        assert!(scheduled.iter().all(|e| e.message.ends_with(&format!(" to {node}"))), "{}: {scheduled:?}", m.name);
        if let Some(e) = scheduled.first() {
            assert_eq!(e.count, 1, "{}: {e:?}", m.name);
        }
    }
}

/// Two standalone schedulers. The first, which ignores losing its lock, leads and is then
/// SIGSTOPped past its lease; the second takes over and places pods. Resumed, the first
/// goes on scheduling as if it led: the store refuses its binds, status writes and Events
/// as fenced, and every pod is bound once, by the second.
#[test]
fn a_paused_standalone_scheduler_is_fenced_when_it_wakes() {
    let c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        for n in ["n1", "n2", "n3"] {
            client.create(node(n)).await.expect("node");
        }
        client
    });
    let first = Candidate::start(&c, "scheduler", "first", true);
    wait_for(&c, Duration::from_secs(30), "the first scheduler leads", || {
        first.metric("flotilla_scheduler_is_leader") == Some(1.0)
    });
    rt.block_on(churn(&c, &client, "before", 5));
    first.signal("STOP");
    let second = Candidate::start(&c, "scheduler", "second", false);
    wait_for(&c, Duration::from_secs(30), "the second scheduler takes over", || {
        second.metric("flotilla_scheduler_is_leader") == Some(1.0)
    });
    rt.block_on(churn(&c, &client, "during", 5));
    first.signal("CONT");
    rt.block_on(churn(&c, &client, "after", 20));
    wait_for(&c, Duration::from_secs(30), "the woken scheduler's writes are refused as fenced", || {
        first.metric("flotilla_scheduler_fenced_writes_total").is_some_and(|n| n > 0.0)
    });
    assert_eq!(first.metric("flotilla_scheduler_is_leader"), Some(1.0), "it still believes it leads (the fault)");
    rt.block_on(bound_once(&client));
}

/// The same with whole masters: the master whose scheduler candidate leads is SIGSTOPped
/// (its store member too) past the lock's lease; another master's candidate takes over;
/// the first, resumed, is fenced through its own apiserver.
#[test]
fn a_paused_master_scheduler_is_fenced_when_it_wakes() {
    // Every master's candidate ignores losing its lock: the worst case.
    let c = Cluster::start_with_env(3, &[], &[("FLOTILLA_FAULT_IGNORE_LEADERSHIP_LOSS", "1")]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let client = common::admin_client(&c.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>()).expect("client");
        for n in ["n1", "n2", "n3"] {
            client.create(node(n)).await.expect("node");
        }
        client
    });
    let leading = |c: &Cluster| {
        (0..3).filter(|&i| metric(&c.members[i], "flotilla_scheduler_is_leader") == Some(1.0)).collect::<Vec<_>>()
    };
    let mut first = None;
    wait_for(&c, Duration::from_secs(30), "a master's scheduler leads", || {
        first = leading(&c).first().copied();
        first.is_some()
    });
    let first = first.expect("leader");
    rt.block_on(churn(&c, &client, "before", 5));
    let pid = c.members[first].child.as_ref().expect("running").id();
    signal(pid, "STOP");
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    wait_for(&c, Duration::from_secs(30), "another master's scheduler takes over", || {
        others.iter().any(|&i| metric(&c.members[i], "flotilla_scheduler_is_leader") == Some(1.0))
    });
    rt.block_on(churn(&c, &client, "during", 5));
    signal(pid, "CONT");
    rt.block_on(churn(&c, &client, "after", 20));
    wait_for(&c, Duration::from_secs(30), "the woken master's scheduler is refused as fenced", || {
        metric(&c.members[first], "flotilla_scheduler_fenced_writes_total").is_some_and(|n| n > 0.0)
    });
    rt.block_on(bound_once(&client));
}

/// Creates ReplicaSets `<prefix>-i` of `replicas` pods each (re-sending a create whose
/// outcome is unknown), and waits until each has exactly that many pods.
async fn replica_churn(c: &Cluster, client: &Client, prefix: &str, sets: usize, replicas: usize) {
    for i in 0..sets {
        let rs = replicaset(&format!("{prefix}-{i}"), replicas as i32);
        let mut unsure = false;
        loop {
            match client.create(rs.clone()).await {
                Ok(_) => break,
                Err(ClientError::Indeterminate(_)) | Err(ClientError::Unavailable(_)) => unsure = true,
                Err(e) if unsure && e.code() == Some(tonic::Code::AlreadyExists) => break,
                Err(e) => panic!("create replicaset: {e}"),
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..sets {
        let app = format!("{prefix}-{i}");
        loop {
            let p =
                ListParams { namespace: "default".into(), label_selector: format!("app={app}"), ..Default::default() };
            let n = client.list::<pb::Pod>(&p).await.map(|l| l.items.len()).unwrap_or(usize::MAX);
            if n == replicas {
                break;
            }
            assert!(Instant::now() < deadline, "{app}: {n} pods, not {replicas}\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every ReplicaSet created exactly as many pods as it asked for, and deleted none: the
/// pods its SuccessfulCreate Events name are as many as its replicas.
async fn created_once(client: &Client) {
    let events = client
        .list::<pb::Event>(&ListParams { namespace: "default".into(), ..Default::default() })
        .await
        .expect("events")
        .items;
    let sets = client.list::<pb::ReplicaSet>(&ListParams::default()).await.expect("replicasets").items;
    assert!(!sets.is_empty());
    for rs in sets {
        let name = rs.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let about = |reason: &str| -> std::collections::BTreeSet<String> {
            events
                .iter()
                .filter(|e| e.reason == reason && e.involved_object.as_ref().is_some_and(|o| o.name == name))
                .map(|e| e.message.clone())
                .collect()
        };
        let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as usize;
        let created = about("SuccessfulCreate");
        assert_eq!(created.len(), want, "{name}: created {created:?}");
        assert_eq!(about("SuccessfulDelete"), Default::default(), "{name}: a surplus pod was made and deleted");
    }
}

/// Two standalone controller managers. The first, which ignores losing its lock, leads
/// and is SIGSTOPped past its lease; the second takes over and makes ReplicaSets' pods.
/// Resumed, the first goes on as if it led: the store refuses its creates as fenced, and
/// every ReplicaSet has created exactly its count of pods, none twice.
#[test]
fn a_paused_controller_manager_is_fenced_when_it_wakes() {
    let c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = c.client(&rt);
    let first = Candidate::start(&c, "controller-manager", "first", true);
    wait_for(&c, Duration::from_secs(30), "the first controller manager leads", || {
        first.metric("flotilla_controller_manager_is_leader") == Some(1.0)
    });
    rt.block_on(replica_churn(&c, &client, "before", 2, 3));
    first.signal("STOP");
    let second = Candidate::start(&c, "controller-manager", "second", false);
    wait_for(&c, Duration::from_secs(30), "the second controller manager takes over", || {
        second.metric("flotilla_controller_manager_is_leader") == Some(1.0)
    });
    rt.block_on(replica_churn(&c, &client, "during", 2, 3));
    first.signal("CONT");
    rt.block_on(replica_churn(&c, &client, "after", 8, 3));
    wait_for(&c, Duration::from_secs(30), "the woken controller manager's writes are refused as fenced", || {
        first.metric("flotilla_controller_manager_fenced_writes_total").is_some_and(|n| n > 0.0)
    });
    assert_eq!(first.metric("flotilla_controller_manager_is_leader"), Some(1.0), "it still believes it leads");
    rt.block_on(created_once(&client));
}
