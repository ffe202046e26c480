//! Property tests: random sequential histories from a reference sale, jittered so that
//! ops overlap while the sequential order stays a valid linearization, must be accepted;
//! flipping a `sold_out` refusal into a grant must be rejected.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stockade_jepsen::checkers::{expiry, oversell};
use stockade_jepsen::history::*;
use stockade_jepsen::linearizability::check_sale;
use stockade_jepsen::verdict::Verdict;

use crate::common::{config, SALE, WALL};

/// Holds and orders never expire in these histories.
const FAR_MS: u64 = 1_000_000_000;
/// Linearization points are this far apart; jitter is up to three times as much.
const STEP_NS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum H {
    Active,
    Done,
}
#[derive(Debug, Clone, Copy, PartialEq)]
enum O {
    Awaiting,
    Confirmed,
    Done,
}

/// The reference sale: the business rules, written once more, sequentially.
struct RefSale {
    quantity: u32,
    limit: u32,
    cod: bool,
    available: u32,
    held: u32,
    awaiting: u32,
    sold: u32,
    used: BTreeMap<String, u32>,
    /// Hold id → (user, qty, state); only holds the client learned of.
    holds: Vec<(u64, String, u32, H)>,
    orders: Vec<(u64, String, u32, O)>,
    next_id: u64,
}

#[derive(Debug, Clone)]
struct Action {
    /// 0, 1 reserve; 2 release; 3 checkout; 4 pay; 5 cancel; 6 fail payment; 7 read.
    kind: u8,
    user: u8,
    pick: usize,
    qty: u32,
    /// 0: recorded as info though it happened; 1: info and it did not happen.
    info: u8,
    before_ns: u64,
    after_ns: u64,
}

fn action() -> impl Strategy<Value = Action> {
    (
        0u8..8,
        0u8..3,
        any::<usize>(),
        1u32..3,
        0u8..12,
        0..3 * STEP_NS,
        0..3 * STEP_NS,
    )
        .prop_map(
            |(kind, user, pick, qty, info, before_ns, after_ns)| Action {
                kind,
                user,
                pick,
                qty,
                info,
                before_ns,
                after_ns,
            },
        )
}

impl RefSale {
    fn new(quantity: u32, limit: u32, cod: bool) -> Self {
        RefSale {
            quantity,
            limit,
            cod,
            available: quantity,
            held: 0,
            awaiting: 0,
            sold: 0,
            used: BTreeMap::new(),
            holds: Vec::new(),
            orders: Vec::new(),
            next_id: 1,
        }
    }

    /// The reference itself keeps the counters' invariant.
    fn conserves(&self) -> bool {
        self.available + self.held + self.awaiting + self.sold == self.quantity
    }

    fn read(&self) -> OkValue {
        sale_read(self.available, self.held, self.awaiting, self.sold)
    }

