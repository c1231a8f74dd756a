//! The join handshake, both sides.
//!
//! The joining node connects to any member's API port with a TLS verifier that accepts
//! only a certificate chain whose CA has the pin in its token, so a wrong or spoofed
//! server is refused before a byte of the request (and the secret in it) is sent. It then
//! presents `id.secret`, its name, address, roles and a CSR (its key never leaves it).
//!
//! The member checks the token in etcd, adds the node to etcd as a learner (storage and
//! witness roles), and in one transaction guarded by the token's and the configuration's
//! revisions records the use and adds the node to the cluster configuration. It answers
//! with the signed certificate, the CA, the configuration, how to start etcd, and the
//! object-storage credentials, all over the verified channel.

use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, MemberAddOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::store::{cluster_config_text, MembershipStore, StoreError};
use super::token::{split_credential, JoinToken, TokenError};
use crate::config::model::{NodeConfig, Role, ServiceMode};
use crate::pki::Ca;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `id.secret`.
    pub credential: String,
    pub name: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub csr: String,
    /// A request for the Milvus roles' etcd client certificate (a compute node).
    #[serde(default)]
    pub milvus_csr: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster: String,
    /// The cluster configuration (TOML) with the new node in it.
    pub config: String,
    pub ca_cert: String,
    pub node_cert: String,
    /// The Milvus roles' etcd client certificate (etcd user `milvus`), when asked for.
    #[serde(default)]
    pub milvus_cert: Option<String>,
    /// The CA key, for storage nodes of a cluster on an external etcd only (they sign the
    /// next joins from disk); with milvus-fleet's etcd the key stays in etcd, never sent.
    pub ca_key: Option<String>,
    /// `name=peer-url,...` for a new etcd member: the members it joins.
    pub etcd_initial_cluster: Option<String>,
    /// The object-storage credentials file's contents, when the cluster has one.
    pub object_storage_credentials: Option<String>,
    /// Milvus' root password, for a node that runs Milvus.
    #[serde(default)]
    pub milvus_root_password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// Worth a retry: another node is joining, or etcd is busy.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<etcd_client::Error> for JoinError {
    fn from(e: etcd_client::Error) -> Self {
        JoinError::Store(e.into())
    }
}

/// Whether node `name` runs a component that reads the object-storage keys (a Milvus role,
/// MinIO): only such a node is sent them; a witness, or a storage node beside an external
/// S3, never holds them (pure).
pub fn reads_object_storage_keys(config: &crate::config::model::FleetConfig, name: &str) -> bool {
    crate::render::plan::NodePlan::for_node(config, name).is_some_and(|plan| {
        plan.components
            .iter()
            .any(|component| component.spec().needs_credentials)
    })
}

/// What the admitting member holds.
pub struct Signer {
    pub ca: Ca,
    pub object_storage_credentials: Option<String>,
    pub milvus_root_password: Option<String>,
}

