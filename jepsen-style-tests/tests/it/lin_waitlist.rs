//! The linearizability checker on sales with waitlist joins: promotions when units come
//! back, the join rules, and the final state as the last observation.

use std::collections::BTreeMap;

use stockade_jepsen::final_state::*;
use stockade_jepsen::history::*;
use stockade_jepsen::linearizability::{check_sale, check_sale_with};
use stockade_jepsen::verdict::Verdict;

use crate::common::*;

/// Sale `w`: 1 unit, 1 per user, 1 s holds, cash on delivery.
fn one_unit() -> HistoryBuilder {
    HistoryBuilder::new(WALL).sale("w", 1, 1, 1_000, 0)
}

fn lin(h: &History) -> Verdict {
    check_sale(h, "w", &config()).verdict
}

fn lin_final(h: &History, fs: &FinalState) -> Verdict {
    let v = check_sale_with(h, Some(fs), "w", &config());
    assert_eq!(v.counts.get("final_observed"), Some(&1), "{v:?}");
    v.verdict
}

fn read(available: u32, held: u32, sold: u32, waitlist_len: u32) -> OkValue {
    OkValue::Sale {
        counters: Counters {
            available,
            held,
            awaiting_payment: 0,
            sold,
        },
        waitlist_len,
    }
}

fn joined(position: u32) -> OkValue {
    OkValue::WaitlistJoined { position }
}

fn fhold(id: u64, user: &str, expires: u64, state: HoldState, join: Option<&str>) -> FinalHold {
    FinalHold {
        hold_id: id,
        sale_id: "w".into(),
        user_id: user.into(),
        qty: 1,
        expires_at_ms: expires,
        request_id: if join.is_some() {
            None
        } else {
            Some(format!("r-{user}"))
        },
        from_waitlist: join.is_some(),
        join_request_id: join.map(str::to_string),
        state,
        state_at_ms: None,
        order_id: None,
    }
}

fn final_state(available: u32, held: u32, holds: Vec<FinalHold>) -> FinalState {
    FinalState {
        sales: BTreeMap::from([(
            "w".to_string(),
            SaleCounters {
                quantity: 1,
                counters: Counters {
                    available,
                    held,
                    awaiting_payment: 0,
                    sold: 0,
                },
            },
        )]),
        holds,
        ..FinalState::default()
    }
}

/// alice holds the only unit; bob is refused and joins the waitlist.
fn alice_holds_bob_waits() -> HistoryBuilder {
    let mut b = one_unit();
    let r = b.reserve(1, "w", "alice", 1, "r-alice");
    b.ok(r, 0, 10, held(1, 1, WALL + 1_005));
    let r = b.reserve(2, "w", "bob", 1, "r-bob");
    b.fail(r, 20, 30, "sold_out");
    let j = b.join_waitlist(2, "w", "bob", 1, "j-bob");
    b.ok(j, 40, 50, joined(1));
    b
}

#[test]
fn a_released_unit_goes_to_the_waitlist_head() {
    let mut b = alice_holds_bob_waits();
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 60, 70, OkValue::Released { hold_id: 1 });
    let rd = b.read(3, "w");
    b.ok(rd, 80, 90, read(0, 1, 0, 0));
    let r = b.reserve(3, "w", "carol", 1, "r-carol");
    b.fail(r, 100, 110, "sold_out");
    let h = b.build();
    assert_eq!(lin(&h), Verdict::Valid);
    // The final state: alice released, bob's hand-off hold expired later.
    let fs = final_state(
        1,
        0,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(2, "bob", WALL + 1_065, HoldState::Expired, Some("j-bob")),
        ],
    );
    assert_eq!(lin_final(&h, &fs), Verdict::Valid);

    // The released unit back on sale while bob waited (his hand-off hold cannot have
    // expired yet): rejected.
    let mut b = alice_holds_bob_waits();
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 60, 70, OkValue::Released { hold_id: 1 });
    let rd = b.read(3, "w");
    b.ok(rd, 80, 90, read(1, 0, 0, 0));
    assert_eq!(lin(&b.build()), Verdict::Invalid);

    // Someone else reserving the released unit while bob waits: rejected.
    let mut b = alice_holds_bob_waits();
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 60, 70, OkValue::Released { hold_id: 1 });
    let r = b.reserve(3, "w", "carol", 1, "r-carol");
    b.ok(r, 80, 90, held(3, 1, WALL + 1_085));
    assert_eq!(lin(&b.build()), Verdict::Invalid);
}

