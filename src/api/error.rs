//! API errors: each kind maps to one HTTP status, with a one-line message as JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::cluster::jobs::JobError;
use crate::membership::join::JoinError;
use crate::membership::remove::RemoveError;
use crate::membership::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this node is not part of a cluster yet, or has not reached etcd")]
    NoCluster,
    #[error("{0}")]
    Unavailable(String),
    /// Over a route's rate (api/limits.rs): try again shortly.
    #[error("{0}")]
    TooMany(String),
    /// A request body axum refused (bad JSON, wrong type, too large), with its status.
    #[error("{1}")]
    Rejected(StatusCode, String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NoCluster | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Rejected(status, _) => *status,
        }
    }
}

/// What a compute or witness node answers a call that would change the cluster's records.
const READ_ONLY: &str = "this node may not change the cluster's records (etcd gives compute and \
                         witness nodes read access only): run it on a storage node";

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Locked { .. } | JobError::Ended(_) => ApiError::Conflict(e.to_string()),
            JobError::NotFound(_) => ApiError::NotFound(e.to_string()),
            JobError::InvalidResource(_) | JobError::InvalidDrill => {
                ApiError::BadRequest(e.to_string())
            }
            JobError::Cluster(e) if e.is_permission_denied() => {
                ApiError::Forbidden(READ_ONLY.into())
            }
            JobError::Corrupt { .. }
            | JobError::Encode { .. }
            | JobError::NoFreeId(_)
            | JobError::Cluster(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoToken(_) => ApiError::NotFound(e.to_string()),
            StoreError::NoConfig => ApiError::NoCluster,
            StoreError::Cluster(e) if e.is_permission_denied() => {
                ApiError::Forbidden(READ_ONLY.into())
            }
            _ => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<RemoveError> for ApiError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::NoNode { .. } => ApiError::NotFound(e.to_string()),
            RemoveError::Refused(_) => ApiError::Conflict(e.to_string()),
            RemoveError::Etcd(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::Token(_) => ApiError::Forbidden(e.to_string()),
            JoinError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            JoinError::Conflict(_) => ApiError::Conflict(e.to_string()),
            JoinError::Busy(_) => ApiError::Unavailable(e.to_string()),
            JoinError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