/// Admits one node (see the module docs); safe to repeat for a node that joined already.
pub async fn admit(
    store: &mut MembershipStore,
    signer: &Signer,
    request: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    if request.roles.is_empty() {
        return Err(JoinError::Invalid("roles: name at least one role".into()));
    }
    let (id, secret_hash) = split_credential(&request.credential)?;
    let key_pin = crate::pki::pin_of_csr(&request.csr)
        .map_err(|e| JoinError::Invalid(format!("csr: {e}")))?;
    // Up to a few rounds: another join or a token change between read and commit.
    for _ in 0..20 {
        let now = super::now_unix();
        let (record, token_revision) = store
            .token(&id)
            .await?
            .ok_or_else(|| TokenError::Unknown(id.clone()))?;
        record.admit(&secret_hash, &request.name, &request.roles, now, &key_pin)?;
        // A removed node stays out until an operator makes a token to re-admit it.
        let removed = store
            .client
            .get(store.revoked_key(&request.name), None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.mod_revision());
        if removed.is_some() && !record.readmit.contains(&request.name) {
            return Err(TokenError::Removed {
                id: record.id.clone(),
                node: request.name.clone(),
            }
            .into());
        }

        let (mut config, _, config_revision) = store.config().await?;
        let wanted = NodeConfig {
            name: request.name.clone(),
            address: request.address.clone(),
            roles: request.roles.clone(),
        };
        match config.nodes.iter().find(|n| n.name == request.name) {
            Some(existing) if *existing == wanted => {}
            Some(existing) => {
                return Err(JoinError::Conflict(format!(
                    "node {} is already in the cluster at {} as {}; remove it first (`milvus-fleet node remove {}`)",
                    existing.name,
                    existing.address,
                    super::token::role_list(&existing.roles),
                    existing.name
                )))
            }
            None => {
                if let Some(other) = config.nodes.iter().find(|n| n.address == request.address) {
                    return Err(JoinError::Conflict(format!(
                        "address {} belongs to node {} already",
                        request.address, other.name
                    )));
                }
                config.nodes.push(wanted.clone());
            }
        }
        crate::config::validate::validate(&config, &|_| true)
            .map_err(|r| JoinError::Invalid(format!("{}: {}", r.key, r.message)))?;

        let node_cert = signer
            .ca
            .sign_csr(
                &request.csr,
                &request.name,
                std::slice::from_ref(&request.address),
            )
            .map_err(|e| JoinError::Invalid(format!("csr: {e}")))?;
        let milvus_cert = request
            .milvus_csr
            .as_deref()
            .filter(|_| wanted.roles.contains(&Role::Compute))
            .map(|csr| {
                signer
                    .ca
                    .sign_etcd_client_csr(csr, crate::cluster::auth::MILVUS_USER)
            })
            .transpose()
            .map_err(|e| JoinError::Invalid(format!("milvus_csr: {e}")))?;
        let cert_hash = crate::pki::cert_sha256(&node_cert)
            .map_err(|e| JoinError::Invalid(format!("the signed certificate: {e}")))?;

        let votes = wanted
            .roles
            .iter()
            .any(|r| matches!(r, Role::Storage | Role::Witness));
        let etcd_initial_cluster = if votes && config.etcd.mode == ServiceMode::Local {
            Some(add_etcd_learner(store, &config, &wanted).await?)
        } else {
            None
        };

        if config.etcd.mode == ServiceMode::Local {
            let may_lead = config.may_lead(&request.name);
            crate::cluster::auth::add_node(
                &mut store.client,
                &store.prefix,
                &request.name,
                may_lead,
            )
            .await
            .map_err(|e| JoinError::Busy(e.to_string()))?;
        }

        let mut token = record.clone();
        if !token.used_by.contains(&request.name) {
            token.used_by.push(request.name.clone());
        }
        token.keys.insert(request.name.clone(), key_pin.clone());
        let token_key = store.token_key(&id);
        let config_key = store.config_key();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(token_key.clone(), CompareOp::Equal, token_revision),
                Compare::mod_revision(config_key.clone(), CompareOp::Equal, config_revision),
                // Not removed meanwhile (0: no record).
                Compare::mod_revision(
                    store.revoked_key(&request.name),
                    CompareOp::Equal,
                    removed.unwrap_or(0),
                ),
            ])
            .and_then([
                TxnOp::put(
                    token_key,
                    super::store::encode_token(&token)?,
                    Some(PutOptions::new().with_ignore_lease()),
                ),
                TxnOp::put(config_key, cluster_config_text(&config)?, None),
                TxnOp::put(store.cert_key(&request.name), cert_hash, None),
                TxnOp::delete(store.revoked_key(&request.name), None),
            ]);
        if !store.client.txn(txn).await?.succeeded() {
            continue;
        }
        let storage = wanted.roles.contains(&Role::Storage);
        return Ok(JoinResponse {
            cluster: config.cluster.name.clone(),
            config: cluster_config_text(&config)?,
            ca_cert: signer.ca.pem().cert.clone(),
            node_cert,
            milvus_cert,
            ca_key: (storage && config.etcd.mode == ServiceMode::External)
                .then(|| signer.ca.pem().key.clone()),
            etcd_initial_cluster,
            object_storage_credentials: signer
                .object_storage_credentials
                .clone()
                .filter(|_| reads_object_storage_keys(&config, &request.name)),
            milvus_root_password: signer
                .milvus_root_password
                .clone()
                .filter(|_| wanted.roles.contains(&Role::Compute)),
        });
    }
    Err(JoinError::Busy(
        "the cluster configuration kept changing; try again".into(),
    ))
}

