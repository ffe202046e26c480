//! The workload: concurrent clients issuing flash-sale ops and recording them.
//!
//! This module owns the sales a run creates ([`sale_plan`]: small sales with short hold
//! TTLs and payment windows, two more opening every five seconds so reserves keep
//! succeeding through the run), the client loop (reserve, release, checkout, pay, cancel,
//! read_sale, and waitlist joins: after a `sold_out` or `insufficient_stock` answer a
//! client joins that sale's waitlist at a modest rate ([`WAITLIST_JOIN_PERMILLE_DEFAULT`],
//! every sale; the run's knob), and at [`WAITLIST_JOIN_PERMILLE_HEAVY`] on the waitlist
//! sale `js-w` of a `--waitlist` run, whose clients then keep at it without backing off;
//! releases and cancels are frequent so units come back and go to the waitlist heads) and
//! the [`Recorder`] that turns each request into a history [`Op`] with its invoke and
//! completion times.
//!
//! An `Info` mutation is retried with the same call and request id (a new op in the
//! history) at most [`INFO_RETRIES_MAX`] times, on the next node, to settle it. Clients
//! stop at the deadline or at [`OPS_MAX`] ops in total. It must not inject faults and must
//! not read the final state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{Answer, Client};
use super::rng::Rng;
use crate::history::{Call, Counters, OkValue, Op, OrderStatus, Outcome, SaleMeta};

/// Ops recorded in one run at most (all clients together).
pub const OPS_MAX: u64 = 50_000;
/// Retries of one unknown-outcome mutation with the same request id.
pub const INFO_RETRIES_MAX: u32 = 4;
/// Pause before such a retry.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Think time between two ops of one client, in ms (uniform).
pub const THINK_MS: (u64, u64) = (20, 80);
/// Holds and orders a client remembers (oldest forgotten first).
pub const KNOWN_MAX: usize = 16;
/// Users per sale (per-user limits bite when they share).
pub const USERS_PER_SALE: u64 = 8;
/// A new wave of sales opens this often (ms).
pub const WAVE_MS: u64 = 5_000;
/// Most waves in one run.
pub const WAVES_MAX: u64 = 24;
/// Sales opening in each wave.
pub const SALES_PER_WAVE: u8 = 2;
/// Per mille of reserves sent to a sale that has not opened yet (refused, not modeled).
pub const NOT_OPEN_PROBE_PERMILLE: u64 = 30;
/// Per mille of a held hold's next step that is a release (the rest: checkout).
pub const RELEASE_PERMILLE: u64 = 500;
/// Per mille of an order's next step that is a cancel (the rest: pay).
pub const CANCEL_PERMILLE: u64 = 500;
/// After a `sold_out` answer a client leaves that sale alone this long …
pub const SOLD_OUT_BACKOFF: Duration = Duration::from_millis(800);
/// … except for this share of its picks, per mille (to probe it).
pub const SOLD_OUT_PROBE_PERMILLE: u64 = 100;
/// Per mille of `sold_out` / `insufficient_stock` answers followed by a waitlist join of
/// that user to that sale, by default (every sale, every run; an `insufficient_stock`
/// answer makes it a probe of the `not_sold_out` refusal).
pub const WAITLIST_JOIN_PERMILLE_DEFAULT: u64 = 150;
/// The same on the waitlist sale of a `--waitlist` run (whose clients do not back off).
pub const WAITLIST_JOIN_PERMILLE_HEAVY: u64 = 500;
/// Sale price of every unit, minor units.
pub const PRICE_MINOR: u64 = 1_000;
pub const CURRENCY: &str = "EUR";

/// One sale of a run and when it opens.
#[derive(Debug, Clone)]
pub struct SalePlan {
    pub meta: SaleMeta,
    /// Milliseconds after the run's start at which it opens.
    pub opens_after_ms: u64,
    /// Clients keep reserving it when sold out (no back-off) and join its waitlist at
    /// [`WAITLIST_JOIN_PERMILLE_HEAVY`].
    pub waitlist: bool,
}

fn sale(id: String, quantity: u32, limit: u32, ttl: u64, pay: u64) -> SaleMeta {
    SaleMeta {
        sale_id: id,
        quantity,
        per_user_limit: limit,
        hold_ttl_ms: ttl,
        payment_window_ms: pay,
    }
}

