//! Latency histograms of the write path's stages, for `/metrics`.
//!
//! A request's latency at the API is the sum of stages that each run somewhere else: on a
//! follower the forward round trip to the leader; on the leader the wait for a free
//! pipeline slot, then the Raft round of its entry (log append and WAL fsync on the
//! leader and a majority, replication, commit, apply). The API's own histogram
//! (`stockade_api_request_duration_seconds`) says how long requests took; these say
//! where that time went, so a p99 that moves can be traced to the stage that moved it
//! (a slow fsync, a long apply, a queue behind full slots) without a profiler.
//!
//! Every stage is observed once per batch, never per request (an entry carries up to
//! `--batch-max` commands, a forward RPC up to `--forward-batch-max`): the cost is one
//! clock read and one histogram update per fsync, apply call, entry or forward RPC, plus
//! one clock read per proposal queued (its `queued_at`, for the two queue waits).

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Upper bound of the first bucket, seconds: a WAL fsync on a fast disk.
pub const STAGE_BUCKET_FIRST_S: f64 = 25e-6;
/// Buckets per histogram, each twice the last: 25 µs … 819 ms, then `+Inf`.
pub const STAGE_BUCKETS: u16 = 16;

/// A histogram for one stage of the write path (seconds, [`STAGE_BUCKETS`] doubling
/// buckets from [`STAGE_BUCKET_FIRST_S`]). Clones share their counts.
pub fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        STAGE_BUCKET_FIRST_S,
        2.0,
        STAGE_BUCKETS,
    ))
}
