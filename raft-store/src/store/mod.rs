//! openraft storage on one RocksDB: the log, Raft metadata and the state machine are
//! three column families of one database. The log and the metadata are written through
//! the one WAL, in order (buffered in the process until the WAL-sync thread writes and
//! fsyncs it: `manual_wal_flush`, see `open_db` and `log.rs`); the state machine's apply
//! batches bypass it and are recovered after a crash from the newest snapshot and the
//! log (`sm.rs`).
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `log` | log index, u64 big-endian | bincode `Entry` |
//! | `raft` | `vote`, `committed`, `last_purged` | bincode openraft types |
//! | `raft` | `schema` | [`SCHEMA_VERSION`], u32 big-endian |
//! | `sm` | [`crate::keys`] schema | bincode records |

mod background;
mod log;
mod sm;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::background::{BuildPriority, RanAt};
pub use self::log::LogStore;
pub use self::sm::{hash_pairs, PacingView, SnapshotSlots, StateMachineStore};
use crate::error::StoreError;
use crate::kv::KvRead;
use crate::kv::Pair;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";

/// Where and how to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Holds `db/` (RocksDB) and `snapshots/`.
    pub dir: PathBuf,
    /// RocksDB block cache shared by all column families, bytes.
    pub block_cache_bytes: usize,
    /// CPU priority of the snapshot builder's thread (`BuildPriority::Idle` by default).
    pub snapshot_build_priority: BuildPriority,
    /// CPU priority of RocksDB's compaction threads (`CompactionPriority::Low` by default).
    pub compaction_priority: CompactionPriority,
    /// Apply calls of at most this many commands run on the async task, larger ones on
    /// the blocking pool (`limits::APPLY_INLINE_COMMANDS_MAX` by default; 0 = always on
    /// the pool; see `sm.rs`, "Where apply runs").
    pub apply_inline_commands_max: usize,
    /// Staggers policy-triggered snapshots across the voters (`SnapshotSlots`); `None`:
    /// every node builds as soon as one is due, as openraft's policy asks.
    pub snapshot_slots: Option<SnapshotSlots>,
}

/// The CPU priority of RocksDB's compaction threads (its `LOW` thread pool), which
/// merge table files in the background and, with the whole state in the bottom level,
/// rewrite all of it when enough new files have piled up above it: 168 MB on each of
/// the three nodes at once in `docs/benchmarks.md` (fifteenth session), during the
/// slowest open-loop round of that run. Flushes (RocksDB's `HIGH` pool) keep the node's
/// priority: a memtable that cannot be flushed stops writes within one more memtable.
///
/// Process-wide: RocksDB's default environment, and so its thread pools, is shared by
/// every database the process opens, and a lowered pool is never raised again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompactionPriority {
    /// Nice 19 (RocksDB's `CpuPriority::kLow`): compactions take what the request path
    /// leaves; a compaction that falls far behind slows writes through RocksDB's own
    /// level-0 triggers (20 files slow writes down, 36 stop them: with 64 MiB memtables,
    /// over a gigabyte of new state per node).
    #[default]
    Low,
    /// The node's own priority.
    Normal,
}

/// What a manual compaction of the state machine did
/// ([`StateMachineStore::compact_blocking`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// The state machine's table files before and after, bytes.
    pub sst_bytes_before: u64,
    pub sst_bytes_after: u64,
    /// How long it took, milliseconds.
    pub took_ms: u64,
}

impl StoreOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            dir: dir.into(),
            block_cache_bytes: 128 * 1024 * 1024,
            snapshot_build_priority: BuildPriority::default(),
            compaction_priority: CompactionPriority::default(),
            apply_inline_commands_max: crate::limits::APPLY_INLINE_COMMANDS_MAX,
            snapshot_slots: None,
        }
    }
}

/// Opens (or creates) the store under `opts.dir` and returns its two openraft halves.
/// Refuses a store recorded with another [`SCHEMA_VERSION`] ([`StoreError::Schema`]),
/// before reading anything else from it.
pub fn open(opts: &StoreOptions) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Arc::new(open_db(
        &opts.dir.join("db"),
        opts.block_cache_bytes,
        opts.compaction_priority,
    )?);
    check_schema(&db)?;
    let log = LogStore::new(db.clone())?;
    let sm = StateMachineStore::new(
        db,
        opts.dir.join("snapshots"),
        opts.snapshot_build_priority,
        opts.apply_inline_commands_max,
        opts.snapshot_slots,
    )?;
    Ok((log, sm))
}

