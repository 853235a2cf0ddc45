//! `flotilla snapshot restore`: builds a new cluster member's data dir from a snapshot
//! saved with `flotctl cluster snapshot save` (the role of `etcdutl snapshot restore`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `flotilla snapshot ...`
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Make the data dir of one member of a new cluster from a saved snapshot. Run it for
    /// every member (same file, same --initial-cluster and --initial-cluster-token, each
    /// its own --name and --data-dir), then start each with `flotilla master` and those
    /// same flags (`--initial-cluster-state new`): the cluster starts at the snapshot's
    /// revision with every key, revision and lease it held.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// This member's name; one of the names in --initial-cluster.
        #[arg(long)]
        name: String,
        /// Every member of the new cluster: name=peer-url,...
        #[arg(long, value_name = "NAME=URL,...")]
        initial_cluster: String,
        /// The new cluster's token.
        #[arg(long, value_name = "TOKEN", default_value = "flotilla-cluster")]
        initial_cluster_token: String,
        /// The data dir to make (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Start the restored cluster this many revisions past the snapshot's, so its
        /// revisions stay ahead of any that clients saw from the old cluster after the
        /// snapshot was saved (give every member the same). With workers or other
        /// watchers that outlived the old cluster, use it with --mark-compacted.
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        bump_revision: i64,
        /// Mark every revision up to the restored one compacted: watches resumed from the
        /// old cluster are refused and their clients (kubelets, proxies, controllers) list
        /// again, dropping what the restored state no longer holds.
        #[arg(long)]
        mark_compacted: bool,
    },
}

/// Runs the command.
pub fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Restore {
            file,
            name,
            initial_cluster,
            initial_cluster_token,
            data_dir,
            bump_revision,
            mark_compacted,
        } => {
            let members = flotilla_core::cluster::parse_initial_cluster(&initial_cluster)
                .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?;
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let opts = flotilla_store::state_machine::RestoreOptions { bump_revision, mark_compacted };
            let revision =
                flotilla_store::node::restore(&data_dir, &name, &members, &initial_cluster_token, &bytes, opts)
                    .with_context(|| format!("restoring {} into {}", file.display(), data_dir.display()))?;
            println!(
                "restored {} into {} as member {name} at revision {revision}; start it with `flotilla master --name {name} \
                 --data-dir {} --initial-cluster {initial_cluster} --initial-cluster-token {initial_cluster_token} ...`",
                file.display(),
                data_dir.display(),
                data_dir.display()
            );
            Ok(())
        }
    }
}
