//! `flotilla bench compare`: starts a 3-member etcd and a 3-member Flotilla on loopback
//! (each member with its own data dir, both fsyncing with their defaults), runs the same
//! workload matrix against each in turn (A B A B ...), and prints one table with both
//! columns and the Flotilla/etcd ratio; writes JSON and, when gnuplot is installed, a PNG
//! of throughput against concurrency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::workload::{self, find_leader, Common, Consistency, Workload};
use crate::{BenchError, Report};

/// How to run the comparison.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The etcd server binary.
    pub etcd_bin: PathBuf,
    /// The flotilla binary.
    pub flotilla_bin: PathBuf,
    /// Where results (table, JSON, PNG) are written.
    pub out_dir: PathBuf,
    /// Short run (under two minutes): fewer rounds, shorter phases, 100k keys for memory.
    pub quick: bool,
    /// Rounds of A B alternation.
    pub rounds: usize,
    /// Keep the clusters' data dirs and logs (their path is printed).
    pub keep: bool,
    /// Both clusters with TLS on every port (client certificates required), the
    /// benchmark's clients with an admin's certificate: the cost of TLS on both sides.
    pub tls: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, PartialOrd, Ord)]
enum System {
    Etcd,
    Flotilla,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Flotilla => "flotilla",
        }
    }
}

/// One 3-member cluster of real processes.
struct Cluster {
    system: System,
    bin: PathBuf,
    dir: PathBuf,
    base_port: u16,
    children: Vec<Option<Child>>,
    /// The certificates directory, when the cluster runs TLS.
    pki: Option<PathBuf>,
}

