//! Membership routes: `POST /v1/join` (the only route a client without a certificate
//! reaches), and join tokens: `GET/POST /v1/tokens`, `POST /v1/tokens/rotate`,
//! `POST /v1/tokens/{id}/revoke`; a node's certificate renewal,
//! `POST /v1/certificates/renew`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::{info, warn};

use super::{parse, ApiError, ApiState};
use crate::config::model::Role;
use crate::membership::join::{admit, JoinRequest, Signer};
use crate::membership::renew::{renew, RenewRequest};
use crate::membership::store::MembershipStore;
use crate::membership::token::{role_list, JoinToken, TokenRecord};
use crate::pki::{Ca, Pem};

type Shared = State<Arc<ApiState>>;

/// Longest token lifetime: a week. Join tokens are for provisioning, not for storage.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

fn store(state: &ApiState) -> Result<MembershipStore, ApiError> {
    state.members.borrow().clone().ok_or(ApiError::NoCluster)
}

/// The CA this node signs with: its key from etcd (a cluster whose etcd milvus-fleet runs:
/// only storage nodes may read it), else from this node's PKI directory (an external etcd:
/// the storage nodes keep it on disk).
async fn signer(state: &ApiState, store: &mut MembershipStore) -> Result<Signer, ApiError> {
    let read = |name: &str| std::fs::read_to_string(state.pki_dir.join(name));
    let no_key = || {
        ApiError::Unavailable(format!(
            "{} holds no CA key (only storage nodes sign certificates): join through a storage node",
            state.node
        ))
    };
    let cert = read("ca.crt").map_err(|_| no_key())?;
    let key = match store.ca_key().await {
        Ok(Some(key)) => key,
        // Not kept in etcd (external etcd), or not readable by this node's etcd user.
        Ok(None) | Err(_) => read("ca.key").map_err(|_| no_key())?,
    };
    let ca = Ca::load(&Pem { cert, key })
        .map_err(|e| ApiError::Unavailable(format!("the node's CA: {e}")))?;
    let credentials = std::fs::read_to_string(&state.credentials_file)
        .ok()
        .filter(|c| !c.trim().is_empty());
    Ok(Signer {
        ca,
        object_storage_credentials: credentials,
        milvus_root_password: state.milvus_root_password.clone(),
    })
}

fn ca_pin(state: &ApiState) -> Result<String, ApiError> {
    let cert = std::fs::read_to_string(state.pki_dir.join("ca.crt"))
        .map_err(|_| ApiError::Unavailable(format!("{} has no cluster CA", state.node)))?;
    crate::pki::pin_of_cert(&cert).map_err(|e| ApiError::Unavailable(format!("the CA: {e}")))
}

pub async fn join(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let allowed = state
        .join_limit
        .lock()
        .map(|mut bucket| bucket.take(tokio::time::Instant::now()))
        .unwrap_or(false);
    if !allowed {
        return Err(ApiError::TooMany(
            "too many join requests on this node: try again in a second".into(),
        ));
    }
    let request: JoinRequest = parse(&body)?;
    let mut store = store(&state)?;
    let signer = signer(&state, &mut store).await?;
    match admit(&mut store, &signer, &request).await {
        Ok(response) => {
            info!(node = %request.name, address = %request.address, roles = %role_list(&request.roles), "node joined");
            // A new etcd learner whose own user may not promote it (a witness): this
            // node, a storage node with etcd's root role, does once it has caught up.
            if let Some(peer) = response
                .etcd_initial_cluster
                .as_deref()
                .and_then(|members| learner_peer(members, &request.name))
            {
                let client = store.client.clone();
                tokio::spawn(crate::membership::join::promote_when_in_sync(client, peer));
            }
            Ok(Json(response).into_response())
        }
        Err(e) => {
            // The token id is not secret; the secret never reaches a log.
            warn!(node = %request.name, address = %request.address, "join refused: {e}");
            Err(e.into())
        }
    }
}

