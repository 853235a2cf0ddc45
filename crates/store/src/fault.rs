//! Bugs that can be switched on, in debug builds only, to show that the chaos harness
//! catches what they break. Release builds compile them out (`cfg!(debug_assertions)`).
//!
//! * `FLOTILLA_FAULT_STALE_READS=1`: linearizable reads skip the ReadIndex barrier and are
//!   served from the member's local state, as a buggy store would.
//! * `FLOTILLA_FAULT_SHORT_LEASES=1`: the leader expires leases at half their TTL, while
//!   still answering the full TTL to grants and keep-alives.
//! * `FLOTILLA_FAULT_LEASE_WALL_CLOCK=1`: the leader times leases on the wall clock, so a
//!   clock that jumps ahead expires them early.
//! * `FLOTILLA_FAULT_SLOW_PUBLISH=1`: not a bug but a widened race window: the applier
//!   pauses 0–20 ms (at random, so members fall behind one another) before it publishes
//!   each applied revision to readers. A store that let a linearizable read run between
//!   "applied" and "published" (issue 10) serves stale reads under it; a correct one only
//!   gets slower.
//! * `FLOTILLA_FAULT_SLOW_APPEND=1`: not a bug but an overloaded follower: the member takes
//!   0–250 ms (at random) over each AppendEntries it is sent, so most heartbeat answers
//!   come after the leader stopped waiting for them (one heartbeat interval); the work is
//!   done all the same. A follower must not campaign against a leader it keeps hearing
//!   from, and a leader must not back off from a follower that is merely slow.

use std::sync::OnceLock;

/// Whether switch `var` is on (`=1`, debug builds only); warns once when it is.
fn switch(cell: &'static OnceLock<bool>, var: &str, what: &str) -> bool {
    cfg!(debug_assertions)
        && *cell.get_or_init(|| {
            let on = std::env::var(var).is_ok_and(|v| v == "1");
            if on {
                tracing::warn!("FAULT INJECTION: {what} ({var}=1)");
            }
            on
        })
}

/// Whether linearizable reads are (wrongly) served locally.
pub fn stale_reads() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    switch(&ON, "FLOTILLA_FAULT_STALE_READS", "linearizable reads are served locally")
}

/// Whether the leader (wrongly) expires leases at half their TTL.
pub fn short_leases() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    switch(&ON, "FLOTILLA_FAULT_SHORT_LEASES", "leases expire at half their TTL")
}

/// Whether the leader (wrongly) times leases on the wall clock instead of a monotonic one.
pub fn lease_wall_clock() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    switch(&ON, "FLOTILLA_FAULT_LEASE_WALL_CLOCK", "leases are timed on the wall clock")
}

/// Whether the applier pauses before publishing each revision.
fn slow_publish() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    switch(&ON, "FLOTILLA_FAULT_SLOW_PUBLISH", "the applier pauses up to 20 ms before publishing a revision")
}

/// Called by the applier after an entry's batch is written and before its revision is
/// published to readers: pauses there when `FLOTILLA_FAULT_SLOW_PUBLISH=1`, and runs this
/// thread's [`set_before_publish`] hook in unit tests.
pub fn before_publish() {
    if slow_publish() {
        use rand::Rng;
        std::thread::sleep(std::time::Duration::from_millis(rand::rng().random_range(0..=20)));
    }
    #[cfg(test)]
    BEFORE_PUBLISH.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f();
        }
    });
}

#[cfg(test)]
thread_local! {
    static BEFORE_PUBLISH: std::cell::RefCell<Option<Box<dyn FnMut()>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread each time the applier is about to publish a revision (tests).
#[cfg(test)]
pub fn set_before_publish(f: Option<Box<dyn FnMut()>>) {
    BEFORE_PUBLISH.with(|h| *h.borrow_mut() = f);
}

/// Whether this member is slow to append.
fn slow_append_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    switch(&ON, "FLOTILLA_FAULT_SLOW_APPEND", "this member takes up to 250 ms over each AppendEntries")
}

/// Called before a follower appends what a leader sent: pauses 0–250 ms when
/// `FLOTILLA_FAULT_SLOW_APPEND=1`.
pub async fn slow_append() {
    if slow_append_on() {
        use rand::Rng;
        let ms = rand::rng().random_range(0..=250);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
