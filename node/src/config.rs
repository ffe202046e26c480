//! Command-line flags (each also an environment variable `STOCKADE_…`), validated into
//! one [`Config`] that is passed down; nothing reads flags or the environment later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use stockade_raft_store::limits::{APPLY_INLINE_COMMANDS_MAX, BATCH_COMMANDS_MAX};

/// Most entries (`--inflight-entries-max`) or forward batches (`--forward-inflight-max`) a
/// node may have in flight at once: each is a batch of up to `BATCH_COMMANDS_MAX`
/// commands held in memory until answered, and the defaults are 8 and 16.
pub const INFLIGHT_LIMIT: usize = 1_024;
/// Most runtime worker threads a node may be given (`--worker-threads`).
pub const WORKER_THREADS_MAX: usize = 256;
use stockade_raft_store::NodeAddr;
use stockade_raft_store::{BuildPriority, CompactionPriority, SnapshotSlots};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "stockade",
    version,
    about = "A flash-sale inventory node. With no arguments: a single-node cluster in ./stockade-data, \
             HTTP on 127.0.0.1:8080 and gRPC on 127.0.0.1:50051.",
    after_help = "Examples:\n  \
        stockade\n  \
        stockade --node-id 1 --data-dir /var/lib/stockade/1 --http-listen 0.0.0.0:8080 --grpc-listen 0.0.0.0:50051 \\\n    \
        --http-advertise 10.0.0.1:8080 --grpc-advertise 10.0.0.1:50051 \\\n    \
        --peers 1=10.0.0.1:50051/10.0.0.1:8080,2=10.0.0.2:50051/10.0.0.2:8080,3=10.0.0.3:50051/10.0.0.3:8080"
)]
pub struct Args {
    /// This node's id (unique in the cluster, > 0).
    #[arg(long, env = "STOCKADE_NODE_ID", default_value_t = 1)]
    pub node_id: u64,
    /// Where the RocksDB store and snapshots live.
    #[arg(long, env = "STOCKADE_DATA_DIR", default_value = "stockade-data")]
    pub data_dir: PathBuf,
    /// HTTP API (client, admin, metrics) listen address.
    #[arg(long, env = "STOCKADE_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// gRPC (client API, admin API and Raft transport) listen address.
    #[arg(long, env = "STOCKADE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// HTTP address other nodes and clients use to reach this node (default: the bound listen address).
    #[arg(long, env = "STOCKADE_HTTP_ADVERTISE")]
    pub http_advertise: Option<String>,
    /// gRPC address other nodes use to reach this node (default: the bound listen address).
    #[arg(long, env = "STOCKADE_GRPC_ADVERTISE")]
    pub grpc_advertise: Option<String>,
    /// The initial cluster, `ID=GRPC_ADDR/HTTP_ADDR,...`, including this node. Empty: a
    /// single-node cluster of this node.
    #[arg(long, env = "STOCKADE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Whether this node initializes the cluster: `auto` = when its store is empty and it
    /// has the lowest id of `--peers` (or there are no peers); `never` = wait to be added
    /// (admin API `add-learner`).
    #[arg(long, env = "STOCKADE_INIT", value_enum, default_value_t = InitMode::Auto)]
    pub init: InitMode,
    #[arg(long, env = "STOCKADE_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    #[arg(long, env = "STOCKADE_ELECTION_MIN_MS", default_value_t = 400)]
    pub election_min_ms: u64,
    #[arg(long, env = "STOCKADE_ELECTION_MAX_MS", default_value_t = 800)]
    pub election_max_ms: u64,
    /// Build a snapshot at least this many entries after the last one, once the state
    /// machine has written half the last snapshot's size since it
    /// (`SNAPSHOT_REWRITE_DIVISOR`) and, for a snapshot of 8 MiB or more, in this node's
    /// slot: the log is cut into slots of this many entries, taken in turn by the voters
    /// in id order, so that the voters start rewriting their state in turn, not all at
    /// once (a build longer than a slot can still overlap the next; `SnapshotSlots`).
    /// openraft asks every quarter of this (`SNAPSHOT_TURNS_PER_SLOT`).
    #[arg(
        long,
        env = "STOCKADE_SNAPSHOT_EVERY_ENTRIES",
        default_value_t = 20_000
    )]
    pub snapshot_every_entries: u64,
    /// CPU priority of the thread that writes a snapshot: `idle` (Linux SCHED_IDLE: only
    /// CPU time nothing else wants), `low` (nice 19), `normal` (the node's own). Under a
    /// load that keeps every core busy, `idle` builds slowest.
    #[arg(
        long,
        env = "STOCKADE_SNAPSHOT_BUILD_PRIORITY",
        value_enum,
        default_value_t = BuildPriorityArg::Idle
    )]
    pub snapshot_build_priority: BuildPriorityArg,
    /// CPU priority of RocksDB's compaction threads: `low` (nice 19: compactions take
    /// what requests leave) or `normal` (the node's own). Flushes keep the node's own.
    /// Process-wide: every RocksDB database the process opens shares these threads.
    #[arg(
        long,
        env = "STOCKADE_COMPACTION_PRIORITY",
        value_enum,
        default_value_t = CompactionPriorityArg::Low
    )]
    pub compaction_priority: CompactionPriorityArg,
    /// Apply calls of at most this many commands run on the runtime's worker; larger
    /// ones (a follower catching up) on the blocking pool. 0 = always on the pool. A
    /// `Tick` counts for the deadlines the last Tick on this node handled. The
    /// hand-off to a pool thread and back cost more CPU than a small apply itself
    /// (docs/benchmarks.md, "Twenty-fourth session"); a large one on the worker holds up
    /// every request behind it ("Thirtieth session").
    #[arg(long, env = "STOCKADE_APPLY_INLINE_MAX", default_value_t = APPLY_INLINE_COMMANDS_MAX)]
    pub apply_inline_max: usize,
    /// Log entries kept behind a snapshot (so slightly lagging followers need no snapshot).
    #[arg(long, env = "STOCKADE_LOG_KEEP_ENTRIES", default_value_t = 5_000)]
    pub log_keep_entries: u64,
    /// Commands per log entry in group commit (1 = off).
    #[arg(long, env = "STOCKADE_BATCH_MAX", default_value_t = 256)]
    pub batch_max: usize,
    /// Microseconds the first command of a batch may wait for company.
    #[arg(long, env = "STOCKADE_BATCH_LINGER_US", default_value_t = 0)]
    pub batch_linger_us: u64,
    /// Proposals queued on the leader before requests get 429.
    #[arg(long, env = "STOCKADE_PROPOSE_QUEUE_MAX", default_value_t = 16_384)]
    pub propose_queue_max: usize,
    /// Log entries proposed and not yet answered. Proposals that arrive while every slot
    /// is busy wait and share the next entry, so fewer slots mean fewer, larger entries
    /// (each entry costs an append and an apply call on every node and a replication
    /// message to each follower). 8 rather than 64 since 2026-11-21: with the seeds'
    /// reserve, checkout and pay at 256 clients it cut log entries 5x and lowered node
    /// CPU per request and p99 in every measured pair (docs/benchmarks.md, "Fifth
    /// session"); 8 entries of up to `--batch-max` commands still keep replication
    /// pipelined.
    #[arg(long, env = "STOCKADE_INFLIGHT_ENTRIES_MAX", default_value_t = 8)]
    pub inflight_entries_max: usize,
    /// Proposals a follower sends the leader in one forward batch, one message on its
    /// forward stream (1 = one message each).
    #[arg(long, env = "STOCKADE_FORWARD_BATCH_MAX", default_value_t = crate::coalesce::FORWARD_BATCH_MAX)]
    pub forward_batch_max: usize,
    /// Forward batches a follower has in flight to the leader at once (a batch holds its
    /// slot until its last command is answered); proposals queue for a free slot and the
    /// next batch takes all queued (`stockade_forward_wait_seconds`).
    #[arg(long, env = "STOCKADE_FORWARD_INFLIGHT_MAX", default_value_t = crate::coalesce::FORWARD_INFLIGHT_MAX)]
    pub forward_inflight_max: usize,
    #[arg(long, env = "STOCKADE_PROPOSE_TIMEOUT_MS", default_value_t = 5_000)]
    pub propose_timeout_ms: u64,
    #[arg(long, env = "STOCKADE_FORWARD_TIMEOUT_MS", default_value_t = 6_000)]
    pub forward_timeout_ms: u64,
    #[arg(long, env = "STOCKADE_READ_TIMEOUT_MS", default_value_t = 3_000)]
    pub read_timeout_ms: u64,
    /// How linearizable reads confirm leadership.
    #[arg(long, env = "STOCKADE_READ_POLICY", value_enum, default_value_t = ReadPolicyArg::ReadIndex)]
    pub read_policy: ReadPolicyArg,
    /// Refuse a reservation the client marks `first_attempt` from a linearizable read,
    /// without a log entry, when the sale cannot serve it (sold out, ended, ...): about
    /// twice the refusals per second after sell-out. Retries and unmarked requests always
    /// go through the log, where their answers are recorded (see `api/src/core.rs`,
    /// `fast_reject`). `--refusals-from-reads false` sends every reservation through the
    /// log.
    #[arg(
        long,
        env = "STOCKADE_REFUSALS_FROM_READS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub refusals_from_reads: bool,
    /// Added to this node's wall clock when it stamps entries (fault injection only).
    #[arg(
        long,
        env = "STOCKADE_CLOCK_SKEW_MS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub clock_skew_ms: i64,
    #[arg(long, env = "STOCKADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Worker threads of the node's async runtime (requests, forwarding, replication,
    /// Raft; RocksDB calls run on other threads). Absent: one per CPU core, tokio's
    /// default (which `TOKIO_WORKER_THREADS` also sets), right for a node with a machine
    /// of its own. Where several nodes share a machine's cores, fewer workers each wake
    /// and switch less: three nodes on two cores with one worker each used 12–26% less
    /// CPU per request than with two, in every measured pair (docs/benchmarks.md,
    /// "Twenty-third session").
    #[arg(long, env = "STOCKADE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitMode {
    Auto,
    Never,
}