/// `POST /v1/certificates/renew`: a node renews its certificates, proving who it is with
/// its current one (membership/renew.rs).
pub async fn renew_certificates(
    State(state): Shared,
    cert: Option<axum::Extension<super::ClientCert>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(axum::Extension(cert)) = cert.filter(|c| c.role == crate::pki::CertRole::Node) else {
        return Err(ApiError::Forbidden(
            "a renewal needs the node's current certificate, shown over TLS".into(),
        ));
    };
    let request: RenewRequest = parse(&body)?;
    let mut store = store(&state)?;
    let signer = signer(&state, &mut store).await?;
    match renew(&mut store, &signer.ca, &cert.name, &cert.hash, &request).await {
        Ok(response) => {
            info!(node = %cert.name, "node certificate renewed");
            Ok(Json(response).into_response())
        }
        Err(e) => {
            warn!(node = %cert.name, "certificate renewal refused: {e}");
            Err(e.into())
        }
    }
}

/// The peer URL of member `name` in `name=peer-url,...` (pure).
fn learner_peer(members: &str, name: &str) -> Option<String> {
    members
        .split(',')
        .find_map(|m| m.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
}

/// The body of `POST /v1/tokens` and `/v1/tokens/rotate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_uses")]
    uses: u32,
    #[serde(default = "all_roles")]
    roles: Vec<Role>,
    /// Removed nodes the token lets back in.
    #[serde(default)]
    readmit: Vec<String>,
}

fn default_ttl() -> u64 {
    3600
}

fn default_uses() -> u32 {
    1
}

fn all_roles() -> Vec<Role> {
    vec![Role::Storage, Role::Compute, Role::Witness]
}

async fn create(state: &ApiState, body: &Bytes) -> Result<serde_json::Value, ApiError> {
    let request: TokenRequest = parse(body)?;
    if !(1..=MAX_TTL_SECS).contains(&request.ttl_secs) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs: {} is outside 1..={MAX_TTL_SECS} (a week)",
            request.ttl_secs
        )));
    }
    if !(1..=1000).contains(&request.uses) {
        return Err(ApiError::BadRequest(format!(
            "uses: {} is outside 1..=1000",
            request.uses
        )));
    }
    if request.roles.is_empty() {
        return Err(ApiError::BadRequest("roles: name at least one".into()));
    }
    let token = JoinToken::generate(&ca_pin(state)?)
        .map_err(|e| ApiError::Unavailable(format!("random source: {e}")))?;
    let record = store(state)?
        .create_token(
            &token,
            request.roles,
            request.ttl_secs,
            request.uses,
            request.readmit,
        )
        .await?;
    info!(token = %record.id, roles = %role_list(&record.roles), uses = record.uses, expires_unix = record.expires_unix, "join token created");
    let mut body = describe(&record);
    body["token"] = token.reveal().into();
    Ok(body)
}

fn describe(record: &TokenRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "roles": record.roles,
        "created_unix": record.created_unix,
        "expires_unix": record.expires_unix,
        "uses": record.uses,
        "used_by": record.used_by,
        "state": record.state(crate::membership::now_unix()),
    })
}

pub async fn create_token(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    Ok((StatusCode::CREATED, Json(create(&state, &body).await?)).into_response())
}

pub async fn list_tokens(State(state): Shared) -> Result<Response, ApiError> {
    let records = store(&state)?.tokens().await?;
    Ok(Json(records.iter().map(describe).collect::<Vec<_>>()).into_response())
}

pub async fn revoke_token(
    State(state): Shared,
    UrlPath(id): UrlPath<String>,
    // Read, though unused: a request body left unread makes the socket reset the answer.
    _body: Bytes,
) -> Result<Response, ApiError> {
    if !crate::cluster::jobs::is_plain_name(&id) {
        return Err(ApiError::BadRequest(format!(
            "token id {id:?} is not valid"
        )));
    }
    let record = store(&state)?.revoke_token(&id).await?;
    info!(token = %id, "join token revoked");
    Ok(Json(describe(&record)).into_response())
}

/// Revokes every outstanding token at once (the answer to a leaked one) and makes a new one.
pub async fn rotate_tokens(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let revoked = store(&state)?.revoke_all().await?;
    info!(revoked = %revoked.join(","), "join tokens rotated");
    let mut body = create(&state, &body).await?;
    body["revoked"] = revoked.into();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
