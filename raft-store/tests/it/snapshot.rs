//! Snapshots: round trip between stores, consistency while apply runs, corruption,
//! restart without replay, and the file format's golden bytes.

use std::io::{Read, Seek, Write};
use std::time::Duration;

use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use stockade_raft_store::kv::MemKv;
use stockade_raft_store::machine::apply_to_mem;
use stockade_raft_store::store::snapshot::{SnapshotReader, SnapshotWriter};
use stockade_raft_store::types::*;
use stockade_raft_store::{keys, open, Entry, LogId, StateMachineStore, StoreOptions, TypeConfig};
use tempfile::TempDir;

use crate::common::*;

pub fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(1, 1, index)
}

/// A deterministic mixed workload: a sale, then reservations, checkouts, payments,
/// releases, waitlist joins and ticks from 40 users (many of them rejected, on purpose).
pub fn workload(n: u64) -> Vec<LogEntry> {
    let mut s = spec(30);
    s.per_user_limit = 3;
    s.hold_ttl_ms = 400;
    s.payment_window_ms = 600;
    let mut out = vec![LogEntry {
        at_ms: 0,
        cmd: Command::CreateSale(Box::new(s)).into(),
    }];
    for i in 0..n {
        let at = 1_000 + i * 7;
        let user = format!("u{}", i % 40);
        let req = format!("r{i}");
        let guess = (i / 3).max(1);
        let cmd = match i % 9 {
            0 | 1 | 4 => reserve(&user, 1 + (i % 2) as u32, &req),
            2 => checkout(&user, guess, &req),
            3 => pay(&user, guess, 49_900, &format!("p{i}"), &req),
            5 => release(&user, guess, &req),
            6 => join(&user, 1, &req),
            7 => Command::Tick,
            _ => cancel(&user, guess, &req),
        };
        out.push(LogEntry::new(at, cmd));
    }
    out
}

pub fn entries(from_index: u64, log: &[LogEntry]) -> Vec<Entry> {
    log.iter()
        .enumerate()
        .map(|(i, le)| Entry::new_normal(log_id(from_index + i as u64), le.clone()))
        .collect()
}

pub async fn apply_all(sm: &mut StateMachineStore, batch: Vec<Entry>) {
    sm.apply(stream::iter(batch.into_iter().map(|e| Ok((e, None)))))
        .await
        .expect("apply");
}

/// The state-machine pairs without the Raft bookkeeping (last applied, membership),
/// which an in-memory replay of commands does not write.
fn domain(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .into_iter()
        .filter(|(k, _)| k != keys::META_LAST_APPLIED && k != keys::META_MEMBERSHIP)
        .collect()
}

