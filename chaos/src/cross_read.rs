//! The cross-member read workload: a write acknowledged through one member must be seen at
//! once by a linearizable read through another (issue 10: a Lease created through one
//! master was not found by a get through another).
//!
//! Its clients start with the members, before any leader is known, so the first reads
//! race the first elections and each follower's first applied entries; they go on through
//! every fault. Each client alternates between the two APIs every member serves: an etcd
//! `Put` of a key only that client writes, then a `Range` of it through another member
//! (the value must be the one just written); and a resource-API `Create` of a Lease object,
//! then a `Get` of it through another member (it must be found, at the created
//! resourceVersion or later). Failed or timed-out operations check nothing; only answers
//! are judged.
//!
//! A put whose outcome its client never learnt (timed out, failed) may still take effect
//! later — after puts that client made since — as with etcd. A read returning such a
//! value is no stale read when the value's `mod_revision` is above the acknowledged put's
//! revision: it is the key's newest version, written late. Those are counted apart
//! (`late_applied`), not as failures; any other answer but the acknowledged value is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::api;
use flotilla_proto::api::api_client::ApiClient;
use flotilla_proto::etcdserverpb::{self as ep, kv_client::KvClient};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;

use crate::runner::{channel, OP_TIMEOUT};

/// Keys of the etcd half: `/chaos/x/<client>`.
const KEY_PREFIX: &str = "/chaos/x/";
/// Namespace of the resource-API half (built in: it always exists).
const NAMESPACE: &str = "default";
/// Violations kept in the report (the count is complete).
const KEEP: usize = 10;

/// What the workload found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CrossReadReport {
    /// Reads through another member that answered after an acknowledged write.
    pub checked: u64,
    /// Of those, over the resource API.
    pub checked_api: u64,
    /// Writes acknowledged whose read through another member failed (not judged).
    pub unanswered: u64,
    /// Reads that missed the write just acknowledged (must be 0).
    pub stale: u64,
    /// The first few stale reads, described.
    pub examples: Vec<String>,
    /// Reads that returned a newer version written by an earlier put of the same client
    /// whose outcome it never learnt (legal: see the module docs).
    pub late_applied: u64,
    /// The first few of those, described.
    pub late_examples: Vec<String>,
}

impl CrossReadReport {
    /// Whether no read missed its write and at least one was checked.
    pub fn valid(&self) -> bool {
        self.stale == 0 && self.checked > 0
    }
}

/// The workload's state: its stop switch and what its clients found.
#[derive(Default)]
pub struct CrossRead {
    stop: AtomicBool,
    report: Mutex<CrossReadReport>,
}

impl CrossRead {
    /// Stops the clients (they finish their current pair of operations).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// What was found so far.
    pub fn report(&self) -> CrossReadReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, api: bool, verdict: Verdict) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.checked += 1;
        r.checked_api += u64::from(api);
        match verdict {
            Verdict::Fresh => {}
            Verdict::Stale(what) => {
                r.stale += 1;
                if r.examples.len() < KEEP {
                    r.examples.push(what);
                }
            }
            Verdict::Late(what) => {
                r.late_applied += 1;
                if r.late_examples.len() < KEEP {
                    r.late_examples.push(what);
                }
            }
        }
    }

    fn unanswered(&self) {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).unanswered += 1;
    }
}

/// The lease object the resource-API half creates.
fn lease(name: &str) -> api::Object {
    api::Object {
        kind: Some(api::object::Kind::Lease(api::Lease {
            metadata: Some(api::ObjectMeta { name: name.into(), namespace: NAMESPACE.into(), ..Default::default() }),
            spec: Some(api::LeaseSpec { holder_identity: "chaos".into(), ..Default::default() }),
        })),
    }
}

fn resource_version(o: &api::Object) -> Option<i64> {
    let meta = match o.kind.as_ref()? {
        api::object::Kind::Lease(l) => l.metadata.as_ref()?,
        _ => return None,
    };
    meta.resource_version.parse().ok()
}

