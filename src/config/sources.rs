//! Finding the configuration files and merging them.
//!
//! Order (later wins): the main file, then every `*.toml` drop-in sorted by file name
//! across the drop-in directories. When two directories hold the same file name, the
//! later directory's file replaces the earlier one (`/etc` beats `/run` beats `/usr/lib`),
//! and a drop-in that is a symlink to `/dev/null` masks that name: the systemd and
//! zincati convention. Tables merge key by key; any other value, arrays included,
//! is replaced whole.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::{ConfigError, Location};

/// Which files make up the configuration.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    /// The cluster's shared configuration as this node last saw it in etcd (written by
    /// `init`, `join` and the daemon); read first, so local files override it.
    pub cluster: Option<PathBuf>,
    pub main: PathBuf,
    pub dropin_dirs: Vec<PathBuf>,
}

impl ConfigPaths {
    /// The installed layout.
    pub fn system() -> Self {
        Self {
            cluster: Some(crate::host::cluster_file()),
            main: PathBuf::from("/etc/milvus-fleet/fleet.toml"),
            // No directory under /run/milvus-fleet: that is the daemon's runtime
            // directory, and what root reads must not be the daemon user's to change.
            dropin_dirs: ["/usr/lib/milvus-fleet/fleet.d", "/etc/milvus-fleet/fleet.d"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }

    /// The files to read, in merge order. Run as root, every one of them (but the cluster
    /// file, whose values root guards key by key: membership::apply::HOST_SETTINGS) and
    /// every drop-in directory must be root's alone: see [`check_root_owned`].
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut by_name: BTreeMap<OsString, PathBuf> = BTreeMap::new();
        for dir in &self.dropin_dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(read_error(dir, source)),
            };
            if as_root {
                check_root_owned(dir)?;
            }
            for entry in entries {
                let path = entry.map_err(|source| read_error(dir, source))?.path();
                if path.extension().is_some_and(|ext| ext == "toml") {
                    if let Some(name) = path.file_name() {
                        by_name.insert(name.to_owned(), path);
                    }
                }
            }
        }
        let mut files: Vec<PathBuf> = self
            .cluster
            .iter()
            .filter(|p| p.is_file())
            .cloned()
            .collect();
        let own: Vec<PathBuf> = std::iter::once(self.main.clone())
            .chain(by_name.into_values().filter(|p| !is_masked(p)))
            .collect();
        if as_root {
            for file in &own {
                // A missing main file is reported when it is read.
                if file.exists() {
                    check_root_owned(file)?;
                }
            }
        }
        files.extend(own);
        Ok(files)
    }
}

/// Refuses `path` (followed, if a link) unless root owns it and neither its group nor
/// others may write it: a file the daemon's user (or anyone else) could change must not
/// steer what root renders and runs.
pub fn check_root_owned(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| read_error(path, source))?;
    let why = if meta.uid() != 0 {
        format!("owned by uid {}, not root", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "writable by its group or others (mode {:o})",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::Untrusted {
        path: path.to_owned(),
        why,
    })
}

fn is_masked(path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"))
}

fn read_error(path: &Path, error: std::io::Error) -> ConfigError {
    ConfigError::Read {
        path: path.to_owned(),
        error,
    }
}

/// Which file last set each key, so that errors found after merging can name it.
/// Keys use the same notation as the error paths: `nodes[1].address`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Provenance(BTreeMap<String, PathBuf>);

impl Provenance {
    /// The file that set `key` or the nearest value that contains it.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        let mut key = key;
        loop {
            if let Some(file) = self.0.get(key) {
                return Some(file);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }

    fn record(&mut self, key: &str, file: &Path) {
        // A replaced value takes its nested keys' history with it.
        let nested = format!("{key}.");
        let indexed = format!("{key}[");
        self.0
            .retain(|k, _| !(k.starts_with(&nested) || k.starts_with(&indexed)));
        self.0.insert(key.to_owned(), file.to_owned());
    }
}

/// The merged document and where each of its values came from.
#[derive(Debug, Default)]
pub struct Merged {
    pub table: toml::Table,
    pub provenance: Provenance,
    pub files: Vec<PathBuf>,
}

/// Reads every file, checks each one against the schema `T` on its own (so that an
/// error points into the file that has it), and merges them.
pub fn read_and_merge<T: DeserializeOwned>(files: &[PathBuf]) -> Result<Merged, ConfigError> {
    let mut merged = Merged::default();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|source| read_error(file, source))?;
        check_against_schema::<T>(file, &text)?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| parse_error(file, &text, None, &e))?;
        merge_into(&mut merged.table, table, "", file, &mut merged.provenance);
        merged.files.push(file.clone());
    }
    Ok(merged)
}

