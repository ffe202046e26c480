//! Raft and write-path gauges in the Prometheus text format, appended to the API's own
//! metrics at `/metrics`. Values are read at scrape time from openraft's metrics, so
//! there is nothing to keep in sync.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::registry::Registry;

use crate::cluster::NodeCluster;

fn gauge<V: std::fmt::Display>(out: &mut String, name: &str, help: &str, samples: &[(String, V)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}"
    );
}

pub fn render(c: &NodeCluster) -> String {
    let m = c.raft.metrics().borrow_watched().clone();
    let mut out = String::new();
    let one = |v: u64| vec![(String::new(), v)];
    gauge(
        &mut out,
        "stockade_raft_term",
        "Current Raft term.",
        &one(m.current_term),
    );
    gauge(
        &mut out,
        "stockade_raft_is_leader",
        "1 if this node is the leader.",
        &one(u64::from(c.raft.is_leader())),
    );
    gauge(
        &mut out,
        "stockade_raft_leader_id",
        "Known leader id (0 = none).",
        &one(m.current_leader.unwrap_or(0)),
    );
    let last = m.last_log_index.unwrap_or(0);
    gauge(
        &mut out,
        "stockade_raft_last_log_index",
        "Last log index on this node.",
        &one(last),
    );
    gauge(
        &mut out,
        "stockade_raft_commit_index",
        "Committed index known to this node.",
        &one(m.local_committed.map_or(0, |l| l.index)),
    );
    gauge(
        &mut out,
        "stockade_raft_applied_index",
        "Last applied index.",
        &one(m.last_applied.map_or(0, |l| l.index)),
    );
    gauge(
        &mut out,
        "stockade_raft_snapshot_index",
        "Index of the last snapshot.",
        &one(m.snapshot.map_or(0, |l| l.index)),
    );
    if let Some(rep) = &m.replication {
        let lag: Vec<(String, u64)> = rep
            .iter()
            .filter(|(id, _)| **id != c.id)
            .map(|(id, matched)| {
                (
                    format!("follower=\"{id}\""),
                    last.saturating_sub(matched.as_ref().map_or(0, |l| l.index)),
                )
            })
            .collect();
        gauge(
            &mut out,
            "stockade_raft_replication_lag_entries",
            "Entries a follower is behind (leader only).",
            &lag,
        );
    }
    counter(
        &mut out,
        "stockade_proposals",
        "Commands proposed on this node as leader.",
        c.stats.proposals.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_log_entries_proposed",
        "Log entries proposed (a batch is one entry).",
        c.stats.entries.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_forwarded_requests",
        "Requests forwarded to the leader: proposal batches (one forward-stream frame each), read indexes, operator calls.",
        c.stats.forwarded.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_forward_streams_opened",
        "Forward streams opened to a leader (one per leader, again after one ended).",
        c.stats.forward_streams.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_forwarded_commands",
        "Proposals forwarded to the leader in batches.",
        c.stats.forwarded_commands.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_linearizable_reads",
        "Linearizable reads served on this node.",
        c.stats.linearizable_reads.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "stockade_read_index_rounds",
        "Read-index rounds run for them (reads share rounds).",
        c.stats.read_rounds.load(Ordering::Relaxed),
    );
    let t = c.pool.stats();
    for (name, help, v) in [
        (
            "stockade_raft_append_streams_opened",
            "Replication streams (StreamAppend) opened as leader (heartbeats go on peer lanes).",
            &t.append_streams_opened,
        ),
        (
            "stockade_raft_appends_sent",
            "AppendEntries sent on replication streams as leader.",
            &t.appends_sent,
        ),
        (
            "stockade_raft_appends_received_streamed",
            "AppendEntries received on replication streams as follower.",
            &t.appends_received_streamed,
        ),
        (
            "stockade_raft_appends_received_unary",
            "AppendEntries received as unary calls as follower.",
            &t.appends_received_unary,
        ),
        (
            "stockade_peer_lanes_opened",
            "Peer lanes (one stream to each peer for heartbeats and read indexes) this node opened.",
            &t.lanes_opened,
        ),
        (
            "stockade_peer_lane_calls_sent",
            "Calls this node sent on peer lanes: heartbeats and other single AppendEntries as leader, read indexes as follower.",
            &t.lane_calls_sent,
        ),
        (
            "stockade_peer_lane_calls_received",
            "Calls this node served on its peers' lanes.",
            &t.lane_calls_received,
        ),
        (
            "stockade_peer_lane_stalls",
            "Peer lanes closed because a call went unanswered for its timeout.",
            &t.lane_stalls,
        ),
        (
            "stockade_raft_append_streams_stalled",
            "Replication streams failed because a request went unanswered for a heartbeat interval.",
            &t.append_streams_stalled,
        ),
    ] {
        counter(&mut out, name, help, v.load(Ordering::Relaxed));
    }
    counter(
        &mut out,
        "stockade_wal_syncs",
        "WAL fsyncs for log appends.",
        c.log.wal_syncs(),
    );
    let _ = writeln!(
        out,
        "# HELP stockade_wal_sync_seconds Time spent in those fsyncs (over stockade_wal_syncs_total: the mean).\n\
         # TYPE stockade_wal_sync_seconds counter\nstockade_wal_sync_seconds_total {}",
        c.log.wal_sync_micros() as f64 / 1e6
    );
    counter(
        &mut out,
        "stockade_wal_syncs_slow",
        "WAL fsyncs that took 100 ms or longer (each is also logged as `slow WAL sync`).",
        c.log.wal_syncs_slow(),
    );
    let (inline, pooled) = c.sm.apply_calls();
    let _ = writeln!(
        out,
        "# HELP stockade_apply_calls State-machine apply calls, by where they ran (--apply-inline-max).\n\
         # TYPE stockade_apply_calls counter\n\
         stockade_apply_calls_total{{on=\"worker\"}} {inline}\n\
         stockade_apply_calls_total{{on=\"blocking_pool\"}} {pooled}"
    );
    let mem = c.sm.db_memory();
    let health = c.sm.compaction_health();
    for (name, help, v) in [
        (
            "stockade_rocksdb_memtable_bytes",
            "RocksDB memtables of every column family, bytes.",
            mem.memtables,
        ),
        (
            "stockade_rocksdb_block_cache_bytes",
            "RocksDB block cache in use, bytes (bounded by its capacity, 128 MiB).",
            mem.block_cache,
        ),
        (
            "stockade_rocksdb_table_readers_bytes",
            "RocksDB index and filter blocks held outside the block cache, bytes.",
            mem.table_readers,
        ),
        (
            "stockade_process_resident_bytes",
            "Resident memory of this process, bytes (Linux /proc/self/status; 0 elsewhere).",
            resident_bytes(),
        ),
        (
            "stockade_rocksdb_l0_files",
            "Table files in level 0 of the state machine (RocksDB slows writes at 20, stops them at 36).",
            health.l0_files,
        ),
        (
            "stockade_rocksdb_compaction_pending_bytes",
            "Bytes RocksDB estimates its compactions must rewrite to catch up (state machine).",
            health.pending_bytes,
        ),
        (
            "stockade_rocksdb_delayed_write_rate",
            "Bytes/s RocksDB holds writes to while it delays them (0: not delayed).",
            health.delayed_write_rate,
        ),
        (
            "stockade_rocksdb_write_stopped",
            "1 while RocksDB has stopped writes (compactions or flushes far behind).",
            u64::from(health.write_stopped),
        ),
    ] {
        gauge(&mut out, name, help, &one(v));
    }
    let lag_s = c.stats.deadline_lag_ms.load(Ordering::Relaxed) as f64 / 1_000.0;
    gauge(
        &mut out,
        "stockade_deadline_lag_seconds",
        "Leader: how late the earliest due deadline (hold expiry, payment timeout, record purge) was at the ticker's last look; 0 when none was due, and on followers.",
        &[(String::new(), lag_s)],
    );
    stages(&mut out, c);
    out
}

