//! The operation history: what concurrent clients asked, when, and what they were told.
//!
//! This module owns the history's data model, its on-disk form and a builder for tests.
//!
//! - An [`Op`] is one client request: who sent it (`process`), what it asked ([`Call`]),
//!   when it was invoked and when it completed (monotonic nanoseconds since the run
//!   started), and its [`Outcome`]: `Ok(value)` (it happened and this is the answer),
//!   `Fail(code)` (it definitely did not happen: a business rejection or a 4xx), or
//!   `Info(reason)` (unknown: timeout, connection lost, 503 with outcome unknown).
//! - On disk a history is JSON lines, Jepsen style: one `meta` line, then one `invoke`
//!   event per op and one `ok` / `fail` / `info` completion event, in time order. An
//!   invoke without a completion loads as `Info` ("no completion recorded").
//! - Times: op times are run nanoseconds from the client's monotonic clock. Deadlines in
//!   answers (`expires_at_ms`, `pay_by_ms`) are the leader's wall clock in ms; the
//!   [`HistoryMeta::wall_start_ms`] (the client's wall clock at run time zero) maps one to
//!   the other, and checkers allow a configurable clock-skew bound around the mapping.
//!
//! Nothing here depends on the product's crates: the history is what the client saw.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// The sale counters as the API reports them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Counters {
    pub available: u32,
    pub held: u32,
    pub awaiting_payment: u32,
    pub sold: u32,
}

impl Counters {
    /// Units taken: held + awaiting payment + sold (wide, cannot overflow).
    pub fn taken(&self) -> u64 {
        u64::from(self.held) + u64::from(self.awaiting_payment) + u64::from(self.sold)
    }

    /// `available + held + awaiting_payment + sold == quantity`.
    pub fn conserves(&self, quantity: u32) -> bool {
        u64::from(self.available) + self.taken() == u64::from(quantity)
    }
}

/// What the checkers need to know about one sale of the run (set up before the run; the
/// sale is assumed open for the whole run and untouched before it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SaleMeta {
    pub sale_id: String,
    pub quantity: u32,
    pub per_user_limit: u32,
    pub hold_ttl_ms: u64,
    /// 0 = cash on delivery: checkout confirms at once.
    pub payment_window_ms: u64,
}

/// The run's header line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HistoryMeta {
    /// The generator seed, for the report.
    #[serde(default)]
    pub seed: u64,
    /// The client's wall clock (ms since the epoch) at run time zero.
    pub wall_start_ms: u64,
    #[serde(default)]
    pub sales: Vec<SaleMeta>,
}

impl HistoryMeta {
    pub fn sale(&self, sale_id: &str) -> Option<&SaleMeta> {
        self.sales.iter().find(|s| s.sale_id == sale_id)
    }
}

/// What a client asked. Every call names its sale so histories partition by sale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    Reserve {
        sale_id: String,
        user_id: String,
        qty: u32,
        request_id: String,
    },
    Release {
        sale_id: String,
        user_id: String,
        hold_id: u64,
        request_id: String,
    },
    Checkout {
        sale_id: String,
        user_id: String,
        hold_id: u64,
        request_id: String,
    },
    Pay {
        sale_id: String,
        user_id: String,
        order_id: u64,
        amount_minor: u64,
        request_id: String,
    },
    Cancel {
        sale_id: String,
        user_id: String,
        order_id: u64,
        request_id: String,
    },
    FailPayment {
        sale_id: String,
        user_id: String,
        order_id: u64,
        request_id: String,
    },
    JoinWaitlist {
        sale_id: String,
        user_id: String,
        qty: u32,
        request_id: String,
    },
    ReadSale {
        sale_id: String,
        /// Only linearizable reads are judged by the linearizability checker.
        #[serde(default = "default_true")]
        linearizable: bool,
    },
}

fn default_true() -> bool {
    true
}

/// The kinds of [`Call`], for counting.
pub const CALL_KINDS: [&str; 8] = [
    "reserve",
    "release",
    "checkout",
    "pay",
    "cancel",
    "fail_payment",
    "join_waitlist",
    "read_sale",
];

