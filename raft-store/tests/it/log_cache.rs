//! The log store's in-memory cache of recent entries (`store::log`) must never change
//! what a read returns: a long random run of appends (overwrites after a truncation),
//! truncations, purges and reopenings, checked after every step against a plain model
//! of the log, with reads that fall inside the cache, straddle its start, and lie wholly
//! before it (more entries are appended than the cache holds).

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use stockade_raft_store::limits::RECENT_LOG_ENTRIES_MAX;
use stockade_raft_store::types::{Command, LogEntry};
use stockade_raft_store::{open, Entry, LogStore, StoreOptions, TypeConfig};
use tempfile::TempDir;

/// A small deterministic generator (the run must be reproducible from its seed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// The entry at `index` written in `term`; its stamp names both, so a stale entry read
/// back (an older term's, or a neighbour's) cannot compare equal.
fn entry(term: u64, index: u64) -> Entry {
    let log_id = openraft::testing::log_id::<TypeConfig>(term, 1, index);
    Entry::new_normal(
        log_id,
        LogEntry::new(term * 1_000_000 + index, Command::Tick),
    )
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

/// Reads `[lo, hi)` (`hi` `None` = unbounded) and compares with the model.
async fn check(log: &mut LogStore, model: &[Entry], purged: u64, lo: u64, hi: Option<u64>) {
    let mut reader = log.get_log_reader().await;
    let got = match hi {
        Some(h) => reader.try_get_log_entries(lo..h).await.unwrap(),
        None => reader.try_get_log_entries(lo..).await.unwrap(),
    };
    let want: Vec<Entry> = model
        .iter()
        .filter(|e| {
            let i = e.log_id.index;
            i > purged && i >= lo && hi.is_none_or(|h| i < h)
        })
        .cloned()
        .collect();
    assert_eq!(got, want, "read [{lo}, {hi:?}) after purge up to {purged}");
}

async fn run(seed: u64) {
    let dir = TempDir::new().unwrap();
    let opts = StoreOptions::new(dir.path());
    let (mut log, mut sm) = open(&opts).unwrap();
    let mut rng = Lcg(seed);
    // model[i] is the entry at index i + 1; `purged` entries at the front are gone.
    let mut model: Vec<Entry> = Vec::new();
    let mut purged = 0u64;
    let mut term = 1u64;
    // Steps whose log outgrew the cache, so that the read before its reach hit RocksDB.
    let mut outgrown = 0;
    for _ in 0..600 {
        let last = model.last().map_or(purged, |e| e.log_id.index);
        match rng.below(20) {
            // Appends, mostly: the cache must fill past its bound.
            0..=13 => {
                let n = 1 + rng.below(24);
                let batch: Vec<Entry> = (last + 1..=last + n).map(|i| entry(term, i)).collect();
                model.extend(batch.iter().cloned());
                append(&mut log, batch).await;
            }
            // A new term truncates an uncommitted suffix; later appends overwrite it.
            14 | 15 if last > purged => {
                let keep = purged + rng.below(last - purged + 1);
                let keep_id = model
                    .iter()
                    .find(|e| e.log_id.index == keep)
                    .map(|e| e.log_id);
                log.truncate_after(keep_id).await.unwrap();
                model.retain(|e| e.log_id.index <= keep);
                term += 1;
            }
            16 | 17 if last > purged + 1 => {
                // At most a quarter of the live log, as openraft keeps a tail.
                let upto = purged + 1 + rng.below((last - purged - 1) / 4 + 1);
                let id = model
                    .iter()
                    .find(|e| e.log_id.index == upto)
                    .map(|e| e.log_id)
                    .unwrap();
                log.purge(id).await.unwrap();
                model.retain(|e| e.log_id.index > upto);
                purged = upto;
            }
            // A restart: the cache starts empty, every read goes to RocksDB first.
            18 => {
                drop((log, sm));
                (log, sm) = open(&opts).unwrap();
            }
            _ => {}
        }
        let last = model.last().map_or(purged, |e| e.log_id.index);
        let first = purged + 1;
        let span = last + 1 - first;
        // Everything; the newest few (in the cache); one before the cache's reach;
        // a random range; an unbounded tail.
        check(&mut log, &model, purged, first, Some(last + 1)).await;
        check(
            &mut log,
            &model,
            purged,
            last.saturating_sub(4).max(first),
            Some(last + 1),
        )
        .await;
        if span > RECENT_LOG_ENTRIES_MAX as u64 + 10 {
            outgrown += 1;
        }
        let old = last
            .saturating_sub(RECENT_LOG_ENTRIES_MAX as u64 + 10)
            .max(first);
        check(&mut log, &model, purged, old, Some(old + 3)).await;
        let lo = first + rng.below(span + 1);
        let hi = lo + rng.below(40);
        check(&mut log, &model, purged, lo, Some(hi)).await;
        check(&mut log, &model, purged, lo, None).await;
    }
    assert!(
        outgrown >= 50,
        "the run must outgrow the cache often (only {outgrown} steps did)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_equal_the_log_through_appends_truncations_purges_and_restarts() {
    for seed in [1, 7, 2026] {
        run(seed).await;
    }
}