fn replay(log: &[LogEntry]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut m = MemKv::new();
    for e in log {
        apply_to_mem(&mut m, e).unwrap();
    }
    m.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_gives_identical_state() {
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_la, mut a) = open(&StoreOptions::new(da.path())).unwrap();
    let (_lb, mut b) = open(&StoreOptions::new(db.path())).unwrap();
    let log = workload(600);
    apply_all(&mut a, entries(1, &log)).await;
    let view = stockade_raft_store::query::sale(&a.view(), SALE)
        .unwrap()
        .unwrap();
    assert!(
        view.stats.holds_granted > 10,
        "the workload must do something: {:?}",
        view.stats
    );

    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(log.len() as u64)));
    b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();

    assert_eq!(a.dump().unwrap(), b.dump().unwrap());
    assert_eq!(a.state_hash().unwrap(), b.state_hash().unwrap());
    assert_eq!(
        a.applied_state().await.unwrap(),
        b.applied_state().await.unwrap()
    );
    let cur = b
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot is current");
    assert_eq!(cur.meta, snap.meta);

    // And both go on identically from there.
    let more = workload(700)[600..].to_vec();
    apply_all(&mut a, entries(log.len() as u64 + 1, &more)).await;
    apply_all(&mut b, entries(log.len() as u64 + 1, &more)).await;
    assert_eq!(a.state_hash().unwrap(), b.state_hash().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_taken_while_apply_runs_is_a_consistent_prefix() {
    let dir = TempDir::new().unwrap();
    let (_l, sm) = open(&StoreOptions::new(dir.path())).unwrap();
    let log = workload(3_000);
    let mut writer = sm.clone();
    let all = entries(1, &log);
    let applier = tokio::spawn(async move {
        for chunk in all.chunks(25) {
            apply_all(&mut writer, chunk.to_vec()).await;
            tokio::task::yield_now().await;
        }
    });
    let mut builder = sm.clone();
    let mut seen = Vec::new();
    while !applier.is_finished() {
        let snap = builder.build_snapshot().await.unwrap();
        let Some(last) = snap.meta.last_log_id else {
            continue;
        };
        // Install into a fresh store and compare with a replay of exactly that prefix.
        let fresh = TempDir::new().unwrap();
        let (_l2, mut other) = open(&StoreOptions::new(fresh.path())).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let prefix = &log[..last.index() as usize];
        assert_eq!(
            domain(other.dump().unwrap()),
            replay(prefix),
            "snapshot at {} is not that prefix",
            last.index()
        );
        seen.push(last.index());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    applier.await.unwrap();
    assert!(!seen.is_empty(), "no snapshot was taken during apply");
    assert!(
        seen.iter().any(|&i| (i as usize) < log.len()),
        "every snapshot came after apply finished: {seen:?}"
    );
}

/// Two stores with different states and a snapshot of the first, for the tests that
/// hand the second a bad snapshot: `before` is the second's state, which must survive.
/// Bind `_dirs` and `_logs` by name: with `..` they are dropped (the directories removed)
/// at the end of the `let`.
struct Refusal {
    _dirs: (TempDir, TempDir),
    _logs: (stockade_raft_store::LogStore, stockade_raft_store::LogStore),
    a: StateMachineStore,
    b: StateMachineStore,
    before: Vec<(Vec<u8>, Vec<u8>)>,
    snap: openraft::alias::SnapshotOf<TypeConfig, std::fs::File>,
}

async fn refusal_setup() -> Refusal {
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (la, mut a) = open(&StoreOptions::new(da.path())).unwrap();
    let (lb, mut b) = open(&StoreOptions::new(db.path())).unwrap();
    apply_all(&mut a, entries(1, &workload(100))).await;
    apply_all(&mut b, entries(1, &workload(20))).await;
    let before = b.dump().unwrap();
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    Refusal {
        _dirs: (da, db),
        _logs: (la, lb),
        a,
        b,
        before,
        snap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused_and_state_is_untouched() {
    let Refusal {
        a: _,
        mut b,
        before,
        snap,
        _dirs,
        _logs,
    } = refusal_setup().await;

    let mut bytes = Vec::new();
    let mut f = snap.snapshot;
    f.rewind().unwrap();
    f.read_to_end(&mut bytes).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let mut bad = tempfile::tempfile().unwrap();
    bad.write_all(&bytes).unwrap();
    let err = b
        .install_snapshot(&snap.meta, bad)
        .await
        .expect_err("a flipped byte must be refused");
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(b.dump().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_applied_state_without_replay() {
    let dir = TempDir::new().unwrap();
    let log = workload(300);
    let (hash, applied) = {
        let (_l, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
        apply_all(&mut sm, entries(1, &log)).await;
        (sm.state_hash().unwrap(), sm.applied_state().await.unwrap())
    };
    let (_l, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    assert_eq!(sm.applied_state().await.unwrap(), applied);
    assert_eq!(applied.0, Some(log_id(log.len() as u64)));
    assert_eq!(sm.state_hash().unwrap(), hash);
}

/// Install replaces the whole state: keys the snapshot lacks are gone (the ingested
/// file's range tombstone), every key it has is there (the tombstone spares its own file's
/// keys), and the result survives a restart (the ingestion is durable on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_over_a_larger_state_leaves_exactly_the_snapshot_and_survives_restart() {
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_la, mut a) = open(&StoreOptions::new(da.path())).unwrap();
    let log = workload(200);
    let last = log.len() as u64;
    apply_all(&mut a, entries(1, &log)).await;
    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let expected = a.dump().unwrap();
    {
        let (_lb, mut b) = open(&StoreOptions::new(db.path())).unwrap();
        // More entries than the snapshot: holds, orders and requests it does not have.
        apply_all(&mut b, entries(1, &workload(900))).await;
        let before = b.dump().unwrap();
        let extra = before.iter().filter(|p| !expected.contains(p)).count();
        assert!(
            extra > 100,
            "b must hold state the snapshot lacks ({extra} pairs)"
        );
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(b.dump().unwrap(), expected);
    }
    let (_lb, mut b) = open(&StoreOptions::new(db.path())).unwrap();
    assert_eq!(b.dump().unwrap(), expected, "after a restart");
    assert_eq!(
        b.applied_state().await.unwrap().0,
        Some(log_id(last)),
        "the installed bookkeeping is what a restart resumes from"
    );
    let more = workload(300)[log.len()..].to_vec();
    apply_all(&mut a, entries(last + 1, &more)).await;
    apply_all(&mut b, entries(last + 1, &more)).await;
    assert_eq!(a.state_hash().unwrap(), b.state_hash().unwrap());
}

/// A snapshot whose records are not in ascending key order (a writer bug or a forged
/// file with a valid checksum) is refused before anything is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_with_keys_out_of_order_is_refused_and_state_is_untouched() {
    let Refusal {
        a,
        mut b,
        before,
        snap,
        _dirs,
        _logs,
    } = refusal_setup().await;
    let meta = snap.meta;
    let dw = TempDir::new().unwrap();
    let mut pairs = a.dump().unwrap();
    pairs.swap(1, 2);
    let mut w = SnapshotWriter::create(dw.path(), &meta).unwrap();
    for (k, v) in &pairs {
        w.record(k, v).unwrap();
    }
    let path = w.finish(dw.path(), &meta).unwrap();
    let err = b
        .install_snapshot(&meta, std::fs::File::open(path).unwrap())
        .await
        .expect_err("keys out of order must be refused");
    assert!(err.to_string().contains("ascending"), "{err}");
    assert_eq!(b.dump().unwrap(), before);
}

#[test]
fn snapshot_file_keeps_its_bytes() {
    let dir = TempDir::new().unwrap();
    let meta = stockade_raft_store::SnapshotMeta {
        last_log_id: Some(log_id(7)),
        last_membership: Default::default(),
    };
    let mut w = SnapshotWriter::create(dir.path(), &meta).unwrap();
    w.record(b"\x10a\x00", b"v1").unwrap();
    w.record(b"\x11\x00\x00\x00\x00\x00\x00\x00\x01", b"")
        .unwrap();
    let path = w.finish(dir.path(), &meta).unwrap();
    assert_eq!(path.file_name().unwrap(), "00000000000000000007.snap");
    let bytes = std::fs::read(&path).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, SNAPSHOT_FILE_GOLDEN);
    let (mut r, back) = SnapshotReader::open(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(back, meta);
    assert_eq!(
        r.next_record().unwrap(),
        Some((b"\x10a\x00".to_vec(), b"v1".to_vec()))
    );
    assert!(r.next_record().unwrap().is_some());
    assert_eq!(r.next_record().unwrap(), None);
}

const SNAPSHOT_FILE_GOLDEN: &str = concat!(
    "53544b534e41503101000000080000000101010700000000030000001061000200000076310900",
    "000011000000000000000100000000ffffffff0200000000000000cb098192020f9f31"
);

/// Regression: the current snapshot's file handle must be at byte 0 (its header was read
/// through a clone sharing the offset, and a peer received a file without its magic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_snapshot_handle_reads_from_the_start() {
    let dir = TempDir::new().unwrap();
    let (_l, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    apply_all(&mut sm, entries(1, &workload(50))).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
    let mut magic = [0u8; 8];
    cur.snapshot.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"STKSNAP1");
}

/// Applies `log` to `sm` in batches whose sizes cycle through `sizes` (so the store's
/// in-memory floors are carried both inside one apply call and across calls).
async fn apply_in_batches(sm: &mut StateMachineStore, log: &[LogEntry], sizes: &[usize]) {
    let mut next = 0;
    for size in sizes.iter().cycle() {
        if next >= log.len() {
            break;
        }
        let end = (next + size).min(log.len());
        apply_all(sm, entries(next as u64 + 1, &log[next..end])).await;
        next = end;
    }
}

/// The deadline floor (where the store starts its deadline scans, past the deleted ones)
/// never hides a live deadline: a store that applies in batches of varying size, with
/// the floor rising at every tick and falling with every new deadline, ends in exactly the
/// state of a replay that scans from the start every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_floor_never_hides_a_live_deadline() {
    let mut s = spec(1_000);
    s.hold_ttl_ms = 100;
    s.per_user_limit = 1;
    let mut mem = Mem::default();
    let created = mem.apply(0, Command::CreateSale(Box::new(s)));
    assert_eq!(code(&created), "ok", "{created:?}");
    let mut at = 1_000;
    let mut expected_expiries = 0;
    for round in 0..20u64 {
        // Ten holds; eight released at once (deleted deadlines ahead of the floor), two
        // left to expire at the tick.
        let mut ids = Vec::new();
        for i in 0..10 {
            at += 1;
            let user = format!("u{round}-{i}");
            ids.push(held(&mem.apply(at, reserve(&user, 1, &format!("r{round}-{i}")))).hold_id);
        }
        for (i, id) in ids.iter().enumerate().take(8) {
            at += 1;
            let user = format!("u{round}-{i}");
            let r = mem.apply(at, release(&user, *id, &format!("x{round}-{i}")));
            assert_eq!(code(&r), "ok", "{r:?}");
        }
        at += 110;
        mem.apply(at, Command::Tick);
        expected_expiries += 2;
        if round % 5 == 4 {
            // Nothing held: the tick raises the floor to the next live deadline, far
            // ahead (the sale's close, idempotency purges). A hold reserved now expires
            // before that floor, so its deadline must lower it.
            at += 1;
            mem.apply(at, Command::Tick);
            at += 1;
            let user = format!("late-{round}");
            held(&mem.apply(at, reserve(&user, 1, &format!("late-{round}"))));
            at += 110;
            mem.apply(at, Command::Tick);
            expected_expiries += 1;
        }
    }
    assert_eq!(mem.sale().stats.holds_expired, expected_expiries);

    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    // The leader's ticker looks for the next deadline (and may raise the floor) while
    // apply runs: a raise that let a deadline added meanwhile fall below the floor would
    // leave a hold unexpired here, and the states would differ.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = {
        let (sm, stop) = (sm.clone(), stop.clone());
        tokio::spawn(async move {
            let mut scans = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sm.next_deadline_ms().expect("scan");
                scans += 1;
                tokio::task::yield_now().await;
            }
            scans
        })
    };
    apply_in_batches(&mut sm, &mem.log, &[1, 2, 5, 3, 8, 1, 13]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(scanner.await.unwrap() > 0, "the scanner never ran");
    assert!(
        sm.deadline_floor() > 1_000,
        "the floor never rose: {}",
        sm.deadline_floor()
    );
    assert_eq!(
        domain(sm.dump().unwrap()),
        mem.state.into_iter().collect::<Vec<_>>()
    );
}

/// The ticker's look for the next deadline raises the floor past deadlines deleted since
/// the last tick (checkouts and releases delete theirs), so the next look does not step
/// over their tombstones again; a tick still finds everything due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tickers_scan_raises_the_floor_past_deleted_deadlines() {
    let mut s = spec(100);
    s.hold_ttl_ms = 60_000;
    s.per_user_limit = 1;
    let mut mem = Mem::default();
    mem.apply(0, Command::CreateSale(Box::new(s)));
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let g = held(&mem.apply(1_000 + i, reserve(&format!("u{i}"), 1, &format!("r{i}"))));
        ids.push((g.hold_id, g.expires_at_ms));
    }
    for (i, (id, _)) in ids.iter().enumerate().take(7) {
        let r = mem.apply(2_000, release(&format!("u{i}"), *id, &format!("x{i}")));
        assert_eq!(code(&r), "ok", "{r:?}");
    }
    let first_live = ids[7].1;

    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    apply_in_batches(&mut sm, &mem.log, &[100]).await;
    assert!(
        sm.deadline_floor() < first_live,
        "no tick ran: the floor is still at or below the first deadline added ({})",
        sm.deadline_floor()
    );
    assert_eq!(sm.next_deadline_ms().unwrap(), Some(first_live));
    assert_eq!(
        sm.deadline_floor(),
        first_live,
        "the scan did not raise the floor"
    );

    // With the raised floor, a tick still finds every due deadline: the three holds
    // left and one granted after the raise all expire, exactly as in the replay.
    let g = held(&mem.apply(3_000, reserve("late", 1, "late")));
    assert!(g.expires_at_ms > first_live);
    mem.apply(first_live - 1, Command::Tick);
    let at = g.expires_at_ms + 1;
    mem.apply(at, Command::Tick);
    apply_all(
        &mut sm,
        entries(mem.log.len() as u64 - 2, &mem.log[mem.log.len() - 3..]),
    )
    .await;
    assert_eq!(mem.sale().stats.holds_expired, 4);
    assert_eq!(
        domain(sm.dump().unwrap()),
        mem.state.into_iter().collect::<Vec<_>>()
    );
}

