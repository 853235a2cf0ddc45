//! Bad input gets etcd's error (code and text), and nothing is written; a data dir from
//! another cluster, or a damaged one, is refused at start.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::Code;

async fn revision(c: &mut KvClient<Channel>) -> i64 {
    c.range(ep::RangeRequest { key: "any".into(), ..Default::default() })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    let e = r.expect_err("must fail");
    assert_eq!((e.code(), e.message()), (code, msg), "{e:?}");
}

/// Each malformed request is refused with the gRPC code and message etcd uses (so etcd
/// clients recognise them), and the revision does not move.
#[test]
fn malformed_requests_get_etcd_errors_and_write_nothing() {
    let c = Cluster::start(3, &[]);
    let rt = common::rt();
    rt.block_on(async {
        let mut kv = kv(&c.members[1].url(), Duration::from_secs(5)).await;
        kv.put(ep::PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).await.expect("put");
        kv.put(ep::PutRequest { key: "k".into(), value: "v2".into(), ..Default::default() }).await.expect("put");
        let before = revision(&mut kv).await;

        expect_err(kv.put(ep::PutRequest::default()).await, Code::InvalidArgument, "etcdserver: key is not provided");
        expect_err(
            kv.put(ep::PutRequest { key: "big".into(), value: vec![b'x'; 1536 * 1024 + 1], ..Default::default() })
                .await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        expect_err(
            kv.put(ep::PutRequest { key: "k".into(), value: "v".into(), lease: 12345, ..Default::default() }).await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        let op = |i: usize| ep::RequestOp {
            request: Some(ep::request_op::Request::RequestPut(ep::PutRequest {
                key: format!("t{i}").into(),
                ..Default::default()
            })),
        };
        expect_err(
            kv.txn(ep::TxnRequest { success: (0..129).map(op).collect(), ..Default::default() }).await,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        expect_err(
            kv.txn(ep::TxnRequest { success: vec![op(1), op(1)], ..Default::default() }).await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        expect_err(
            kv.range(ep::RangeRequest { key: "k".into(), revision: before + 100, ..Default::default() }).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        kv.compact(ep::CompactionRequest { revision: before, physical: false }).await.expect("compact");
        expect_err(
            kv.range(ep::RangeRequest { key: "k".into(), revision: before - 1, ..Default::default() }).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        expect_err(
            kv.compact(ep::CompactionRequest { revision: before - 1, physical: false }).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_eq!(revision(&mut kv).await, before, "nothing was written");
        let got =
            kv.range(ep::RangeRequest { key: "k".into(), ..Default::default() }).await.expect("range").into_inner();
        assert_eq!(got.kvs[0].value, b"v2");
    });
}

/// A watch that starts below the compact revision is created, then cancelled with the
/// compact revision (as etcd does).
#[test]
fn watch_below_compact_revision_is_cancelled_with_it() {
    let c = Cluster::start(1, &[]);
    etcdctl_ok(&c.endpoints(), &["put", "a", "1"]);
    etcdctl_ok(&c.endpoints(), &["put", "a", "2"]);
    etcdctl_ok(&c.endpoints(), &["compaction", "3"]);
    let out = etcdctl(&c.endpoints(), &["watch", "a", "--rev", "2"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("required revision has been compacted"), "{text}");
    // Over gRPC: created first, then cancelled carrying the compact revision.
    common::rt().block_on(async {
        use flotilla_proto::etcdserverpb::watch_client::WatchClient;
        use tokio_stream::StreamExt;
        let ch = common::channel(&c.members[0].url());
        let create = ep::WatchRequest {
            request_union: Some(ep::watch_request::RequestUnion::CreateRequest(ep::WatchCreateRequest {
                key: "a".into(),
                start_revision: 2,
                ..Default::default()
            })),
        };
        let reqs = tokio_stream::iter(vec![create]).chain(tokio_stream::pending());
        let mut s = WatchClient::new(ch).watch(reqs).await.expect("watch").into_inner();
        let first = s.next().await.expect("response").expect("ok");
        assert!(first.created && !first.canceled, "{first:?}");
        let second = s.next().await.expect("response").expect("ok");
        assert!(second.canceled, "{second:?}");
        assert_eq!(second.compact_revision, 3);
        assert_eq!(second.watch_id, first.watch_id);
    });
}

fn start_once(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("master").args(args).output().expect("run flotilla")
}

/// Restarting a member with flags that describe another cluster, or on a damaged data dir,
/// fails at start with a message naming the problem; the data is left as it was.
#[test]
fn data_dir_of_another_cluster_or_damaged_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let cluster = format!("solo={peer_url}");
    let base =
        ["--name", "solo", "--listen-client", &client_url, "--listen-peer", &peer_url, "--initial-cluster", &cluster];
    let data_s = data.to_str().expect("utf8 path");
    // Create the data dir with one write, then stop the member.
    let mut child = Command::new(bin()).arg("master").args(base).args(["--data-dir", data_s]).spawn().expect("spawn");
    eventually(Duration::from_secs(30), "single member answers", || {
        etcdctl(&format!("127.0.0.1:{client}"), &["put", "k", "v"]).status.success()
    });
    let _ = child.kill();
    let _ = child.wait();

    let out = start_once(&[&base[..], &["--data-dir", data_s, "--initial-cluster-token", "other"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data directory refused") && err.contains("belongs to member"), "{err}");

    // Damage RocksDB's manifest pointer: the member must refuse to start, never reset.
    let current = data.join("db").join("CURRENT");
    std::fs::write(&current, b"MANIFEST-999999\n").expect("damage CURRENT");
    let out = start_once(&[&base[..], &["--data-dir", data_s]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data directory refused") && err.contains("cannot open RocksDB"), "{err}");
    assert_eq!(std::fs::read(&current).expect("read"), b"MANIFEST-999999\n", "left as it was");
}

/// Bad flags get one clear line and exit code 1, before anything is created.
#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("never");
    let d = data.to_str().expect("utf8");
    // A valid member's flags, each case changing one thing.
    let valid = [
        "--name",
        "a",
        "--data-dir",
        d,
        "--listen-client",
        "http://127.0.0.1:1",
        "--listen-peer",
        "http://127.0.0.1:2",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> { valid.iter().copied().chain(extra.iter().copied()).collect() };
    let mut bad_peer = with(&[]);
    bad_peer[7] = "127.0.0.1:2";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (bad_peer, "must start with http://"),
        (with(&["--initial-cluster", "b=http://127.0.0.1:2"]), "is not in --initial-cluster"),
        (with(&["--initial-cluster-state", "old"]), "must be `new` or `existing`"),
        (vec!["--data-dir", d], "--name is required"),
        (with(&["--controllers", "*,-replicaseet"]), "unknown controller \"replicaseet\" (known: replicaset"),
        (with(&["--controllers", "-replicaset"]), "selects no controller"),
        (with(&["--controller-workers", "0"]), "--controller-workers must be at least 1"),
    ];
    for (args, want) in &cases {
        let out = start_once(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!data.exists(), "nothing created for bad flags");
    // The standalone controller manager refuses the same before it connects anywhere.
    let out = Command::new(bin())
        .args(["controller-manager", "--masters", "127.0.0.1:1", "--controllers", "replicaset,bogus"])
        .output()
        .expect("run flotilla");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown controller \"bogus\""), "{err}");
}