impl Call {
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Reserve { .. } => "reserve",
            Call::Release { .. } => "release",
            Call::Checkout { .. } => "checkout",
            Call::Pay { .. } => "pay",
            Call::Cancel { .. } => "cancel",
            Call::FailPayment { .. } => "fail_payment",
            Call::JoinWaitlist { .. } => "join_waitlist",
            Call::ReadSale { .. } => "read_sale",
        }
    }

    pub fn sale_id(&self) -> &str {
        match self {
            Call::Reserve { sale_id, .. }
            | Call::Release { sale_id, .. }
            | Call::Checkout { sale_id, .. }
            | Call::Pay { sale_id, .. }
            | Call::Cancel { sale_id, .. }
            | Call::FailPayment { sale_id, .. }
            | Call::JoinWaitlist { sale_id, .. }
            | Call::ReadSale { sale_id, .. } => sale_id,
        }
    }

    /// The idempotency key `(user_id, request_id)` of a mutating call.
    pub fn client_key(&self) -> Option<(&str, &str)> {
        match self {
            Call::Reserve {
                user_id,
                request_id,
                ..
            }
            | Call::Release {
                user_id,
                request_id,
                ..
            }
            | Call::Checkout {
                user_id,
                request_id,
                ..
            }
            | Call::Pay {
                user_id,
                request_id,
                ..
            }
            | Call::Cancel {
                user_id,
                request_id,
                ..
            }
            | Call::FailPayment {
                user_id,
                request_id,
                ..
            }
            | Call::JoinWaitlist {
                user_id,
                request_id,
                ..
            } => Some((user_id, request_id)),
            Call::ReadSale { .. } => None,
        }
    }

    pub fn hold_id(&self) -> Option<u64> {
        match self {
            Call::Release { hold_id, .. } | Call::Checkout { hold_id, .. } => Some(*hold_id),
            _ => None,
        }
    }

    pub fn order_id(&self) -> Option<u64> {
        match self {
            Call::Pay { order_id, .. }
            | Call::Cancel { order_id, .. }
            | Call::FailPayment { order_id, .. } => Some(*order_id),
            _ => None,
        }
    }
}

/// An order's status as the API names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    AwaitingPayment,
    Paid,
    /// Cash on delivery: confirmed at checkout.
    Confirmed,
    Cancelled,
}

/// The answer to an op that happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OkValue {
    Held {
        hold_id: u64,
        qty: u32,
        expires_at_ms: u64,
    },
    Released {
        hold_id: u64,
    },
    CheckedOut {
        order_id: u64,
        qty: u32,
        status: OrderStatus,
        pay_by_ms: Option<u64>,
    },
    Paid {
        order_id: u64,
    },
    PaymentFailed {
        order_id: u64,
    },
    Cancelled {
        order_id: u64,
    },
    WaitlistJoined {
        position: u32,
    },
    Sale {
        counters: Counters,
        #[serde(default)]
        waitlist_len: u32,
    },
}

/// How an op ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// It happened; this is what the system answered.
    Ok { value: OkValue },
    /// It definitely did not happen (a business rejection or a 4xx), with the API's code.
    Fail {
        code: String,
        #[serde(default)]
        message: String,
    },
    /// Unknown: it may or may not have happened.
    Info { reason: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail { .. })
    }
    pub fn is_info(&self) -> bool {
        matches!(self, Outcome::Info { .. })
    }
    pub fn ok_value(&self) -> Option<&OkValue> {
        match self {
            Outcome::Ok { value } => Some(value),
            _ => None,
        }
    }
    pub fn fail_code(&self) -> Option<&str> {
        match self {
            Outcome::Fail { code, .. } => Some(code),
            _ => None,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Fail { .. } => "fail",
            Outcome::Info { .. } => "info",
        }
    }
}

/// One client request and its outcome.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Unique within the history.
    pub id: u64,
    /// The client (Jepsen's process) that issued it.
    pub process: u64,
    pub call: Call,
    /// Run nanoseconds when the request was sent.
    pub invoke_ns: u64,
    /// Run nanoseconds when the answer (or the give-up) came; `None` if the client never
    /// completed it (an `Info` op).
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    /// Completion time, or `u64::MAX` for an op that never completed.
    pub fn complete_or_max(&self) -> u64 {
        self.complete_ns.unwrap_or(u64::MAX)
    }
}

/// A whole run's history, ops in invoke order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct History {
    pub meta: HistoryMeta,
    pub ops: Vec<Op>,
}

