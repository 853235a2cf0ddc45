//! Request limits, the same as etcd's defaults so that clients see familiar behaviour.

/// Largest client request accepted, in bytes (etcd's `--max-request-bytes` default).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Most operations in one side (then or else) of a transaction (etcd's `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Smallest lease TTL granted, in seconds; shorter requests are raised to it (etcd's
/// minimum is derived from the election timeout; 2 s suits our 1 s elections).
pub const MIN_LEASE_TTL_SECS: i64 = 2;

/// Largest lease TTL, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;
