//! Scheduler failover between masters: the master whose scheduler candidate leads is
//! killed (SIGKILL) or stopped (SIGTERM, which releases the lock), and another master's
//! candidate binds the next pod. Prints the time from the signal to the first accepted
//! bind of a pod created after it.
//!
//! `FLOTILLA_FAILOVER_TRIALS=N` runs N SIGKILL trials (half with the leading scheduler's
//! master also leading Raft) and N/2 SIGTERM trials and prints p50 and max: the figures in
//! docs/operations.md come from `FLOTILLA_FAILOVER_TRIALS=20`. The default (2) checks that
//! failover happens; its time bound is generous, since a busy test machine must not fail
//! it — the targets are measured, not asserted here.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ListParams, WatchEvent};
use flotilla_proto::api as pb;

fn node(name: &str) -> pb::Node {
    let cap = labels(&[("cpu", "64"), ("memory", "64Gi"), ("pods", "1000")]);
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

fn pod(name: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container { name: "main".into(), image: "busybox:1.36".into(), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The member whose scheduler leads, once exactly one does.
fn scheduler_leader(c: &Cluster) -> usize {
    let mut found = None;
    c.eventually(Duration::from_secs(60), "exactly one scheduler leads", || {
        let leading: Vec<usize> = (0..c.members.len())
            .filter(|&i| c.members[i].child.is_some())
            .filter(|&i| metric(&c.members[i], "flotilla_scheduler_is_leader") == Some(1.0))
            .collect();
        found = (leading.len() == 1).then(|| leading[0]);
        found.is_some()
    });
    found.expect("leader")
}

/// Creates a pod every 20 ms from `since` until one is bound, through masters that stay
/// up; the time from `since` to when a watch (opened before `since`) saw the first bind.
async fn first_bind_after(
    client: &Client,
    mut binds: impl tokio_stream::Stream<Item = Result<WatchEvent<pb::Pod>, flotilla_client::ClientError>> + Unpin,
    since: Instant,
    prefix: &str,
) -> Duration {
    use tokio_stream::StreamExt;
    let creator = {
        let (client, prefix) = (client.clone(), prefix.to_string());
        tokio::spawn(async move {
            for n in 0.. {
                // A create may fail while the store elects; the next one is 20 ms later.
                let _ = client.create(pod(&format!("{prefix}-{n}"))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::from_std(since + Duration::from_secs(30));
    let took = loop {
        let ev = tokio::time::timeout_at(deadline, binds.next()).await;
        let Ok(Some(Ok(WatchEvent::Modified(p)))) = ev else {
            assert!(tokio::time::Instant::now() < deadline, "{prefix}: no pod bound within 30 s ({ev:?})");
            continue;
        };
        let mine = p.metadata.as_ref().is_some_and(|m| m.name.starts_with(&format!("{prefix}-")));
        if mine && p.spec.as_ref().is_some_and(|s| !s.node_name.is_empty()) {
            break since.elapsed();
        }
    };
    creator.abort();
    took
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// SIGKILL and SIGTERM of the master whose scheduler leads: another master's scheduler
/// binds pods created afterwards.
#[test]
fn another_masters_scheduler_takes_over_when_the_leading_one_dies_or_stops() {
    let trials: usize = std::env::var("FLOTILLA_FAILOVER_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut c = Cluster::start_with_scheduler(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    rt.block_on(async {
        let client = common::admin_client(&endpoints).expect("client");
        client.create(node("n1")).await.expect("node");
    });
    let (mut kills, mut on_raft_leader, mut terms) = (Vec::new(), Vec::new(), Vec::new());
    let total = trials + trials.div_ceil(2);
    let mut t = 0;
    while t < total {
        let graceful = t >= trials;
        // Half of the kills hit a master that also leads Raft, the others one that does
        // not: move Raft leadership until that holds, then check the scheduler's leader
        // again (a Raft leader change can move the scheduler lock too).
        let want_raft_leader = !graceful && t % 2 == 0;
        let mut s = scheduler_leader(&c);
        if !graceful {
            let mut settled = false;
            for _ in 0..10 {
                let raft = c.wait_leader(Duration::from_secs(30));
                if (raft == s) == want_raft_leader {
                    settled = true;
                    break;
                }
                let target = if want_raft_leader { s } else { (s + 1) % 3 };
                let id = status(&c.members[target]).and_then(|st| st.header).map(|h| h.member_id).expect("status");
                let _ = c.etcdctl(&c.endpoints(), &["move-leader", &format!("{id:x}")]);
                s = scheduler_leader(&c);
            }
            assert!(settled, "could not arrange Raft leadership for trial {t}\n{}", c.logs());
            // Moving Raft leadership can move the lock: the trial must kill its holder.
            if scheduler_leader(&c) != s {
                s = scheduler_leader(&c);
                if (c.wait_leader(Duration::from_secs(30)) == s) != want_raft_leader {
                    eprintln!("trial {t}: the lock moved while Raft leadership was arranged; arranging again");
                    continue;
                }
            }
        }
        let pid = c.members[s].child.as_ref().expect("running").id();
        // Measured through the masters that stay up, from a watch opened before the signal.
        let survivors: Vec<String> = (0..3).filter(|&i| i != s).map(|i| c.members[i].endpoint()).collect();
        let (watcher, binds) = rt.block_on(async {
            let w = common::admin_client(&survivors).expect("client");
            let binds = w.watch::<pb::Pod>(&ListParams::default(), "").await.expect("watch");
            (w, binds)
        });
        let since = Instant::now();
        if graceful {
            let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
            assert!(ok.success());
        } else {
            c.kill(s);
        }
        let took = rt.block_on(first_bind_after(&watcher, binds, since, &format!("t{t}")));
        let on_leader = want_raft_leader;
        eprintln!(
            "trial {t}: {} of the leading scheduler's master{} -> first bind after {took:?}",
            if graceful { "SIGTERM" } else { "SIGKILL" },
            if on_leader { " (also the Raft leader)" } else { "" }
        );
        match (graceful, on_leader) {
            (true, _) => terms.push(took),
            (false, true) => on_raft_leader.push(took),
            (false, false) => kills.push(took),
        }
        if graceful {
            if let Some(mut child) = c.members[s].child.take() {
                let _ = child.wait();
            }
        }
        c.spawn(s, "new");
        c.wait_leader(Duration::from_secs(30));
        t += 1;
    }
    let mut all_kills: Vec<Duration> = kills.iter().chain(&on_raft_leader).copied().collect();
    eprintln!(
        "SIGKILL ({} trials, {} on the Raft leader): p50 {:?}, max {:?}; SIGTERM ({}): p50 {:?}, max {:?}",
        all_kills.len(),
        on_raft_leader.len(),
        percentile(&mut all_kills, 0.5),
        percentile(&mut all_kills, 1.0),
        terms.len(),
        percentile(&mut terms, 0.5),
        percentile(&mut terms, 1.0),
    );
}
