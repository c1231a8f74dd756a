//! Checks that need the whole merged configuration: names, addresses, the
//! combinations of roles and services that make a working cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::model::*;

/// A rejected value: the key it is at and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: String,
    pub message: String,
}

fn reject(key: impl Into<String>, message: impl Into<String>) -> Rejection {
    Rejection {
        key: key.into(),
        message: message.into(),
    }
}

type Check = Result<(), Rejection>;

/// How many metrics ports after `milvus.metrics_port` the Milvus roles of one node use.
pub const MILVUS_ROLE_METRICS_PORTS: u16 = 6;

/// MinIO's erasure coding needs at least this many drives in a pool.
pub const MIN_ERASURE_DRIVES: u32 = 4;

/// Returns the first rejected value, in a fixed order, so errors are reproducible.
/// `is_set(key)` tells whether a file set the key (rather than a default), so that a
/// clash between a default and a set value blames the value the operator wrote.
pub fn validate(config: &FleetConfig, is_set: &dyn Fn(&str) -> bool) -> Check {
    check_local(config)?;
    check_cluster(config)?;
    check_nodes(config)?;
    check_milvus(config)?;
    check_etcd(config)?;
    check_object_storage(config)?;
    check_ports(config, is_set)?;
    check_load_balancer(config)?;
    check_images(&config.images)?;
    check_daemon(config)
}

fn check_load_balancer(config: &FleetConfig) -> Check {
    for (i, address) in config.load_balancer.addresses.iter().enumerate() {
        if address != "node" && address.parse::<IpAddr>().is_err() {
            return Err(reject(
                format!("load_balancer.addresses[{i}]"),
                format!("{address:?} is neither an IP address nor \"node\" (this node's address)"),
            ));
        }
    }
    Ok(())
}

fn check_local(config: &FleetConfig) -> Check {
    // It goes into an environment file: plain URL characters only.
    let members = &config.local.etcd_initial_cluster;
    let plain = members
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "=:/.,_-[]".contains(c));
    if !plain || (!members.is_empty() && !members.contains('=')) {
        return Err(reject(
            "local.etcd_initial_cluster",
            format!("{members:?} is not a list of name=http://address:port"),
        ));
    }
    Ok(())
}

fn check_cluster(config: &FleetConfig) -> Check {
    dns_label("cluster.name", &config.cluster.name)?;
    let dir = &config.cluster.data_dir;
    if !dir.starts_with('/') || dir.split('/').any(|part| part == "..") {
        return Err(reject(
            "cluster.data_dir",
            format!("{dir:?} must be an absolute path without `..`"),
        ));
    }
    safe_path("cluster.data_dir", dir)?;
    let top = dir.split('/').nth(1).unwrap_or("");
    if matches!(top, "" | "proc" | "sys" | "dev" | "run" | "tmp") {
        return Err(reject(
            "cluster.data_dir",
            format!("{dir:?} is not a place for persistent data"),
        ));
    }
    if !config.local.node_name.is_empty() {
        dns_label("local.node_name", &config.local.node_name)?;
    }
    Ok(())
}

