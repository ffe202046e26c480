//! Stockade's replicated inventory state machine and its openraft storage on RocksDB.
//!
//! This crate owns:
//! - the replicated vocabulary ([`types`]): `LogEntry { at_ms, cmd }`, `Command`,
//!   `Response`, `Reject` and the persisted records;
//! - the pure, deterministic apply ([`machine`]) and its input checks ([`validate`]);
//! - the RocksDB schema ([`keys`]) and read-side views ([`query`]);
//! - openraft's `RaftLogStorage` and `RaftStateMachine` on one RocksDB ([`store`]),
//!   snapshots included;
//! - the latency histograms of the write path's stages ([`timing`]).
//!
//! It knows nothing of networks, HTTP or gRPC, and never reads a clock inside apply:
//! time comes from the leader-stamped log entry.

pub mod codec;
pub mod error;
pub mod keys;
pub mod kv;
pub mod limits;
pub mod machine;
pub mod query;
pub mod store;
pub mod timing;
pub mod types;
pub mod validate;

pub use error::StoreError;
pub use store::{
    open, BuildPriority, Compaction, CompactionHealth, CompactionPriority, DbMemory, LogStore,
    RanAt, SnapshotSlots, StateMachineStore, StoreOptions, SCHEMA_VERSION,
};
pub use types::{Command, LogEntry, Reject, Response};

/// How a member of the cluster is reached: its Raft (gRPC) address and its HTTP address.
/// Stored in the membership config, so every node can forward to the leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeAddr {
    pub raft_addr: String,
    pub api_addr: String,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of Stockade.
    pub TypeConfig:
        D = LogEntry,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