/// The shapes of the sales of a wave, in turn: (quantity, per-user limit, hold TTL ms,
/// payment window ms; 0 = cash on delivery).
const SALE_SHAPES: [(u32, u32, u64, u64); 6] = [
    (8, 2, 1_500, 2_000),
    (6, 2, 2_500, 0),
    (5, 1, 1_000, 1_500),
    (8, 2, 1_200, 1_500),
    (6, 2, 2_000, 1_000),
    (6, 1, 1_500, 2_000),
];

/// The sales of a run of `run_ms`: [`SALES_PER_WAVE`] small sales with short TTLs and
/// payment windows open every [`WAVE_MS`] (at most [`WAVES_MAX`] waves), so fresh stock
/// keeps coming while earlier sales sell out; plus one tiny sale (`js-w`) open from the
/// start, the waitlist sale of a `--waitlist` run.
pub fn sale_plan(run_ms: u64) -> Vec<SalePlan> {
    let waves = (run_ms / WAVE_MS).clamp(1, WAVES_MAX);
    let mut out = vec![SalePlan {
        meta: sale("js-w".into(), 3, 1, 1_000, 1_500),
        opens_after_ms: 0,
        waitlist: true,
    }];
    let mut shape = SALE_SHAPES.iter().cycle();
    for w in 0..waves {
        for k in 0..SALES_PER_WAVE {
            let Some(&(q, limit, ttl, pay)) = shape.next() else {
                break;
            };
            out.push(SalePlan {
                meta: sale(
                    format!("js-{w}{}", char::from(b'a' + k)),
                    q,
                    limit,
                    ttl,
                    pay,
                ),
                opens_after_ms: w * WAVE_MS,
                waitlist: false,
            });
        }
    }
    out
}

/// The sales of a run of `run_ms` (history metadata).
pub fn sales_for_run(run_ms: u64) -> Vec<SaleMeta> {
    sale_plan(run_ms).into_iter().map(|p| p.meta).collect()
}

/// The `POST /v1/sales` body of a sale, open from now for an hour.
pub fn sale_spec(s: &SaleMeta, now_ms: u64) -> Value {
    sale_spec_from(s, now_ms.saturating_sub(60_000), now_ms)
}

/// The `POST /v1/sales` body of a sale opening at `starts_at_ms`, open for an hour after
/// `now_ms`.
pub fn sale_spec_from(s: &SaleMeta, starts_at_ms: u64, now_ms: u64) -> Value {
    json!({
        "id": s.sale_id,
        "product": {"sku": format!("sku-{}", s.sale_id), "name": "Jepsen widget"},
        "list_price_minor": PRICE_MINOR * 2,
        "sale_price_minor": PRICE_MINOR,
        "currency": CURRENCY,
        "quantity": s.quantity,
        "starts_at_ms": starts_at_ms,
        "ends_at_ms": now_ms + 3_600_000,
        "per_user_limit": s.per_user_limit,
        "hold_ttl_ms": s.hold_ttl_ms,
        "payment_window_ms": s.payment_window_ms,
    })
}

/// Collects ops from every client.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reserves an op id, or `None` once [`OPS_MAX`] ops were issued.
    fn begin(&self) -> Option<(u64, u64)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id < OPS_MAX).then(|| (id, self.now_ns()))
    }

    fn finish(&self, op: Op) {
        if let Ok(mut v) = self.ops.lock() {
            v.push(op);
        }
    }

    /// Every op, in invoke order.
    pub fn take(&self) -> Vec<Op> {
        let mut v = match self.ops.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        v.sort_by_key(|o| (o.invoke_ns, o.id));
        v
    }
}

struct KnownHold {
    sale: String,
    user: String,
    hold_id: u64,
}

struct KnownOrder {
    sale: String,
    user: String,
    order_id: u64,
    amount: u64,
}

/// One client (a Jepsen process).
pub struct Worker {
    pub process: u64,
    pub nodes: Vec<String>,
    pub node_ix: usize,
    pub rng: Rng,
    pub sales: Vec<SalePlan>,
    pub client: Client,
    pub rec: Arc<Recorder>,
    pub deadline: Instant,
    /// The run's start and length (sales open in waves over it).
    pub start: Instant,
    pub run_ms: u64,
    /// Sales this client saw sold out, and until when it leaves them alone.
    sold_out_until: std::collections::BTreeMap<String, Instant>,
    /// Per mille of sold-out answers followed by a waitlist join (sales not marked
    /// `waitlist`).
    join_permille: u64,
    seq: u64,
    holds: Vec<KnownHold>,
    orders: Vec<KnownOrder>,
}

