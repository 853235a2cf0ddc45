//! A recorded history: what each client asked, when, and what came back.
//!
//! Times are nanoseconds on one monotonic clock shared by every client of a run. An
//! operation's outcome is `Ok` (it happened, with this output), `Fail` (it certainly did
//! not happen: refused before it could take effect) or `Info` (unknown: the client lost
//! contact, so it may take effect at any time after its invocation, or never).

use serde::{Deserialize, Serialize};

/// A register operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOp {
    /// Read the key; the output is its value (None: absent).
    Read,
    /// Write a value.
    Write(String),
    /// Compare-and-set: write `new` if the value is `expected` (None: absent).
    Cas {
        /// The value the key must hold.
        expected: Option<String>,
        /// The value written if it does.
        new: String,
    },
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<T> {
    /// It happened, with this output.
    Ok(T),
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may have happened, at any time after its invocation.
    Info,
}

/// The output of a register operation: a read's value, or whether a CAS succeeded
/// (writes: `Written`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOutput {
    /// A read saw this value (None: absent).
    Value(Option<String>),
    /// A write was acknowledged.
    Written,
    /// A CAS answered whether it applied.
    Cas(bool),
}

/// One register operation in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEvent {
    /// The client that made it (clients are sequential: one operation at a time).
    pub process: u32,
    /// The key.
    pub key: String,
    /// What was asked.
    pub op: RegisterOp,
    /// When it was invoked (ns).
    pub invoke: u64,
    /// When its outcome arrived (ns); ignored for `Info`.
    pub complete: u64,
    /// What came back.
    pub outcome: Outcome<RegisterOutput>,
}
