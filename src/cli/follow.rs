//! `milvus-fleet follow CONTAINER`: what a component unit runs as its main process once
//! compose has started the container (supervise/container.rs says why).

use std::path::PathBuf;

use clap::Args;

use crate::supervise::container;

#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The container's name (the compose file's `container_name`).
    container: String,
    /// The container engine's API socket (Docker's, or Podman's Docker-compatible one).
    #[arg(long, value_name = "PATH", default_value = "/run/docker.sock")]
    engine_socket: PathBuf,
    /// Instead of following: resume every process of the container (SIGCONT), so that
    /// a frozen component stops within its grace period (what the units' ExecStop runs).
    #[arg(long)]
    thaw: bool,
    /// Kill the container the moment the node daemon cannot prove its etcd lease, as
    /// this file says (the standalone server's unit; supervise/lease_proof.rs).
    #[arg(long, value_name = "PATH")]
    fence_on_lease: Option<PathBuf>,
}

/// The container stopped with a status other than 0: the process exits with it, so
/// systemd's `Restart=on-failure` sees the failure.
#[derive(Debug, thiserror::Error)]
#[error("container {container} exited with status {status}")]
pub struct Exited {
    pub container: String,
    pub status: i64,
}

impl Exited {
    /// The process exit code: the status where it fits, 1 otherwise.
    pub fn code(&self) -> u8 {
        u8::try_from(self.status)
            .ok()
            .filter(|c| *c != 0)
            .unwrap_or(1)
    }
}

pub fn run(args: FollowArgs) -> anyhow::Result<()> {
    if !container::is_container_name(&args.container) {
        anyhow::bail!(
            "container name {:?}: use 1-128 of a-z, A-Z, 0-9, '-', '_', '.'",
            args.container
        );
    }
    if args.thaw {
        container::thaw(&args.engine_socket, &args.container)?;
        return Ok(());
    }
    match container::follow(
        &args.engine_socket,
        &args.container,
        args.fence_on_lease.as_deref(),
    )? {
        0 => Ok(()),
        status => Err(Exited {
            container: args.container,
            status,
        }
        .into()),
    }
}
