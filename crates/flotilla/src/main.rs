//! The `flotilla` binary: parses the command line, sets up logging and hands over to the
//! library crate of the chosen component. No logic lives here.

mod bench;
mod certs;
mod config_file;
mod controller_manager;
mod master;
mod metrics_endpoint;
mod proxy;
mod scheduler;
mod snapshot;
mod worker;

use clap::{Parser, Subcommand};

/// jemalloc instead of the system allocator: the store allocates and frees many small,
/// short-lived buffers per request from several threads, where glibc malloc cost ~15% of
/// a member's CPU under load (see docs/benchmarks.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Flotilla: a highly-available container control plane.
#[derive(Parser)]
#[command(name = "flotilla", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a master: the replicated store (etcd v3 API) and the apiserver (flotilla.api.v1).
    Master(Box<master::MasterArgs>),
    /// Run a scheduler candidate of its own against any masters (every master also runs
    /// one unless started with --disable-scheduler); the elected one places pods.
    Scheduler(Box<scheduler::SchedulerArgs>),
    /// Run a controller-manager candidate of its own against any masters (every master
    /// also runs one unless started with --disable-controller-manager); the elected one
    /// runs the controllers.
    ControllerManager(Box<controller_manager::ControllerManagerArgs>),
    /// Run a worker: the kubelet that registers this machine as a Node and runs the pods
    /// bound to it, and the service proxy (nftables rules, cluster DNS).
    Worker(Box<worker::WorkerArgs>),
    /// Run the service proxy alone (nftables rules for Services, cluster DNS), or remove
    /// its rules with --cleanup.
    Proxy(Box<proxy::ProxyArgs>),
    /// The shim each container of the process runtime runs under (started by the worker).
    #[command(hide = true)]
    ProcessShim(worker::ShimArgs),
    /// Restore a saved snapshot into the data dirs of a new cluster.
    Snapshot(Box<snapshot::SnapshotArgs>),
    /// Make the cluster CA and issue certificates for masters, nodes, components and users.
    Certs(Box<certs::CertsArgs>),
    /// Load-test an etcd v3 endpoint (Flotilla or etcd), or compare the two.
    Bench(Box<bench::BenchArgs>),
    /// Manage objects and masters (the same as the `flotctl` binary).
    Ctl(Box<flotilla_ctl::CtlArgs>),
}

/// What is logged unless `FLOTILLA_LOG` says otherwise. openraft's heartbeat workers warn
/// on every failed heartbeat, and every linearizable read on the leader sends one to
/// each member: with a member unreachable that is hundreds of lines a second, so only
/// their errors are kept (replication to the member still warns, twice a second).
const DEFAULT_LOG: &str = "info,openraft=warn,openraft::core::heartbeat=error";

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let known = |sub: &str| -> Vec<String> {
        let cmd = Cli::command();
        let args = cmd
            .find_subcommand(sub)
            .map(|c| c.get_arguments().filter_map(|a| a.get_long()).map(String::from).collect());
        args.unwrap_or_default()
    };
    let argv = match config_file::expand(std::env::args_os().collect(), known) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // A flag given twice (the config file's, then the command line's) takes the last.
    let mut cmd = Cli::command();
    for name in config_file::COMMANDS {
        cmd = cmd.mut_subcommand(name, |c| c.args_override_self(true));
    }
    let cli = match Cli::from_arg_matches(&cmd.get_matches_from(argv)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // flotctl prints its own one-line errors and keeps logs quiet.
    let cli = match cli.command {
        Command::Ctl(args) => return flotilla_ctl::run(*args),
        // The shim logs nothing: it must not hold the worker's stderr open.
        Command::ProcessShim(args) => return worker::shim(args),
        other => Cli { command: other },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Master(args) => master::run(*args),
        Command::Scheduler(args) => scheduler::run(*args),
        Command::ControllerManager(args) => controller_manager::run(*args),
        Command::Worker(args) => worker::run(*args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Snapshot(args) => snapshot::run(*args),
        Command::Certs(args) => certs::run(*args),
        Command::Ctl(_) | Command::ProcessShim(_) => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