    /// Runs one action; returns the call and its real outcome (`Err(code)` if refused).
    /// `visible`: the client learns the answer (hold and order ids it may use later).
    fn run(
        &mut self,
        a: &Action,
        n: usize,
        apply: bool,
        visible: bool,
    ) -> (Call, Result<OkValue, &'static str>) {
        let user = format!("u{}", a.user);
        let rid = format!("q{n}");
        let s = SALE.to_string();
        match a.kind {
            0 | 1 => {
                let call = Call::Reserve {
                    sale_id: s,
                    user_id: user.clone(),
                    qty: a.qty,
                    request_id: rid,
                };
                let used = self.used.get(&user).copied().unwrap_or(0);
                let out = if self.available == 0 {
                    Err("sold_out")
                } else if self.available < a.qty {
                    Err("insufficient_stock")
                } else if used + a.qty > self.limit {
                    Err("limit_exceeded")
                } else {
                    let id = self.next_id;
                    if apply {
                        self.next_id += 1;
                        self.available -= a.qty;
                        self.held += a.qty;
                        *self.used.entry(user.clone()).or_insert(0) += a.qty;
                        if visible {
                            self.holds.push((id, user, a.qty, H::Active));
                        }
                    }
                    Ok(held(id, a.qty, WALL + FAR_MS))
                };
                (call, out)
            }
            2 | 3 if !self.holds.is_empty() => {
                let i = a.pick % self.holds.len();
                let (id, owner, qty, st) = self.holds[i].clone();
                let checkout = a.kind == 3;
                let call = if checkout {
                    Call::Checkout {
                        sale_id: s,
                        user_id: owner.clone(),
                        hold_id: id,
                        request_id: rid,
                    }
                } else {
                    Call::Release {
                        sale_id: s,
                        user_id: owner.clone(),
                        hold_id: id,
                        request_id: rid,
                    }
                };
                if st != H::Active {
                    return (call, Err("hold_not_active"));
                }
                let out = if checkout {
                    let oid = self.next_id;
                    let status = if self.cod {
                        OrderStatus::Confirmed
                    } else {
                        OrderStatus::AwaitingPayment
                    };
                    if apply {
                        self.next_id += 1;
                        self.holds[i].3 = H::Done;
                        self.held -= qty;
                        if self.cod {
                            self.sold += qty;
                        } else {
                            self.awaiting += qty;
                        }
                        let ost = if self.cod { O::Confirmed } else { O::Awaiting };
                        if visible {
                            self.orders.push((oid, owner, qty, ost));
                        }
                    }
                    let pay_by = (!self.cod).then_some(WALL + FAR_MS);
                    Ok(checked_out(oid, qty, status, pay_by))
                } else {
                    if apply {
                        self.holds[i].3 = H::Done;
                        self.held -= qty;
                        self.available += qty;
                        *self.used.entry(owner).or_insert(0) -= qty;
                    }
                    Ok(OkValue::Released { hold_id: id })
                };
                (call, out)
            }
            4..=6 if !self.orders.is_empty() => {
                let i = a.pick % self.orders.len();
                let (id, owner, qty, st) = self.orders[i].clone();
                let (call, out) = match a.kind {
                    4 => (
                        Call::Pay {
                            sale_id: s,
                            user_id: owner.clone(),
                            order_id: id,
                            amount_minor: 0,
                            request_id: rid,
                        },
                        if st == O::Awaiting {
                            Ok(OkValue::Paid { order_id: id })
                        } else {
                            Err("order_not_awaiting_payment")
                        },
                    ),
                    5 => (
                        Call::Cancel {
                            sale_id: s,
                            user_id: owner.clone(),
                            order_id: id,
                            request_id: rid,
                        },
                        if st != O::Done {
                            Ok(OkValue::Cancelled { order_id: id })
                        } else {
                            Err("order_not_cancellable")
                        },
                    ),
                    _ => (
                        Call::FailPayment {
                            sale_id: s,
                            user_id: owner.clone(),
                            order_id: id,
                            request_id: rid,
                        },
                        if st == O::Awaiting {
                            Ok(OkValue::PaymentFailed { order_id: id })
                        } else {
                            Err("order_not_awaiting_payment")
                        },
                    ),
                };
                if apply && out.is_ok() {
                    if a.kind == 4 {
                        self.awaiting -= qty;
                        self.sold += qty;
                        // Paid: neither cancellable nor payable again.
                        self.orders[i].3 = O::Done;
                    } else {
                        match st {
                            O::Awaiting => self.awaiting -= qty,
                            O::Confirmed => self.sold -= qty,
                            O::Done => {}
                        }
                        self.available += qty;
                        *self.used.entry(owner).or_insert(0) -= qty;
                        self.orders[i].3 = O::Done;
                    }
                }
                (call, out)
            }
            _ => (
                Call::ReadSale {
                    sale_id: s,
                    linearizable: true,
                },
                Ok(self.read()),
            ),
        }
    }
}

