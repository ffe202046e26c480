//! `stockctl bench`: a flash crowd against one sale, then an oversell check.
//!
//! N users race for Q units over C concurrent workers (HTTP or gRPC). Each user tries to
//! reserve one unit; a transient failure (no leader, overload, timeout) is retried with
//! the *same* request id, so the cluster acts at most once. Bots (a share of the users)
//! retry with *new* request ids and no pause until they hold a unit or the sale is sold
//! out. With `--checkout-pay` a granted hold is checked out and paid.
//!
//! It always stops by itself: when every user is done, after `--duration-max`, or after
//! `--attempts-max` attempts. Then it reads the sale (linearizable) and checks that
//! nothing was oversold and that what it saw granted matches the server's counters.
//! It sends traffic only to the endpoints it was given.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde::Serialize;
use stockade_api::dto::*;
use stockade_proto::v1 as pb;
use stockade_proto::v1::stockade_client::StockadeClient;
use tonic::transport::Channel;

use crate::args::{BenchArgs, Config, Output, Protocol};
use crate::client::{seg, Attempt, Client};
use crate::commands::CliError;
use crate::output::{kv, new_request_id, now_ms, secs};

/// Most users one run may simulate.
pub const USERS_MAX: u64 = 10_000_000;
/// Most concurrent workers.
pub const CONCURRENCY_MAX: usize = 4_096;
/// Longest run, seconds.
pub const DURATION_S_MAX: u64 = 3_600;
/// Tries of one request after a transient failure (same request id).
pub const USER_RETRIES_MAX: u32 = 3;
/// Pause before such a retry, milliseconds.
pub const RETRY_PAUSE_MS: u64 = 50;
/// Reservation attempts of one bot (new request id each).
pub const BOT_ATTEMPTS_MAX: u32 = 20;
/// Hold TTL of the sale the bench creates: long, so no hold expires during a run and the
/// reconciliation is exact.
pub const BENCH_HOLD_TTL_MS: u64 = 10 * 60 * 1_000;
/// Payment window of the sale the bench creates.
pub const BENCH_PAYMENT_WINDOW_MS: u64 = 10 * 60 * 1_000;
/// gRPC channels the workers share.
pub const GRPC_CHANNELS_MAX: usize = 16;
/// Largest latency recorded, microseconds (longer ones are clamped).
const LATENCY_US_MAX: u64 = 60 * 1_000_000;
/// Latency histograms the workers of a run record into (worker `w` into shard
/// `w % LATENCY_SHARDS`), merged once at the end.
///
/// Each worker had its own two histograms before: at 256 workers that is 512 arrays of
/// 17,408 counters (1 µs .. 60 s at 3 significant digits), and nearly every record was a
/// cache miss (`record_n_inner` was 1.7% of the whole machine's samples in a
/// `ReserveStream` run, 84% of it on the load of the counter). A few shared shards stay
/// in cache; their locks are held for one increment, and with the runtime's two worker
/// threads two records rarely meet on one shard.
pub const LATENCY_SHARDS: usize = 8;

/// The outcome of one request, whatever the system or protocol.
#[derive(Debug)]
pub enum Outcome<T> {
    Ok(T),
    /// The system refused, with its code (e.g. `sold_out`).
    Rejected(String),
    /// No decision: 503/429/timeout/connection. `code` is the server's if it gave one.
    Transient(String),
}

impl<T> Outcome<T> {
    /// The same outcome with its value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ok(v) => Outcome::Ok(f(v)),
            Outcome::Rejected(c) => Outcome::Rejected(c),
            Outcome::Transient(c) => Outcome::Transient(c),
        }
    }

    /// The outcome `f` makes of the value; the same refusal or failure otherwise.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Outcome<U>) -> Outcome<U> {
        match self {
            Outcome::Ok(v) => f(v),
            Outcome::Rejected(c) => Outcome::Rejected(c),
            Outcome::Transient(c) => Outcome::Transient(c),
        }
    }
}

/// Codes after which neither a user nor a bot tries again.
fn is_final(code: &str) -> bool {
    matches!(
        code,
        "sold_out" | "sale_ended" | "sale_not_found" | "limit_exceeded" | "invalid"
    )
}

/// Whether user `i` is a bot, spread evenly over the users.
pub fn is_bot(i: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let per_mille = (share * 1000.0).round() as u64;
    (i.wrapping_mul(7919) % 1000) < per_mille
}

/// A granted hold.
pub struct Granted<H> {
    pub hold: H,
    pub qty: u32,
}

/// An order made from a hold at checkout.
pub struct Ordered<O> {
    pub order: O,
    /// False when checkout confirmed the order at once (cash on delivery).
    pub awaiting_payment: bool,
}

/// One system under load: the flash-crowd engine drives it through this, whatever it is
/// (Stockade over HTTP or gRPC, or a peer such as Redis or PostgreSQL). `idx` names the
/// endpoint (node, member, connection) a worker talks to, in `0..endpoints()`; after a
/// transient failure the engine moves on to the next one and retries with the same
/// request id.
pub trait Target: Send + Sync + 'static {
    type Hold: Send + Sync + 'static;
    type Order: Send + Sync + 'static;
    fn endpoints(&self) -> usize;
    /// `first`: this is the first send of `rid` (a retry says `false`).
    fn reserve(
        &self,
        idx: usize,
        user: &str,
        rid: &str,
        first: bool,
    ) -> impl Future<Output = Outcome<Granted<Self::Hold>>> + Send;
    fn checkout(
        &self,
        idx: usize,
        hold: &Self::Hold,
        user: &str,
        rid: &str,
    ) -> impl Future<Output = Outcome<Ordered<Self::Order>>> + Send;
    fn pay(
        &self,
        idx: usize,
        order: &Self::Order,
        user: &str,
        rid: &str,
    ) -> impl Future<Output = Outcome<()>> + Send;
    fn release(
        &self,
        idx: usize,
        hold: &Self::Hold,
        user: &str,
        rid: &str,
    ) -> impl Future<Output = Outcome<()>> + Send;
}

/// What a user does with a granted hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AfterHold {
    /// Nothing: the hold stays until it expires.
    Keep,
    /// Check out and pay.
    CheckoutPay,
    /// By user number: half check out and pay, a quarter release, a quarter keep the
    /// hold until it expires.
    Mix,
}

/// What user `i` does with its hold under `plan`.
pub fn after_hold_of(plan: AfterHold, i: u64) -> AfterHold {
    match plan {
        AfterHold::Mix => match i % 4 {
            0 | 1 => AfterHold::CheckoutPay,
            2 => AfterHold::Mix, // stands for "release" here
            _ => AfterHold::Keep,
        },
        p => p,
    }
}

