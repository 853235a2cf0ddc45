//! What keeps the store from growing without end: automatic compaction of history older
//! than `--compaction-retention`, and Events that expire after `--event-ttl`, their repeats
//! aggregated into one Event's count.

mod common;

use std::time::Duration;

use common::*;
use flotilla_client::{Client, EventRecorder, ListParams};
use flotilla_proto::api as pb;
use flotilla_proto::etcdserverpb as ep;
use tonic::Code;

/// With a 2 s retention, history older than that is compacted away by itself: a read at
/// the first revision becomes "compacted", while the newest state and a watch from a
/// recent revision are unaffected.
#[test]
fn history_older_than_the_retention_is_compacted_automatically() {
    let c = Cluster::start(3, &["--compaction-retention", "2s"]);
    let url = c.members[0].url();
    let rt = rt();
    let first = rt.block_on(put(&url, "/h/k", "v1")).expect("put").header.expect("header").revision;
    for i in 2..=5 {
        rt.block_on(put(&url, "/h/k", &format!("v{i}"))).expect("put");
    }
    c.eventually(Duration::from_secs(30), "the first revision is compacted", || {
        rt.block_on(async {
            let mut kv = kv(&url, Duration::from_secs(3)).await;
            matches!(
                kv.range(ep::RangeRequest { key: "/h/k".into(), revision: first, ..Default::default() }).await,
                Err(s) if s.code() == Code::OutOfRange
            )
        })
    });
    let now = rt.block_on(async {
        let mut kv = kv(&url, Duration::from_secs(3)).await;
        kv.range(ep::RangeRequest { key: "/h/k".into(), ..Default::default() }).await.expect("read").into_inner()
    });
    assert_eq!(now.kvs[0].value, b"v5");
}

/// Repeats of an Event (same object, reason and message) raise one Event's count; Events
/// expire after `--event-ttl`.
#[test]
fn events_repeat_into_one_and_expire_after_their_ttl() {
    let c = Cluster::start(3, &["--event-ttl", "2s"]);
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let rt = rt();
    rt.block_on(async {
        let client = common::admin_client(&eps).expect("client");
        let rec = EventRecorder::new("test", "host");
        let about = pb::ObjectReference {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "p".into(),
            uid: "u1".into(),
            ..Default::default()
        };
        for _ in 0..3 {
            rec.record(&client, about.clone(), "Warning", "BackOff", "restarting").await.expect("record");
        }
        rec.record(&client, about.clone(), "Normal", "Pulled", "pulled").await.expect("record");
        let list = |client: Client| async move {
            client
                .list::<pb::Event>(&ListParams { namespace: "default".into(), ..Default::default() })
                .await
                .expect("list")
                .items
        };
        let events = list(client.clone()).await;
        assert_eq!(events.len(), 2, "{events:?}");
        let backoff = events.iter().find(|e| e.reason == "BackOff").expect("BackOff");
        assert_eq!(backoff.count, 3);
        assert!(backoff.last_timestamp >= backoff.first_timestamp);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !list(client.clone()).await.is_empty() {
            assert!(std::time::Instant::now() < deadline, "Events did not expire\n{}", c.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
