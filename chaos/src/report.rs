//! The terminal summary of a run (the JSON form is `report.json` in the run's directory).

use crate::runner::Report;

/// A few lines for the terminal.
pub fn summary(r: &Report) -> String {
    let mut s = format!("seed {}: {}\n", r.seed, if r.passed { "PASSED" } else { "FAILED" });
    for t in &r.timeline {
        s.push_str(&format!("  {:>7.2}s  {}\n", t.at, t.what));
    }
    for (kind, [n, ok, fail, info]) in &r.ops {
        s.push_str(&format!("  {kind:<16} attempted {n:>6}  ok {ok:>6}  failed {fail:>5}  indeterminate {info:>4}\n"));
    }
    s.push_str(&format!("  history: {}\n", r.linearizable));
    s.push_str(&format!(
        "  set: {} adds, {} acknowledged and present, {} of unknown outcome present; lost acknowledged: {}, unexpected: {}\n",
        r.set_adds[0], r.set_adds[1], r.set_adds[2], r.lost_acknowledged_writes, r.set_unexpected
    ));
    s.push_str(&format!(
        "  watch: {} events on each member's watcher; {}\n",
        r.watch_events,
        if r.watch_problems.is_empty() {
            "ordered, unique, complete, identical".to_string()
        } else {
            r.watch_problems.join("; ")
        }
    ));
    s.push_str(&format!(
        "  leases: {} granted, {} keep-alives acknowledged; {}\n",
        r.leases.leases,
        r.leases.keep_alives,
        if r.leases.valid() {
            "none expired early, revokes final, all expired at the end".to_string()
        } else {
            r.leases.problems.join("; ")
        }
    ));
    let x = &r.cross_reads;
    s.push_str(&format!(
        "  cross-member reads: {} checked ({} over the resource API), {} unanswered, {} saw a put of unknown outcome land late{}; {}\n",
        x.checked,
        x.checked_api,
        x.unanswered,
        x.late_applied,
        if x.late_examples.is_empty() { String::new() } else { format!(" ({})", x.late_examples.join("; ")) },
        if x.stale == 0 {
            "none missed its write".to_string()
        } else {
            format!("{} MISSED the write just acknowledged: {}", x.stale, x.examples.join("; "))
        }
    ));
    s.push_str(&format!(
        "  state hashes: {} ({})\n",
        if r.hashes_equal { "equal" } else { "DIFFERENT" },
        r.hashes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    ));
    s.push_str(&format!("  panics in logs: {}\n", r.panics.len()));
    if !r.unexpected_exits.is_empty() {
        s.push_str(&format!("  members that exited by themselves: {}\n", r.unexpected_exits.join("; ")));
    }
    let mut f = r.failover_secs.clone();
    f.sort_by(|a, b| a.total_cmp(b));
    let p50 = f.get(f.len() / 2).copied().unwrap_or(0.0);
    let max = f.last().copied().unwrap_or(0.0);
    s.push_str(&format!(
        "  fault -> first acknowledged write: p50 {p50:.2}s, max {max:.2}s; longest without a write {:.2}s\n",
        r.longest_unavailable_secs
    ));
    s.push_str(&format!(
        "  acknowledged writes/s: {:.0} before faults, {:.0} during\n",
        r.throughput_before, r.throughput_during
    ));
    s
}