/// How attempts arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrival {
    /// Each worker sends its next attempt when the previous one is done.
    Closed,
    /// Attempt `i` is due at `i / rate` seconds after the start; its reserve latency is
    /// measured from that intended time, so a slow system is charged for the queue it
    /// causes (no coordinated omission). The workers bound what is in flight.
    Open { per_s: f64 },
}

/// One flash crowd against one sale.
#[derive(Clone, Debug)]
pub struct Crowd {
    /// Distinct users (each makes one attempt unless it is a bot).
    pub users: u64,
    /// Share of bots (retry with new request ids until they hold a unit or it is sold out).
    pub bots: f64,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Longest run.
    pub duration_max: Duration,
    /// Most reservation attempts.
    pub attempts_max: u64,
    pub after_hold: AfterHold,
    /// Stop this long after the first `sold_out` (rejection throughput), if set.
    pub hammer_after_sold_out: Option<Duration>,
    pub arrival: Arrival,
    /// Prefix of user names.
    pub run_id: String,
}

/// What one worker saw; merged at the end.
pub struct Tally {
    pub attempts: u64,
    /// Requests sent (every try of every operation).
    pub ops: u64,
    pub holds_granted: u64,
    pub units_granted: u64,
    /// Attempts refused `sold_out`, and every refusal by code.
    pub sold_out: u64,
    pub checkouts: u64,
    pub sold: u64,
    pub released: u64,
    /// Holds left to expire.
    pub left_to_expire: u64,
    pub unknown: u64,
    pub users_done: u64,
    pub rejections: BTreeMap<String, u64>,
    pub transient: BTreeMap<String, u64>,
    /// Every request, microseconds.
    pub latency_us: Histogram<u64>,
    /// Reservation attempts to their outcome (retries included), microseconds; in open
    /// loop from the intended send time.
    pub reserve_us: Histogram<u64>,
    /// A worker's tally records its latencies into this shared shard instead of the two
    /// histograms above (which then stay empty); see [`LATENCY_SHARDS`].
    shard: Option<Arc<Mutex<Latencies>>>,
}

/// The two latency histograms of a [`Tally`] or of a shard.
pub struct Latencies {
    latency_us: Histogram<u64>,
    reserve_us: Histogram<u64>,
}

impl Latencies {
    fn new() -> Result<Self, CliError> {
        Ok(Latencies {
            latency_us: histogram()?,
            reserve_us: histogram()?,
        })
    }
}

fn histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .map_err(|e| CliError::Bench(format!("histogram: {e}")))
}

/// A histogram that is never recorded into (a worker's, whose latencies go to a shard):
/// a few counters, not 17,408.
fn unused_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new(1).map_err(|e| CliError::Bench(format!("histogram: {e}")))
}

fn lock_shard(shard: &Mutex<Latencies>) -> std::sync::MutexGuard<'_, Latencies> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

fn us_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros())
        .unwrap_or(LATENCY_US_MAX)
        .clamp(1, LATENCY_US_MAX)
}

impl Tally {
    pub fn new() -> Result<Self, CliError> {
        Ok(Tally::with(histogram()?, histogram()?, None))
    }

    fn with(
        latency_us: Histogram<u64>,
        reserve_us: Histogram<u64>,
        shard: Option<Arc<Mutex<Latencies>>>,
    ) -> Self {
        Tally {
            attempts: 0,
            ops: 0,
            holds_granted: 0,
            units_granted: 0,
            sold_out: 0,
            checkouts: 0,
            sold: 0,
            released: 0,
            left_to_expire: 0,
            unknown: 0,
            users_done: 0,
            rejections: BTreeMap::new(),
            transient: BTreeMap::new(),
            latency_us,
            reserve_us,
            shard,
        }
    }

    /// A worker's tally, recording latencies into `shard`.
    fn for_worker(shard: Arc<Mutex<Latencies>>) -> Result<Self, CliError> {
        Ok(Tally::with(
            unused_histogram()?,
            unused_histogram()?,
            Some(shard),
        ))
    }

    fn record(&mut self, started: Instant) {
        self.ops += 1;
        let us = us_since(started);
        let _ = match &self.shard {
            Some(s) => lock_shard(s).latency_us.record(us),
            None => self.latency_us.record(us),
        };
    }

    fn record_reserve(&mut self, began: Instant) {
        let us = us_since(began);
        let _ = match &self.shard {
            Some(s) => lock_shard(s).reserve_us.record(us),
            None => self.reserve_us.record(us),
        };
    }

    /// Adds a shard's latencies (once, after every worker of the shard finished).
    fn absorb(&mut self, shard: &Mutex<Latencies>) {
        let l = lock_shard(shard);
        let _ = self.latency_us.add(&l.latency_us);
        let _ = self.reserve_us.add(&l.reserve_us);
    }

    pub fn merge(&mut self, o: Tally) {
        self.attempts += o.attempts;
        self.ops += o.ops;
        self.holds_granted += o.holds_granted;
        self.units_granted += o.units_granted;
        self.sold_out += o.sold_out;
        self.checkouts += o.checkouts;
        self.sold += o.sold;
        self.released += o.released;
        self.left_to_expire += o.left_to_expire;
        self.unknown += o.unknown;
        self.users_done += o.users_done;
        for (k, v) in o.rejections {
            *self.rejections.entry(k).or_default() += v;
        }
        for (k, v) in o.transient {
            *self.transient.entry(k).or_default() += v;
        }
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.reserve_us.add(&o.reserve_us);
    }
}

/// Progress of a running crowd, readable while it runs.
pub struct Progress {
    pub next_user: AtomicU64,
    pub attempts: AtomicU64,
    pub granted: AtomicU64,
}

/// Shared progress and stop signals.
struct Shared {
    crowd: Crowd,
    progress: Arc<Progress>,
    stop: AtomicBool,
    /// First `sold_out`: milliseconds after the start, and units granted by then.
    sold_out_at_ms: Mutex<Option<(u64, u64)>>,
    /// Milliseconds after the start at which workers stop.
    stop_at_ms: AtomicU64,
    started: Instant,
}

impl Shared {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn out_of_budget(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.elapsed_ms() >= self.stop_at_ms.load(Ordering::Relaxed)
            || self.progress.attempts.load(Ordering::Relaxed) >= self.crowd.attempts_max
    }

