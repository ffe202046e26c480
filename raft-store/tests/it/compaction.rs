//! A manual compaction (`stockctl compact`) leaves the state as it was, and runs on
//! RocksDB's compaction threads at `StoreOptions::compaction_priority`.
//!
//! RocksDB's thread pools are process-wide and a lowered pool stays lowered, so each
//! priority is checked in a test of its own: the README's test command (nextest) runs
//! every test in a process of its own.

#![cfg(target_os = "linux")]

use stockade_raft_store::{open, CompactionPriority, StoreOptions};
use tempfile::TempDir;

use crate::snapshot::{apply_all, entries, process_nice, workload};

/// The nice value of every thread of this process named `name` (none if there is none).
fn nice_of_threads(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
    }
    out
}

async fn compacts_at(priority: CompactionPriority, want_nice: i32) {
    let dir = TempDir::new().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.compaction_priority = priority;
    let (_log, mut sm) = open(&opts).unwrap();
    // Holds expire and records are released in it: deletes as well as puts.
    apply_all(&mut sm, entries(1, &workload(600))).await;
    let before = sm.dump().unwrap();
    let store = sm.clone();
    let c = tokio::task::spawn_blocking(move || store.compact_blocking())
        .await
        .unwrap()
        .unwrap()
        .expect("no other compaction runs");
    assert!(
        c.sst_bytes_after > 0,
        "the flushed state is in tables: {c:?}"
    );
    assert!(
        sm.dump().unwrap() == before,
        "a compaction changed the state"
    );
    let nice = nice_of_threads("rocksdb:low");
    assert!(!nice.is_empty(), "no compaction thread found");
    assert!(
        nice.iter().all(|n| *n == want_nice),
        "compaction threads at nice {nice:?}, want {want_nice}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_keeps_the_state_and_runs_at_low_priority() {
    // RocksDB's `CpuPriority::kLow` is `setpriority(…, 19)`.
    compacts_at(CompactionPriority::Low, 19).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_normal_priority_compactions_keep_the_nodes_own() {
    compacts_at(CompactionPriority::Normal, process_nice()).await;
}

/// `/metrics`' view of whether compactions keep up: a flushed state is a level-0 file
/// until a compaction moves it down; nothing is delayed or stopped meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_health_counts_level0_files_until_a_compaction() {
    let dir = TempDir::new().unwrap();
    let opts = StoreOptions::new(dir.path());
    {
        let (_log, mut sm) = open(&opts).unwrap();
        apply_all(&mut sm, entries(1, &workload(300))).await;
        assert_eq!(sm.compaction_health().l0_files, 0, "all in the memtable");
    } // closing flushes the memtable (its writes bypass the WAL) into a level-0 file
    let (_log, sm) = open(&opts).unwrap();
    let before = sm.compaction_health();
    assert!(before.l0_files >= 1, "{before:?}");
    assert_eq!(
        (before.delayed_write_rate, before.write_stopped),
        (0, false)
    );
    let store = sm.clone();
    tokio::task::spawn_blocking(move || store.compact_blocking())
        .await
        .unwrap()
        .unwrap()
        .expect("no other compaction runs");
    let after = sm.compaction_health();
    assert_eq!(after.l0_files, 0, "{after:?}");
}
