//! The per-sale linearizability checker on hand-made histories.

use std::time::Duration;

use stockade_jepsen::history::*;
use stockade_jepsen::linearizability::{check, check_sale};
use stockade_jepsen::verdict::{CheckConfig, SearchLimits, Verdict};

use crate::common::*;

fn lin(h: &History) -> Verdict {
    check_sale(h, SALE, &config()).verdict
}

#[test]
fn the_correct_concurrent_history_is_linearizable() {
    let h = good().build();
    let v = check_sale(&h, SALE, &config());
    assert_eq!(v.verdict, Verdict::Valid, "{v:?}");
}

#[test]
fn two_reserves_of_the_last_unit_both_ok_are_rejected() {
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(c, 5, 15, held(2, 1, WALL + 60_005));
    let r = check(&b.build(), &config());
    assert_anomaly(&r, "not_linearizable");
    let a = &r.anomalies[0];
    assert!(a.ops.contains(&0) && a.ops.contains(&1), "{r}");
}

#[test]
fn a_read_no_linearization_allows_is_rejected() {
    // A reserve completed before the read began, nothing gave units back, yet the read
    // sees the full stock.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 2, 2, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let rd = b.read(2, SALE);
    b.ok(rd, 20, 30, sale_read(2, 0, 0, 0));
    let r = check(&b.build(), &config());
    assert_anomaly(&r, "not_linearizable");
    assert!(r.anomalies[0].ops.contains(&1), "the read is named: {r}");

    // The same read concurrent with the reserve is fine (it linearizes before it).
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 2, 2, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let rd = b.read(2, SALE);
    b.ok(rd, 5, 30, sale_read(2, 0, 0, 0));
    assert_eq!(lin(&b.build()), Verdict::Valid);
}

#[test]
fn a_refusal_is_an_observation_too() {
    // sold_out while a unit was surely available.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.fail(a, 0, 10, "sold_out");
    assert_eq!(lin(&b.build()), Verdict::Invalid);

    // A timed-out reserve may have taken the unit: then sold_out is explained.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.info(a, 0, 10, "timeout");
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.fail(c, 20, 30, "sold_out");
    assert_eq!(lin(&b.build()), Verdict::Valid);

    // limit_exceeded when the user holds nothing is wrong.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 5, 2, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.fail(a, 0, 10, "limit_exceeded");
    assert_eq!(lin(&b.build()), Verdict::Invalid);
}

#[test]
fn the_per_user_limit_is_part_of_the_model() {
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 5, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let c = b.reserve(1, SALE, "alice", 1, "r2");
    b.ok(c, 20, 30, held(2, 1, WALL + 60_020));
    assert_eq!(lin(&b.build()), Verdict::Invalid);
}

#[test]
fn expiry_may_return_units_after_the_deadline_minus_skew() {
    // Quantity 1, 100 ms holds, skew 500 ms: bob's reserve at 700 ms may follow the
    // expiry of alice's hold.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 100, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 100));
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(c, 700, 710, held(2, 1, WALL + 800));
    assert_eq!(lin(&b.build()), Verdict::Valid);

    // With a 60 s hold it may not.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(c, 700, 710, held(2, 1, WALL + 60_700));
    assert_eq!(lin(&b.build()), Verdict::Invalid);

    // And a checkout of an expired (ticked) hold cannot succeed after another user got
    // the unit back.
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 100, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 100));
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(c, 700, 710, held(2, 1, WALL + 800));
    let d = b.checkout(1, SALE, "alice", 1, "c1");
    b.ok(d, 720, 730, checked_out(3, 1, OrderStatus::Confirmed, None));
    assert_eq!(lin(&b.build()), Verdict::Invalid);
}

#[test]
fn retries_of_one_request_are_one_effect() {
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 0);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.info(a, 0, 10, "timeout");
    let again = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(again, 20, 30, held(1, 1, WALL + 60_005));
    let again = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(again, 40, 50, held(1, 1, WALL + 60_005));
    let c = b.reserve(2, SALE, "bob", 1, "r2");
    b.fail(c, 60, 70, "sold_out");
    assert_eq!(lin(&b.build()), Verdict::Valid);
}

#[test]
fn orders_return_units_on_cancel_and_failed_payment() {
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 60_000);
    let a = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let c = b.checkout(1, SALE, "alice", 1, "c1");
    b.ok(
        c,
        20,
        30,
        checked_out(2, 1, OrderStatus::AwaitingPayment, Some(WALL + 60_020)),
    );
    let f = b.fail_payment(1, SALE, "alice", 2, "f1");
    b.ok(f, 40, 50, OkValue::PaymentFailed { order_id: 2 });
    let p = b.pay(1, SALE, "alice", 2, "p1");
    b.fail(p, 60, 70, "order_not_awaiting_payment");
    let r = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(r, 80, 90, held(3, 1, WALL + 60_080));
    assert_eq!(lin(&b.build()), Verdict::Valid);

    // Paying a cancelled order cannot succeed.
    let mut b2 = HistoryBuilder::new(WALL).sale(SALE, 1, 1, 60_000, 60_000);
    let a = b2.reserve(1, SALE, "alice", 1, "r1");
    b2.ok(a, 0, 10, held(1, 1, WALL + 60_000));
    let c = b2.checkout(1, SALE, "alice", 1, "c1");
    b2.ok(
        c,
        20,
        30,
        checked_out(2, 1, OrderStatus::AwaitingPayment, Some(WALL + 60_020)),
    );
    let x = b2.cancel(1, SALE, "alice", 2, "x1");
    b2.ok(x, 40, 50, OkValue::Cancelled { order_id: 2 });
    let p = b2.pay(1, SALE, "alice", 2, "p1");
    b2.ok(p, 60, 70, OkValue::Paid { order_id: 2 });
    assert_eq!(lin(&b2.build()), Verdict::Invalid);
}

/// A large valid history of overlapping ops with tiny limits: the search must give up
/// and say unknown, never valid.
#[test]
fn a_search_that_hits_its_limit_is_unknown_never_valid() {
    let mut b = HistoryBuilder::new(WALL).sale(SALE, 150, 1, 60_000, 0);
    for i in 0..200u64 {
        let r = b.reserve(i, SALE, &format!("u{i}"), 1, &format!("r{i}"));
        if i % 3 == 0 {
            b.info(r, i, 10_000, "timeout");
        } else {
            b.ok(r, i, 5_000 + i, held(i + 1, 1, WALL + 60_000));
        }
    }
    let h = b.build();
    assert_eq!(
        lin(&h),
        Verdict::Valid,
        "with the default limits it is valid"
    );
    let tiny = CheckConfig {
        skew_ms: 500,
        lin: SearchLimits {
            max_steps: 50,
            max_time: Duration::from_secs(10),
        },
    };
    let v = check_sale(&h, SALE, &tiny);
    assert_eq!(v.verdict, Verdict::Unknown, "{v:?}");
    assert!(v.reason.unwrap_or_default().contains("step limit"));

    let no_time = CheckConfig {
        skew_ms: 500,
        lin: SearchLimits {
            max_steps: u64::MAX,
            max_time: Duration::ZERO,
        },
    };
    let v = check_sale(&h, SALE, &no_time);
    assert_eq!(v.verdict, Verdict::Unknown, "{v:?}");
    assert!(v.reason.unwrap_or_default().contains("time limit"));
}
