//! Results of one run: throughput, latency percentiles (HDR histogram), errors by kind;
//! printed as a table or as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency recorder of one client task; merged at the end.
pub struct Recorder {
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    /// Failed requests by kind (gRPC code and message).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder for latencies from 1 µs to 10 min.
    pub fn new() -> Recorder {
        // Bounds are constants that hdrhistogram accepts.
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Recorder { hist, errors: BTreeMap::new() }
    }

    /// Records one successful request.
    pub fn ok(&mut self, took: Duration) {
        self.hist.saturating_record(took.as_micros().max(1) as u64);
    }

    /// Records one failed request.
    pub fn err(&mut self, status: &tonic::Status) {
        let msg: String = status.message().chars().take(80).collect();
        *self.errors.entry(format!("{:?}: {msg}", status.code())).or_default() += 1;
    }

    /// Adds another recorder's counts.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.hist.add(&other.hist);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The outcome of one workload run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name (`put`, `range`, ...).
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub failed: u64,
    /// Wall time of the measured phase, in seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency_ms: Latency,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Workload-specific figures (e.g. failover time), by name.
    pub extra: BTreeMap<String, f64>,
}

impl Report {
    /// Builds a report from a merged recorder.
    pub fn new(workload: &str, clients: usize, rec: &Recorder, took: Duration) -> Report {
        let h = &rec.hist;
        let ms = |us: u64| us as f64 / 1000.0;
        let ok = h.len();
        let failed = rec.errors.values().sum();
        let seconds = took.as_secs_f64();
        Report {
            workload: workload.to_string(),
            clients,
            ok,
            failed,
            seconds,
            ops_per_sec: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
            latency_ms: if ok == 0 {
                Latency::default()
            } else {
                Latency {
                    p50: ms(h.value_at_quantile(0.5)),
                    p90: ms(h.value_at_quantile(0.9)),
                    p99: ms(h.value_at_quantile(0.99)),
                    p999: ms(h.value_at_quantile(0.999)),
                    max: ms(h.max()),
                    mean: h.mean() / 1000.0,
                }
            },
            errors: rec.errors.clone(),
            extra: BTreeMap::new(),
        }
    }

    /// The report as an aligned table for a terminal.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut s = format!(
            "workload {}  clients {}  ok {}  failed {}  time {:.2}s\n\
             throughput  {:>12.1} ops/s\n\
             latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            self.workload,
            self.clients,
            self.ok,
            self.failed,
            self.seconds,
            self.ops_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean
        );
        for (k, v) in &self.extra {
            s.push_str(&format!("{k:<11} {v:.3}\n"));
        }
        for (k, v) in &self.errors {
            s.push_str(&format!("error       {v} × {k}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_computes_throughput_and_percentiles() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.ok(Duration::from_millis(ms));
        }
        r.err(&tonic::Status::unavailable("etcdserver: no leader"));
        let rep = Report::new("put", 4, &r, Duration::from_secs(2));
        assert_eq!((rep.ok, rep.failed), (100, 1));
        assert!((rep.ops_per_sec - 50.0).abs() < 1e-9);
        assert!((rep.latency_ms.p50 - 50.0).abs() < 0.1, "{:?}", rep.latency_ms);
        assert!((rep.latency_ms.max - 100.0).abs() < 0.1, "{:?}", rep.latency_ms);
        assert_eq!(rep.errors.get("Unavailable: etcdserver: no leader"), Some(&1));
        assert!(rep.table().contains("throughput"));
    }
}