/// One line of the JSON-lines form.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Meta {
        #[serde(flatten)]
        meta: HistoryMeta,
    },
    Invoke {
        op: u64,
        process: u64,
        time_ns: u64,
        call: Call,
    },
    Ok {
        op: u64,
        process: u64,
        time_ns: u64,
        value: OkValue,
    },
    Fail {
        op: u64,
        process: u64,
        time_ns: u64,
        code: String,
        #[serde(default)]
        message: String,
    },
    Info {
        op: u64,
        process: u64,
        time_ns: u64,
        reason: String,
    },
}

/// Why a history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: {what}")]
    Inconsistent { line: usize, what: String },
    #[error("no meta line before the first event")]
    NoMeta,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(serde_json::Error),
}

/// The reason given to an invoke that never completed.
pub const NO_COMPLETION: &str = "no completion recorded";

impl History {
    /// The history as events, time ordered (completions before invokes at equal times).
    pub fn to_events(&self) -> Vec<Event> {
        let mut timed: Vec<(u64, u8, u64, Event)> = Vec::with_capacity(self.ops.len() * 2);
        for op in &self.ops {
            timed.push((
                op.invoke_ns,
                1,
                op.id,
                Event::Invoke {
                    op: op.id,
                    process: op.process,
                    time_ns: op.invoke_ns,
                    call: op.call.clone(),
                },
            ));
            let Some(t) = op.complete_ns else { continue };
            let (op_id, process, time_ns) = (op.id, op.process, t);
            let ev = match &op.outcome {
                Outcome::Ok { value } => Event::Ok {
                    op: op_id,
                    process,
                    time_ns,
                    value: value.clone(),
                },
                Outcome::Fail { code, message } => Event::Fail {
                    op: op_id,
                    process,
                    time_ns,
                    code: code.clone(),
                    message: message.clone(),
                },
                Outcome::Info { reason } => Event::Info {
                    op: op_id,
                    process,
                    time_ns,
                    reason: reason.clone(),
                },
            };
            timed.push((t, 0, op.id, ev));
        }
        timed.sort_by_key(|(t, order, id, _)| (*t, *order, *id));
        let mut out = Vec::with_capacity(timed.len() + 1);
        out.push(Event::Meta {
            meta: self.meta.clone(),
        });
        out.extend(timed.into_iter().map(|(_, _, _, e)| e));
        out
    }

    /// Writes the history as JSON lines.
    pub fn write_jsonl<W: Write>(&self, mut w: W) -> Result<(), HistoryError> {
        for ev in self.to_events() {
            serde_json::to_writer(&mut w, &ev).map_err(HistoryError::Encode)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    pub fn to_jsonl_string(&self) -> Result<String, HistoryError> {
        let mut buf = Vec::new();
        self.write_jsonl(&mut buf)?;
        String::from_utf8(buf)
            .map_err(|e| HistoryError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }

    /// Reads JSON lines (blank lines are skipped). Invokes without a completion become
    /// `Info` ops with reason [`NO_COMPLETION`].
    pub fn read_jsonl<R: BufRead>(r: R) -> Result<History, HistoryError> {
        let mut meta = None;
        let mut ops: Vec<Op> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for (i, line) in r.lines().enumerate() {
            let line_no = i + 1;
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let ev: Event = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
                line: line_no,
                source,
            })?;
            let bad = |what: String| HistoryError::Inconsistent {
                line: line_no,
                what,
            };
            let (op_id, process, time_ns, outcome) = match ev {
                Event::Meta { meta: m } => {
                    if meta.is_some() {
                        return Err(bad("a second meta line".into()));
                    }
                    meta = Some(m);
                    continue;
                }
                Event::Invoke {
                    op,
                    process,
                    time_ns,
                    call,
                } => {
                    if meta.is_none() {
                        return Err(HistoryError::NoMeta);
                    }
                    if index.contains_key(&op) {
                        return Err(bad(format!("op {op} invoked twice")));
                    }
                    index.insert(op, ops.len());
                    ops.push(Op {
                        id: op,
                        process,
                        call,
                        invoke_ns: time_ns,
                        complete_ns: None,
                        outcome: Outcome::Info {
                            reason: NO_COMPLETION.into(),
                        },
                    });
                    continue;
                }
                Event::Ok {
                    op,
                    process,
                    time_ns,
                    value,
                } => (op, process, time_ns, Outcome::Ok { value }),
                Event::Fail {
                    op,
                    process,
                    time_ns,
                    code,
                    message,
                } => (op, process, time_ns, Outcome::Fail { code, message }),
                Event::Info {
                    op,
                    process,
                    time_ns,
                    reason,
                } => (op, process, time_ns, Outcome::Info { reason }),
            };
            let Some(&at) = index.get(&op_id) else {
                return Err(bad(format!(
                    "completion of op {op_id} that was never invoked"
                )));
            };
            let Some(op) = ops.get_mut(at) else {
                return Err(bad(format!("op {op_id} lost its slot")));
            };
            if op.complete_ns.is_some() {
                return Err(bad(format!("op {op_id} completed twice")));
            }
            if op.process != process {
                return Err(bad(format!(
                    "op {op_id} invoked by process {} completed by {process}",
                    op.process
                )));
            }
            if time_ns < op.invoke_ns {
                return Err(bad(format!("op {op_id} completes before it was invoked")));
            }
            op.complete_ns = Some(time_ns);
            op.outcome = outcome;
        }
        let meta = meta.ok_or(HistoryError::NoMeta)?;
        Ok(History { meta, ops })
    }

    pub fn from_jsonl_str(s: &str) -> Result<History, HistoryError> {
        History::read_jsonl(s.as_bytes())
    }

    /// Ops of one sale, in history order.
    pub fn ops_of_sale<'a>(&'a self, sale_id: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
        self.ops.iter().filter(move |o| o.call.sale_id() == sale_id)
    }

