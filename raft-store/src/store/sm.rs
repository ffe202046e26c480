//! The state machine on RocksDB (`RaftStateMachine`) and its snapshots.
//!
//! Apply: entries are collected, then run through [`Machine`] against a [`Txn`] over the
//! live column family; the whole call's writes, with `last_applied`, the membership and
//! the clock, go to RocksDB as one `WriteBatch`, and only then are the responses sent.
//!
//! **Where apply runs.** A call of at most `StoreOptions::apply_inline_commands_max`
//! commands (default `limits::APPLY_INLINE_COMMANDS_MAX`, 128; a `Tick` counts for what
//! the last Tick handled, see [`commands_in`]) runs on the async task that called it,
//! openraft's state-machine task; a larger one (several full entries at 1,000 clients, a
//! follower catching up, a backlog after a stall, a wave of expiries) goes to tokio's
//! blocking pool. Until 2026-12-06 every call went to the pool. The work is short and in
//! memory: point reads that the memtable and block cache serve, then one write that
//! skips the WAL (below), about 9 µs per reservation (`docs/benchmarks.md`, storage
//! layer). Handing that to a pool thread and back cost more than the work itself: a
//! parked thread woken, the worker parked, then woken again by the result, on every node
//! for every entry. Inline, with
//! the same binary, three release nodes on one 2-core machine used 9–40% less node CPU
//! per request in all nine interleaved pairs (50 and 256 clients, reservations and the
//! mixed flow, one and two runtime workers) and sold 100,000 units in 1.40 / 1.93 s
//! instead of 2.16 / 2.24 s (`docs/benchmarks.md`, twenty-fourth session). What it
//! risks is what the log's own append (an unsynced RocksDB write on openraft's core task,
//! `log.rs`) already risks: a write that RocksDB delays or stops (level-0 files piling
//! up) holds the worker too. The bound on commands bounds how long one call keeps the
//! worker from the node's other tasks (about 1 ms of reservations; it was one full
//! entry, about 10 ms, until the thirtieth session found that large calls on the worker
//! held up the requests behind them at 1,000 clients; see
//! `limits::APPLY_INLINE_COMMANDS_MAX`).
//!
//! **The apply batch bypasses the WAL** (`WriteOptions::disable_wal`): it lives in the
//! memtable until RocksDB flushes the column family to a table file. Every applied entry
//! is already durable in the Raft log, so the state machine is *transient* in openraft's
//! sense, and a crash recovers it the way openraft recovers such a machine
//! (`StorageHelper::get_initial_state`): the column family comes back as of its last
//! flush, a prefix of the applied writes with its own `last_applied` (one `WriteBatch`
//! never straddles a flush); if the newest snapshot file is ahead of that, it is
//! installed; then the committed log after it is re-applied. That is always possible:
//! openraft purges the log only up to its newest snapshot, and a snapshot file is
//! fsynced and renamed into place before openraft hears it exists (`snapshot.rs`), so
//! every purged entry is inside a durable snapshot. A clean shutdown flushes the
//! memtable (RocksDB's default), so only a crash pays the re-apply, bounded by the
//! entries since the last snapshot or flush.
//!
//! Why: with the batch in the WAL, each reservation's records (the hold, the user's
//! record, the idempotency record, three index keys; 414 bytes per reservation in a
//! backup file) were written to the WAL file and fsynced by the next log append, beside
//! the log entry (104 bytes of WAL per reservation without them), on every node. Without it, four interleaved pairs of a 100,000-unit reservation storm
//! (256 `grpc-stream` clients) went 10–34% faster (median 18%) at 6–13% less node CPU
//! per reservation; the seeds' mixed flow at 50 HTTP clients, whose entries are small,
//! was unchanged (`docs/benchmarks.md`, thirteenth session). Until then the shared WAL
//! ordered the batch before any later purge, so a crash could only make the node
//! re-apply a suffix of the log, never install its own snapshot; the crash test
//! `a_killed_node_recovers_every_acknowledged_write` (cli e2e) covers the new path.
//!
//! Snapshots: built from one RocksDB snapshot, so the data *and* the metadata
//! (`last_applied`, membership) come from the same view even while apply goes on (the
//! upstream example reads the metadata outside its view). Install checks the file, then
//! replaces the whole column family by ingesting one SST file written while streaming
//! the snapshot (memory bounded by a record, not by the state; see `install_blocking`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prometheus_client::metrics::histogram::Histogram;
use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteBatch, WriteOptions, DB};

use super::background::{self, BuildPriority, RanAt};
use super::snapshot::{self, SnapshotReader, SnapshotWriter};
use super::{cf, PointInTime, StateView, CF_SM};
use crate::error::StoreError;
use crate::kv::Pair;
use crate::kv::{KvRead, Txn, Writes};
use crate::limits::{
    SNAPSHOT_REWRITE_DIVISOR, SNAPSHOT_STAGGER_MIN_BYTES, SNAPSHOT_TURNS_PER_SLOT,
};
use crate::machine::Machine;
use crate::query::SaleGate;
use crate::types::{Reject, Response, SaleRecord};
use crate::{codec, keys, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, File>;

/// openraft's state machine: cheap to clone; clones share the DB.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    /// No live deadline in the committed state is earlier than this (milliseconds);
    /// where deadline scans start (see `Machine::deadline_floor` and [`DeadlineFloor`]).
    /// Kept in memory only: 0 after a start or a snapshot install, which is always true.
    deadline_floor: Arc<Mutex<DeadlineFloor>>,
    /// Per sale, the waitlist floor (`Machine::with_wait_floors`); only apply uses it.
    wait_floors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// The applied clock and, per sale changed since the start, its reservation gate, as
    /// of the last apply call (see [`StateMachineStore::reserve_precheck`]).
    gates: Arc<RwLock<Gates>>,
    /// Whether a policy-triggered snapshot is worth its rewrite yet (`SnapshotPacing`).
    pacing: Arc<SnapshotPacing>,
    /// CPU priority of the snapshot builder's thread (`background.rs`).
    build_priority: BuildPriority,
    /// The priority the last build's thread ran at (`None` before the first, or where it
    /// could not be read).
    last_build: Arc<Mutex<Option<RanAt>>>,
    /// A manual compaction is running ([`StateMachineStore::compact_blocking`]): one at a
    /// time, each holds a blocking thread until RocksDB is done.
    compacting: Arc<AtomicBool>,
    /// Each apply call's duration until its responses are back: the machine's reads and
    /// logic and the one RocksDB write, and for a call on the blocking pool the wait for
    /// a thread (`stockade_apply_duration_seconds`).
    apply_seconds: Histogram,
    /// Apply calls of at most this many commands run on the calling async task instead
    /// of the blocking pool (`StoreOptions::apply_inline_commands_max`).
    inline_commands_max: usize,
    /// What the next `Tick` counts for against `inline_commands_max`: what the last Tick
    /// applied on this node handled (`Machine::last_tick_work`), at least 1. See
    /// [`commands_in`].
    tick_weight: Arc<AtomicUsize>,
    /// Apply calls run inline and on the blocking pool, since the start
    /// (`stockade_apply_calls_total{on=…}`).
    applies_inline: Arc<AtomicU64>,
    applies_pooled: Arc<AtomicU64>,
}

