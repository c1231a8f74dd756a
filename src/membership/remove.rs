//! Node removal, a leader job in three idempotent steps:
//! 1. remove the node's etcd member (storage and witness nodes), while the rest still
//!    have quorum; the removed member's etcd stops itself;
//! 2. in one transaction guarded by the leader's term: drop the node from the cluster
//!    configuration and revoke its certificate. Every daemon mirrors the new
//!    configuration, so the node's own apply drains it (its Milvus roles stop gracefully,
//!    its units are removed) and the other nodes' load balancers drop it (a reload);
//! 3. once its daemon has left (it drains its node from the configuration it can still
//!    read; a dead node's lease ends by its TTL), delete its etcd user (a cluster whose
//!    etcd milvus-fleet runs): every member refuses its certificate from then on.
//!
//! Refused up front, with the reason, when it would break etcd's quorum, the MinIO
//! pool, or leave no node to run Milvus.

use std::time::Duration;

use etcd_client::Client;

use super::join::peer_url;
use super::store::{cluster_config_text, MembershipStore};
use crate::cluster::jobs::StepEffects;
use crate::cluster::kv::{Check, Cmp, Op};
use crate::config::model::{ObjectStorageKind, Role, ServiceMode};
use crate::config::FleetConfig;

pub const STEPS: u32 = 3;

/// How long the last step waits for the removed node's daemon to leave on its own.
const LEAVE_WAIT: Duration = Duration::from_secs(30);

/// Why a node cannot leave now.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("no node {node:?} in cluster {cluster}")]
    NoNode { node: String, cluster: String },
    /// Removing it would break the cluster; the message says how.
    #[error("{0}")]
    Refused(String),
    #[error("reading etcd's members: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// Whether `node` can leave now; the error says why not.
pub async fn check(
    client: &mut Client,
    config: &FleetConfig,
    node: &str,
) -> Result<(), RemoveError> {
    let refused = |message: String| Err(RemoveError::Refused(message));
    let Some(entry) = config.nodes.iter().find(|n| n.name == node) else {
        return Err(RemoveError::NoNode {
            node: node.to_owned(),
            cluster: config.cluster.name.clone(),
        });
    };
    let has = |role| entry.roles.contains(&role);
    if has(Role::Storage) && config.object_storage.kind == ObjectStorageKind::Minio {
        return refused(format!(
            "removing {node} would break the storage pool: MinIO's erasure-coded pool spans the drives of every storage node and cannot shrink"
        ));
    }
    if has(Role::Compute)
        && !config
            .nodes
            .iter()
            .any(|n| n.name != node && n.roles.contains(&Role::Compute))
    {
        return refused(format!(
            "{node} is the last compute node: Milvus would have nowhere to run"
        ));
    }
    if config.etcd.mode == ServiceMode::Local && (has(Role::Storage) || has(Role::Witness)) {
        let peer = peer_url(&entry.address, config.etcd.peer_port);
        let members = client.member_list().await?;
        let voters: Vec<_> = members
            .members()
            .iter()
            .filter(|m| !m.is_learner())
            .collect();
        if voters.iter().any(|m| m.peer_urls().contains(&peer)) {
            let remaining: Vec<_> = voters
                .iter()
                .filter(|m| !m.peer_urls().contains(&peer))
                .collect();
            if remaining.is_empty() {
                return refused(format!("{node} runs the last etcd member"));
            }
            let mut healthy = 0;
            for member in &remaining {
                if is_healthy(member.client_urls()).await {
                    healthy += 1;
                }
            }
            let needed = remaining.len() / 2 + 1;
            if healthy < needed {
                return refused(format!(
                    "removing {node} would break etcd's quorum: {healthy} of the {} remaining members are healthy, {needed} needed",
                    remaining.len()
                ));
            }
        }
    }
    Ok(())
}