#[test]
fn an_expired_unit_goes_to_the_waitlist_head() {
    // alice's hold expires (her checkout is refused with hold_expired); the unit is
    // handed to bob, whose hold expires a TTL later (the final state says when).
    let build = |after: OkValue| {
        let mut b = alice_holds_bob_waits();
        let c = b.checkout(1, "w", "alice", 1, "c");
        b.fail(c, 1_600, 1_610, "hold_expired");
        let rd = b.read(3, "w");
        b.ok(rd, 1_620, 1_630, after);
        b.build()
    };
    let fs = final_state(
        1,
        0,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Expired, None),
            fhold(2, "bob", WALL + 2_605, HoldState::Expired, Some("j-bob")),
        ],
    );
    assert_eq!(lin(&build(read(0, 1, 0, 0))), Verdict::Valid);
    assert_eq!(lin_final(&build(read(0, 1, 0, 0)), &fs), Verdict::Valid);
    // The unit back on sale right after the expiry, though bob's hold ran until 2.6 s.
    assert_eq!(lin_final(&build(read(1, 0, 0, 0)), &fs), Verdict::Invalid);
    // A tick expiry (no refusal) hands the unit over just the same.
    let mut b = alice_holds_bob_waits();
    let rd = b.read(3, "w");
    b.ok(rd, 1_620, 1_630, read(0, 1, 0, 0));
    let fs = final_state(
        0,
        1,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Expired, None),
            fhold(2, "bob", WALL + 60_000, HoldState::Active, Some("j-bob")),
        ],
    );
    assert_eq!(lin_final(&b.build(), &fs), Verdict::Valid);
}

#[test]
fn joins_are_allowed_only_when_nothing_is_reservable() {
    // Two units, alice holds one: a join must be refused with not_sold_out.
    let base = || {
        let mut b = HistoryBuilder::new(WALL).sale("w", 2, 1, 60_000, 0);
        let r = b.reserve(1, "w", "alice", 1, "r-alice");
        b.ok(r, 0, 10, held(1, 1, WALL + 60_000));
        b
    };
    let mut b = base();
    let j = b.join_waitlist(2, "w", "bob", 1, "j-bob");
    b.ok(j, 20, 30, joined(1));
    assert_eq!(lin(&b.build()), Verdict::Invalid);
    let mut b = base();
    let j = b.join_waitlist(2, "w", "bob", 1, "j-bob");
    b.fail(j, 20, 30, "not_sold_out");
    assert_eq!(lin(&b.build()), Verdict::Valid);

    // Sold out: not_sold_out is wrong, a join is fine.
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.fail(j, 60, 70, "not_sold_out");
    assert_eq!(lin(&b.build()), Verdict::Invalid);

    // Positions count the queue; a second join of a waiting user is refused.
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.ok(j, 60, 70, joined(2));
    let j = b.join_waitlist(2, "w", "bob", 1, "j-bob2");
    b.fail(j, 80, 90, "already_waitlisted");
    let rd = b.read(4, "w");
    b.ok(rd, 100, 110, read(0, 1, 0, 2));
    assert_eq!(lin(&b.build()), Verdict::Valid);
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.ok(j, 60, 70, joined(1));
    assert_eq!(lin(&b.build()), Verdict::Invalid, "position 1 behind bob");
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.fail(j, 60, 70, "already_waitlisted");
    assert_eq!(lin(&b.build()), Verdict::Invalid, "carol never joined");
    let mut b = alice_holds_bob_waits();
    let rd = b.read(4, "w");
    b.ok(rd, 100, 110, read(0, 1, 0, 0));
    assert_eq!(lin(&b.build()), Verdict::Invalid, "bob waits: length 1");

    // A user at the per-user limit is refused with limit_exceeded.
    let mut b = one_unit();
    let r = b.reserve(1, "w", "alice", 1, "r-alice");
    b.ok(r, 0, 10, held(1, 1, WALL + 1_005));
    let j = b.join_waitlist(1, "w", "alice", 1, "j-alice");
    b.fail(j, 20, 30, "limit_exceeded");
    assert_eq!(lin(&b.build()), Verdict::Valid);
    let mut b = one_unit();
    let r = b.reserve(1, "w", "alice", 1, "r-alice");
    b.ok(r, 0, 10, held(1, 1, WALL + 1_005));
    let j = b.join_waitlist(1, "w", "alice", 1, "j-alice");
    b.ok(j, 20, 30, joined(1));
    assert_eq!(lin(&b.build()), Verdict::Invalid);
}

