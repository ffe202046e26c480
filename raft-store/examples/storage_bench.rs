//! Prints what the storage layer does per second on this disk, side by side with the
//! disk's own fdatasync rate (the physical reference). Not a test: figures only.
//!
//! ```sh
//! cargo run --release -p stockade-raft-store --example storage_bench -- [DIR] [N]
//! ```
//! DIR defaults to `./target/storage-bench` (on the disk under test; it is removed
//! afterwards), N (appends and applies per run) to 5000.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use stockade_raft_store::types::{Command, LogEntry, Product, SaleSpec};
use stockade_raft_store::{open, Entry, StateMachineStore, StoreOptions, TypeConfig};

fn log_id(i: u64) -> stockade_raft_store::LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, i)
}

fn reserve(i: u64) -> LogEntry {
    LogEntry {
        at_ms: 2_000,
        cmd: Command::Reserve {
            sale_id: "bench".into(),
            user_id: format!("user-{i}"),
            qty: 1,
            request_id: format!("req-{i}"),
        }
        .into(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Applies `entries`, `per_call` of them per apply call, and prints `commands` per second.
#[allow(clippy::disallowed_methods)] // a benchmark reads the clock; apply never does
async fn apply_timed(
    sm: &mut StateMachineStore,
    entries: &[Entry],
    per_call: usize,
    label: &str,
    commands: u64,
) {
    let t = Instant::now();
    for chunk in entries.chunks(per_call) {
        sm.apply(stream::iter(chunk.iter().cloned().map(|e| Ok((e, None)))))
            .await
            .unwrap();
    }
    let el = t.elapsed();
    println!(
        "{:<44} {:>12.0} {:>10} {:>10} {:>14}",
        label,
        commands as f64 / el.as_secs_f64(),
        "-",
        "-",
        "0"
    );
}

#[allow(clippy::disallowed_methods)] // a benchmark reads the clock; apply never does
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/storage-bench".into()),
    );
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5_000);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The disk's own reference: write 256 bytes + fdatasync, as a WAL append would.
    let fsyncs = (n / 5).max(200);
    let mut f = std::fs::File::create(dir.join("fdatasync.probe")).unwrap();
    let t = Instant::now();
    for _ in 0..fsyncs {
        f.write_all(&[7u8; 256]).unwrap();
        f.sync_data().unwrap();
    }
    let fdatasync_per_s = fsyncs as f64 / t.elapsed().as_secs_f64();

    let (mut log, mut sm) = open(&StoreOptions::new(dir.join("store"))).unwrap();
    println!(
        "{:<44} {:>12} {:>10} {:>10} {:>14}",
        "operation", "ops/s", "p50 µs", "p99 µs", "fsyncs/op"
    );
    println!(
        "{:<44} {:>12.0} {:>10} {:>10} {:>14}",
        "disk: write 256 B + fdatasync", fdatasync_per_s, "-", "-", "1"
    );

    // One append at a time, each waiting for its fsync (no batching possible).
    let mut lat = Vec::with_capacity(n as usize);
    let syncs0 = log.wal_syncs();
    let t = Instant::now();
    for i in 1..=n {
        let s = Instant::now();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(
            [Entry::new_normal(log_id(i), reserve(i))],
            IOFlushed::signal(tx),
        )
        .await
        .unwrap();
        rx.await.unwrap().unwrap();
        lat.push(s.elapsed());
    }
    let el = t.elapsed();
    lat.sort();
    let per = (log.wal_syncs() - syncs0) as f64 / n as f64;
    println!(
        "{:<44} {:>12.0} {:>10.0} {:>10.0} {:>14.3}",
        "log append, 1 entry, wait for durable",
        n as f64 / el.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        per
    );

    // Pipelined appends, as openraft issues them (next append before the last fsync).
    let syncs0 = log.wal_syncs();
    let t = Instant::now();
    let mut waits = Vec::with_capacity(n as usize);
    for i in n + 1..=2 * n {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(
            [Entry::new_normal(log_id(i), reserve(i))],
            IOFlushed::signal(tx),
        )
        .await
        .unwrap();
        waits.push(rx);
    }
    for rx in waits {
        rx.await.unwrap().unwrap();
    }
    let el = t.elapsed();
    let per = (log.wal_syncs() - syncs0) as f64 / n as f64;
    println!(
        "{:<44} {:>12.0} {:>10} {:>10} {:>14.3}",
        "log append, 1 entry, pipelined",
        n as f64 / el.as_secs_f64(),
        "-",
        "-",
        per
    );

    // Apply: reservations against one sale, one entry per apply call and 64 per call.
    let spec = SaleSpec {
        id: "bench".into(),
        product: Product {
            sku: "B".into(),
            name: "Bench".into(),
            ..Product::default()
        },
        list_price_minor: 1_000,
        sale_price_minor: 500,
        currency: "EUR".into(),
        quantity: 10_000_000,
        starts_at_ms: 1_000,
        ends_at_ms: 10_000_000,
        per_user_limit: 1,
        hold_ttl_ms: 60_000,
        payment_window_ms: 60_000,
    };
    let mut idx = 1;
    let mut next = |le: LogEntry| {
        idx += 1;
        Entry::new_normal(log_id(idx), le)
    };
    let first = next(LogEntry {
        at_ms: 0,
        cmd: Command::CreateSale(Box::new(spec)).into(),
    });
    sm.apply(stream::iter([Ok((first, None))])).await.unwrap();
    for per_call in [1usize, 64] {
        let entries: Vec<Entry> = (0..n)
            .map(|i| next(reserve(i + per_call as u64 * 1_000_000)))
            .collect();
        let label = format!("apply reserve, {per_call} entries per apply call");
        apply_timed(&mut sm, &entries, per_call, &label, n).await;
    }
    // The node's shape under load: group-commit entries of `BATCH` reservations (each a
    // new user and request id), `ENTRIES_PER_CALL` entries per apply call. Three rounds,
    // each of `n * 20` reservations; the figure is the apply path's own cost per command
    // (the rest of a node's work is not in it).
    const BATCH: u64 = 256;
    const ENTRIES_PER_CALL: usize = 8;
    let total = (n * 20).div_ceil(BATCH) * BATCH;
    for round in 1..=3u64 {
        let entries: Vec<Entry> = (0..total / BATCH)
            .map(|e| {
                let base = round * 100_000_000 + e * BATCH;
                next(LogEntry {
                    at_ms: 2_000,
                    cmd: Command::Batch(
                        (base..base + BATCH)
                            .map(|i| std::sync::Arc::unwrap_or_clone(reserve(i).cmd))
                            .collect(),
                    )
                    .into(),
                })
            })
            .collect();
        let label = format!("apply reserve, {BATCH}/entry, {ENTRIES_PER_CALL}/call, round {round}");
        apply_timed(&mut sm, &entries, ENTRIES_PER_CALL, &label, total).await;
    }
    drop((log, sm));
    let _ = std::fs::remove_dir_all(&dir);
}