fn check_against_schema<T: DeserializeOwned>(file: &Path, text: &str) -> Result<(), ConfigError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| parse_error(file, text, None, &e))?;
    match serde_path_to_error::deserialize::<_, T>(deserializer) {
        Ok(_) => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            Err(parse_error(file, text, Some(path), e.inner()))
        }
    }
}

fn parse_error(
    file: &Path,
    text: &str,
    path: Option<String>,
    error: &toml::de::Error,
) -> ConfigError {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let key = key_of(path.as_deref(), &message);
    ConfigError::Parse {
        location: Location {
            file: Some(file.to_owned()),
            line_column: error.span().map(|span| line_column(text, span.start)),
            key,
        },
        message,
    }
}

/// The key an error is about. For an unknown key the deserializer reports the table
/// it is in and names the key only in its message, so put the two together.
fn key_of(path: Option<&str>, message: &str) -> Option<String> {
    let path = path.filter(|p| !p.is_empty() && *p != ".");
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    match (path, unknown) {
        (Some(path), Some(field)) if !path.ends_with(field) => Some(format!("{path}.{field}")),
        (None, Some(field)) => Some(field.to_owned()),
        (path, _) => path.map(str::to_owned),
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn merge_into(
    acc: &mut toml::Table,
    overlay: toml::Table,
    prefix: &str,
    file: &Path,
    provenance: &mut Provenance,
) {
    for (key, value) in overlay {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (acc.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge_into(existing, table, &path, file, provenance);
            }
            (_, value) => {
                provenance.record(&path, file);
                acc.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_refuses_a_file_or_directory_another_user_can_change() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("50-x.toml");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        if as_root {
            check_root_owned(&file).unwrap();
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_root_owned(&file).unwrap_err().to_string();
        assert!(
            e.contains("writable by its group or others (mode 666)"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        if as_root {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        }
        let e = check_root_owned(&file).unwrap_err().to_string();
        assert!(e.contains("not root: root reads only configuration"), "{e}");
        // And the merge stops there, run as root: naming the file.
        if as_root {
            let paths = ConfigPaths {
                cluster: None,
                main: dir.path().join("missing.toml"),
                dropin_dirs: vec![dir.path().to_owned()],
            };
            let e = paths.files().unwrap_err().to_string();
            assert!(e.starts_with(&file.display().to_string()), "{e}");
        }
    }

    #[test]
    fn line_column_is_one_based() {
        assert_eq!(line_column("a = 1\nbb = x\n", 11), (2, 6));
        assert_eq!(line_column("x", 0), (1, 1));
    }

    #[test]
    fn unknown_key_is_joined_to_its_table() {
        let msg = "unknown field `api_prot`, expected one of `api_port`";
        assert_eq!(
            key_of(Some("daemon"), msg).as_deref(),
            Some("daemon.api_prot")
        );
        assert_eq!(key_of(None, msg).as_deref(), Some("api_prot"));
        assert_eq!(
            key_of(Some("daemon.api_port"), "invalid type").as_deref(),
            Some("daemon.api_port")
        );
    }

    #[test]
    fn provenance_falls_back_to_the_enclosing_value() {
        let mut p = Provenance::default();
        p.record("nodes", Path::new("/a.toml"));
        p.record("daemon.api_port", Path::new("/b.toml"));
        assert_eq!(p.file_of("nodes[2].address"), Some(Path::new("/a.toml")));
        assert_eq!(p.file_of("daemon.api_port"), Some(Path::new("/b.toml")));
        assert_eq!(p.file_of("daemon.lease_ttl_secs"), None);
    }

    #[test]
    fn replacing_a_table_value_forgets_its_nested_history() {
        let mut p = Provenance::default();
        p.record("nodes[0].name", Path::new("/a.toml"));
        p.record("nodes", Path::new("/b.toml"));
        assert_eq!(p.file_of("nodes[0].name"), Some(Path::new("/b.toml")));
    }
}
