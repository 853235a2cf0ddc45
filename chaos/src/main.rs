//! `flotilla-chaos`: runs seeded fault-injection runs against a real cluster (see the
//! library). Thin: flags, then the runner.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use flotilla_chaos::plane::{self, PlaneConfig, PlaneFault};
use flotilla_chaos::runner::{self, Fault, RunConfig};

/// Fault-injection runs against real `flotilla master` processes in network namespaces.
/// Needs root (namespaces, iptables). Exit 0: every run passed; 1: a run failed (its data
/// and logs are kept and their path printed); 2: cannot run here.
#[derive(Parser)]
#[command(name = "flotilla-chaos", version)]
struct Cli {
    /// smoke: kill, pause and partition the leader once (about 30 s);
    /// full: every fault (kills of the leader, a random member, a majority, all; pause;
    /// partitions: leader isolated, leader in the minority, random halves, a bridge,
    /// one-way; slow links; clock skew and strobe; remove-wipe-readd; damaged data
    /// files), once each in a seeded order, per seed (20 seeds);
    /// plane: the whole plane (3 masters, workers on containerd, a Deployment behind a
    /// Service with clients calling it): without --runs, the smoke run (kill the
    /// scheduler's master, kill a kubelet, lose a worker, kill a container); with
    /// --runs N, every plane fault once per run in a seeded order.
    #[arg(value_enum, default_value = "smoke")]
    suite: Suite,
    /// Seed of the first run (the runs of a suite use seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs (each with its own seed).
    #[arg(long)]
    runs: Option<u64>,
    /// Masters per cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// The flotilla binary.
    #[arg(long, value_name = "PATH")]
    bin: PathBuf,
    /// Where each run's data, logs and report go.
    #[arg(long, value_name = "DIR", default_value = "chaos-results")]
    out: PathBuf,
    /// Switch on a store bug in the members (debug builds only) to show the harness
    /// catches it.
    #[arg(long, value_name = "BUG")]
    inject: Option<Injected>,
    /// Inject only these faults (comma-separated), instead of the suite's (the plane
    /// suite has faults of its own: kill-leader, pause-leader, partition-leader, kill-random, kill-majority, kill-all,
    /// kill-scheduler, kill-controller-manager, pause-controller-manager, kill-kubelet,
    /// partition-worker, partition-workers, lose-worker, kill-container).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// plane: a directory with the flotilla.local/busybox:1 image archive
    /// (scripts/busybox-image makes it; chaos/run does).
    #[arg(long, value_name = "DIR")]
    image_dir: Option<PathBuf>,
    /// plane: workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// plane: the masters' --node-monitor-grace-period, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace: u64,
    /// Rounds of the fault list per run, instead of the suite's.
    #[arg(long)]
    rounds: Option<usize>,
    /// Plaintext on every port. By default the masters' client and peer ports and the
    /// kubelets' are TLS with client certificates required, made for each run by
    /// `flotilla certs` under its directory's pki/.
    #[arg(long)]
    insecure: bool,
    /// Succeed only if every run FAILS (with --inject: the harness must catch the bug).
    #[arg(long)]
    expect_failure: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Injected {
    /// Linearizable reads served from the member's local state (no ReadIndex).
    StaleReads,
    /// The leader expires leases at half their TTL.
    ShortLeases,
    /// The leader times leases on the wall clock (caught with a clock fault).
    LeaseWallClock,
    /// Not a bug: the applier pauses before publishing each revision, widening the window
    /// between "applied" and "readable" that issue 10's stale reads came through. A
    /// correct store passes with it (run it without --expect-failure).
    SlowPublish,
}

#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    Smoke,
    Full,
    Plane,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(std::process::Command::new("id").arg("-u").output(), Ok(o) if o.stdout.starts_with(b"0\n")) {
        eprintln!("flotilla-chaos: must run as root (it creates network namespaces and iptables rules)");
        return ExitCode::from(2);
    }
    if ![3, 5].contains(&cli.masters) {
        eprintln!("flotilla-chaos: --masters must be 3 or 5");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.suite, Suite::Plane) {
        return plane_runs(&cli, &rt);
    }
    let (faults, rounds, default_runs) = match cli.suite {
        Suite::Smoke | Suite::Plane => (vec![Fault::KillLeader, Fault::PauseLeader, Fault::PartitionLeader], 1, 1),
        Suite::Full => (Fault::ALL.to_vec(), 1, 20),
    };
    let faults = match parse_faults::<Fault>(&cli.faults) {
        Ok(f) if f.is_empty() => faults,
        Ok(f) => f,
        Err(e) => {
            eprintln!("flotilla-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rounds = cli.rounds.unwrap_or(rounds);
    let mut failed = 0;
    for n in 0..cli.runs.unwrap_or(default_runs) {
        let seed = cli.seed + n;
        let cfg = RunConfig {
            seed,
            masters: cli.masters,
            bin: cli.bin.clone(),
            dir: cli.out.join(format!("seed-{seed}")),
            faults: faults.clone(),
            rounds,
            clients: 6,
            keys: 10,
            member_env: match cli.inject {
                Some(Injected::StaleReads) => vec![("FLOTILLA_FAULT_STALE_READS".into(), "1".into())],
                Some(Injected::ShortLeases) => vec![("FLOTILLA_FAULT_SHORT_LEASES".into(), "1".into())],
                Some(Injected::LeaseWallClock) => vec![("FLOTILLA_FAULT_LEASE_WALL_CLOCK".into(), "1".into())],
                Some(Injected::SlowPublish) => vec![("FLOTILLA_FAULT_SLOW_PUBLISH".into(), "1".into())],
                None => vec![],
            },
            tls: !cli.insecure,
        };
        let _ = std::fs::remove_dir_all(&cfg.dir);
        // Ctrl-C or SIGTERM ends the run: dropping it kills the members and removes the
        // namespaces (its data and logs stay).
        let outcome = rt.block_on(async {
            tokio::select! {
                r = runner::run(&cfg) => Some(r),
                () = interrupted() => None,
            }
        });
        let Some(outcome) = outcome else {
            println!("interrupted; cleaned up; data and logs of seed {seed} are in {}", cfg.dir.display());
            return ExitCode::from(130);
        };
        match outcome {
            Ok(r) => {
                println!("{}", flotilla_chaos::report::summary(&r));
                if r.passed {
                    let _ = std::fs::remove_dir_all(cfg.dir.join("m1"));
                    for i in 1..=cli.masters {
                        let _ = std::fs::remove_dir_all(cfg.dir.join(format!("m{i}")));
                    }
                } else {
                    failed += 1;
                    println!("run with seed {seed} FAILED; data and logs kept in {}", cfg.dir.display());
                }
            }
            Err(e) => {
                failed += 1;
                println!("run with seed {seed} could not complete: {e}; logs in {}", cfg.dir.display());
            }
        }
    }
    let runs = cli.runs.unwrap_or(default_runs);
    match (cli.expect_failure, failed) {
        (false, 0) => ExitCode::SUCCESS,
        (true, n) if n == runs => {
            println!("every run failed, as expected");
            ExitCode::SUCCESS
        }
        (true, _) => {
            println!("expected every run to fail, but {} passed", runs - failed);
            ExitCode::from(1)
        }
        _ => ExitCode::from(1),
    }
}

/// `--faults` of a suite: each a name of `F`.
fn parse_faults<F: ValueEnum>(names: &[String]) -> Result<Vec<F>, String> {
    names
        .iter()
        .map(|n| {
            F::from_str(n, false).map_err(|_| {
                let known: Vec<String> = F::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|p| p.get_name().to_string())
                    .collect();
                format!("--faults: no fault {n:?} in this suite (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
    }
}

/// The plane suite's runs.
fn plane_runs(cli: &Cli, rt: &tokio::runtime::Runtime) -> ExitCode {
    let Some(image_dir) = cli.image_dir.clone() else {
        eprintln!("flotilla-chaos: the plane suite needs --image-dir (chaos/run gives it)");
        return ExitCode::from(2);
    };
    if cli.workers < 2 {
        eprintln!("flotilla-chaos: --workers must be at least 2 (a lost worker's pods need somewhere to go)");
        return ExitCode::from(2);
    }
    let chosen = match parse_faults::<PlaneFault>(&cli.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("flotilla-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let (faults, shuffle) = match (chosen.is_empty(), cli.runs) {
        (false, _) => (chosen, false),
        (true, None) => (PlaneFault::SMOKE.to_vec(), false),
        (true, Some(_)) => (PlaneFault::ALL.to_vec(), true),
    };
    let runs = cli.runs.unwrap_or(1);
    let mut failed = 0;
    for n in 0..runs {
        let seed = cli.seed + n;
        let cfg = PlaneConfig {
            seed,
            bin: cli.bin.clone(),
            dir: cli.out.join(format!("plane-seed-{seed}")),
            image_dir: image_dir.clone(),
            faults: faults.clone(),
            shuffle,
            workers: cli.workers,
            grace: std::time::Duration::from_secs(cli.grace),
            tls: !cli.insecure,
        };
        let _ = std::fs::remove_dir_all(&cfg.dir);
        println!("plane run, seed {seed}: {} workers, faults in order as they come:", cli.workers);
        let outcome = rt.block_on(async {
            tokio::select! {
                r = plane::run(&cfg) => Some(r),
                () = interrupted() => None,
            }
        });
        match outcome {
            None => {
                println!("interrupted; cleaned up; data and logs of seed {seed} are in {}", cfg.dir.display());
                return ExitCode::from(130);
            }
            Some(Ok(r)) => {
                println!("{}", plane::summary(&r));
                if r.passed {
                    for i in 1..=3 {
                        let _ = std::fs::remove_dir_all(cfg.dir.join(format!("m{i}")));
                    }
                } else {
                    failed += 1;
                    println!("plane run with seed {seed} FAILED; data and logs kept in {}", cfg.dir.display());
                }
            }
            Some(Err(e)) => {
                failed += 1;
                println!("plane run with seed {seed} could not complete: {e}; logs in {}", cfg.dir.display());
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {runs} plane runs failed");
        ExitCode::from(1)
    }
}