async fn timed<T>(f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Option<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// How a read after an acknowledged write did.
enum Verdict {
    /// It saw the write.
    Fresh,
    /// It missed the write (described).
    Stale(String),
    /// It saw a newer version written late by a put whose outcome was unknown (described).
    Late(String),
}

/// What one write-then-read pair came to.
enum Pair {
    /// The write failed or timed out: nothing to judge.
    NotWritten,
    /// The write was acknowledged, the read got no answer.
    Unanswered,
    /// The read answered.
    Read(Verdict),
}

/// etcd API: put `key` through `a`, range it through `b`. `unknown` holds the values of
/// this client's earlier puts of `key` whose outcome it never learnt.
async fn etcd_pair(
    a: &mut KvClient<Channel>,
    b: &mut KvClient<Channel>,
    names: (usize, usize),
    key: &str,
    value: &str,
    unknown: &std::collections::HashSet<String>,
) -> Pair {
    let put = ep::PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    let Some(w) = timed(a.put(put)).await else { return Pair::NotWritten };
    let rev = w.header.map_or(0, |h| h.revision);
    let Some(r) = timed(b.range(ep::RangeRequest { key: key.into(), ..Default::default() })).await else {
        return Pair::Unanswered;
    };
    let read_rev = r.header.map_or(0, |h| h.revision);
    let kv = r.kvs.first();
    let got = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let mod_rev = kv.map_or(0, |kv| kv.mod_revision);
    let what = || {
        format!(
            "etcd: put {key}={value} acknowledged through m{} at revision {rev}; a read through m{} at revision \
             {read_rev} returned {got:?} (mod_revision {mod_rev})",
            names.0, names.1
        )
    };
    Pair::Read(if read_rev < rev {
        Verdict::Stale(what())
    } else if got.as_deref() == Some(value) {
        Verdict::Fresh
    } else if mod_rev > rev && got.as_ref().is_some_and(|g| unknown.contains(g)) {
        Verdict::Late(what())
    } else {
        Verdict::Stale(what())
    })
}

/// Resource API: create Lease `name` through `a`, get it through `b`.
async fn api_pair(a: &mut ApiClient<Channel>, b: &mut ApiClient<Channel>, names: (usize, usize), name: &str) -> Pair {
    let Some(created) = timed(a.create(api::CreateRequest { object: Some(lease(name)), ..Default::default() })).await
    else {
        return Pair::NotWritten;
    };
    let rv = resource_version(&created).unwrap_or(0);
    let what = format!("api: Lease {NAMESPACE}/{name} created through m{} at resourceVersion {rv}", names.0);
    let get = api::GetRequest { kind: "Lease".into(), namespace: NAMESPACE.into(), name: name.into() };
    match tokio::time::timeout(OP_TIMEOUT, b.get(get)).await {
        Ok(Ok(got)) => {
            let got_rv = resource_version(got.get_ref()).unwrap_or(0);
            Pair::Read(if got_rv < rv {
                Verdict::Stale(format!("{what}; a get through m{} returned resourceVersion {got_rv}", names.1))
            } else {
                Verdict::Fresh
            })
        }
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
            Pair::Read(Verdict::Stale(format!("{what}; a get through m{} answered NotFound: {}", names.1, s.message())))
        }
        _ => Pair::Unanswered,
    }
}

/// One client: write through a random member, read through another, until stopped;
/// etcd and resource API in turn.
pub async fn client(state: Arc<CrossRead>, id: u64, urls: Vec<String>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (id << 48) ^ 0x5eed);
    let channels: Vec<Channel> = urls.iter().map(|u| channel(u)).collect();
    let mut kv: Vec<KvClient<Channel>> = channels.iter().cloned().map(KvClient::new).collect();
    let mut res: Vec<ApiClient<Channel>> = channels.into_iter().map(ApiClient::new).collect();
    let key = format!("{KEY_PREFIX}{id}");
    let mut n = 0u64;
    let mut unknown = std::collections::HashSet::new();
    while !state.stop.load(Ordering::Acquire) {
        n += 1;
        let a = rng.random_range(0..urls.len());
        let b = (a + rng.random_range(1..urls.len())) % urls.len();
        let names = (a + 1, b + 1);
        let over_api = n.is_multiple_of(2);
        let pair = if over_api {
            let (ca, cb) = two(&mut res, a, b);
            api_pair(ca, cb, names, &format!("xread-{id}-{n}")).await
        } else {
            let (ca, cb) = two(&mut kv, a, b);
            let value = format!("{id}-{n}");
            let pair = etcd_pair(ca, cb, names, &key, &value, &unknown).await;
            if matches!(pair, Pair::NotWritten) {
                unknown.insert(value);
            }
            pair
        };
        match pair {
            Pair::NotWritten => {
                // Nobody to write to yet, or a fault: do not hammer.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Pair::Unanswered => state.unanswered(),
            Pair::Read(verdict) => state.record(over_api, verdict),
        }
    }
}

/// Mutable references to two different elements.
fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(a, b);
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}
