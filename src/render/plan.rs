//! What one node runs: the desired state derived from the cluster configuration.
//!
//! The plan holds typed values only (names, addresses, ports, image references that
//! passed validation); the templates turn it into files. Nothing node-specific leaks
//! into another node's plan except what truly is shared (etcd members, the MinIO pool,
//! the proxies behind the load balancer), so adding a compute node changes only the
//! load balancer of the existing nodes.

use serde::Serialize;

use crate::config::model::*;
use crate::config::validate::MILVUS_ROLE_METRICS_PORTS;

/// Where the rendered tree lives on a node; units and compose files refer to it. Root's,
/// outside the daemon's state directory: the daemon must not be able to swap what root runs.
pub const RENDERED_DIR: &str = "/var/lib/milvus-fleet-rendered";
/// Where the daemon names the node that runs the standalone server, for the load
/// balancer (a map entry its nginx includes; see templates/config/lb/nginx.conf).
pub const LB_PLACEMENT_DIR: &str = "/var/lib/milvus-fleet/placement";
/// The file in [`LB_PLACEMENT_DIR`] the daemon writes.
pub const LB_PLACEMENT_FILE: &str = "standalone.map";

pub use super::components::Component;
use super::components::ProbeKind;

impl Component {
    /// Each Milvus role on a node serves metrics and /healthz on its own port.
    fn metrics_port(self, base: u16) -> u16 {
        self.spec().metrics_offset.map_or(0, |offset| {
            debug_assert!(offset <= MILVUS_ROLE_METRICS_PORTS);
            base + offset
        })
    }
}

