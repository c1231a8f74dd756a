//! Milvus' `root` password. Milvus runs with authentication on and creates its `root`
//! user with the well-known password `Milvus` the first time it starts. The cluster's
//! own password is generated at `init` (the 0600 credentials file `milvus`, sent over the
//! pinned join channel only to nodes that run Milvus); the first time a Milvus server on
//! this node answers, the daemon checks which of the two logs in and, when only the
//! well-known one does, changes it over Milvus' own API (`UpdateCredential`, the call a
//! client makes), so that it holds for every Milvus version alike.

use base64::Engine;

/// What Milvus names its built-in administrator, and that user's first password.
pub const ROOT_USER: &str = "root";
pub const DEFAULT_ROOT_PASSWORD: &str = "Milvus";

const LIST_USERS: &str = "/milvus.proto.milvus.MilvusService/ListCredUsers";
const UPDATE_CREDENTIAL: &str = "/milvus.proto.milvus.MilvusService/UpdateCredential";

/// milvus.proto.common.Status: the fields read here (error_code, reason, code).
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(int32, tag = "3")]
    code: i32,
}

/// milvus.proto.milvus.ListCredUsersRequest (its base is optional).
#[derive(Clone, PartialEq, prost::Message)]
struct ListCredUsersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct ListCredUsersResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<Status>,
    #[prost(string, repeated, tag = "2")]
    usernames: Vec<String>,
}

/// milvus.proto.milvus.UpdateCredentialRequest; passwords travel base64-encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateCredentialRequest {
    #[prost(string, tag = "2")]
    username: String,
    #[prost(string, tag = "3")]
    old_password: String,
    #[prost(string, tag = "4")]
    new_password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MilvusAuthError {
    #[error("Milvus at {0}: {1}")]
    Connect(String, String),
    #[error("Milvus refused both the cluster's root password and the first one: {0}")]
    NeitherPassword(String),
    #[error("Milvus did not change the root password: {0}")]
    Refused(String),
}

/// What [`ensure_root_password`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootPassword {
    /// The cluster's password logs in already.
    AlreadySet,
    /// Only the first one did; it is the cluster's now.
    Changed,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The metadata value Milvus reads a login from (`authorization`: base64 of user:password).
fn login(password: &str) -> String {
    b64(&format!("{ROOT_USER}:{password}"))
}

async fn call<Req, Resp>(
    channel: tonic::transport::Channel,
    path: &'static str,
    password: &str,
    request: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(request);
    let value = login(password)
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("password"))?;
    request.metadata_mut().insert("authorization", value);
    let codec = tonic_prost::ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

/// Whether `password` logs in as root (a call that needs a login succeeds).
async fn logs_in(channel: &tonic::transport::Channel, password: &str) -> Result<bool, String> {
    match call::<_, ListCredUsersResponse>(
        channel.clone(),
        LIST_USERS,
        password,
        ListCredUsersRequest {},
    )
    .await
    {
        Ok(answer) => Ok(answer
            .status
            .is_none_or(|s| s.error_code == 0 && s.code == 0)),
        Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(false),
        Err(status) => Err(status.message().to_owned()),
    }
}

/// Makes `password` Milvus' root password on the server at `endpoint` (`http://host:port`).
pub async fn ensure_root_password(
    endpoint: &str,
    password: &str,
) -> Result<RootPassword, MilvusAuthError> {
    let connect_error =
        |e: &dyn std::fmt::Display| MilvusAuthError::Connect(endpoint.to_owned(), e.to_string());
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| connect_error(&e))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| connect_error(&e))?;
    if logs_in(&channel, password)
        .await
        .map_err(|e| connect_error(&e))?
    {
        return Ok(RootPassword::AlreadySet);
    }
    if !logs_in(&channel, DEFAULT_ROOT_PASSWORD)
        .await
        .map_err(|e| connect_error(&e))?
    {
        return Err(MilvusAuthError::NeitherPassword(endpoint.to_owned()));
    }
    let request = UpdateCredentialRequest {
        username: ROOT_USER.into(),
        old_password: b64(DEFAULT_ROOT_PASSWORD),
        new_password: b64(password),
    };
    let status: Status = call(channel, UPDATE_CREDENTIAL, DEFAULT_ROOT_PASSWORD, request)
        .await
        .map_err(|s| MilvusAuthError::Refused(s.message().to_owned()))?;
    if status.error_code != 0 || status.code != 0 {
        return Err(MilvusAuthError::Refused(status.reason));
    }
    Ok(RootPassword::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_base64_of_user_and_password_as_milvus_reads_it() {
        // What pymilvus sends for root/Milvus.
        assert_eq!(login("Milvus"), "cm9vdDpNaWx2dXM=");
        assert_eq!(b64("Milvus"), "TWlsdnVz");
    }
}