/// Where this node's policy-triggered snapshots fall beside its peers' (see
/// [`SnapshotPacing`]): the log is cut into slots of `entries` entries, numbered in turn
/// by the voters' count, and a node builds a policy-triggered snapshot only in the slots
/// of its rank among the voters (in id order).
///
/// **Why.** Every replica applies the same entries, so without slots every replica's
/// snapshot falls due at the same index and all of them rewrite the whole state at
/// once: 488 MB builds of 10.8–11.0 s on all three nodes in one round of
/// `docs/benchmarks.md` (twenty-seventh session), which ran at 3,710 reservations/s
/// against 5,423 in a round with none. A commit needs the leader and one follower, so
/// one node building at a time leaves a quorum that is not building; even on one 2-core
/// machine, where the nodes share cores and the disk, a build on one follower cost about
/// half the throughput loss of builds on all three (same section, §3).
///
/// **Measured** (`docs/benchmarks.md`, twenty-eighth session: 1,500,000 reservations at 50
/// clients on one 2-core machine, three interleaved pairs against the same build with
/// slots switched off): the same throughput and p99 within the runs' spread, but 2
/// WAL syncs of 100 ms or more against 15 and a slowest reservation of 93–146 ms against
/// 311–1,715 ms. The largest builds there outlast a slot (those of 400 MB or more took
/// 18–41 s at idle priority under full load, against about 14 s per slot), so a build can
/// still overlap the next node's: slots keep the builds' starts apart, not their ends.
///
/// **What it keeps.** The rank comes from the applied membership and the slot from the
/// applied index, both the same on every replica and both durable, so the stagger holds
/// across restarts, as the state grows and in any long run (a per-node delay or size
/// factor would drift back into line). A node waits at most `voters - 1` slots past the
/// point its snapshot is due, so the log it keeps grows by at most that many slots'
/// entries. Learners, nodes outside the membership and snapshots smaller than
/// `min_bytes` take no slot; forced builds (an operator's, one a lagging follower
/// needs) never wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSlots {
    /// This node's id; its rank among the voters picks its slots.
    pub node_id: u64,
    /// Entries per slot, and the fewest entries from one snapshot to the next
    /// policy-triggered one (`--snapshot-every-entries`).
    pub entries: u64,
    /// A snapshot whose predecessor was smaller than this is built in any slot
    /// (`limits::SNAPSHOT_STAGGER_MIN_BYTES`).
    pub min_bytes: u64,
}

impl SnapshotSlots {
    pub fn new(node_id: u64, entries: u64) -> Self {
        SnapshotSlots {
            node_id,
            entries: entries.max(1),
            min_bytes: SNAPSHOT_STAGGER_MIN_BYTES,
        }
    }

    /// The interval openraft's `SnapshotPolicy::LogsSinceLast` must ask at, entries:
    /// `limits::SNAPSHOT_TURNS_PER_SLOT` turns per slot.
    pub fn policy_entries(entries: u64) -> u64 {
        (entries / SNAPSHOT_TURNS_PER_SLOT).max(1)
    }

    /// This node's rank among `membership`'s voters and their count; `None` if it is
    /// not a voter.
    fn rank(&self, membership: &StoredMembership) -> Option<Rank> {
        let voters: Vec<u64> = membership.membership().voter_ids().collect();
        let rank = voters.iter().position(|id| *id == self.node_id)?;
        Some(Rank {
            rank: rank as u64,
            voters: voters.len() as u64,
        })
    }
}

/// What snapshot pacing knows ([`StateMachineStore::snapshot_pacing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingView {
    /// Log index of the last snapshot built or installed (0: none).
    pub last_index: u64,
    /// Its size, bytes (0: none).
    pub last_bytes: u64,
    /// State-machine bytes written since its view was taken.
    pub written: u64,
    /// Log index of the last applied entry.
    pub applied: u64,
}

/// A voter's place in the slot order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rank {
    rank: u64,
    voters: u64,
}

/// What a policy turn decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    Build,
    /// Fewer than `SnapshotSlots::entries` applied since the last snapshot.
    FewEntries,
    /// Less written than `1 / SNAPSHOT_REWRITE_DIVISOR` of the last snapshot.
    FewBytes,
    /// Due, but the applied index is in another voter's slot.
    OtherSlot {
        slot: u64,
        ours: u64,
    },
}

/// What a policy turn decides on (see [`policy_turn`]).
#[derive(Clone, Copy, Debug)]
struct TurnInputs {
    applied: u64,
    last_index: u64,
    written: u64,
    last_bytes: u64,
    slots: Option<SnapshotSlots>,
    rank: Option<Rank>,
}

/// Whether a policy turn builds: enough entries since the last snapshot (with slots),
/// enough bytes written to be worth the rewrite (`SNAPSHOT_REWRITE_DIVISOR`), and for a
/// snapshot large enough to matter, the applied index in this node's slot.
fn policy_turn(t: TurnInputs) -> Turn {
    if let Some(slots) = t.slots {
        if t.applied.saturating_sub(t.last_index) < slots.entries {
            return Turn::FewEntries;
        }
    }
    if t.written.saturating_mul(SNAPSHOT_REWRITE_DIVISOR) < t.last_bytes {
        return Turn::FewBytes;
    }
    if let (Some(slots), Some(r)) = (t.slots, t.rank) {
        if t.last_bytes >= slots.min_bytes {
            let slot = (t.applied / slots.entries) % r.voters;
            if slot != r.rank {
                return Turn::OtherSlot { slot, ours: r.rank };
            }
        }
    }
    Turn::Build
}

