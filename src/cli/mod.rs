//! Command-line interface: clap definitions and dispatch, one file per command group.

mod assets;
mod config;
mod follow;
mod job;
mod local;
mod membership;
mod pki;
mod probe;
mod render;
mod standalone;
mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, ConfigPaths};

/// Highly available Milvus clusters on plain Linux VMs, supervised by systemd.
#[derive(Debug, Parser)]
#[command(
    name = "milvus-fleet",
    version,
    propagate_version = true,
    after_help = "Exit status: 0 success, 1 failure, 2 usage error, 3 invalid configuration.\n\
                  Configuration: /etc/milvus-fleet/fleet.toml, then *.toml drop-ins from \
                  /usr/lib and /etc/milvus-fleet/fleet.d (later wins); run as root, only \
                  files and directories root alone can change."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Main configuration file.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MILVUS_FLEET_CONFIG",
        default_value = "/etc/milvus-fleet/fleet.toml"
    )]
    pub config: PathBuf,
    /// Drop-in directory, lowest precedence first (repeat it); replaces the system
    /// directories /usr/lib and /etc/milvus-fleet/fleet.d.
    #[arg(long = "dropin-dir", global = true, value_name = "DIR")]
    pub dropin_dirs: Vec<PathBuf>,
    /// Read no drop-in directories, only the main file.
    #[arg(long, global = true, conflicts_with = "dropin_dirs")]
    pub no_dropins: bool,
}

impl ConfigArgs {
    pub fn paths(&self) -> ConfigPaths {
        // The cluster file goes with the system drop-ins: a command pointed at files of
        // its own reads only those.
        let system = self.dropin_dirs.is_empty() && !self.no_dropins;
        let dropin_dirs = if self.no_dropins {
            Vec::new()
        } else if self.dropin_dirs.is_empty() {
            ConfigPaths::system().dropin_dirs
        } else {
            self.dropin_dirs.clone()
        };
        ConfigPaths {
            cluster: system.then(crate::host::cluster_file),
            main: self.config.clone(),
            dropin_dirs,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Show this node's daemon: its role, the leader and term.
    Status(status::StatusArgs),
    /// Render the compose files, units and settings a node runs into a directory.
    Render(render::RenderArgs),
    /// Submit, list, show and cancel cluster jobs.
    Job(job::JobArgs),
    /// The cluster CA and node certificates, by hand.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Make a new cluster with this host as its first node; prints a join token.
    Init(membership::InitArgs),
    /// Join this host to a cluster with a join token.
    Join(membership::JoinArgs),
    /// Create, list, revoke and rotate join tokens.
    Token(membership::TokenArgs),
    /// Print #cloud-config user-data that joins a new VM at its first boot.
    CloudInit(membership::CloudInitArgs),
    /// Cluster nodes: remove one.
    Node(membership::NodeArgs),
    /// Render this node's files and bring its units to the wanted state (as root;
    /// the daemon starts milvus-fleet-apply.service, `apply --render-only`, when the
    /// cluster configuration changes, then brings the units up itself over D-Bus).
    Apply(membership::ApplyArgs),
    /// Probe a component's health (what the component units' ExecStartPost runs).
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
    /// Follow a container until it stops: its log to stdout/stderr, its exit status as
    /// this process's (what the component units run once compose has started it).
    #[command(hide = true)]
    Follow(follow::FollowArgs),
    /// Empty this node's local Milvus standalone state (as root; what
    /// milvus-fleet-standalone-clear.service runs before the server starts here again).
    #[command(hide = true)]
    ClearStandaloneState,
    /// Run the node daemon (what milvus-fleet.service starts).
    Daemon,
    /// Write the man page and shell completions into DIR (used when packaging).
    #[command(hide = true)]
    GenAssets {
        /// Output directory.
        dir: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = cli.config.paths();
    match cli.command {
        Command::Config(command) => config::run(command, &paths),
        Command::Status(args) => status::run(args),
        Command::Render(args) => render::run(args, &paths),
        Command::Job(args) => job::run(args),
        Command::Pki(command) => pki::run(command, &paths),
        Command::Init(args) => membership::init(args, &paths),
        Command::Join(args) => membership::join(args, &paths),
        Command::Token(args) => membership::token(args),
        Command::CloudInit(args) => membership::cloud_init(args),
        Command::Node(args) => membership::node(args),
        Command::Apply(args) => membership::apply(args, &paths),
        Command::Probe(args) => probe::run(args),
        Command::Follow(args) => follow::run(args),
        Command::ClearStandaloneState => standalone::run(&paths),
        Command::Daemon => crate::daemon::run(paths),
        Command::GenAssets { dir } => assets::generate(&dir),
    }
}

/// Exit codes: 1 a failure, 2 a usage error (clap's), 3 an invalid configuration,
/// 4 a join that trying again cannot fix (bad token or join file, wrong CA, refused);
/// `follow` exits with its container's status.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(exited) = error.downcast_ref::<follow::Exited>() {
        exited.code()
    } else if error.chain().any(|cause| cause.is::<ConfigError>()) {
        3
    } else if crate::membership::join::refused_for_good(error) {
        crate::membership::join::REFUSED_FOR_GOOD_EXIT
    } else {
        1
    }
}
