//! Rust client of Flotilla's resource API (`flotilla.api.v1`).
//!
//! * [`Client`]: typed calls over a list of masters; health checks, failover within two
//!   seconds, reads retried elsewhere, writes never retried blindly (a write whose fate is
//!   unknown is reported as [`ClientError::Indeterminate`]).
//! * [`Client::watch`]: watches that resume on another master at the last
//!   resourceVersion seen, without listing again.
//! * [`Reflector`]: a local cache of one kind kept in sync (list + watch + resume).
//! * [`Elector`]: fenced leader election over a `Lease` lock; [`Client::fenced`] makes
//!   every write carry the leader's fencing token.
//!
//! This crate talks gRPC only; it does not depend on the store or the apiserver.

pub mod client;
pub mod elector;
pub mod error;
pub mod events;
pub mod pool;
pub mod reflector;
pub mod resource;
pub mod watch;

pub use client::{Client, DeleteParams, ListParams, ObjectList};
pub use elector::{Elector, ElectorConfig};
pub use error::ClientError;
pub use events::EventRecorder;
pub use pool::{endpoint_url, tls_from_files, Options};
pub use reflector::{Change, Reflector};
pub use resource::Resource;
pub use watch::WatchEvent;
