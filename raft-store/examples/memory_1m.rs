//! Resident memory of the storage layer while the state grows to N orders (default one
//! million), each with its hold and two idempotency records (reserve and checkout), and
//! while a snapshot of all of it is built. Not a test: figures only.
//!
//! ```sh
//! cargo run --release -p stockade-raft-store --example memory_1m -- [DIR] [N]
//! ```
//! Then, in a fresh process of itself (so its peak is the install's alone), it installs
//! the snapshot into an empty store, as a follower that catches up does, and prints that
//! process's resident memory before and after and its peak (`VmHWM`). The same mode on
//! its own: `memory_1m install SNAPSHOT_FILE DIR`.
//! Commands are applied as the node applies them: group-commit entries of
//! `COMMANDS_PER_ENTRY` commands, `ENTRIES_PER_APPLY` entries per apply call. DIR defaults
//! to `./target/memory-1m` (removed afterwards). What this leaves out of a node's memory:
//! openraft's in-memory log cache and the API's buffers, both bounded by the node's named
//! limits, not by the state size.

use std::time::Instant;

use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use stockade_raft_store::types::{Command, LogEntry, Product, SaleSpec};
use stockade_raft_store::{open, Entry, StoreOptions, TypeConfig};

/// Commands per log entry (the node's default group-commit batch is 256).
const COMMANDS_PER_ENTRY: u64 = 256;
/// Entries per apply call.
const ENTRIES_PER_APPLY: usize = 16;
/// Users per round of reserves then checkouts.
const CHUNK: u64 = COMMANDS_PER_ENTRY * ENTRIES_PER_APPLY as u64;
/// A line of the table every this many orders.
const REPORT_EVERY: u64 = 100_000;

fn log_id(i: u64) -> stockade_raft_store::LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, i)
}

