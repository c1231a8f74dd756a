//! The cluster's control plane in etcd: the connection, leader election with fencing.
//! etcd is the single source of cluster truth; every key lives under
//! `/milvus-fleet/<cluster>/`.

pub mod election;
pub mod jobs;
pub mod messages;
pub mod runner;

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::config::FleetConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{}: {error}", path.display())]
    StateFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

/// The key prefix of one cluster.
pub fn prefix(config: &FleetConfig) -> String {
    format!("/milvus-fleet/{}/", config.cluster.name)
}

/// Connects to the cluster's etcd. The HTTP/2 keepalive ping is 10 s: etcd drops a
/// connection that pings more often than every 5 s (its grpc-keepalive-min-time), and
/// with it every watch. No per-request timeout: watches and lease keepalives are streams.
pub async fn connect(config: &FleetConfig) -> Result<Client, ClusterError> {
    connect_to(&config.etcd_client_urls()).await
}

/// Like [`connect`], to the given client URLs only.
pub async fn connect_to(urls: &[String]) -> Result<Client, ClusterError> {
    let options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(Duration::from_secs(2));
    Ok(Client::connect(urls, Some(options)).await?)
}

/// Every key under `prefix`, by the rest of its name -> its value (as text).
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<std::collections::BTreeMap<String, String>, ClusterError> {
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    Ok(response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(prefix)?.to_owned();
            Some((name, kv.value_str().unwrap_or("").to_owned()))
        })
        .collect())
}