/// One try at making the etcd member at `peer` a voter: Some once it votes (already, or
/// promoted now), None when etcd has no member there. etcd refuses a learner not yet in
/// sync, and a caller without its root role.
pub async fn promote_once(
    client: &mut etcd_client::Client,
    peer: &str,
) -> Result<Option<()>, etcd_client::Error> {
    let members = client.member_list().await?;
    let Some(member) = members
        .members()
        .iter()
        .find(|m| m.peer_urls().iter().any(|u| u == peer))
    else {
        return Ok(None);
    };
    if member.is_learner() {
        client.member_promote(member.id()).await?;
    }
    Ok(Some(()))
}

/// Promotes the etcd learner at `peer` once it is in sync, trying every second for two
/// minutes (the joining node starts its member meanwhile); done when it votes.
pub async fn promote_when_in_sync(mut client: etcd_client::Client, peer: String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match promote_once(&mut client, &peer).await {
            Ok(Some(())) => {
                tracing::info!(peer = %peer, "the new etcd member votes");
                return;
            }
            Ok(None) => return,
            Err(_) => {}
        }
    }
    tracing::warn!(peer = %peer, "the new etcd member at {peer} was not promoted within 2 minutes: it stays a learner (`etcdctl member promote` on a storage node)");
}

/// Adds `node` to etcd as a learner unless it is a member already; returns the members
/// it joins as `name=peer-url,...`.
async fn add_etcd_learner(
    store: &mut MembershipStore,
    config: &crate::config::FleetConfig,
    node: &NodeConfig,
) -> Result<String, JoinError> {
    let own_url = peer_url(&node.address, config.etcd.peer_port);
    let members = store.client.member_list().await?;
    if !members
        .members()
        .iter()
        .any(|m| m.peer_urls().contains(&own_url))
    {
        if let Err(e) = store
            .client
            .member_add(
                [own_url.as_str()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
        {
            let text = e.to_string();
            if text.contains("learner") || text.contains("unhealthy") {
                return Err(JoinError::Busy(format!(
                    "etcd cannot take a new member yet ({text}); another node is probably joining"
                )));
            }
            return Err(e.into());
        }
    }
    let members = store.client.member_list().await?;
    let name_of = |url: &String| {
        config
            .nodes
            .iter()
            .find(|n| peer_url(&n.address, config.etcd.peer_port) == *url)
            .map(|n| n.name.clone())
    };
    Ok(members
        .members()
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls().first()?;
            let name = match m.name() {
                "" => name_of(url)?,
                name => name.to_owned(),
            };
            Some(format!("{name}={url}"))
        })
        .collect::<Vec<_>>()
        .join(","))
}

pub fn peer_url(address: &str, port: u16) -> String {
    crate::config::etcd_url(address, port)
}

/// The joining side: sends `request` to `server` (host[:port]) over TLS pinned to the
/// token's CA; nothing is sent unless the server's CA has that pin.
pub async fn request(
    server: &str,
    token: &JoinToken,
    request: &JoinRequest,
) -> Result<JoinResponse, RequestError> {
    let verifier = Arc::new(PinnedCa::new(token.ca_pin()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RequestError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| RequestError::Local(e.to_string()))?;
    let url = format!("https://{}/v1/join", with_default_port(server));
    let answer = match client.post(&url).json(request).send().await {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(seen) = verifier.mismatch() {
                return Err(RequestError::WrongCa {
                    server: server.to_owned(),
                    seen,
                    pinned: token.ca_pin(),
                });
            }
            return Err(RequestError::Unreachable(format!(
                "{server}: {}",
                crate::logging::error_chain(&e)
            )));
        }
    };
    let status = answer.status();
    if status.is_success() {
        return answer
            .json()
            .await
            .map_err(|e| RequestError::Unreachable(format!("{server}: reading the answer: {e}")));
    }
    let message = answer
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string());
    // 503: etcd busy or another join in progress; 429: the node's join rate.
    if matches!(status.as_u16(), 503 | 429) {
        Err(RequestError::Busy(message))
    } else {
        Err(RequestError::Refused(message))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the server at {server} has CA {seen}, but the token pins {pinned}: wrong cluster, or someone in between; nothing was sent")]
    WrongCa {
        server: String,
        seen: String,
        pinned: String,
    },
    #[error("join refused: {0}")]
    Refused(String),
    #[error("the cluster is busy: {0}")]
    Busy(String),
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("{0}")]
    Local(String),
}

