//! Linearizability per sale: a WGL search of each sale's history against a model.
//!
//! This module owns the translation of a history into per-sale search problems and the
//! checker's verdict. The history is partitioned by sale (every rule is per sale, so the
//! partition is exact); each partition becomes a [`model::SaleModel`] plus real-time
//! windows, and [`wgl::search`] looks for a linearization.
//!
//! Translation:
//! - Retries of one `(user, request_id)` with the same call are one effect: their window
//!   runs from the first invoke to the first acknowledgement (or first state-machine
//!   refusal); with neither, the effect is optional.
//! - `Ok` ops are required; `Info` ops (and ops never completed) are optional: they may
//!   linearize anywhere after their invoke, or never.
//! - `Fail` ops whose code states a fact about the sale (see [`model`]) are required
//!   observations; other `Fail` ops changed nothing and are dropped.
//! - Every hold gets an optional expiry event from `expires_at − skew`; every awaiting
//!   order an optional payment-timeout event from `pay_by − skew`.
//! - Linearizable reads are required observations of the counters and the waitlist's
//!   length; stale reads are dropped. Ops on holds or orders this history never created
//!   are dropped (counted).
//! - Waitlist joins that were acknowledged or may have happened each get a join slot and
//!   the hold slot of their possible promotion; `not_sold_out`, `already_waitlisted` and
//!   a join's `limit_exceeded` are required observations.
//! - With the final state: one last required observation after every op
//!   ([`model::Step::Final`]: counters, promotions, end states of known holds). It also
//!   settles what it can: an unknown reserve / checkout / join whose record (by request
//!   id) exists happened (required, by the end) and one without did not (dropped); an
//!   unknown release / pay / cancel whose hold or order did not end that way did not
//!   happen, and did if it is the only such op on it; a hold that ended expired with no
//!   refusal that expired it was expired by a tick (required), any other end rules the
//!   tick out; the same for payment timeouts. A waitlist hold of a join that cannot have
//!   happened makes the final observation impossible.
//!
//! Verdicts: `Valid` only if a linearization was found; `Invalid` with the longest
//! linearizable prefix and the op that could not follow it; `Unknown` if the search hit
//! its step or time limit, or the sale is missing from the history's meta.

pub mod model;
pub mod wgl;

use std::collections::{BTreeMap, HashMap};

use crate::checkers::is_state_machine_code;
use crate::final_state::{FinalHold, FinalOrder, FinalState, Gap, HoldState};
use crate::history::{Call, Counters, History, OkValue, Op, OrderStatus, Outcome, SaleMeta};
use crate::verdict::{Anomaly, CheckConfig, CheckResult, Clock, SubVerdict, Verdict};
use model::{FinalObs, HoldSlot, JoinSlot, OrderSlot, SaleModel, Step};
use wgl::Window;

pub const NAME: &str = "linearizability";

/// Prefix ops shown in a counterexample (the last ones before the stuck op).
pub const COUNTEREXAMPLE_PREFIX_MAX: usize = 20;

/// A sale's search problem.
#[derive(Debug, Clone)]
pub struct Problem {
    pub model: SaleModel,
    pub windows: Vec<Window>,
    /// History op ids behind each step (empty for expiry/timeout events).
    pub op_ids: Vec<Vec<u64>>,
    pub dropped: u64,
    /// Unknown effects the final state settled (happened, or did not).
    pub settled: u64,
}

/// One sale's verdict.
#[derive(Debug, Clone)]
pub struct SaleVerdict {
    pub sale_id: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub anomaly: Option<Anomaly>,
    pub counts: BTreeMap<String, u64>,
}

/// Runs the check on every sale of the history (without the final state).
pub fn check(history: &History, config: &CheckConfig) -> CheckResult {
    check_with(history, None, config)
}

