//! The one mapping from every failure a request can meet (a business rejection, a cluster
//! error, bad input, a timeout) to an HTTP status + JSON body `{"code","message"}` and to
//! a gRPC `Status` with the stable code in metadata `x-stockade-code`.
//!
//! Both APIs build an [`ApiError`] and convert it here, so a client sees the same code
//! for the same failure whichever protocol it speaks.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use stockade_raft_store::Reject;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::cluster::ClusterError;
use crate::dto::ErrorBody;

/// Response header / gRPC metadata naming the node that served a request.
pub const SERVED_BY_HEADER: &str = "x-stockade-served-by";
/// gRPC metadata carrying the stable error code (`sold_out`, `no_leader`, ...).
pub const CODE_METADATA: &str = "x-stockade-code";
/// gRPC metadata carrying how long to wait before retrying, in milliseconds (HTTP uses
/// the standard `Retry-After` header in seconds).
pub const RETRY_AFTER_MS_METADATA: &str = "x-stockade-retry-after-ms";

/// Everything that can make a request fail. The crate's one error type.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// The state machine (or proposal validation, with `served_by: None`) refused.
    #[error("{reject}")]
    Rejected {
        reject: Reject,
        served_by: Option<u64>,
    },
    /// The cluster could not answer.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// Input that does not parse (bad JSON, wrong types, unknown fields, bad path or
    /// query parameters). `code` is `invalid` or `invalid_json`.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No route for this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request did not finish within the API's timeout.
    #[error("the request did not finish within {after_ms} ms; its outcome is unknown: retry with the same request_id")]
    Timeout { after_ms: u64 },
    /// `/readyz` while the node should not receive traffic.
    #[error("not ready: has_leader={has_leader}, caught_up={caught_up}")]
    NotReady { has_leader: bool, caught_up: bool },
    /// A fault in this node (unreadable state, an answer of the wrong kind).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A field-level input error, shaped like the state machine's own.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        ApiError::Rejected {
            reject: Reject::Invalid {
                field: field.to_string(),
                reason: reason.into(),
            },
            served_by: None,
        }
    }

    /// The stable, snake_case code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Rejected { reject, .. } => reject.code(),
            ApiError::Cluster(e) => match e {
                ClusterError::NoLeader { .. } => "no_leader",
                ClusterError::Overloaded { .. } => "overloaded",
                ClusterError::Unknown(_) => "outcome_unknown",
                ClusterError::NotFound(_) => "not_found",
                ClusterError::Refused(_) => "refused",
                ClusterError::Internal(_) => "internal",
            },
            ApiError::BadRequest { code, .. } => code,
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RouteNotFound(_) => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Timeout { .. } => "timeout",
            ApiError::NotReady { .. } => "not_ready",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status and gRPC code, decided together so they cannot drift apart.
    pub fn statuses(&self) -> (StatusCode, tonic::Code) {
        use tonic::Code as G;
        match self {
            ApiError::Rejected { reject, .. } => match reject {
                Reject::Invalid { .. } => (StatusCode::BAD_REQUEST, G::InvalidArgument),
                Reject::SaleNotFound | Reject::HoldNotFound | Reject::OrderNotFound => {
                    (StatusCode::NOT_FOUND, G::NotFound)
                }
                Reject::NotOwner => (StatusCode::FORBIDDEN, G::PermissionDenied),
                Reject::SaleExists => (StatusCode::CONFLICT, G::AlreadyExists),
                // Every other rejection is a conflict with the current state.
                _ => (StatusCode::CONFLICT, G::FailedPrecondition),
            },
            ApiError::Cluster(e) => match e {
                ClusterError::NoLeader { .. } | ClusterError::Unknown(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, G::Unavailable)
                }
                ClusterError::Overloaded { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, G::ResourceExhausted)
                }
                ClusterError::NotFound(_) => (StatusCode::NOT_FOUND, G::NotFound),
                ClusterError::Refused(_) => (StatusCode::CONFLICT, G::FailedPrecondition),
                ClusterError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, G::Internal),
            },
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, G::InvalidArgument),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, G::InvalidArgument),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, G::InvalidArgument)
            }
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, G::Unimplemented),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, G::Unimplemented),
            ApiError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, G::DeadlineExceeded),
            ApiError::NotReady { .. } => (StatusCode::SERVICE_UNAVAILABLE, G::Unavailable),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, G::Internal),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        self.statuses().0
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.statuses().1
    }

    /// How long the client should wait before retrying, when the cluster said so.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ApiError::Cluster(ClusterError::NoLeader { retry_after_ms })
            | ApiError::Cluster(ClusterError::Overloaded { retry_after_ms }) => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }

    /// The node that produced the answer, when one did.
    pub fn served_by(&self) -> Option<u64> {
        match self {
            ApiError::Rejected { served_by, .. } => *served_by,
            _ => None,
        }
    }

    /// The JSON body both HTTP errors and stream items carry.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_string(),
            message: self.to_string(),
        }
    }

    /// The gRPC form: code, readable message, and the stable code (plus served-by and
    /// retry hint when known) in metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut md = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(self.code()) {
            md.insert(CODE_METADATA, v);
        }
        if let Some(id) = self.served_by() {
            md.insert(SERVED_BY_HEADER, MetadataValue::from(id));
        }
        if let Some(ms) = self.retry_after_ms() {
            md.insert(RETRY_AFTER_MS_METADATA, MetadataValue::from(ms));
        }
        tonic::Status::with_metadata(self.grpc_code(), self.to_string(), md)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

/// Seconds for `Retry-After`, rounded up so a client never comes back early.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.http_status(), axum::Json(self.body())).into_response();
        let headers = resp.headers_mut();
        if let Some(ms) = self.retry_after_ms() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(ms)));
        }
        if let Some(id) = self.served_by() {
            headers.insert(SERVED_BY_HEADER, HeaderValue::from(id));
        }
        resp
    }
}

impl From<stockade_raft_store::StoreError> for ApiError {
    fn from(e: stockade_raft_store::StoreError) -> Self {
        ApiError::Internal(format!("reading state: {e}"))
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        let message = r.body_text();
        match r {
            J::JsonSyntaxError(_) => ApiError::BadRequest {
                code: "invalid_json",
                message,
            },
            J::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(message),
            // A body over the limit surfaces as a buffering error with status 413.
            J::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(message)
            }
            J::JsonDataError(_) => ApiError::BadRequest {
                code: "invalid",
                message,
            },
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            _ => ApiError::BadRequest {
                code: "invalid",
                message,
            },
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest {
            code: "invalid",
            message: r.body_text(),
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        if r.status().is_server_error() {
            return ApiError::Internal(r.body_text());
        }
        ApiError::BadRequest {
            code: "invalid",
            message: r.body_text(),
        }
    }
}
