//! What varies per component, in one table: [`COMPONENTS`]. Which nodes run it, its
//! templates (embedded from templates/), what its unit is ordered after, whether a
//! change to its settings reloads or restarts it, whether it reads the object-storage
//! credentials, whether milvus-fleet.target pulls it in, how it is probed and, for the
//! Milvus roles, how `milvus run` starts it and which metrics port it has. The plan,
//! the renderer, the embedded template list and reconcile read this table; adding a
//! component is a variant of [`Component`], an entry here and its template(s).

use serde::Serialize;

use crate::config::model::{
    FleetConfig, MessageQueue, MilvusVersion, NodeConfig, ObjectStorageKind, Role, ServiceMode,
    Topology,
};

/// One thing a node runs, as one compose project under one systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Etcd,
    Minio,
    Pulsar,
    Lb,
    Mixcoord,
    Streamingnode,
    Datanode,
    Indexnode,
    Querynode,
    Proxy,
    Standalone,
}

/// A template, by its path under templates/ (and in the rendered tree), with its text.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub path: &'static str,
    pub source: &'static str,
}

macro_rules! template {
    ($path:literal) => {
        Template {
            path: $path,
            source: include_str!(concat!("../../templates/", $path)),
        }
    };
}

/// The unit template every component shares.
pub const UNIT_TEMPLATE: Template = template!("unit.service");
/// What every container runs under (no new privileges, its capabilities, bounded logs):
/// included by each compose template.
pub const CONTAINER_LIMITS_TEMPLATE: Template = template!("compose/container-limits.yaml");

/// A settings file a component reads, rendered from the template of the same name.
#[derive(Debug, Clone, Copy)]
pub struct ConfigFile {
    pub template: Template,
    /// Read only when the component first starts with empty data (etcd's initial
    /// cluster): a change to it must not restart the component.
    pub bootstrap_only: bool,
}

const fn settings(template: Template) -> ConfigFile {
    ConfigFile {
        template,
        bootstrap_only: false,
    }
}

/// How a component's health is asked (the URL comes from the node's plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// etcd's `/health` on its client port.
    EtcdHealth,
    /// MinIO's `/minio/health/live`.
    MinioLive,
    /// A TCP connect to the Pulsar broker.
    PulsarTcp,
    /// The load balancer's own health port.
    LbHealth,
    /// A Milvus role's `/healthz` on its metrics port.
    MilvusHealthz,
}

/// Everything about one component that is not the node's plan.
#[derive(Debug)]
pub struct ComponentSpec {
    pub component: Component,
    pub name: &'static str,
    /// Whether `node` runs it under `config`.
    pub runs_on: fn(&FleetConfig, &NodeConfig) -> bool,
    pub compose: Template,
    pub configs: &'static [ConfigFile],
    /// Units it starts after when they run on the same node. Ordering only: a Milvus
    /// role on a compute-only node uses the cluster's etcd elsewhere.
    pub after: &'static [Component],
    /// A change to its settings files alone reloads it; any other change restarts it.
    pub reloads: bool,
    /// Its unit reads the object-storage credentials file (into compose's environment).
    pub needs_credentials: bool,
    /// milvus-fleet.target pulls it in; otherwise the daemon starts it where the leader
    /// placed it (the standalone server).
    pub wanted_by_target: bool,
    /// Its unit's follower kills it the moment the node daemon cannot prove its etcd
    /// lease (the standalone server: the leader may start another elsewhere).
    pub fences_on_lease: bool,
    pub probe: ProbeKind,
    /// `milvus run` arguments; empty for what is not a Milvus role.
    pub milvus_run: &'static [&'static str],
    /// Its metrics and /healthz port, as an offset from `milvus.metrics_port` (each
    /// Milvus role on a node has its own); None for what is not a Milvus role.
    pub metrics_offset: Option<u16>,
    /// The Linux capabilities its container keeps; every other one is dropped
    /// (templates/compose/container-limits.yaml).
    pub capabilities: &'static [&'static str],
    /// Milvus clients connect to it (`milvus.proxy_port`): the daemon sets Milvus' root
    /// password through it (supervise::milvus_auth).
    pub serves_clients: bool,
}