/// What decides whether a snapshot the policy asks for is built now or deferred: bytes
/// written since the last one (see `limits::SNAPSHOT_REWRITE_DIVISOR`) and, with
/// [`SnapshotSlots`], entries since it and whose slot the applied index is in. The last
/// snapshot's size and index are read from the newest snapshot file when the store opens,
/// so a restart keeps the pacing; what was written since it is not known then (0), which
/// only defers the next build.
#[derive(Debug, Default)]
struct SnapshotPacing {
    /// Bytes of state-machine write batches since the last snapshot's view was taken.
    written: AtomicU64,
    /// Size of the last snapshot file built or installed, bytes.
    last_bytes: AtomicU64,
    /// Log index of the last snapshot built or installed (0: none).
    last_index: AtomicU64,
    /// Log index of the last applied entry (0: none).
    applied: AtomicU64,
    /// The next build was asked for by an operator and must not be deferred.
    force_next: AtomicBool,
    slots: Option<SnapshotSlots>,
    /// This node's rank as of the last applied membership (`None`: no slots, or not a
    /// voter).
    rank: Mutex<Option<Rank>>,
}

impl SnapshotPacing {
    fn new(slots: Option<SnapshotSlots>) -> Self {
        SnapshotPacing {
            slots,
            ..Default::default()
        }
    }

