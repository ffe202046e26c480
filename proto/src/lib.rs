//! Stockade's protobuf definitions and generated tonic code.
//!
//! - [`v1`]: the public API, `stockade.v1.Stockade` (clients) and `stockade.v1.Admin`
//!   (operators).
//! - [`raft`]: the internal node-to-node transport (bincode envelopes).
//! - [`FILE_DESCRIPTOR_SET`]: for gRPC server reflection.

#![allow(clippy::all, clippy::pedantic)] // generated code

pub mod v1 {
    tonic::include_proto!("stockade.v1");
}

pub mod raft {
    tonic::include_proto!("stockade.raft.v1");
}

/// The encoded descriptors of every service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stockade_descriptor");