const ETCD_CONFIGS: &[ConfigFile] = &[
    settings(template!("config/etcd.env")),
    ConfigFile {
        template: template!("config/etcd-bootstrap.env"),
        bootstrap_only: true,
    },
];
const MINIO_CONFIGS: &[ConfigFile] = &[settings(template!("config/minio.env"))];
const LB_CONFIGS: &[ConfigFile] = &[settings(template!("config/lb/nginx.conf"))];
const MILVUS_CONFIGS: &[ConfigFile] = &[settings(template!("config/milvus-user.yaml"))];
const MILVUS_COMPOSE: Template = template!("compose/milvus.yaml");

/// What every Milvus role starts after on its node.
const BEFORE_MILVUS: &[Component] = &[
    Component::Etcd,
    Component::Minio,
    Component::Pulsar,
    Component::Lb,
];
const BEFORE_WORKERS: &[Component] = &[
    Component::Etcd,
    Component::Minio,
    Component::Pulsar,
    Component::Lb,
    Component::Mixcoord,
];

fn has(node: &NodeConfig, role: Role) -> bool {
    node.roles.contains(&role)
}

fn distributed_compute(config: &FleetConfig, node: &NodeConfig) -> bool {
    has(node, Role::Compute) && config.cluster.topology != Topology::StandaloneHa
}

/// A Milvus role of the distributed topology: these differ only in name, run arguments,
/// metrics port and which Milvus versions have them.
const fn milvus_role(
    component: Component,
    name: &'static str,
    runs_on: fn(&FleetConfig, &NodeConfig) -> bool,
    milvus_run: &'static [&'static str],
    metrics_offset: u16,
) -> ComponentSpec {
    ComponentSpec {
        component,
        name,
        runs_on,
        compose: MILVUS_COMPOSE,
        configs: MILVUS_CONFIGS,
        after: BEFORE_WORKERS,
        reloads: false,
        needs_credentials: true,
        wanted_by_target: true,
        fences_on_lease: false,
        probe: ProbeKind::MilvusHealthz,
        milvus_run,
        metrics_offset: Some(metrics_offset),
        capabilities: &[],
        serves_clients: false,
    }
}