    /// A policy turn's decision; a forced build (openraft's or an operator's, which it
    /// consumes) is always `Build`.
    fn turn(&self, force: bool) -> Turn {
        if self.force_next.swap(false, Ordering::Relaxed) || force {
            return Turn::Build;
        }
        policy_turn(TurnInputs {
            applied: self.applied.load(Ordering::Relaxed),
            last_index: self.last_index.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            last_bytes: self.last_bytes.load(Ordering::Relaxed),
            slots: self.slots,
            rank: *self.rank.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }

    /// The applied membership changed (an entry, an install, the start).
    fn set_membership(&self, membership: &StoredMembership) {
        if let Some(slots) = self.slots {
            *self.rank.lock().unwrap_or_else(|p| p.into_inner()) = slots.rank(membership);
        }
    }

    /// A snapshot up to `last` of `bytes` was built or installed.
    fn snapshot_taken(&self, last: Option<LogId>, bytes: u64) {
        self.last_index
            .store(last.map_or(0, |l| l.index), Ordering::Relaxed);
        self.last_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// Most sales whose gate the store keeps; past this it forgets them all and reads the
/// records again until apply calls bring them back (sales are few; this only bounds it).
pub const SALE_GATES_MAX: usize = 4_096;

/// What [`StateMachineStore::reserve_precheck`] answers from without a read.
#[derive(Debug, Default)]
struct Gates {
    /// The state machine's clock after the last apply call; `None` until the first one
    /// (and after a snapshot install), when every precheck reads the state.
    clock_ms: Option<u64>,
    sales: BTreeMap<String, SaleGate>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        build_priority: BuildPriority,
        inline_commands_max: usize,
        slots: Option<SnapshotSlots>,
    ) -> Result<Self, StoreError> {
        cf(&db, CF_SM)?;
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = StateMachineStore {
            db,
            snapshot_dir,
            deadline_floor: Arc::default(),
            wait_floors: Arc::default(),
            gates: Arc::default(),
            pacing: Arc::new(SnapshotPacing::new(slots)),
            build_priority,
            last_build: Arc::default(),
            compacting: Arc::default(),
            apply_seconds: crate::timing::stage_histogram(),
            inline_commands_max,
            tick_weight: Arc::new(AtomicUsize::new(1)),
            applies_inline: Arc::default(),
            applies_pooled: Arc::default(),
        };
        // The second half of the conservation pair: what was written is checked on load.
        check_sales(&sm.view())?;
        let (applied, membership) = sm.applied(&sm.view())?;
        sm.pacing
            .applied
            .store(applied.map_or(0, |l| l.index), Ordering::Relaxed);
        sm.pacing.set_membership(&membership);
        sm.pace_from_newest_file();
        Ok(sm)
    }

    /// What policy turns decide on now (see [`SnapshotPacing`]).
    pub fn snapshot_pacing(&self) -> PacingView {
        let p = &self.pacing;
        PacingView {
            last_index: p.last_index.load(Ordering::Relaxed),
            last_bytes: p.last_bytes.load(Ordering::Relaxed),
            written: p.written.load(Ordering::Relaxed),
            applied: p.applied.load(Ordering::Relaxed),
        }
    }

    /// Takes the last snapshot's index and size from the newest snapshot file, if any.
    /// Only pacing depends on it: a file that cannot be read is left to openraft, which
    /// reads the same file when it needs it, and is only logged here.
    fn pace_from_newest_file(&self) {
        let newest = snapshot::latest(&self.snapshot_dir).and_then(|p| {
            let Some(p) = p else { return Ok(None) };
            let bytes = std::fs::metadata(&p)?.len();
            let (_, meta) = SnapshotReader::open(File::open(&p)?)?;
            Ok(Some((meta.last_log_id, bytes)))
        });
        match newest {
            Ok(Some((last, bytes))) => self.pacing.snapshot_taken(last, bytes),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "newest snapshot file unreadable for pacing"),
        }
    }

    /// A read view of the live state (queries read the last applied batch, atomically).
    pub fn view(&self) -> StateView {
        StateView {
            db: self.db.clone(),
        }
    }

    /// Each apply call's duration, seconds (a clone sharing the counts).
    /// Apply calls since the start: (run on the async task, run on the blocking pool).
    pub fn apply_calls(&self) -> (u64, u64) {
        (
            self.applies_inline.load(Ordering::Relaxed),
            self.applies_pooled.load(Ordering::Relaxed),
        )
    }

    pub fn apply_histogram(&self) -> Histogram {
        self.apply_seconds.clone()
    }

    /// A lower bound of every pending deadline (for the ticker's look at the next one).
    pub fn deadline_floor(&self) -> u64 {
        self.floor().at_ms
    }

    /// [`query::reserve_precheck`](crate::query::reserve_precheck) on the state as of the
    /// last apply call, with no read for a sale that an apply call since the start
    /// touched: every write of a sale record goes through apply, which hands back the
    /// gates of the sales it touched (`Machine::finish`) and stores them after its commit
    /// and before openraft learns the entries are applied. So a caller that waited for
    /// `applied >= index` (a linearizable read) sees gates at least that new, and a
    /// sold-out crowd is refused without a RocksDB read or a decode of the sale.
    pub fn reserve_precheck(&self, sale_id: &str, qty: u32) -> Result<Option<Reject>, StoreError> {
        {
            let g = self.gates.read().unwrap_or_else(|p| p.into_inner());
            if let (Some(clock), Some(gate)) = (g.clock_ms, g.sales.get(sale_id)) {
                return Ok(gate.precheck(qty, clock));
            }
        }
        crate::query::reserve_precheck_now(&self.view(), sale_id, qty)
    }

    fn store_gates(&self, clock_ms: u64, touched: Vec<(String, SaleGate)>) {
        let mut g = self.gates.write().unwrap_or_else(|p| p.into_inner());
        g.clock_ms = Some(clock_ms);
        if g.sales.len() + touched.len() > SALE_GATES_MAX {
            g.sales.clear();
        }
        g.sales.extend(touched);
    }

    fn forget_gates(&self) {
        *self.gates.write().unwrap_or_else(|p| p.into_inner()) = Gates::default();
    }

    fn floor(&self) -> std::sync::MutexGuard<'_, DeadlineFloor> {
        self.deadline_floor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The earliest live deadline (for the leader's ticker), scanning from the floor, and
    /// the floor raised to it when no write to the state began or ran meanwhile (see
    /// the crate-private `DeadlineFloor`).
    pub fn next_deadline_ms(&self) -> Result<Option<u64>, StoreError> {
        let (from, seen) = {
            let f = self.floor();
            (f.at_ms, (!f.writing).then_some(f.writes))
        };
        let next = crate::query::next_deadline_ms_from(&self.view(), from)?;
        if let (Some(seen), Some(at_ms)) = (seen, next) {
            self.floor().raise(seen, at_ms);
        }
        Ok(next)
    }

    /// Moves the floors out for one apply call (put back after its commit; an apply that
    /// fails leaves none, which is always safe).
    fn take_wait_floors(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.wait_floors.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every key and value of the state machine, in key order (for tests and audits).
    pub fn dump(&self) -> Result<Vec<Pair>, StoreError> {
        self.view().scan(&[0u8], keys::END, usize::MAX)
    }

    /// A hash of the whole state machine: equal on replicas that applied the same log.
    pub fn state_hash(&self) -> Result<u64, StoreError> {
        Ok(hash_pairs(&self.dump()?))
    }

    /// Compacts the state machine's column family through its bottom level now (`stockctl
    /// compact`), rewriting every table file without the versions deleted or overwritten
    /// since: a flash sale deletes a deadline key for every hold and order it handles and,
    /// an hour on, every idempotency record, and until a compaction reaches them those
    /// tombstones take disk and are stepped over by scans. Blocking: RocksDB runs it on
    /// its compaction threads, at `StoreOptions::compaction_priority`, while the caller
    /// waits; writes go on meanwhile (RocksDB compacts a consistent set of files), and
    /// what lands during it stays in the memtable or the top level. `None`: another
    /// manual compaction of this store is running (one at a time).
    pub fn compact_blocking(&self) -> Result<Option<super::Compaction>, StoreError> {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.compacting);
        #[allow(clippy::disallowed_methods)]
        // times the compaction for the operator; apply never reads a clock
        let started = std::time::Instant::now();
        let cf_sm = cf(&self.db, CF_SM)?;
        let sst_bytes = || -> Result<u64, StoreError> {
            Ok(self
                .db
                .property_int_value_cf(cf_sm, "rocksdb.total-sst-files-size")?
                .unwrap_or(0))
        };
        let sst_bytes_before = sst_bytes()?;
        let mut o = rocksdb::CompactOptions::default();
        // Files already at the bottom are rewritten too (that is where a large state's
        // tombstones sit), but not the ones this compaction itself just wrote there.
        o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        // Automatic compactions may run beside it.
        o.set_exclusive_manual_compaction(false);
        self.db
            .compact_range_cf_opt(cf_sm, None::<&[u8]>, None::<&[u8]>, &o);
        let took = started.elapsed();
        let c = super::Compaction {
            sst_bytes_before,
            sst_bytes_after: sst_bytes()?,
            took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        tracing::info!(
            before = c.sst_bytes_before,
            after = c.sst_bytes_after,
            took_ms = c.took_ms,
            "state machine compacted"
        );
        Ok(Some(c))
    }

    /// RocksDB's memory now (memtables, block cache, table readers).
    pub fn db_memory(&self) -> super::DbMemory {
        super::db_memory(&self.db)
    }

    /// Whether RocksDB's compactions keep up (level-0 files, pending bytes, delays).
    pub fn compaction_health(&self) -> super::CompactionHealth {
        super::compaction_health(&self.db)
    }

    pub fn snapshot_dir(&self) -> &std::path::Path {
        &self.snapshot_dir
    }

    fn applied(&self, view: &impl KvRead) -> Result<(Option<LogId>, StoredMembership), StoreError> {
        let last = match view.get(keys::META_LAST_APPLIED)? {
            Some(b) => Some(codec::decode(keys::META_LAST_APPLIED, &b)?),
            None => None,
        };
        let membership = match view.get(keys::META_MEMBERSHIP)? {
            Some(b) => codec::decode(keys::META_MEMBERSHIP, &b)?,
            None => StoredMembership::default(),
        };
        Ok((last, membership))
    }

    /// Runs the machine over a batch of entries and commits the result as one batch.
    fn apply_blocking(&self, entries: &[Entry]) -> Result<Vec<Response>, StoreError> {
        let view = self.view();
        let mut txn = Txn::new(&view);
        let mut responses = Vec::with_capacity(entries.len());
        let mut last_applied = None;
        let mut membership = None;
        let floor;
        let wait_floors;
        let clock_ms;
        let gates;
        // No raise of the floor from a scan until this call's writes are in (or it failed).
        let writing = FloorWrite::begin(&self.deadline_floor);
        {
            let mut machine = Machine::load(&mut txn)?
                .with_deadline_floor(writing.at_ms())
                .with_wait_floors(self.take_wait_floors());
            for entry in entries {
                last_applied = Some(entry.log_id);
                let response = match &entry.payload {
                    EntryPayload::Blank => Response::Applied,
                    EntryPayload::Normal(le) => machine.apply(le)?,
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                        Response::Applied
                    }
                };
                responses.push(response);
            }
            floor = machine.deadline_floor();
            wait_floors = machine.take_wait_floors();
            clock_ms = machine.clock_ms();
            if let Some(work) = machine.last_tick_work() {
                self.tick_weight.store(work.max(1), Ordering::Relaxed);
            }
            gates = machine.finish()?;
        }
        if let Some(id) = &last_applied {
            txn.put("last applied", keys::META_LAST_APPLIED.to_vec(), id)?;
        }
        if let Some(m) = &membership {
            txn.put("membership", keys::META_MEMBERSHIP.to_vec(), m)?;
        }
        // Lowered before the commit (new deadlines become visible below the old floor),
        // raised after it (handled ones are gone): concurrent readers never skip a
        // live deadline.
        writing.lower(floor);
        self.commit(txn.into_writes())?;
        writing.set(floor);
        drop(writing);
        self.store_gates(clock_ms, gates);
        *self.wait_floors.lock().unwrap_or_else(|p| p.into_inner()) = wait_floors;
        if let Some(id) = &last_applied {
            self.pacing.applied.store(id.index, Ordering::Relaxed);
        }
        if let Some(m) = &membership {
            self.pacing.set_membership(m);
        }
        Ok(responses)
    }

    fn commit(&self, writes: Writes) -> Result<(), StoreError> {
        let cf_sm = cf(&self.db, CF_SM)?;
        let mut batch = WriteBatch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.put_cf(cf_sm, k, v),
                None => batch.delete_cf(cf_sm, k),
            }
        }
        let mut wo = WriteOptions::default();
        // Transient state: recovered from the snapshot and the log after a crash (see
        // the module docs).
        wo.disable_wal(true);
        let bytes = batch.size_in_bytes() as u64;
        self.db.write_opt(batch, &wo)?;
        self.pacing.written.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn build_blocking(&self) -> Result<(SnapshotMeta, PathBuf), StoreError> {
        let pit = PointInTime::new(&self.db);
        // What is written from here on is not in this snapshot.
        self.pacing.written.store(0, Ordering::Relaxed);
        let (last_log_id, last_membership) = self.applied(&pit)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let mut writer = SnapshotWriter::create(&self.snapshot_dir, &meta)?;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&pit.snap);
        // One pass over every block: keep it out of the block cache, where it would only
        // evict the blocks apply and reads are using (and grow the process by the cache).
        ro.fill_cache(false);
        for item in self
            .db
            .iterator_cf_opt(cf(&self.db, CF_SM)?, ro, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item?;
            writer.record(&k, &v)?;
        }
        let path = writer.finish(&self.snapshot_dir, &meta)?;
        self.pacing
            .snapshot_taken(meta.last_log_id, std::fs::metadata(&path)?.len());
        Ok((meta, path))
    }

    /// Replaces the whole state with the snapshot in `file`, in memory bounded by one
    /// record (not by the state's size: a follower catching up on a million orders must
    /// not hold them all at once, as an earlier version did with an in-memory map and one
    /// `WriteBatch` of every record).
    ///
    /// One pass over the file checks every record (ascending keys, each sale conserves
    /// its units, the bookkeeping agrees with `meta`, then count and checksum) while
    /// writing it into an SST file that also carries a range tombstone over the whole key
    /// space; RocksDB documents that such a tombstone does not delete the point keys of
    /// its own file. Ingesting that one file swaps the state atomically: readers and a
    /// crash see the old state or the new one, never a mix, and a file that fails any
    /// check is deleted without touching the live state.
    fn install_blocking(&self, meta: &SnapshotMeta, file: File) -> Result<(), StoreError> {
        let (mut reader, file_meta) = SnapshotReader::open(file.try_clone()?)?;
        if file_meta != *meta {
            return Err(StoreError::Snapshot(format!(
                "file is for {:?}, asked to install {:?}",
                file_meta.last_log_id, meta.last_log_id
            )));
        }
        let sst = self.snapshot_dir.join(INSTALL_SST);
        let written = write_install_sst(&mut reader, &sst);
        let (last, membership) = match written {
            Ok(bookkeeping) => bookkeeping,
            Err(e) => {
                let _ = std::fs::remove_file(&sst);
                return Err(e);
            }
        };
        if last != meta.last_log_id || membership != meta.last_membership {
            let _ = std::fs::remove_file(&sst);
            return Err(StoreError::Snapshot(
                "snapshot data disagrees with its meta".into(),
            ));
        }
        // The installed state's deadlines may be anywhere: scan from the start again.
        let writing = FloorWrite::begin(&self.deadline_floor);
        writing.set(0);
        self.forget_gates();
        self.wait_floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(cf(&self.db, CF_SM)?, &ingest, vec![&sst])?;
        drop(writing);
        // Keep the installed snapshot as the current one (to serve to other followers).
        let already_here = snapshot::latest(&self.snapshot_dir)?.is_some_and(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy() == snapshot::file_name(meta))
        });
        if !already_here {
            let mut f = file;
            use std::io::Seek;
            f.seek(io::SeekFrom::Start(0))?;
            snapshot::store_from(&self.snapshot_dir, io::BufReader::new(f))?;
        }
        // The installed state is as new as a snapshot of our own would be.
        self.pacing.written.store(0, Ordering::Relaxed);
        self.pacing
            .applied
            .store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Relaxed);
        self.pacing.set_membership(&meta.last_membership);
        if let Some(p) = snapshot::latest(&self.snapshot_dir)? {
            self.pacing
                .snapshot_taken(meta.last_log_id, std::fs::metadata(p)?.len());
        }
        Ok(())
    }

    /// The priority the last snapshot build of this process ran at (`None` before the
    /// first build, or where the platform has none): shows that builds yield to the
    /// request path (`StoreOptions::snapshot_build_priority`).
    pub fn last_build_priority(&self) -> Option<RanAt> {
        *self.last_build.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next snapshot build happen whatever was written since the last one (an
    /// operator's `snapshot`, which openraft asks for like a policy turn).
    pub fn force_next_snapshot(&self) {
        self.pacing.force_next.store(true, Ordering::Relaxed);
    }

    fn current_blocking(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(path) = snapshot::latest(&self.snapshot_dir)? else {
            return Ok(None);
        };
        let mut file = File::open(&path)?;
        // The reader shares the handle's offset: rewind so the caller reads from byte 0.
        let (_, meta) = SnapshotReader::open(file.try_clone()?)?;
        std::io::Seek::rewind(&mut file)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: file,
        }))
    }
}