/// Builds a jittered history: op `n` linearizes at `(n + 1) · STEP_NS` inside its window.
/// `with_info`: some ops are recorded as `Info` (some of which did not happen).
fn generate(
    quantity: u32,
    limit: u32,
    cod: bool,
    actions: &[Action],
    with_info: bool,
) -> (History, RefSale) {
    let mut sale = RefSale::new(quantity, limit, cod);
    let mut h = History {
        meta: HistoryMeta {
            seed: 0,
            wall_start_ms: WALL,
            sales: vec![SaleMeta {
                sale_id: SALE.into(),
                quantity,
                per_user_limit: limit,
                hold_ttl_ms: FAR_MS,
                payment_window_ms: if cod { 0 } else { FAR_MS },
            }],
        },
        ops: Vec::new(),
    };
    for (n, a) in actions.iter().enumerate() {
        let t = (n as u64 + 1) * STEP_NS;
        let lost = with_info && a.info == 1;
        let unknown = with_info && a.info <= 1;
        let (call, out) = sale.run(a, n, !lost, !unknown);
        let invoke_ns = t.saturating_sub(a.before_ns);
        let complete_ns = Some(t + a.after_ns);
        let outcome = if unknown && !matches!(call, Call::ReadSale { .. }) {
            Outcome::Info {
                reason: "timeout".into(),
            }
        } else {
            match out {
                Ok(value) => Outcome::Ok { value },
                Err(code) => Outcome::Fail {
                    code: code.into(),
                    message: String::new(),
                },
            }
        };
        h.ops.push(Op {
            id: n as u64,
            process: n as u64 % 5,
            call,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }
    (h, sale)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn valid_jittered_histories_are_linearizable(
        quantity in 1u32..5,
        limit in 1u32..4,
        cod in any::<bool>(),
        with_info in any::<bool>(),
        actions in prop::collection::vec(action(), 1..60),
    ) {
        let (h, sale) = generate(quantity, limit, cod, &actions, with_info);
        prop_assert!(sale.conserves());
        let v = check_sale(&h, SALE, &config());
        prop_assert_eq!(v.verdict, Verdict::Valid, "{:?}\n{}", v, h.to_jsonl_string().unwrap_or_default());
        // The history-only checkers agree.
        prop_assert_eq!(oversell::check(&h, None, &config()).verdict, Verdict::Valid);
        prop_assert_eq!(expiry::check(&h, None, &config()).verdict, Verdict::Valid);
    }

    #[test]
    fn a_sold_out_refusal_flipped_into_a_grant_is_rejected(
        quantity in 1u32..4,
        actions in prop::collection::vec(action(), 4..40),
    ) {
        // Only reserves, checkouts, payments and reads: nothing ever gives units back, so
        // after a sold_out refusal no linearization can grant one more unit.
        let actions: Vec<Action> = actions
            .into_iter()
            .map(|mut a| {
                a.kind = match a.kind { 0..=2 => 0, 3 => 3, 4 => 4, _ => 7 };
                a
            })
            .collect();
        let (mut h, _) = generate(quantity, 10, false, &actions, false);
        let victim = h.ops.iter().rposition(|o| o.outcome.fail_code() == Some("sold_out"));
        prop_assume!(victim.is_some(), "no sold_out refusal to flip");
        let Some(victim) = victim else { return Ok(()) };
        let qty = match &h.ops[victim].call {
            Call::Reserve { qty, .. } => *qty,
            _ => 1,
        };
        h.ops[victim].outcome = Outcome::Ok { value: held(999_999, qty, WALL + FAR_MS) };
        let v = check_sale(&h, SALE, &config());
        prop_assert_eq!(v.verdict, Verdict::Invalid, "{:?}\n{}", v, h.to_jsonl_string().unwrap_or_default());
    }
}

/// A long history (3000 ops, some unknown) from the reference sale checks well within
/// the default limits.
#[test]
fn a_long_valid_history_is_checked_within_the_default_limits() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let actions: Vec<Action> = (0..3000)
        .map(|_| Action {
            kind: (next() % 8) as u8,
            user: (next() % 3) as u8,
            pick: next() as usize,
            qty: 1 + (next() % 2) as u32,
            info: (next() % 12) as u8,
            before_ns: next() % (3 * STEP_NS),
            after_ns: next() % (3 * STEP_NS),
        })
        .collect();
    let (h, _) = generate(4, 3, false, &actions, true);
    let started = std::time::Instant::now();
    let v = check_sale(&h, SALE, &config());
    assert_eq!(v.verdict, Verdict::Valid, "{v:?}");
    eprintln!("3000 ops: {v:?} in {:?}", started.elapsed());
}

/// A 600-op history (with unknown ops) with one read in the middle corrupted is
/// rejected, and the counterexample names the read. (Proving a violation explores every
/// order of the ops before it and every subset of the unknown ones; deep in a long
/// history with many unknown ops that can exceed the limits: then the verdict is
/// unknown, never valid.)
#[test]
fn a_long_history_with_one_bad_read_is_rejected() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let actions: Vec<Action> = (0..600)
        .map(|_| Action {
            kind: (next() % 8) as u8,
            user: (next() % 3) as u8,
            pick: next() as usize,
            qty: 1 + (next() % 2) as u32,
            info: (next() % 12) as u8,
            before_ns: next() % (3 * STEP_NS),
            after_ns: next() % (3 * STEP_NS),
        })
        .collect();
    let (mut h, _) = generate(4, 3, false, &actions, true);
    let Some(bad) = h
        .ops
        .iter()
        .skip(300)
        .position(|o| matches!(o.call, Call::ReadSale { .. }))
        .map(|i| i + 300)
    else {
        panic!("no read after op 300");
    };
    // Five units taken of four: no linearization can produce it.
    h.ops[bad].outcome = Outcome::Ok {
        value: sale_read(0, 5, 0, 0),
    };
    let started = std::time::Instant::now();
    let v = check_sale(&h, SALE, &config());
    eprintln!(
        "bad read at op {bad}: {:?} in {:?}",
        v.verdict,
        started.elapsed()
    );
    assert_eq!(v.verdict, Verdict::Invalid, "{v:?}");
    let a = v.anomaly.unwrap_or_else(|| panic!("no counterexample"));
    assert!(a.ops.contains(&(bad as u64)), "{a}");
}
