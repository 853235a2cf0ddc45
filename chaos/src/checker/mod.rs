//! Checkers over recorded histories: linearizability of registers, sets, watches, leases,
//! and the plane suite's (service requests, pods, containers, evictions).

pub mod lease;
pub mod linearizable;
pub mod plane;
pub mod set;
pub mod watch;
