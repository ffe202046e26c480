//! Every bound the state machine enforces, in one place, units last in the name.
//!
//! These are part of the replicated contract: a command is valid or not by these numbers
//! on every replica, so changing one is a protocol change (raise limits only together with
//! a rolling upgrade that has reached every node first).

/// Longest `request_id` a client may send (bytes, printable ASCII).
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Longest `user_id` (bytes, `[A-Za-z0-9_.:@-]`).
pub const USER_ID_BYTES_MAX: usize = 128;
/// Longest sale id (a slug: `[a-z0-9][a-z0-9-]*`).
pub const SALE_ID_BYTES_MAX: usize = 64;
/// Longest payment reference from a payment provider (bytes, printable ASCII).
pub const PAYMENT_REF_BYTES_MAX: usize = 128;
/// Longest reason text on a failed payment.
pub const REASON_BYTES_MAX: usize = 256;

/// Product text shown before the sale.
pub const SKU_BYTES_MAX: usize = 64;
pub const PRODUCT_NAME_BYTES_MAX: usize = 200;
pub const PRODUCT_DESCRIPTION_BYTES_MAX: usize = 4_000;
pub const IMAGE_URL_BYTES_MAX: usize = 2_048;

/// Units in one sale.
pub const SALE_QUANTITY_MAX: u32 = 10_000_000;
/// Units one hold (or one waitlist entry) may ask for.
pub const QTY_PER_HOLD_MAX: u32 = 100;
/// Per-user limit a sale may set.
pub const PER_USER_LIMIT_MAX: u32 = 1_000;
/// Live holds one user may have on one sale at once.
pub const HOLDS_PER_USER_MAX: u32 = 16;
/// A price in minor units (cents): 10^12 keeps `price * qty` far inside u64.
pub const PRICE_MINOR_MAX: u64 = 1_000_000_000_000;

/// Hold time-to-live a sale may set. The floor is low so that tests and benchmarks can
/// make expiry race with checkout; production sales use minutes.
pub const HOLD_TTL_MS_MIN: u64 = 100;
pub const HOLD_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
/// Payment window after checkout (0 = cash on delivery, confirmed at once).
pub const PAYMENT_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1_000;
/// Longest a sale may run.
pub const SALE_DURATION_MS_MAX: u64 = 366 * 24 * 60 * 60 * 1_000;
/// Timestamps beyond this (year 2286) are certainly a unit mistake (µs or ns).
pub const TIMESTAMP_MS_MAX: u64 = 9_999_999_999_999;

/// People queued on one sale's waitlist.
pub const WAITLIST_LEN_MAX: u32 = 100_000;
/// Waitlist entries one hand-off may look at in one command; the rest continue at the
/// next `Tick` (a hand-off deadline is left behind), so no command does unbounded work.
pub const HANDOFF_STEPS_MAX: u32 = 64;

/// Deadlines (hold expiry, payment timeout, record purge, sale close) one `Tick` handles.
pub const TICK_EXPIRE_BATCH_MAX: u32 = 256;
/// How long an idempotency record answers retries before the clock purges it.
pub const IDEMPOTENCY_RETENTION_MS: u64 = 60 * 60 * 1_000;

/// Commands in one `Batch` entry (group commit).
pub const BATCH_COMMANDS_MAX: usize = 1_024;
/// Encoded size of one log entry's command; oversized commands never reach the log.
pub const COMMAND_BYTES_MAX: usize = 1024 * 1024;