/// Runs the check on every sale of the history; the final state, if given, is one more
/// observation of each sale after every op.
pub fn check_with(
    history: &History,
    final_state: Option<&FinalState>,
    config: &CheckConfig,
) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    for sale_id in history.sale_ids() {
        let v = check_sale_with(history, final_state, &sale_id, config);
        res.count("sales", 1);
        res.count(&format!("sales_{}", v.verdict.name()), 1);
        match v.verdict {
            Verdict::Valid => {}
            Verdict::Unknown => res.unknown(format!(
                "sale {sale_id}: {}",
                v.reason.clone().unwrap_or_default()
            )),
            Verdict::Invalid => {}
        }
        if let Some(a) = v.anomaly.clone() {
            res.anomaly(a);
        }
        res.sub.push(SubVerdict {
            key: sale_id.clone(),
            verdict: v.verdict,
            reason: v.reason,
            counts: v.counts,
        });
    }
    res
}

/// Checks one sale (without the final state).
pub fn check_sale(history: &History, sale_id: &str, config: &CheckConfig) -> SaleVerdict {
    check_sale_with(history, None, sale_id, config)
}

/// Checks one sale, with the final state as the last observation if given.
pub fn check_sale_with(
    history: &History,
    final_state: Option<&FinalState>,
    sale_id: &str,
    config: &CheckConfig,
) -> SaleVerdict {
    let ops: Vec<&Op> = history.ops_of_sale(sale_id).collect();
    let mut v = SaleVerdict {
        sale_id: sale_id.into(),
        verdict: Verdict::Unknown,
        reason: None,
        anomaly: None,
        counts: BTreeMap::new(),
    };
    v.counts.insert("history_ops".into(), ops.len() as u64);
    let Some(meta) = history.meta.sale(sale_id) else {
        v.reason = Some("sale missing from the history meta".into());
        return v;
    };
    let clock = Clock::new(history.meta.wall_start_ms, config.skew_ms);
    let p = build_with(meta, &ops, &clock, final_state);
    let joins = ops
        .iter()
        .filter(|o| matches!(o.call, Call::JoinWaitlist { .. }))
        .count();
    v.counts.insert("join_ops".into(), joins as u64);
    v.counts
        .insert("join_slots".into(), p.model.joins.len() as u64);
    v.counts.insert(
        "final_observed".into(),
        u64::from(p.model.steps.iter().any(|s| matches!(s, Step::Final(_)))),
    );
    v.counts.insert("settled_by_final".into(), p.settled);
    v.counts.insert("search_ops".into(), p.windows.len() as u64);
    v.counts.insert(
        "required_ops".into(),
        p.windows.iter().filter(|w| w.ret.is_some()).count() as u64,
    );
    v.counts.insert("dropped_ops".into(), p.dropped);
    let (outcome, stats) = wgl::search(&p.model, p.model.initial(), &p.windows, config.lin);
    v.counts.insert("steps".into(), stats.steps);
    v.counts.insert("states_cached".into(), stats.cache_entries);
    v.counts.insert("elapsed_ms".into(), stats.elapsed_ms);
    match outcome {
        wgl::Outcome::Linearizable(_) => v.verdict = Verdict::Valid,
        wgl::Outcome::Exhausted { why } => {
            v.verdict = Verdict::Unknown;
            v.reason = Some(format!("search gave up: {why}"));
        }
        wgl::Outcome::NotLinearizable { prefix, stuck } => {
            v.verdict = Verdict::Invalid;
            v.anomaly = Some(counterexample(sale_id, &p, &prefix, stuck));
        }
    }
    v
}

fn describe(p: &Problem, i: usize) -> String {
    let ids = p.op_ids.get(i).cloned().unwrap_or_default();
    let step = p.model.steps.get(i);
    if ids.is_empty() {
        format!("{step:?}")
    } else {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        format!("op {} {step:?}", ids.join("+"))
    }
}

fn counterexample(sale_id: &str, p: &Problem, prefix: &[usize], stuck: usize) -> Anomaly {
    let mut state = p.model.initial();
    for &i in prefix {
        if let Some(n) = wgl::Model::step(&p.model, &state, i) {
            state = n;
        }
    }
    let shown: Vec<String> = prefix
        .iter()
        .skip(prefix.len().saturating_sub(COUNTEREXAMPLE_PREFIX_MAX))
        .map(|&i| describe(p, i))
        .collect();
    let mut ops: Vec<u64> = p.op_ids.get(stuck).cloned().unwrap_or_default();
    for &i in prefix {
        ops.extend(p.op_ids.get(i).into_iter().flatten());
    }
    Anomaly::new(
        "not_linearizable",
        Some(sale_id),
        ops,
        format!(
            "no linearization: after the longest linearizable prefix ({} steps, last: [{}]) \
             the model is at {:?} and {} cannot take effect before it returns",
            prefix.len(),
            shown.join("; "),
            state.counters,
            describe(p, stuck)
        ),
    )
}