/// The version of what this build persists in the store's database: the log's entry
/// encoding, the Raft metadata, and the state machine's key schema and records
/// ([`crate::keys`], [`crate::codec`]). [`open`] records it under `schema` in the `raft`
/// column family and refuses a store recorded with another version, so that a build never
/// misreads a store it does not know: a node rolled back after an upgrade that changed
/// what is persisted, or a data directory copied from a newer cluster, stops at start with
/// an error naming both versions, and its data stays as it was.
///
/// Bump it with any change to what is persisted that another build would misread, and
/// bump [`snapshot`]'s file format with it: snapshots (and backups, which are snapshot
/// files) carry the state machine's records, and a build refuses a snapshot format it
/// does not know. What this does not cover: log entries of a command kind an older
/// follower cannot decode reach it over the network before any store is opened (its
/// append fails and the leader retries), so an upgrade that adds commands must reach
/// every node before any node proposes them. Version 1 is the first; a store written
/// before this record existed has none and is version 1.
pub const SCHEMA_VERSION: u32 = 1;
/// Where [`SCHEMA_VERSION`] is recorded, in the `raft` column family.
const KEY_SCHEMA: &[u8] = b"schema";

/// Records [`SCHEMA_VERSION`] in a store that has no record yet (new, or written before
/// the record existed), or checks the one it has.
fn check_schema(db: &rocksdb::DB) -> Result<(), StoreError> {
    let raft = cf(db, CF_RAFT)?;
    let Some(bytes) = db.get_cf(raft, KEY_SCHEMA)? else {
        let mut wo = rocksdb::WriteOptions::default();
        // Synced like the vote: with `manual_wal_flush` a synced write flushes the
        // buffered WAL itself.
        wo.set_sync(true);
        db.put_cf_opt(raft, KEY_SCHEMA, SCHEMA_VERSION.to_be_bytes(), &wo)?;
        return Ok(());
    };
    let found = <[u8; 4]>::try_from(bytes.as_slice())
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: "raft/schema".into(),
            reason: format!("{} bytes, want 4", bytes.len()),
        })?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Most bytes of write-ahead log kept on disk: past it, RocksDB flushes the column families
/// that still pin the oldest log file. Without it the small `raft` column family (vote,
/// commit index), whose memtable rarely fills, kept every WAL file since its oldest write,
/// up to RocksDB's default of four times all write buffers (1.7 GiB of WAL was seen on a
/// node after a million orders, beside 290 MiB of tables).
const WAL_TOTAL_BYTES_MAX: u64 = 256 * 1024 * 1024;

fn open_db(
    path: &Path,
    block_cache_bytes: usize,
    compaction_priority: CompactionPriority,
) -> Result<rocksdb::DB, StoreError> {
    let mut db_opts = rocksdb::Options::default();
    if compaction_priority == CompactionPriority::Low {
        let mut env = rocksdb::Env::new()?;
        // The pool's threads take the new priority when they next pick up a job.
        env.lower_thread_pool_cpu_priority();
        db_opts.set_env(&env);
    }
    db_opts.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Sync writes fsync the WAL; the append path syncs explicitly (see `log.rs`).
    db_opts.set_use_fsync(false);
    db_opts.set_keep_log_file_num(4);
    // Writes with the WAL (the log's appends, truncations, purges, the vote) go to
    // RocksDB's WAL buffer in this process, not to the file: the WAL-sync thread's
    // `flush_wal(true)` writes the buffer and fsyncs it in one go, and a synced write
    // (the vote) flushes the buffer itself (see `log.rs`). Before, each append's
    // `write(2)` ran on the async worker that appended it (an ext4 write that can wait
    // for the journal). Per 60,000 reservations at 50 clients the workers' `write` calls
    // fell from 25,262 to 599 (the sync threads' rose from 4,818 to 16,349, about one
    // more per sync) and all the nodes' system calls from 2.96 to 2.81 per reservation
    // (`docs/benchmarks.md`, twenty-sixth session).
    db_opts.set_manual_wal_flush(true);
    // Table files written by flushes and compactions are synced as they grow, not only
    // at their end (see `SST_BYTES_PER_SYNC`).
    db_opts.set_bytes_per_sync(crate::limits::SST_BYTES_PER_SYNC);
    let cache = rocksdb::Cache::new_lru_cache(block_cache_bytes);
    let cf = |name: &str, prefix_friendly: bool| {
        rocksdb::ColumnFamilyDescriptor::new(name, cf_options(Some(&cache), prefix_friendly))
    };
    let cfs = vec![cf(CF_LOG, false), cf(CF_RAFT, false), cf(CF_SM, true)];
    Ok(rocksdb::DB::open_cf_descriptors(&db_opts, path, cfs)?)
}

/// A column family's table options; also what a snapshot install writes its SST file
/// with (`sm.rs`), so ingested files are laid out like the ones compaction writes.
pub(crate) fn cf_options(
    cache: Option<&rocksdb::Cache>,
    prefix_friendly: bool,
) -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    let mut t = rocksdb::BlockBasedOptions::default();
    if let Some(cache) = cache {
        t.set_block_cache(cache);
    }
    if prefix_friendly {
        t.set_bloom_filter(10.0, false);
        // No memtable bloom filter (`memtable_whole_key_filtering`): it cut apply's
        // instructions for reservations by 11% (callgrind, `storage_bench`), but the
        // mixed workload at 50 HTTP clients was slower with it in 8 of 9 interleaved
        // runs (`docs/benchmarks.md`, seventh session).
    }
    o.set_block_based_table_factory(&t);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