impl Cluster {
    fn client_port(&self, i: usize) -> u16 {
        self.base_port + 10 * i as u16
    }
    fn peer_port(&self, i: usize) -> u16 {
        self.base_port + 10 * i as u16 + 1
    }
    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_port(i))
    }
    fn endpoints(&self) -> Vec<String> {
        (0..3).map(|i| self.endpoint(i)).collect()
    }
    fn pid_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.pid", self.endpoint(i)))
    }

    fn start(
        system: System,
        bin: &Path,
        dir: PathBuf,
        base_port: u16,
        pki: Option<PathBuf>,
    ) -> Result<Cluster, BenchError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        let mut c = Cluster { system, bin: bin.to_path_buf(), dir, base_port, children: vec![None, None, None], pki };
        for i in 0..3 {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), BenchError> {
        let name = format!("{}{}", &self.system.name()[..1], i + 1);
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("{}{}={scheme}://127.0.0.1:{}", &self.system.name()[..1], j + 1, self.peer_port(j)))
            .collect();
        let cluster = cluster.join(",");
        let data = self.dir.join(&name);
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port(i));
        let peer = format!("{scheme}://127.0.0.1:{}", self.peer_port(i));
        // The same flag names on both: etcd's (which Flotilla takes too).
        let tls: Vec<String> = match &self.pki {
            None => Vec::new(),
            Some(pki) => {
                let f = |n: &str| pki.join(n).display().to_string();
                let (crt, key, ca) = (f("master-bench.crt"), f("master-bench.key"), f("ca.crt"));
                let mut v: Vec<String> = [
                    "--cert-file",
                    &crt,
                    "--key-file",
                    &key,
                    "--trusted-ca-file",
                    &ca,
                    "--client-cert-auth",
                    "--peer-cert-file",
                    &crt,
                    "--peer-key-file",
                    &key,
                    "--peer-trusted-ca-file",
                    &ca,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if self.system == System::Etcd {
                    v.push("--peer-client-cert-auth".into());
                }
                v
            }
        };
        let mut cmd = Command::new(&self.bin);
        match self.system {
            System::Etcd => {
                cmd.args(["--name", &name, "--data-dir"])
                    .arg(&data)
                    .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "bench", "--logger", "zap", "--log-level", "warn"])
                    .args(&tls);
            }
            System::Flotilla => {
                cmd.args(["master", "--name", &name, "--data-dir"])
                    .arg(&data)
                    .args(["--listen-client", &client, "--listen-peer", &peer, "--initial-cluster", &cluster])
                    .args(&tls)
                    .env("FLOTILLA_LOG", "warn");
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", self.bin.display())))?;
        std::fs::write(self.pid_file(i), child.id().to_string()).map_err(|e| BenchError::Setup(e.to_string()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Restarts every member whose process has exited (after a failover kill).
    fn revive(&mut self) -> Result<(), BenchError> {
        for i in 0..3 {
            let dead = match &mut self.children[i] {
                Some(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
                None => true,
            };
            if dead {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Waits until every member answers and agrees on a leader.
    async fn wait_ready(&self, within: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for e in self.endpoints() {
                all &= workload::answers(&e).await;
            }
            if all && find_leader(&self.endpoints()).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "{} cluster not ready after {within:?}; logs in {}",
                    self.system.name(),
                    self.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory of each member, in MiB.
    fn rss_mib(&self) -> Vec<f64> {
        self.children
            .iter()
            .flatten()
            .filter_map(|c| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok()?;
                let kb: f64 =
                    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb / 1024.0)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One measured figure: name, per-system values (one per round), and whether higher is
/// better.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
    values: BTreeMap<&'static str, Vec<f64>>,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

struct Matrix {
    figures: Vec<Figure>,
    reports: Vec<(System, Report)>,
}

impl Matrix {
    fn record(&mut self, name: &str, unit: &'static str, higher_is_better: bool, system: System, value: f64) {
        let f = match self.figures.iter_mut().find(|f| f.name == name) {
            Some(f) => f,
            None => {
                self.figures.push(Figure { name: name.into(), unit, higher_is_better, values: BTreeMap::new() });
                self.figures.last_mut().unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        f.values.entry(system.name()).or_default().push(value);
    }
}

fn common(endpoints: Vec<String>, clients: usize, seconds: f64) -> Common {
    Common {
        endpoints,
        conns: clients.clamp(1, 16),
        clients,
        total: None,
        duration: Some(Duration::from_secs_f64(seconds)),
        key_size: 32,
        val_size: 256,
        key_space_size: 1000,
        sequential_keys: false,
        progress: false,
    }
}

/// Runs the comparison and prints the table.
pub async fn run(cfg: CompareConfig) -> Result<(), BenchError> {
    let work = std::env::temp_dir().join(format!("flotilla-compare-{}", std::process::id()));
    let phase = if cfg.quick { 1.5 } else { 4.0 };
    let rounds = if cfg.quick { 1 } else { cfg.rounds.max(1) };
    let failover_tries = if cfg.quick { 2 } else { 5 };
    let memory_keys: u64 = if cfg.quick { 100_000 } else { 1_000_000 };
    eprintln!("compare: data dirs and logs under {}", work.display());
    let pki = if cfg.tls { Some(make_pki(&work.join("pki"))?) } else { None };
    let mut etcd = Cluster::start(System::Etcd, &cfg.etcd_bin, work.join("etcd"), 21790, pki.clone())?;
    let mut flot = Cluster::start(System::Flotilla, &cfg.flotilla_bin, work.join("flotilla"), 22790, pki)?;
    etcd.wait_ready(Duration::from_secs(30)).await?;
    flot.wait_ready(Duration::from_secs(30)).await?;
    let mut m = Matrix { figures: Vec::new(), reports: Vec::new() };
    let started = Instant::now();

    let plan: Vec<(String, Workload, usize)> = vec![
        ("put".into(), Workload::Put, 1),
        ("put".into(), Workload::Put, 16),
        ("put".into(), Workload::Put, 256),
        ("range-l".into(), Workload::Range(Consistency::Linearizable), 16),
        ("range-l".into(), Workload::Range(Consistency::Linearizable), 256),
        ("range-s".into(), Workload::Range(Consistency::Serializable), 16),
        ("txn".into(), Workload::Txn, 16),
    ];
    for round in 0..rounds {
        for (name, w, clients) in &plan {
            for sys in [System::Etcd, System::Flotilla] {
                let cl = if sys == System::Etcd { &etcd } else { &flot };
                eprintln!("compare: round {} {name} clients={clients} {}", round + 1, sys.name());
                let r = workload::run(&common(cl.endpoints(), *clients, phase), w).await?;
                m.record(&format!("{name} c={clients} throughput"), "ops/s", true, sys, r.ops_per_sec);
                m.record(&format!("{name} c={clients} p99"), "ms", false, sys, r.latency_ms.p99);
                m.reports.push((sys, r));
            }
        }
        // Watch: 1000 watchers, put → event latency.
        for sys in [System::Etcd, System::Flotilla] {
            let cl = if sys == System::Etcd { &etcd } else { &flot };
            eprintln!("compare: round {} watch 1000 watchers {}", round + 1, sys.name());
            let mut c = common(cl.endpoints(), 4, phase);
            c.conns = 16;
            let r = workload::run(&c, &Workload::Watch { watchers: 1000 }).await?;
            m.record("watch 1000 watchers p99", "ms", false, sys, r.latency_ms.p99);
            m.record("watch 1000 watchers events/s", "ev/s", true, sys, r.ops_per_sec);
            m.reports.push((sys, r));
        }
    }
    // Failover: kill -9 the leader under steady writes, several times.
    for t in 0..failover_tries {
        for sys in [System::Etcd, System::Flotilla] {
            let cl = if sys == System::Etcd { &mut etcd } else { &mut flot };
            eprintln!("compare: failover try {} {}", t + 1, sys.name());
            let kill = format!("kill -9 $(cat '{}/{{endpoint}}.pid')", cl.dir.display());
            let mut c = common(cl.endpoints(), 8, 5.0);
            c.conns = 3;
            let w = Workload::Failover { kill_cmd: kill, kill_after: Duration::from_secs(1), rate: 500 };
            let r = workload::run(&c, &w).await?;
            m.record(
                "failover kill -9 leader → first ack",
                "ms",
                false,
                sys,
                r.extra.get("failover_ms").copied().unwrap_or(f64::NAN),
            );
            m.record(
                "failover longest gap",
                "ms",
                false,
                sys,
                r.extra.get("longest_gap_ms").copied().unwrap_or(f64::NAN),
            );
            m.reports.push((sys, r));
            cl.revive()?;
            cl.wait_ready(Duration::from_secs(30)).await?;
        }
    }
    // Memory: RSS after writing many 256-byte values.
    for sys in [System::Etcd, System::Flotilla] {
        let cl = if sys == System::Etcd { &etcd } else { &flot };
        eprintln!("compare: memory, {memory_keys} keys of 256 B, {}", sys.name());
        let mut c = common(cl.endpoints(), 256, 0.0);
        c.duration = None;
        c.total = Some(memory_keys);
        c.key_space_size = memory_keys;
        c.sequential_keys = true;
        let r = workload::run(&c, &Workload::Put).await?;
        m.record(&format!("load {memory_keys} keys throughput"), "ops/s", true, sys, r.ops_per_sec);
        let rss = cl.rss_mib();
        m.record(
            &format!("RSS after {memory_keys} keys (max member)"),
            "MiB",
            false,
            sys,
            rss.iter().copied().fold(0.0, f64::max),
        );
        m.reports.push((sys, r));
    }
    let elapsed = started.elapsed();
    drop(etcd);
    drop(flot);
    let table = render(&m.figures);
    println!("{table}");
    println!("(medians over {rounds} round(s); {failover_tries} failover tries; took {:.0} s)", elapsed.as_secs_f64());
    write_outputs(&cfg.out_dir, &m, &table)?;
    if cfg.keep {
        eprintln!("compare: kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// A CA, one certificate every member of both clusters serves and presents (127.0.0.1),
/// and an admin's for the benchmark's clients, which it then uses.
fn make_pki(dir: &Path) -> Result<PathBuf, BenchError> {
    let bad = |e: flotilla_tls::TlsError| BenchError::Setup(format!("certificates in {}: {e}", dir.display()));
    let ca = flotilla_tls::Ca::init(dir, "flotilla-bench", 2).map_err(bad)?;
    let master = flotilla_tls::Kind::Master { name: "bench".into(), addresses: vec!["127.0.0.1".into()] };
    ca.issue_to(dir, &master, 2, false).map_err(bad)?;
    let (crt, key) = ca.issue_to(dir, &flotilla_tls::Kind::Admin { user: "bench".into() }, 2, false).map_err(bad)?;
    let files = flotilla_tls::ClientFiles { ca: dir.join("ca.crt"), identity: Some((crt, key)) };
    workload::use_tls(flotilla_tls::ClientTls::new(files).map_err(bad)?)?;
    Ok(dir.to_path_buf())
}

fn render(figures: &[Figure]) -> String {
    let mut s = format!("{:<42} {:>12} {:>12} {:>9}  {}\n", "figure", "etcd", "flotilla", "ratio", "better");
    for f in figures {
        let e = median(f.values.get("etcd").map(Vec::as_slice).unwrap_or(&[]));
        let fl = median(f.values.get("flotilla").map(Vec::as_slice).unwrap_or(&[]));
        let ratio = fl / e;
        let better = if f.higher_is_better { fl > e } else { fl < e };
        s.push_str(&format!(
            "{:<42} {:>12.2} {:>12.2} {:>8.2}x  {}\n",
            format!("{} ({})", f.name, f.unit),
            e,
            fl,
            ratio,
            if better { "flotilla" } else { "etcd" }
        ));
    }
    s
}

fn write_outputs(dir: &Path, m: &Matrix, table: &str) -> Result<(), BenchError> {
    let io = |e: std::io::Error| BenchError::Setup(format!("cannot write results to {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("compare.txt"), table).map_err(io)?;
    let json = serde_json::json!({
        "figures": m.figures,
        "reports": m.reports.iter().map(|(s, r)| serde_json::json!({"system": s.name(), "report": r})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&json).unwrap_or_default()).map_err(io)?;
    // Throughput against concurrency for puts and linearizable ranges.
    let mut data = String::from("# clients etcd_put flotilla_put etcd_range flotilla_range\n");
    for c in [1, 16, 256] {
        let get = |name: String, sys: &str| {
            m.figures
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| f.values.get(sys))
                .map(|v| median(v))
                .map_or("NaN".to_string(), |v| format!("{v:.1}"))
        };
        let put = format!("put c={c} throughput");
        let range = format!("range-l c={c} throughput");
        data.push_str(&format!(
            "{c} {} {} {} {}\n",
            get(put.clone(), "etcd"),
            get(put, "flotilla"),
            get(range.clone(), "etcd"),
            get(range, "flotilla")
        ));
    }
    std::fs::write(dir.join("throughput.dat"), &data).map_err(io)?;
    let script = format!(
        "set terminal png size 900,520\nset output '{}'\nset logscale x 2\nset xlabel 'concurrent clients'\n\
         set ylabel 'ops/s'\nset key left top\nset title 'Flotilla vs etcd, 3 members on one machine'\n\
         plot '{d}' using 1:2 with linespoints title 'etcd put', '{d}' using 1:3 with linespoints title 'flotilla put', \
         '{d}' using 1:4 with linespoints title 'etcd range (linearizable)', '{d}' using 1:5 with linespoints title 'flotilla range (linearizable)'\n",
        dir.join("throughput.png").display(),
        d = dir.join("throughput.dat").display()
    );
    match Command::new("gnuplot").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
        Ok(mut child) => {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(script.as_bytes());
            }
            let _ = child.wait();
            eprintln!("compare: results in {} (compare.txt, compare.json, throughput.png)", dir.display());
        }
        Err(_) => eprintln!("compare: gnuplot not installed, no plot; results in {}", dir.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn table_names_the_winner_by_direction() {
        let mut values = BTreeMap::new();
        values.insert("etcd", vec![100.0]);
        values.insert("flotilla", vec![200.0]);
        let t = render(&[
            Figure { name: "put".into(), unit: "ops/s", higher_is_better: true, values: values.clone() },
            Figure { name: "p99".into(), unit: "ms", higher_is_better: false, values },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with("flotilla") && lines[1].contains("2.00x"), "{t}");
        assert!(lines[2].ends_with("etcd"), "{t}");
    }
}
