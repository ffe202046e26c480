//! No oversell: at no time do a sale's surely-live holds and orders exceed its quantity.
//!
//! From the history alone, each acknowledged unit is counted only while it is *surely*
//! live, so a violation is a proof, never a guess:
//! - an ok hold counts from its reserve's completion until the earliest of the invoke of
//!   any release or checkout of it that did not fail, and `expires_at − skew` (the
//!   earliest client time at which the leader's clock may have passed the deadline);
//! - an ok order counts from its checkout's completion until the invoke of any cancel or
//!   fail-payment of it that did not fail, and, unless a payment for it was acknowledged
//!   or it was confirmed at checkout (cash on delivery), `pay_by − skew`.
//!
//! (Counting a hold until `expires_at + skew` instead would flag the legal re-sale of
//! units whose hold expired early by the skew, so the sure window ends at `− skew`.)
//! Info ops count nothing. At equal times, ends are processed before starts.
//!
//! Also checked: every ok read and every final sale view has held + awaiting + sold ≤
//! quantity.

use std::collections::BTreeMap;

use crate::final_state::FinalState;
use crate::history::{History, OkValue, Op, OrderStatus};
use crate::verdict::{fmt_ns, Anomaly, CheckConfig, CheckResult, Clock};

pub const NAME: &str = "no_oversell";

/// A surely-live interval of units: `[start, end)` in run ns.
#[derive(Debug, Clone)]
struct Interval {
    start: i128,
    end: i128,
    qty: u32,
    op: u64,
}

pub fn check(
    history: &History,
    final_state: Option<&FinalState>,
    config: &CheckConfig,
) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    let clock = Clock::new(history.meta.wall_start_ms, config.skew_ms);

    // Ops that may have ended a hold or order: anything that did not fail.
    let mut hold_enders: BTreeMap<u64, i128> = BTreeMap::new();
    let mut order_enders: BTreeMap<u64, i128> = BTreeMap::new();
    let mut paid: BTreeMap<u64, bool> = BTreeMap::new();
    for op in &history.ops {
        if op.outcome.is_fail() {
            continue;
        }
        let t = i128::from(op.invoke_ns);
        if let Some(h) = op.call.hold_id() {
            let e = hold_enders.entry(h).or_insert(t);
            *e = (*e).min(t);
        }
        match op.call {
            crate::history::Call::Cancel { order_id, .. }
            | crate::history::Call::FailPayment { order_id, .. } => {
                let e = order_enders.entry(order_id).or_insert(t);
                *e = (*e).min(t);
            }
            crate::history::Call::Pay { order_id, .. } if op.outcome.is_ok() => {
                paid.insert(order_id, true);
            }
            _ => {}
        }
    }

    let mut per_sale: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
    for op in &history.ops {
        let (Some(value), Some(done)) = (op.outcome.ok_value(), op.complete_ns) else {
            continue;
        };
        let start = i128::from(done);
        let iv = match value {
            OkValue::Held {
                hold_id,
                qty,
                expires_at_ms,
            } => {
                let mut end = clock.earliest(*expires_at_ms);
                if let Some(t) = hold_enders.get(hold_id) {
                    end = end.min(*t);
                }
                Interval {
                    start,
                    end,
                    qty: *qty,
                    op: op.id,
                }
            }
            OkValue::CheckedOut {
                order_id,
                qty,
                status,
                pay_by_ms,
            } => {
                let mut end = i128::MAX;
                if let Some(t) = order_enders.get(order_id) {
                    end = end.min(*t);
                }
                let settled = *status == OrderStatus::Confirmed || paid.contains_key(order_id);
                if let (false, Some(p)) = (settled, pay_by_ms) {
                    end = end.min(clock.earliest(*p));
                }
                Interval {
                    start,
                    end,
                    qty: *qty,
                    op: op.id,
                }
            }
            OkValue::Sale { counters, .. } => {
                check_read(&mut res, history, op, counters.taken());
                continue;
            }
            _ => continue,
        };
        if iv.end > iv.start {
            per_sale.entry(op.call.sale_id()).or_default().push(iv);
        }
    }

    for (sale_id, ivs) in &per_sale {
        res.count("sales", 1);
        res.count("intervals", ivs.len() as u64);
        let Some(meta) = history.meta.sale(sale_id) else {
            res.unknown(format!(
                "sale {sale_id} has no quantity in the history meta"
            ));
            continue;
        };
        sweep(&mut res, sale_id, meta.quantity, ivs);
    }

    if let Some(fs) = final_state {
        for (sale_id, s) in &fs.sales {
            if s.counters.taken() > u64::from(s.quantity) {
                res.anomaly(Anomaly::new(
                    "final_over_quantity",
                    Some(sale_id),
                    vec![],
                    format!(
                        "final view has {} units taken of {}: {:?}",
                        s.counters.taken(),
                        s.quantity,
                        s.counters
                    ),
                ));
            }
        }
    }
    res
}

fn check_read(res: &mut CheckResult, history: &History, op: &Op, taken: u64) {
    res.count("reads", 1);
    let sale_id = op.call.sale_id();
    if let Some(meta) = history.meta.sale(sale_id) {
        if taken > u64::from(meta.quantity) {
            res.anomaly(Anomaly::new(
                "read_over_quantity",
                Some(sale_id),
                vec![op.id],
                format!(
                    "a read saw {taken} units taken of quantity {}",
                    meta.quantity
                ),
            ));
        }
    }
}

/// Sweeps the intervals in time order and reports each maximal stretch over quantity.
fn sweep(res: &mut CheckResult, sale_id: &str, quantity: u32, ivs: &[Interval]) {
    // (time, kind: 0 = end, 1 = start, index)
    let mut events: Vec<(i128, u8, usize)> = Vec::with_capacity(ivs.len() * 2);
    for (i, iv) in ivs.iter().enumerate() {
        events.push((iv.start, 1, i));
        if iv.end != i128::MAX {
            events.push((iv.end, 0, i));
        }
    }
    events.sort();
    let mut live: BTreeMap<usize, u32> = BTreeMap::new();
    let mut total: u64 = 0;
    let mut over = false;
    let mut peak: u64 = 0;
    for (t, kind, i) in events {
        let Some(iv) = ivs.get(i) else { continue };
        if kind == 0 {
            if live.remove(&i).is_some() {
                total = total.saturating_sub(u64::from(iv.qty));
            }
            if total <= u64::from(quantity) {
                over = false;
            }
            continue;
        }
        live.insert(i, iv.qty);
        total += u64::from(iv.qty);
        peak = peak.max(total);
        if total > u64::from(quantity) && !over {
            over = true;
            let ops: Vec<u64> = live
                .keys()
                .filter_map(|k| ivs.get(*k).map(|v| v.op))
                .collect();
            res.anomaly(Anomaly::new(
                "oversell",
                Some(sale_id),
                ops,
                format!(
                    "at {} {total} acknowledged units were surely live, quantity is {quantity}",
                    fmt_ns(t)
                ),
            ));
        }
    }
    res.count("peak_units_max", 0);
    let e = res.counts.entry("peak_units_max".into()).or_insert(0);
    *e = (*e).max(peak);
}
