//! Configuration: `fleet.toml` plus drop-ins, merged, checked and turned into the
//! [`Settings`] the rest of the program sees. Nothing is applied until every file
//! has been read and the merged result has passed every check.

mod error;
pub mod model;
mod sources;
pub(crate) mod validate;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use error::{ConfigError, Location};
pub use model::FleetConfig;
pub use sources::ConfigPaths;

/// A validated configuration and the files it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: FleetConfig,
    /// The files that were merged, in merge order.
    pub sources: Vec<PathBuf>,
    /// This host's node name: `local.node_name`, or the host name when that is empty.
    pub node_name: String,
    /// Which file set each key.
    pub provenance: sources::Provenance,
}

impl Settings {
    /// Reads, merges and validates the configuration; the first problem is an error.
    pub fn load(paths: &ConfigPaths) -> Result<Self, ConfigError> {
        let files = paths.files()?;
        let merged = sources::read_and_merge::<FleetConfig>(&files)?;
        let config: FleetConfig =
            merged
                .table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    // Each file passed the schema on its own; a merge of valid files is valid, so
                    // this is only reachable through a bug. Still an error, never a panic.
                    location: Location {
                        file: merged.files.last().cloned(),
                        line_column: None,
                        key: None,
                    },
                    message: format!(
                        "merged configuration does not fit the schema: {}",
                        e.message()
                    ),
                })?;
        let is_set = |key: &str| merged.provenance.file_of(key).is_some();
        if let Err(rejection) = validate::validate(&config, &is_set) {
            return Err(ConfigError::Invalid {
                location: Location {
                    file: merged.provenance.file_of(&rejection.key).map(PathBuf::from),
                    line_column: None,
                    key: Some(rejection.key),
                },
                message: rejection.message,
            });
        }
        // A typo in local.node_name is an error, unless the node list is the cluster's
        // (from etcd): then a name missing from it means "removed from the cluster".
        let local = &config.local.node_name;
        let nodes_from_cluster = match (merged.provenance.file_of("nodes"), &paths.cluster) {
            (Some(file), Some(cluster)) => file == cluster.as_path(),
            _ => false,
        };
        if !local.is_empty()
            && !config.nodes.is_empty()
            && !nodes_from_cluster
            && !config.nodes.iter().any(|n| &n.name == local)
        {
            return Err(ConfigError::Invalid {
                location: Location {
                    file: merged
                        .provenance
                        .file_of("local.node_name")
                        .map(PathBuf::from),
                    line_column: None,
                    key: Some("local.node_name".into()),
                },
                message: format!("{local:?} is not one of the names in `nodes`"),
            });
        }
        let node_name = match config.local.node_name.as_str() {
            "" => local_host_name(),
            name => name.to_owned(),
        };
        Ok(Self {
            config,
            sources: merged.files,
            node_name,
            provenance: merged.provenance,
        })
    }

    /// A digest of the effective configuration: equal digests mean equal settings,
    /// whichever files they came from.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(&self.config).expect("the configuration model is plain data");
        hex(&Sha256::digest(json))
    }

    /// This host's entry in `nodes`, if it has one yet.
    pub fn local_node(&self) -> Option<&model::NodeConfig> {
        self.config.nodes.iter().find(|n| n.name == self.node_name)
    }

    /// The HTTPS URL other daemons reach this one's API at.
    pub fn api_url(&self) -> String {
        let daemon = &self.config.daemon;
        if !daemon.api_advertise.is_empty() {
            return format!("https://{}", daemon.api_advertise);
        }
        let address = self
            .local_node()
            .map_or("127.0.0.1", |n| n.address.as_str());
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        format!("https://{host}:{}", daemon.api_port)
    }

    /// The effective configuration as a TOML document.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.config).expect("the configuration model is plain data")
    }
}

/// etcd users that are not nodes: etcd's `root`, and `milvus` (the Milvus roles' client
/// certificate). A node's certificate name is its etcd user, so no node may take these.
pub const RESERVED_ETCD_USERS: [&str; 2] = ["root", "milvus"];

/// The URL of a local etcd member's client or peer port at `address`: always TLS (the
/// members and every client show a certificate of the cluster CA).
pub fn etcd_url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("https://[{address}]:{port}")
    } else {
        format!("https://{address}:{port}")
    }
}

impl FleetConfig {
    /// Whether node `name` may lead: the storage nodes, when the cluster has any (they
    /// hold etcd's data and are its `root` users); every node of a cluster without.
    /// A witness or compute node never leads beside a storage node (pure).
    pub fn may_lead(&self, name: &str) -> bool {
        use model::Role;
        let storage = |n: &model::NodeConfig| n.roles.contains(&Role::Storage);
        let any_storage = self.nodes.iter().any(storage);
        self.nodes
            .iter()
            .any(|n| n.name == name && (storage(n) || !any_storage))
    }

    /// The client URLs of the cluster's etcd: every local member (storage and witness
    /// nodes), or the external endpoints.
    pub fn etcd_client_urls(&self) -> Vec<String> {
        use model::{Role, ServiceMode};
        match self.etcd.mode {
            ServiceMode::External => self.etcd.endpoints.clone(),
            ServiceMode::Local => self
                .nodes
                .iter()
                .filter(|n| {
                    n.roles
                        .iter()
                        .any(|r| matches!(r, Role::Storage | Role::Witness))
                })
                .map(|n| etcd_url(&n.address, self.etcd.client_port))
                .collect(),
        }
    }
}

/// The kernel's host name (not /proc/sys/kernel/hostname: the daemon's sandbox hides /proc/sys).
fn local_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits, and we stop at the first NUL or the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
