//! Flotilla's resource kinds as every client and the server share them (the role of
//! Kubernetes' `k8s.io/api` + apimachinery): [`kinds`] knows each kind's name, scope and
//! JSON/protobuf forms; [`defaults`] and [`validate`] are the boundary every object
//! crosses (each violation names its field path); [`select`] matches objects against
//! label and field selectors.
//!
//! Must not depend on the store, the apiserver, RocksDB or a runtime: `flotctl`, the
//! scheduler, the controllers and the kubelet link it (`cargo tree -p flotilla-api` shows
//! no RocksDB).

pub mod defaults;
pub mod error;
pub mod fence;
pub mod kinds;
pub mod select;
pub mod validate;

pub use error::Error;
pub use fence::Fence;
pub use kinds::Kind;

#[cfg(test)]
mod tests;

/// The finalizer a Foreground delete puts on an object: the garbage collector removes it
/// once the object's dependents are gone.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer an Orphan delete puts on an object: the garbage collector removes it once
/// no dependent names the object as an owner any more.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer (in a namespace's spec) that holds a Terminating namespace until the
/// namespace controller has deleted everything in it.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