/// Every sale in the state conserves its units (checked when the store opens; an install
/// checks each sale record as it streams, `write_install_sst`).
fn check_sales(view: &impl KvRead) -> Result<(), StoreError> {
    let (lo, hi) = keys::tag_range(keys::SALE);
    for (k, v) in view.scan(&lo, &hi, usize::MAX)? {
        check_sale(&k, &v)?;
    }
    Ok(())
}

fn check_sale(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let sale: SaleRecord = codec::decode(key, value)?;
    if !sale.counters.conserves(sale.spec.quantity) {
        return Err(StoreError::Invariant(format!(
            "sale {}: {:?} does not add up to {}",
            sale.spec.id, sale.counters, sale.spec.quantity
        )));
    }
    Ok(())
}

/// Where an install stages its SST file (in the snapshot directory, on the same file
/// system as the database so ingestion moves it instead of copying). One fixed name: a
/// file left by a crash is overwritten by the next install.
const INSTALL_SST: &str = "install.sst";

/// Streams a snapshot's records into an SST file at `path` behind a tombstone over the
/// whole state key space, checking each record on the way, and returns the snapshot's
/// own `last_applied` and membership. Fails on keys out of order, a sale that does not
/// conserve its units, or a bad count or checksum at the end.
fn write_install_sst<R: io::Read>(
    reader: &mut SnapshotReader<R>,
    path: &std::path::Path,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let opts = super::cf_options(None, true);
    let mut w = SstFileWriter::create(&opts);
    w.open(path)?;
    w.delete_range(&[0u8][..], keys::END)?;
    let (sale_lo, sale_hi) = keys::tag_range(keys::SALE);
    let mut last = None;
    let mut membership = StoredMembership::default();
    let mut prev: Option<Vec<u8>> = None;
    while let Some((k, v)) = reader.next_record()? {
        if prev.as_ref().is_some_and(|p| *p >= k) {
            return Err(StoreError::Snapshot(
                "snapshot keys are not in ascending order".into(),
            ));
        }
        if k.as_slice() >= sale_lo.as_slice() && k.as_slice() < sale_hi.as_slice() {
            check_sale(&k, &v)?;
        } else if k == keys::META_LAST_APPLIED {
            last = Some(codec::decode(keys::META_LAST_APPLIED, &v)?);
        } else if k == keys::META_MEMBERSHIP {
            membership = codec::decode(keys::META_MEMBERSHIP, &v)?;
        }
        w.put(&k, &v)?;
        prev = Some(k);
    }
    w.finish()?;
    Ok((last, membership))
}