fn check_nodes(config: &FleetConfig) -> Check {
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for (i, node) in config.nodes.iter().enumerate() {
        let key = |field: &str| format!("nodes[{i}].{field}");
        dns_label(&key("name"), &node.name)?;
        if crate::config::RESERVED_ETCD_USERS.contains(&node.name.as_str()) {
            return Err(reject(
                key("name"),
                format!(
                    "node name {:?} is reserved (a node's name is its etcd user; etcd has users {})",
                    node.name,
                    crate::config::RESERVED_ETCD_USERS.join(" and ")
                ),
            ));
        }
        if !names.insert(node.name.as_str()) {
            return Err(reject(
                key("name"),
                format!("node name {:?} is used twice", node.name),
            ));
        }
        host_name_or_ip(&key("address"), &node.address)?;
        if !addresses.insert(node.address.as_str()) {
            return Err(reject(
                key("address"),
                format!("address {:?} is used twice", node.address),
            ));
        }
        let roles: BTreeSet<Role> = node.roles.iter().copied().collect();
        if roles.is_empty() {
            return Err(reject(
                key("roles"),
                "a node needs at least one role: storage, compute or witness",
            ));
        }
        if roles.len() != node.roles.len() {
            return Err(reject(key("roles"), "a role is listed twice"));
        }
        if roles.contains(&Role::Witness) && roles.len() > 1 {
            return Err(reject(
                key("roles"),
                "a witness runs only etcd and the daemon: it takes no other role",
            ));
        }
    }
    if config.nodes.is_empty() {
        return Ok(());
    }
    let has = |role: Role| config.nodes.iter().any(|n| n.roles.contains(&role));
    if !has(Role::Compute) {
        return Err(reject(
            "nodes",
            "no node has the compute role, so nothing would run Milvus",
        ));
    }
    if config.object_storage.kind == ObjectStorageKind::Minio && !has(Role::Storage) {
        return Err(reject(
            "nodes",
            "object_storage.kind is \"minio\" but no node has the storage role to run it",
        ));
    }
    if config.etcd.mode == ServiceMode::Local && !(has(Role::Storage) || has(Role::Witness)) {
        return Err(reject(
            "nodes",
            "etcd.mode is \"local\" but no node has the storage or witness role to run an etcd member",
        ));
    }
    let storage_nodes = config
        .nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Storage))
        .count() as u32;
    let drives = storage_nodes * config.object_storage.minio_drives_per_node;
    if config.object_storage.kind == ObjectStorageKind::Minio && drives < MIN_ERASURE_DRIVES {
        return Err(reject(
            "nodes",
            format!(
                "the MinIO pool is too small for erasure coding: {storage_nodes} storage node(s) x \
                 {} drive(s) = {drives}, at least {MIN_ERASURE_DRIVES} needed (add storage nodes or raise \
                 object_storage.minio_drives_per_node)",
                config.object_storage.minio_drives_per_node
            ),
        ));
    }
    Ok(())
}

fn check_milvus(config: &FleetConfig) -> Check {
    let queue = config.milvus.message_queue;
    if config.milvus.version == MilvusVersion::V2_5 && queue == MessageQueue::Woodpecker {
        return Err(reject(
            "milvus.message_queue",
            "woodpecker needs Milvus 2.6; with version \"2.5\" use \"pulsar\" or \"kafka\"",
        ));
    }
    let brokers = &config.kafka.brokers;
    match queue {
        MessageQueue::Kafka if brokers.is_empty() => {
            return Err(reject(
                "kafka.brokers",
                "message_queue is \"kafka\" but no brokers are listed",
            ));
        }
        MessageQueue::Kafka => {
            for (i, broker) in brokers.iter().enumerate() {
                host_port(&format!("kafka.brokers[{i}]"), broker)?;
            }
        }
        _ if !brokers.is_empty() => {
            return Err(reject(
                "kafka.brokers",
                "brokers are set but milvus.message_queue is not \"kafka\"",
            ));
        }
        _ => {}
    }
    let pulsar_node = &config.pulsar.node;
    if queue == MessageQueue::Pulsar {
        if pulsar_node.is_empty() && !config.nodes.is_empty() {
            return Err(reject(
                "pulsar.node",
                "message_queue is \"pulsar\": name the node that runs the broker",
            ));
        }
        if !pulsar_node.is_empty() {
            let node = config.nodes.iter().find(|n| &n.name == pulsar_node);
            match node {
                None => {
                    return Err(reject(
                        "pulsar.node",
                        format!("{pulsar_node:?} is not one of the names in `nodes`"),
                    ));
                }
                Some(n) if n.roles == [Role::Witness] => {
                    return Err(reject(
                        "pulsar.node",
                        format!("{pulsar_node:?} is a witness; it runs no broker"),
                    ));
                }
                Some(_) => {}
            }
        }
    } else if !pulsar_node.is_empty() {
        return Err(reject(
            "pulsar.node",
            "set but milvus.message_queue is not \"pulsar\"",
        ));
    }
    Ok(())
}