/// `--snapshot-build-priority` (see `stockade_raft_store::BuildPriority`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildPriorityArg {
    Idle,
    Low,
    Normal,
}

/// `--compaction-priority` (see `stockade_raft_store::CompactionPriority`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionPriorityArg {
    Low,
    Normal,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicyArg {
    ReadIndex,
    Lease,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of a node.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub http_advertise: Option<String>,
    pub grpc_advertise: Option<String>,
    /// The initial cluster (empty: just this node).
    pub peers: BTreeMap<u64, NodeAddr>,
    pub init: InitMode,
    pub raft: openraft::Config,
    pub batch: crate::batcher::BatchConfig,
    pub propose_queue_max: usize,
    pub forward_batch_max: usize,
    pub forward_inflight_max: usize,
    pub propose_timeout: Duration,
    pub forward_timeout: Duration,
    pub read_timeout: Duration,
    pub read_policy: openraft::ReadPolicy,
    pub refusals_from_reads: bool,
    pub clock_skew_ms: i64,
    pub snapshot_build_priority: BuildPriority,
    pub compaction_priority: CompactionPriority,
    /// `--apply-inline-max` (`StoreOptions::apply_inline_commands_max`).
    pub apply_inline_max: usize,
    /// `--snapshot-every-entries`: the snapshot slots' width (`SnapshotSlots`).
    pub snapshot_every_entries: u64,
    pub log_format: LogFormat,
    /// Runtime worker threads; `None`: one per CPU core.
    pub worker_threads: Option<usize>,
}