/// The table, in the order of [`Component`].
pub const COMPONENTS: &[ComponentSpec] = &[
    ComponentSpec {
        component: Component::Etcd,
        name: "etcd",
        runs_on: |config, node| {
            config.etcd.mode == ServiceMode::Local
                && (has(node, Role::Storage) || has(node, Role::Witness))
        },
        compose: template!("compose/etcd.yaml"),
        configs: ETCD_CONFIGS,
        after: &[],
        reloads: false,
        needs_credentials: false,
        wanted_by_target: true,
        fences_on_lease: false,
        probe: ProbeKind::EtcdHealth,
        milvus_run: &[],
        metrics_offset: None,
        capabilities: &[],
        serves_clients: false,
    },
    ComponentSpec {
        component: Component::Minio,
        name: "minio",
        runs_on: |config, node| {
            config.object_storage.kind == ObjectStorageKind::Minio && has(node, Role::Storage)
        },
        compose: template!("compose/minio.yaml"),
        configs: MINIO_CONFIGS,
        after: &[],
        reloads: false,
        needs_credentials: true,
        wanted_by_target: true,
        fences_on_lease: false,
        probe: ProbeKind::MinioLive,
        milvus_run: &[],
        metrics_offset: None,
        capabilities: &[],
        serves_clients: false,
    },
    ComponentSpec {
        component: Component::Pulsar,
        name: "pulsar",
        runs_on: |config, node| {
            config.milvus.message_queue == MessageQueue::Pulsar && config.pulsar.node == node.name
        },
        compose: template!("compose/pulsar.yaml"),
        configs: &[],
        after: &[],
        reloads: false,
        needs_credentials: false,
        wanted_by_target: true,
        fences_on_lease: false,
        probe: ProbeKind::PulsarTcp,
        milvus_run: &[],
        metrics_offset: None,
        // Unverified here (no Pulsar image): its own user needs no capability.
        capabilities: &[],
        serves_clients: false,
    },
    ComponentSpec {
        component: Component::Lb,
        name: "lb",
        runs_on: |_, node| has(node, Role::Compute),
        compose: template!("compose/lb.yaml"),
        configs: LB_CONFIGS,
        after: &[],
        // New upstreams are taken without dropping connections.
        reloads: true,
        needs_credentials: false,
        wanted_by_target: true,
        fences_on_lease: false,
        probe: ProbeKind::LbHealth,
        milvus_run: &[],
        metrics_offset: None,
        // nginx: the root master reads the daemon's placement directory (0750, not
        // root's), makes its temp directories its workers' and drops to their user.
        capabilities: &["CHOWN", "SETGID", "SETUID", "DAC_READ_SEARCH"],
        serves_clients: false,
    },
    // One process holds every coordinator; with active-standby on, the copies on the
    // other compute nodes wait to take over.
    ComponentSpec {
        after: BEFORE_MILVUS,
        ..milvus_role(
            Component::Mixcoord,
            "mixcoord",
            distributed_compute,
            &[
                "mixture",
                "-rootcoord=true",
                "-querycoord=true",
                "-datacoord=true",
                "-indexcoord=true",
            ],
            1,
        )
    },
    // 2.6 only: 2.5 has no streaming node.
    milvus_role(
        Component::Streamingnode,
        "streamingnode",
        |config, node| {
            distributed_compute(config, node) && config.milvus.version != MilvusVersion::V2_5
        },
        &["streamingnode"],
        4,
    ),
    milvus_role(
        Component::Datanode,
        "datanode",
        distributed_compute,
        &["datanode"],
        3,
    ),
    // 2.5 only: it builds indexes in index nodes.
    milvus_role(
        Component::Indexnode,
        "indexnode",
        |config, node| {
            distributed_compute(config, node) && config.milvus.version == MilvusVersion::V2_5
        },
        &["indexnode"],
        5,
    ),
    milvus_role(
        Component::Querynode,
        "querynode",
        distributed_compute,
        &["querynode"],
        2,
    ),
    ComponentSpec {
        serves_clients: true,
        ..milvus_role(
            Component::Proxy,
            "proxy",
            distributed_compute,
            &["proxy"],
            0,
        )
    },
    // The standalone-ha topology's one server, on the node the leader placed it on.
    ComponentSpec {
        runs_on: |config, node| {
            has(node, Role::Compute) && config.cluster.topology == Topology::StandaloneHa
        },
        after: BEFORE_MILVUS,
        wanted_by_target: false,
        fences_on_lease: true,
        serves_clients: true,
        ..milvus_role(
            Component::Standalone,
            "standalone",
            distributed_compute,
            &["standalone"],
            0,
        )
    },
];

impl Component {
    /// Its entry in [`COMPONENTS`].
    pub fn spec(self) -> &'static ComponentSpec {
        &COMPONENTS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn unit_name(self) -> String {
        format!("milvus-fleet-{}.service", self.name())
    }
}

/// Every template the table names, and the unit template, once each.
pub fn templates() -> Vec<Template> {
    let mut all = vec![UNIT_TEMPLATE, CONTAINER_LIMITS_TEMPLATE];
    for spec in COMPONENTS {
        for template in std::iter::once(spec.compose).chain(spec.configs.iter().map(|c| c.template))
        {
            if !all.iter().any(|t| t.path == template.path) {
                all.push(template);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_enum_with_unique_names() {
        for (i, spec) in COMPONENTS.iter().enumerate() {
            assert_eq!(spec.component as usize, i, "{}", spec.name);
            assert_eq!(
                serde_json::to_value(spec.component).unwrap(),
                spec.name,
                "the serialized name is the table's"
            );
        }
        assert_eq!(COMPONENTS.len(), Component::Standalone as usize + 1);
    }

    #[test]
    fn milvus_roles_have_run_arguments_and_their_own_metrics_ports() {
        for spec in COMPONENTS {
            assert_eq!(
                spec.milvus_run.is_empty(),
                spec.metrics_offset.is_none(),
                "{}",
                spec.name
            );
        }
        // Roles that can run on one node never share a port.
        let distributed: Vec<u16> = COMPONENTS
            .iter()
            .filter(|s| s.component != Component::Standalone)
            .filter_map(|s| s.metrics_offset)
            .collect();
        let mut unique = distributed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), distributed.len());
    }
}