/// The write path's stage histograms (`stockade_raft_store::timing`): where a request's
/// time went on this node.
fn stages(out: &mut String, c: &NodeCluster) {
    let mut reg = Registry::with_prefix("stockade");
    for (name, help, h) in [
        (
            "wal_sync_duration_seconds",
            "Each WAL fsync for log appends (one covers every append queued behind it).",
            c.log.wal_sync_histogram(),
        ),
        (
            "apply_duration_seconds",
            "Each state-machine apply call: the machine, one RocksDB write (and, on the blocking pool, the wait for a thread).",
            c.sm.apply_histogram(),
        ),
        (
            "batch_wait_seconds",
            "Leader: per entry proposed, how long its oldest proposal waited for a free pipeline slot.",
            c.stats.batch_wait.clone(),
        ),
        (
            "raft_round_duration_seconds",
            "Leader: per entry proposed, from handing it to Raft to its answer (append, fsync on a majority, replication, commit, apply).",
            c.stats.raft_round.clone(),
        ),
        (
            "forward_wait_seconds",
            "Follower: per batch forwarded, how long its oldest proposal waited for a free forward slot.",
            c.stats.forward_wait.clone(),
        ),
        (
            "forward_duration_seconds",
            "Follower: per request forwarded, its round trip (a proposal batch: until its last answer).",
            c.stats.forward_round.clone(),
        ),
        (
            "tick_expirations",
            "Leader: per Tick, the holds and orders it expired plus the idempotency records it purged.",
            c.stats.tick_expirations.clone(),
        ),
    ] {
        reg.register(name, help, h);
    }
    // Encoding into a String fails only through a bug in a label encoder; these have none.
    let _ = encode_registry(out, &reg);
}

/// `VmRSS` of this process in bytes, or 0 where `/proc` is missing.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
