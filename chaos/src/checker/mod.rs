//! Checkers over recorded histories: linearizability of registers, sets, watches, leases.

pub mod lease;
pub mod linearizable;
pub mod set;
pub mod watch;
