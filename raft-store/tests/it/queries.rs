//! Read-side views: sale status through time, listings with paging, waitlist status,
//! the next deadline, and the reservation pre-check.

use stockade_raft_store::query::{self, WaitlistStatus};
use stockade_raft_store::types::*;

use crate::common::*;

#[test]
fn sale_status_follows_the_clock_and_the_counters() {
    let mut m = Mem::default();
    m.apply(0, Command::CreateSale(Box::new(spec(1))));
    assert_eq!(m.sale().status, SaleStatus::Scheduled);
    assert_eq!(m.sale().as_of_ms, 0);
    m.apply(1_000, Command::Tick);
    assert_eq!(m.sale().status, SaleStatus::Active);
    let hold = held(&m.apply(1_500, reserve("a", 1, "r1")));
    assert_eq!(m.sale().status, SaleStatus::SoldOut);
    assert_eq!(m.sale().stats.sold_out_at_ms, Some(1_500));
    m.apply(1_600, release("a", hold.hold_id, "r2"));
    assert_eq!(m.sale().status, SaleStatus::Active);
    m.apply(100_000, Command::Tick);
    assert_eq!(m.sale().status, SaleStatus::Ended);
}

#[test]
fn listings_page_in_id_order() {
    let mut m = Mem::default();
    for id in ["c-sale", "a-sale", "b-sale"] {
        let mut s = spec(5);
        s.id = id.into();
        m.apply(0, Command::CreateSale(Box::new(s)));
    }
    let ids = |v: Vec<query::SaleView>| v.into_iter().map(|s| s.spec.id).collect::<Vec<_>>();
    assert_eq!(
        ids(query::sales(&m.state, None, 2).unwrap()),
        vec!["a-sale", "b-sale"]
    );
    assert_eq!(
        ids(query::sales(&m.state, Some("b-sale"), 10).unwrap()),
        vec!["c-sale"]
    );

    let mut s = spec(10);
    s.per_user_limit = 10;
    m.apply(0, Command::CreateSale(Box::new(s)));
    let h1 = held(&m.apply(2_000, reserve("ann", 1, "r1"))).hold_id;
    let h2 = held(&m.apply(2_000, reserve("ann", 1, "r2"))).hold_id;
    let _other = held(&m.apply(2_000, reserve("bob", 1, "r3"))).hold_id;
    let h3 = held(&m.apply(2_000, reserve("ann", 1, "r4"))).hold_id;
    let o1 = order_of(&m.apply(2_100, checkout("ann", h2, "r5"))).order_id;
    let holds = |after, limit| {
        query::user_holds(&m.state, "ann", after, limit)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(holds(None, 10), vec![h1, h2, h3]);
    assert_eq!(holds(Some(h1), 1), vec![h2]);
    assert_eq!(holds(Some(h3), 10), Vec::<u64>::new());
    assert_eq!(holds(Some(u64::MAX), 10), Vec::<u64>::new());
    let orders = query::user_orders(&m.state, "ann", None, 10).unwrap();
    assert_eq!(orders.iter().map(|o| o.id).collect::<Vec<_>>(), vec![o1]);
    assert_eq!(query::order(&m.state, o1).unwrap().unwrap().hold_id, h2);
    assert_eq!(
        query::hold(&m.state, h2).unwrap().unwrap().state,
        HoldState::CheckedOut { order_id: o1 }
    );
    assert!(query::user_orders(&m.state, "bob", None, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn waitlist_status_and_next_deadline() {
    let mut m = Mem::default();
    m.apply(0, Command::CreateSale(Box::new(spec(1))));
    assert_eq!(
        query::next_deadline_ms(&m.state).unwrap(),
        Some(100_000),
        "the sale close"
    );
    let hold = held(&m.apply(2_000, reserve("a", 1, "r1")));
    assert_eq!(
        query::next_deadline_ms(&m.state).unwrap(),
        Some(7_000),
        "the hold expiry comes first"
    );
    m.apply(2_100, join("b", 1, "r2"));
    m.apply(2_200, join("c", 1, "r3"));
    assert_eq!(
        query::waitlist_status(&m.state, SALE, "c").unwrap(),
        WaitlistStatus::Waiting {
            position: 2,
            qty: 1
        }
    );
    assert_eq!(
        query::waitlist_status(&m.state, SALE, "z").unwrap(),
        WaitlistStatus::NotWaitlisted
    );
    m.apply(7_000, Command::Tick);
    assert_eq!(
        query::hold(&m.state, hold.hold_id).unwrap().unwrap().state,
        HoldState::Expired { at_ms: 7_000 }
    );
    let WaitlistStatus::Promoted { hold_id } = query::waitlist_status(&m.state, SALE, "b").unwrap()
    else {
        panic!("b should have been promoted")
    };
    let promoted = query::hold(&m.state, hold_id).unwrap().unwrap();
    assert!(promoted.from_waitlist && promoted.user_id == "b" && promoted.expires_at_ms == 12_000);
    assert_eq!(
        query::waitlist_status(&m.state, SALE, "c").unwrap(),
        WaitlistStatus::Waiting {
            position: 1,
            qty: 1
        }
    );
    assert_eq!(query::clock_ms(&m.state).unwrap(), 7_000);
}

#[test]
fn reserve_precheck_agrees_with_apply() {
    let mut m = Mem::default();
    m.apply(0, Command::CreateSale(Box::new(spec(2))));
    let pre = |m: &Mem, qty, t| query::reserve_precheck(&m.state, SALE, qty, t).unwrap();
    assert_eq!(
        pre(&m, 1, 500),
        None,
        "not started yet, but may have started when stamped"
    );
    assert_eq!(
        query::reserve_precheck(&m.state, "nope", 1, 500).unwrap(),
        Some(Reject::SaleNotFound)
    );
    assert_eq!(
        pre(&m, 3, 2_000),
        Some(Reject::InsufficientStock { available: 2 })
    );
    assert_eq!(
        m.apply(2_000, reserve("a", 3, "x")),
        Response::Rejected(Reject::InsufficientStock { available: 2 })
    );
    m.apply(2_000, reserve("a", 2, "r1"));
    assert_eq!(pre(&m, 1, 2_000), Some(Reject::SoldOut));
    assert_eq!(
        m.apply(2_000, reserve("b", 1, "r2")),
        Response::Rejected(Reject::SoldOut)
    );
    assert_eq!(pre(&m, 1, 100_000), Some(Reject::SaleEnded));
}
