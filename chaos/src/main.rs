//! `flotilla-chaos`: runs seeded fault-injection runs against a real cluster (see the
//! library). Thin: flags, then the runner.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
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
    /// files), once each in a seeded order, per seed (20 seeds).
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
    /// Inject only these faults (comma-separated), instead of the suite's.
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Rounds of the fault list per run, instead of the suite's.
    #[arg(long)]
    rounds: Option<usize>,
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
    let (faults, rounds, default_runs) = match cli.suite {
        Suite::Smoke => (vec![Fault::KillLeader, Fault::PauseLeader, Fault::PartitionLeader], 1, 1),
        Suite::Full => (Fault::ALL.to_vec(), 1, 20),
    };
    let faults = if cli.faults.is_empty() { faults } else { cli.faults.clone() };
    let rounds = cli.rounds.unwrap_or(rounds);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-chaos: {e}");
            return ExitCode::from(2);
        }
    };
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
        };
        let _ = std::fs::remove_dir_all(&cfg.dir);
        // Ctrl-C or SIGTERM ends the run: dropping it kills the members and removes the
        // namespaces (its data and logs stay).
        let interrupted = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
            }
        };
        let outcome = rt.block_on(async {
            tokio::select! {
                r = runner::run(&cfg) => Some(r),
                () = interrupted => None,
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
