//! The Rust client (`flotilla-client`) against three real masters: failover when the
//! master in use is killed or frozen, watches that resume on another master, and a
//! reflector cache that stays in sync.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flotilla_client::{Client, ClientError, ListParams, Reflector, WatchEvent};
use flotilla_proto::api as pb;
use tokio_stream::StreamExt;

fn pod(name: &str) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta { name: name.into(), namespace: "default".into(), ..Default::default() }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container { name: "c".into(), image: "busybox".into(), ..Default::default() }],
            ..Default::default()
        }),
        status: None,
    }
}

fn endpoints(c: &Cluster) -> Vec<String> {
    c.members.iter().map(|m| m.endpoint()).collect()
}

fn index_of(c: &Cluster, url: &str) -> usize {
    c.members.iter().position(|m| m.url() == url).expect("a member's URL")
}

/// Reads and writes in a loop while the master in use is lost (`lose`); returns the time
/// from the loss to the first successful read and to the first successful write, and how
/// many writes were reported indeterminate.
/// What a loss came to: when reads and writes resumed (None: not within the window), the
/// writes of unknown outcome, and the last errors seen.
struct Resumed {
    read: Option<Duration>,
    write: Option<Duration>,
    indeterminate: usize,
    last_errors: Vec<String>,
}

impl Resumed {
    /// Both times, or a panic with what was seen and the members' logs.
    fn times(&self, c: &Cluster) -> (Duration, Duration) {
        match (self.read, self.write) {
            (Some(r), Some(w)) => (r, w),
            _ => panic!(
                "reads or writes did not resume (read {:?}, write {:?}); last errors {:?}\n{}",
                self.read,
                self.write,
                self.last_errors,
                c.logs()
            ),
        }
    }
}

async fn stream_across_loss(client: &Client, lose: impl FnOnce()) -> Resumed {
    client.create(pod("before")).await.expect("write before the loss");
    lose();
    let lost = Instant::now();
    let mut r = Resumed { read: None, write: None, indeterminate: 0, last_errors: vec![] };
    let mut i = 0;
    while (r.read.is_none() || r.write.is_none()) && lost.elapsed() < RESUMES_WITHIN + Duration::from_secs(5) {
        i += 1;
        if r.read.is_none() {
            match client.get::<pb::Pod>("default", "before").await {
                Ok(_) => r.read = Some(lost.elapsed()),
                Err(e) => r.last_errors = vec![format!("read at {:?}: {e}", lost.elapsed())],
            }
        }
        if r.write.is_none() {
            match client.create(pod(&format!("after-{i}"))).await {
                Ok(_) => r.write = Some(lost.elapsed()),
                Err(ClientError::Indeterminate(_)) => r.indeterminate += 1,
                Err(e) => r.last_errors.push(format!("write at {:?}: {e}", lost.elapsed())),
            }
        }
    }
    r
}

/// How long a test lets the client take to resume: far above the 2 s it is built for
/// (printed by each test, and measured on a quiet machine in docs/operations.md), so a
/// busy test machine cannot fail it; a client that never moved still does.
const RESUMES_WITHIN: Duration = Duration::from_secs(10);

/// kill -9 of the master the client is using: reads and writes resume on another
/// master.
#[test]
fn client_moves_to_another_master_after_a_kill() {
    let mut c = Cluster::start(3, &[]);
    let eps = endpoints(&c);
    let rt = rt();
    let resumed = rt.block_on(async {
        let client = common::admin_client(&eps).expect("client");
        let victim = index_of(&c, &client.current_master());
        stream_across_loss(&client, || c.kill(victim)).await
    });
    let (read, write) = resumed.times(&c);
    eprintln!(
        "client failover after kill: first read {read:?}, first write {write:?}, indeterminate writes {}",
        resumed.indeterminate
    );
    assert!(read < RESUMES_WITHIN, "read resumed after {read:?}");
    assert!(write < RESUMES_WITHIN, "write resumed after {write:?}");
}

/// The leader stops answering but keeps its connections open (SIGSTOP — like a
/// partition): the client, which was using it, notices by keepalive/deadline and moves,
/// writes included (the others elect a new leader meanwhile).
#[test]
fn client_moves_away_from_a_frozen_leader() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let mut eps = endpoints(&c);
    eps.rotate_left(leader);
    let rt = rt();
    let mut frozen = None;
    let resumed = rt.block_on(async {
        let client = common::admin_client(&eps).expect("client");
        let victim = index_of(&c, &client.current_master());
        let pid = c.members[victim].child.as_ref().expect("running").id();
        frozen = Some(pid);
        stream_across_loss(&client, || {
            std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().expect("kill -STOP");
        })
        .await
    });
    if let Some(pid) = frozen {
        let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
    }
    let (read, write) = resumed.times(&c);
    eprintln!("client failover from a frozen master: first read {read:?}, first write {write:?}");
    assert!(read < RESUMES_WITHIN, "read resumed after {read:?}");
    assert!(write < RESUMES_WITHIN, "write resumed after {write:?}");
}

/// A client watch keeps going when its master is killed: it resumes on another master
/// from the last resourceVersion and delivers every event exactly once; a reflector's
/// cache matches a fresh list afterwards.
#[test]
fn client_watch_and_reflector_survive_a_master_kill() {
    let mut c = Cluster::start(3, &[]);
    let eps = endpoints(&c);
    let rt = rt();
    rt.block_on(async {
        let client = common::admin_client(&eps).expect("client");
        let mut reflector = Reflector::<pb::Pod>::start(client.clone(), ListParams::default());
        reflector.wait_synced().await;
        let mut w = client
            .watch::<pb::Pod>(&ListParams { namespace: "default".into(), ..Default::default() }, "")
            .await
            .expect("watch");
        for i in 0..3 {
            client.create(pod(&format!("a{i}"))).await.expect("create");
        }
        let victim = index_of(&c, &client.current_master());
        c.kill(victim);
        // Writes through another client, so the watcher alone has to notice the loss.
        let others: Vec<String> = c.members.iter().filter(|m| m.child.is_some()).map(|m| m.endpoint()).collect();
        let writer = common::admin_client(&others).expect("client");
        for i in 3..8 {
            writer.create(pod(&format!("a{i}"))).await.expect("create");
        }
        let mut names = Vec::new();
        while names.len() < 8 {
            match tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("event in time") {
                Some(Ok(WatchEvent::Added(p))) => names.push(p.metadata.expect("meta").name),
                other => panic!("unexpected {other:?}"),
            }
        }
        let want: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
        assert_eq!(names, want, "every event once, in order");
        let list = writer.list::<pb::Pod>(&ListParams::default()).await.expect("list");
        let mut want_keys: Vec<String> =
            list.items.iter().map(|p| format!("default/{}", p.metadata.as_ref().expect("m").name)).collect();
        want_keys.sort();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut got: Vec<String> = reflector.cache().read().expect("cache").keys().cloned().collect();
            got.sort();
            if got == want_keys {
                break;
            }
            assert!(Instant::now() < deadline, "reflector cache {got:?} never matched {want_keys:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