/// Snapshot files kept in the snapshot directory (the newest is served, the previous one
/// is kept so that a reader streaming it while a new one lands is not cut off).
pub const SNAPSHOT_FILES_KEPT: usize = 2;
/// A snapshot file being written is synced every this many bytes, so that at most this
/// much of it is ever dirty in the page cache. On ext4 (`data=ordered`) an fsync of the
/// log's WAL commits the journal, which first writes out every dirty data block of the
/// file system: with the whole snapshot (tens to hundreds of MiB) dirty until its final
/// fsync, a WAL sync that ran into it waited for all of it (a 111 ms WAL sync was logged
/// the instant a 157 MB snapshot was sealed, `docs/benchmarks.md`, fourteenth session).
pub const SNAPSHOT_SYNC_BYTES: u64 = 1024 * 1024;
/// A snapshot that the policy (`--snapshot-every-entries`) asks for is built only once
/// the state machine has written at least `1 / SNAPSHOT_REWRITE_DIVISOR` of the last
/// snapshot's size since it (otherwise it is deferred to the policy's next turn). A
/// snapshot rewrites the whole state, so with a fixed entry count its cost grew with the
/// state (a 619 MB rewrite of 5.9–8.8 s on every node, every 20,000 entries, in
/// `docs/benchmarks.md`, fourteenth session); paced by bytes written, the rewriting is at
/// most `SNAPSHOT_REWRITE_DIVISOR` times the bytes the state machine wrote, and the log
/// kept between snapshots stays in proportion to the state. Forced builds (an
/// operator's `snapshot`, a follower that needs one) are never deferred.
pub const SNAPSHOT_REWRITE_DIVISOR: u64 = 2;
/// Policy turns per snapshot slot: openraft considers a snapshot every
/// `--snapshot-every-entries / SNAPSHOT_TURNS_PER_SLOT` entries, and a node builds at the
/// first turn that finds it due and in its own slot (`SnapshotSlots`, `sm.rs`). Slots are
/// `--snapshot-every-entries` wide, so a build starts in the first quarter of its slot and
/// the next node's at least three quarters of a slot later; with one turn per slot (the
/// openraft policy alone) a turn late in one slot and the next node's early in the next
/// could fall a few entries apart.
pub const SNAPSHOT_TURNS_PER_SLOT: u64 = 4;
/// Snapshots smaller than this are built as soon as they are due, in any slot: a build of
/// a few MiB takes a fraction of a second and delaying it only keeps the log longer.
/// Staggering is for the builds that hurt: 488 MB took 10.8–11.0 s on every node at once
/// in `docs/benchmarks.md` (twenty-seventh session).
pub const SNAPSHOT_STAGGER_MIN_BYTES: u64 = 8 * 1024 * 1024;
/// Nice value of the thread that writes a snapshot file (Linux), under both lowered
/// `BuildPriority`s; the default, `Idle`, also moves the thread to `SCHED_IDLE`. A build
/// reads and rewrites the whole state (a 619 MB build took 5.9–8.8 s of CPU on each
/// node, and every node builds at the same log index), and at the request path's
/// priority it took its share of the cores from apply, the WAL sync thread and the API:
/// in `docs/benchmarks.md` (fourteenth session) every open-loop round with p99 above
/// 40 ms overlapped such a build. Lowered, it gets what the request path leaves idle, so
/// a build takes longer under load, never the requests (fifteenth session). The builder
/// holds no lock of ours (it reads a RocksDB snapshot); what it shares with apply is
/// RocksDB's block cache shards, whose critical sections are a few instructions long.
pub const SNAPSHOT_BUILD_NICE: i32 = 19;
/// The same bound for RocksDB's own table files (flushes, compactions, ingestion):
/// `bytes_per_sync`, which RocksDB leaves off by default.
pub const SST_BYTES_PER_SYNC: u64 = 1024 * 1024;
/// Commands in one apply call that still runs on the calling async task rather than on
/// tokio's blocking pool (`StoreOptions::apply_inline_commands_max`; `store/sm.rs`,
/// "Where apply runs").
///
/// The bound is a time budget, not an entry size: it is how long one call may keep a
/// node's worker from everything else it serves (client streams, forwarded batches,
/// replication, heartbeats). At about 9 µs per reservation (`docs/benchmarks.md`, storage
/// layer) 128 commands hold the worker for about 1 ms. A `Tick` may take up to
/// `TICK_EXPIRE_BATCH_MAX` deadlines, so it counts for what the last Tick on the same
/// node handled (`store/sm.rs`, `commands_in`; until the thirty-second session it counted
/// as one, and the bound did not hold for Ticks). Where expiries trickle in, Ticks are
/// small (five `bench-peers` stream cells, where a quarter of the holds expire: 3,310
/// Ticks, 3 holds at p50, 64 at p99, 3 of them 128 or more), and counting each at its
/// bound would send them all to the pool; where a crowd's holds expire together, most
/// are full (50,000 holds granted in 1.26 s with a 1 s TTL: 201 of 241 Ticks expired
/// 129–256), and those now run on the pool, at no measured cost or gain in speed
/// (`docs/benchmarks.md`, thirty-first and thirty-second sessions).
///
/// The bound was one full group-commit entry (1,024, about 10 ms); at 1,000 clients the
/// leader applied calls of several full entries, and with one worker per node (the co-located default) every request that
/// arrived meanwhile waited for them. A larger call now runs on a pool thread, on the
/// other core, while the worker goes on serving. Interleaved pairs of one binary
/// (`docs/benchmarks.md`, thirtieth session): `bench-peers`' stream cells at 1,000
/// clients p99 100 / 99.6 / 119 ms instead of 128 / 126 / 153, the open loop's p99 14.3 /
/// 35.7 / 17.0 instead of 35.8 / 41.7 / 49.7 ms, 100,000 units at 256 clients 3–10% more
/// reservations/s with a lower p99 in all three pairs; at 50 clients calls are small and
/// mostly stay on the worker, and the cell stayed within its spread. The price is CPU:
/// the 100,000-unit cell used 6–19% more server CPU for the same work (the hand-off and
/// a second thread's wake-ups). 64 was not distinguishable from 128.
pub const APPLY_INLINE_COMMANDS_MAX: usize = 128;
/// Appends waiting for the WAL-sync thread; past it an append syncs on its own.
pub const WAL_SYNC_QUEUE_MAX: usize = 4_096;
/// A WAL sync slower than this is logged (`slow WAL sync`) and counted
/// (`stockade_wal_syncs_slow_total`): every append it covers waited that long, and a
/// leader's heartbeat interval is 100 ms by default.
pub const WAL_SYNC_SLOW: std::time::Duration = std::time::Duration::from_millis(100);
/// Most recent log entries the log store keeps in memory for its readers (replication to
/// each follower and the state machine's apply read every entry right after it is
/// appended). An entry holds at most `BATCH_COMMANDS_MAX` commands, shared with openraft
/// (no copy), so the cache pins at most this many entries' commands beyond the ones in
/// flight anyway; a read older than the cache goes to RocksDB as before.
pub const RECENT_LOG_ENTRIES_MAX: usize = 128;
