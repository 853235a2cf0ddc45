//! Flotilla's fault-injection harness. So far: the history model and the checkers that
//! judge a run (linearizability per key, the set workload, watch guarantees). The
//! topology (network namespaces), nemeses, workloads and `chaos/run` come next; see
//! `chaos/README.md`.
//!
//! The checkers are pure: they take recorded histories and return verdicts, and must not
//! depend on the store, the network or a runtime.

pub mod checker;
pub mod history;