/// What the store's reservation gates say for every sale and quantity, beside what a
/// read of its state says (`query::reserve_precheck`, the rule the API used to read).
fn gates_and_reads(sm: &StateMachineStore) -> Vec<(Option<Reject>, Option<Reject>)> {
    let view = sm.view();
    let clock = stockade_raft_store::query::clock_ms(&view).unwrap();
    let mut out = Vec::new();
    for sale in [SALE, "no-such-sale"] {
        for qty in 1..=3 {
            let read = stockade_raft_store::query::reserve_precheck(&view, sale, qty, clock);
            out.push((sm.reserve_precheck(sale, qty).unwrap(), read.unwrap()));
        }
    }
    out
}

/// The in-memory reservation gates (refusals without a record read) answer exactly what
/// a read of the state answers, after every apply batch of a sale that is not open yet,
/// sells out, frees a unit, fills its waitlist and ends, and after a snapshot install
/// replaces the state under gates that had seen another history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_gates_agree_with_the_state() {
    let mut s = spec(5);
    s.per_user_limit = 1;
    let ends = s.ends_at_ms;
    let mut mem = Mem::default();
    mem.apply(0, Command::CreateSale(Box::new(s))); // not started until 1_000
    let mut holds = Vec::new();
    for i in 0..5u64 {
        holds.push(held(
            &mem.apply(1_500 + i, reserve(&format!("u{i}"), 1, &format!("r{i}"))),
        ));
    }
    mem.apply(1_600, release("u0", holds[0].hold_id, "x0")); // one unit free
    mem.apply(1_700, reserve("u9", 1, "r9")); // sold out again
    mem.apply(1_800, join("w1", 1, "j1"));
    mem.apply(1_900, release("u1", holds[1].hold_id, "x1")); // handed to w1
    mem.apply(ends + 1, Command::Tick); // ended

    let dir = TempDir::new().unwrap();
    let (_l, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let mut next = 0;
    for size in [1usize, 2, 1, 3].iter().cycle() {
        if next >= mem.log.len() {
            break;
        }
        let end = (next + size).min(mem.log.len());
        apply_all(&mut sm, entries(next as u64 + 1, &mem.log[next..end])).await;
        next = end;
        for (gate, read) in gates_and_reads(&sm) {
            assert_eq!(gate, read, "after entry {end}");
            let what = gate.map_or("open".to_string(), |r| r.code().to_string());
            *seen.entry(what).or_default() += 1;
        }
    }
    for code in [
        "open",
        "sold_out",
        "insufficient_stock",
        "sale_ended",
        "sale_not_found",
    ] {
        assert!(
            seen.contains_key(code),
            "the log never gave {code}: {seen:?}"
        );
    }

    // Another store sells its units out (its gate says sold out), then installs the
    // first store's snapshot (the sale ended there): the gates must follow the state.
    let mut s = spec(1);
    s.per_user_limit = 1;
    let other = vec![
        LogEntry {
            at_ms: 0,
            cmd: Command::CreateSale(Box::new(s)).into(),
        },
        LogEntry {
            at_ms: 1_500,
            cmd: reserve("v", 1, "v1").into(),
        },
    ];
    let dir_b = TempDir::new().unwrap();
    let (_lb, mut b) = open(&StoreOptions::new(dir_b.path())).unwrap();
    apply_all(&mut b, entries(1, &other)).await;
    assert_eq!(b.reserve_precheck(SALE, 1).unwrap(), Some(Reject::SoldOut));
    let snap = build(&mut sm).await;
    b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(
        b.reserve_precheck(SALE, 1).unwrap(),
        Some(Reject::SaleEnded)
    );
    for (gate, read) in gates_and_reads(&b) {
        assert_eq!(gate, read, "after the install");
    }
}

