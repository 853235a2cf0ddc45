//! Checkers over recorded histories: linearizability of registers, sets, watches.

pub mod linearizable;
pub mod set;
pub mod watch;