fn parse_ok(call: &Call, v: &Value) -> Option<OkValue> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    Some(match call {
        Call::Reserve { .. } => OkValue::Held {
            hold_id: u("hold_id")?,
            qty: u32::try_from(u("qty")?).ok()?,
            expires_at_ms: u("expires_at_ms")?,
        },
        Call::Release { .. } => OkValue::Released {
            hold_id: u("hold_id")?,
        },
        Call::Checkout { .. } => OkValue::CheckedOut {
            order_id: u("order_id")?,
            qty: u32::try_from(u("qty")?).ok()?,
            status: parse_status(v.get("status")?.as_str()?)?,
            pay_by_ms: u("pay_by_ms"),
        },
        Call::Pay { .. } => OkValue::Paid {
            order_id: u("order_id")?,
        },
        Call::Cancel { .. } => OkValue::Cancelled {
            order_id: u("order_id")?,
        },
        Call::FailPayment { .. } => OkValue::PaymentFailed {
            order_id: u("order_id")?,
        },
        Call::JoinWaitlist { .. } => OkValue::WaitlistJoined {
            position: u32::try_from(u("position")?).ok()?,
        },
        Call::ReadSale { .. } => {
            let c = v.get("counters")?;
            let g = |k: &str| {
                c.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|x| u32::try_from(x).ok())
            };
            OkValue::Sale {
                counters: Counters {
                    available: g("available")?,
                    held: g("held")?,
                    awaiting_payment: g("awaiting_payment")?,
                    sold: g("sold")?,
                },
                waitlist_len: v
                    .pointer("/stats/waitlist_len")
                    .and_then(Value::as_u64)
                    .and_then(|x| u32::try_from(x).ok())
                    .unwrap_or(0),
            }
        }
    })
}

pub fn parse_status(s: &str) -> Option<OrderStatus> {
    Some(match s {
        "awaiting_payment" => OrderStatus::AwaitingPayment,
        "paid" => OrderStatus::Paid,
        "confirmed" => OrderStatus::Confirmed,
        "cancelled" => OrderStatus::Cancelled,
        _ => return None,
    })
}

