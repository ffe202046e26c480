//! What nodes send each other besides Raft messages, and the one codec for all of it.
//!
//! Everything on the internal transport is bincode (the same configuration raft-store
//! persists with) inside a protobuf `Envelope`.

use std::collections::BTreeSet;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stockade_api::ClusterError;
use stockade_raft_store::{Command, NodeAddr, Response, TypeConfig};

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}

/// A request a follower hands to the leader.
#[derive(Serialize, Deserialize, Debug)]
pub enum ForwardRequest {
    Propose(Command),
    AddLearner {
        node_id: u64,
        addr: NodeAddr,
    },
    ChangeMembership {
        voters: BTreeSet<u64>,
        retain: bool,
    },
    TransferLeader {
        to: u64,
    },
    /// A linearizable read index: the leader confirms its leadership and answers the
    /// index a follower must have applied before it reads. New variants go last: bincode
    /// numbers them.
    ReadIndex,
}

#[derive(Serialize, Deserialize, Debug)]
pub enum ForwardResponse {
    Proposed(Response),
    Done,
    ReadIndex(u64),
}

/// One message of a follower's forward stream (`crate::forward`): proposals, each with a
/// tag the follower chose, so that answers, which come back as commands commit, find
/// their callers.
pub type ForwardFrame = Vec<(u64, Command)>;

/// One message back on a forward stream: the node that served the commands, and answers
/// by tag (as a lost leadership crosses the wire: `NoLeader`, retried by the follower).
#[derive(Serialize, Deserialize, Debug)]
pub struct AnswerFrame {
    pub served_by: u64,
    pub answers: Vec<(u64, Result<Response, WireError>)>,
}

/// `ClusterError` as it crosses the wire (the API crate's type has no serde on purpose).
#[derive(Serialize, Deserialize, Debug)]
pub enum WireError {
    NoLeader { retry_after_ms: u64 },
    Overloaded { retry_after_ms: u64 },
    Unknown(String),
    NotFound(String),
    Refused(String),
    Internal(String),
}

impl From<ClusterError> for WireError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NoLeader { retry_after_ms } => WireError::NoLeader { retry_after_ms },
            ClusterError::Overloaded { retry_after_ms } => WireError::Overloaded { retry_after_ms },
            ClusterError::Unknown(s) => WireError::Unknown(s),
            ClusterError::NotFound(s) => WireError::NotFound(s),
            ClusterError::Refused(s) => WireError::Refused(s),
            ClusterError::Internal(s) => WireError::Internal(s),
        }
    }
}

impl From<WireError> for ClusterError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NoLeader { retry_after_ms } => ClusterError::NoLeader { retry_after_ms },
            WireError::Overloaded { retry_after_ms } => ClusterError::Overloaded { retry_after_ms },
            WireError::Unknown(s) => ClusterError::Unknown(s),
            WireError::NotFound(s) => ClusterError::NotFound(s),
            WireError::Refused(s) => ClusterError::Refused(s),
            WireError::Internal(s) => ClusterError::Internal(s),
        }
    }
}

/// The leader's answer: the response and the id of the node that produced it.
pub type ForwardResult = Result<(ForwardResponse, u64), WireError>;

/// A call on a lane (`crate::lane`): a small request that used to open an HTTP/2 stream
/// of its own. New variants go last: bincode numbers them.
#[derive(Serialize, Deserialize, Debug)]
pub enum LaneRequest {
    /// One AppendEntries that is a whole replication call by itself (openraft's
    /// heartbeats, and the single-request probes that sync a commit index), leader to
    /// follower. Answered by `Raft::append_entries`.
    Append(AppendEntriesRequest<TypeConfig>),
    /// A read index, follower to leader: answered from a read-index round of the
    /// leader's own `ReadIndexGate` that started after the request arrived.
    ReadIndex,
}

/// The answer to a [`LaneRequest`], variant for variant.
#[derive(Serialize, Deserialize, Debug)]
pub enum LaneAnswer {
    /// `Err` is a fault on the follower (shutting down, storage), as on `StreamAppend`.
    Append(Result<AppendEntriesResponse<TypeConfig>, String>),
    /// The confirmed read index, or why there is none (`NoLeader` when the node asked no
    /// longer leads: the follower retries on whoever does).
    ReadIndex(Result<u64, WireError>),
}

/// One message of a lane, either way: the caller's tag and the request or its answer.
pub type LaneFrame<T> = (u64, T);
