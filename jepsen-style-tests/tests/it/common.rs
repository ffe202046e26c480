//! A correct concurrent history and its final state, for the tests to break.

use std::collections::BTreeMap;

use stockade_jepsen::final_state::*;
use stockade_jepsen::history::*;
use stockade_jepsen::verdict::{CheckConfig, CheckResult};

/// The client's wall clock at run time zero.
pub const WALL: u64 = 1_000_000;
pub const SALE: &str = "s";

/// Sale `s`: 2 units, 2 per user, 10 s holds, 60 s to pay.
pub fn builder() -> HistoryBuilder {
    HistoryBuilder::new(WALL)
        .seed(7)
        .sale(SALE, 2, 2, 10_000, 60_000)
}

/// A correct concurrent history (times in run ms):
/// - alice and bob each reserve one unit concurrently (holds 1, 2); carol is refused;
/// - alice checks out (order 3) while bob releases and carol, concurrently, reserves
///   the unit bob is giving back (hold 4); alice pays; a read sees 1 held, 1 sold;
/// - dave's reserve times out and (the final state shows) never took effect.
pub fn good() -> HistoryBuilder {
    let mut b = builder();
    let r1 = b.reserve(1, SALE, "alice", 1, "r1");
    b.ok(r1, 0, 10, held(1, 1, WALL + 10_005));
    let r2 = b.reserve(2, SALE, "bob", 1, "r2");
    b.ok(r2, 2, 12, held(2, 1, WALL + 10_007));
    let r3 = b.reserve(3, SALE, "carol", 1, "r3");
    b.fail(r3, 3, 13, "sold_out");
    let c1 = b.checkout(1, SALE, "alice", 1, "c1");
    b.ok(
        c1,
        20,
        30,
        checked_out(3, 1, OrderStatus::AwaitingPayment, Some(WALL + 60_025)),
    );
    let rel = b.release(2, SALE, "bob", 2, "rel2");
    b.ok(rel, 21, 31, OkValue::Released { hold_id: 2 });
    let r4 = b.reserve(3, SALE, "carol", 1, "r4");
    b.ok(r4, 25, 40, held(4, 1, WALL + 10_035));
    let pay = b.pay(1, SALE, "alice", 3, "pay1");
    b.ok(pay, 50, 60, OkValue::Paid { order_id: 3 });
    let rd = b.read(4, SALE);
    b.ok(rd, 70, 80, sale_read(0, 1, 0, 1));
    let r5 = b.reserve(4, SALE, "dave", 1, "r5");
    b.info(r5, 90, 100, "timeout");
    b
}

pub fn counters(available: u32, held: u32, awaiting_payment: u32, sold: u32) -> SaleCounters {
    SaleCounters {
        quantity: 2,
        counters: Counters {
            available,
            held,
            awaiting_payment,
            sold,
        },
    }
}

pub fn hold(
    id: u64,
    user: &str,
    rid: &str,
    expires_at_ms: u64,
    state: HoldState,
    order: Option<u64>,
) -> FinalHold {
    FinalHold {
        hold_id: id,
        sale_id: SALE.into(),
        user_id: user.into(),
        qty: 1,
        expires_at_ms,
        request_id: Some(rid.into()),
        from_waitlist: false,
        join_request_id: None,
        state,
        state_at_ms: None,
        order_id: order,
    }
}

/// The final state that matches [`good`].
pub fn good_final() -> FinalState {
    let holds = vec![
        hold(
            1,
            "alice",
            "r1",
            WALL + 10_005,
            HoldState::CheckedOut,
            Some(3),
        ),
        hold(2, "bob", "r2", WALL + 10_007, HoldState::Released, None),
        hold(4, "carol", "r4", WALL + 10_035, HoldState::Active, None),
    ];
    let node = |name: &str| NodeState {
        node: name.into(),
        state_hash: Some("abc".into()),
        applied_index: Some(42),
        sales: BTreeMap::from([(SALE.to_string(), counters(0, 1, 0, 1))]),
    };
    FinalState {
        sales: BTreeMap::from([(SALE.to_string(), counters(0, 1, 0, 1))]),
        holds,
        orders: vec![FinalOrder {
            order_id: 3,
            sale_id: SALE.into(),
            user_id: "alice".into(),
            hold_id: 1,
            qty: 1,
            request_id: Some("c1".into()),
            status: OrderStatus::Paid,
            pay_by_ms: Some(WALL + 60_025),
            cancel_reason: None,
            status_at_ms: Some(WALL + 55),
        }],
        nodes: vec![node("n1"), node("n2"), node("n3")],
        gaps: vec![],
        records_read_attempts: 1,
    }
}

pub fn config() -> CheckConfig {
    CheckConfig {
        skew_ms: 500,
        ..CheckConfig::default()
    }
}

/// Fails the test with the result printed unless it has an anomaly of `kind`.
pub fn assert_anomaly(r: &CheckResult, kind: &str) {
    assert_eq!(
        r.verdict,
        stockade_jepsen::verdict::Verdict::Invalid,
        "expected invalid:\n{r}"
    );
    assert!(r.has_anomaly(kind), "expected a {kind} anomaly:\n{r}");
}

pub fn assert_valid(r: &CheckResult) {
    assert_eq!(
        r.verdict,
        stockade_jepsen::verdict::Verdict::Valid,
        "expected valid:\n{r}"
    );
}
