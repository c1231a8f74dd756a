//! This host: where milvus-fleet keeps its files (state, runtime, PKI, the cluster file,
//! the node drop-in), how they are written (atomically, with the mode and owner each
//! needs: secrets 0600, the daemon's own files owned by its user), and the small runtime
//! a command uses. The bottom layer: it imports nothing of milvus-fleet.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The daemon's system user (systemd/milvus-fleet.sysusers).
pub const DAEMON_USER: &str = "milvus-fleet";
/// Until when the daemon can prove its etcd lease (supervise/lease_proof.rs): the
/// daemon writes it, the standalone server's follower reads it.
pub const LEASE_PROOF_FILE: &str = "/run/milvus-fleet/lease-proof";
/// Written by `init` and `join`: this host's name and how its etcd member starts.
pub const NODE_DROPIN: &str = "/etc/milvus-fleet/fleet.d/10-node.toml";
/// What cloud-init writes for `milvus-fleet-join.service`: server, roles and token (0600).
pub const JOIN_FILE: &str = "/etc/milvus-fleet/join.toml";

/// systemd's StateDirectory= when set (the daemon, tests), else the packaged place.
pub fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/milvus-fleet".into())
}

/// systemd's RuntimeDirectory= when set (the daemon), else the packaged place.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/milvus-fleet".into())
}

/// A one-thread async runtime for the CLI's blocking commands (with rustls' provider,
/// which reqwest and the TLS clients need).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The cluster's shared configuration as this node last saw it in etcd.
pub fn cluster_file() -> PathBuf {
    state_dir().join("cluster.toml")
}

/// This node's certificates: ca.crt, node.crt, node.key, and ca.key on signing nodes.
pub fn pki_dir() -> PathBuf {
    state_dir().join("pki")
}

/// Writes `bytes` to `path` through a temporary file and a rename, with `mode`, owned by
/// `owner` (a user name) when given. The temporary file has the final mode from the
/// start, so a secret is never readable by others, not even for a moment.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, owner: Option<&str>) -> anyhow::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // The umask may have narrowed the mode; set it exactly.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    if let Some(user) = owner {
        chown(&tmp, user)?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Gives `path` to `user` (and its primary group).
pub fn chown(path: &Path, user: &str) -> anyhow::Result<()> {
    let (uid, gid) = user_ids(user).with_context(|| format!("no system user {user}"))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to {user}", path.display()))
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy two integers
    // out of it at once and keep no reference.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null, as checked; the fields are plain integers.
    unsafe { Some(((*entry).pw_uid, (*entry).pw_gid)) }
}

/// Whether this process runs as root (init, join and apply need it).
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("{what} must run as root (it installs units and writes /etc/milvus-fleet)");
    }
    Ok(())
}

/// Seconds since the Unix epoch by this host's clock (0 before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client for the health endpoints of this cluster's components (plain HTTP on the
/// nodes, no proxy), every request bounded by `timeout`.
pub fn plain_http_client(timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a default TLS provider and wants one even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .context("building the HTTP client for health endpoints")
}