fn check_etcd(config: &FleetConfig) -> Check {
    let etcd = &config.etcd;
    match etcd.mode {
        ServiceMode::External if etcd.endpoints.is_empty() => {
            return Err(reject(
                "etcd.endpoints",
                "etcd.mode is \"external\" but no endpoints are listed",
            ));
        }
        ServiceMode::Local if !etcd.endpoints.is_empty() => {
            return Err(reject(
                "etcd.endpoints",
                "endpoints are set but etcd.mode is \"local\"",
            ));
        }
        _ => {}
    }
    for (i, endpoint) in etcd.endpoints.iter().enumerate() {
        let key = format!("etcd.endpoints[{i}]");
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"))
            .ok_or_else(|| {
                reject(
                    &key,
                    format!("{endpoint:?} must start with http:// or https://"),
                )
            })?;
        host_port(&key, rest.trim_end_matches('/'))?;
    }
    if etcd.heartbeat_interval_ms < 10 {
        return Err(reject("etcd.heartbeat_interval_ms", "must be at least 10"));
    }
    if etcd.election_timeout_ms < 5 * etcd.heartbeat_interval_ms
        || etcd.election_timeout_ms > 50_000
    {
        return Err(reject(
            "etcd.election_timeout_ms",
            format!(
                "must be between 5 x heartbeat_interval_ms ({}) and 50000",
                5 * etcd.heartbeat_interval_ms
            ),
        ));
    }
    Ok(())
}

fn check_object_storage(config: &FleetConfig) -> Check {
    let storage = &config.object_storage;
    match storage.kind {
        ObjectStorageKind::S3 if storage.endpoint.is_empty() => {
            return Err(reject(
                "object_storage.endpoint",
                "kind is \"s3\": give the service's host:port",
            ));
        }
        ObjectStorageKind::S3 => host_port("object_storage.endpoint", &storage.endpoint)?,
        ObjectStorageKind::Minio if !storage.endpoint.is_empty() => {
            return Err(reject(
                "object_storage.endpoint",
                "set but kind is \"minio\" (the endpoint of a local MinIO pool is derived from `nodes`)",
            ));
        }
        ObjectStorageKind::Minio => {}
    }
    if !(1..=16).contains(&storage.minio_drives_per_node) {
        return Err(reject(
            "object_storage.minio_drives_per_node",
            "must be 1..=16",
        ));
    }
    let bucket = &storage.bucket;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(reject(
            "object_storage.bucket",
            format!("{bucket:?} is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')"),
        ));
    }
    let region = &storage.region;
    if region.is_empty()
        || region.len() > 32
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(reject(
            "object_storage.region",
            format!("{region:?} is not a region name (1-32 of a-z, 0-9, '-')"),
        ));
    }
    safe_path("object_storage.credentials_file", &storage.credentials_file)?;
    if !storage.credentials_file.starts_with('/') {
        return Err(reject(
            "object_storage.credentials_file",
            format!("{:?} must be an absolute path", storage.credentials_file),
        ));
    }
    Ok(())
}

/// Every port a node may listen on must be distinct and non-zero.
fn check_ports(config: &FleetConfig, is_set: &dyn Fn(&str) -> bool) -> Check {
    let ports = [
        ("daemon.api_port", config.daemon.api_port),
        ("load_balancer.port", config.load_balancer.port),
        ("load_balancer.s3_port", config.load_balancer.s3_port),
        ("load_balancer.etcd_port", config.load_balancer.etcd_port),
        (
            "load_balancer.health_port",
            config.load_balancer.health_port,
        ),
        ("milvus.proxy_port", config.milvus.proxy_port),
        ("milvus.metrics_port", config.milvus.metrics_port),
        ("etcd.client_port", config.etcd.client_port),
        ("etcd.peer_port", config.etcd.peer_port),
        ("etcd.metrics_port", config.etcd.metrics_port),
        (
            "object_storage.minio_port",
            config.object_storage.minio_port,
        ),
        ("pulsar.port", config.pulsar.port),
    ];
    let mut seen: BTreeMap<u16, &str> = BTreeMap::new();
    // The Milvus roles on one node share the host network, each with its own metrics port
    // after milvus.metrics_port (see render::plan); those must not clash either.
    for offset in 1..=MILVUS_ROLE_METRICS_PORTS {
        let port = config
            .milvus
            .metrics_port
            .checked_add(offset)
            .ok_or_else(|| {
                reject(
                    "milvus.metrics_port",
                    "leaves no room for the roles' metrics ports after it",
                )
            })?;
        seen.insert(
            port,
            "milvus.metrics_port (one of the roles' metrics ports after it)",
        );
    }
    for (key, port) in ports {
        if port == 0 {
            return Err(reject(key, "port 0 is not a port"));
        }
        if let Some(other) = seen.insert(port, key) {
            let (blamed, other) = if is_set(other) && !is_set(key) {
                (other, key)
            } else {
                (key, other)
            };
            return Err(reject(
                blamed,
                format!("port {port} is already used by {other}"),
            ));
        }
    }
    Ok(())
}

