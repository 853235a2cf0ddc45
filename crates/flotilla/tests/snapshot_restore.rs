//! Backup and restore: a snapshot saved with `flotctl cluster snapshot save`, every
//! member's data wiped, `flotilla snapshot restore` into new data dirs, and the cluster
//! started again from them.

mod common;

use std::time::Duration;

use common::*;
use flotilla_proto::api as pb;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::maintenance_client::MaintenanceClient;

fn in_shop() -> flotilla_client::ListParams {
    flotilla_client::ListParams { namespace: "shop".into(), ..Default::default() }
}

async fn hash_kv(url: &str, revision: i64) -> (u32, i64) {
    let ch = common::channel(url);
    let r = MaintenanceClient::new(ch).hash_kv(ep::HashKvRequest { revision }).await.expect("hash_kv").into_inner();
    (r.hash, r.compact_revision)
}

/// Save → kill and wipe every member → restore each from the file → start: the same
/// objects (names, cluster IPs, resourceVersions), the same etcd keys and leases, and the
/// same HashKV at the saved revision on every member; and the cluster takes writes again.
/// A restore refuses a data dir that holds anything, and a name not in the cluster.
#[test]
fn a_cluster_restored_from_a_snapshot_has_the_same_objects_keys_and_hash() {
    let mut c = Cluster::start(3, &[]);
    let eps = c.endpoints();
    let rt = rt();
    let client = c.client(&rt);
    let (svc_before, lease) = rt.block_on(async {
        let ns = pb::Namespace {
            metadata: Some(pb::ObjectMeta { name: "shop".into(), ..Default::default() }),
            ..Default::default()
        };
        client.create(ns).await.expect("namespace");
        for name in ["web", "db"] {
            let svc = pb::Service {
                metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "shop".into(), ..Default::default() }),
                spec: Some(pb::ServiceSpec {
                    r#type: "NodePort".into(),
                    ports: vec![pb::ServicePort { port: 80, ..Default::default() }],
                    ..Default::default()
                }),
                status: None,
            };
            client.create(svc).await.expect("service");
        }
        let svcs = client.list::<pb::Service>(&in_shop()).await.expect("list").items;
        let lease = etcdctl_ok(&eps, &["lease", "grant", "3600"]);
        let id = lease.split_whitespace().nth(1).expect("lease id").to_string();
        (svcs, id)
    });
    etcdctl_ok(&eps, &["put", "/app/config", "v1"]);
    etcdctl_ok(&eps, &["put", "--lease", &lease, "/app/session", "alive"]);
    let file = c.dir.path().join("backup.snap");
    let saved = ctl_ok(&eps, &["cluster", "snapshot", "save", &file.display().to_string()]);
    let revision: i64 =
        saved.rsplit("revision ").next().and_then(|r| r.trim().trim_end_matches(')').parse().ok()).expect("revision");
    let before = rt.block_on(hash_kv(&c.members[0].url(), revision));

    for i in 0..3 {
        c.kill(i);
        std::fs::remove_dir_all(&c.members[i].data_dir).expect("wipe");
    }
    let bin = bin();
    let restore = |name: &str, dir: &std::path::Path| {
        std::process::Command::new(bin)
            .args(["snapshot", "restore", &file.display().to_string(), "--name", name])
            .args(["--initial-cluster", &c.initial_cluster, "--data-dir", &dir.display().to_string()])
            .output()
            .expect("flotilla snapshot restore")
    };
    let out = restore("nobody", &c.dir.path().join("x"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not in --initial-cluster"));
    // A file that is no snapshot is refused, and leaves nothing behind to refuse the next.
    let junk = c.dir.path().join("junk.snap");
    std::fs::write(&junk, b"not a snapshot").expect("junk");
    let out = std::process::Command::new(bin)
        .args(["snapshot", "restore", &junk.display().to_string(), "--name", &c.members[0].name])
        .args(["--initial-cluster", &c.initial_cluster, "--data-dir", &c.members[0].data_dir.display().to_string()])
        .output()
        .expect("flotilla snapshot restore");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a Flotilla snapshot"));
    for i in 0..3 {
        let out = restore(&c.members[i].name, &c.members[i].data_dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("at revision {revision}")));
    }
    let out = restore(&c.members[0].name, &c.members[0].data_dir);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not empty"), "never over data");
    for i in 0..3 {
        c.spawn(i, "new");
    }
    c.wait_leader(Duration::from_secs(20));

    for m in &c.members {
        assert_eq!(rt.block_on(hash_kv(&m.url(), revision)), before, "HashKV at {revision} on {}", m.name);
    }
    let after = rt.block_on(async {
        until(&c, "the services back", || async { client.list::<pb::Service>(&in_shop()).await.ok().map(|l| l.items) })
            .await
    });
    assert_eq!(after, svc_before, "the same objects, resourceVersions, cluster IPs and node ports");
    println!("restored at revision {revision}: HashKV {:?} on every member, {} services back", before, after.len());
    assert_eq!(etcdctl_ok(&eps, &["get", "--print-value-only", "/app/config"]).trim(), "v1");
    assert_eq!(etcdctl_ok(&eps, &["get", "--print-value-only", "/app/session"]).trim(), "alive");
    let ttl = etcdctl_ok(&eps, &["lease", "timetolive", &lease]);
    assert!(ttl.contains("remaining"), "the lease is back: {ttl}");
    etcdctl_ok(&eps, &["put", "/app/config", "v2"]);
    assert_eq!(etcdctl_ok(&eps, &["get", "--print-value-only", "/app/config"]).trim(), "v2", "it takes writes");
}
