//! Watches across members and leases across a leader failover.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_proto::etcdserverpb as ep;
use flotilla_proto::etcdserverpb::lease_client::LeaseClient;
use flotilla_proto::etcdserverpb::watch_client::WatchClient;
use tokio_stream::StreamExt;

async fn watch_from(url: &str, key: &str, range_end: &str, start: i64) -> tonic::Streaming<ep::WatchResponse> {
    let ch = common::channel(url);
    let create = ep::WatchRequest {
        request_union: Some(ep::watch_request::RequestUnion::CreateRequest(ep::WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision: start,
            ..Default::default()
        })),
    };
    // Keep the request stream open for the life of the watch.
    let reqs = tokio_stream::iter(vec![create]).chain(tokio_stream::pending());
    WatchClient::new(ch).watch(reqs).await.expect("watch").into_inner()
}

/// Collects events until one with `mod_revision >= until` arrives.
async fn events_until(s: &mut tonic::Streaming<ep::WatchResponse>, until: i64) -> Vec<i64> {
    let mut revs = Vec::new();
    while revs.last().is_none_or(|r| *r < until) {
        let resp = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("ok");
        assert!(!resp.canceled, "watch canceled: {}", resp.cancel_reason);
        revs.extend(resp.events.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision)));
    }
    revs
}

/// A client watching on member A up to revision R resumes on member B from R+1 and sees
/// exactly the events after R: history first, then live ones, with no gap or duplicate.
#[test]
fn watch_resumed_on_another_member_sees_exactly_the_events_after_r() {
    let c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut revs = Vec::new();
        for i in 0..20 {
            revs.push(
                put(&c.members[i % 3].url(), &format!("/w/{i}"), "x")
                    .await
                    .expect("put")
                    .header
                    .expect("header")
                    .revision,
            );
        }
        let r = revs[9];
        let mut a = watch_from(&c.members[0].url(), "/w/", "/w0", 1).await;
        // A may deliver more than R in one response; the client has seen up to R.
        let seen_a = events_until(&mut a, r).await;
        assert_eq!(seen_a[..], revs[..seen_a.len()]);
        assert!(seen_a.contains(&r));
        drop(a);
        let mut b = watch_from(&c.members[1].url(), "/w/", "/w0", r + 1).await;
        // Ten more writes arrive live while B replays.
        let mut more = Vec::new();
        for i in 20..30 {
            more.push(
                put(&c.members[2].url(), &format!("/w/{i}"), "y").await.expect("put").header.expect("header").revision,
            );
        }
        let want: Vec<i64> = revs[10..].iter().chain(more.iter()).copied().collect();
        let seen_b = events_until(&mut b, *want.last().expect("want")).await;
        assert_eq!(seen_b, want);
    });
}

/// A lease kept alive survives a kill -9 of the leader (the new leader gives it its full
/// TTL again) and, once nobody keeps it alive, expires on time and takes its key with it.
#[test]
fn lease_outlives_leader_failover_then_expires_on_time() {
    let mut c = Cluster::start(3, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leader = c.wait_leader(Duration::from_secs(30));
    let other = (leader + 1) % 3;
    let ttl = 4;
    let id = rt.block_on(async {
        let ch = common::channel(&c.members[other].url());
        let g =
            LeaseClient::new(ch).lease_grant(ep::LeaseGrantRequest { ttl, id: 0 }).await.expect("grant").into_inner();
        let mut kvc = kv(&c.members[other].url(), Duration::from_secs(3)).await;
        kvc.put(ep::PutRequest { key: "leased".into(), value: "v".into(), lease: g.id, ..Default::default() })
            .await
            .expect("put");
        g.id
    });
    std::thread::sleep(Duration::from_secs(2));
    c.kill(leader);
    let killed = Instant::now();
    let new_leader = c.wait_leader(Duration::from_secs(30));
    // Granted 2 s before the kill with a 4 s TTL, the lease would be gone 2 s after the
    // kill without a refresh; the new leader must give it a full TTL from its election,
    // which comes after the kill.
    let ep = c.members[new_leader].endpoint();
    std::thread::sleep((killed + Duration::from_millis(3000)).saturating_duration_since(Instant::now()));
    assert_eq!(
        etcdctl_ok(&ep, &["get", "leased", "--print-value-only"]).trim(),
        "v",
        "lease expired early after failover"
    );
    c.eventually(Duration::from_secs(60), "the lease expires once not kept alive", || {
        etcdctl_ok(&ep, &["get", "leased"]).is_empty()
    });
    let took = killed.elapsed();
    assert!(took >= Duration::from_secs(ttl as u64), "expired {took:?} after the kill, before a full TTL of {ttl} s");
    let out = etcdctl_ok(&ep, &["lease", "timetolive", &format!("{id:x}")]);
    assert!(out.contains("already expired"), "{out}");
}