async fn is_healthy(urls: &[String]) -> bool {
    let probe = async {
        let mut client = crate::cluster::connect_one(urls.first()?).await.ok()?;
        client.status().await.ok()
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A read of the store, made again on an etcd error for up to 5 s: right after step 0
/// the removed member closes its connections as it stops.
async fn reread<T, Read>(
    store: &MembershipStore,
    read: impl Fn(MembershipStore) -> Read,
) -> Result<T, String>
where
    Read: std::future::Future<Output = Result<T, super::store::StoreError>>,
{
    crate::cluster::retry_reads(
        Duration::from_secs(5),
        |e| matches!(e, super::store::StoreError::Cluster(_)),
        || read(store.clone()),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Runs step `step` of removing `node`; an error fails the job with that message.
pub async fn step(
    store: &mut MembershipStore,
    node: &str,
    step: u32,
) -> Result<StepEffects, String> {
    let (config, _, revision) =
        reread(store, |mut store| async move { store.config().await }).await?;
    match step {
        0 => {
            let Some(entry) = config.nodes.iter().find(|n| n.name == node) else {
                return Ok(StepEffects {
                    log: format!("{node} is not in the cluster; nothing to remove from etcd"),
                    ..Default::default()
                });
            };
            check(&mut store.client, &config, node)
                .await
                .map_err(|e| e.to_string())?;
            if config.etcd.mode != ServiceMode::Local {
                return Ok(StepEffects {
                    log: "etcd is external: no member to remove".into(),
                    ..Default::default()
                });
            }
            let peer = peer_url(&entry.address, config.etcd.peer_port);
            let members = store
                .client
                .member_list()
                .await
                .map_err(|e| e.to_string())?;
            let log = match members
                .members()
                .iter()
                .find(|m| m.peer_urls().contains(&peer))
            {
                Some(member) => {
                    // etcd refuses a reconfiguration until every member has been connected
                    // for a few seconds ("unhealthy cluster"), e.g. right after a restart.
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    loop {
                        match store.client.member_remove(member.id()).await {
                            Ok(_) => break,
                            Err(e)
                                if e.to_string().contains("unhealthy cluster")
                                    && std::time::Instant::now() < deadline =>
                            {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => return Err(format!("removing etcd member {peer}: {e}")),
                        }
                    }
                    format!("removed {node}'s etcd member ({peer})")
                }
                None => format!("{node} has no etcd member"),
            };
            Ok(StepEffects {
                log,
                ..Default::default()
            })
        }
        1 => {
            let mut config = config;
            config.nodes.retain(|n| n.name != node);
            let cert = reread(store, |mut store| async move { store.cert_of(node).await })
                .await?
                .unwrap_or_default();
            let key = store.config_key();
            Ok(StepEffects {
                compares: vec![Check::mod_revision(key.clone(), Cmp::Equal, revision)],
                ops: vec![
                    Op::put(
                        key,
                        cluster_config_text(&config).map_err(|e| e.to_string())?,
                    ),
                    Op::put(store.revoked_key(node), cert),
                    Op::delete(store.cert_key(node)),
                ],
                log: format!(
                    "removed {node} from the cluster configuration and revoked its certificate; its daemon stops its components, the load balancers drop it"
                ),
            })
        }
        _ => {
            if config.etcd.mode != ServiceMode::Local {
                return Ok(StepEffects {
                    log: "etcd is external: no etcd user to remove".into(),
                    ..Default::default()
                });
            }
            // Its daemon, reading the configuration without it, drains its node and leaves
            // the election (its registration goes with its lease): wait for that first,
            // since without its user it could read nothing more. A dead node's lease
            // ends by its TTL.
            let member = crate::cluster::keys::member(&store.prefix, node);
            let deadline = std::time::Instant::now() + LEAVE_WAIT;
            while std::time::Instant::now() < deadline {
                let registered = store
                    .client
                    .get(member.as_str(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if registered.kvs().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // A node that leads still (this job's own runner, when it removes itself and
            // has not noticed yet) first stops leading: without its user it could no longer resign, and its lease
            // (keepalives need no permission) would hold the leader key for good. The
            // step's commit then fails with the term, and the next leader runs it again.
            let leader_key = crate::cluster::keys::leader(&store.prefix);
            let leader = store
                .client
                .get(leader_key, None)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(kv) = leader
                .kvs()
                .first()
                .filter(|kv| kv.value() == node.as_bytes())
            {
                let _ = store.client.lease_revoke(kv.lease()).await;
                return Ok(StepEffects {
                    log: format!("{node} led: its leadership ended first; the next leader removes its etcd user"),
                    ..Default::default()
                });
            }
            crate::cluster::auth::remove_node(&mut store.client, &store.prefix, node)
                .await
                .map_err(|e| e.to_string())?;
            // Whatever lease it still holds (its registration's) ends now, not at its TTL.
            let registered = store
                .client
                .get(member, None)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(kv) = registered.kvs().first().filter(|kv| kv.lease() != 0) {
                let _ = store.client.lease_revoke(kv.lease()).await;
            }
            Ok(StepEffects {
                log: format!("removed {node}'s etcd user: etcd refuses its certificate"),
                ..Default::default()
            })
        }
    }
}
