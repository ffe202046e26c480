//! The port between the APIs and the cluster: everything a handler may ask of a node.
//!
//! Handlers validate input, call a [`Cluster`], and map the answer to HTTP or gRPC; they
//! never see openraft. The node implements this trait (leader forwarding, read levels,
//! group commit); tests implement it with an in-memory state machine.

use std::collections::BTreeSet;
use std::future::Future;

use stockade_raft_store::kv::KvRead;
use stockade_raft_store::{query, Command, NodeAddr, Reject, Response};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// Whatever this node has applied: fast, possibly behind (product pages).
    Stale,
    /// Reflects every write acknowledged before the read began (read index / lease).
    #[default]
    Linearizable,
}

/// An answer and the node that produced it (the leader for writes; the node whose state
/// was read for reads). Sent as `x-stockade-served-by`.
#[derive(Clone, Debug)]
pub struct Served<T> {
    pub value: T,
    pub served_by: u64,
}

/// Why the cluster could not answer. Business rejections are not errors: they come back
/// as `Response::Rejected` inside `Ok`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known (election in progress, or this node is cut off): retry later.
    #[error("no leader is available; retry in {retry_after_ms} ms")]
    NoLeader { retry_after_ms: u64 },
    /// The node is shedding load (a bounded queue is full): retry later.
    #[error("overloaded; retry in {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },
    /// The outcome is unknown (timeout, or the connection to the leader was lost): the
    /// command may or may not have been applied; retry with the same request_id.
    #[error("outcome unknown: {0}; retry with the same request_id")]
    Unknown(String),
    /// Something the caller named does not exist (e.g. no snapshot to back up yet).
    #[error("{0}")]
    NotFound(String),
    /// An admin request the cluster refused (e.g. a membership change in progress).
    #[error("{0}")]
    Refused(String),
    /// A fault on this node.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an operator sees of one node and its cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    /// leader | follower | candidate | learner | shutdown
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub members: Vec<Member>,
    /// Per-follower replication, known on the leader only.
    pub replication: Vec<Replication>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub node_id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replication {
    pub node_id: u64,
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: u64,
}

/// A snapshot file to stream as a backup.
pub struct Backup {
    pub file: std::fs::File,
    pub len_bytes: u64,
    pub last_index: Option<u64>,
}

/// A replica's state fingerprint (`GET /admin/state-hash`), for convergence checks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateHash {
    pub node_id: u64,
    pub applied_index: u64,
    pub state_hash: u64,
}

/// Whether the node should receive traffic (`/readyz`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    pub has_leader: bool,
    /// Applied up to the commit index this node knows.
    pub caught_up: bool,
}

/// The cluster as the API layer sees it.
pub trait Cluster: Send + Sync + 'static {
    /// A read view of the replicated state (see `stockade_raft_store::query`).
    type View: KvRead + Send + Sync + 'static;

    /// This node's id.
    fn node_id(&self) -> u64;

    /// Whether a reservation may be refused from a linearizable read, without a log
    /// entry (`sold_out` and the like after a sale sells out; see `core::fast_reject`
    /// for what that gives up). Off unless the node enables it.
    fn refusals_from_reads(&self) -> bool {
        false
    }

    /// `Some(reject)` when no one could reserve `qty` units of `sale_id` now, judged on
    /// `view` or on applied state at least as new (`query::reserve_precheck`); `None`
    /// also when the state cannot be read. This default reads the view; the node answers
    /// from the gates its state machine keeps in memory after every apply.
    fn reserve_precheck(&self, view: &Self::View, sale_id: &str, qty: u32) -> Option<Reject> {
        query::reserve_precheck_now(view, sale_id, qty).ok()?
    }

    /// Proposes a command (already validated with
    /// `stockade_raft_store::validate::proposal`) and returns its response once applied.
    /// Followers forward to the leader; concurrent proposals may share one log entry.
    fn propose(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<Served<Response>, ClusterError>> + Send;

    /// A view of the state at the requested level.
    fn read(
        &self,
        level: ReadLevel,
    ) -> impl Future<Output = Result<Served<Self::View>, ClusterError>> + Send;

    fn status(&self) -> impl Future<Output = Result<ClusterStatus, ClusterError>> + Send;
    fn readiness(&self) -> Readiness;

    /// Initializes a new cluster with these voters (empty: this node alone, at its
    /// advertised addresses). Refused if this node already belongs to a cluster.
    fn initialize(
        &self,
        members: std::collections::BTreeMap<u64, NodeAddr>,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    fn add_learner(
        &self,
        node_id: u64,
        addr: NodeAddr,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Sets the voters; with `retain`, removed voters stay as learners.
    fn change_membership(
        &self,
        voters: BTreeSet<u64>,
        retain: bool,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;
    fn transfer_leader(&self, to: u64) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Builds a snapshot now and waits for it.
    fn trigger_snapshot(&self) -> impl Future<Output = Result<(), ClusterError>> + Send;
    /// Compacts this node's state machine now (RocksDB's files rewritten without deleted
    /// versions) and waits for it. Local to the node: replicas compact independently.
    fn compact(
        &self,
    ) -> impl Future<Output = Result<stockade_raft_store::Compaction, ClusterError>> + Send;
    /// The latest snapshot of this node, for download.
    fn backup(&self) -> impl Future<Output = Result<Backup, ClusterError>> + Send;

    /// This replica's applied index and a hash of its whole state machine (replicas at
    /// the same applied index have equal hashes). Reads the whole state: an audit tool,
    /// not a hot path.
    fn state_hash(&self) -> impl Future<Output = Result<StateHash, ClusterError>> + Send;

    /// Extra Prometheus text (Raft gauges) appended to the API's own metrics.
    fn metrics_text(&self) -> String {
        String::new()
    }
}