fn check_images(images: &ImagesConfig) -> Check {
    let all = [
        ("images.etcd", &images.etcd),
        ("images.minio", &images.minio),
        ("images.milvus", &images.milvus),
        ("images.nginx", &images.nginx),
        ("images.pulsar", &images.pulsar),
    ];
    for (key, image) in all {
        let ok = !image.is_empty()
            && !image.starts_with('-')
            && image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "./:_-@".contains(c));
        if !ok {
            return Err(reject(
                key,
                format!("{image:?} is not an image reference like registry/name:tag"),
            ));
        }
    }
    Ok(())
}

fn check_daemon(config: &FleetConfig) -> Check {
    let hook = &config.daemon.alert_webhook;
    if !hook.is_empty()
        && (!(hook.starts_with("http://") || hook.starts_with("https://"))
            || hook.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(reject(
            "daemon.alert_webhook",
            format!("{hook:?} is not an http:// or https:// URL"),
        ));
    }
    if !config.daemon.api_advertise.is_empty() {
        host_port("daemon.api_advertise", &config.daemon.api_advertise)?;
    }
    for (key, value, range) in [
        (
            "milvus.session_ttl_secs",
            config.milvus.session_ttl_secs,
            2..=60,
        ),
        (
            "daemon.wedged_after_secs",
            config.daemon.wedged_after_secs,
            1..=3600,
        ),
        (
            "daemon.restart_budget",
            config.daemon.restart_budget,
            1..=100,
        ),
        (
            "daemon.restart_window_secs",
            config.daemon.restart_window_secs,
            10..=86400,
        ),
    ] {
        if !range.contains(&value) {
            return Err(reject(
                key,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ));
        }
    }
    let ttl = config.daemon.lease_ttl_secs;
    if !(1..=60).contains(&ttl) {
        return Err(reject(
            "daemon.lease_ttl_secs",
            format!("{ttl} is outside 1..=60"),
        ));
    }
    // etcd grants no lease shorter than 1.5 x its election timeout.
    let min_ms = config.etcd.election_timeout_ms * 3 / 2;
    if config.etcd.mode == ServiceMode::Local && ttl * 1000 < min_ms {
        return Err(reject(
            "daemon.lease_ttl_secs",
            format!(
                "{ttl} s is shorter than etcd allows with election_timeout_ms = {} (at least {min_ms} ms)",
                config.etcd.election_timeout_ms
            ),
        ));
    }
    Ok(())
}

/// A DNS label: what a node or cluster name must be, since it ends up in host names,
/// certificate SANs and unit names.
fn dns_label(key: &str, value: &str) -> Check {
    let ok = (1..=63).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(reject(
            key,
            format!("{value:?} must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"),
        ))
    }
}

/// Paths end up in compose volume specs and unit lines: plain characters only, so no
/// value can smuggle in a second mount, option or line.
fn safe_path(key: &str, value: &str) -> Check {
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(reject(
            key,
            format!("{value:?} may hold only a-z, A-Z, 0-9, '/', '.', '_' and '-'"),
        ))
    }
}

fn host_name_or_ip(key: &str, value: &str) -> Check {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(reject(
            key,
            format!("{value:?} is neither an IP address nor a host name"),
        ))
    }
}

