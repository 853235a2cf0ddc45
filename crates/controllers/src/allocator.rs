//! The loop both address allocators ([`crate::nodeipam`], [`crate::loadbalancer`]) run:
//! wake on a change of the kind they give addresses to; when the cache shows an object
//! that needs something, run a round (which lists the objects afresh from the apiserver
//! and writes with compare-and-swap); tell each object left waiting because its range is
//! used up, once while it waits; look again after [`RETRY`] while a round left work.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use flotilla_client::{ClientError, Resource};
use flotilla_proto::api as pb;

use crate::manager::Context;

/// How long after a failed or unfinished round the objects are looked at again.
pub const RETRY: Duration = Duration::from_secs(2);

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Objects left without an address because the range is used up.
    pub exhausted: Vec<pb::ObjectReference>,
    /// Something is left to do (used up, or an object changed meanwhile).
    pub unfinished: bool,
}

/// Runs rounds for one term (until `ctx` says stop). `needs` says, from the cache, whether
/// an object needs a round; `round` runs one; `used_up` is the Warning Event (reason,
/// message) an exhausted object gets.
pub async fn run<T, R, Fut>(ctx: &Context, name: &str, needs: impl Fn(&T) -> bool, mut round: R, used_up: (&str, &str))
where
    T: Resource,
    R: FnMut() -> Fut,
    Fut: Future<Output = Result<Round, ClientError>>,
{
    let informer = ctx.informers.get::<T>();
    let mut rx = informer.subscribe();
    tokio::select! {
        () = ctx.stopped() => return,
        () = informer.wait_synced() => {}
    }
    let metrics = ctx.metrics(name);
    // Objects told that the range is used up (once each while they wait).
    let mut told: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        // Only when a cached object needs something does a list from the apiserver follow.
        let pending = informer.cache().read().unwrap_or_else(|p| p.into_inner()).values().any(&needs);
        let mut again = false;
        if pending {
            let started = std::time::Instant::now();
            let ok = match round().await {
                Ok(r) => {
                    again = r.unfinished;
                    let waiting: BTreeSet<(String, String)> =
                        r.exhausted.iter().map(|o| (o.namespace.clone(), o.name.clone())).collect();
                    told.retain(|k| waiting.contains(k));
                    for o in r.exhausted {
                        if told.insert((o.namespace.clone(), o.name.clone())) {
                            if let Err(e) = ctx.recorder.record(&ctx.client, o, "Warning", used_up.0, used_up.1).await {
                                tracing::debug!(controller = name, error = %e, "cannot record an Event");
                            }
                        }
                    }
                    true
                }
                Err(e) => {
                    tracing::debug!(controller = name, error = %e, "allocation round failed");
                    again = true;
                    false
                }
            };
            metrics.observe(started.elapsed(), ok);
        }
        let retry = async {
            if again {
                tokio::time::sleep(RETRY).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            () = ctx.stopped() => return,
            Some(_) = rx.recv() => {}
            () = retry => {}
        }
    }
}
