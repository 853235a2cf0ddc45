//! Bugs that can be switched on, in debug builds only, to show that the chaos harness
//! catches what they break. Release builds compile them out (`cfg!(debug_assertions)`).
//!
//! * `FLOTILLA_FAULT_STALE_READS=1`: linearizable reads skip the ReadIndex barrier and are
//!   served from the member's local state, as a buggy store would.

use std::sync::OnceLock;

/// Whether linearizable reads are (wrongly) served locally.
pub fn stale_reads() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    cfg!(debug_assertions)
        && *ON.get_or_init(|| {
            let on = std::env::var("FLOTILLA_FAULT_STALE_READS").is_ok_and(|v| v == "1");
            if on {
                tracing::warn!("FAULT INJECTION: linearizable reads are served locally (FLOTILLA_FAULT_STALE_READS=1)");
            }
            on
        })
}