/// Whether RocksDB's compactions keep up with the state machine's writes, from its own
/// properties, for `/metrics`. With compactions at nice 19 (`CompactionPriority::Low`)
/// this is what tells an operator they fell behind: level-0 files pile up (writes slow
/// down at 20, stop at 36), pending compaction bytes grow, and RocksDB delays or stops
/// writes, which holds up every apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionHealth {
    /// Table files in level 0 of the state machine's column family.
    pub l0_files: u64,
    /// RocksDB's estimate of the bytes compactions must rewrite to bring the state
    /// machine's levels back under their targets.
    pub pending_bytes: u64,
    /// The rate writes are held to while RocksDB delays them, bytes/s; 0 when not delayed.
    pub delayed_write_rate: u64,
    /// Whether RocksDB has stopped writes.
    pub write_stopped: bool,
}

pub(crate) fn compaction_health(db: &rocksdb::DB) -> CompactionHealth {
    let Some(sm) = db.cf_handle(CF_SM) else {
        return CompactionHealth::default();
    };
    let prop = |p: &str| db.property_int_value_cf(sm, p).ok().flatten().unwrap_or(0);
    CompactionHealth {
        l0_files: prop("rocksdb.num-files-at-level0"),
        pending_bytes: prop("rocksdb.estimate-pending-compaction-bytes"),
        delayed_write_rate: prop("rocksdb.actual-delayed-write-rate"),
        write_stopped: prop("rocksdb.is-write-stopped") != 0,
    }
}

/// Where RocksDB's memory is, from its own properties (bytes), for `/metrics`: with the
/// block cache and memtables bounded by configuration, these are what a node's resident
/// memory is mostly made of, whatever the state's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbMemory {
    /// Active and immutable memtables of every column family.
    pub memtables: u64,
    /// The block cache shared by the column families (its capacity is
    /// `StoreOptions::block_cache_bytes`).
    pub block_cache: u64,
    /// Index and filter blocks of open SST files held outside the block cache.
    pub table_readers: u64,
}

pub(crate) fn db_memory(db: &rocksdb::DB) -> DbMemory {
    let mut m = DbMemory::default();
    for name in [CF_LOG, CF_RAFT, CF_SM] {
        let Some(handle) = db.cf_handle(name) else {
            continue;
        };
        let prop = |p: &str| {
            db.property_int_value_cf(handle, p)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        m.memtables += prop("rocksdb.cur-size-all-mem-tables");
        m.table_readers += prop("rocksdb.estimate-table-readers-mem");
        if name == CF_SM {
            m.block_cache = prop("rocksdb.block-cache-usage");
        }
    }
    m
}

pub(crate) fn cf<'a>(
    db: &'a rocksdb::DB,
    name: &str,
) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::Invariant(format!("column family {name} missing")))
}

/// The live state-machine column family as a [`KvRead`] (what queries read).
#[derive(Clone)]
pub struct StateView {
    db: Arc<rocksdb::DB>,
}

impl KvRead for StateView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(cf(&self.db, CF_SM)?, key)?)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        scan_cf(&self.db, cf(&self.db, CF_SM)?, None, lo, hi, limit)
    }
}

/// A consistent point-in-time view of the state machine (a RocksDB snapshot).
pub(crate) struct PointInTime<'a> {
    db: &'a rocksdb::DB,
    snap: rocksdb::Snapshot<'a>,
}

impl<'a> PointInTime<'a> {
    pub(crate) fn new(db: &'a rocksdb::DB) -> Self {
        PointInTime {
            db,
            snap: db.snapshot(),
        }
    }
}

impl KvRead for PointInTime<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(cf(self.db, CF_SM)?, key)?)
    }

    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        scan_cf(
            self.db,
            cf(self.db, CF_SM)?,
            Some(&self.snap),
            lo,
            hi,
            limit,
        )
    }
}

fn scan_cf(
    db: &rocksdb::DB,
    cf: &rocksdb::ColumnFamily,
    snap: Option<&rocksdb::Snapshot<'_>>,
    lo: &[u8],
    hi: &[u8],
    limit: usize,
) -> Result<Vec<Pair>, StoreError> {
    if lo >= hi || limit == 0 {
        return Ok(Vec::new());
    }
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_iterate_upper_bound(hi.to_vec());
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    let it = db.iterator_cf_opt(
        cf,
        ro,
        rocksdb::IteratorMode::From(lo, rocksdb::Direction::Forward),
    );
    let mut out = Vec::new();
    for item in it.take(limit) {
        let (k, v) = item?;
        out.push((k.into_vec(), v.into_vec()));
    }
    Ok(out)
}
