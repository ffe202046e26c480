//! No phantom: every effect in the final state is explained by an op that did not fail.
//!
//! For each hold and order in the final state of a sale of this run:
//! - a hold with a `request_id` needs a reserve by that user with that request id whose
//!   outcome was ok or unknown (all attempts failed, or none exists → phantom); a
//!   waitlist hold needs a join of that user to that sale that did not fail;
//! - a `released` hold needs a release of it that did not fail; a `checked_out` hold a
//!   checkout of it that did not fail;
//! - an order needs a checkout of its hold that did not fail (and, with a `request_id`,
//!   under that request id); a `paid` order a payment that did not fail; an order
//!   cancelled `by_user` a cancel, one cancelled `payment_failed` a fail-payment (a
//!   `payment_timeout` is the system's own doing and needs no op).

use std::collections::BTreeMap;

use crate::final_state::{FinalState, Gap, HoldState};
use crate::history::{Call, History, Op, OrderStatus};
use crate::verdict::{Anomaly, CheckResult};

pub const NAME: &str = "no_phantom";

/// What the history says about one kind of attempt.
#[derive(Default, Debug)]
struct Attempts {
    /// Ops that were tried (any outcome).
    tried: Vec<u64>,
    /// Whether any of them did not fail.
    maybe: bool,
}

impl Attempts {
    fn add(&mut self, op: &Op) {
        self.tried.push(op.id);
        self.maybe |= !op.outcome.is_fail();
    }
}