/// xxh3 over length-prefixed pairs (so `("ab","c")` and `("a","bc")` differ).
pub fn hash_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in pairs {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    h.digest()
}

/// Where deadline scans start, shared by apply, snapshot install and the ticker's scan.
///
/// `Tick` raises the floor to the first live deadline, but a tick runs only when a
/// deadline is due. In between, every checkout, payment and release deletes a deadline
/// ahead of the floor, and the leader's ticker, which looks for the next deadline every
/// `TICK_POLL_MAX` (50 ms), stepped over all those RocksDB tombstones each time: in a
/// sale with a 10-minute hold TTL, one scan per poll over every checkout so far (7.5% of
/// the leader's CPU in a 40,000-user checkout-and-pay run, growing with the sale). So the
/// ticker's scan raises the floor too, to the first live deadline it found, and later
/// scans step only over what was deleted since.
///
/// That raise is safe only if the scan saw the whole committed state and nothing was
/// committed after it: a deadline added meanwhile could lie below what the scan found.
/// Every write to the state (an apply call, a snapshot install) therefore counts itself
/// in `writes` when it begins and again when it ends, and sets `writing` for its
/// duration (one runs at a time: openraft applies serially). A scan that began with no
/// write running raises the floor only if `writes` is unchanged when it finishes; else it
/// leaves the floor alone (always safe: a lower floor only costs a longer scan).
#[derive(Debug, Default)]
pub(crate) struct DeadlineFloor {
    /// No live deadline in the committed state is earlier (milliseconds).
    at_ms: u64,
    /// Writes begun plus writes ended.
    writes: u64,
    /// A write is between its begin and its end.
    writing: bool,
}

impl DeadlineFloor {
    /// Raises the floor to `at_ms`, the first live deadline found by a scan that began
    /// with no write running and `writes == seen`, if no write began since.
    fn raise(&mut self, seen: u64, at_ms: u64) {
        if !self.writing && self.writes == seen && at_ms > self.at_ms {
            self.at_ms = at_ms;
        }
    }
}

/// One write to the state, from its begin to its end (drop, on success or failure).
struct FloorWrite<'a> {
    floor: &'a Mutex<DeadlineFloor>,
    at_start_ms: u64,
}

impl<'a> FloorWrite<'a> {
    fn begin(floor: &'a Mutex<DeadlineFloor>) -> Self {
        let mut f = floor.lock().unwrap_or_else(|p| p.into_inner());
        f.writes += 1;
        f.writing = true;
        FloorWrite {
            floor,
            at_start_ms: f.at_ms,
        }
    }

