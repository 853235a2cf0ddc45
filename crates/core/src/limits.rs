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

/// How tonic's connector words a failure to open a connection (an UNAVAILABLE status whose
/// message starts with one of these): a request that failed so was never sent, and even a
/// write may be sent elsewhere. Any other failure may have been delivered.
/// (`tls handshake error` is the TLS connector's, in `flotilla-tls`.)
pub const CONNECT_FAILURE_PREFIXES: [&str; 6] = [
    "tcp connect error",
    "tcp open error",
    "tcp connect timeout",
    "dns error",
    "error trying to connect",
    "tls handshake error",
];

/// Whether an UNAVAILABLE status's `message` says the connection never opened.
pub fn is_connect_failure(message: &str) -> bool {
    CONNECT_FAILURE_PREFIXES.iter().any(|p| message.starts_with(p))
}
