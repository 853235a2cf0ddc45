//! A bug that can be switched on, in debug builds only, to show that the fencing test
//! catches it (release builds compile it out, `cfg!(debug_assertions)`):
//!
//! * `FLOTILLA_FAULT_NO_FENCE=1`: writes carrying a fencing token are applied without the
//!   fence compare, so a deposed leader's writes land.

use std::sync::OnceLock;

/// Whether the fence compare is (wrongly) left out of fenced writes.
pub fn no_fence() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    cfg!(debug_assertions)
        && *ON.get_or_init(|| {
            let on = std::env::var("FLOTILLA_FAULT_NO_FENCE").is_ok_and(|v| v == "1");
            if on {
                tracing::warn!("FAULT INJECTION: fenced writes are not checked (FLOTILLA_FAULT_NO_FENCE=1)");
            }
            on
        })
}
