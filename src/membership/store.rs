//! Membership records in etcd, under the cluster's prefix:
//! - `config`: the cluster's shared configuration (TOML), the truth every node renders from;
//! - `tokens/<id>`: join tokens (no secrets, only their hashes), kept a week past expiry
//!   so a late join still hears "expired" rather than "unknown";
//! - `certs/<node>`: the SHA-256 of the certificate issued to each node;
//! - `revoked/<node>`: certificates of removed nodes, refused by every API listener.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::token::{JoinToken, TokenRecord};
use crate::cluster::{keys, ClusterError};
use crate::config::model::Role;
use crate::config::FleetConfig;

/// How long a token's record outlives its expiry.
const TOKEN_RECORD_GRACE_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the cluster configuration in etcd is not valid: {0}")]
    BadConfig(String),
    #[error("no cluster configuration in etcd yet (run `milvus-fleet init` first)")]
    NoConfig,
    #[error("join token {0}: stored record is not valid")]
    BadToken(String),
    #[error("no join token {0}")]
    NoToken(String),
    /// A record that could not be encoded is never written (an empty one would be).
    #[error("encoding {what} for etcd: {error}")]
    Encode { what: String, error: String },
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Cluster(e.into())
    }
}

#[derive(Clone)]
pub struct MembershipStore {
    pub client: Client,
    pub prefix: String,
}

impl MembershipStore {
    pub fn new(client: Client, prefix: String) -> Self {
        Self { client, prefix }
    }

