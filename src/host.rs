//! This host: where milvus-fleet keeps its files (state, runtime, PKI, the cluster file,
//! the node drop-in), how they are written (atomically, with the mode and owner each
//! needs: secrets 0600, the daemon's own files owned by its user), and the small runtime
//! a command uses. The bottom layer: it imports nothing of milvus-fleet.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The daemon's system user (systemd/milvus-fleet.sysusers).
pub const DAEMON_USER: &str = "milvus-fleet";
/// Until when the daemon can prove its etcd lease (supervise/lease_proof.rs): the
/// daemon writes it, the standalone server's follower reads it.
pub const LEASE_PROOF_FILE: &str = "/run/milvus-fleet/lease-proof";
/// Written by `init` and `join`: this host's name and how its etcd member starts.
pub const NODE_DROPIN: &str = "/etc/milvus-fleet/fleet.d/10-node.toml";
/// Root's certificates for the data plane, written by `init` and `join`: `ca.crt`,
/// `etcd.crt`/`etcd.key` (the member's server and peer certificate: this node's own),
/// `milvus.crt`/`milvus.key` (the Milvus roles' etcd client, user `milvus`). Root-owned,
/// keys 0600: the containers run as root without CAP_DAC_OVERRIDE and read them as owner.
pub const TLS_DIR: &str = "/etc/milvus-fleet/tls";
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
///
/// Root writes into directories the daemon's user controls (its state directory), so no
/// step follows a symlink a non-root user planted: the parent directory is opened one
/// component at a time without following symlinks (a symlink owned by root is followed,
/// so a host whose /var/lib is a link works), the temporary file is created with
/// O_EXCL|O_NOFOLLOW in that directory, its mode and owner are set on the open file, and
/// the rename happens inside the same directory.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, owner: Option<&str>) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = OpenDir::open(parent)?;
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    dir.write(name, bytes, mode, owner, true)
}

/// A directory opened once (see [`open_dir_no_follow`]), to write files into by name: a
/// file rewritten several times a second (the lease proof) pays for the walk once.
pub struct OpenDir {
    file: std::fs::File,
    path: PathBuf,
}

impl OpenDir {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            file: open_dir_no_follow(path)?,
            path: path.to_owned(),
        })
    }

    /// [`write_file`] of `name` in this directory; `durable`: fsync before the rename (a
    /// runtime file on tmpfs needs none).
    pub fn write(
        &self,
        name: &std::ffi::OsStr,
        bytes: &[u8],
        mode: u32,
        owner: Option<&str>,
        durable: bool,
    ) -> anyhow::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let tmp_name = {
            let mut n = std::ffi::OsString::from(".");
            n.push(name);
            n.push(".tmp");
            n
        };
        let c_name = std::ffi::CString::new(name.as_bytes()).context("a NUL in a file name")?;
        let c_tmp = std::ffi::CString::new(tmp_name.as_bytes()).context("a NUL in a file name")?;
        let tmp = self.path.join(&tmp_name);
        let dir = self.file.as_raw_fd();
        // SAFETY: unlinkat on a directory fd we own and a NUL-terminated name; a missing
        // file is fine.
        unsafe {
            libc::unlinkat(dir, c_tmp.as_ptr(), 0);
        }
        // SAFETY: openat on our directory fd with a NUL-terminated name; the fd it
        // returns is owned by the File below.
        let fd = unsafe {
            libc::openat(
                dir,
                c_tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating {}", tmp.display()));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        if durable {
            file.sync_all()
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        // The umask may have narrowed the mode; set it exactly, on the open file.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        if let Some(user) = owner {
            let (uid, gid) = user_ids(user).with_context(|| format!("no system user {user}"))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {user}", tmp.display()))?;
        }
        // SAFETY: renameat within our directory fd, NUL-terminated names.
        if unsafe { libc::renameat(dir, c_tmp.as_ptr(), dir, c_name.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("writing {}", self.path.join(name).display()));
        }
        Ok(())
    }
}

/// Opens directory `dir` one component at a time, refusing a symlink on the way unless
/// root owns it (see [`write_file`]).
pub fn open_dir_no_follow(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let refuse = |what: &str| anyhow::anyhow!("{}: {what}", dir.display());
    let open_at =
        |at: libc::c_int, name: &std::ffi::CStr, follow: bool| -> std::io::Result<std::fs::File> {
            let flags = libc::O_RDONLY
                | libc::O_DIRECTORY
                | libc::O_CLOEXEC
                | if follow { 0 } else { libc::O_NOFOLLOW };
            // SAFETY: openat with a NUL-terminated name; the fd is owned by the File.
            let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nothing else owns.
            Ok(unsafe { std::fs::File::from_raw_fd(fd) })
        };
    let start = if dir.is_absolute() { c"/" } else { c"." };
    let mut current = open_at(libc::AT_FDCWD, start, true)
        .with_context(|| format!("opening {}", dir.display()))?;
    for component in dir.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir => std::ffi::OsStr::new(".."),
            Component::Prefix(_) => return Err(refuse("not a Unix path")),
        };
        let c_name = std::ffi::CString::new(name.as_bytes()).context("a NUL in a path")?;
        current = match open_at(current.as_raw_fd(), &c_name, false) {
            Ok(next) => next,
            Err(e)
                if e.raw_os_error() == Some(libc::ELOOP)
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                // A symlink: followed only when root owns it.
                let mut stat: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstatat writes one stat we own; the name is NUL-terminated.
                let r = unsafe {
                    libc::fstatat(
                        current.as_raw_fd(),
                        c_name.as_ptr(),
                        &mut stat,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r != 0 || (stat.st_mode & libc::S_IFMT) != libc::S_IFLNK || stat.st_uid != 0 {
                    return Err(refuse(&format!(
                        "{:?} is a symlink root does not own, or no directory: not followed",
                        name
                    )));
                }
                open_at(current.as_raw_fd(), &c_name, true)
                    .with_context(|| format!("opening {}", dir.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", dir.display())),
        };
    }
    Ok(current)
}

/// Creates directory `path` (and its parents) and gives it `mode` and `user` (and its
/// primary group), on the open directory: a symlink planted in its place is refused, not
/// followed (see [`write_file`]).
pub fn make_dir(path: &Path, mode: u32, user: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let dir = open_dir_no_follow(path)?;
    dir.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    let (uid, gid) = user_ids(user).with_context(|| format!("no system user {user}"))?;
    std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_write_follows_no_symlink_a_non_root_user_planted() {
        let dir = tempfile::TempDir::new().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        // A planted temporary file: removed, never written through.
        std::os::unix::fs::symlink(&target, dir.path().join(".f.tmp")).unwrap();
        write_file(&dir.path().join("f"), b"new", 0o600, None).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "new"
        );
        let meta = std::fs::symlink_metadata(dir.path().join("f")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);

        // A directory on the way that is a symlink: followed only when root owns it.
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        if is_root() {
            write_file(&link.join("g"), b"x", 0o644, None).unwrap();
            assert!(real.join("g").is_file());
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        }
        let refused = write_file(&link.join("h"), b"x", 0o644, None).unwrap_err();
        assert!(
            format!("{refused:#}").contains("not followed"),
            "{refused:#}"
        );
        assert!(!real.join("h").exists());
    }
}
