//! Integration tests of the raft-store crate, in one binary (one link of RocksDB).

mod common;
mod compaction;
mod conformance;
mod crash;
mod golden;
mod log_cache;
mod model;
mod queries;
mod schema;
mod snapshot;