/// Resident set size of this process, MiB (Linux `/proc/self/status`).
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory line of `/proc/self/status` (`VmRSS:`, `VmHWM:` for the peak), MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Installs the snapshot `file` into a new store under `dir` and prints what that cost.
#[allow(clippy::disallowed_methods)] // a benchmark reads the clock; apply never does
async fn install_only(file: &std::path::Path, dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    let (_log, mut sm) = open(&StoreOptions::new(dir)).unwrap();
    let (_, meta) = stockade_raft_store::store::snapshot::SnapshotReader::open(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap();
    let before = rss_mib();
    let t = Instant::now();
    sm.install_snapshot(&meta, std::fs::File::open(file).unwrap())
        .await
        .unwrap();
    println!(
        "install of {:.1} MiB of snapshot into an empty store: {:.1} s; rss before {:.1} MiB, \
         after {:.1} MiB, peak of this process {:.1} MiB",
        std::fs::metadata(file).map_or(f64::NAN, |m| m.len() as f64 / (1024.0 * 1024.0)),
        t.elapsed().as_secs_f64(),
        before,
        rss_mib(),
        status_mib("VmHWM:")
    );
    drop(sm);
    let _ = std::fs::remove_dir_all(dir);
}

fn dir_mib(dir: &std::path::Path) -> f64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

#[allow(clippy::disallowed_methods)] // a benchmark reads the clock; apply never does
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("install") {
        let (Some(file), Some(dir)) = (args.get(2), args.get(3)) else {
            panic!("usage: memory_1m install SNAPSHOT_FILE DIR");
        };
        install_only(file.as_ref(), dir.as_ref()).await;
        return;
    }
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/memory-1m".into()),
    );
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_log, mut sm) = open(&StoreOptions::new(dir.join("store"))).unwrap();

    let spec = SaleSpec {
        id: "mem".into(),
        product: Product {
            sku: "M".into(),
            name: "Memory".into(),
            ..Product::default()
        },
        list_price_minor: 1_000,
        sale_price_minor: 500,
        currency: "EUR".into(),
        quantity: u32::try_from(n).expect("N fits a sale's quantity"),
        starts_at_ms: 1_000,
        ends_at_ms: 10_000_000,
        per_user_limit: 1,
        // The clock stays at 2 s: nothing expires during the run.
        hold_ttl_ms: 60_000,
        payment_window_ms: 60_000,
    };
    let mut idx = 0;
    // Created on its own: an operator command is not accepted inside a batch.
    idx += 1;
    let create = Entry::new_normal(
        log_id(idx),
        LogEntry {
            at_ms: 0,
            cmd: Command::CreateSale(Box::new(spec)).into(),
        },
    );
    sm.apply(stream::iter([Ok((create, None))])).await.unwrap();
    assert!(
        stockade_raft_store::query::sale(&sm.view(), "mem")
            .unwrap()
            .is_some(),
        "the sale was not created"
    );

    let mut apply = |cmds: Vec<Command>| {
        idx += 1;
        Entry::new_normal(
            log_id(idx),
            LogEntry {
                at_ms: 2_000,
                cmd: Command::Batch(cmds).into(),
            },
        )
    };
    println!("rss at start: {:.1} MiB", rss_mib());
    println!(
        "{:>10} {:>12} {:>12} {:>12}",
        "orders", "rss MiB", "data MiB", "elapsed s"
    );
    let t = Instant::now();
    let mut done = 0u64;
    while done < n {
        let chunk = (n - done).min(CHUNK);
        let users: Vec<u64> = (done..done + chunk).collect();
        // Reserve, then check out what was granted: each user ends with one order.
        let reserves: Vec<Entry> = users
            .chunks(COMMANDS_PER_ENTRY as usize)
            .map(|us| {
                apply(
                    us.iter()
                        .map(|u| Command::Reserve {
                            sale_id: "mem".into(),
                            user_id: format!("user-{u}"),
                            qty: 1,
                            request_id: format!("reserve-{u}"),
                        })
                        .collect(),
                )
            })
            .collect();
        sm.apply(stream::iter(reserves.into_iter().map(|e| Ok((e, None)))))
            .await
            .unwrap();
        // Holds and orders share one id sequence from 1: chunk k's holds start after the
        // k earlier chunks' holds and orders, so user u got hold 1 + u + k * CHUNK.
        let checkouts: Vec<Entry> = users
            .chunks(COMMANDS_PER_ENTRY as usize)
            .map(|us| {
                apply(
                    us.iter()
                        .map(|u| Command::Checkout {
                            user_id: format!("user-{u}"),
                            hold_id: 1 + u + CHUNK * (u / CHUNK),
                            request_id: format!("checkout-{u}"),
                        })
                        .collect(),
                )
            })
            .collect();
        sm.apply(stream::iter(checkouts.into_iter().map(|e| Ok((e, None)))))
            .await
            .unwrap();
        let before = done;
        done += chunk;
        if done / REPORT_EVERY > before / REPORT_EVERY || done == n {
            println!(
                "{:>10} {:>12.1} {:>12.1} {:>12.1}",
                done,
                rss_mib(),
                dir_mib(&dir),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let view = sm.view();
    let sale = stockade_raft_store::query::sale(&view, "mem")
        .unwrap()
        .expect("sale");
    println!("sale counters after: {:?}", sale.counters);
    assert_eq!(
        u64::from(sale.counters.awaiting_payment),
        n,
        "every user should hold one order awaiting payment"
    );
    let t = Instant::now();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    println!(
        "snapshot of {} orders built in {:.1} s; rss after: {:.1} MiB",
        n,
        t.elapsed().as_secs_f64(),
        rss_mib()
    );
    drop(snap);
    let file = stockade_raft_store::store::snapshot::latest(sm.snapshot_dir())
        .unwrap()
        .expect("the snapshot just built");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("install")
        .arg(&file)
        .arg(dir.join("installed"))
        .status()
        .unwrap();
    assert!(status.success(), "the install process failed: {status}");
    drop(sm);
    let _ = std::fs::remove_dir_all(&dir);
}