    /// Every sale named by the meta or by an op, sorted.
    pub fn sale_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.meta.sales.iter().map(|s| s.sale_id.clone()).collect();
        ids.extend(self.ops.iter().map(|o| o.call.sale_id().to_string()));
        ids.sort();
        ids.dedup();
        ids
    }

    /// Ok ops that granted a hold, by hold id (the first one if several claim it).
    pub fn granted_holds(&self) -> BTreeMap<u64, &Op> {
        let mut m = BTreeMap::new();
        for op in &self.ops {
            if let Some(OkValue::Held { hold_id, .. }) = op.outcome.ok_value() {
                m.entry(*hold_id).or_insert(op);
            }
        }
        m
    }

    /// Ok checkouts, by order id (the first one if several claim it).
    pub fn created_orders(&self) -> BTreeMap<u64, &Op> {
        let mut m = BTreeMap::new();
        for op in &self.ops {
            if let Some(OkValue::CheckedOut { order_id, .. }) = op.outcome.ok_value() {
                m.entry(*order_id).or_insert(op);
            }
        }
        m
    }
}

/// Builds histories by hand in tests: ops get ids in the order they are added.
///
/// ```
/// use stockade_jepsen::history::{HistoryBuilder, OkValue};
/// let mut b = HistoryBuilder::new(0).sale("s", 1, 1, 60_000, 0);
/// let r = b.reserve(1, "s", "u1", 1, "r1");
/// b.ok(r, 10, 20, OkValue::Held { hold_id: 7, qty: 1, expires_at_ms: 60_000 });
/// let h = b.build();
/// assert_eq!(h.ops.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct HistoryBuilder {
    history: History,
}

/// A handle on an op added to a [`HistoryBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpRef(pub usize);

impl HistoryBuilder {
    /// A history whose run started at client wall time `wall_start_ms`.
    pub fn new(wall_start_ms: u64) -> Self {
        HistoryBuilder {
            history: History {
                meta: HistoryMeta {
                    seed: 0,
                    wall_start_ms,
                    sales: Vec::new(),
                },
                ops: Vec::new(),
            },
        }
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.history.meta.seed = seed;
        self
    }

    /// Declares a sale.
    pub fn sale(
        mut self,
        sale_id: &str,
        quantity: u32,
        per_user_limit: u32,
        hold_ttl_ms: u64,
        payment_window_ms: u64,
    ) -> Self {
        self.history.meta.sales.push(SaleMeta {
            sale_id: sale_id.into(),
            quantity,
            per_user_limit,
            hold_ttl_ms,
            payment_window_ms,
        });
        self
    }

    /// Adds an op with the given call; it stays `Info` (never completed) until completed.
    pub fn invoke(&mut self, process: u64, call: Call) -> OpRef {
        let id = self.history.ops.len() as u64;
        self.history.ops.push(Op {
            id,
            process,
            call,
            invoke_ns: 0,
            complete_ns: None,
            outcome: Outcome::Info {
                reason: NO_COMPLETION.into(),
            },
        });
        OpRef(self.history.ops.len() - 1)
    }