/// The waitlist floor (where the store starts a sale's waitlist scans, past the entries
/// already taken from the head) never hides a waiting user: hand-offs after releases and
/// expiries, users leaving from the head and the middle, joins at the tail and positions
/// asked again, applied in store batches of varying size, end in exactly the state of a
/// replay that scans from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waitlist_floor_never_hides_a_waiting_user() {
    let mut s = spec(20);
    s.per_user_limit = 1;
    let ttl = s.hold_ttl_ms;
    let mut mem = Mem::default();
    let created = mem.apply(0, Command::CreateSale(Box::new(s)));
    assert_eq!(code(&created), "ok", "{created:?}");
    let mut at = 1_000;
    let mut holds = Vec::new();
    for i in 0..20 {
        at += 1;
        let user = format!("buyer{i}");
        holds.push((
            user.clone(),
            held(&mem.apply(at, reserve(&user, 1, &format!("b{i}")))).hold_id,
        ));
    }
    for i in 0..60 {
        at += 1;
        let r = mem.apply(at, join(&format!("w{i}"), 1, &format!("j{i}")));
        assert_eq!(code(&r), "ok", "{r:?}");
    }
    // Every release hands its unit to the head of the line.
    for (k, (user, id)) in holds.iter().enumerate() {
        at += 1;
        let r = mem.apply(at, release(user, *id, &format!("rel{k}")));
        assert_eq!(code(&r), "ok", "{r:?}");
        if k % 4 == 0 {
            // The next in line leaves; someone further back asks for their position.
            at += 1;
            mem.apply(at, leave(&format!("w{}", k + 2), &format!("lv{k}")));
            at += 1;
            mem.apply(at, join(&format!("w{}", k + 30), 1, &format!("again{k}")));
        }
    }
    // Promoted holds expire: their units go to the head again, by tick.
    for round in 0..3 {
        at += ttl + 10;
        mem.apply(at, Command::Tick);
        at += 1;
        mem.apply(
            at,
            join(&format!("late{round}"), 1, &format!("late{round}")),
        );
        at += 1;
        mem.apply(at, join("w59", 1, &format!("pos{round}")));
    }
    let stats = mem.sale().stats;
    assert!(
        stats.waitlist_promoted >= 30,
        "the hand-off must run many times: {stats:?}"
    );

    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    apply_in_batches(&mut sm, &mem.log, &[3, 1, 7, 2, 11, 1, 5]).await;
    assert_eq!(
        domain(sm.dump().unwrap()),
        mem.state.into_iter().collect::<Vec<_>>()
    );
}

