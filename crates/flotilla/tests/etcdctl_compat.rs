//! The stock etcdctl (v3.4) against a 3-master Flotilla cluster: every command an operator
//! uses, against every member.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// put / get (prefix, rev, limit, json) / del / txn through each member in turn; every
/// member sees every write.
#[test]
fn etcdctl_kv_commands_work_against_every_member() {
    let c = Cluster::start(3, &[]);
    for (i, m) in c.members.iter().enumerate() {
        let ep = m.endpoint();
        assert_eq!(etcdctl_ok(&ep, &["put", &format!("/k/{i}"), &format!("v{i}")]).trim(), "OK");
    }
    for m in &c.members {
        let ep = m.endpoint();
        let out = etcdctl_ok(&ep, &["get", "/k/", "--prefix"]);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            vec!["/k/0", "v0", "/k/1", "v1", "/k/2", "v2"],
            "member {}",
            m.name
        );
        let out = etcdctl_ok(&ep, &["get", "/k/", "--prefix", "--limit", "2", "--keys-only"]);
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["/k/0", "/k/1"]);
        let json: serde_json::Value =
            serde_json::from_str(&etcdctl_ok(&ep, &["get", "/k/1", "-w", "json"])).expect("json");
        assert_eq!(json["count"], 1);
        assert_eq!(json["kvs"][0]["version"], 1);
        assert!(json["header"]["cluster_id"].as_u64().unwrap_or(0) != 0, "{json}");
    }
    // Past revision: when /k/0 was written, /k/1 did not exist yet.
    let k0: serde_json::Value =
        serde_json::from_str(&etcdctl_ok(&c.endpoints(), &["get", "/k/0", "-w", "json"])).expect("json");
    let rev = k0["kvs"][0]["mod_revision"].as_i64().expect("mod_revision").to_string();
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "/k/1", "--rev", &rev]), "");
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "/k/0", "--rev", &rev, "--print-value-only"]).trim(), "v0");
    // Delete.
    assert_eq!(etcdctl_ok(&c.members[1].endpoint(), &["del", "/k/", "--prefix"]).trim(), "3");
    assert_eq!(etcdctl_ok(&c.members[2].endpoint(), &["get", "/k/", "--prefix"]), "");
    // Txn: compare-and-swap succeeds once, then takes the else branch.
    etcdctl_ok(&c.endpoints(), &["put", "cas", "1"]);
    let txn = |ep: &str| {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(suite_pki().as_deref().map(admin_flags).unwrap_or_default())
            .args([&format!("--endpoints={ep}"), "txn"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"value(\"cas\") = \"1\"\n\nput cas 2\n\nput lost yes\n\n")
            .expect("write");
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
        assert!(child.wait().expect("wait").success());
        out
    };
    assert!(txn(&c.members[0].endpoint()).starts_with("SUCCESS"));
    assert!(txn(&c.members[2].endpoint()).starts_with("FAILURE"));
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "cas", "--print-value-only"]).trim(), "2");
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "lost", "--print-value-only"]).trim(), "yes");
}

/// Leases: grant, attach, time-to-live with keys, list, keep-alive, revoke (which deletes
/// the attached key).
#[test]
fn etcdctl_lease_commands_work() {
    let c = Cluster::start(3, &[]);
    let ep = c.members[1].endpoint();
    let out = etcdctl_ok(&ep, &["lease", "grant", "60"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(&c.members[2].endpoint(), &["put", "leased", "v", &format!("--lease={id}")]);
    let ttl = etcdctl_ok(&c.members[0].endpoint(), &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"), "{ttl}");
    assert!(etcdctl_ok(&ep, &["lease", "list"]).contains(&id));
    assert!(etcdctl_ok(&ep, &["lease", "keep-alive", "--once", &id]).contains("keepalived with TTL(60)"));
    etcdctl_ok(&ep, &["lease", "revoke", &id]);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "leased"]), "");
    let gone = etcdctl_ok(&ep, &["lease", "timetolive", &id]);
    assert!(gone.contains("already expired"), "{gone}");
}

/// member list, endpoint status/health, compaction, move-leader.
#[test]
fn etcdctl_cluster_and_maintenance_commands_work() {
    let c = Cluster::start(3, &[]);
    c.eventually(Duration::from_secs(60), "every member publishes its client URL", || {
        let list = etcdctl_ok(&c.endpoints(), &["member", "list"]);
        c.members.iter().all(|m| list.contains(&m.url()))
    });
    let list = etcdctl_ok(&c.endpoints(), &["member", "list", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(json["members"].as_array().map(|a| a.len()), Some(3));
    let health = etcdctl(&c.endpoints(), &["endpoint", "health"]);
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    assert_eq!(String::from_utf8_lossy(&health.stderr).matches("is healthy").count(), 3);
    let status = etcdctl_ok(&c.endpoints(), &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let leaders: Vec<_> = status.as_array().expect("array").iter().map(|s| s["Status"]["leader"].as_u64()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && l.is_some()), "{status}");
    // Compaction: old revisions become unreadable with etcd's error.
    etcdctl_ok(&c.endpoints(), &["put", "x", "1"]);
    etcdctl_ok(&c.endpoints(), &["put", "x", "2"]);
    let rev = etcdctl_ok(&c.endpoints(), &["get", "x", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev).expect("json");
    let rev = rev["header"]["revision"].as_i64().expect("revision");
    etcdctl_ok(&c.endpoints(), &["compaction", &rev.to_string()]);
    let old = etcdctl(&c.endpoints(), &["get", "x", "--rev", &(rev - 1).to_string()]);
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));
    // move-leader to a follower.
    let leader = c.wait_leader(Duration::from_secs(30));
    let target = (leader + 1) % 3;
    let target_id = format!("{:x}", status_of(&c, target));
    etcdctl_ok(&c.members[leader].endpoint(), &["move-leader", &target_id]);
    assert_eq!(c.wait_leader(Duration::from_secs(30)), target);
}

fn status_of(c: &Cluster, i: usize) -> u64 {
    status(&c.members[i]).and_then(|s| s.header).map(|h| h.member_id).expect("status")
}

/// `etcdctl watch --rev --prev-kv` replays history and then follows live writes.
#[test]
fn etcdctl_watch_replays_history_then_follows() {
    let c = Cluster::start(3, &[]);
    etcdctl_ok(&c.endpoints(), &["put", "w", "1"]);
    etcdctl_ok(&c.endpoints(), &["put", "w", "2"]);
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(suite_pki().as_deref().map(admin_flags).unwrap_or_default())
        .args([&format!("--endpoints={}", c.members[2].endpoint()), "watch", "w", "--rev", "1", "--prev-kv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        // Read until the live event (and its prev kv) has arrived.
        while !String::from_utf8_lossy(&buf).contains("w\n2\nw\n3") {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    // The live write goes through another member.
    c.eventually(Duration::from_secs(60), "watch is live", || {
        etcdctl_ok(&c.members[0].endpoint(), &["put", "w", "3"]);
        reader.is_finished()
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = reader.join().expect("reader");
    assert!(out.starts_with("PUT\nw\n1\nPUT\nw\n1\nw\n2\nPUT\nw\n2\nw\n3"), "{out}");
}
