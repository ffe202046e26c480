//! Deadline bundles: what a group-commit batch writes, and how `Tick`s take bundles (whole,
//! within `TICK_EXPIRE_BATCH_MAX`), with deadlines left behind by holds that ended early.

use stockade_raft_store::codec;
use stockade_raft_store::keys::{self, Deadline};
use stockade_raft_store::kv::KvRead;
use stockade_raft_store::limits::TICK_EXPIRE_BATCH_MAX;
use stockade_raft_store::types::*;

use crate::common::*;

/// Every deadline key in the state: its time, the key's deadline, and what it stands for
/// (a bundle's list, or the deadline itself).
fn deadlines(mem: &Mem) -> Vec<(u64, Deadline, Vec<Deadline>)> {
    let (lo, hi) = keys::tag_range(keys::DEADLINE);
    mem.state
        .scan(&lo, &hi, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let (at, what) = keys::parse_deadline(&k).expect("a deadline key");
            let items = match &what {
                Deadline::Bundle(_) => codec::decode::<Vec<Deadline>>(&k, &v).unwrap(),
                one => vec![one.clone()],
            };
            (at, what, items)
        })
        .collect()
}

fn reserves(users: std::ops::Range<u32>) -> Vec<Command> {
    users
        .map(|i| reserve(&format!("u{i}"), 1, &format!("r{i}")))
        .collect()
}

fn ticked(r: &Response) -> TickReport {
    match r {
        Response::Ticked(t) => t.clone(),
        other => panic!("expected Ticked, got {other:?}"),
    }
}

fn grants(r: &Response) -> Vec<u64> {
    match r {
        Response::Batch(rs) => rs.iter().map(|r| held(r).hold_id).collect(),
        other => panic!("expected Batch, got {other:?}"),
    }
}

#[test]
fn a_batch_writes_its_deadlines_as_bundles_and_ticks_take_them_whole() {
    let budget = TICK_EXPIRE_BATCH_MAX as usize;
    assert_eq!(budget, 256, "the counts below assume bundles of 256");
    let mut mem = Mem::default();
    mem.apply(0, Command::CreateSale(Box::new(spec(600))));

    // 300 reservations in one entry: their holds expire at 7_000, their idempotency
    // records are purged an hour later. Two bundles each (256 + 44), and the sale's close.
    let ids = grants(&mem.apply(2_000, Command::Batch(reserves(0..300))));
    let d = deadlines(&mem);
    let shape: Vec<(u64, usize)> = d.iter().map(|(at, _, items)| (*at, items.len())).collect();
    assert_eq!(
        shape,
        vec![
            (7_000, 256),
            (7_000, 44),
            (100_000, 1),
            (3_602_000, 256),
            (3_602_000, 44)
        ],
        "deadline keys after a batch of 300: {d:?}"
    );
    let bundled_holds: Vec<Deadline> = d[0].2.iter().chain(&d[1].2).cloned().collect();
    assert_eq!(
        bundled_holds,
        ids.iter().map(|id| Deadline::Hold(*id)).collect::<Vec<_>>()
    );
    assert_eq!(d[0].1, Deadline::Bundle(Box::new(Deadline::Hold(ids[0]))));
    assert_eq!(d[1].1, Deadline::Bundle(Box::new(Deadline::Hold(ids[256]))));
    assert_eq!(
        d[3].2[0],
        Deadline::Idem {
            user_id: "u0".into(),
            request_id: "r0".into()
        }
    );

    // A checkout alone in its entry: its order's deadline and its record's purge are
    // single keys; the hold's deadline stays in its bundle.
    let order = order_of(&mem.apply(3_000, checkout("u0", ids[0], "c0")));
    let d = deadlines(&mem);
    assert_eq!(d.len(), 7, "{d:?}");
    assert!(d.contains(&(
        13_000,
        Deadline::Order(order.order_id),
        vec![Deadline::Order(order.order_id)]
    )));

    // The first Tick takes the first bundle whole (256, the checked-out hold among them,
    // so 255 expire) and stops at the budget; the second takes the other bundle.
    let t = ticked(&mem.apply(7_000, Command::Tick));
    assert_eq!((t.holds_expired, t.more_due), (255, true), "{t:?}");
    let t = ticked(&mem.apply(7_000, Command::Tick));
    assert_eq!((t.holds_expired, t.more_due), (44, false), "{t:?}");
    assert_eq!(t.next_deadline_ms, Some(13_000));
    let c = mem.counters();
    assert_eq!((c.available, c.held, c.awaiting_payment), (599, 0, 1));
    assert_eq!(deadlines(&mem).len(), 5, "the two hold bundles are gone");

    // The order is paid before its deadline; when the deadline comes it does nothing.
    mem.apply(
        8_000,
        pay("u0", order.order_id, order.amount_minor, "p0", "pay0"),
    );
    let t = ticked(&mem.apply(13_000, Command::Tick));
    assert_eq!((t.orders_expired, t.more_due), (0, false), "{t:?}");
    let c = mem.counters();
    assert_eq!((c.available, c.sold, c.awaiting_payment), (599, 1, 0));

    // An hour on, the sale's close and every idempotency record are due. The close comes
    // first; the next bundle (256) would pass the budget with it, so it waits; then the
    // bundle alone; then the other bundle (44) with the checkout's and the payment's
    // single keys.
    let t = ticked(&mem.apply(3_700_000, Command::Tick));
    assert_eq!((t.records_purged, t.more_due), (0, true), "{t:?}");
    let t = ticked(&mem.apply(3_700_000, Command::Tick));
    assert_eq!((t.records_purged, t.more_due), (256, true), "{t:?}");
    let t = ticked(&mem.apply(3_700_000, Command::Tick));
    assert_eq!((t.records_purged, t.more_due), (46, false), "{t:?}");
    assert_eq!(deadlines(&mem), vec![], "every deadline handled");
    let (lo, hi) = keys::tag_range(keys::IDEM);
    assert_eq!(mem.state.scan(&lo, &hi, usize::MAX).unwrap().len(), 0);
}

#[test]
fn a_tick_leaves_a_bundle_that_would_pass_its_budget_for_the_next() {
    let mut mem = Mem::default();
    let mut s = spec(400);
    s.per_user_limit = 1;
    mem.apply(0, Command::CreateSale(Box::new(s)));
    // 200 reservations one entry each (200 single hold deadlines at 7_000), then a batch
    // of 100 in one entry (one bundle at 7_000, after the single keys of that time).
    for c in reserves(0..200) {
        held(&mem.apply(2_000, c));
    }
    grants(&mem.apply(2_000, Command::Batch(reserves(200..300))));
    let t = ticked(&mem.apply(7_000, Command::Tick));
    assert_eq!(
        (t.holds_expired, t.more_due),
        (200, true),
        "200 + 100 would pass the budget of {TICK_EXPIRE_BATCH_MAX}: {t:?}"
    );
    let t = ticked(&mem.apply(7_000, Command::Tick));
    assert_eq!((t.holds_expired, t.more_due), (100, false), "{t:?}");
    let c = mem.counters();
    assert_eq!((c.available, c.held), (400, 0));
}