    /// The cluster CA's key as etcd keeps it (see keys::ca_key), if it does.
    pub async fn ca_key(&mut self) -> Result<Option<String>, StoreError> {
        let key = keys::ca_key(&self.prefix);
        let got = self.client.get(key, None).await?;
        Ok(got
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok())
            .map(str::to_owned))
    }

    /// Keeps the cluster CA's key in etcd (a cluster whose etcd milvus-fleet runs, with
    /// auth on: only the `root` role reads it). Written once; a second write is a no-op.
    pub async fn keep_ca_key(&mut self, key_pem: &str) -> Result<(), StoreError> {
        let key = keys::ca_key(&self.prefix);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, key_pem, None)]);
        self.client.txn(txn).await?;
        Ok(())
    }

    pub fn config_key(&self) -> String {
        keys::config(&self.prefix)
    }

    pub fn token_key(&self, id: &str) -> String {
        keys::token(&self.prefix, id)
    }

    pub fn cert_key(&self, node: &str) -> String {
        keys::cert(&self.prefix, node)
    }

    pub fn revoked_key(&self, node: &str) -> String {
        keys::revoked(&self.prefix, node)
    }

    /// The cluster configuration, its TOML text and its revision (for guarded updates).
    pub async fn config(&mut self) -> Result<(FleetConfig, String, i64), StoreError> {
        let response = self.client.get(self.config_key(), None).await?;
        let kv = response.kvs().first().ok_or(StoreError::NoConfig)?;
        let text = kv.value_str().unwrap_or("").to_owned();
        let config = parse_cluster_config(&text)?;
        Ok((config, text, kv.mod_revision()))
    }

    /// Stores the first cluster configuration; a second `init` finds it there.
    /// Stores a new cluster's configuration and its first node's certificate (the SHA-256
    /// of `cert`: node certificates are admitted by their record); false when etcd holds
    /// a configuration already.
    pub async fn create_config(
        &mut self,
        config: &FleetConfig,
        (node, cert): (&str, &str),
    ) -> Result<bool, StoreError> {
        let key = self.config_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key, cluster_config_text(config)?, None),
                TxnOp::put(self.cert_key(node), cert, None),
            ]);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    pub async fn create_token(
        &mut self,
        token: &JoinToken,
        roles: Vec<Role>,
        ttl_secs: u64,
        uses: u32,
        readmit: Vec<String>,
    ) -> Result<TokenRecord, StoreError> {
        let now = super::now_unix();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            roles,
            created_unix: now,
            expires_unix: now + ttl_secs,
            uses,
            used_by: vec![],
            revoked: false,
            keys: Default::default(),
            readmit,
        };
        self.put_token(&record).await?;
        Ok(record)
    }

    async fn put_token(&mut self, record: &TokenRecord) -> Result<(), StoreError> {
        let lease = self.token_lease(record).await?;
        self.client
            .put(
                self.token_key(&record.id),
                encode_token(record)?,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// A lease that removes the record a grace period after the token expires.
    async fn token_lease(&mut self, record: &TokenRecord) -> Result<i64, StoreError> {
        let left = record.expires_unix.saturating_sub(super::now_unix());
        let ttl = i64::try_from(left + TOKEN_RECORD_GRACE_SECS).unwrap_or(i64::MAX);
        Ok(self.client.lease_grant(ttl, None).await?.id())
    }

    /// A token's record and its revision.
    pub async fn token(&mut self, id: &str) -> Result<Option<(TokenRecord, i64)>, StoreError> {
        let response = self.client.get(self.token_key(id), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let record =
            serde_json::from_slice(kv.value()).map_err(|_| StoreError::BadToken(id.to_owned()))?;
        Ok(Some((record, kv.mod_revision())))
    }

    /// Every token record, oldest first.
    pub async fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        let response = self
            .client
            .get(
                keys::tokens(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut records: Vec<TokenRecord> = response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        records.sort_by_key(|r| (r.created_unix, r.id.clone()));
        Ok(records)
    }

    pub async fn revoke_token(&mut self, id: &str) -> Result<TokenRecord, StoreError> {
        let (mut record, _) = self
            .token(id)
            .await?
            .ok_or_else(|| StoreError::NoToken(id.to_owned()))?;
        record.revoked = true;
        self.put_token(&record).await?;
        Ok(record)
    }

    /// Revokes every token that could still be used; returns their ids.
    pub async fn revoke_all(&mut self) -> Result<Vec<String>, StoreError> {
        let now = super::now_unix();
        let mut revoked = Vec::new();
        for record in self.tokens().await? {
            if record.state(now) == super::token::TokenState::Valid {
                self.revoke_token(&record.id).await?;
                revoked.push(record.id);
            }
        }
        Ok(revoked)
    }

    /// node -> SHA-256 of its current certificate.
    pub async fn node_certs(&mut self) -> Result<BTreeMap<String, String>, StoreError> {
        let prefix = keys::certs_all(&self.prefix);
        Ok(crate::cluster::read_prefix(&mut self.client, &prefix).await?)
    }

    /// node -> SHA-256 of its revoked certificate.
    pub async fn revoked_certs(&mut self) -> Result<BTreeMap<String, String>, StoreError> {
        let prefix = keys::revoked_all(&self.prefix);
        Ok(crate::cluster::read_prefix(&mut self.client, &prefix).await?)
    }

    /// The SHA-256 of the certificate issued to `node`, if any.
    pub async fn cert_of(&mut self, node: &str) -> Result<Option<String>, StoreError> {
        let response = self.client.get(self.cert_key(node), None).await?;
        Ok(response
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(str::to_owned)))
    }
}

/// The shared configuration as stored: everything but `local` (each host's own).
/// A join token's record as stored.
pub fn encode_token(record: &TokenRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::Encode {
        what: format!("join token {}", record.id),
        error: e.to_string(),
    })
}

pub fn cluster_config_text(config: &FleetConfig) -> Result<String, StoreError> {
    let shared = FleetConfig {
        local: Default::default(),
        ..config.clone()
    };
    let text = toml::to_string(&shared).map_err(|e| StoreError::Encode {
        what: "the cluster configuration".into(),
        error: e.to_string(),
    })?;
    Ok(format!(
        "# The cluster's shared configuration, kept in etcd; milvus-fleet rewrites this\n\
         # copy when it changes there. Local settings go in /etc/milvus-fleet/fleet.d/.\n{text}"
    ))
}

/// Parses and checks a cluster configuration as stored in etcd.
pub fn parse_cluster_config(text: &str) -> Result<FleetConfig, StoreError> {
    let config: FleetConfig =
        toml::from_str(text).map_err(|e| StoreError::BadConfig(e.message().to_owned()))?;
    crate::config::validate::validate(&config, &|_| true)
        .map_err(|r| StoreError::BadConfig(format!("{}: {}", r.key, r.message)))?;
    Ok(config)
}