fn host_port(key: &str, value: &str) -> Check {
    let bad = || reject(key, format!("{value:?} must be host:port"));
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host_name_or_ip(key, host).map_err(|_| bad())?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str, roles: &[Role]) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            address: address.into(),
            roles: roles.to_vec(),
        }
    }

    fn three_nodes() -> FleetConfig {
        FleetConfig {
            nodes: vec![
                node("a", "10.0.0.1", &[Role::Storage, Role::Compute]),
                node("b", "10.0.0.2", &[Role::Storage, Role::Compute]),
                node("c", "10.0.0.3", &[Role::Witness]),
            ],
            ..Default::default()
        }
    }

    fn key_of(config: &FleetConfig) -> String {
        validate(config, &|_| false).unwrap_err().key
    }

    #[test]
    fn defaults_and_a_three_node_cluster_are_valid() {
        assert_eq!(validate(&FleetConfig::default(), &|_| false), Ok(()));
        assert_eq!(validate(&three_nodes(), &|_| false), Ok(()));
    }

    #[test]
    fn duplicate_names_and_addresses_are_rejected() {
        let mut c = three_nodes();
        c.nodes[2].name = "a".into();
        assert_eq!(key_of(&c), "nodes[2].name");
        let mut c = three_nodes();
        c.nodes[1].address = "10.0.0.1".into();
        assert_eq!(key_of(&c), "nodes[1].address");
    }

    #[test]
    fn witness_takes_no_other_role_and_compute_is_required() {
        let mut c = three_nodes();
        c.nodes[2].roles = vec![Role::Witness, Role::Compute];
        assert_eq!(key_of(&c), "nodes[2].roles");
        let mut c = three_nodes();
        for n in &mut c.nodes {
            n.roles = vec![Role::Storage];
        }
        assert_eq!(key_of(&c), "nodes");
    }

    #[test]
    fn service_combinations_are_checked() {
        let mut c = three_nodes();
        c.milvus.version = MilvusVersion::V2_5;
        assert_eq!(key_of(&c), "milvus.message_queue");
        c.milvus.message_queue = MessageQueue::Pulsar;
        assert_eq!(key_of(&c), "pulsar.node");
        c.pulsar.node = "c".into();
        assert!(validate(&c, &|_| false)
            .unwrap_err()
            .message
            .contains("witness"));
        c.pulsar.node = "a".into();
        assert_eq!(validate(&c, &|_| false), Ok(()));

        let mut c = three_nodes();
        c.etcd.mode = ServiceMode::External;
        assert_eq!(key_of(&c), "etcd.endpoints");
        c.etcd.endpoints = vec!["etcd.example:2379".into()];
        assert_eq!(key_of(&c), "etcd.endpoints[0]");
        c.etcd.endpoints = vec!["https://etcd.example:2379".into()];
        assert_eq!(validate(&c, &|_| false), Ok(()));

        let mut c = three_nodes();
        c.object_storage.kind = ObjectStorageKind::S3;
        assert_eq!(key_of(&c), "object_storage.endpoint");
        c.object_storage.endpoint = "s3.example:443".into();
        assert_eq!(validate(&c, &|_| false), Ok(()));
    }

    #[test]
    fn ports_must_be_distinct_and_leases_must_fit_etcd() {
        let mut c = three_nodes();
        c.load_balancer.port = c.milvus.proxy_port;
        assert_eq!(key_of(&c), "milvus.proxy_port");
        let blamed = validate(&c, &|key| key == "load_balancer.port").unwrap_err();
        assert_eq!(
            blamed.key, "load_balancer.port",
            "the value set in a file is blamed"
        );
        assert_eq!(
            blamed.message,
            "port 19530 is already used by milvus.proxy_port"
        );
        let mut c = three_nodes();
        c.daemon.lease_ttl_secs = 1;
        c.etcd.election_timeout_ms = 1000;
        assert_eq!(key_of(&c), "daemon.lease_ttl_secs");
    }

    #[test]
    fn values_that_reach_compose_files_cannot_inject() {
        let mut c = three_nodes();
        c.cluster.data_dir = "/srv/data:/host".into();
        assert_eq!(key_of(&c), "cluster.data_dir");
        let mut c = three_nodes();
        c.object_storage.credentials_file = "/etc/x\nExecStartPre=/bin/sh".into();
        assert_eq!(key_of(&c), "object_storage.credentials_file");
        let mut c = three_nodes();
        c.object_storage.region = "eu\"\n  privileged: true".into();
        assert_eq!(key_of(&c), "object_storage.region");
        let mut c = three_nodes();
        c.images.milvus = "milvus:1\n    privileged: true".into();
        assert_eq!(key_of(&c), "images.milvus");
    }

    #[test]
    fn names_and_hosts_have_a_shape() {
        assert!(dns_label("k", "vm-1").is_ok());
        assert!(dns_label("k", "VM1").is_err());
        assert!(dns_label("k", "-x").is_err());
        assert!(host_name_or_ip("k", "fd00::1").is_ok());
        assert!(host_name_or_ip("k", "db.example.org").is_ok());
        assert!(host_name_or_ip("k", "a b").is_err());
        assert!(host_port("k", "[fd00::1]:9092").is_ok());
        assert!(host_port("k", "kafka:0").is_err());
    }
}
