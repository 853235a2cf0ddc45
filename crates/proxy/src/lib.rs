//! Flotilla's service proxy. It watches Services and Endpoints (through the client crate,
//! which moves between masters by itself and resumes its watches without a relist) and
//! programs the kernel's nftables so that a service's cluster IP, node ports and
//! load-balancer addresses reach its ready endpoints.
//!
//! * [`model`]: Services and Endpoints → service ports (pure);
//! * [`nft`]: service ports → the table's ruleset, whole or as the difference between two,
//!   each one atomic transaction;
//! * [`sync`]: the loop that keeps the kernel's table equal to the desired one;
//! * [`metrics`]: syncs, nft operations per transaction, sync latency, relists.
//!
//! It must not depend on the store or the apiserver; the data path never goes through the
//! masters: while none answers, the table stays as it was and traffic flows on.

pub mod announce;
pub mod dns;
pub mod error;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod sync;

pub use error::ProxyError;

/// A background task that ends with its owner.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
pub use sync::{run, ProxyConfig};