/// A snapshot is written on a thread of its own at `StoreOptions::snapshot_build_priority`
/// (SCHED_IDLE and nice 19 by default; the request path keeps its priority), and the
/// file is the same at any priority.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_built_at_the_lower_priority() {
    use stockade_raft_store::limits::SNAPSHOT_BUILD_NICE;
    use stockade_raft_store::{BuildPriority, RanAt};
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_la, mut a) = open(&StoreOptions::new(da.path())).unwrap();
    let mut plain = StoreOptions::new(db.path());
    plain.snapshot_build_priority = BuildPriority::Normal;
    let (_lb, mut b) = open(&plain).unwrap();
    assert_eq!(a.last_build_priority(), None, "no build yet");
    let log = workload(200);
    apply_all(&mut a, entries(1, &log)).await;
    apply_all(&mut b, entries(1, &log)).await;
    let mut sa = build(&mut a).await;
    let mut sb = build(&mut b).await;
    // The test process runs at nice 0 unless started niced: the builder never goes below it.
    let nice = process_nice();
    let idle = RanAt {
        nice: SNAPSHOT_BUILD_NICE.max(nice),
        sched_idle: true,
    };
    assert_eq!(a.last_build_priority(), Some(idle));
    let normal = RanAt {
        nice,
        sched_idle: false,
    };
    assert_eq!(b.last_build_priority(), Some(normal));
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    sa.snapshot.read_to_end(&mut fa).unwrap();
    sb.snapshot.read_to_end(&mut fb).unwrap();
    assert!(fa == fb, "the same state gave different snapshot files");
}

