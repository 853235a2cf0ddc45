//! Membership changes with the stock etcdctl: add a member at run time, start it with
//! `--initial-cluster-state existing`, then remove another.

mod common;

use std::time::Duration;

use common::*;

/// `etcdctl member add` + starting the new member: it joins, learns the cluster id,
/// publishes its client URL, and serves the data; `member remove` then shrinks the cluster,
/// which keeps taking writes.
#[test]
fn adding_and_removing_a_member() {
    let mut c = Cluster::start(3, &[]);
    etcdctl_ok(&c.endpoints(), &["put", "before", "1"]);
    let n4 = c.new_member("n4");
    let out = etcdctl_ok(&c.endpoints(), &["member", "add", "n4", &format!("--peer-urls={}", n4.peer_url())]);
    assert!(out.contains("added to cluster"), "{out}");
    c.initial_cluster = format!("{},n4={}", c.initial_cluster, n4.peer_url());
    c.members.push(n4);
    c.spawn(3, "existing");
    c.eventually(Duration::from_secs(60), "n4 is a started voter with its client URL", || {
        let list = etcdctl_ok(&c.endpoints(), &["member", "list"]);
        list.lines().any(|l| l.contains(", n4, ") && l.contains(&c.members[3].url()) && l.ends_with("false"))
    });
    let n4_ep = c.members[3].endpoint();
    assert_eq!(etcdctl_ok(&n4_ep, &["get", "before", "--print-value-only", "--consistency=s"]).trim(), "1");
    etcdctl_ok(&n4_ep, &["put", "via-n4", "yes"]);
    let st = status(&c.members[3]).expect("status");
    let st0 = status(&c.members[0]).expect("status");
    assert_eq!(st.header.map(|h| h.cluster_id), st0.header.map(|h| h.cluster_id), "n4 learned the cluster id");

    // Remove a follower (not the leader).
    let leader = c.wait_leader(Duration::from_secs(30));
    let victim = (0..3).find(|i| *i != leader).expect("a follower");
    let id = format!("{:x}", status(&c.members[victim]).and_then(|s| s.header).map(|h| h.member_id).expect("id"));
    let out = etcdctl_ok(&c.members[leader].endpoint(), &["member", "remove", &id]);
    assert!(out.contains("removed from cluster"), "{out}");
    c.kill(victim);
    let list = etcdctl_ok(&c.members[leader].endpoint(), &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(&id), "{list}");
    etcdctl_ok(&c.endpoints(), &["put", "after-remove", "ok"]);
    assert_eq!(etcdctl_ok(&n4_ep, &["get", "after-remove", "--print-value-only"]).trim(), "ok");
}

/// `member add --learner` adds a non-voting member; once started and caught up,
/// `member promote` makes it a voter. Promoting a voter is refused with etcd's error.
#[test]
fn learner_is_added_then_promoted() {
    let mut c = Cluster::start(3, &[]);
    let n4 = c.new_member("n4");
    let out =
        etcdctl_ok(&c.endpoints(), &["member", "add", "n4", "--learner", &format!("--peer-urls={}", n4.peer_url())]);
    assert!(out.contains("added to cluster"), "{out}");
    c.initial_cluster = format!("{},n4={}", c.initial_cluster, n4.peer_url());
    c.members.push(n4);
    c.spawn(3, "existing");
    let line = |c: &Cluster| {
        etcdctl_ok(&c.members[0].endpoint(), &["member", "list"])
            .lines()
            .find(|l| l.contains(", n4, "))
            .map(str::to_string)
    };
    c.eventually(Duration::from_secs(60), "n4 started as a learner", || line(&c).is_some_and(|l| l.ends_with("true")));
    let id = line(&c).and_then(|l| l.split(',').next().map(str::to_string)).expect("n4 id");
    let st = status(&c.members[3]).expect("status");
    assert!(st.is_learner);
    c.eventually(Duration::from_secs(60), "promote succeeds once n4 is in sync", || {
        etcdctl(&c.endpoints(), &["member", "promote", &id]).status.success()
    });
    assert!(line(&c).is_some_and(|l| l.ends_with("false")), "n4 is a voter now");
    let again = etcdctl(&c.endpoints(), &["member", "promote", &id]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("can only promote a learner member"));
}

/// Regression (a CI run under load: `member add` right after the cluster started failed
/// with "the cluster is already undergoing a configuration change", because the members
/// were still publishing their client URLs). Membership changes that arrive together are
/// made one after the other; none is refused for another being in progress.
#[test]
fn concurrent_membership_changes_wait_for_each_other() {
    use flotilla_proto::etcdserverpb::{self as ep, cluster_client::ClusterClient};
    let c = Cluster::start(3, &[]);
    let url = c.members[0].url();
    let scheme = if c.pki().is_some() { "https" } else { "http" };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let results = rt.block_on(async {
        let adds: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                let peer = format!("{scheme}://127.0.0.1:{}", free_port() + i);
                tokio::spawn(async move {
                    let ch = common::channel(&url);
                    let add = ep::MemberAddRequest { peer_ur_ls: vec![peer], is_learner: true };
                    ClusterClient::new(ch).member_add(add).await.map(|_| ())
                })
            })
            .collect();
        let mut results = Vec::new();
        for a in adds {
            results.push(a.await.expect("task"));
        }
        results
    });
    for r in &results {
        assert!(r.is_ok(), "a concurrent member add was refused: {r:?}");
    }
    let list = etcdctl_ok(&c.endpoints(), &["member", "list"]);
    assert_eq!(list.lines().filter(|l| l.ends_with("true")).count(), 4, "four learners added:\n{list}");
}