/// One effect: retries of a request merged.
struct Effect<'a> {
    call: &'a Call,
    ids: Vec<u64>,
    invoke: i128,
    /// The deciding outcome: an ok, else a state-machine refusal, else unknown, else a
    /// refusal from before the state machine (then nothing happened).
    outcome: Outcome,
    ret: Option<i128>,
}

/// Ranks outcomes of retries: the most informative decides the effect.
fn rank(o: &Outcome) -> u8 {
    match o {
        Outcome::Ok { .. } => 3,
        Outcome::Fail { code, .. } if is_state_machine_code(code) => 2,
        Outcome::Info { .. } => 1,
        Outcome::Fail { .. } => 0,
    }
}

fn merge<'a>(ops: &[&'a Op]) -> Vec<Effect<'a>> {
    let mut out: Vec<Effect<'a>> = Vec::new();
    let mut by_key: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for op in ops {
        let idx = match op.call.client_key() {
            Some((u, r)) => *by_key.entry((op.call.kind(), u, r)).or_insert(out.len()),
            None => out.len(),
        };
        if idx == out.len() {
            out.push(Effect {
                call: &op.call,
                ids: Vec::new(),
                invoke: i128::from(op.invoke_ns),
                outcome: op.outcome.clone(),
                ret: op.complete_ns.map(i128::from),
            });
        }
        let Some(e) = out.get_mut(idx) else { continue };
        if *e.call != op.call {
            // A request id reused for a different command: the server refuses it.
            continue;
        }
        e.ids.push(op.id);
        e.invoke = e.invoke.min(i128::from(op.invoke_ns));
        let done = op.complete_ns.map(i128::from);
        let (new_rank, old_rank) = (rank(&op.outcome), rank(&e.outcome));
        let earlier = match (done, e.ret) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            _ => false,
        };
        if new_rank > old_rank || (new_rank == old_rank && earlier) {
            e.outcome = op.outcome.clone();
            e.ret = done;
        }
    }
    out
}

fn user_index(users: &mut HashMap<String, usize>, u: &str) -> usize {
    let n = users.len();
    *users.entry(u.to_string()).or_insert(n)
}

/// What the final state shows of one sale, indexed for [`build`].
struct SaleFinal<'a> {
    counters: Counters,
    holds: HashMap<u64, &'a FinalHold>,
    /// Reserve holds by `(user, request_id)` (empty if the final state lacks them).
    reserve_holds: Option<HashMap<(&'a str, &'a str), &'a FinalHold>>,
    /// Waitlist holds by `(user, join request_id)`.
    waitlist_holds: HashMap<(&'a str, &'a str), &'a FinalHold>,
    orders: HashMap<u64, &'a FinalOrder>,
    /// Orders by `(user, request_id)` (`None` if the final state lacks them).
    checkout_orders: Option<HashMap<(&'a str, &'a str), &'a FinalOrder>>,
}