/// The nice value of the process (read from /proc: field 19 of `stat`).
#[cfg(target_os = "linux")]
pub fn process_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name in parentheses: state is field 3, nice is field 19.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(16).unwrap().parse().unwrap()
}

/// A policy turn builds a snapshot only once the state machine has written at least
/// 1 / SNAPSHOT_REWRITE_DIVISOR of the last snapshot's size since it; forced builds (and
/// an operator's request) are never deferred; an install counts as a fresh snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_snapshots_wait_until_enough_was_written_since_the_last() {
    use stockade_raft_store::limits::SNAPSHOT_REWRITE_DIVISOR;
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (_la, mut a) = open(&StoreOptions::new(da.path())).unwrap();
    let log = workload(600);
    apply_all(&mut a, entries(1, &log)).await;
    // Nothing built since the start: the first turn builds.
    let snap = a
        .try_create_snapshot_builder(false)
        .await
        .expect("the first policy turn builds")
        .build_snapshot()
        .await
        .unwrap();
    let size = snap.snapshot.metadata().unwrap().len();

    // One more small entry: far less than size / DIVISOR written, so a turn defers.
    let more = vec![LogEntry::new(9_000, reserve("late-1", 1, "late-r1"))];
    apply_all(&mut a, entries(log.len() as u64 + 1, &more)).await;
    assert!(
        !turn(&mut a, false).await,
        "a turn right after a {size}-byte snapshot must defer"
    );
    assert!(turn(&mut a, true).await, "forced");
    a.force_next_snapshot();
    assert!(
        turn(&mut a, false).await,
        "an operator's request is not deferred"
    );
    assert!(
        !turn(&mut a, false).await,
        "the request is used up by one build"
    );

    // Write about size / DIVISOR more (the same workload again, new ids): it builds.
    let mut next = log.len() as u64 + 2;
    let mut round = 0;
    while !turn(&mut a, false).await {
        round += 1;
        assert!(round < 50, "never built after {round} rounds of writes");
        let batch: Vec<LogEntry> = (0..200u64)
            .map(|i| {
                let user = format!("w{round}-{i}");
                LogEntry::new(
                    10_000 + round * 1_000 + i,
                    reserve(&user, 1, &format!("{user}-r")),
                )
            })
            .collect();
        apply_all(&mut a, entries(next, &batch)).await;
        next += batch.len() as u64;
    }
    assert!(
        round >= 2,
        "built after {round} rounds: one 200-reservation round should not reach \
         1/{SNAPSHOT_REWRITE_DIVISOR} of a {size}-byte snapshot"
    );

    // A store that installed this snapshot counts it as its last one.
    let (_lb, mut b) = open(&StoreOptions::new(db.path())).unwrap();
    let snap = build(&mut a).await;
    b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert!(
        !turn(&mut b, false).await,
        "a turn right after an install must defer"
    );
}