/// alice holds; bob then carol join; alice releases.
fn bob_then_carol() -> HistoryBuilder {
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.ok(j, 60, 70, joined(2));
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 80, 90, OkValue::Released { hold_id: 1 });
    b
}

#[test]
fn a_unit_handed_to_anyone_but_the_head_is_rejected() {
    let h = bob_then_carol().build();
    // Bob first; his hold expires and the unit goes on to carol.
    let fs = final_state(
        1,
        0,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(2, "bob", WALL + 1_085, HoldState::Expired, Some("j-bob")),
            fhold(
                3,
                "carol",
                WALL + 2_085,
                HoldState::Expired,
                Some("j-carol"),
            ),
        ],
    );
    assert_eq!(lin_final(&h, &fs), Verdict::Valid);
    // Carol got it and bob never did.
    let fs = final_state(
        0,
        1,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(3, "carol", WALL + 1_085, HoldState::Active, Some("j-carol")),
        ],
    );
    let v = check_sale_with(&h, Some(&fs), "w", &config());
    assert_eq!(v.verdict, Verdict::Invalid, "{v:?}");
    assert_eq!(
        v.anomaly.map(|a| a.kind).as_deref(),
        Some("not_linearizable")
    );
}

#[test]
fn a_waitlisted_user_given_stock_that_never_came_back_is_rejected() {
    // alice's hold is still active at the end, yet bob has a hand-off hold.
    let h = alice_holds_bob_waits().build();
    let fs = final_state(
        0,
        1,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Active, None),
            fhold(2, "bob", WALL + 1_500, HoldState::Active, Some("j-bob")),
        ],
    );
    assert_eq!(lin_final(&h, &fs), Verdict::Invalid);
    // The same records read across an expiry and hand-off (alice's listing before it,
    // bob's after) are no final state: the runner marks such a read and it is not used.
    let mut torn = fs.clone();
    torn.gaps.push(Gap::RecordsSnapshot);
    let v = check_sale_with(&h, Some(&torn), "w", &config());
    assert_eq!(v.verdict, Verdict::Valid, "{v:?}");
    assert_eq!(v.counts.get("final_observed"), Some(&0), "{v:?}");
    // bob still waiting is fine.
    let fs = final_state(
        0,
        1,
        vec![fhold(1, "alice", WALL + 1_005, HoldState::Active, None)],
    );
    assert_eq!(lin_final(&h, &fs), Verdict::Valid);
    // A hand-off hold for a join that was refused: nothing explains it.
    let mut b = alice_holds_bob_waits();
    let j = b.join_waitlist(3, "w", "carol", 1, "j-carol");
    b.fail(j, 60, 70, "limit_exceeded");
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 80, 90, OkValue::Released { hold_id: 1 });
    let fs = final_state(
        1,
        0,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(2, "bob", WALL + 1_085, HoldState::Expired, Some("j-bob")),
            fhold(
                3,
                "carol",
                WALL + 2_085,
                HoldState::Expired,
                Some("j-carol"),
            ),
        ],
    );
    let v = check_sale_with(&b.build(), Some(&fs), "w", &config());
    assert_eq!(v.verdict, Verdict::Invalid, "{v:?}");
}

#[test]
fn an_unknown_join_is_settled_by_the_final_state() {
    // bob's join timed out; the final state shows his hand-off hold: it happened.
    let mut b = one_unit();
    let r = b.reserve(1, "w", "alice", 1, "r-alice");
    b.ok(r, 0, 10, held(1, 1, WALL + 1_005));
    let j = b.join_waitlist(2, "w", "bob", 1, "j-bob");
    b.info(j, 40, 50, "timeout");
    let rel = b.release(1, "w", "alice", 1, "rel");
    b.ok(rel, 60, 70, OkValue::Released { hold_id: 1 });
    let h = b.build();
    let promoted = final_state(
        0,
        1,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(2, "bob", WALL + 1_065, HoldState::Active, Some("j-bob")),
        ],
    );
    assert_eq!(lin_final(&h, &promoted), Verdict::Valid);
    let not_joined = final_state(
        1,
        0,
        vec![fhold(1, "alice", WALL + 1_005, HoldState::Released, None)],
    );
    assert_eq!(lin_final(&h, &not_joined), Verdict::Valid);
    // The final counters must follow: the unit cannot be both available and bob's.
    let wrong = final_state(
        1,
        0,
        vec![
            fhold(1, "alice", WALL + 1_005, HoldState::Released, None),
            fhold(2, "bob", WALL + 1_065, HoldState::Active, Some("j-bob")),
        ],
    );
    assert_eq!(lin_final(&h, &wrong), Verdict::Invalid);
}