impl<'a> SaleFinal<'a> {
    /// `None` if the final state does not cover the sale well enough to judge by it (no
    /// counters, or waitlist holds without their join's request id).
    fn new(fs: &'a FinalState, sale_id: &str) -> Option<SaleFinal<'a>> {
        // Counters and records from different applied indexes are no final state at all.
        if fs.has_gap(Gap::RecordsSnapshot) {
            return None;
        }
        let counters = fs.sales.get(sale_id)?.counters;
        let holds: Vec<&FinalHold> = fs.holds.iter().filter(|h| h.sale_id == sale_id).collect();
        if holds
            .iter()
            .any(|h| h.from_waitlist && h.join_request_id.is_none())
        {
            return None;
        }
        let orders: Vec<&FinalOrder> = fs.orders.iter().filter(|o| o.sale_id == sale_id).collect();
        Some(SaleFinal {
            counters,
            holds: holds.iter().map(|h| (h.hold_id, *h)).collect(),
            reserve_holds: (!fs.has_gap(Gap::HoldRequestIds)).then(|| {
                holds
                    .iter()
                    .filter(|h| !h.from_waitlist)
                    .filter_map(|h| Some(((h.user_id.as_str(), h.request_id.as_deref()?), *h)))
                    .collect()
            }),
            waitlist_holds: holds
                .iter()
                .filter(|h| h.from_waitlist)
                .filter_map(|h| Some(((h.user_id.as_str(), h.join_request_id.as_deref()?), *h)))
                .collect(),
            orders: orders.iter().map(|o| (o.order_id, *o)).collect(),
            checkout_orders: (!fs.has_gap(Gap::OrderRequestIds)).then(|| {
                orders
                    .iter()
                    .filter_map(|o| Some(((o.user_id.as_str(), o.request_id.as_deref()?), *o)))
                    .collect()
            }),
        })
    }
}

fn h_code(s: HoldState) -> u8 {
    match s {
        HoldState::Active => model::H_ACTIVE,
        HoldState::Released => model::H_RELEASED,
        HoldState::Expired => model::H_EXPIRED,
        HoldState::CheckedOut => model::H_CHECKED_OUT,
    }
}

/// How the final state settles an unknown effect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Nothing known: optional.
    Open,
    /// It happened: required, by the end of the history.
    Happened,
    /// It did not happen: dropped.
    Not,
}

/// A window's return at the end of the history (patched once the end is known).
const AT_END: i128 = i128::MAX;

/// Builds a sale's search problem (without the final state).
pub fn build(meta: &SaleMeta, ops: &[&Op], clock: &Clock) -> Problem {
    build_with(meta, ops, clock, None)
}