/// Why a configuration is refused (printed as one line; exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--node-id must be greater than 0")]
    NodeIdZero,
    #[error("--peers entry {0:?} is not ID=GRPC_ADDR/HTTP_ADDR")]
    BadPeer(String),
    #[error("--peers lists node {0} twice")]
    DuplicatePeer(u64),
    #[error("--peers does not include this node ({0})")]
    SelfNotInPeers(u64),
    #[error("--batch-max must be 1..={max}", max = BATCH_COMMANDS_MAX)]
    BatchMax,
    #[error("--forward-batch-max must be 1..={max}", max = BATCH_COMMANDS_MAX)]
    ForwardBatchMax,
    #[error("--apply-inline-max must be 0..={max}", max = BATCH_COMMANDS_MAX)]
    ApplyInlineMax,
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    #[error("{0} must be at most {max}", max = INFLIGHT_LIMIT)]
    InflightAbove(&'static str),
    #[error("--worker-threads must be 1..={max}", max = WORKER_THREADS_MAX)]
    WorkerThreads,
    #[error("invalid Raft timing: {0}")]
    Raft(String),
}

impl Args {
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::NodeIdZero);
        }
        let mut peers = BTreeMap::new();
        for p in self.peers.iter().filter(|p| !p.trim().is_empty()) {
            let (id, addrs) = p
                .split_once('=')
                .ok_or_else(|| ConfigError::BadPeer(p.clone()))?;
            let (grpc, http) = addrs
                .split_once('/')
                .ok_or_else(|| ConfigError::BadPeer(p.clone()))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| ConfigError::BadPeer(p.clone()))?;
            if id == 0 || grpc.trim().is_empty() || http.trim().is_empty() {
                return Err(ConfigError::BadPeer(p.clone()));
            }
            let addr = NodeAddr {
                raft_addr: grpc.trim().to_string(),
                api_addr: http.trim().to_string(),
            };
            if peers.insert(id, addr).is_some() {
                return Err(ConfigError::DuplicatePeer(id));
            }
        }
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(ConfigError::SelfNotInPeers(self.node_id));
        }
        if self.batch_max == 0 || self.batch_max > BATCH_COMMANDS_MAX {
            return Err(ConfigError::BatchMax);
        }
        if self.forward_batch_max == 0 || self.forward_batch_max > BATCH_COMMANDS_MAX {
            return Err(ConfigError::ForwardBatchMax);
        }
        // Larger would let one apply call hold a runtime worker for longer than a full
        // entry's worth of commands (see `APPLY_INLINE_COMMANDS_MAX`).
        if self.apply_inline_max > BATCH_COMMANDS_MAX {
            return Err(ConfigError::ApplyInlineMax);
        }
        for (name, v) in [
            ("--inflight-entries-max", self.inflight_entries_max),
            ("--forward-inflight-max", self.forward_inflight_max),
        ] {
            if v > INFLIGHT_LIMIT {
                return Err(ConfigError::InflightAbove(name));
            }
        }
        for (name, v) in [
            ("--propose-queue-max", self.propose_queue_max as u64),
            ("--inflight-entries-max", self.inflight_entries_max as u64),
            ("--forward-inflight-max", self.forward_inflight_max as u64),
            ("--propose-timeout-ms", self.propose_timeout_ms),
            ("--forward-timeout-ms", self.forward_timeout_ms),
            ("--read-timeout-ms", self.read_timeout_ms),
            ("--snapshot-every-entries", self.snapshot_every_entries),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if matches!(self.worker_threads, Some(n) if n == 0 || n > WORKER_THREADS_MAX) {
            return Err(ConfigError::WorkerThreads);
        }
        let raft = openraft::Config {
            cluster_name: "stockade".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                SnapshotSlots::policy_entries(self.snapshot_every_entries),
            ),
            max_in_snapshot_log_to_keep: self.log_keep_entries,
            install_snapshot_timeout: 30_000,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConfigError::Raft(e.to_string()))?;
        Ok(Config {
            node_id: self.node_id,
            data_dir: self.data_dir,
            http_listen: self.http_listen,
            grpc_listen: self.grpc_listen,
            http_advertise: self.http_advertise,
            grpc_advertise: self.grpc_advertise,
            peers,
            init: self.init,
            raft,
            batch: crate::batcher::BatchConfig {
                batch_max: self.batch_max,
                linger: Duration::from_micros(self.batch_linger_us),
                inflight_max: self.inflight_entries_max,
            },
            propose_queue_max: self.propose_queue_max,
            forward_batch_max: self.forward_batch_max,
            forward_inflight_max: self.forward_inflight_max,
            propose_timeout: Duration::from_millis(self.propose_timeout_ms),
            forward_timeout: Duration::from_millis(self.forward_timeout_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            read_policy: match self.read_policy {
                ReadPolicyArg::ReadIndex => openraft::ReadPolicy::ReadIndex,
                ReadPolicyArg::Lease => openraft::ReadPolicy::LeaseRead,
            },
            refusals_from_reads: self.refusals_from_reads,
            clock_skew_ms: self.clock_skew_ms,
            snapshot_build_priority: match self.snapshot_build_priority {
                BuildPriorityArg::Idle => BuildPriority::Idle,
                BuildPriorityArg::Low => BuildPriority::Low,
                BuildPriorityArg::Normal => BuildPriority::Normal,
            },
            compaction_priority: match self.compaction_priority {
                CompactionPriorityArg::Low => CompactionPriority::Low,
                CompactionPriorityArg::Normal => CompactionPriority::Normal,
            },
            apply_inline_max: self.apply_inline_max,
            snapshot_every_entries: self.snapshot_every_entries,
            log_format: self.log_format,
            worker_threads: self.worker_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["stockade"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)
            .map_err(|e| ConfigError::Raft(e.to_string()))?
            .validate()
    }

    #[test]
    fn defaults_are_a_single_local_node() -> Result<(), ConfigError> {
        let c = parse(&[])?;
        assert_eq!(c.node_id, 1);
        assert!(c.peers.is_empty());
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:50051");
        assert!(c.refusals_from_reads, "on unless turned off");
        assert_eq!(c.snapshot_build_priority, BuildPriority::Idle);
        let low = parse(&["--snapshot-build-priority", "low"])?;
        assert_eq!(low.snapshot_build_priority, BuildPriority::Low);
        assert_eq!(c.compaction_priority, CompactionPriority::Low);
        let normal = parse(&["--compaction-priority", "normal"])?;
        assert_eq!(normal.compaction_priority, CompactionPriority::Normal);
        assert_eq!(c.worker_threads, None, "one per core unless set");
        assert_eq!(parse(&["--worker-threads", "1"])?.worker_threads, Some(1));
        assert_eq!(c.apply_inline_max, APPLY_INLINE_COMMANDS_MAX);
        assert_eq!(parse(&["--apply-inline-max", "0"])?.apply_inline_max, 0);
        Ok(())
    }

    #[test]
    fn refusals_from_reads_can_be_turned_off_and_on() -> Result<(), ConfigError> {
        assert!(!parse(&["--refusals-from-reads", "false"])?.refusals_from_reads);
        assert!(!parse(&["--refusals-from-reads=false"])?.refusals_from_reads);
        assert!(parse(&["--refusals-from-reads"])?.refusals_from_reads);
        assert!(parse(&["--refusals-from-reads", "true"])?.refusals_from_reads);
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let bad = |args: &[&str], want: &str| {
            let err = parse(args).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains(want),
                "{args:?}: {err:?} does not mention {want:?}"
            );
        };
        bad(&["--node-id", "0"], "greater than 0");
        bad(&["--peers", "1=a:1"], "ID=GRPC_ADDR/HTTP_ADDR");
        bad(&["--peers", "1=a:1/b:2,1=c:1/d:2"], "twice");
        bad(
            &["--node-id", "4", "--peers", "1=a:1/b:2"],
            "does not include",
        );
        bad(&["--batch-max", "0"], "--batch-max");
        bad(&["--forward-batch-max", "0"], "--forward-batch-max");
        bad(&["--forward-batch-max", "5000"], "--forward-batch-max");
        bad(&["--inflight-entries-max", "0"], "--inflight-entries-max");
        bad(&["--forward-inflight-max", "0"], "--forward-inflight-max");
        bad(&["--forward-inflight-max", "1025"], "at most 1024");
        bad(
            &["--inflight-entries-max", "4611686018427387904"],
            "at most 1024",
        );
        bad(
            &["--snapshot-build-priority", "19"],
            "--snapshot-build-priority",
        );
        bad(&["--compaction-priority", "idle"], "--compaction-priority");
        bad(
            &["--worker-threads", "0"],
            "--worker-threads must be 1..=256",
        );
        bad(
            &["--worker-threads", "257"],
            "--worker-threads must be 1..=256",
        );
        bad(&["--worker-threads", "many"], "--worker-threads");
        bad(
            &["--apply-inline-max", "1025"],
            "--apply-inline-max must be 0..=1024",
        );
        bad(&["--apply-inline-max", "some"], "--apply-inline-max");
        bad(
            &["--election-min-ms", "50", "--heartbeat-ms", "100"],
            "Raft timing",
        );
    }
}
