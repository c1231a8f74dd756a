//! The configuration schema: what `fleet.toml` and its drop-ins may say.
//!
//! Every table denies unknown keys so that a typo is an error, not a silently ignored
//! setting. Every field has a default, so an empty file is valid: it describes a host
//! that has the package but is not part of a cluster yet.

use serde::{Deserialize, Serialize};

/// The daemon's API port unless `daemon.api_port` says otherwise.
pub const DEFAULT_API_PORT: u16 = 19500;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub local: LocalConfig,
    pub cluster: ClusterConfig,
    pub nodes: Vec<NodeConfig>,
    pub milvus: MilvusConfig,
    pub etcd: EtcdConfig,
    pub object_storage: ObjectStorageConfig,
    pub pulsar: PulsarConfig,
    pub kafka: KafkaConfig,
    pub load_balancer: LoadBalancerConfig,
    pub runtime: RuntimeConfig,
    pub images: ImagesConfig,
    pub daemon: DaemonConfig,
}

/// Settings of this host only (the rest describes the whole cluster).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// This host's entry in `nodes`; empty means "the host name".
    pub node_name: String,
    /// How this host's etcd member forms or joins the cluster (written by `init` and
    /// `join`): the members at the time (`name=http://addr:port,...`; empty: every
    /// storage and witness node in `nodes`), and whether the cluster already exists.
    pub etcd_initial_cluster: String,
    pub etcd_initial_cluster_state: EtcdClusterState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdClusterState {
    /// The members start together (a static node list, or `init`'s one member).
    #[default]
    New,
    /// This member joins a running cluster (`join`).
    Existing,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Milvus in cluster mode: coordinators, proxies, query/data/streaming nodes.
    #[default]
    Distributed,
    /// One Milvus standalone server on one compute node (the leader places it), the
    /// others on standby.
    StandaloneHa,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub topology: Topology,
    /// Where components keep their data on every node.
    pub data_dir: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "milvus-fleet".into(),
            topology: Topology::default(),
            data_dir: "/var/lib/milvus-fleet-data".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs an etcd member and a MinIO server (part of the erasure-coded pool).
    Storage,
    /// Runs the Milvus roles and the load balancer.
    Compute,
    /// Runs only an etcd member and the daemon: the tie-breaker of a two-node site.
    Witness,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// IP address or DNS name the other nodes reach this one at.
    pub address: String,
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Storage, Role::Compute]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MilvusVersion {
    #[serde(rename = "2.5")]
    V2_5,
    #[default]
    #[serde(rename = "2.6")]
    V2_6,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageQueue {
    /// Milvus 2.6's embedded write-ahead log on object storage.
    #[default]
    Woodpecker,
    Pulsar,
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MilvusConfig {
    pub version: MilvusVersion,
    pub message_queue: MessageQueue,
    /// gRPC/REST port of each proxy.
    pub proxy_port: u16,
    /// Metrics and health port of each Milvus process.
    pub metrics_port: u16,
    /// TTL of the Milvus processes' sessions in etcd (`common.session.ttl`): how long a
    /// lost standalone server blocks its successor, and how long a stalled Milvus process
    /// may miss keepalives before it counts as gone. 5 s: on a 2-core test host with both
    /// cores saturated for 10 minutes, a 5 s session was never lost (benches/client_view.rs),
    /// and it takes up to 5 s off a standalone server's failover against the 10 s before.
    pub session_ttl_secs: u32,
}

impl Default for MilvusConfig {
    fn default() -> Self {
        Self {
            version: MilvusVersion::default(),
            message_queue: MessageQueue::default(),
            proxy_port: 19530,
            metrics_port: 9091,
            session_ttl_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// Run by milvus-fleet on the cluster's own nodes.
    #[default]
    Local,
    /// Provided by the site; milvus-fleet only connects to it.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub mode: ServiceMode,
    /// Client URLs of an external etcd (mode = "external" only).
    pub endpoints: Vec<String>,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics` of a local member (no keys behind it): what the
    /// daemon probes to tell a running member from a frozen one, without a TLS handshake.
    pub metrics_port: u16,
    /// Raft timing. Short values allow short leader leases (etcd refuses a lease TTL
    /// below ~1.5 x the election timeout), at the cost of more heartbeat traffic.
    pub heartbeat_interval_ms: u32,
    pub election_timeout_ms: u32,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            mode: ServiceMode::Local,
            endpoints: Vec::new(),
            client_port: 2379,
            peer_port: 2380,
            metrics_port: 2381,
            heartbeat_interval_ms: 50,
            election_timeout_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectStorageKind {
    /// A MinIO pool run by milvus-fleet on the storage nodes.
    #[default]
    Minio,
    /// An S3-compatible service provided by the site.
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStorageConfig {
    pub kind: ObjectStorageKind,
    /// host:port of the external S3 service (kind = "s3" only).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub use_tls: bool,
    /// File holding `access_key_id` and `secret_access_key` (mode 0600). Secrets never
    /// go in this file: it is world-readable and printed by `config check`.
    pub credentials_file: String,
    /// MinIO API port on storage nodes (kind = "minio").
    pub minio_port: u16,
    /// MinIO console port on storage nodes (kind = "minio").
    pub minio_console_port: u16,
    /// Drives (data directories) per storage node in the MinIO pool; the pool needs at
    /// least 4 in all for erasure coding.
    pub minio_drives_per_node: u32,
}

impl Default for ObjectStorageConfig {
    fn default() -> Self {
        Self {
            kind: ObjectStorageKind::Minio,
            endpoint: String::new(),
            bucket: "milvus".into(),
            region: "us-east-1".into(),
            use_tls: false,
            credentials_file: "/etc/milvus-fleet/credentials/object-storage".into(),
            minio_port: 9000,
            minio_console_port: 9001,
            minio_drives_per_node: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PulsarConfig {
    /// The node that runs the Pulsar broker (message_queue = "pulsar" only).
    pub node: String,
    pub port: u16,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        Self {
            node: String::new(),
            port: 6650,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// host:port of the site's Kafka brokers (message_queue = "kafka" only).
    pub brokers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// Port of the nginx L4 load balancer in front of the proxies (what clients use).
    pub port: u16,
    /// Where that port listens: IP addresses, or `node` for the node's own address; empty
    /// (the default): every address. A per-host choice belongs in a drop-in in
    /// /etc/milvus-fleet/fleet.d.
    pub addresses: Vec<String>,
    /// Port on compute nodes through which the Milvus roles reach the MinIO pool, so
    /// that losing one storage node does not cut any compute node off its objects.
    pub s3_port: u16,
    /// Port on compute nodes through which the Milvus roles reach the etcd members, so
    /// that adding or losing a member changes nothing in the Milvus roles' settings.
    pub etcd_port: u16,
    /// Port on 127.0.0.1 where the load balancer answers the daemon's health probe over
    /// HTTP (a TCP connect alone would succeed against a frozen nginx: the kernel accepts).
    pub health_port: u16,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            port: 19537,
            addresses: Vec::new(),
            s3_port: 19538,
            etcd_port: 23790,
            health_port: 19539,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    #[default]
    Docker,
    Podman,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub engine: Engine,
}

/// Container images. Pinned defaults; a site with a private registry or locally built
/// images overrides them here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    pub etcd: String,
    pub minio: String,
    pub milvus: String,
    pub nginx: String,
    pub pulsar: String,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            etcd: "quay.io/coreos/etcd:v3.5.21".into(),
            minio: "minio/minio:RELEASE.2025-04-22T22-12-26Z".into(),
            milvus: "milvusdb/milvus:v2.6.11".into(),
            nginx: "nginx:1.27-alpine".into(),
            pulsar: "apachepulsar/pulsar:3.0.12".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// HTTPS API port (mutual TLS against the cluster CA).
    pub api_port: u16,
    /// host:port the other daemons reach this one's API at; empty means this node's
    /// address and api_port.
    pub api_advertise: String,
    /// Leader lease in seconds: how long a lost leader host can hold leadership.
    pub lease_ttl_secs: u32,
    pub log_level: LogLevel,
    /// http(s) URL the leader POSTs peer alerts to (JSON); empty: journal and metrics only.
    pub alert_webhook: String,
    /// A running component that does not answer its health probe for this long is wedged
    /// and restarted through D-Bus.
    pub wedged_after_secs: u32,
    /// At most this many wedged restarts of one component per `restart_window_secs`;
    /// past that the daemon raises an alert and leaves it alone.
    pub restart_budget: u32,
    pub restart_window_secs: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            api_port: DEFAULT_API_PORT,
            api_advertise: String::new(),
            lease_ttl_secs: 1,
            log_level: LogLevel::default(),
            alert_webhook: String::new(),
            wedged_after_secs: 5,
            restart_budget: 3,
            restart_window_secs: 600,
        }
    }
}
