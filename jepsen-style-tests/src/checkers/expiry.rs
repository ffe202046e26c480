//! Expiry: deadlines are honoured, within the clock-skew bound.
//!
//! Deadlines (`expires_at_ms`, `pay_by_ms`) are the leader's wall clock; an op's effect
//! happened somewhere in `[invoke, complete]` of client time; a node's clock is within
//! `skew` of the client's. So, in run time:
//! - `checkout_after_expiry` / `release_after_expiry`: an ok checkout or release of a hold
//!   whose request was first sent after `expires_at + skew` (the deadline had surely
//!   passed: the state machine rechecks it, so it must have refused);
//! - `payment_after_deadline`: an ok payment first sent after `pay_by + skew`.
//!
//! "First sent": a retry carries the request id of the first attempt and gets its answer,
//! so its effect may have happened during any attempt; an ok retry is judged by the
//! earliest invoke among the ops with its `(user_id, request_id)`;
//! - `expired_early`: a checkout or release refused with `hold_expired` that completed
//!   before `expires_at − skew` (the deadline had surely not passed);
//! - `payment_window_closed_early`: a `payment_window_expired` refusal completed before
//!   `pay_by − skew`;
//! - final state: a hold expired, or an order timed out, at a state-machine time before
//!   its own deadline (both on the state machine's clock, so no skew applies).
//!
//! A deadline is known from the ok reserve/checkout answer, else from the final state.

use std::collections::BTreeMap;

use crate::final_state::{FinalState, Gap, HoldState};
use crate::history::{Call, History, OkValue, OrderStatus};
use crate::verdict::{fmt_ns, Anomaly, CheckConfig, CheckResult, Clock};

pub const NAME: &str = "expiry";