/// The template context: every value a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub cluster: String,
    pub node: NodeView,
    pub components: Vec<Component>,
    pub engine: EngineView,
    pub rendered_dir: &'static str,
    pub data_dir: String,
    pub credentials_file: String,
    /// Root's copies of the certificates etcd and Milvus use (see host::TLS_DIR).
    pub tls_dir: &'static str,
    pub images: ImagesConfig,
    pub etcd: EtcdView,
    pub minio: Option<MinioView>,
    pub s3: S3View,
    pub milvus: MilvusView,
    pub lb: LbView,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngineView {
    /// The command that runs compose, e.g. `/usr/bin/docker compose`.
    pub compose: &'static str,
    /// The engine's own unit, when it has a daemon.
    pub unit: Option<&'static str>,
    /// Its Docker-compatible API socket (`milvus-fleet follow` reads it).
    pub api_socket: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct EtcdView {
    pub local: bool,
    pub members: Vec<NodeView>,
    /// Client URLs of every member, comma separated.
    pub endpoints: String,
    /// What the Milvus roles use: the node's own load balancer in front of the members
    /// when etcd is local (constant as members come and go), else the external list.
    pub milvus_endpoints: String,
    /// host:port of every member's client port, for the load balancer.
    pub client_servers: Vec<String>,
    /// This node's own member's host:port, when it runs one: the load balancer prefers it
    /// (a frozen remote member's kernel still accepts connections that never answer).
    pub local_client_server: Option<String>,
    pub initial_cluster: String,
    /// `new` or `existing`.
    pub initial_cluster_state: &'static str,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub heartbeat_interval_ms: u32,
    pub election_timeout_ms: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MinioView {
    pub port: u16,
    pub console_port: u16,
    /// Every drive of the pool, as MinIO's server arguments.
    pub volumes: String,
    pub drives: Vec<u32>,
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3View {
    /// host:port the Milvus roles use.
    pub address: String,
    pub bucket: String,
    pub region: String,
    pub use_tls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MilvusView {
    pub version: &'static str,
    pub message_queue: &'static str,
    pub standalone: bool,
    pub proxy_port: u16,
    pub session_ttl_secs: u32,
    pub pulsar_address: String,
    pub kafka_brokers: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LbView {
    pub port: u16,
    /// nginx `listen` values of the clients' port (`port` alone: every address).
    pub listen: Vec<String>,
    pub s3_port: u16,
    pub etcd_port: u16,
    pub health_port: u16,
    /// host:port of every Milvus endpoint behind the load balancer.
    pub upstreams: Vec<String>,
    /// Standalone-ha: an upstream group per compute node, with that node's server only;
    /// the daemon's placement file picks the group. Empty in the distributed topology.
    pub placed_upstreams: Vec<PlacedUpstream>,
    pub placement_dir: &'static str,
}

/// Where the clients' port listens (pure): each configured address (`node`: the node's
/// own), or every address when none is configured.
fn lb_listen(lb: &crate::config::model::LoadBalancerConfig, node_address: &str) -> Vec<String> {
    if lb.addresses.is_empty() {
        return vec![lb.port.to_string()];
    }
    let mut listen: Vec<String> = lb
        .addresses
        .iter()
        .map(|a| {
            if a == "node" {
                node_address
            } else {
                a.as_str()
            }
        })
        .map(|a| match a.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", lb.port),
            _ => format!("{a}:{}", lb.port),
        })
        .collect();
    listen.dedup();
    listen
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacedUpstream {
    /// The upstream group's name, `milvus_on_<node>`.
    pub group: String,
    /// host:port of that node's server.
    pub server: String,
}

/// The load balancer's upstream group for a standalone server placed on `node`.
pub fn placed_upstream_group(node: &str) -> String {
    format!("milvus_on_{node}")
}

/// What a single component's templates see on top of the node plan.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub name: &'static str,
    pub unit: String,
    pub after: Vec<String>,
    pub compose_file: String,
    /// The container's name (its compose file's `container_name`).
    pub container: String,
    pub milvus_run: Vec<&'static str>,
    pub metrics_port: u16,
    /// Whether the compose file takes the object-storage credentials from the unit's
    /// environment (systemd reads the 0600 credentials file; no file of ours holds them).
    pub needs_credentials: bool,
    /// Whether the component takes a new configuration on SIGHUP (nginx) instead of a restart.
    pub reloads: bool,
    /// Whether milvus-fleet.target pulls the unit in. The standalone server is started
    /// by the daemon on the node the leader placed it on, and nowhere else.
    pub wanted_by_target: bool,
    /// The lease proof its follower watches (see supervise/lease_proof.rs), if any.
    pub fence_on_lease: Option<&'static str>,
    /// The component's health probe (supervise::health::Probe), checked by the unit's
    /// ExecStartPost and by the daemon.
    pub probe: String,
    /// The Linux capabilities its container keeps.
    pub capabilities: Vec<&'static str>,
}

impl NodePlan {
    /// The plan of node `name`; `None` when the configuration has no such node.
    pub fn for_node(config: &FleetConfig, name: &str) -> Option<Self> {
        let node = config.nodes.iter().find(|n| n.name == name)?;
        let standalone = config.cluster.topology == Topology::StandaloneHa;
        let etcd_local = config.etcd.mode == ServiceMode::Local;
        let minio_local = config.object_storage.kind == ObjectStorageKind::Minio;

        let mut components: Vec<Component> = super::components::COMPONENTS
            .iter()
            .filter(|spec| (spec.runs_on)(config, node))
            .map(|spec| spec.component)
            .collect();
        components.sort();

        let with_role = |roles: &[Role]| -> Vec<&NodeConfig> {
            config
                .nodes
                .iter()
                .filter(|n| n.roles.iter().any(|r| roles.contains(r)))
                .collect()
        };
        let etcd_members: Vec<NodeView> = with_role(&[Role::Storage, Role::Witness])
            .into_iter()
            .map(|n| NodeView {
                name: n.name.clone(),
                address: n.address.clone(),
            })
            .collect();
        let etcd = &config.etcd;
        let endpoints = config.etcd_client_urls().join(",");
        let client_servers = etcd_members
            .iter()
            .map(|m| format!("{}:{}", m.address, etcd.client_port))
            .collect();
        let local_client_server = components
            .contains(&Component::Etcd)
            .then(|| format!("{}:{}", node.address, etcd.client_port));
        let milvus_endpoints = if etcd_local {
            format!("https://127.0.0.1:{}", config.load_balancer.etcd_port)
        } else {
            endpoints.clone()
        };
        let initial_cluster = match config.local.etcd_initial_cluster.as_str() {
            "" => etcd_members
                .iter()
                .map(|m| {
                    format!(
                        "{}={}",
                        m.name,
                        crate::config::etcd_url(&m.address, etcd.peer_port)
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
            members => members.to_owned(),
        };
        let initial_cluster_state = match config.local.etcd_initial_cluster_state {
            EtcdClusterState::New => "new",
            EtcdClusterState::Existing => "existing",
        };

        let storage = &config.object_storage;
        let minio = minio_local.then(|| {
            let drives: Vec<u32> = (1..=storage.minio_drives_per_node).collect();
            let servers: Vec<String> = with_role(&[Role::Storage])
                .iter()
                .map(|n| format!("{}:{}", n.address, storage.minio_port))
                .collect();
            let volumes = servers
                .iter()
                .flat_map(|server| {
                    drives
                        .iter()
                        .map(move |d| format!("http://{server}/data{d}"))
                })
                .collect::<Vec<_>>()
                .join(" ");
            MinioView {
                port: storage.minio_port,
                console_port: storage.minio_console_port,
                volumes,
                drives,
                servers,
            }
        });
        let s3_address = if minio_local {
            format!("127.0.0.1:{}", config.load_balancer.s3_port)
        } else {
            storage.endpoint.clone()
        };

        let compute = with_role(&[Role::Compute]);
        let proxy = |n: &NodeConfig| format!("{}:{}", n.address, config.milvus.proxy_port);
        let upstreams = compute.iter().map(|n| proxy(n)).collect();
        let placed_upstreams = if standalone {
            compute
                .iter()
                .map(|placed| PlacedUpstream {
                    group: placed_upstream_group(&placed.name),
                    server: proxy(placed),
                })
                .collect()
        } else {
            vec![]
        };
        let pulsar_address = config
            .nodes
            .iter()
            .find(|n| n.name == config.pulsar.node)
            .map(|n| format!("pulsar://{}:{}", n.address, config.pulsar.port))
            .unwrap_or_default();

        Some(Self {
            cluster: config.cluster.name.clone(),
            node: NodeView {
                name: node.name.clone(),
                address: node.address.clone(),
            },
            components,
            engine: match config.runtime.engine {
                Engine::Docker => EngineView {
                    compose: "/usr/bin/docker compose",
                    unit: Some("docker.service"),
                    api_socket: "/run/docker.sock",
                },
                Engine::Podman => EngineView {
                    compose: "/usr/bin/podman compose",
                    // Podman has no daemon: its API service is socket-activated.
                    unit: Some("podman.socket"),
                    api_socket: "/run/podman/podman.sock",
                },
            },
            rendered_dir: RENDERED_DIR,
            data_dir: config.cluster.data_dir.clone(),
            credentials_file: storage.credentials_file.clone(),
            tls_dir: crate::host::TLS_DIR,
            images: config.images.clone(),
            etcd: EtcdView {
                local: etcd_local,
                members: etcd_members,
                endpoints,
                milvus_endpoints,
                client_servers,
                local_client_server,
                initial_cluster,
                initial_cluster_state,
                client_port: etcd.client_port,
                peer_port: etcd.peer_port,
                metrics_port: etcd.metrics_port,
                heartbeat_interval_ms: etcd.heartbeat_interval_ms,
                election_timeout_ms: etcd.election_timeout_ms,
            },
            minio,
            s3: S3View {
                address: s3_address,
                bucket: storage.bucket.clone(),
                region: storage.region.clone(),
                use_tls: storage.use_tls,
            },
            milvus: MilvusView {
                version: match config.milvus.version {
                    MilvusVersion::V2_5 => "2.5",
                    MilvusVersion::V2_6 => "2.6",
                },
                message_queue: match config.milvus.message_queue {
                    MessageQueue::Woodpecker => "woodpecker",
                    MessageQueue::Pulsar => "pulsar",
                    MessageQueue::Kafka => "kafka",
                },
                standalone,
                proxy_port: config.milvus.proxy_port,
                session_ttl_secs: config.milvus.session_ttl_secs,
                pulsar_address,
                kafka_brokers: config.kafka.brokers.join(","),
            },
            lb: LbView {
                port: config.load_balancer.port,
                listen: lb_listen(&config.load_balancer, &node.address),
                s3_port: config.load_balancer.s3_port,
                etcd_port: config.load_balancer.etcd_port,
                health_port: config.load_balancer.health_port,
                upstreams,
                placed_upstreams,
                placement_dir: LB_PLACEMENT_DIR,
            },
        })
    }

    pub fn component_view(&self, component: Component, metrics_base: u16) -> ComponentView {
        let spec = component.spec();
        ComponentView {
            name: spec.name,
            unit: component.unit_name(),
            after: spec
                .after
                .iter()
                .filter(|dep| self.components.contains(dep))
                .map(|dep| dep.unit_name())
                .collect(),
            compose_file: compose_path(component),
            container: format!("mf-{}", spec.name),
            milvus_run: spec.milvus_run.to_vec(),
            metrics_port: component.metrics_port(metrics_base),
            needs_credentials: spec.needs_credentials,
            reloads: spec.reloads,
            wanted_by_target: spec.wanted_by_target,
            fence_on_lease: spec
                .fences_on_lease
                .then_some(crate::host::LEASE_PROOF_FILE),
            probe: self.probe(component, metrics_base),
            capabilities: spec.capabilities.to_vec(),
        }
    }

    fn probe(&self, component: Component, metrics_base: u16) -> String {
        let address = &self.node.address;
        match component.spec().probe {
            ProbeKind::EtcdHealth => format!("http://{address}:{}/health", self.etcd.metrics_port),
            ProbeKind::MinioLive => format!(
                "http://{address}:{}/minio/health/live",
                self.minio.as_ref().map_or(0, |m| m.port)
            ),
            ProbeKind::PulsarTcp => format!(
                "tcp://{}",
                self.milvus.pulsar_address.trim_start_matches("pulsar://")
            ),
            ProbeKind::LbHealth => format!("http://127.0.0.1:{}/", self.lb.health_port),
            ProbeKind::MilvusHealthz => format!(
                "http://127.0.0.1:{}/healthz",
                component.metrics_port(metrics_base)
            ),
        }
    }
}

/// Paths inside the rendered tree, relative to its root.
pub fn compose_path(component: Component) -> String {
    format!("compose/{}.yaml", component.name())
}

pub fn unit_path(component: Component) -> String {
    format!("units/{}", component.unit_name())
}

#[cfg(test)]
mod tests {
    use super::lb_listen;
    use crate::config::model::LoadBalancerConfig;

    #[test]
    fn the_load_balancer_listens_on_every_address_or_where_it_is_told() {
        let mut lb = LoadBalancerConfig::default();
        assert_eq!(lb_listen(&lb, "10.0.0.1"), ["19537"]);
        lb.addresses = vec!["node".into(), "127.0.0.1".into(), "fd00::1".into()];
        assert_eq!(
            lb_listen(&lb, "10.0.0.1"),
            ["10.0.0.1:19537", "127.0.0.1:19537", "[fd00::1]:19537"]
        );
    }
}