    /// The floor when this write began.
    fn at_ms(&self) -> u64 {
        self.at_start_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeadlineFloor> {
        self.floor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lowers the floor before the commit: new deadlines become visible below the old
    /// floor, so concurrent readers never skip a live one.
    fn lower(&self, at_ms: u64) {
        let mut f = self.lock();
        f.at_ms = f.at_ms.min(at_ms);
    }

    /// Sets the floor after the commit (deadlines handled by it are gone).
    fn set(&self, at_ms: u64) {
        self.lock().at_ms = at_ms;
    }
}

impl Drop for FloorWrite<'_> {
    fn drop(&mut self) {
        let mut f = self.lock();
        f.writes += 1;
        f.writing = false;
    }
}

/// What `entry` counts for against the inline bound: one per command, except a `Tick`,
/// which counts `tick_weight` (what the last Tick on this node handled).
///
/// **Why a Tick is weighted.** A reservation is about one command's work; a Tick takes up
/// to `TICK_EXPIRE_BATCH_MAX` (256) due deadlines, each a read, a delete and an expiry's
/// writes. Counted as one, a Tick of 256 expiries ran on the worker beside 127 other
/// commands, so the bound (a time budget, `limits::APPLY_INLINE_COMMANDS_MAX`) did not
/// hold when a crowd's holds expired together, which is exactly when a flash sale's
/// second wave arrives (`docs/benchmarks.md`, thirty-first session: 201 of 241 Ticks
/// expired 129–256). What the next Tick will handle is only known by running it, so the
/// weight is the last Tick's: Ticks come back to back while a wave of deadlines is due
/// (the ticker re-proposes at once while `more_due`), so the last one is a good guess:
/// only the first Tick of a wave is misjudged, and one call of at most 256 deadlines more
/// than the bound is what every Tick could cost before. Counting every Tick at its
/// bound instead would send every call holding a Tick to the pool, though most Ticks
/// are small where expiries trickle in (3 deadlines at p50 in `bench-peers`' cells). It
/// is a local choice of where to run, made again on every replica, so the state is the
/// same either way.
///
/// **Measured** (`docs/benchmarks.md`, thirty-second session): waves of 100,000 holds
/// expiring (TTL 1 s) while the crowd still reserves, nine interleaved pairs against the
/// unweighted count at 256 and 1,000 clients. The Ticks went to the pool (about 300 more
/// pooled calls per run on every node), and throughput, p99 and node CPU stayed within
/// this machine's spread. It is kept for the bound's promise, not for speed.
fn commands_in(entry: &Entry, tick_weight: usize) -> usize {
    match &entry.payload {
        EntryPayload::Normal(le) => command_weight(&le.cmd, tick_weight),
        EntryPayload::Blank | EntryPayload::Membership(_) => 1,
    }
}

fn command_weight(cmd: &crate::types::Command, tick_weight: usize) -> usize {
    use crate::types::Command;
    match cmd {
        Command::Tick => tick_weight,
        // Not nested (`Command::Batch`): one level deep.
        Command::Batch(c) => c.iter().map(|c| command_weight(c, tick_weight)).sum(),
        _ => 1,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, io::Error> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)??)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = File;