/// Builds a sale's search problem; with the sale's final state, unknown effects and
/// expiries it settles become required or are dropped, and it is one last observation.
pub fn build_with(
    meta: &SaleMeta,
    ops: &[&Op],
    clock: &Clock,
    final_state: Option<&FinalState>,
) -> Problem {
    let fin = final_state.and_then(|fs| SaleFinal::new(fs, &meta.sale_id));
    let fin = fin.as_ref();
    let effects = merge(ops);
    let mut p = Problem {
        model: SaleModel {
            quantity: meta.quantity,
            per_user_limit: meta.per_user_limit,
            holds: Vec::new(),
            orders: Vec::new(),
            joins: Vec::new(),
            users: 0,
            steps: Vec::new(),
        },
        windows: Vec::new(),
        op_ids: Vec::new(),
        dropped: 0,
        settled: 0,
    };
    let mut users: HashMap<String, usize> = HashMap::new();
    let ttl_ns = i128::from(meta.hold_ttl_ms) * 1_000_000;
    let window_ns = i128::from(meta.payment_window_ms) * 1_000_000;
    let mut settled: Vec<Settled> = vec![Settled::Open; effects.len()];

    // Hold slots: reserves that were acknowledged or may have happened.
    let mut hold_by_id: HashMap<u64, usize> = HashMap::new();
    let mut hold_expiry: Vec<i128> = Vec::new();
    let mut hold_final: Vec<Option<HoldState>> = Vec::new();
    let mut hold_slot_of: Vec<Option<usize>> = vec![None; effects.len()];
    for (i, e) in effects.iter().enumerate() {
        let Call::Reserve {
            user_id,
            qty,
            request_id,
            ..
        } = e.call
        else {
            continue;
        };
        let user = user_index(&mut users, user_id);
        let slot = p.model.holds.len();
        let (id, granted, expiry) = match &e.outcome {
            Outcome::Ok {
                value:
                    OkValue::Held {
                        hold_id,
                        qty: granted,
                        expires_at_ms,
                    },
            } => (Some(*hold_id), *granted, clock.earliest(*expires_at_ms)),
            Outcome::Info { .. } => {
                let by_rid = fin.and_then(|f| f.reserve_holds.as_ref());
                match by_rid.map(|m| m.get(&(user_id.as_str(), request_id.as_str()))) {
                    Some(Some(h)) => {
                        settled[i] = Settled::Happened;
                        (Some(h.hold_id), *qty, clock.earliest(h.expires_at_ms))
                    }
                    Some(None) => {
                        settled[i] = Settled::Not;
                        continue;
                    }
                    None => (None, *qty, e.invoke + ttl_ns - clock.skew_ns),
                }
            }
            _ => continue,
        };
        if let Some(id) = id {
            hold_by_id.insert(id, slot);
        }
        p.model.holds.push(HoldSlot {
            user,
            qty: granted,
            join: None,
        });
        hold_expiry.push(expiry);
        hold_final.push(id.and_then(|id| fin?.holds.get(&id).map(|h| h.state)));
        if let Some(s) = hold_slot_of.get_mut(i) {
            *s = Some(slot);
        }
    }
    // Join slots (joins that were acknowledged or may have happened), each with the hold
    // slot of its promotion.
    let mut join_slot_of: Vec<Option<usize>> = vec![None; effects.len()];
    let mut promoted: Vec<Option<u32>> = Vec::new();
    let mut matched_waitlist_holds: Vec<u64> = Vec::new();
    for (i, e) in effects.iter().enumerate() {
        let Call::JoinWaitlist {
            user_id,
            qty,
            request_id,
            ..
        } = e.call
        else {
            continue;
        };
        if !(e.outcome.is_ok() || e.outcome.is_info()) {
            continue;
        }
        let user = user_index(&mut users, user_id);
        let j = p.model.joins.len();
        let hold = p.model.holds.len();
        let fh = fin.and_then(|f| {
            f.waitlist_holds
                .get(&(user_id.as_str(), request_id.as_str()))
        });
        p.model.joins.push(JoinSlot {
            user,
            qty: *qty,
            hold,
        });
        p.model.holds.push(HoldSlot {
            user,
            qty: *qty,
            join: Some(j),
        });
        match fh {
            Some(h) => {
                hold_by_id.insert(h.hold_id, hold);
                matched_waitlist_holds.push(h.hold_id);
                hold_expiry.push(clock.earliest(h.expires_at_ms));
                hold_final.push(Some(h.state));
                promoted.push(Some(h.qty));
                if e.outcome.is_info() {
                    settled[i] = Settled::Happened;
                }
            }
            None => {
                hold_expiry.push(e.invoke + ttl_ns - clock.skew_ns);
                hold_final.push(None);
                promoted.push(None);
            }
        }
        if let Some(s) = join_slot_of.get_mut(i) {
            *s = Some(j);
        }
    }
    // Order slots: checkouts of known holds that were acknowledged or may have happened.
    let mut order_by_id: HashMap<u64, usize> = HashMap::new();
    let mut order_timeout: Vec<Option<i128>> = Vec::new();
    let mut order_final: Vec<Option<&FinalOrder>> = Vec::new();
    let mut order_slot_of: Vec<Option<usize>> = vec![None; effects.len()];
    for (i, e) in effects.iter().enumerate() {
        let Call::Checkout {
            hold_id,
            user_id,
            request_id,
            ..
        } = e.call
        else {
            continue;
        };
        let Some(&hold) = hold_by_id.get(hold_id) else {
            continue;
        };
        let Some(h) = p.model.holds.get(hold) else {
            continue;
        };
        let (user, qty) = (h.user, h.qty);
        let slot = p.model.orders.len();
        let (id, timeout) = match &e.outcome {
            Outcome::Ok {
                value:
                    OkValue::CheckedOut {
                        order_id,
                        pay_by_ms,
                        ..
                    },
            } => (Some(*order_id), pay_by_ms.map(|t| clock.earliest(t))),
            Outcome::Info { .. } => {
                let guess =
                    (meta.payment_window_ms > 0).then(|| e.invoke + window_ns - clock.skew_ns);
                let by_rid = fin.and_then(|f| f.checkout_orders.as_ref());
                match by_rid.map(|m| m.get(&(user_id.as_str(), request_id.as_str()))) {
                    Some(Some(o)) => {
                        settled[i] = Settled::Happened;
                        (
                            Some(o.order_id),
                            o.pay_by_ms.map(|t| clock.earliest(t)).or(guess),
                        )
                    }
                    Some(None) => {
                        settled[i] = Settled::Not;
                        continue;
                    }
                    None => (None, guess),
                }
            }
            _ => continue,
        };
        if let Some(id) = id {
            order_by_id.insert(id, slot);
        }
        order_timeout.push(timeout);
        order_final.push(id.and_then(|id| fin?.orders.get(&id).copied()));
        p.model.orders.push(OrderSlot { hold, user, qty });
        if let Some(s) = order_slot_of.get_mut(i) {
            *s = Some(slot);
        }
    }

    // Unknown releases, payments and cancels the final state settles: a hold or order
    // that did not end that way was not ended by them; one that did, with a single such
    // effect on it, was.
    if fin.is_some() {
        let mut ends: HashMap<(&str, u64), usize> = HashMap::new();
        for e in &effects {
            if e.outcome.is_ok() || e.outcome.is_info() {
                if let Some(id) = e.call.hold_id().or(e.call.order_id()) {
                    *ends.entry((e.call.kind(), id)).or_insert(0) += 1;
                }
            }
        }
        for (i, e) in effects.iter().enumerate() {
            if !e.outcome.is_info() {
                continue;
            }
            let unique = |id: u64| ends.get(&(e.call.kind(), id)).copied() == Some(1);
            let verdict = match e.call {
                Call::Release { hold_id, .. } => hold_by_id
                    .get(hold_id)
                    .and_then(|&h| hold_final.get(h).copied().flatten())
                    .map(|st| (st == HoldState::Released, unique(*hold_id))),
                Call::Pay { order_id, .. }
                | Call::Cancel { order_id, .. }
                | Call::FailPayment { order_id, .. } => order_by_id
                    .get(order_id)
                    .and_then(|&o| order_final.get(o).copied().flatten())
                    .and_then(|o| {
                        let ended_so = match e.call {
                            Call::Pay { .. } => o.status == OrderStatus::Paid,
                            Call::Cancel { .. } => {
                                o.status == OrderStatus::Cancelled
                                    && o.cancel_reason.as_deref()? == "by_user"
                            }
                            _ => {
                                o.status == OrderStatus::Cancelled
                                    && o.cancel_reason.as_deref()? == "payment_failed"
                            }
                        };
                        Some((ended_so, unique(*order_id)))
                    }),
                _ => None,
            };
            match verdict {
                Some((false, _)) => settled[i] = Settled::Not,
                Some((true, true)) => settled[i] = Settled::Happened,
                _ => {}
            }
        }
    }

    let mut refused_expiry = vec![false; p.model.holds.len()];
    let mut refused_timeout = vec![false; p.model.orders.len()];
    for (i, e) in effects.iter().enumerate() {
        if settled.get(i) == Some(&Settled::Not) {
            p.dropped += e.ids.len() as u64;
            p.settled += 1;
            continue;
        }
        let step = effect_step(
            e,
            meta,
            &mut users,
            hold_slot_of.get(i).copied().flatten(),
            order_slot_of.get(i).copied().flatten(),
            join_slot_of.get(i).copied().flatten(),
            &hold_by_id,
            &hold_expiry,
            &order_by_id,
            &order_timeout,
        );
        match step {
            Some(s) => {
                let required = e.outcome.is_ok() || e.outcome.is_fail();
                match &s {
                    Step::Expire { hold, .. } if required => {
                        if let Some(r) = refused_expiry.get_mut(*hold) {
                            *r = true;
                        }
                    }
                    Step::Timeout { order, .. } if required => {
                        if let Some(r) = refused_timeout.get_mut(*order) {
                            *r = true;
                        }
                    }
                    _ => {}
                }
                let happened = settled.get(i) == Some(&Settled::Happened);
                if happened {
                    p.settled += 1;
                }
                p.model.steps.push(s);
                p.windows.push(Window {
                    call: e.invoke,
                    ret: if required {
                        e.ret
                    } else if happened {
                        Some(AT_END)
                    } else {
                        None
                    },
                });
                p.op_ids.push(e.ids.clone());
            }
            None => p.dropped += e.ids.len() as u64,
        }
    }

    // Expiry and timeout events: optional, unless the final state settles them (an
    // expired hold no refusal expired was expired by a tick; any other end state rules
    // the tick out).
    for (hold, t) in hold_expiry.iter().enumerate() {
        let ret = match hold_final.get(hold).copied().flatten() {
            Some(HoldState::Expired) if !refused_expiry.get(hold).copied().unwrap_or(false) => {
                Some(AT_END)
            }
            Some(_) => continue,
            None if p.model.holds.get(hold).is_some_and(|h| h.join.is_some()) && fin.is_some() => {
                // A join the final state shows no hold of was never promoted.
                continue;
            }
            None => None,
        };
        p.model.steps.push(Step::Expire {
            hold,
            eligible: true,
        });
        p.windows.push(Window { call: *t, ret });
        p.op_ids.push(Vec::new());
    }
    for (order, t) in order_timeout.iter().enumerate() {
        let Some(t) = t else { continue };
        let ret = match order_final.get(order).copied().flatten() {
            Some(o) if o.status == OrderStatus::Cancelled => match o.cancel_reason.as_deref() {
                Some("payment_timeout")
                    if !refused_timeout.get(order).copied().unwrap_or(false) =>
                {
                    Some(AT_END)
                }
                Some(_) => continue,
                None => None,
            },
            Some(_) => continue,
            None => None,
        };
        p.model.steps.push(Step::Timeout {
            order,
            eligible: true,
        });
        p.windows.push(Window { call: *t, ret });
        p.op_ids.push(Vec::new());
    }

    // The final state: one last observation, after everything.
    if let Some(f) = fin {
        let mut holds: Vec<(usize, u8)> = hold_final
            .iter()
            .enumerate()
            .filter_map(|(h, st)| st.map(|st| (h, h_code(st))))
            .collect();
        holds.sort_unstable();
        let stray: Vec<String> = f
            .waitlist_holds
            .values()
            .filter(|h| !matched_waitlist_holds.contains(&h.hold_id))
            .map(|h| {
                format!(
                    "waitlist hold {} of user {} (join request {}) follows no join that may have happened",
                    h.hold_id,
                    h.user_id,
                    h.join_request_id.as_deref().unwrap_or("?")
                )
            })
            .collect();
        p.model.steps.push(Step::Final(Box::new(FinalObs {
            counters: Some(f.counters),
            promoted: promoted.clone(),
            holds,
            impossible: (!stray.is_empty()).then(|| stray.join("; ")),
        })));
        p.windows.push(Window {
            call: AT_END,
            ret: Some(AT_END),
        });
        p.op_ids.push(Vec::new());
    }
    // The end: after every call and return; settled effects return there, the final
    // observation comes just after.
    let end = p
        .windows
        .iter()
        .flat_map(|w| [Some(w.call), w.ret])
        .flatten()
        .filter(|t| *t != AT_END)
        .max()
        .unwrap_or(0)
        + 1;
    let is_final = |s: &Step| matches!(s, Step::Final(_));
    for (w, s) in p.windows.iter_mut().zip(p.model.steps.iter()) {
        if is_final(s) {
            w.call = end + 1;
            w.ret = Some(end + 1);
        } else if w.ret == Some(AT_END) {
            w.ret = Some(end);
        }
    }
    p.model.users = users.len();
    p
}

