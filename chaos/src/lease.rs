//! The lease workload: sequential clients that grant a lease, attach one key to it, and
//! then keep it alive (reading the key after each keep-alive), revoke it, or abandon it
//! to expire. Every operation goes to a member chosen at random, with the run's short
//! timeout and no retries; the history is judged by [`crate::checker::lease`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::etcdserverpb::{self as ep, kv_client::KvClient, lease_client::LeaseClient};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::checker::lease::{LeaseEvent, LeaseOp, LeaseOutput};
use crate::history::Outcome;
use crate::runner::{channel, never_sent, Shared, OP_TIMEOUT};

/// Keys of the lease workload.
pub const LEASE_PREFIX: &str = "/chaos/l/";

/// The TTL every lease asks for (seconds).
pub const TTL: i64 = 3;

/// The lease id in a key of this workload (`/chaos/l/<id in hex>`).
pub fn lease_of_key(key: &[u8]) -> Option<i64> {
    let k = std::str::from_utf8(key).ok()?;
    i64::from_str_radix(k.strip_prefix(LEASE_PREFIX)?, 16).ok()
}

fn key_of(lease: i64) -> String {
    format!("{LEASE_PREFIX}{lease:x}")
}

/// One keep-alive over a fresh stream: the TTL answered.
async fn keep_alive(c: &mut LeaseClient<Channel>, id: i64) -> Result<i64, tonic::Status> {
    use futures::StreamExt;
    let req = futures::stream::iter(vec![ep::LeaseKeepAliveRequest { id }]).chain(futures::stream::pending());
    let mut s = c.lease_keep_alive(req).await?.into_inner();
    match s.next().await {
        Some(Ok(r)) => Ok(r.ttl),
        Some(Err(e)) => Err(e),
        None => Err(tonic::Status::unavailable("keep-alive stream ended without an answer")),
    }
}

struct Client {
    shared: Arc<Shared>,
    leases: Vec<LeaseClient<Channel>>,
    kvs: Vec<KvClient<Channel>>,
    rng: rand::rngs::StdRng,
}

impl Client {
    /// Runs `op` on a random member and records it; returns the output if acknowledged.
    /// The lease id (from the answer, for a grant) is returned with the output.
    async fn op<F, Fut>(&mut self, lease: i64, kind: LeaseOp, f: F) -> (i64, Option<LeaseOutput>)
    where
        F: FnOnce(LeaseClient<Channel>, KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<(i64, LeaseOutput), tonic::Status>>,
    {
        let m = self.rng.random_range(0..self.leases.len());
        let invoke = self.shared.now();
        let res = tokio::time::timeout(OP_TIMEOUT, f(self.leases[m].clone(), self.kvs[m].clone())).await;
        let complete = self.shared.now();
        let (lease, outcome) = match res {
            Ok(Ok((id, out))) => (if lease == 0 { id } else { lease }, Outcome::Ok(out)),
            // A read, or a request that never reached a member, certainly did nothing.
            Ok(Err(s)) if kind == LeaseOp::Read || never_sent(&s) => (lease, Outcome::Fail),
            _ => (lease, Outcome::Info),
        };
        let out = match outcome {
            Outcome::Ok(o) => Some(o),
            _ => None,
        };
        if lease != 0 {
            self.shared.leases.lock().unwrap_or_else(|p| p.into_inner()).push(LeaseEvent {
                lease,
                op: kind,
                invoke,
                complete,
                outcome,
            });
        }
        if out.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (lease, out)
    }

    async fn read(&mut self, id: i64) {
        self.op(id, LeaseOp::Read, |_, mut kv| async move {
            let r = kv.range(ep::RangeRequest { key: key_of(id).into(), ..Default::default() }).await?;
            Ok((id, LeaseOutput::Present(!r.into_inner().kvs.is_empty())))
        })
        .await;
    }

    async fn one_lease(&mut self) {
        let (id, granted) = self
            .op(0, LeaseOp::Grant, |mut l, _| async move {
                let r = l.lease_grant(ep::LeaseGrantRequest { ttl: TTL, id: 0 }).await?.into_inner();
                if !r.error.is_empty() {
                    return Err(tonic::Status::unknown(r.error));
                }
                Ok((r.id, LeaseOutput::Ttl(r.ttl)))
            })
            .await;
        // The id is only known from an answer; a grant of unknown outcome just expires.
        if granted.is_none() {
            return;
        }
        let (_, attached) = self
            .op(id, LeaseOp::Attach, |_, mut kv| async move {
                let put =
                    ep::PutRequest { key: key_of(id).into(), value: b"x".to_vec(), lease: id, ..Default::default() };
                kv.put(put).await?;
                Ok((id, LeaseOutput::Done))
            })
            .await;
        if attached.is_none() {
            return;
        }
        match self.rng.random_range(0..10) {
            // Keep it alive for a few TTLs; after each keep-alive, read the key at a random
            // point of the TTL it promised (up to 5/6 of it).
            0..=5 => {
                for _ in 0..self.rng.random_range(3..8) {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return;
                    }
                    self.op(id, LeaseOp::KeepAlive, |mut l, _| async move {
                        Ok((id, LeaseOutput::Ttl(keep_alive(&mut l, id).await?)))
                    })
                    .await;
                    let max_wait = TTL as u64 * 1000 * 5 / 6;
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(100..max_wait))).await;
                    self.read(id).await;
                }
            }
            // Revoke it, then read the key.
            6..=7 => {
                self.op(id, LeaseOp::Revoke, |mut l, _| async move {
                    l.lease_revoke(ep::LeaseRevokeRequest { id }).await?;
                    Ok((id, LeaseOutput::Done))
                })
                .await;
                self.read(id).await;
            }
            // Abandon it: it must expire by itself.
            _ => {
                self.read(id).await;
            }
        }
    }
}

/// A lease client, until the run stops.
pub(crate) async fn client(shared: Arc<Shared>, id: u64, urls: Vec<String>, seed: u64) {
    let mut c = Client {
        leases: urls.iter().map(|u| LeaseClient::new(channel(u))).collect(),
        kvs: urls.iter().map(|u| KvClient::new(channel(u))).collect(),
        rng: rand::rngs::StdRng::seed_from_u64(seed ^ (id << 48)),
        shared,
    };
    while !c.shared.stop.load(Ordering::Acquire) {
        c.one_lease().await;
    }
}
