//! `flotilla bench` against a real cluster: each workload runs and reports.

mod common;

use std::process::Command;

use common::*;

fn bench(endpoints: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["bench", "--endpoints", endpoints, "--json"])
        .args(suite_pki().as_deref().map(admin_flags).unwrap_or_default())
        .args(args)
        .output()
        .expect("run flotilla bench");
    assert!(out.status.success(), "bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// put, range (both consistencies), txn and watch each complete against a 3-member
/// cluster with no failed request, and report throughput and latency.
#[test]
fn bench_workloads_run_against_a_cluster() {
    let c = Cluster::start(3, &[]);
    let eps = c.endpoints();
    let r = bench(&eps, &["--clients", "4", "--conns", "2", "--total", "200", "put"]);
    assert_eq!((r["ok"].as_u64(), r["failed"].as_u64()), (Some(200), Some(0)), "{r}");
    assert!(r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(r["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0);
    for cons in ["l", "s"] {
        let r = bench(
            &eps,
            &["--clients", "4", "--total", "200", "--key-space-size", "50", "range", "--consistency", cons],
        );
        assert_eq!((r["ok"].as_u64(), r["failed"].as_u64()), (Some(200), Some(0)), "{r}");
    }
    let r = bench(&eps, &["--clients", "4", "--total", "100", "--key-space-size", "5", "txn"]);
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    assert!(r["extra"]["cas_conflicts"].as_f64().is_some(), "{r}");
    let r = bench(&eps, &["--clients", "2", "--conns", "3", "--total", "50", "watch", "--watchers", "30"]);
    assert_eq!(r["extra"]["events_missing"].as_f64(), Some(0.0), "{r}");
    assert_eq!(r["ok"].as_u64(), Some(50 * 30), "every watcher saw every put: {r}");
}

/// The failover workload kills the leader through the given command and reports the time
/// to the first acknowledged write after it.
#[test]
fn bench_failover_kills_the_leader_and_measures_recovery() {
    let c = Cluster::start(3, &[]);
    // The harness writes no pid files: find the member by its client URL. The bracket
    // keeps the pattern from matching the shell that runs it.
    let kill = "pkill -9 -f '[-]-listen-client https?://{endpoint} '";
    let r = bench(
        &c.endpoints(),
        &["--clients", "4", "--duration", "4", "failover", "--kill-cmd", kill, "--kill-after", "1", "--rate", "200"],
    );
    let ms = r["extra"]["failover_ms"].as_f64().expect("failover_ms");
    assert!(ms > 0.0 && ms < 4000.0, "{r}");
    assert!(r["extra"]["longest_gap_ms"].as_f64().unwrap_or(0.0) >= ms * 0.5, "{r}");
}