    #[allow(clippy::disallowed_methods)] // times the build for its log line; apply never reads a clock
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        let started = std::time::Instant::now();
        // Its own thread at a lower priority, not the blocking pool (`background.rs`).
        let ((meta, path), ran_at) =
            background::run_at("snapshot-build", self.build_priority, move || {
                this.build_blocking()
            })
            .await?;
        *self.last_build.lock().unwrap_or_else(|p| p.into_inner()) = ran_at;
        tracing::info!(
            path = %path.display(),
            last = ?meta.last_log_id,
            bytes = self.pacing.last_bytes.load(Ordering::Relaxed),
            took_ms = started.elapsed().as_millis() as u64,
            nice = ran_at.map(|p| p.nice),
            sched_idle = ran_at.map(|p| p.sched_idle),
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: File::open(path)?,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = File;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.applied(&self.view())?)
    }

    #[allow(clippy::disallowed_methods)] // times apply for /metrics; the machine never reads a clock
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch: Vec<Entry> = Vec::new();
        let mut responders: Vec<Option<ApplyResponder<TypeConfig>>> = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let tick_weight = self.tick_weight.load(Ordering::Relaxed);
        let commands: usize = batch.iter().map(|e| commands_in(e, tick_weight)).sum();
        // Small calls run right here, on the runtime's worker (module docs, "Where apply
        // runs"); larger ones on the blocking pool.
        let responses = if commands <= self.inline_commands_max {
            self.applies_inline.fetch_add(1, Ordering::Relaxed);
            self.apply_blocking(&batch).map_err(io::Error::from)?
        } else {
            self.applies_pooled.fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            blocking(move || this.apply_blocking(&batch)).await?
        };
        self.apply_seconds.observe(started.elapsed().as_secs_f64());
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Defers a policy turn's build until the state machine has written enough since the
    /// last snapshot to be worth rewriting the state (`SNAPSHOT_REWRITE_DIVISOR`) and,
    /// with [`SnapshotSlots`], until enough entries were applied since it and the
    /// applied index is in this node's slot.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        let turn = self.pacing.turn(force);
        if turn == Turn::Build {
            return Some(self.clone());
        }
        tracing::debug!(
            ?turn,
            applied = self.pacing.applied.load(Ordering::Relaxed),
            last_index = self.pacing.last_index.load(Ordering::Relaxed),
            written = self.pacing.written.load(Ordering::Relaxed),
            last_bytes = self.pacing.last_bytes.load(Ordering::Relaxed),
            "snapshot deferred"
        );
        None
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: File,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta2 = meta.clone();
        blocking(move || this.install_blocking(&meta2, snapshot)).await?;
        tracing::info!(last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let this = self.clone();
        blocking(move || this.current_blocking()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(node_id: u64) -> SnapshotSlots {
        SnapshotSlots {
            node_id,
            entries: 100,
            min_bytes: 1_000,
        }
    }

    fn voters(ids: &[u64], learners: &[u64]) -> StoredMembership {
        let addr = |id: &u64| {
            (
                *id,
                crate::NodeAddr {
                    raft_addr: format!("10.0.0.{id}:50051"),
                    api_addr: format!("10.0.0.{id}:8080"),
                },
            )
        };
        let nodes: BTreeMap<u64, crate::NodeAddr> = ids.iter().chain(learners).map(addr).collect();
        let m = crate::Membership::new(vec![ids.iter().copied().collect()], nodes).unwrap();
        StoredMembership::new(None, m)
    }

    /// Runs policy turns every quarter slot from index 0 to `until` for each of `nodes`
    /// (slots and rank), each writing `bytes_per_entry` per entry into a state whose
    /// snapshots are `snapshot_bytes`; returns each node's build indices.
    fn simulate(
        nodes: &[(Option<SnapshotSlots>, Option<Rank>)],
        until: u64,
        bytes_per_entry: u64,
        snapshot_bytes: u64,
    ) -> Vec<Vec<u64>> {
        nodes
            .iter()
            .map(|&(slots, rank)| {
                let (mut last_index, mut last_bytes, mut builds) = (0, 0, Vec::new());
                let step = SnapshotSlots::policy_entries(100);
                for applied in (step..=until).step_by(step as usize) {
                    let t = TurnInputs {
                        applied,
                        last_index,
                        written: (applied - last_index) * bytes_per_entry,
                        last_bytes,
                        slots,
                        rank,
                    };
                    if policy_turn(t) == Turn::Build {
                        builds.push(applied);
                        last_index = applied;
                        last_bytes = snapshot_bytes;
                    }
                }
                builds
            })
            .collect()
    }

    /// Three voters with slots: each builds, never two in one slot, and any two builds
    /// of different nodes are at least three quarters of a slot apart; each node's own
    /// builds are at least a slot apart. Without slots the same three build at the very
    /// same indices (what the slots are for).
    #[test]
    fn slots_keep_the_voters_builds_apart() {
        let ranked: Vec<_> = [1u64, 2, 3]
            .iter()
            .map(|&id| {
                let s = slots(id);
                (Some(s), s.rank(&voters(&[1, 2, 3], &[])))
            })
            .collect();
        assert_eq!(
            ranked.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            (0..3)
                .map(|rank| Some(Rank { rank, voters: 3 }))
                .collect::<Vec<_>>()
        );
        // 10 bytes per entry, 2,000-byte snapshots: due 200 entries after each build.
        let builds = simulate(&ranked, 10_000, 10, 2_000);
        let mut all: Vec<(u64, usize)> = Vec::new();
        for (node, b) in builds.iter().enumerate() {
            assert!(b.len() >= 20, "node {node} built only {b:?}");
            for w in b.windows(2) {
                assert!(
                    w[1] - w[0] >= 100,
                    "node {node} built twice within a slot: {b:?}"
                );
                // Waits at most two more slots after it is due (200 entries).
                assert!(
                    w[1] - w[0] <= 200 + 2 * 100 + 25,
                    "node {node} starved: {b:?}"
                );
            }
            // The first build is small (no last size): any slot. Then only its own.
            for &i in &b[1..] {
                assert_eq!((i / 100) % 3, node as u64, "node {node} built at {i}");
            }
            all.extend(b[1..].iter().map(|&i| (i, node)));
        }
        all.sort();
        for w in all.windows(2) {
            if w[0].1 != w[1].1 {
                assert!(
                    w[1].0 - w[0].0 >= 75,
                    "builds of two nodes too close: {w:?}"
                );
            }
        }

        let unslotted = simulate(&[(None, None); 3], 10_000, 10, 2_000);
        assert!(unslotted[0].len() > 20);
        assert!(unslotted.iter().all(|b| *b == unslotted[0]));
    }

    /// Snapshots under `min_bytes`, learners and lone voters build whenever due; a due
    /// turn in another voter's slot defers, as do too few entries or bytes.
    #[test]
    fn what_a_policy_turn_decides() {
        let s = slots(2);
        let three = s.rank(&voters(&[1, 2, 3], &[]));
        let base = TurnInputs {
            applied: 1_050, // slot 10: 10 % 3 = 1, node 2's rank
            last_index: 900,
            written: 600,
            last_bytes: 1_200,
            slots: Some(s),
            rank: three,
        };
        assert_eq!(policy_turn(base), Turn::Build);
        let other = TurnInputs {
            applied: 1_150,
            last_index: 1_000,
            ..base
        };
        assert_eq!(policy_turn(other), Turn::OtherSlot { slot: 2, ours: 1 });
        assert_eq!(
            policy_turn(TurnInputs {
                last_bytes: 999,
                ..other
            }),
            Turn::Build,
            "a small snapshot takes no slot"
        );
        assert_eq!(
            s.rank(&voters(&[1, 3], &[2])),
            None,
            "a learner has no rank"
        );
        assert_eq!(
            policy_turn(TurnInputs {
                rank: None,
                ..other
            }),
            Turn::Build
        );
        let alone = s.rank(&voters(&[2], &[]));
        assert_eq!(alone, Some(Rank { rank: 0, voters: 1 }));
        assert_eq!(
            policy_turn(TurnInputs {
                rank: alone,
                ..other
            }),
            Turn::Build
        );
        assert_eq!(
            policy_turn(TurnInputs {
                last_index: 951,
                ..base
            }),
            Turn::FewEntries
        );
        assert_eq!(
            policy_turn(TurnInputs {
                written: 599,
                ..base
            }),
            Turn::FewBytes
        );
        // Without slots only the bytes count, as before slots.
        assert_eq!(
            policy_turn(TurnInputs {
                slots: None,
                last_index: 1_049,
                ..other
            }),
            Turn::Build
        );
    }

    /// A scan's raise counts only if no write to the state began since the scan read the
    /// floor, and none was running then: a deadline committed meanwhile may lie below what
    /// the scan found.
    #[test]
    fn a_scan_raises_the_floor_only_if_no_write_began_meanwhile() {
        let floor = Mutex::new(DeadlineFloor::default());
        let seen = floor.lock().unwrap().writes;
        drop(FloorWrite::begin(&floor)); // an apply began and ended during the scan
        floor.lock().unwrap().raise(seen, 500);
        assert_eq!(floor.lock().unwrap().at_ms, 0, "raised over a write");

        let seen = floor.lock().unwrap().writes;
        let w = FloorWrite::begin(&floor); // still running
        floor.lock().unwrap().raise(seen, 500);
        assert_eq!(floor.lock().unwrap().at_ms, 0, "raised during a write");
        // A count read while the write runs is unchanged until it ends: still no raise.
        let during = floor.lock().unwrap().writes;
        floor.lock().unwrap().raise(during, 500);
        assert_eq!(
            floor.lock().unwrap().at_ms,
            0,
            "raised with a count read mid-write"
        );
        w.lower(40);
        w.set(300);
        drop(w);
        assert_eq!(floor.lock().unwrap().at_ms, 300);

        let seen = floor.lock().unwrap().writes;
        floor.lock().unwrap().raise(seen, 200);
        assert_eq!(floor.lock().unwrap().at_ms, 300, "a raise never lowers");
        floor.lock().unwrap().raise(seen, 500);
        assert_eq!(floor.lock().unwrap().at_ms, 500);
    }
}
