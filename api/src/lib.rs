//! Stockade's client and admin APIs: HTTP (axum, JSON under `/v1` and `/admin`) and gRPC
//! (tonic, `stockade.v1`), both over the [`Cluster`] port.
//!
//! This crate validates input, calls the cluster and maps answers and errors to HTTP
//! statuses and gRPC codes in one place ([`error`]). It knows nothing of openraft.
//!
//! A node builds one [`Api`] and serves both [`Api::http_router`] and
//! [`Api::grpc_routes`] from it, so both protocols share limits and metrics.

pub mod cluster;
mod core;
pub mod dto;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;

use std::sync::Arc;

pub use cluster::{
    Backup, Cluster, ClusterError, ClusterStatus, Member, ReadLevel, Readiness, Replication,
    Served, StateHash,
};
pub use error::ApiError;
pub use grpc::grpc_routes;
pub use http::{http_router, openapi};

/// The API's own bounds (the state machine's are in `stockade_raft_store::limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest HTTP request body; larger ones get 413.
    pub request_body_bytes_max: usize,
    /// Longest a client request may take before a 504 `timeout` (outcome unknown).
    pub request_timeout_ms: u64,
    /// Same, for `/admin` requests (snapshots and membership changes are slow).
    pub admin_request_timeout_ms: u64,
    /// Page size of list endpoints when the client names none.
    pub list_limit_default: u32,
    /// Largest page a client may ask for.
    pub list_limit_max: u32,
    /// Requests of one `ReserveStream` or `PurchaseStream` being proposed at once; the
    /// stream stops reading until one completes (backpressure instead of an unbounded
    /// queue).
    pub stream_in_flight_max: usize,
    /// Size of the chunks a backup is streamed in (HTTP body frames, gRPC messages).
    pub backup_chunk_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            request_body_bytes_max: 64 * 1024,
            request_timeout_ms: 10_000,
            admin_request_timeout_ms: 300_000,
            list_limit_default: 50,
            list_limit_max: 500,
            stream_in_flight_max: 64,
            backup_chunk_bytes: 256 * 1024,
        }
    }
}

/// Both APIs of one node over one cluster, sharing limits and metrics.
pub struct Api<C: Cluster> {
    shared: Arc<core::Shared<C>>,
}

impl<C: Cluster> Clone for Api<C> {
    fn clone(&self) -> Self {
        Api {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Cluster> Api<C> {
    pub fn new(cluster: Arc<C>, limits: ApiLimits) -> Self {
        Api {
            shared: Arc::new(core::Shared {
                cluster,
                limits,
                metrics: Arc::new(metrics::Metrics::new()),
            }),
        }
    }

    /// The axum router of the HTTP API.
    pub fn http_router(&self) -> axum::Router {
        http::build(self.shared.clone()).0
    }

    /// The router and the (method, path) list it was built from (kept equal to the
    /// OpenAPI document by a test).
    pub fn http_router_and_table(&self) -> (axum::Router, Vec<http::RouteSpec>) {
        http::build(self.shared.clone())
    }

    /// The gRPC services (`stockade.v1.Stockade`, `stockade.v1.Admin`, reflection) for
    /// `tonic::transport::Server::builder().add_routes(...)`.
    pub fn grpc_routes(&self) -> tonic::service::Routes {
        grpc::routes(self.shared.clone())
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.shared.metrics
    }
}
