//! The Raft log and Raft metadata on RocksDB (`RaftLogStorage`).
//!
//! Durability: openraft is told an append is flushed only after the WAL holding it is
//! fsynced. Unlike the upstream `log-rocks` example (one thread and one fsync per
//! append), appends are written at once (so they are readable when `append` returns, as
//! openraft requires) and their callbacks go to one WAL-sync thread, which drains every
//! callback queued so far and covers them all with a single `flush_wal(true)`. Under load
//! many appends share one fsync; idle, an append costs exactly one.
//!
//! The database runs with `manual_wal_flush` (`open_db`): an append's WAL record goes to
//! RocksDB's WAL buffer in this process, and `flush_wal(true)` writes that buffer to the
//! file and then fsyncs it. A callback is queued only after its append's write returned,
//! so its record is in the buffer that the next `flush_wal(true)` writes: what is
//! acknowledged is on disk (`tests/it/crash.rs` kills a process with SIGKILL right after
//! acknowledgements and finds every acknowledged entry). The async worker that appends
//! makes no system call for it; the sync thread makes one `write` per sync instead of
//! one per append. The state machine's table files still never get ahead of the WAL on
//! disk: a memtable switch writes the buffer out before it opens a new WAL file, and
//! with more than one column family a flush syncs the closed WAL files before its table
//! file counts (RocksDB's `SyncClosedWals`), so `sm.rs`'s crash recovery is unchanged.
//!
//! Reads: openraft reads every entry back right after appending it, once per follower
//! to replicate it (leader) and once to apply it (every node). The store keeps the most
//! recent appended entries (`RECENT_LOG_ENTRIES_MAX`) in memory, sharing their commands
//! (`LogEntry::cmd` is an `Arc`), and answers a read from them when they cover it; older
//! reads go to RocksDB. Its lock is never held across a RocksDB call. Decoding a batch of 256 reservations costs about as much as
//! applying it, so this removes three decodes per entry on the leader and one on each
//! follower. The upstream examples read every entry from storage.
//!
//! The vote is written with a synced write before `save_vote` returns (RocksDB writes
//! the WAL buffer first for a synced write). Truncation and purge need no sync of their
//! own: the WAL is one ordered file, so any later synced write makes them durable too,
//! and openraft tolerates their loss before that (with the WAL buffered in the process,
//! a crash of the process alone can now lose them too, which is the same case).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use prometheus_client::metrics::histogram::Histogram;
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::{cf, CF_LOG, CF_RAFT};
use crate::error::StoreError;
use crate::limits::{RECENT_LOG_ENTRIES_MAX, WAL_SYNC_QUEUE_MAX, WAL_SYNC_SLOW};
use crate::{codec, Entry, LogId, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// openraft's log store: cheap to clone (every clone shares the DB and the sync thread).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<WalSyncer>,
    recent: Arc<Mutex<Recent>>,
}