/// With `SnapshotSlots`, three stores applying the same log (membership {1, 2, 3}, then
/// a workload, a policy turn every quarter slot) build their policy snapshots in turn:
/// each only in its own slots, so never two in one slot. A store reopened keeps its
/// pacing (the last snapshot's size and index come from its newest file: the first turn
/// after the restart defers) and its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slotted_stores_take_turns_building_and_keep_them_after_a_restart() {
    use std::collections::{BTreeMap, BTreeSet};
    use stockade_raft_store::{Membership, NodeAddr, SnapshotSlots};
    const SLOT: u64 = 40;
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let open_slotted = |i: usize| {
        let mut o = StoreOptions::new(dirs[i].path());
        o.snapshot_slots = Some(SnapshotSlots {
            node_id: i as u64 + 1,
            entries: SLOT,
            min_bytes: 0,
        });
        open(&o).unwrap()
    };
    let mut stores: Vec<_> = (0..3).map(open_slotted).collect();
    let nodes: BTreeMap<u64, NodeAddr> = (1..=3u64)
        .map(|id| {
            let addr = NodeAddr {
                raft_addr: format!("10.0.0.{id}:50051"),
                api_addr: format!("10.0.0.{id}:8080"),
            };
            (id, addr)
        })
        .collect();
    let m = Membership::new(vec![BTreeSet::from([1u64, 2, 3])], nodes).unwrap();
    let first = <Entry as RaftEntry>::new_membership(log_id(1), m);
    for (_, sm) in &mut stores {
        apply_all(sm, vec![first.clone()]).await;
    }
    let step = SnapshotSlots::policy_entries(SLOT) as usize;
    let mut builds: Vec<Vec<u64>> = vec![Vec::new(); 3];
    let mut next = 2u64;
    // Applies `log` in quarter-slot calls to the stores in `which`, a turn after each.
    async fn run(
        stores: &mut [(stockade_raft_store::LogStore, StateMachineStore)],
        which: &[usize],
        log: &[LogEntry],
        step: usize,
        next: &mut u64,
        builds: &mut [Vec<u64>],
    ) {
        for chunk in log.chunks(step) {
            let batch = entries(*next, chunk);
            *next += chunk.len() as u64;
            for &i in which {
                apply_all(&mut stores[i].1, batch.clone()).await;
                if let Some(mut b) = stores[i].1.try_create_snapshot_builder(false).await {
                    b.build_snapshot().await.unwrap();
                    builds[i].push(*next - 1);
                }
            }
        }
    }
    let log = workload(2_000);
    let (before, after) = log.split_at(1_200);
    run(
        &mut stores,
        &[0, 1, 2],
        before,
        step,
        &mut next,
        &mut builds,
    )
    .await;
    for (i, b) in builds.iter().enumerate() {
        assert!(b.len() >= 3, "store {i} built only at {b:?}");
        for &at in b {
            assert_eq!(
                (at / SLOT) % 3,
                i as u64,
                "store {i} built at {at}: {builds:?}"
            );
        }
    }

    // Node 2 restarts: its first turn defers (its last snapshot is known), and it goes on
    // building only in its slots.
    let built_before = builds[1].len();
    let resumed_at = next;
    drop(stores.remove(1));
    stores.insert(1, open_slotted(1));
    let newest = stockade_raft_store::store::snapshot::latest(&dirs[1].path().join("snapshots"))
        .unwrap()
        .expect("node 2 built snapshots");
    let pacing = stores[1].1.snapshot_pacing();
    assert_eq!(
        (pacing.last_index, pacing.last_bytes),
        (
            *builds[1].last().unwrap(),
            std::fs::metadata(&newest).unwrap().len()
        ),
        "the reopened store lost its last snapshot"
    );
    assert!(
        stores[1]
            .1
            .try_create_snapshot_builder(false)
            .await
            .is_none(),
        "the first turn after a restart must defer"
    );
    run(&mut stores, &[0, 1, 2], after, step, &mut next, &mut builds).await;
    assert!(
        builds[1].len() > built_before,
        "no build after the restart (resumed at {resumed_at}): {:?}",
        builds[1]
    );
    for (i, b) in builds.iter().enumerate() {
        for &at in b {
            assert_eq!(
                (at / SLOT) % 3,
                i as u64,
                "store {i} built at {at}: {builds:?}"
            );
        }
    }
    let states: Vec<u64> = stores
        .iter()
        .map(|(_, sm)| sm.state_hash().unwrap())
        .collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "{states:?}");
}