/// The model step of one effect, or `None` to drop it (it changed nothing the model can
/// judge, or it names a hold or order this history never created).
#[allow(clippy::too_many_arguments)]
fn effect_step(
    e: &Effect<'_>,
    meta: &SaleMeta,
    users: &mut HashMap<String, usize>,
    hold_slot: Option<usize>,
    order_slot: Option<usize>,
    join_slot: Option<usize>,
    hold_by_id: &HashMap<u64, usize>,
    hold_expiry: &[i128],
    order_by_id: &HashMap<u64, usize>,
    order_timeout: &[Option<i128>],
) -> Option<Step> {
    let code = e.outcome.fail_code();
    if code.is_some_and(|c| !FACT_CODES.contains(&c)) {
        return None;
    }
    let value = e.outcome.ok_value();
    let reaches = |t: Option<i128>| t.is_some_and(|t| e.ret.is_some_and(|r| t <= r));
    match e.call {
        Call::Reserve { user_id, qty, .. } => {
            let user = user_index(users, user_id);
            Some(match (code, value, hold_slot) {
                (Some("sold_out"), _, _) => Step::SoldOut,
                (Some("insufficient_stock"), _, _) => Step::Insufficient { qty: *qty },
                (Some("limit_exceeded"), _, _) => Step::LimitExceeded { user, qty: *qty },
                (Some(_), _, _) => Step::Impossible,
                (None, _, Some(slot)) => Step::Grant { slot },
                (None, _, None) => Step::Impossible,
            })
        }
        Call::Release { hold_id, .. } | Call::Checkout { hold_id, .. } => {
            let hold = *hold_by_id.get(hold_id)?;
            let is_checkout = matches!(e.call, Call::Checkout { .. });
            Some(match (code, value, is_checkout) {
                (Some("hold_expired"), _, _) => Step::Expire {
                    hold,
                    eligible: reaches(hold_expiry.get(hold).copied()),
                },
                (Some("hold_not_active"), _, _) => Step::HoldNotActive { hold },
                (Some(_), _, _) => Step::Impossible,
                (None, Some(OkValue::Released { .. }) | None, false) => Step::Release { hold },
                (None, Some(OkValue::CheckedOut { status, .. }), true) => {
                    let confirmed = *status == OrderStatus::Confirmed;
                    match order_slot {
                        Some(order) if confirmed == (meta.payment_window_ms == 0) => {
                            Step::Checkout {
                                hold,
                                order,
                                confirmed,
                            }
                        }
                        _ => Step::Impossible,
                    }
                }
                (None, None, true) => match order_slot {
                    Some(order) => Step::Checkout {
                        hold,
                        order,
                        confirmed: meta.payment_window_ms == 0,
                    },
                    None => Step::Impossible,
                },
                (None, Some(_), _) => Step::Impossible,
            })
        }
        Call::Pay { order_id, .. }
        | Call::Cancel { order_id, .. }
        | Call::FailPayment { order_id, .. } => {
            let order = *order_by_id.get(order_id)?;
            Some(match (e.call, code, value) {
                (_, Some("payment_window_expired"), _) => Step::Timeout {
                    order,
                    eligible: reaches(order_timeout.get(order).copied().flatten()),
                },
                (_, Some("order_not_awaiting_payment"), _) => Step::NotAwaiting { order },
                (_, Some("order_not_cancellable"), _) => Step::NotCancellable { order },
                (_, Some(_), _) => Step::Impossible,
                (Call::Pay { .. }, None, Some(OkValue::Paid { .. }) | None) => Step::Pay { order },
                (Call::Cancel { .. }, None, Some(OkValue::Cancelled { .. }) | None) => {
                    Step::Cancel { order }
                }
                (Call::FailPayment { .. }, None, Some(OkValue::PaymentFailed { .. }) | None) => {
                    Step::FailPayment { order }
                }
                _ => Step::Impossible,
            })
        }
        Call::ReadSale { linearizable, .. } => match value {
            Some(OkValue::Sale {
                counters,
                waitlist_len,
            }) if *linearizable => Some(Step::Read {
                counters: *counters,
                waitlist_len: Some(*waitlist_len),
            }),
            _ => None,
        },
        Call::JoinWaitlist { user_id, qty, .. } => {
            let user = user_index(users, user_id);
            Some(match (code, value, join_slot) {
                (Some("already_waitlisted"), _, _) => Step::AlreadyWaitlisted { user },
                (Some("not_sold_out"), _, _) => Step::NotSoldOut { user },
                (Some("limit_exceeded"), _, _) => Step::JoinLimitExceeded { user, qty: *qty },
                (Some(_), _, _) => Step::Impossible,
                (None, Some(OkValue::WaitlistJoined { position }), Some(slot)) => Step::Join {
                    slot,
                    position: Some(*position),
                },
                (None, None, Some(slot)) => Step::Join {
                    slot,
                    position: None,
                },
                (None, _, _) => Step::Impossible,
            })
        }
    }
}

/// Refusal codes that state a fact about the sale's state (judged by the model).
pub const FACT_CODES: &[&str] = &[
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "hold_expired",
    "hold_not_active",
    "payment_window_expired",
    "order_not_awaiting_payment",
    "order_not_cancellable",
    "not_sold_out",
    "already_waitlisted",
];
