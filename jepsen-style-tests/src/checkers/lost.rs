//! No lost acknowledged operation: every ok effect is in the final state.
//!
//! For each acknowledged op, the final state (read after heal) must show it:
//! - reserve ok → the hold exists (same sale, user, qty, expiry); it may since have been
//!   released, expired or checked out, which are legal ends of a hold;
//! - release ok → the hold is `released`;
//! - checkout ok → the order exists for that hold (same sale, user, qty) and the hold is
//!   `checked_out` into it; the order may since have been paid or cancelled;
//! - pay ok → the order is `paid`; cancel / fail-payment ok → the order is `cancelled`.
//!
//! Whether an expiry or cancellation was itself legal is judged by the phantom and expiry
//! checkers. Waitlist joins are not checked here (the final state has no waitlists).

use crate::final_state::{FinalState, HoldState};
use crate::history::{Call, History, OkValue, OrderStatus};
use crate::verdict::{Anomaly, CheckResult};

pub const NAME: &str = "no_lost_ack";

pub fn check(history: &History, final_state: Option<&FinalState>) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    let Some(fs) = final_state else {
        res.unknown("no final state was read");
        return res;
    };
    let holds = fs.holds_by_id();
    let orders = fs.orders_by_id();
    for op in &history.ops {
        let Some(value) = op.outcome.ok_value() else {
            continue;
        };
        let sale = op.call.sale_id();
        let mut lost = |kind: &str, detail: String| {
            res.anomaly(Anomaly::new(kind, Some(sale), vec![op.id], detail));
        };
        match (&op.call, value) {
            (
                Call::Reserve { user_id, .. },
                OkValue::Held {
                    hold_id,
                    qty,
                    expires_at_ms,
                },
            ) => match holds.get(hold_id) {
                None => lost(
                    "lost_hold",
                    format!("acknowledged hold {hold_id} is not in the final state"),
                ),
                Some(h) => {
                    if h.sale_id != sale
                        || h.user_id != *user_id
                        || h.qty != *qty
                        || h.expires_at_ms != *expires_at_ms
                    {
                        lost(
                            "hold_mismatch",
                            format!(
                                "hold {hold_id} was acknowledged as {qty} units of {sale} for \
                                 {user_id} until {expires_at_ms}, final state has {} of {} \
                                 for {} until {}",
                                h.qty, h.sale_id, h.user_id, h.expires_at_ms
                            ),
                        );
                    }
                }
            },
            (Call::Release { hold_id, .. }, OkValue::Released { .. }) => {
                match holds.get(hold_id).map(|h| h.state) {
                    Some(HoldState::Released) => {}
                    other => lost(
                        "lost_release",
                        format!(
                            "release of hold {hold_id} was acknowledged, final state: {}",
                            describe_hold(other)
                        ),
                    ),
                }
            }
            (
                Call::Checkout {
                    hold_id, user_id, ..
                },
                OkValue::CheckedOut { order_id, qty, .. },
            ) => {
                match orders.get(order_id) {
                    None => lost(
                        "lost_order",
                        format!("acknowledged order {order_id} (hold {hold_id}) is not in the final state"),
                    ),
                    Some(o) => {
                        if o.hold_id != *hold_id
                            || o.sale_id != sale
                            || o.user_id != *user_id
                            || o.qty != *qty
                        {
                            lost(
                                "order_mismatch",
                                format!(
                                    "order {order_id} was acknowledged for hold {hold_id} ({qty} units), final state has hold {} ({} units, sale {}, user {})",
                                    o.hold_id, o.qty, o.sale_id, o.user_id
                                ),
                            );
                        }
                    }
                }
                match holds.get(hold_id) {
                    Some(h)
                        if h.state == HoldState::CheckedOut && h.order_id == Some(*order_id) => {}
                    other => lost(
                        "lost_checkout",
                        format!(
                            "hold {hold_id} was checked out into order {order_id}, final state: {}",
                            describe_hold(other.map(|h| h.state))
                        ),
                    ),
                }
            }
            (Call::Pay { order_id, .. }, OkValue::Paid { .. }) => {
                match orders.get(order_id).map(|o| o.status) {
                    Some(OrderStatus::Paid) => {}
                    other => lost(
                        "lost_payment",
                        format!(
                            "payment of order {order_id} was acknowledged, final state: {}",
                            describe_order(other)
                        ),
                    ),
                }
            }
            (Call::Cancel { order_id, .. }, OkValue::Cancelled { .. })
            | (Call::FailPayment { order_id, .. }, OkValue::PaymentFailed { .. }) => {
                match orders.get(order_id).map(|o| o.status) {
                    Some(OrderStatus::Cancelled) => {}
                    other => lost(
                        "lost_cancel",
                        format!(
                            "{} of order {order_id} was acknowledged, final state: {}",
                            op.call.kind(),
                            describe_order(other)
                        ),
                    ),
                }
            }
            (Call::ReadSale { .. }, OkValue::Sale { .. })
            | (Call::JoinWaitlist { .. }, OkValue::WaitlistJoined { .. }) => continue,
            (call, value) => {
                lost(
                    "malformed_ok",
                    format!("a {} answered with {value:?}", call.kind()),
                );
            }
        }
        res.count("acknowledged_checked", 1);
    }
    res
}

fn describe_hold(s: Option<HoldState>) -> String {
    match s {
        None => "no such hold".into(),
        Some(s) => format!("{s:?}").to_lowercase(),
    }
}

fn describe_order(s: Option<OrderStatus>) -> String {
    match s {
        None => "no such order".into(),
        Some(s) => format!("{s:?}").to_lowercase(),
    }
}
