//! `init` (the first node) and `join` (every later one), as root on the host itself.
//! Both end the same way: the node's certificates, the cluster file and the node's
//! drop-in written, `apply` run, the daemon enabled.
//! Both can be run again after a failure or a reboot half-way and end in the same state.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::join::{peer_url, JoinRequest, JoinResponse, RequestError};
use super::store::{cluster_config_text, MembershipStore};
use super::token::JoinToken;
use crate::cluster::auth::MILVUS_USER;
use crate::config::model::{EtcdClusterState, NodeConfig, Role, ServiceMode};
use crate::config::{ConfigPaths, FleetConfig, Settings};
use crate::host::{self as local, write_file, DAEMON_USER};
use crate::pki::{Ca, Pem};

/// Who this node is in the cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Empty: the host name.
    pub name: Option<String>,
    /// Empty: the address this host reaches the cluster from.
    pub address: Option<String>,
    pub roles: Vec<Role>,
}

/// The token `init` prints, and the node it made.
pub struct InitOutcome {
    pub cluster: String,
    pub node: NodeConfig,
    pub token: JoinToken,
    pub token_ttl_secs: u64,
    pub api_port: u16,
}

pub fn init(
    paths: &ConfigPaths,
    identity: &Identity,
    token_ttl_secs: u64,
    token_uses: u32,
) -> anyhow::Result<InitOutcome> {
    local::require_root("init")?;
    let settings = Settings::load(paths)?;
    let mut config = settings.config.clone();
    let name = identity
        .name
        .clone()
        .unwrap_or_else(|| settings.node_name.clone());
    let ours = config.nodes.len() == 1 && config.nodes[0].name == name;
    if !config.nodes.is_empty() && !ours {
        bail!(
            "this host's configuration already lists nodes ({}): init makes a new cluster of this node alone; \
             add nodes with `milvus-fleet join`, or remove [[nodes]] from {}",
            config.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
            paths.main.display()
        );
    }
    let address = match &identity.address {
        Some(address) => address.clone(),
        None => local_address(None)
            .context("cannot tell this host's address (no default route); pass --address")?,
    };
    config.nodes = vec![NodeConfig {
        name: name.clone(),
        address: address.clone(),
        roles: identity.roles.clone(),
    }];
    crate::config::validate::validate(&config, &|_| true)
        .map_err(|r| anyhow::anyhow!("{}: {}", r.key, r.message))?;

    // The CA survives a repeated init, so tokens printed earlier still pin it. With
    // milvus-fleet's etcd its key is root's here and etcd's (for the storage nodes that
    // sign joins), never the daemon's; with an external etcd the daemon signs from disk.
    let pki = local::pki_dir();
    let etcd_keeps_ca = config.etcd.mode == ServiceMode::Local;
    let root_ca_key = PathBuf::from(local::TLS_DIR).join("ca.key");
    let existing_key = std::fs::read_to_string(&root_ca_key)
        .or_else(|_| std::fs::read_to_string(pki.join("ca.key")));
    let ca = match (std::fs::read_to_string(pki.join("ca.crt")), existing_key) {
        (Ok(cert), Ok(key)) => Ca::load(&Pem { cert, key }).context("the existing CA")?,
        _ => Ca::create(&config.cluster.name)?,
    };
    let node_pem = ca.issue_node(
        &name,
        std::slice::from_ref(&address),
        crate::pki::NODE_VALIDITY,
    )?;
    let daemon_ca_key = (!etcd_keeps_ca).then_some(ca.pem().key.as_str());
    write_pki(&ca.pem().cert, daemon_ca_key, &node_pem)?;
    let milvus_pem = identity
        .roles
        .contains(&Role::Compute)
        .then(|| ca.issue_etcd_client(MILVUS_USER, crate::pki::NODE_VALIDITY))
        .transpose()?;
    write_tls(&ca.pem().cert, &node_pem, milvus_pem.as_ref())?;
    if etcd_keeps_ca {
        write_file(&root_ca_key, ca.pem().key.as_bytes(), 0o600, None)?;
    }
    // Milvus' root password: made once (a repeated init keeps it).
    let milvus_password = PathBuf::from(local::MILVUS_ROOT_PASSWORD_FILE);
    let kept = std::fs::read_to_string(&milvus_password).unwrap_or_default();
    if kept.trim().is_empty() {
        let password = super::token::random_string(32)?;
        write_file(
            &milvus_password,
            format!("{password}\n").as_bytes(),
            0o600,
            None,
        )?;
    }

    let votes = votes(&identity.roles) && config.etcd.mode == ServiceMode::Local;
    write_node_files(
        &config,
        &name,
        votes.then(|| format!("{name}={}", peer_url(&address, config.etcd.peer_port))),
        EtcdClusterState::New,
        false,
    )?;
    super::apply::apply(paths, super::apply::Mode::Converge)?;

    // etcd is up (or external): the cluster's truth goes there, once.
    crate::cluster::probe_members_at(&config);
    let runtime = local::runtime()?;
    let token = runtime.block_on(async {
        let mut client =
            wait_for_etcd(&config.etcd_client_urls(), Duration::from_secs(120)).await?;
        if config.etcd.mode == ServiceMode::Local {
            let prefix = crate::cluster::prefix(&config);
            crate::cluster::auth::enable(&mut client, &prefix, &name, config.may_lead(&name))
                .await?;
        }
        let mut store = MembershipStore::new(client, crate::cluster::prefix(&config));
        if etcd_keeps_ca {
            store.keep_ca_key(&ca.pem().key).await?;
        }
        let cert = crate::pki::cert_sha256(&node_pem.cert).context("this node's certificate")?;
        if !store
            .create_config(&config, (&config.nodes[0].name, &cert))
            .await?
        {
            let (stored, _, _) = store.config().await?;
            if stored
                .nodes
                .iter()
                .map(|n| &n.name)
                .ne(config.nodes.iter().map(|n| &n.name))
            {
                bail!(
                    "etcd already holds cluster {} with nodes {}: this is not a new cluster",
                    stored.cluster.name,
                    stored
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let token = JoinToken::generate(&ca.pin())?;
        store
            .create_token(
                &token,
                vec![Role::Storage, Role::Compute, Role::Witness],
                token_ttl_secs,
                token_uses,
                vec![],
            )
            .await?;
        anyhow::Ok(token)
    })?;
    enable_daemon()?;
    Ok(InitOutcome {
        cluster: config.cluster.name.clone(),
        node: config.nodes[0].clone(),
        token,
        token_ttl_secs,
        api_port: config.daemon.api_port,
    })
}

/// Joins this host through `server` with `token` (see join.rs for the handshake).
pub fn join(
    paths: &ConfigPaths,
    server: &str,
    token: &JoinToken,
    identity: &Identity,
) -> anyhow::Result<String> {
    local::require_root("join")?;
    let settings = Settings::load(paths)?;
    let name = identity
        .name
        .clone()
        .unwrap_or_else(|| settings.node_name.clone());

    // Joined already (a second run, or a reboot after the handshake): finish the rest.
    let pki = local::pki_dir();
    let config = &settings.config;
    if let Some(node) = config.nodes.iter().find(|n| n.name == name) {
        if pki.join("node.crt").is_file() {
            eprintln!("{name} is a member already: finishing its join");
            super::apply::apply(paths, super::apply::Mode::Converge)?;
            if votes(&node.roles) && config.etcd.mode == ServiceMode::Local {
                let peer = peer_url(&node.address, config.etcd.peer_port);
                local::runtime()?.block_on(promote(config, &node.address, &peer))?;
            }
            enable_daemon()?;
            return Ok(name);
        }
    }

    let address = match &identity.address {
        Some(address) => address.clone(),
        None => local_address(Some(server)).with_context(|| {
            format!("cannot tell the address this host reaches {server} from; pass --address")
        })?,
    };
    let (csr, key) = crate::pki::node_csr(&name)?;
    let milvus_key = identity
        .roles
        .contains(&Role::Compute)
        .then(|| crate::pki::node_csr(MILVUS_USER))
        .transpose()?;
    let request = JoinRequest {
        credential: token.credential(),
        name: name.clone(),
        address,
        roles: identity.roles.clone(),
        csr,
        milvus_csr: milvus_key.as_ref().map(|(csr, _)| csr.clone()),
    };
    let runtime = local::runtime()?;
    let response = runtime.block_on(send_with_retries(server, token, &request))?;

    // Everything below only runs after the cluster said yes.
    let node_pem = Pem {
        cert: response.node_cert.clone(),
        key,
    };
    write_pki(&response.ca_cert, response.ca_key.as_deref(), &node_pem)?;
    let milvus_pem = match (&response.milvus_cert, milvus_key) {
        (Some(cert), Some((_, key))) => Some(Pem {
            cert: cert.clone(),
            key,
        }),
        _ => None,
    };
    write_tls(&response.ca_cert, &node_pem, milvus_pem.as_ref())?;
    let config = super::store::parse_cluster_config(&response.config)?;
    if let Some(password) = &response.milvus_root_password {
        let path = PathBuf::from(local::MILVUS_ROOT_PASSWORD_FILE);
        write_file(&path, format!("{password}\n").as_bytes(), 0o600, None)?;
    }
    if let Some(credentials) = &response.object_storage_credentials {
        let path = PathBuf::from(&config.object_storage.credentials_file);
        write_file(&path, credentials.as_bytes(), 0o600, None)?;
    }
    write_node_files(
        &config,
        &name,
        response.etcd_initial_cluster.clone(),
        EtcdClusterState::Existing,
        true,
    )?;
    super::apply::apply(paths, super::apply::Mode::Converge)?;
    if response.etcd_initial_cluster.is_some() {
        let peer = peer_url(&request.address, config.etcd.peer_port);
        runtime.block_on(promote(&config, &request.address, &peer))?;
    }
    enable_daemon()?;
    Ok(name)
}

/// Retries while the cluster is busy (another node joining) or not reachable yet (a VM
/// booting beside the first one); a refusal or a wrong CA ends it at once.
async fn send_with_retries(
    server: &str,
    token: &JoinToken,
    request: &JoinRequest,
) -> anyhow::Result<JoinResponse> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match super::join::request(server, token, request).await {
            Ok(response) => return Ok(response),
            Err(e @ (RequestError::Busy(_) | RequestError::Unreachable(_)))
                if Instant::now() < deadline =>
            {
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Promotes this host's etcd learner once it has caught up (or, a witness, waits for the
/// node that admitted it to), talking to the other members only (a learner answers no
/// client requests).
async fn promote(config: &FleetConfig, address: &str, peer: &str) -> anyhow::Result<()> {
    crate::cluster::probe_members_at(config);
    let own = crate::config::etcd_url(address, config.etcd.client_port);
    let others: Vec<String> = config
        .etcd_client_urls()
        .into_iter()
        .filter(|u| *u != own)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut client = wait_for_etcd(&others, left).await?;
        match super::join::promote_once(&mut client, peer).await {
            Ok(Some(())) => return Ok(()),
            Ok(None) => bail!("etcd has no member at {peer}"),
            // A witness's etcd user may not promote: the storage node that admitted it
            // does (api/membership.rs); wait for that.
            Err(e) if crate::cluster::permission_denied(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // A learner is promoted only once it is in sync with the leader.
            Err(e) if Instant::now() < deadline => {
                tracing::info!("etcd member not promoted yet: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("promoting etcd member {peer}: {e}"),
        }
    }
}

/// A client of the etcd members at `urls`, once one of them answers a read.
async fn wait_for_etcd(urls: &[String], timeout: Duration) -> anyhow::Result<etcd_client::Client> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut client = crate::cluster::connect_to(urls).await?;
            // A member list: etcd answers it to any user (a witness's may read no key
            // outside its cluster's prefix).
            client
                .member_list()
                .await
                .map_err(crate::cluster::ClusterError::from)?;
            Ok::<_, crate::cluster::ClusterError>(client)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) if Instant::now() >= deadline => {
                bail!("etcd did not answer within {timeout:?}: {e}")
            }
            Err(_) if Instant::now() >= deadline => bail!("etcd did not answer within {timeout:?}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn votes(roles: &[Role]) -> bool {
    roles
        .iter()
        .any(|r| matches!(r, Role::Storage | Role::Witness))
}

/// The certificates, owned by the daemon's user; keys 0600.
pub(super) fn write_pki(ca_cert: &str, ca_key: Option<&str>, node: &Pem) -> anyhow::Result<()> {
    let dir = local::pki_dir();
    crate::host::make_dir(&dir, 0o700, DAEMON_USER)?;
    let user = Some(DAEMON_USER);
    write_file(&dir.join("ca.crt"), ca_cert.as_bytes(), 0o644, user)?;
    if let Some(key) = ca_key {
        write_file(&dir.join("ca.key"), key.as_bytes(), 0o600, user)?;
    }
    write_file(&dir.join("node.crt"), node.cert.as_bytes(), 0o644, user)?;
    write_file(&dir.join("node.key"), node.key.as_bytes(), 0o600, user)
}

/// Root's copies for the data plane (see host::TLS_DIR): the CA, this node's certificate
/// for its etcd member, and the Milvus roles' etcd client certificate when it runs them.
pub(super) fn write_tls(ca_cert: &str, node: &Pem, milvus: Option<&Pem>) -> anyhow::Result<()> {
    let dir = PathBuf::from(local::TLS_DIR);
    crate::host::make_dir(&dir, 0o700, "root")?;
    write_file(&dir.join("ca.crt"), ca_cert.as_bytes(), 0o644, None)?;
    write_file(&dir.join("etcd.crt"), node.cert.as_bytes(), 0o644, None)?;
    write_file(&dir.join("etcd.key"), node.key.as_bytes(), 0o600, None)?;
    if let Some(milvus) = milvus {
        write_file(&dir.join("milvus.crt"), milvus.cert.as_bytes(), 0o644, None)?;
        write_file(&dir.join("milvus.key"), milvus.key.as_bytes(), 0o600, None)?;
    }
    Ok(())
}

/// The cluster file (the daemon keeps it in step with etcd afterwards) and this node's
/// drop-in: its name and how its etcd member starts.
fn write_node_files(
    config: &FleetConfig,
    name: &str,
    etcd_initial_cluster: Option<String>,
    state: EtcdClusterState,
    host_settings: bool,
) -> anyhow::Result<()> {
    write_file(
        &local::cluster_file(),
        cluster_config_text(config)?.as_bytes(),
        0o644,
        Some(DAEMON_USER),
    )?;
    let mut dropin = toml::Table::new();
    let mut local_table = toml::Table::new();
    local_table.insert("node_name".into(), name.into());
    if let Some(members) = etcd_initial_cluster {
        local_table.insert("etcd_initial_cluster".into(), members.into());
        let state = match state {
            EtcdClusterState::New => "new",
            EtcdClusterState::Existing => "existing",
        };
        local_table.insert("etcd_initial_cluster_state".into(), state.into());
    }
    dropin.insert("local".into(), local_table.into());
    if host_settings {
        // What root runs here (images, data directory, ...) as the cluster had it at the
        // join, received over the pinned channel: root-owned from now on, because the
        // root side refuses these from the daemon-written cluster file.
        let effective = toml::Table::try_from(config)?;
        let defaults = toml::Table::try_from(crate::config::FleetConfig::default())?;
        for key in super::apply::HOST_SETTINGS {
            let Some((section, name)) = key.split_once('.') else {
                continue;
            };
            let value = effective.get(section).and_then(|t| t.get(name));
            if value.is_some() && value != defaults.get(section).and_then(|t| t.get(name)) {
                let table = dropin
                    .entry(section)
                    .or_insert_with(|| toml::Table::new().into());
                if let (Some(table), Some(value)) = (table.as_table_mut(), value) {
                    table.insert(name.into(), value.clone());
                }
            }
        }
    }
    let text = format!(
        "# Written by milvus-fleet init/join: who this host is in the cluster, and what root\n\
         # runs here (edit these here, or in a later drop-in, to change them on this host).\n{}",
        toml::to_string(&dropin)?
    );
    write_file(
        PathBuf::from(local::NODE_DROPIN).as_path(),
        text.as_bytes(),
        0o644,
        None,
    )
}

fn enable_daemon() -> anyhow::Result<()> {
    super::apply::enable_now("milvus-fleet.service")?;
    // The daily certificate check (membership/renew.rs).
    super::apply::enable_now("milvus-fleet-renew.timer")
}

/// The local address this host uses to reach `server` (or the default route).
fn local_address(server: Option<&str>) -> anyhow::Result<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let target = match server {
        Some(server) => super::join::with_default_port(server)
            .to_socket_addrs()?
            .next()
            .context("the server's address does not resolve")?,
        None => "192.0.2.1:9".parse()?,
    };
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    // No packet is sent: connect() on UDP only picks the route and the source address.
    socket.connect(target)?;
    Ok(socket.local_addr()?.ip().to_string())
}