pub fn check(
    history: &History,
    final_state: Option<&FinalState>,
    config: &CheckConfig,
) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    let clock = Clock::new(history.meta.wall_start_ms, config.skew_ms);

    let mut expires: BTreeMap<u64, u64> = BTreeMap::new();
    let mut pay_by: BTreeMap<u64, u64> = BTreeMap::new();
    if let Some(fs) = final_state {
        for h in &fs.holds {
            expires.insert(h.hold_id, h.expires_at_ms);
        }
        for o in &fs.orders {
            if let Some(p) = o.pay_by_ms {
                pay_by.insert(o.order_id, p);
            }
        }
    }
    for op in &history.ops {
        match op.outcome.ok_value() {
            Some(OkValue::Held {
                hold_id,
                expires_at_ms,
                ..
            }) => {
                expires.insert(*hold_id, *expires_at_ms);
            }
            Some(OkValue::CheckedOut {
                order_id,
                pay_by_ms: Some(p),
                ..
            }) => {
                pay_by.insert(*order_id, *p);
            }
            _ => {}
        }
    }

    // Earliest invoke of each request (a retry's effect may be the first attempt's).
    let mut first_sent: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for op in &history.ops {
        if let Some(k) = op.call.client_key() {
            let e = first_sent.entry(k).or_insert(op.invoke_ns);
            *e = (*e).min(op.invoke_ns);
        }
    }

    for op in &history.ops {
        let sale = op.call.sale_id();
        let invoke = i128::from(
            op.call
                .client_key()
                .and_then(|k| first_sent.get(&k).copied())
                .unwrap_or(op.invoke_ns),
        );
        let complete = op.complete_ns.map(i128::from);
        let deadline = match &op.call {
            Call::Checkout { hold_id, .. } | Call::Release { hold_id, .. } => {
                expires.get(hold_id).map(|d| (*d, "hold", *hold_id))
            }
            Call::Pay { order_id, .. }
            | Call::Cancel { order_id, .. }
            | Call::FailPayment { order_id, .. } => {
                pay_by.get(order_id).map(|d| (*d, "order", *order_id))
            }
            _ => None,
        };
        let Some((deadline_ms, what, id)) = deadline else {
            continue;
        };
        res.count("deadline_ops_checked", 1);
        let latest = clock.latest(deadline_ms);
        let earliest = clock.earliest(deadline_ms);
        match (&op.call, &op.outcome) {
            (Call::Checkout { .. } | Call::Release { .. }, o) if o.is_ok() && invoke > latest => {
                let kind = if matches!(op.call, Call::Checkout { .. }) {
                    "checkout_after_expiry"
                } else {
                    "release_after_expiry"
                };
                res.anomaly(Anomaly::new(
                    kind,
                    Some(sale),
                    vec![op.id],
                    format!(
                        "{} of {what} {id} succeeded though invoked at {}, after its deadline \
                         {deadline_ms} + skew = {}",
                        op.call.kind(),
                        fmt_ns(invoke),
                        fmt_ns(latest)
                    ),
                ));
            }
            (Call::Pay { .. }, o) if o.is_ok() && invoke > latest => {
                res.anomaly(Anomaly::new(
                    "payment_after_deadline",
                    Some(sale),
                    vec![op.id],
                    format!(
                        "payment of order {id} succeeded though invoked at {}, after pay_by \
                         {deadline_ms} + skew = {}",
                        fmt_ns(invoke),
                        fmt_ns(latest)
                    ),
                ));
            }
            (_, o) => {
                let early = complete.is_some_and(|c| c < earliest);
                match o.fail_code() {
                    Some("hold_expired") if early => res.anomaly(Anomaly::new(
                        "expired_early",
                        Some(sale),
                        vec![op.id],
                        format!(
                            "hold {id} was reported expired by an op that completed at {}, \
                             before its deadline {deadline_ms} − skew = {}",
                            fmt_ns(complete.unwrap_or_default()),
                            fmt_ns(earliest)
                        ),
                    )),
                    Some("payment_window_expired") if early => res.anomaly(Anomaly::new(
                        "payment_window_closed_early",
                        Some(sale),
                        vec![op.id],
                        format!(
                            "order {id}'s payment window was reported closed at {}, before \
                             pay_by {deadline_ms} − skew = {}",
                            fmt_ns(complete.unwrap_or_default()),
                            fmt_ns(earliest)
                        ),
                    )),
                    _ => {}
                }
            }
        }
    }

    if let Some(fs) = final_state {
        if fs.has_gap(Gap::StateTimes) {
            let untimed = fs
                .holds
                .iter()
                .filter(|h| h.state == HoldState::Expired && h.state_at_ms.is_none())
                .count()
                + fs.orders
                    .iter()
                    .filter(|o| {
                        o.cancel_reason.as_deref() == Some("payment_timeout")
                            && o.status_at_ms.is_none()
                    })
                    .count();
            if untimed > 0 {
                res.count("final_expiries_untimed", untimed as u64);
                res.unknown(format!(
                    "{untimed} expiries in the final state have no time (the API does not \
                     expose when a hold expired or an order timed out)"
                ));
            }
        }
        for h in &fs.holds {
            if let (HoldState::Expired, Some(at)) = (h.state, h.state_at_ms) {
                res.count("final_expired_holds", 1);
                if at < h.expires_at_ms {
                    res.anomaly(Anomaly::new(
                        "expired_early",
                        Some(&h.sale_id),
                        vec![],
                        format!(
                            "final state: hold {} expired at {at}, before its deadline {}",
                            h.hold_id, h.expires_at_ms
                        ),
                    ));
                }
            }
        }
        for o in &fs.orders {
            if let (OrderStatus::Cancelled, Some("payment_timeout"), Some(at), Some(p)) = (
                o.status,
                o.cancel_reason.as_deref(),
                o.status_at_ms,
                o.pay_by_ms,
            ) {
                if at < p {
                    res.anomaly(Anomaly::new(
                        "payment_window_closed_early",
                        Some(&o.sale_id),
                        vec![],
                        format!(
                            "final state: order {} timed out at {at}, before pay_by {p}",
                            o.order_id
                        ),
                    ));
                }
            }
        }
    }
    res
}