/// The request a call makes: method POST (with body) or GET (body `None`), path. A
/// reservation's `first` send says so (`first_attempt`: the node may refuse it from a
/// read); its retries do not, so they go through the log and are recorded.
fn request_of(call: &Call, first: bool) -> (String, Option<Value>) {
    match call {
        Call::Reserve {
            sale_id,
            user_id,
            qty,
            request_id,
        }
        | Call::JoinWaitlist {
            sale_id,
            user_id,
            qty,
            request_id,
        } => {
            let reserve = matches!(call, Call::Reserve { .. });
            let tail = if reserve { "holds" } else { "waitlist" };
            let mut body = json!({"user_id": user_id, "qty": qty, "request_id": request_id});
            if reserve && first {
                body["first_attempt"] = Value::Bool(true);
            }
            (format!("/v1/sales/{sale_id}/{tail}"), Some(body))
        }
        Call::Release {
            user_id,
            hold_id,
            request_id,
            ..
        } => (
            format!("/v1/holds/{hold_id}/release"),
            Some(json!({"user_id": user_id, "request_id": request_id})),
        ),
        Call::Checkout {
            user_id,
            hold_id,
            request_id,
            ..
        } => (
            format!("/v1/holds/{hold_id}/checkout"),
            Some(json!({"user_id": user_id, "request_id": request_id})),
        ),
        Call::Pay {
            user_id,
            order_id,
            amount_minor,
            request_id,
            ..
        } => (
            format!("/v1/orders/{order_id}/payment"),
            Some(json!({
                "user_id": user_id,
                "amount_minor": amount_minor,
                "currency": CURRENCY,
                "payment_ref": format!("ref-{request_id}"),
                "request_id": request_id,
            })),
        ),
        Call::Cancel {
            user_id,
            order_id,
            request_id,
            ..
        } => (
            format!("/v1/orders/{order_id}/cancel"),
            Some(json!({"user_id": user_id, "request_id": request_id})),
        ),
        Call::FailPayment {
            user_id,
            order_id,
            request_id,
            ..
        } => (
            format!("/v1/orders/{order_id}/payment-failure"),
            Some(json!({"user_id": user_id, "reason": "declined", "request_id": request_id})),
        ),
        Call::ReadSale {
            sale_id,
            linearizable,
        } => {
            let q = if *linearizable {
                "linearizable"
            } else {
                "stale"
            };
            (format!("/v1/sales/{sale_id}?consistency={q}"), None)
        }
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        process: u64,
        nodes: Vec<String>,
        node_ix: usize,
        rng: Rng,
        sales: Vec<SalePlan>,
        client: Client,
        rec: Arc<Recorder>,
        start: Instant,
        deadline: Instant,
    ) -> Worker {
        let run_ms = u64::try_from(deadline.saturating_duration_since(start).as_millis())
            .unwrap_or(u64::MAX);
        Worker {
            process,
            nodes,
            node_ix,
            rng,
            sales,
            client,
            rec,
            deadline,
            start,
            run_ms,
            sold_out_until: std::collections::BTreeMap::new(),
            join_permille: WAITLIST_JOIN_PERMILLE_DEFAULT,
            seq: 0,
            holds: Vec::new(),
            orders: Vec::new(),
        }
    }

    /// Sets the per mille of sold-out answers followed by a waitlist join (0: none,
    /// except on a sale marked `waitlist`).
    pub fn with_join_permille(mut self, permille: u64) -> Worker {
        self.join_permille = permille.min(1_000);
        self
    }

    fn node(&self) -> &str {
        self.nodes
            .get(self.node_ix % self.nodes.len().max(1))
            .map(String::as_str)
            .unwrap_or("127.0.0.1:1")
    }

    fn rotate(&mut self) {
        self.node_ix = self.node_ix.wrapping_add(1);
    }

    fn request_id(&mut self) -> String {
        self.seq += 1;
        format!("p{}-{}", self.process, self.seq)
    }

    /// Sends one call once and records it.
    async fn once(&mut self, call: &Call, first: bool) -> Option<Outcome> {
        let (id, invoke_ns) = self.rec.begin()?;
        let (path, body) = request_of(call, first);
        let node = self.node().to_string();
        let answer = match &body {
            Some(b) => self.client.post(&node, &path, b).await,
            None => self.client.get(&node, &path).await,
        };
        let complete_ns = self.rec.now_ns();
        let outcome = match answer {
            Answer::Ok(v) => match parse_ok(call, &v) {
                Some(value) => Outcome::Ok { value },
                None => Outcome::Info {
                    reason: format!("unexpected ok body: {v}"),
                },
            },
            Answer::Fail { code, message } => {
                if code == super::client::CONNECT_FAILED {
                    self.rotate();
                }
                Outcome::Fail { code, message }
            }
            Answer::Info(reason) => {
                self.rotate();
                Outcome::Info { reason }
            }
        };
        self.rec.finish(Op {
            id,
            process: self.process,
            call: call.clone(),
            invoke_ns,
            complete_ns: Some(complete_ns),
            outcome: outcome.clone(),
        });
        Some(outcome)
    }

    /// Sends a call, retrying an unknown outcome of a mutation with the same request id.
    async fn run_call(&mut self, call: Call) -> Option<Outcome> {
        let mut out = self.once(&call, true).await?;
        let mut tries = 0;
        while out.is_info() && call.client_key().is_some() && tries < INFO_RETRIES_MAX {
            tries += 1;
            tokio::time::sleep(RETRY_BACKOFF).await;
            out = self.once(&call, false).await?;
        }
        Some(out)
    }

    fn remember_hold(&mut self, h: KnownHold) {
        if self.holds.len() >= KNOWN_MAX {
            self.holds.remove(0);
        }
        self.holds.push(h);
    }

    fn remember_order(&mut self, o: KnownOrder) {
        if self.orders.len() >= KNOWN_MAX {
            self.orders.remove(0);
        }
        self.orders.push(o);
    }

    /// The client loop: until the deadline or [`OPS_MAX`].
    pub async fn run(mut self) {
        while Instant::now() < self.deadline {
            let think = self.rng.between(THINK_MS.0, THINK_MS.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            if self.step().await.is_none() {
                break;
            }
        }
    }

    /// A sale that is open now and not seen sold out lately (rarely one that is not, to
    /// probe the refusal), and whether a reserve should rather be a read: every open sale
    /// is backed off, or none is open yet.
    fn pick_sale(&mut self) -> Option<(SalePlan, bool)> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let probe = self.rng.below(1_000) < SOLD_OUT_PROBE_PERMILLE;
        let t = Instant::now();
        let open: Vec<&SalePlan> = self
            .sales
            .iter()
            .filter(|s| s.opens_after_ms <= now)
            .filter(|s| {
                probe
                    || self
                        .sold_out_until
                        .get(&s.meta.sale_id)
                        .is_none_or(|u| *u <= t)
            })
            .collect();
        let any_probe = self.rng.below(1_000) < NOT_OPEN_PROBE_PERMILLE;
        if open.is_empty() || any_probe {
            return self
                .sales
                .get(self.rng.below(self.sales.len() as u64) as usize)
                .map(|s| (s.clone(), !any_probe));
        }
        open.get(self.rng.below(open.len() as u64) as usize)
            .map(|s| ((*s).clone(), false))
    }

    async fn step(&mut self) -> Option<()> {
        let roll = self.rng.below(100);
        let (plan, read_instead) = self.pick_sale()?;
        let sale = plan.meta.clone();
        if roll < 15 || (roll >= 60 && read_instead) {
            let call = Call::ReadSale {
                sale_id: sale.sale_id,
                linearizable: true,
            };
            self.run_call(call).await?;
            return Some(());
        }
        if roll < 45 && !self.holds.is_empty() {
            let i = self.rng.below(self.holds.len() as u64) as usize;
            let h = self.holds.remove(i);
            let release = self.rng.below(1_000) < RELEASE_PERMILLE;
            let rid = self.request_id();
            let call = if release {
                Call::Release {
                    sale_id: h.sale.clone(),
                    user_id: h.user.clone(),
                    hold_id: h.hold_id,
                    request_id: rid,
                }
            } else {
                Call::Checkout {
                    sale_id: h.sale.clone(),
                    user_id: h.user.clone(),
                    hold_id: h.hold_id,
                    request_id: rid,
                }
            };
            if let Outcome::Ok {
                value:
                    OkValue::CheckedOut {
                        order_id,
                        qty,
                        status: OrderStatus::AwaitingPayment,
                        ..
                    },
            } = self.run_call(call).await?
            {
                self.remember_order(KnownOrder {
                    sale: h.sale,
                    user: h.user,
                    order_id,
                    amount: PRICE_MINOR * u64::from(qty),
                });
            }
            return Some(());
        }
        if roll < 60 && !self.orders.is_empty() {
            let i = self.rng.below(self.orders.len() as u64) as usize;
            let o = self.orders.remove(i);
            let rid = self.request_id();
            let call = if self.rng.below(1_000) < CANCEL_PERMILLE {
                Call::Cancel {
                    sale_id: o.sale,
                    user_id: o.user,
                    order_id: o.order_id,
                    request_id: rid,
                }
            } else {
                Call::Pay {
                    sale_id: o.sale,
                    user_id: o.user,
                    order_id: o.order_id,
                    amount_minor: o.amount,
                    request_id: rid,
                }
            };
            self.run_call(call).await?;
            return Some(());
        }
        let user = format!("u{}", 1 + self.rng.below(USERS_PER_SALE));
        let qty = 1 + self.rng.below(u64::from(sale.per_user_limit.max(1))) as u32;
        let rid = self.request_id();
        let call = Call::Reserve {
            sale_id: sale.sale_id.clone(),
            user_id: user.clone(),
            qty,
            request_id: rid,
        };
        match self.run_call(call).await? {
            Outcome::Ok {
                value: OkValue::Held { hold_id, .. },
            } => {
                self.remember_hold(KnownHold {
                    sale: sale.sale_id,
                    user,
                    hold_id,
                });
            }
            Outcome::Fail { code, .. } if code == "sold_out" || code == "insufficient_stock" => {
                if code == "sold_out" && !plan.waitlist {
                    self.sold_out_until
                        .insert(sale.sale_id.clone(), Instant::now() + SOLD_OUT_BACKOFF);
                }
                let rate = if plan.waitlist {
                    WAITLIST_JOIN_PERMILLE_HEAVY
                } else {
                    self.join_permille
                };
                if rate > 0 && self.rng.below(1_000) < rate {
                    let rid = self.request_id();
                    let call = Call::JoinWaitlist {
                        sale_id: sale.sale_id,
                        user_id: user,
                        qty,
                        request_id: rid,
                    };
                    self.run_call(call).await?;
                }
            }
            _ => {}
        }
        Some(())
    }
}
