//! `flotilla certs`: the cluster CA and the certificates it issues (crate `flotilla-tls`;
//! docs/rfcs/0002-security.md).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use flotilla_tls::{Ca, Kind};

/// `flotilla certs ...`
#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Make the cluster CA: DIR/ca.crt (give it to every party) and DIR/ca.key (keep it
    /// where only certificates are made; written 0600). Refuses a DIR that holds one.
    Init {
        /// The certificates directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's name (its CN).
        #[arg(long, default_value = "flotilla-ca")]
        common_name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue a certificate from DIR's CA into DIR/<kind>-<name>.crt and .key (key 0600):
    /// `master n1 --address 10.0.0.1`, `node w1 --address 10.0.0.11`, `scheduler`,
    /// `controller-manager`, `admin alice`, `user bob --group dev`. The user is the
    /// certificate's CN, the group its O (masters: system:master:<name> in
    /// system:masters; nodes: system:node:<name> in system:nodes; admins: in
    /// system:masters).
    Issue {
        /// What the certificate is for.
        #[arg(value_enum)]
        kind: CertKind,
        /// The master's, node's or user's name (not for scheduler, controller-manager).
        name: Option<String>,
        /// The certificates directory (holding the CA).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// An address clients reach a master or node by (IP or DNS name); repeat for more.
        /// For a scheduler or controller-manager: where its https metrics are scraped.
        #[arg(long, value_name = "ADDRESS")]
        address: Vec<String>,
        /// The user's group (kind user).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing certificate and key (rotation).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CertKind {
    Master,
    Node,
    Scheduler,
    ControllerManager,
    Admin,
    User,
}

/// Runs the command.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::Init { dir, common_name, days } => {
            Ca::init(&dir, &common_name, days)?;
            println!(
                "made the cluster CA {common_name:?} in {}: ca.crt (trust it everywhere), ca.key (keep it safe)",
                dir.display()
            );
        }
        CertsCommand::Issue { kind, name, dir, address, group, days, force } => {
            let named = |what: &str| {
                name.clone().ok_or_else(|| anyhow::anyhow!("a {what} certificate needs the {what}'s name"))
            };
            if group.is_some() && !matches!(kind, CertKind::User) {
                anyhow::bail!("--group is for user certificates");
            }
            if !address.is_empty() && matches!(kind, CertKind::Admin | CertKind::User) {
                anyhow::bail!("--address is for master, node, scheduler and controller-manager certificates");
            }
            let kind = match kind {
                CertKind::Master => Kind::Master { name: named("master")?, addresses: address },
                CertKind::Node => Kind::Node { name: named("node")?, addresses: address },
                CertKind::Scheduler | CertKind::ControllerManager => {
                    if name.is_some() {
                        anyhow::bail!("a scheduler or controller-manager certificate takes no name");
                    }
                    let component =
                        if matches!(kind, CertKind::Scheduler) { "scheduler" } else { "controller-manager" };
                    Kind::Component { component: component.into(), addresses: address }
                }
                CertKind::Admin => Kind::Admin { user: named("admin")? },
                CertKind::User => Kind::User { user: named("user")?, groups: group.into_iter().collect() },
            };
            let ca = Ca::load(&dir)?;
            let (crt, key) = ca.issue_to(&dir, &kind, days, force)?;
            let (cn, o) = kind.subject();
            println!(
                "issued {} (CN {cn:?}{}) and {}",
                crt.display(),
                o.first().map(|g| format!(", O {g:?}")).unwrap_or_default(),
                key.display()
            );
        }
    }
    Ok(())
}