/// A `Tick` counts against the inline bound for what the last Tick on the store handled
/// (at least 1), alone or inside a group-commit `Batch`: a Tick after one that expired
/// 10 holds goes to the pool by itself, and a `Batch` of 2 entries' worth of commands
/// goes there when its Tick follows one that expired 6. Bound 5 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_counts_in_the_inline_bound_for_what_the_last_tick_handled() {
    let dir = TempDir::new().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.apply_inline_commands_max = 5;
    let (_log, mut sm) = open(&opts).unwrap();
    let mut index = 0;
    // One entry per call; the spec's holds live 5 s.
    let mut call = |at_ms: u64, cmd: Command| {
        index += 1;
        entries(
            index,
            &[LogEntry {
                at_ms,
                cmd: cmd.into(),
            }],
        )
    };
    let reserves = |users: std::ops::Range<u32>| {
        users
            .map(|u| reserve(&format!("u{u}"), 1, &format!("r{u}")))
            .collect::<Vec<_>>()
    };
    let steps: Vec<(&str, Vec<Entry>, (u64, u64))> = vec![
        (
            "the sale",
            call(0, Command::CreateSale(Box::new(spec(100)))),
            (1, 0),
        ),
        // 10 commands: over the bound by count alone.
        (
            "10 holds",
            call(1_000, Command::Batch(reserves(0..10))),
            (1, 1),
        ),
        // The first Tick counts 1; it expires the 10 holds (due at 6,000).
        ("a Tick of 10", call(7_000, Command::Tick), (2, 1)),
        // Counts 10 although it finds nothing due: pooled. Then the weight is 1 again.
        ("an empty Tick", call(7_500, Command::Tick), (2, 2)),
        ("the Tick after it", call(7_600, Command::Tick), (3, 2)),
        (
            "6 holds",
            call(8_000, Command::Batch(reserves(10..16))),
            (3, 3),
        ),
        // Expires the 6 holds (due at 13,000).
        ("a Tick of 6", call(14_000, Command::Tick), (4, 3)),
        // 2 commands, but 1 + 6.
        (
            "a hold and a Tick",
            call(
                14_500,
                Command::Batch(vec![reserve("u16", 1, "r16"), Command::Tick]),
            ),
            (4, 4),
        ),
        // 1 + 1 after that empty Tick.
        (
            "another hold and a Tick",
            call(
                15_000,
                Command::Batch(vec![reserve("u17", 1, "r17"), Command::Tick]),
            ),
            (5, 4),
        ),
    ];
    for (what, batch, want) in steps {
        apply_all(&mut sm, batch).await;
        assert_eq!(
            sm.apply_calls(),
            want,
            "after {what}: (inline, pooled) calls"
        );
    }
    // The Ticks did expire what the weights were taken from.
    let sale = stockade_raft_store::query::sale(&sm.view(), SALE)
        .unwrap()
        .unwrap();
    assert_eq!(
        (sale.stats.holds_expired, sale.counters.held),
        (16, 2),
        "{sale:?}"
    );
}

/// A snapshot of `sm` as it is now.
async fn build(
    sm: &mut StateMachineStore,
) -> openraft::alias::SnapshotOf<TypeConfig, std::fs::File> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Whether a snapshot turn (`force` as openraft passes it) would build now.
async fn turn(sm: &mut StateMachineStore, force: bool) -> bool {
    sm.try_create_snapshot_builder(force).await.is_some()
}

/// Apply calls of up to `apply_inline_commands_max` commands run on the calling task,
/// larger ones on the blocking pool, and the two paths leave the same state: one store
/// with every call on the pool, one with every call inline, one that splits the calls
/// between the two, all equal to an in-memory replay. (The workload's Ticks count for
/// what the last Tick handled, at least 1, so with the split bound at least the calls of
/// more than 5 entries go to the pool; the exact weights are pinned by
/// `a_tick_counts_in_the_inline_bound_for_what_the_last_tick_handled`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_inline_or_on_the_pool_ends_in_the_same_state() {
    let log = workload(400);
    // Calls of 1 and 3 commands fit a bound of 5; calls of 7 and 20 do not.
    let sizes = [1, 7, 3, 20];
    let calls_of = |fits: fn(usize) -> bool| {
        let (mut n, mut next) = (0u64, 0usize);
        for size in sizes.iter().cycle() {
            if next >= log.len() {
                break;
            }
            let end = (next + size).min(log.len());
            n += u64::from(fits(end - next));
            next = end;
        }
        n
    };
    let (inline_calls, pooled_calls) = (calls_of(|n| n <= 5), calls_of(|n| n > 5));
    assert!(inline_calls > 0 && pooled_calls > 0, "both paths must run");
    let mut hashes = Vec::new();
    for bound in [0, 5, 1_024] {
        let dir = TempDir::new().unwrap();
        let mut opts = StoreOptions::new(dir.path());
        opts.apply_inline_commands_max = bound;
        let (_log, mut sm) = open(&opts).unwrap();
        apply_in_batches(&mut sm, &log, &sizes).await;
        let (inline, pooled) = sm.apply_calls();
        assert_eq!(
            inline + pooled,
            inline_calls + pooled_calls,
            "bound {bound}: every call runs once"
        );
        match bound {
            0 => assert_eq!(inline, 0, "bound 0: every call on the pool"),
            5 => assert!(
                inline > 0 && pooled >= pooled_calls,
                "bound 5: (inline, pooled) = ({inline}, {pooled}), \
                 at least {pooled_calls} pooled by their entries"
            ),
            _ => assert_eq!(pooled, 0, "bound {bound}: every call inline"),
        }
        assert_eq!(
            domain(sm.dump().unwrap()),
            replay(&log),
            "bound {bound}: state differs from the replay"
        );
        hashes.push(sm.state_hash().unwrap());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}