/// The newest appended entries, contiguous by index and ending at the log's last entry
/// (every append, truncation and purge drops what it removes before its RocksDB write
/// and an append adds its entries after it), so any range it covers reads the same as
/// RocksDB.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index())
    }

    /// Entries `[lo, hi)` (`hi` `None` = to the end) if all of them are here.
    fn get(&self, lo: u64, hi: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let end = first + self.entries.len() as u64; // one past the last entry held
        let hi = hi.unwrap_or(end);
        if lo < first || hi > end {
            return None;
        }
        if lo >= hi {
            return Some(Vec::new());
        }
        let from = (lo - first) as usize;
        let to = (hi - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }

    /// Forgets every entry with index `>= from`.
    fn truncate_from(&mut self, from: u64) {
        if let Some(first) = self.first_index() {
            let keep = from.saturating_sub(first).min(self.entries.len() as u64) as usize;
            self.entries.truncate(keep);
        }
    }

    /// Forgets every entry with index `<= upto`.
    fn purge_upto(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.index() <= upto) {
            self.entries.pop_front();
        }
    }

    /// Adds entries just written (ascending, contiguous), keeping the newest
    /// `RECENT_LOG_ENTRIES_MAX`. An append that does not extend the held run (after a
    /// truncation, or the first after a restart) restarts it.
    fn push(&mut self, appended: Vec<Entry>) {
        let Some(first) = appended.first().map(|e| e.index()) else {
            return;
        };
        self.truncate_from(first);
        let contiguous = match self.entries.back() {
            Some(last) => last.index() + 1 == first,
            None => true,
        };
        if !contiguous {
            self.entries.clear();
        }
        self.entries.extend(appended);
        while self.entries.len() > RECENT_LOG_ENTRIES_MAX {
            self.entries.pop_front();
        }
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        cf(&db, CF_LOG)?;
        cf(&db, CF_RAFT)?;
        let syncer = Arc::new(WalSyncer::start(db.clone())?);
        Ok(LogStore {
            db,
            syncer,
            recent: Arc::default(),
        })
    }

    /// WAL fsyncs done for appends since open (appends per sync shows the batching).
    pub fn wal_syncs(&self) -> u64 {
        self.syncer.stats.syncs.load(Ordering::Relaxed)
    }

    /// Time spent in those fsyncs since open, microseconds (with `wal_syncs`, the mean).
    pub fn wal_sync_micros(&self) -> u64 {
        self.syncer.stats.micros.load(Ordering::Relaxed)
    }

    /// Each of those fsyncs' duration, seconds (a clone sharing the counts).
    pub fn wal_sync_histogram(&self) -> Histogram {
        self.syncer.stats.seconds.clone()
    }

    /// Those fsyncs that took `WAL_SYNC_SLOW` or longer.
    pub fn wal_syncs_slow(&self) -> u64 {
        self.syncer.stats.slow.load(Ordering::Relaxed)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(cf(&self.db, CF_RAFT)?, key)? {
            Some(b) => Ok(Some(codec::decode(key, &b)?)),
            None => Ok(None),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_entries(&self, lo: u64, hi: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let hi_excl = match hi {
            Bound::Excluded(h) => Some(h),
            Bound::Included(h) => Some(h.saturating_add(1)),
            Bound::Unbounded => None,
        };
        if let Some(hit) = self.recent().get(lo, hi_excl) {
            return Ok(hit);
        }
        self.read_entries_from_db(lo, hi)
    }

    fn read_entries_from_db(&self, lo: u64, hi: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let mut ro = rocksdb::ReadOptions::default();
        match hi {
            Bound::Excluded(h) => ro.set_iterate_upper_bound(h.to_be_bytes().to_vec()),
            Bound::Included(h) => {
                if let Some(x) = h.checked_add(1) {
                    ro.set_iterate_upper_bound(x.to_be_bytes().to_vec());
                }
            }
            Bound::Unbounded => {}
        }
        let start = lo.to_be_bytes();
        let it = self.db.iterator_cf_opt(
            cf(&self.db, CF_LOG)?,
            ro,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            let entry: Entry = codec::decode(&k, &v)?;
            let index = index_of(&k)?;
            if entry.index() != index {
                return Err(StoreError::Corrupt {
                    key: format!("log/{index}"),
                    reason: format!("holds entry {}", entry.index()),
                });
            }
            out.push(entry);
        }
        Ok(out)
    }
}

fn index_of(key: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        key: crate::keys::display(key),
        reason: "log key is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let lo = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => match x.checked_add(1) {
                Some(v) => v,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        Ok(self.read_entries(lo, range.end_bound().cloned())?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, CF_LOG)?, rocksdb::IteratorMode::End);
        let last = match it.next() {
            None => None,
            Some(item) => {
                let (k, v) = item.map_err(StoreError::from)?;
                let entry: Entry = codec::decode(&k, &v)?;
                Some(entry.log_id())
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = codec::encode("vote", vote)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(cf(&db, CF_RAFT)?, KEY_VOTE, bytes, &wo)?;
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let cf_raft = cf(&self.db, CF_RAFT)?;
        match committed {
            Some(c) => self
                .db
                .put_cf(cf_raft, KEY_COMMITTED, codec::encode("committed", &c)?),
            None => self.db.delete_cf(cf_raft, KEY_COMMITTED),
        }
        .map_err(StoreError::from)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta(KEY_COMMITTED)?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf_log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut appended = Vec::new();
        for entry in entries {
            batch.put_cf(
                cf_log,
                entry.index().to_be_bytes(),
                codec::encode("log entry", &entry)?,
            );
            appended.push(entry);
        }
        // Not synced here: the entries must be readable when this returns, and the sync
        // thread makes them durable before openraft hears that they are. The cache never
        // holds an index the write replaces (dropped before it, added after it), so a
        // reader in between misses the cache and reads RocksDB; the lock is never held
        // across a RocksDB call (a write stall must not hold up the readers). openraft
        // calls append, truncate and purge from one task, so they do not interleave.
        if let Some(first) = appended.first().map(|e| e.index()) {
            self.recent().truncate_from(first);
        }
        self.db.write(batch).map_err(StoreError::from)?;
        self.recent().push(appended);
        self.syncer.submit(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        let mut batch = WriteBatch::default();
        let cf_log = cf(&self.db, CF_LOG)?;
        batch.delete_range_cf(cf_log, from.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(cf_log, u64::MAX.to_be_bytes());
        self.recent().truncate_from(from);
        self.db.write(batch).map_err(StoreError::from)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // One batch: the purge marker and the deletion land together.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf(&self.db, CF_RAFT)?,
            KEY_LAST_PURGED,
            codec::encode("last purged", &log_id)?,
        );
        let end = log_id.index().saturating_add(1);
        batch.delete_range_cf(cf(&self.db, CF_LOG)?, 0u64.to_be_bytes(), end.to_be_bytes());
        self.recent().purge_upto(log_id.index());
        self.db.write(batch).map_err(StoreError::from)?;
        Ok(())
    }
}

/// One thread that fsyncs the WAL for every append callback queued since its last sync.
struct WalSyncer {
    tx: Option<SyncSender<IOFlushed<TypeConfig>>>,
    db: Arc<DB>,
    stats: Arc<SyncStats>,
    thread: Option<JoinHandle<()>>,
}

/// What the WAL syncs cost (exported at `/metrics`).
struct SyncStats {
    syncs: AtomicU64,
    micros: AtomicU64,
    slow: AtomicU64,
    /// Each sync's duration (`stockade_wal_sync_duration_seconds`).
    seconds: Histogram,
}

impl Default for SyncStats {
    fn default() -> Self {
        SyncStats {
            syncs: AtomicU64::default(),
            micros: AtomicU64::default(),
            slow: AtomicU64::default(),
            seconds: crate::timing::stage_histogram(),
        }
    }
}

impl SyncStats {
    /// Syncs the WAL, counts and times it; a slow one is logged.
    #[allow(clippy::disallowed_methods)] // times an fsync for /metrics; apply never reads a clock
    fn sync(&self, db: &DB, covers: usize) -> Result<(), rocksdb::Error> {
        let started = std::time::Instant::now();
        let result = db.flush_wal(true);
        let took = started.elapsed();
        self.seconds.observe(took.as_secs_f64());
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if took >= WAL_SYNC_SLOW {
            self.slow.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                appends = covers,
                "slow WAL sync: every append it covers waited this long"
            );
        }
        result
    }
}

impl WalSyncer {
    fn start(db: Arc<DB>) -> Result<Self, StoreError> {
        let (tx, rx) = sync_channel(WAL_SYNC_QUEUE_MAX);
        let thread_db = db.clone();
        let stats = Arc::new(SyncStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("stockade-wal-sync".into())
            .spawn(move || sync_loop(&thread_db, &rx, &thread_stats))?;
        Ok(WalSyncer {
            tx: Some(tx),
            db,
            stats,
            thread: Some(thread),
        })
    }

    fn submit(&self, callback: IOFlushed<TypeConfig>) {
        let overflow = match &self.tx {
            Some(tx) => match tx.try_send(callback) {
                Ok(()) => None,
                Err(TrySendError::Full(cb)) | Err(TrySendError::Disconnected(cb)) => Some(cb),
            },
            None => Some(callback),
        };
        // Queue full (or thread gone): sync on this thread rather than block or drop.
        if let Some(cb) = overflow {
            cb.io_completed(self.stats.sync(&self.db, 1).map_err(io::Error::other));
        }
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sync_loop(db: &DB, rx: &Receiver<IOFlushed<TypeConfig>>, stats: &SyncStats) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = stats.sync(db, pending.len());
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL sync failed; the node must stop");
        }
        for cb in pending {
            cb.io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::other(e.to_string())),
            );
        }
    }
}