    fn set(&mut self, r: OpRef, invoke_ns: u64, complete_ns: Option<u64>, outcome: Outcome) {
        if let Some(op) = self.history.ops.get_mut(r.0) {
            op.invoke_ns = invoke_ns;
            op.complete_ns = complete_ns;
            op.outcome = outcome;
        }
    }

    /// Times are given in **milliseconds** of run time, for readability.
    pub fn ok(&mut self, r: OpRef, invoke_ms: u64, complete_ms: u64, value: OkValue) -> &mut Self {
        self.set(
            r,
            ms(invoke_ms),
            Some(ms(complete_ms)),
            Outcome::Ok { value },
        );
        self
    }

    pub fn fail(&mut self, r: OpRef, invoke_ms: u64, complete_ms: u64, code: &str) -> &mut Self {
        self.set(
            r,
            ms(invoke_ms),
            Some(ms(complete_ms)),
            Outcome::Fail {
                code: code.into(),
                message: String::new(),
            },
        );
        self
    }

    /// An op that completed with an unknown outcome (e.g. a timeout) at `complete_ms`.
    pub fn info(&mut self, r: OpRef, invoke_ms: u64, complete_ms: u64, reason: &str) -> &mut Self {
        self.set(
            r,
            ms(invoke_ms),
            Some(ms(complete_ms)),
            Outcome::Info {
                reason: reason.into(),
            },
        );
        self
    }

    /// An op that never completed.
    pub fn pending(&mut self, r: OpRef, invoke_ms: u64) -> &mut Self {
        self.set(
            r,
            ms(invoke_ms),
            None,
            Outcome::Info {
                reason: NO_COMPLETION.into(),
            },
        );
        self
    }

    pub fn reserve(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        qty: u32,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::Reserve {
                sale_id: sale.into(),
                user_id: user.into(),
                qty,
                request_id: request_id.into(),
            },
        )
    }

    pub fn release(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        hold_id: u64,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::Release {
                sale_id: sale.into(),
                user_id: user.into(),
                hold_id,
                request_id: request_id.into(),
            },
        )
    }

    pub fn checkout(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        hold_id: u64,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::Checkout {
                sale_id: sale.into(),
                user_id: user.into(),
                hold_id,
                request_id: request_id.into(),
            },
        )
    }

    pub fn pay(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        order_id: u64,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::Pay {
                sale_id: sale.into(),
                user_id: user.into(),
                order_id,
                amount_minor: 0,
                request_id: request_id.into(),
            },
        )
    }

    pub fn cancel(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        order_id: u64,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::Cancel {
                sale_id: sale.into(),
                user_id: user.into(),
                order_id,
                request_id: request_id.into(),
            },
        )
    }

    pub fn fail_payment(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        order_id: u64,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::FailPayment {
                sale_id: sale.into(),
                user_id: user.into(),
                order_id,
                request_id: request_id.into(),
            },
        )
    }

    pub fn join_waitlist(
        &mut self,
        process: u64,
        sale: &str,
        user: &str,
        qty: u32,
        request_id: &str,
    ) -> OpRef {
        self.invoke(
            process,
            Call::JoinWaitlist {
                sale_id: sale.into(),
                user_id: user.into(),
                qty,
                request_id: request_id.into(),
            },
        )
    }

    pub fn read(&mut self, process: u64, sale: &str) -> OpRef {
        self.invoke(
            process,
            Call::ReadSale {
                sale_id: sale.into(),
                linearizable: true,
            },
        )
    }

    pub fn build(self) -> History {
        self.history
    }
}

/// Milliseconds to nanoseconds (saturating).
pub fn ms(v: u64) -> u64 {
    v.saturating_mul(1_000_000)
}

/// Shorthand for an ok hold value.
pub fn held(hold_id: u64, qty: u32, expires_at_ms: u64) -> OkValue {
    OkValue::Held {
        hold_id,
        qty,
        expires_at_ms,
    }
}

/// Shorthand for an ok checkout value.
pub fn checked_out(
    order_id: u64,
    qty: u32,
    status: OrderStatus,
    pay_by_ms: Option<u64>,
) -> OkValue {
    OkValue::CheckedOut {
        order_id,
        qty,
        status,
        pay_by_ms,
    }
}

/// Shorthand for an ok read value.
pub fn sale_read(available: u32, held: u32, awaiting_payment: u32, sold: u32) -> OkValue {
    OkValue::Sale {
        counters: Counters {
            available,
            held,
            awaiting_payment,
            sold,
        },
        waitlist_len: 0,
    }
}
