//! The state machine on RocksDB (`RaftStateMachine`) and its snapshots.
//!
//! Apply: entries are collected, then run through [`Machine`] on a blocking thread
//! against a [`Txn`] over the live column family; the whole call's writes, with
//! `last_applied`, the membership and the clock, go to RocksDB as one `WriteBatch`, and
//! only then are the responses sent. The batch is not fsynced: every applied entry is
//! already durable in the log, and the single WAL orders this batch before any later
//! purge, so a crash can only make the node re-apply a suffix of the log.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteBatch, WriteOptions, DB};

use super::snapshot::{self, SnapshotReader, SnapshotWriter};
use super::{cf, PointInTime, StateView, CF_SM};
use crate::error::StoreError;
use crate::kv::Pair;
use crate::kv::{KvRead, Txn, Writes};
use crate::machine::Machine;
use crate::types::{Response, SaleRecord};
use crate::{codec, keys, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, File>;

/// openraft's state machine: cheap to clone; clones share the DB.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    /// No live deadline in the committed state is earlier than this (milliseconds);
    /// where deadline scans start (see `Machine::deadline_floor`). Kept in memory only:
    /// 0 after a start or a snapshot install, which is always true, and the first
    /// `Tick` raises it again.
    deadline_floor: Arc<AtomicU64>,
    /// Per sale, the waitlist floor (`Machine::with_wait_floors`); only apply uses it.
    wait_floors: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl StateMachineStore {
    pub(crate) fn new(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, StoreError> {
        cf(&db, CF_SM)?;
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = StateMachineStore {
            db,
            snapshot_dir,
            deadline_floor: Arc::default(),
            wait_floors: Arc::default(),
        };
        // The second half of the conservation pair: what was written is checked on load.
        check_sales(&sm.view())?;
        Ok(sm)
    }

    /// A read view of the live state (queries read the last applied batch, atomically).
    pub fn view(&self) -> StateView {
        StateView {
            db: self.db.clone(),
        }
    }

    /// A lower bound of every pending deadline (for the ticker's look at the next one).
    pub fn deadline_floor(&self) -> u64 {
        self.deadline_floor.load(Ordering::Acquire)
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

    /// RocksDB's memory now (memtables, block cache, table readers).
    pub fn db_memory(&self) -> super::DbMemory {
        super::db_memory(&self.db)
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
        {
            let mut machine = Machine::load(&mut txn)?
                .with_deadline_floor(self.deadline_floor())
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
            machine.finish()?;
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
        self.deadline_floor.fetch_min(floor, Ordering::AcqRel);
        self.commit(txn.into_writes(), false)?;
        self.deadline_floor.store(floor, Ordering::Release);
        *self.wait_floors.lock().unwrap_or_else(|p| p.into_inner()) = wait_floors;
        Ok(responses)
    }

    fn commit(&self, writes: Writes, sync: bool) -> Result<(), StoreError> {
        let cf_sm = cf(&self.db, CF_SM)?;
        let mut batch = WriteBatch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.put_cf(cf_sm, k, v),
                None => batch.delete_cf(cf_sm, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    fn build_blocking(&self) -> Result<(SnapshotMeta, PathBuf), StoreError> {
        let pit = PointInTime::new(&self.db);
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
        self.deadline_floor.store(0, Ordering::Release);
        self.wait_floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(cf(&self.db, CF_SM)?, &ingest, vec![&sst])?;
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
        Ok(())
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, io::Error> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)??)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        let (meta, path) = blocking(move || this.build_blocking()).await?;
        tracing::info!(path = %path.display(), last = ?meta.last_log_id, "snapshot built");
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
        let this = self.clone();
        let responses = blocking(move || this.apply_blocking(&batch)).await?;
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