/// The exit code of a `milvus-fleet join` that trying again cannot fix: a garbled or
/// missing token, a bad join file, a server with another CA, a refusal by the cluster.
/// milvus-fleet-join.service lists it in `RestartPreventExitStatus=`, so such a join
/// fails once with its reason instead of looping. An unreachable or busy cluster keeps
/// exit code 1 (retried).
pub const REFUSED_FOR_GOOD_EXIT: u8 = 4;

/// A join file (what cloud-init writes) that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadJoinFile(pub String);

/// Whether `error` (from a join) is one that trying again cannot fix.
pub fn refused_for_good(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<BadJoinFile>()
            || cause.is::<TokenError>()
            || matches!(
                cause.downcast_ref::<RequestError>(),
                Some(RequestError::WrongCa { .. } | RequestError::Refused(_))
            )
    })
}

pub fn with_default_port(server: &str) -> String {
    let port = crate::config::model::DEFAULT_API_PORT;
    match server.rsplit_once(':') {
        // host:port, or [v6]:port
        Some((host, p))
            if p.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')) =>
        {
            server.to_owned()
        }
        // a bare IPv6 address
        Some(_) if !server.starts_with('[') => format!("[{server}]:{port}"),
        _ => format!("{server}:{port}"),
    }
}

/// Accepts a server whose chain holds a CA with the pinned public key and whose end
/// certificate that CA signed. The host name is not checked: the pin already says
/// "a member of this cluster", whatever address the operator typed.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Mutex<Option<String>>,
}

impl PinnedCa {
    fn new(pin: String) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            seen: Mutex::new(None),
        }
    }

    fn mismatch(&self) -> Option<String> {
        self.seen.lock().ok()?.clone()
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut seen = Vec::new();
        for candidate in intermediates {
            let Ok(pin) = crate::pki::pin_of_der(candidate) else {
                continue;
            };
            if pin == self.pin {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(candidate.clone())?;
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    &[],
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                return Ok(rustls::client::danger::ServerCertVerified::assertion());
            }
            seen.push(pin);
        }
        let seen = if seen.is_empty() {
            "none (no CA certificate in its chain)".to_owned()
        } else {
            seen.join(", ")
        };
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(seen);
        }
        Err(rustls::Error::General(
            "the server's CA does not have the token's pin".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::{reads_object_storage_keys, with_default_port};
    use crate::config::model::{FleetConfig, NodeConfig, ObjectStorageKind, Role};

    #[test]
    fn only_nodes_that_run_milvus_or_minio_get_the_object_storage_keys() {
        let node = |name: &str, address: &str, roles: &[Role]| NodeConfig {
            name: name.into(),
            address: address.into(),
            roles: roles.to_vec(),
        };
        let mut config = FleetConfig {
            nodes: vec![
                node("c", "10.0.0.1", &[Role::Compute]),
                node("s", "10.0.0.2", &[Role::Storage]),
                node("w", "10.0.0.3", &[Role::Witness]),
            ],
            ..FleetConfig::default()
        };
        config.object_storage.kind = ObjectStorageKind::S3;
        assert!(reads_object_storage_keys(&config, "c"));
        assert!(
            !reads_object_storage_keys(&config, "s"),
            "etcd alone beside an external S3"
        );
        assert!(!reads_object_storage_keys(&config, "w"));
        assert!(!reads_object_storage_keys(&config, "nobody"));
        config.object_storage.kind = ObjectStorageKind::Minio;
        assert!(reads_object_storage_keys(&config, "s"), "it runs MinIO");
        assert!(!reads_object_storage_keys(&config, "w"));
    }

    #[test]
    fn a_server_without_a_port_gets_the_api_port() {
        for (given, wanted) in [
            ("10.0.0.1", "10.0.0.1:19500"),
            ("10.0.0.1:1234", "10.0.0.1:1234"),
            ("h1.example", "h1.example:19500"),
            ("::1", "[::1]:19500"),
            ("[::1]", "[::1]:19500"),
            ("[fd00::1]:1234", "[fd00::1]:1234"),
        ] {
            assert_eq!(with_default_port(given), wanted, "{given}");
        }
    }
}