    fn saw_sold_out(&self) {
        if let Ok(mut g) = self.sold_out_at_ms.lock() {
            if g.is_none() {
                let now = self.elapsed_ms();
                *g = Some((now, self.progress.granted.load(Ordering::Relaxed)));
                if let Some(h) = self.crowd.hammer_after_sold_out {
                    let h = u64::try_from(h.as_millis()).unwrap_or(u64::MAX);
                    self.stop_at_ms
                        .fetch_min(now.saturating_add(h), Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sends one request, retrying transient failures with the same request id (and moving
/// to the next endpoint). `f` learns whether its send is the first of that request id
/// (a reservation says so to the server: only a first send may be refused from a read).
/// Returns the final outcome.
async fn with_retries<T, F, Fut>(
    sh: &Shared,
    t: &mut Tally,
    idx: &mut usize,
    n: usize,
    mut f: F,
) -> Outcome<T>
where
    F: FnMut(usize, bool) -> Fut,
    Fut: std::future::Future<Output = Outcome<T>>,
{
    let mut tries = 0;
    loop {
        let started = Instant::now();
        let o = f(*idx, tries == 0).await;
        t.record(started);
        match o {
            Outcome::Transient(code) => {
                *t.transient.entry(code.clone()).or_default() += 1;
                *idx = (*idx + 1) % n.max(1);
                tries += 1;
                if tries > USER_RETRIES_MAX || sh.out_of_budget() {
                    t.unknown += 1;
                    return Outcome::Transient(code);
                }
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
            other => return other,
        }
    }
}

async fn worker<T: Target>(
    sh: Arc<Shared>,
    tr: Arc<T>,
    first: usize,
    shard: Arc<Mutex<Latencies>>,
) -> Result<Tally, CliError> {
    let mut t = Tally::for_worker(shard)?;
    let n = tr.endpoints();
    let mut idx = first % n.max(1);
    while !sh.out_of_budget() {
        let i = sh.progress.next_user.fetch_add(1, Ordering::Relaxed);
        if i >= sh.crowd.users {
            break;
        }
        let mut due = None;
        if let Arrival::Open { per_s } = sh.crowd.arrival {
            let at = sh.started + Duration::from_secs_f64(i as f64 / per_s.max(f64::MIN_POSITIVE));
            if at > sh.started + sh.crowd.duration_max {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            due = Some(at);
            if sh.out_of_budget() {
                break;
            }
        }
        let user = format!("{}-u{i}", sh.crowd.run_id);
        let bot = is_bot(i, sh.crowd.bots);
        let mut bot_attempts = 0u32;
        loop {
            if sh.out_of_budget() {
                break;
            }
            bot_attempts += 1;
            t.attempts += 1;
            sh.progress.attempts.fetch_add(1, Ordering::Relaxed);
            let rid = new_request_id("b");
            let began = due.take().unwrap_or_else(Instant::now);
            let o = with_retries(&sh, &mut t, &mut idx, n, |k, first| {
                let tr = tr.clone();
                let (u, r) = (user.clone(), rid.clone());
                async move { tr.reserve(k, &u, &r, first).await }
            })
            .await;
            t.record_reserve(began);
            match o {
                Outcome::Ok(g) => {
                    t.holds_granted += 1;
                    t.units_granted += u64::from(g.qty);
                    sh.progress
                        .granted
                        .fetch_add(u64::from(g.qty), Ordering::Relaxed);
                    match after_hold_of(sh.crowd.after_hold, i) {
                        AfterHold::CheckoutPay => {
                            checkout_pay(&sh, &tr, &mut t, &mut idx, n, &user, &g.hold).await
                        }
                        AfterHold::Mix => {
                            release(&sh, &tr, &mut t, &mut idx, n, &user, &g.hold).await
                        }
                        AfterHold::Keep => t.left_to_expire += 1,
                    }
                    break;
                }
                Outcome::Rejected(code) => {
                    if code == "sold_out" {
                        t.sold_out += 1;
                        sh.saw_sold_out();
                    }
                    let last = !bot || is_final(&code) || bot_attempts >= BOT_ATTEMPTS_MAX;
                    *t.rejections.entry(code).or_default() += 1;
                    if last {
                        break;
                    }
                }
                Outcome::Transient(_) => {
                    if !bot || bot_attempts >= BOT_ATTEMPTS_MAX {
                        break;
                    }
                }
            }
        }
        t.users_done += 1;
    }
    Ok(t)
}

async fn release<T: Target>(
    sh: &Shared,
    tr: &Arc<T>,
    t: &mut Tally,
    idx: &mut usize,
    n: usize,
    user: &str,
    hold: &T::Hold,
) {
    let rid = new_request_id("r");
    let o = with_retries(sh, t, idx, n, |k, _| {
        let tr = tr.clone();
        let (u, r) = (user.to_string(), rid.clone());
        async move { tr.release(k, hold, &u, &r).await }
    })
    .await;
    match o {
        Outcome::Ok(()) => t.released += 1,
        Outcome::Rejected(code) => {
            *t.rejections.entry(format!("release:{code}")).or_default() += 1;
        }
        Outcome::Transient(_) => {}
    }
}

async fn checkout_pay<T: Target>(
    sh: &Shared,
    tr: &Arc<T>,
    t: &mut Tally,
    idx: &mut usize,
    n: usize,
    user: &str,
    hold: &T::Hold,
) {
    let rid = new_request_id("c");
    let o = with_retries(sh, t, idx, n, |k, _| {
        let tr = tr.clone();
        let (u, r) = (user.to_string(), rid.clone());
        async move { tr.checkout(k, hold, &u, &r).await }
    })
    .await;
    let order = match o {
        Outcome::Ok(o) => o,
        Outcome::Rejected(code) => {
            *t.rejections.entry(format!("checkout:{code}")).or_default() += 1;
            return;
        }
        Outcome::Transient(_) => return,
    };
    t.checkouts += 1;
    if !order.awaiting_payment {
        // Cash on delivery: confirmed at checkout.
        t.sold += 1;
        return;
    }
    let rid = new_request_id("p");
    let o = with_retries(sh, t, idx, n, |k, _| {
        let tr = tr.clone();
        let (u, r) = (user.to_string(), rid.clone());
        let order = &order.order;
        async move { tr.pay(k, order, &u, &r).await }
    })
    .await;
    match o {
        Outcome::Ok(()) => t.sold += 1,
        Outcome::Rejected(code) => {
            *t.rejections.entry(format!("pay:{code}")).or_default() += 1;
        }
        Outcome::Transient(_) => {}
    }
}

/// What a crowd came to.
pub struct CrowdResult {
    pub tally: Tally,
    pub elapsed: Duration,
    /// First `sold_out` refusal, milliseconds after the start.
    pub sold_out_at_ms: Option<u64>,
    /// Units granted by then.
    pub granted_at_sold_out: Option<u64>,
}

/// A crowd ready to run: its progress can be watched while [`CrowdRun::run`] runs.
pub struct CrowdRun {
    sh: Arc<Shared>,
}

impl CrowdRun {
    pub fn new(crowd: Crowd) -> Self {
        let stop_at = u64::try_from(crowd.duration_max.as_millis()).unwrap_or(u64::MAX);
        CrowdRun {
            sh: Arc::new(Shared {
                crowd,
                progress: Arc::new(Progress {
                    next_user: AtomicU64::new(0),
                    attempts: AtomicU64::new(0),
                    granted: AtomicU64::new(0),
                }),
                stop: AtomicBool::new(false),
                sold_out_at_ms: Mutex::new(None),
                stop_at_ms: AtomicU64::new(stop_at),
                started: Instant::now(),
            }),
        }
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.sh.progress.clone()
    }

    /// Runs the crowd against `target` until every user is done or a bound is reached.
    pub async fn run<T: Target>(self, target: Arc<T>) -> Result<CrowdResult, CliError> {
        // The clock starts now, not at construction.
        let sh = Arc::new(Shared {
            crowd: self.sh.crowd.clone(),
            progress: self.sh.progress.clone(),
            stop: AtomicBool::new(false),
            sold_out_at_ms: Mutex::new(None),
            stop_at_ms: AtomicU64::new(self.sh.stop_at_ms.load(Ordering::Relaxed)),
            started: Instant::now(),
        });
        let shards = (0..LATENCY_SHARDS.min(sh.crowd.concurrency.max(1)))
            .map(|_| Latencies::new().map(|l| Arc::new(Mutex::new(l))))
            .collect::<Result<Vec<_>, _>>()?;
        let workers: Vec<_> = (0..sh.crowd.concurrency)
            .map(|w| {
                let shard = shards[w % shards.len()].clone();
                tokio::spawn(worker(sh.clone(), target.clone(), w, shard))
            })
            .collect();
        let mut total = Tally::new()?;
        let mut failure = None;
        for w in workers {
            match w.await {
                Ok(Ok(t)) => total.merge(t),
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(CliError::Bench(format!("a worker failed: {e}"))),
            }
        }
        for shard in &shards {
            total.absorb(shard);
        }
        sh.stop.store(true, Ordering::Relaxed);
        let elapsed = sh.started.elapsed();
        if let Some(e) = failure {
            return Err(e);
        }
        let first = sh.sold_out_at_ms.lock().ok().and_then(|g| *g);
        Ok(CrowdResult {
            tally: total,
            elapsed,
            sold_out_at_ms: first.map(|f| f.0),
            granted_at_sold_out: first.map(|f| f.1),
        })
    }
}

/// Stockade over HTTP or gRPC: the target of `stockctl bench`.
pub enum Transport {
    Http(Arc<Client>),
    Grpc(Vec<StockadeClient<Channel>>),
    /// Every write (reserve, checkout, pay, release) over `PurchaseStream` lanes, one per
    /// channel.
    GrpcStream(Arc<PurchaseLanes>),
}

/// Requests one `PurchaseStream` lane queues (waiting for the lane task, or sent and not
/// yet answered) before a caller waits; the server proposes up to its
/// `stream_in_flight_max` (64) of one stream at once.
pub const STREAM_LANE_QUEUE_MAX: usize = 4_096;

/// Error codes of a stream item that mean "not decided, try again": exactly the codes the
/// unary paths retry (HTTP 503/429, gRPC `Unavailable`/`ResourceExhausted`; see
/// `stockade_api::ApiError::statuses`), so the three protocols retry the same answers.
const STREAM_TRANSIENT_CODES: &[&str] =
    &["no_leader", "outcome_unknown", "not_ready", "overloaded"];

use pb::purchase_stream_request::Command as StreamCommand;
use pb::purchase_stream_response::Result as StreamAnswer;

type LaneReply = tokio::sync::oneshot::Sender<Outcome<StreamAnswer>>;

/// `PurchaseStream` lanes: one long-lived bidirectional stream per gRPC channel carries
/// every write of every worker on that channel, so a write costs one stream message each
/// way instead of a whole HTTP/2 request (headers, a new stream, trailers). Answers come
/// back in completion order and are matched to their callers by tag (a counter of the
/// lane). A lane whose stream breaks answers its callers in flight `transport` (they
/// retry as after a unary transport error, with the same request id) and opens a new
/// stream.
///
/// Until the eighteenth session only reservations went over a stream (`ReserveStream`,
/// matched by request id) and checkout, payment and release were unary calls: at 50
/// clients the generator then spent 35–49 µs of CPU per attempt, 18–22 µs with every
/// write on this stream (docs/benchmarks.md, "Eighteenth session").
pub struct PurchaseLanes {
    lanes: Vec<tokio::sync::mpsc::Sender<(StreamCommand, LaneReply)>>,
}

impl PurchaseLanes {
    /// One lane per channel; each lane's task runs until the lanes are dropped.
    pub fn open(chans: &[StockadeClient<Channel>]) -> Self {
        let lanes = chans
            .iter()
            .cloned()
            .map(|ch| {
                let (tx, rx) = tokio::sync::mpsc::channel(STREAM_LANE_QUEUE_MAX);
                tokio::spawn(run_lane(ch, rx));
                tx
            })
            .collect();
        PurchaseLanes { lanes }
    }

    /// Channels (and lanes) the load is spread over.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether there are no lanes at all.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// One write over lane `idx`, answered when the server answers it.
    async fn call(&self, idx: usize, cmd: StreamCommand) -> Outcome<StreamAnswer> {
        let lost = || Outcome::Transient("transport".into());
        let Some(lane) = self.lanes.get(idx) else {
            return lost();
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if lane.send((cmd, tx)).await.is_err() {
            return lost();
        }
        rx.await.unwrap_or_else(|_| lost())
    }
}

/// An answer of the wrong kind for its command (a server fault): not decided.
fn wrong_answer<T>() -> Outcome<T> {
    Outcome::Transient("bad_response".into())
}

fn stream_outcome(r: pb::PurchaseStreamResponse) -> Outcome<StreamAnswer> {
    match r.result {
        Some(StreamAnswer::Error(e)) if STREAM_TRANSIENT_CODES.contains(&e.code.as_str()) => {
            Outcome::Transient(e.code)
        }
        Some(StreamAnswer::Error(e)) => Outcome::Rejected(e.code),
        Some(answer) => Outcome::Ok(answer),
        None => wrong_answer(),
    }
}

type Waiting = std::collections::HashMap<u64, LaneReply>;

fn settle(waiting: &mut Waiting, r: pb::PurchaseStreamResponse) {
    if let Some(reply) = waiting.remove(&r.tag) {
        let _ = reply.send(stream_outcome(r));
    }
}

fn fail_all(waiting: &mut Waiting) {
    for (_, reply) in waiting.drain() {
        let _ = reply.send(Outcome::Transient("transport".into()));
    }
}

async fn run_lane(
    mut ch: StockadeClient<Channel>,
    mut rx: tokio::sync::mpsc::Receiver<(StreamCommand, LaneReply)>,
) {
    let mut waiting = Waiting::new();
    let mut next_tag: u64 = 0;
    let mut tagged = |cmd: StreamCommand| {
        next_tag = next_tag.wrapping_add(1);
        pb::PurchaseStreamRequest {
            tag: next_tag,
            command: Some(cmd),
        }
    };
    // A stream is opened when a request arrives and reopened after it breaks.
    while let Some((first, reply)) = rx.recv().await {
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(STREAM_LANE_QUEUE_MAX);
        let outbound =
            futures::stream::unfold(
                out_rx,
                |mut r| async move { r.recv().await.map(|x| (x, r)) },
            );
        let first = tagged(first);
        waiting.insert(first.tag, reply);
        let _ = out_tx.try_send(first);
        let mut inbound = match ch.purchase_stream(outbound).await {
            Ok(resp) => resp.into_inner(),
            Err(_) => {
                fail_all(&mut waiting);
                continue;
            }
        };
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some((cmd, reply)) => {
                        let req = tagged(cmd);
                        let tag = req.tag;
                        match out_tx.try_send(req) {
                            Ok(()) => {
                                waiting.insert(tag, reply);
                            }
                            Err(_) => {
                                let _ = reply.send(Outcome::Transient("overloaded".into()));
                            }
                        }
                    }
                    None => {
                        // Every sender is gone: finish what is in flight, then stop.
                        drop(out_tx);
                        while !waiting.is_empty() {
                            match inbound.message().await {
                                Ok(Some(r)) => settle(&mut waiting, r),
                                _ => break,
                            }
                        }
                        fail_all(&mut waiting);
                        return;
                    }
                },
                msg = inbound.message() => match msg {
                    Ok(Some(r)) => settle(&mut waiting, r),
                    Ok(None) | Err(_) => {
                        fail_all(&mut waiting);
                        break;
                    }
                },
            }
        }
    }
}

/// Stockade's order, as the bench needs it for payment.
pub struct OrderInfo {
    order_id: u64,
    amount_minor: u64,
    currency: String,
}

fn grpc_outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Ok(v.into_inner()),
        Err(s) => {
            let code = s
                .metadata()
                .get("x-stockade-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match (code, s.code()) {
                (Some(c), tonic::Code::Unavailable | tonic::Code::ResourceExhausted) => {
                    Outcome::Transient(c)
                }
                (Some(c), _) => Outcome::Rejected(c),
                (None, tonic::Code::DeadlineExceeded) => Outcome::Transient("timeout".into()),
                (None, _) => Outcome::Transient("transport".into()),
            }
        }
    }
}

/// The sale a Stockade [`Transport`] reserves from.
pub struct StockadeTarget {
    pub transport: Transport,
    pub sale: String,
}

impl StockadeTarget {
    async fn http<B: Serialize, T: serde::de::DeserializeOwned>(
        c: &Client,
        idx: usize,
        path: &str,
        body: &B,
    ) -> Outcome<T> {
        match c.attempt(idx, Method::POST, path, Some(body)).await {
            Attempt::Ok(resp) => match resp.json::<T>().await {
                Ok(v) => Outcome::Ok(v),
                Err(_) => Outcome::Transient("bad_response".into()),
            },
            Attempt::Rejected { code, .. } => Outcome::Rejected(code),
            Attempt::Unavailable { code, .. } => Outcome::Transient(code),
            Attempt::Transport(_) => Outcome::Transient("transport".into()),
        }
    }

    /// One unit of this sale for `user`, as a gRPC reservation.
    fn reserve_req(&self, user: &str, rid: &str, first: bool) -> pb::ReserveRequest {
        pb::ReserveRequest {
            sale_id: self.sale.clone(),
            user_id: user.to_string(),
            qty: 1,
            request_id: rid.to_string(),
            first_attempt: first,
        }
    }

    /// One write over gRPC: on lane `idx` of [`Transport::GrpcStream`] as `wrap(req)`,
    /// whose answer `pick` takes apart (another kind of answer is a server fault), or as
    /// the unary `call` on channel `idx` of [`Transport::Grpc`].
    async fn grpc_write<R, T, F, Fut>(
        &self,
        idx: usize,
        req: R,
        wrap: fn(R) -> StreamCommand,
        pick: fn(StreamAnswer) -> Option<T>,
        call: F,
    ) -> Outcome<T>
    where
        F: FnOnce(StockadeClient<Channel>, R) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match &self.transport {
            Transport::GrpcStream(lanes) => lanes
                .call(idx, wrap(req))
                .await
                .and_then(|a| pick(a).map_or_else(wrong_answer, Outcome::Ok)),
            Transport::Grpc(chans) => match chans.get(idx).cloned() {
                Some(ch) => grpc_outcome(call(ch, req).await),
                None => Outcome::Transient("transport".into()),
            },
            Transport::Http(_) => Outcome::Transient("transport".into()),
        }
    }
}

fn ordered(order_id: u64, amount_minor: u64, currency: String, status: &str) -> Ordered<OrderInfo> {
    Ordered {
        order: OrderInfo {
            order_id,
            amount_minor,
            currency,
        },
        awaiting_payment: status == "awaiting_payment",
    }
}

impl Target for StockadeTarget {
    type Hold = u64;
    type Order = OrderInfo;

    fn endpoints(&self) -> usize {
        match &self.transport {
            Transport::Http(c) => c.endpoints().len(),
            Transport::Grpc(v) => v.len(),
            Transport::GrpcStream(lanes) => lanes.len(),
        }
    }

    async fn reserve(
        &self,
        idx: usize,
        user: &str,
        rid: &str,
        first: bool,
    ) -> Outcome<Granted<u64>> {
        match &self.transport {
            Transport::Http(c) => {
                let body = ReserveBody {
                    user_id: user.to_string(),
                    qty: 1,
                    request_id: rid.to_string(),
                    first_attempt: first,
                };
                let path = format!("/v1/sales/{}/holds", seg(&self.sale));
                Self::http::<_, HoldGrantDto>(c, idx, &path, &body)
                    .await
                    .map(|g| Granted {
                        hold: g.hold_id,
                        qty: g.qty,
                    })
            }
            Transport::Grpc(_) | Transport::GrpcStream(_) => {
                let req = self.reserve_req(user, rid, first);
                let pick = |a| match a {
                    StreamAnswer::Hold(g) => Some(g),
                    _ => None,
                };
                let call = |mut ch: StockadeClient<Channel>, r: pb::ReserveRequest| async move {
                    ch.reserve(r).await
                };
                self.grpc_write(idx, req, StreamCommand::Reserve, pick, call)
                    .await
                    .map(|g| Granted {
                        hold: g.hold_id,
                        qty: g.qty,
                    })
            }
        }
    }

    async fn checkout(
        &self,
        idx: usize,
        hold: &u64,
        user: &str,
        rid: &str,
    ) -> Outcome<Ordered<OrderInfo>> {
        match &self.transport {
            Transport::Http(c) => {
                let body = UserRequestBody {
                    user_id: user.to_string(),
                    request_id: rid.to_string(),
                };
                let path = format!("/v1/holds/{hold}/checkout");
                Self::http::<_, OrderInfoDto>(c, idx, &path, &body)
                    .await
                    .map(|o| ordered(o.order_id, o.amount_minor, o.currency, &o.status))
            }
            Transport::Grpc(_) | Transport::GrpcStream(_) => {
                let req = pb::CheckoutRequest {
                    user_id: user.to_string(),
                    hold_id: *hold,
                    request_id: rid.to_string(),
                };
                let pick = |a| match a {
                    StreamAnswer::Order(o) => Some(o),
                    _ => None,
                };
                let call = |mut ch: StockadeClient<Channel>, r: pb::CheckoutRequest| async move {
                    ch.checkout(r).await
                };
                let order = self
                    .grpc_write(idx, req, StreamCommand::Checkout, pick, call)
                    .await;
                order.map(|o| ordered(o.order_id, o.amount_minor, o.currency, &o.status))
            }
        }
    }

    async fn pay(&self, idx: usize, o: &OrderInfo, user: &str, rid: &str) -> Outcome<()> {
        match &self.transport {
            Transport::Http(c) => {
                let body = PaymentBody {
                    user_id: user.to_string(),
                    amount_minor: o.amount_minor,
                    currency: o.currency.clone(),
                    payment_ref: format!("ref-{rid}"),
                    request_id: rid.to_string(),
                };
                let path = format!("/v1/orders/{}/payment", o.order_id);
                Self::http::<_, OrderIdDto>(c, idx, &path, &body)
                    .await
                    .map(|_| ())
            }
            Transport::Grpc(_) | Transport::GrpcStream(_) => {
                let req = pb::ConfirmPaymentRequest {
                    user_id: user.to_string(),
                    order_id: o.order_id,
                    amount_minor: o.amount_minor,
                    currency: o.currency.clone(),
                    payment_ref: format!("ref-{rid}"),
                    request_id: rid.to_string(),
                };
                let pick = |a| match a {
                    StreamAnswer::OrderId(o) => Some(o),
                    _ => None,
                };
                let call = |mut ch: StockadeClient<Channel>, r: pb::ConfirmPaymentRequest| async move {
                    ch.confirm_payment(r).await
                };
                self.grpc_write(idx, req, StreamCommand::ConfirmPayment, pick, call)
                    .await
                    .map(|_| ())
            }
        }
    }

    async fn release(&self, idx: usize, hold: &u64, user: &str, rid: &str) -> Outcome<()> {
        match &self.transport {
            Transport::Http(c) => {
                let body = UserRequestBody {
                    user_id: user.to_string(),
                    request_id: rid.to_string(),
                };
                let path = format!("/v1/holds/{hold}/release");
                Self::http::<_, serde_json::Value>(c, idx, &path, &body)
                    .await
                    .map(|_| ())
            }
            Transport::Grpc(_) | Transport::GrpcStream(_) => {
                let req = pb::ReleaseRequest {
                    user_id: user.to_string(),
                    hold_id: *hold,
                    request_id: rid.to_string(),
                };
                let pick = |a| match a {
                    StreamAnswer::Released(r) => Some(r),
                    _ => None,
                };
                let call = |mut ch: StockadeClient<Channel>, r: pb::ReleaseRequest| async move {
                    ch.release(r).await
                };
                self.grpc_write(idx, req, StreamCommand::Release, pick, call)
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Latency percentiles, milliseconds.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The oversell check: every field must hold.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Check {
    /// Server: sold ≤ quantity.
    pub sold_le_quantity: bool,
    /// Server: available + held + awaiting_payment + sold == quantity.
    pub conserves: bool,
    /// Units the server says it reserved during the run, versus what the bench saw
    /// granted (may exceed it by at most the requests whose outcome stayed unknown).
    pub server_units_reserved: u64,
    /// Units in use (held + awaiting + sold) that appeared during the run.
    pub server_units_in_use_delta: i64,
    /// Units returned during the run (expired, released, cancelled, timed out).
    pub server_units_returned: u64,
    /// bench granted − returned ≤ in-use delta ≤ that + unknown outcomes.
    pub holds_reconciled: bool,
    pub ok: bool,
}

#[derive(Serialize, Debug, Clone)]
pub struct BenchReport {
    pub sale_id: String,
    pub protocol: String,
    pub users: u64,
    pub users_done: u64,
    pub bots_share: f64,
    pub concurrency: usize,
    pub quantity: u32,
    pub attempts: u64,
    pub requests: u64,
    pub holds_granted: u64,
    pub units_granted: u64,
    pub checkouts: u64,
    pub sold: u64,
    pub unknown_outcomes: u64,
    pub rejections: BTreeMap<String, u64>,
    pub transient_errors: BTreeMap<String, u64>,
    pub elapsed_ms: u64,
    pub throughput_ops_per_s: f64,
    pub latency: Latency,
    pub time_to_sell_out_ms: Option<u64>,
    pub counters_after: CountersDto,
    pub check: Check,
}

fn units_in_use(c: &CountersDto) -> i64 {
    i64::from(c.held) + i64::from(c.awaiting_payment) + i64::from(c.sold)
}

/// The oversell check from the sale before and after, and what the bench saw.
pub fn check(before: &SaleDto, after: &SaleDto, units_granted: u64, unknown: u64) -> Check {
    let c = &after.counters;
    let q = after.spec.quantity;
    let sum = u64::from(c.available)
        + u64::from(c.held)
        + u64::from(c.awaiting_payment)
        + u64::from(c.sold);
    let (b, a) = (&before.stats, &after.stats);
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let reserved = d(b.units_reserved, a.units_reserved);
    // The bench reserves one unit per hold, so returned holds and orders are units.
    let returned = d(b.holds_expired, a.holds_expired)
        + d(b.holds_released, a.holds_released)
        + d(b.orders_cancelled, a.orders_cancelled)
        + d(b.orders_timed_out, a.orders_timed_out);
    let delta = units_in_use(c) - units_in_use(&before.counters);
    let lo = units_granted as i64 - returned as i64;
    let hi = lo + unknown as i64;
    let reconciled = (lo..=hi).contains(&delta)
        && units_granted <= reserved
        && reserved <= units_granted + unknown;
    let sold_le_quantity = c.sold <= q;
    let conserves = sum == u64::from(q);
    Check {
        sold_le_quantity,
        conserves,
        server_units_reserved: reserved,
        server_units_in_use_delta: delta,
        server_units_returned: returned,
        holds_reconciled: reconciled,
        ok: sold_le_quantity && conserves && reconciled,
    }
}

fn validate(a: &BenchArgs) -> Result<(), CliError> {
    let bad = |m: String| CliError::Usage(crate::args::UsageError::Invalid(m));
    if a.users == 0 || a.users > USERS_MAX {
        return Err(bad(format!("--users must be 1..={USERS_MAX}")));
    }
    if a.concurrency == 0 || a.concurrency > CONCURRENCY_MAX {
        return Err(bad(format!("--concurrency must be 1..={CONCURRENCY_MAX}")));
    }
    if !(0.0..=1.0).contains(&a.bots) {
        return Err(bad("--bots must be a share in 0..=1".into()));
    }
    if a.duration_max == 0 || a.duration_max > DURATION_S_MAX {
        return Err(bad(format!(
            "--duration-max must be 1..={DURATION_S_MAX} s"
        )));
    }
    if a.sale.is_none() && a.quantity == 0 {
        return Err(bad("--quantity must be at least 1".into()));
    }
    Ok(())
}

async fn grpc_transport(
    client: &Client,
    cfg: &Config,
    a: &BenchArgs,
) -> Result<Transport, CliError> {
    let mut addrs = Vec::new();
    if a.grpc_endpoints.is_empty() {
        // The gRPC address of each given node, from its own status (no other node).
        for i in 0..client.endpoints().len() {
            let st: ClusterStatusDto = client.pinned(i)?.get("/admin/status").await?.value;
            let me = st.members.iter().find(|m| m.node_id == st.node_id);
            match me {
                Some(m) => addrs.push(m.raft_addr.clone()),
                None => {
                    return Err(CliError::Bench(format!(
                        "node {} is not a member: pass --grpc-endpoints",
                        st.node_id
                    )))
                }
            }
        }
    } else {
        addrs = a.grpc_endpoints.clone();
    }
    Ok(Transport::Grpc(grpc_clients(
        &addrs,
        a.concurrency,
        cfg.timeout,
    )?))
}

/// gRPC clients: `concurrency` (at most [`GRPC_CHANNELS_MAX`]) lazily connected channels
/// spread over `addrs` (`host:port` or a URL).
pub fn grpc_clients(
    addrs: &[String],
    concurrency: usize,
    timeout: Duration,
) -> Result<Vec<StockadeClient<Channel>>, CliError> {
    let mut chans = Vec::new();
    let per = (concurrency.min(GRPC_CHANNELS_MAX) / addrs.len().max(1)).max(1);
    for addr in addrs {
        let url = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        for _ in 0..per {
            let ep = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| {
                    CliError::Usage(crate::args::UsageError::Invalid(format!("{addr}: {e}")))
                })?
                .timeout(timeout)
                .connect_timeout(timeout)
                .tcp_nodelay(true);
            chans.push(StockadeClient::new(ep.connect_lazy()));
        }
    }
    Ok(chans)
}

pub async fn run(client: Arc<Client>, cfg: &Config, a: BenchArgs) -> Result<(), CliError> {
    validate(&a)?;
    let run_id = format!("bench-{:x}", now_ms());
    let sale_id = match &a.sale {
        Some(s) => s.clone(),
        None => {
            let now = now_ms();
            let spec = SaleSpecDto {
                id: run_id.clone(),
                product: ProductDto {
                    sku: "BENCH".into(),
                    name: "Bench unit".into(),
                    description: String::new(),
                    image_url: String::new(),
                },
                list_price_minor: 1_000,
                sale_price_minor: 500,
                currency: "EUR".into(),
                quantity: a.quantity,
                starts_at_ms: now.saturating_sub(1_000),
                ends_at_ms: now + 3_600_000,
                per_user_limit: 1,
                hold_ttl_ms: BENCH_HOLD_TTL_MS,
                payment_window_ms: BENCH_PAYMENT_WINDOW_MS,
            };
            client
                .post::<_, SaleIdDto>("/v1/sales", &spec)
                .await?
                .value
                .sale_id
        }
    };
    let sale_path = format!("/v1/sales/{}", seg(&sale_id));
    let before: SaleDto = client.get(&sale_path).await?.value;
    let transport = match a.protocol {
        Protocol::Http => Transport::Http(client.clone()),
        Protocol::Grpc => grpc_transport(&client, cfg, &a).await?,
        Protocol::GrpcStream => match grpc_transport(&client, cfg, &a).await? {
            Transport::Grpc(chans) => Transport::GrpcStream(Arc::new(PurchaseLanes::open(&chans))),
            other => other,
        },
    };
    let target = Arc::new(StockadeTarget {
        transport,
        sale: sale_id.clone(),
    });
    let crowd = CrowdRun::new(Crowd {
        users: a.users,
        bots: a.bots,
        concurrency: a.concurrency,
        duration_max: Duration::from_secs(a.duration_max),
        attempts_max: a.attempts_max.unwrap_or(u64::MAX),
        after_hold: if a.checkout_pay {
            AfterHold::CheckoutPay
        } else {
            AfterHold::Keep
        },
        hammer_after_sold_out: None,
        arrival: Arrival::Closed,
        run_id,
    });
    let progress = crowd.progress();

    let bar = if !a.no_progress && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(a.users);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} users {msg}",
        ) {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };
    let ticker = bar.clone().map(|b| {
        let p = progress.clone();
        let users = a.users;
        tokio::spawn(async move {
            loop {
                let done = p.next_user.load(Ordering::Relaxed).min(users);
                b.set_position(done);
                b.set_message(format!(
                    "{} attempts, {} granted",
                    p.attempts.load(Ordering::Relaxed),
                    p.granted.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let result = crowd.run(target).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let CrowdResult {
        tally: total,
        elapsed,
        sold_out_at_ms: sold_out,
        ..
    } = result?;

    let after: SaleDto = client.get(&sale_path).await?.value;
    let check = check(&before, &after, total.units_granted, total.unknown);
    let h = &total.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let report = BenchReport {
        sale_id,
        protocol: match a.protocol {
            Protocol::Http => "http".into(),
            Protocol::Grpc => "grpc".into(),
            Protocol::GrpcStream => "grpc-stream".into(),
        },
        users: a.users,
        users_done: total.users_done,
        bots_share: a.bots,
        concurrency: a.concurrency,
        quantity: after.spec.quantity,
        attempts: total.attempts,
        requests: total.ops,
        holds_granted: total.holds_granted,
        units_granted: total.units_granted,
        checkouts: total.checkouts,
        sold: total.sold,
        unknown_outcomes: total.unknown,
        rejections: total.rejections.clone(),
        transient_errors: total.transient.clone(),
        elapsed_ms,
        throughput_ops_per_s: if elapsed.as_secs_f64() > 0.0 {
            (total.ops as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency: Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        },
        time_to_sell_out_ms: sold_out,
        counters_after: after.counters.clone(),
        check,
    };
    match cfg.output {
        Output::Json => println!("{}", crate::output::json(&report)),
        Output::Table => print!("{}", report_text(&report)),
    }
    if report.check.ok {
        Ok(())
    } else {
        Err(CliError::Bench(
            "oversell check failed: the server's counters do not match (see the report)".into(),
        ))
    }
}

/// The report for people.
pub fn report_text(r: &BenchReport) -> String {
    let codes = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let c = &r.counters_after;
    let k = &r.check;
    let yes = |b: bool| if b { "ok" } else { "FAILED" }.to_string();
    kv(&[
        ("sale", format!("{} ({} units)", r.sale_id, r.quantity)),
        (
            "crowd",
            format!(
                "{} users ({} done), {:.0}% bots, {} concurrent, {}",
                r.users,
                r.users_done,
                r.bots_share * 100.0,
                r.concurrency,
                r.protocol
            ),
        ),
        ("attempts", r.attempts.to_string()),
        ("requests", r.requests.to_string()),
        (
            "holds granted",
            format!("{} ({} units)", r.holds_granted, r.units_granted),
        ),
        ("checkouts", r.checkouts.to_string()),
        ("sold", r.sold.to_string()),
        ("rejections", codes(&r.rejections)),
        ("transient errors", codes(&r.transient_errors)),
        ("unknown outcomes", r.unknown_outcomes.to_string()),
        ("elapsed", secs(r.elapsed_ms)),
        ("throughput", format!("{} ops/s", r.throughput_ops_per_s)),
        (
            "latency",
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                r.latency.p50_ms, r.latency.p90_ms, r.latency.p99_ms, r.latency.max_ms
            ),
        ),
        (
            "time to sell out",
            r.time_to_sell_out_ms
                .map(secs)
                .unwrap_or_else(|| "not sold out".into()),
        ),
        (
            "server counters",
            format!(
                "available {} / held {} / awaiting {} / sold {}",
                c.available, c.held, c.awaiting_payment, c.sold
            ),
        ),
        ("sold <= quantity", yes(k.sold_le_quantity)),
        ("counters conserve", yes(k.conserves)),
        (
            "holds reconciled",
            format!(
                "{} (server reserved {} units, in use +{}, returned {})",
                yes(k.holds_reconciled),
                k.server_units_reserved,
                k.server_units_in_use_delta,
                k.server_units_returned
            ),
        ),
        ("oversell check", yes(k.ok)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sale of `units` in memory: reserve takes one while any is left.
    struct FakeSale {
        units: AtomicU64,
    }

    impl Target for FakeSale {
        type Hold = u64;
        type Order = u64;
        fn endpoints(&self) -> usize {
            3
        }
        async fn reserve(&self, _: usize, _: &str, _: &str, _: bool) -> Outcome<Granted<u64>> {
            let took = self
                .units
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
            match took {
                Ok(u) => Outcome::Ok(Granted { hold: u, qty: 1 }),
                Err(_) => Outcome::Rejected("sold_out".into()),
            }
        }
        async fn checkout(&self, _: usize, h: &u64, _: &str, _: &str) -> Outcome<Ordered<u64>> {
            Outcome::Ok(Ordered {
                order: *h,
                awaiting_payment: true,
            })
        }
        async fn pay(&self, _: usize, _: &u64, _: &str, _: &str) -> Outcome<()> {
            Outcome::Ok(())
        }
        async fn release(&self, _: usize, _: &u64, _: &str, _: &str) -> Outcome<()> {
            Outcome::Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_request_lands_in_the_merged_histograms_once() {
        // More workers than latency shards, so shards are shared.
        let run = CrowdRun::new(Crowd {
            users: 700,
            bots: 0.0,
            concurrency: 3 * LATENCY_SHARDS + 1,
            duration_max: Duration::from_secs(60),
            attempts_max: u64::MAX,
            after_hold: AfterHold::CheckoutPay,
            hammer_after_sold_out: None,
            arrival: Arrival::Closed,
            run_id: "t".into(),
        });
        let sale = Arc::new(FakeSale {
            units: AtomicU64::new(500),
        });
        let r = run.run(sale).await.unwrap();
        let t = &r.tally;
        assert_eq!(t.attempts, 700);
        assert_eq!(t.holds_granted, 500);
        // Reserve, then checkout and pay for each hold.
        assert_eq!(t.ops, 700 + 2 * 500);
        assert_eq!(t.latency_us.len(), t.ops);
        assert_eq!(t.reserve_us.len(), t.attempts);
    }

    #[test]
    fn bot_share_is_respected() {
        let bots = (0..10_000).filter(|&i| is_bot(i, 0.1)).count();
        assert!((900..=1100).contains(&bots), "{bots}");
        assert!(!(0..1000).any(|i| is_bot(i, 0.0)));
        assert!((0..1000).all(|i| is_bot(i, 1.0)));
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn sale(available: u32, held: u32, awaiting: u32, sold: u32, reserved: u64) -> SaleDto {
        SaleDto {
            spec: SaleSpecDto {
                id: "s".into(),
                product: ProductDto {
                    sku: "P".into(),
                    name: "N".into(),
                    description: String::new(),
                    image_url: String::new(),
                },
                list_price_minor: 1,
                sale_price_minor: 1,
                currency: "EUR".into(),
                quantity: 10,
                starts_at_ms: 0,
                ends_at_ms: 1,
                per_user_limit: 1,
                hold_ttl_ms: 1,
                payment_window_ms: 0,
            },
            status: "active".into(),
            counters: CountersDto {
                available,
                held,
                awaiting_payment: awaiting,
                sold,
            },
            stats: SaleStatsDto {
                holds_granted: reserved,
                units_reserved: reserved,
                holds_expired: 0,
                holds_released: 0,
                checkouts: 0,
                orders_paid: 0,
                orders_cancelled: 0,
                orders_timed_out: 0,
                unique_buyers: 0,
                waitlist_joined: 0,
                waitlist_promoted: 0,
                sold_out_at_ms: None,
                fully_sold_at_ms: None,
                waitlist_len: 0,
            },
            ended_early_at_ms: None,
            as_of_ms: 0,
        }
    }

    #[test]
    fn exact_run_passes() {
        let c = check(&sale(10, 0, 0, 0, 0), &sale(2, 5, 1, 2, 8), 8, 0);
        assert!(c.ok, "{c:?}");
    }

    #[test]
    fn a_grant_the_bench_never_saw_fails_unless_an_outcome_was_unknown() {
        let c = check(&sale(10, 0, 0, 0, 0), &sale(1, 9, 0, 0, 9), 8, 0);
        assert!(!c.holds_reconciled && !c.ok, "{c:?}");
        let c = check(&sale(10, 0, 0, 0, 0), &sale(1, 9, 0, 0, 9), 8, 1);
        assert!(c.ok, "{c:?}");
    }

    #[test]
    fn broken_conservation_fails() {
        let c = check(&sale(10, 0, 0, 0, 0), &sale(3, 5, 1, 2, 8), 8, 0);
        assert!(!c.conserves && !c.ok, "{c:?}");
    }
}