pub fn check(history: &History, final_state: Option<&FinalState>) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    let Some(fs) = final_state else {
        res.unknown("no final state was read");
        return res;
    };
    let sales = history.sale_ids();

    let mut by_request: BTreeMap<(&str, &str, &str), Attempts> = BTreeMap::new();
    let mut by_hold: BTreeMap<(&str, u64), Attempts> = BTreeMap::new();
    let mut by_order: BTreeMap<(&str, u64), Attempts> = BTreeMap::new();
    let mut joins: BTreeMap<(&str, &str), Attempts> = BTreeMap::new();
    for op in &history.ops {
        let kind = op.call.kind();
        if let Some((user, rid)) = op.call.client_key() {
            by_request.entry((kind, user, rid)).or_default().add(op);
        }
        if let Some(h) = op.call.hold_id() {
            by_hold.entry((kind, h)).or_default().add(op);
        }
        if let Some(o) = op.call.order_id() {
            by_order.entry((kind, o)).or_default().add(op);
        }
        if let Call::JoinWaitlist {
            sale_id, user_id, ..
        } = &op.call
        {
            joins.entry((sale_id, user_id)).or_default().add(op);
        }
    }
    let judge =
        |res: &mut CheckResult, kind: &str, sale: &str, a: Option<&Attempts>, what: String| {
            res.count("effects_checked", 1);
            match a {
                Some(a) if a.maybe => {}
                Some(a) => res.anomaly(Anomaly::new(
                    kind,
                    Some(sale),
                    a.tried.clone(),
                    format!("{what}, but every attempt failed"),
                )),
                None => res.anomaly(Anomaly::new(
                    kind,
                    Some(sale),
                    vec![],
                    format!("{what}, but no op asked for it"),
                )),
            }
        };

    // Without request ids from the API, a hold no ok answer named is explained only by a
    // reserve of that user on that sale whose outcome stayed unknown: more such holds than
    // such requests is a phantom; as many or fewer is unknown (which request made which).
    let rid_gap = fs.has_gap(Gap::HoldRequestIds);
    let mut unsettled: BTreeMap<(&str, &str), (u64, Vec<u64>)> = BTreeMap::new();
    if rid_gap {
        let mut by_req: BTreeMap<(&str, &str, &str), Vec<&Op>> = BTreeMap::new();
        for op in &history.ops {
            if let (Call::Reserve { sale_id, .. }, Some((user, rid))) =
                (&op.call, op.call.client_key())
            {
                by_req.entry((sale_id, user, rid)).or_default().push(op);
            }
        }
        for ((sale, user, _), ops) in by_req {
            let e = unsettled.entry((sale, user)).or_default();
            if !ops.iter().any(|o| o.outcome.is_ok()) && ops.iter().any(|o| o.outcome.is_info()) {
                e.0 += 1;
            }
            e.1.extend(ops.iter().map(|o| o.id));
        }
    }
    let mut unattributed: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for h in &fs.holds {
        if !sales.contains(&h.sale_id) {
            continue;
        }
        let sale = h.sale_id.as_str();
        if rid_gap && h.request_id.is_none() && !h.from_waitlist {
            unattributed
                .entry((sale, h.user_id.as_str()))
                .or_default()
                .push(h.hold_id);
        } else {
            match &h.request_id {
                Some(rid) if !h.from_waitlist => judge(
                    &mut res,
                    "phantom_hold",
                    sale,
                    by_request.get(&("reserve", h.user_id.as_str(), rid.as_str())),
                    format!("hold {} exists for request {rid}", h.hold_id),
                ),
                _ => judge(
                    &mut res,
                    "phantom_hold",
                    sale,
                    joins.get(&(sale, h.user_id.as_str())),
                    format!("waitlist hold {} exists for user {}", h.hold_id, h.user_id),
                ),
            }
        }
        match h.state {
            HoldState::Released => judge(
                &mut res,
                "phantom_release",
                sale,
                by_hold.get(&("release", h.hold_id)),
                format!("hold {} is released", h.hold_id),
            ),
            HoldState::CheckedOut => judge(
                &mut res,
                "phantom_checkout",
                sale,
                by_hold.get(&("checkout", h.hold_id)),
                format!("hold {} is checked out", h.hold_id),
            ),
            HoldState::Active | HoldState::Expired => {}
        }
    }

    for ((sale, user), holds) in &unattributed {
        res.count("holds_without_request_id", holds.len() as u64);
        let (n, ops) = unsettled.get(&(*sale, *user)).cloned().unwrap_or_default();
        if holds.len() as u64 > n {
            res.anomaly(Anomaly::new(
                "phantom_hold",
                Some(sale),
                ops,
                format!(
                    "holds {holds:?} of {user} were named by no ok reserve, and only {n} \
                     reserve(s) of {user} have an unknown outcome"
                ),
            ));
        } else {
            res.unknown(format!(
                "{} hold(s) not tied to a request (the API does not expose a hold's request id)",
                unattributed.values().map(Vec::len).sum::<usize>()
            ));
        }
    }

    for o in &fs.orders {
        if !sales.contains(&o.sale_id) {
            continue;
        }
        let sale = o.sale_id.as_str();
        let attempts = match &o.request_id {
            Some(rid) => by_request.get(&("checkout", o.user_id.as_str(), rid.as_str())),
            None => by_hold.get(&("checkout", o.hold_id)),
        };
        judge(
            &mut res,
            "phantom_order",
            sale,
            attempts,
            format!("order {} exists for hold {}", o.order_id, o.hold_id),
        );
        match (o.status, o.cancel_reason.as_deref()) {
            (OrderStatus::Paid, _) => judge(
                &mut res,
                "phantom_payment",
                sale,
                by_order.get(&("pay", o.order_id)),
                format!("order {} is paid", o.order_id),
            ),
            (OrderStatus::Cancelled, Some("by_user")) => judge(
                &mut res,
                "phantom_cancel",
                sale,
                by_order.get(&("cancel", o.order_id)),
                format!("order {} is cancelled by its user", o.order_id),
            ),
            (OrderStatus::Cancelled, Some("payment_failed")) => judge(
                &mut res,
                "phantom_cancel",
                sale,
                by_order.get(&("fail_payment", o.order_id)),
                format!("order {} is cancelled for a failed payment", o.order_id),
            ),
            _ => {}
        }
    }
    res
}
