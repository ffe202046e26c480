//! Table-driven tests of every command and every rejection code of the state machine.
//!
//! Each row of the table builds a fresh in-memory replica, applies its setup steps (which
//! must not be rejected unless the row says so), applies the command under test and
//! compares the exact `Response`. After every row the counters of every sale must conserve
//! the quantity, and where the row names them, the counters of the sale must be exactly
//! the expected ones. All failing rows are reported together, by name.
//!
//! What a row cannot express (hold records after a hand-off, tick batches, idempotency
//! purge, a full waitlist) has a focused test below the table.

#[path = "it/common.rs"]
mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use stockade_raft_store::limits::*;
use stockade_raft_store::machine::apply_to_mem;
use stockade_raft_store::query::{self, WaitlistStatus};
use stockade_raft_store::types::*;

/// `spec(q).sale_price_minor`.
const PRICE: u64 = 49_900;
/// `alice_holds`: hold 1, reserved at 2_000, expires at 2_000 + 5_000.
const HOLD_EXP: u64 = 7_000;
/// `alice_ordered`: order 2, checked out at 3_000, to be paid by 3_000 + 10_000.
const PAY_BY: u64 = 13_000;

type Step = (u64, Command);

/// What to check about the sale `SALE` after the command under test.
enum After {
    /// Conservation only.
    Any,
    /// Exactly these counters (available, held, awaiting payment, sold).
    Counters(Counters),
    /// The sale must not exist.
    NoSale,
}

struct Case {
    name: &'static str,
    setup: Vec<Step>,
    /// Setup steps may be rejected (the row is about what a rejection leaves behind).
    setup_may_reject: bool,
    at_ms: u64,
    cmd: Command,
    expect: Response,
    after: After,
}

fn case(name: &'static str, setup: Vec<Step>, at_ms: u64, cmd: Command, expect: Response) -> Case {
    Case {
        name,
        setup,
        setup_may_reject: false,
        at_ms,
        cmd,
        expect,
        after: After::Any,
    }
}

impl Case {
    fn counters(mut self, available: u32, held: u32, awaiting_payment: u32, sold: u32) -> Self {
        self.after = After::Counters(Counters {
            available,
            held,
            awaiting_payment,
            sold,
        });
        self
    }

    fn no_sale(mut self) -> Self {
        self.after = After::NoSale;
        self
    }

    fn setup_may_reject(mut self) -> Self {
        self.setup_may_reject = true;
        self
    }
}

// ---- builders ---------------------------------------------------------------------------

fn spec_with(quantity: u32, f: impl FnOnce(&mut SaleSpec)) -> SaleSpec {
    let mut s = spec(quantity);
    f(&mut s);
    s
}

fn plus(mut base: Vec<Step>, more: impl IntoIterator<Item = Step>) -> Vec<Step> {
    base.extend(more);
    base
}

fn create(quantity: u32) -> Vec<Step> {
    vec![(0, Command::CreateSale(Box::new(spec(quantity))))]
}

/// Alice holds one unit: hold 1, expires at `HOLD_EXP`.
fn alice_holds(quantity: u32) -> Vec<Step> {
    plus(create(quantity), [(2_000, reserve("alice", 1, "r1"))])
}

/// Alice checked out hold 1: order 2, awaiting payment until `PAY_BY`.
fn alice_ordered(quantity: u32) -> Vec<Step> {
    plus(alice_holds(quantity), [(3_000, checkout("alice", 1, "c1"))])
}

/// Alice paid order 2 at 4_000 with payment reference `pay-1`.
fn alice_paid(quantity: u32) -> Vec<Step> {
    plus(
        alice_ordered(quantity),
        [(4_000, pay("alice", 2, PRICE, "pay-1", "p1"))],
    )
}

/// Cash on delivery: alice's hold 1 became order 2, confirmed at 3_000.
fn cod_ordered() -> Vec<Step> {
    vec![
        (
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.payment_window_ms = 0))),
        ),
        (2_000, reserve("alice", 1, "r1")),
        (3_000, checkout("alice", 1, "c1")),
    ]
}

/// One unit, held by alice (hold 1); bob waits for one unit at position 1.
fn sold_out_bob_waits() -> Vec<Step> {
    plus(alice_holds(1), [(2_500, join("bob", 1, "w1"))])
}

fn end_sale(sale_id: &str) -> Command {
    Command::EndSale {
        sale_id: sale_id.into(),
    }
}

fn reserve_on(sale_id: &str, user: &str, qty: u32, req: &str) -> Command {
    Command::Reserve {
        sale_id: sale_id.into(),
        user_id: user.into(),
        qty,
        request_id: req.into(),
    }
}

fn pay_in(currency: &str, amount: u64, pref: &str) -> Command {
    Command::ConfirmPayment {
        user_id: "alice".into(),
        order_id: 2,
        amount_minor: amount,
        currency: currency.into(),
        payment_ref: pref.into(),
        request_id: "p1".into(),
    }
}

fn held_resp(hold_id: u64, qty: u32, expires_at_ms: u64) -> Response {
    Response::Held(HoldGrant {
        hold_id,
        sale_id: SALE.into(),
        qty,
        expires_at_ms,
    })
}

fn order_resp(order_id: u64, qty: u32, status: OrderStatus, pay_by_ms: Option<u64>) -> Response {
    Response::CheckedOut(OrderInfo {
        order_id,
        sale_id: SALE.into(),
        qty,
        amount_minor: PRICE * u64::from(qty),
        currency: "EUR".into(),
        status,
        pay_by_ms,
    })
}

fn rej(r: Reject) -> Response {
    Response::Rejected(r)
}

fn invalid(field: &str, reason: &str) -> Response {
    rej(Reject::Invalid {
        field: field.into(),
        reason: reason.into(),
    })
}

fn ticked(f: impl FnOnce(&mut TickReport)) -> Response {
    let mut r = TickReport::default();
    f(&mut r);
    Response::Ticked(r)
}

fn sale_created() -> Response {
    Response::SaleCreated {
        sale_id: SALE.into(),
    }
}

fn sale_ended(ended_at_ms: u64) -> Response {
    Response::SaleEnded {
        sale_id: SALE.into(),
        ended_at_ms,
    }
}

fn joined(position: u32) -> Response {
    Response::WaitlistJoined {
        sale_id: SALE.into(),
        position,
    }
}

fn paid_status() -> OrderStatus {
    OrderStatus::Paid {
        payment_ref: "pay-1".into(),
        at_ms: 4_000,
    }
}

fn cancelled(reason: CancelReason, at_ms: u64) -> OrderStatus {
    OrderStatus::Cancelled { reason, at_ms }
}

const SLUG: &str = "must be a slug: a-z, 0-9 and '-', not starting with '-'";
const CURRENCY: &str = "must be an ISO 4217 code, three upper-case letters";
const USER_CHARS: &str = "allowed characters are A-Z a-z 0-9 _ . : @ -";

// ---- the table --------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    let eur_amount_mismatch = rej(Reject::AmountMismatch {
        expected_minor: PRICE,
        currency: "EUR".into(),
    });
    vec![
        // ---- CreateSale
        case(
            "create_sale/ok",
            vec![],
            0,
            Command::CreateSale(Box::new(spec(10))),
            sale_created(),
        )
        .counters(10, 0, 0, 0),
        case(
            "create_sale/same_spec_again_is_ok",
            create(10),
            500,
            Command::CreateSale(Box::new(spec(10))),
            sale_created(),
        )
        .counters(10, 0, 0, 0),
        case(
            "create_sale/same_spec_after_activity_changes_nothing",
            alice_holds(10),
            3_000,
            Command::CreateSale(Box::new(spec(10))),
            sale_created(),
        )
        .counters(9, 1, 0, 0),
        case(
            "create_sale/different_spec_is_sale_exists",
            create(10),
            500,
            Command::CreateSale(Box::new(spec(11))),
            rej(Reject::SaleExists),
        )
        .counters(10, 0, 0, 0),
        case(
            "create_sale/ends_at_the_clock_is_in_the_past",
            vec![],
            100_000,
            Command::CreateSale(Box::new(spec(10))),
            invalid("ends_at_ms", "is already in the past"),
        )
        .no_sale(),
        case(
            "create_sale/ends_one_ms_after_the_clock_ok",
            vec![],
            99_999,
            Command::CreateSale(Box::new(spec(10))),
            sale_created(),
        )
        .counters(10, 0, 0, 0),
        case(
            "create_sale/quantity_zero",
            vec![],
            0,
            Command::CreateSale(Box::new(spec(0))),
            invalid("quantity", "must be 1..=10000000"),
        )
        .no_sale(),
        case(
            "create_sale/quantity_above_max",
            vec![],
            0,
            Command::CreateSale(Box::new(spec(SALE_QUANTITY_MAX + 1))),
            invalid("quantity", "must be 1..=10000000"),
        )
        .no_sale(),
        case(
            "create_sale/lower_case_currency",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.currency = "eur".into()))),
            invalid("currency", CURRENCY),
        )
        .no_sale(),
        case(
            "create_sale/upper_case_slug",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.id = "Spring-Drop".into()))),
            invalid("id", SLUG),
        ),
        case(
            "create_sale/slug_starting_with_dash",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.id = "-drop".into()))),
            invalid("id", SLUG),
        ),
        case(
            "create_sale/sale_price_above_list_price",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.sale_price_minor = 100_001))),
            invalid("sale_price_minor", "above the list price"),
        )
        .no_sale(),
        case(
            "create_sale/ends_not_after_starts",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.ends_at_ms = 1_000))),
            invalid("ends_at_ms", "must be after starts_at_ms"),
        )
        .no_sale(),
        case(
            "create_sale/per_user_limit_zero",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.per_user_limit = 0))),
            invalid("per_user_limit", "must be 1..=1000"),
        )
        .no_sale(),
        case(
            "create_sale/hold_ttl_below_min",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| {
                s.hold_ttl_ms = HOLD_TTL_MS_MIN - 1
            }))),
            invalid("hold_ttl_ms", "must be 100..=86400000"),
        )
        .no_sale(),
        case(
            "create_sale/empty_sku",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| s.product.sku = String::new()))),
            invalid("product.sku", "must be 1..=64 bytes"),
        )
        .no_sale(),
        case(
            "create_sale/image_url_not_http",
            vec![],
            0,
            Command::CreateSale(Box::new(spec_with(10, |s| {
                s.product.image_url = "ftp://img.example/p.png".into()
            }))),
            invalid("product.image_url", "must be an http(s) URL"),
        )
        .no_sale(),
        // ---- UpdateSale
        case(
            "update_sale/ok_before_start_counters_follow_quantity",
            create(10),
            500,
            Command::UpdateSale(Box::new(spec(20))),
            Response::SaleUpdated {
                sale_id: SALE.into(),
            },
        )
        .counters(20, 0, 0, 0),
        case(
            "update_sale/same_update_twice_ok",
            plus(create(10), [(500, Command::UpdateSale(Box::new(spec(20))))]),
            600,
            Command::UpdateSale(Box::new(spec(20))),
            Response::SaleUpdated {
                sale_id: SALE.into(),
            },
        )
        .counters(20, 0, 0, 0),
        case(
            "update_sale/at_start_is_already_started",
            create(10),
            1_000,
            Command::UpdateSale(Box::new(spec(20))),
            rej(Reject::SaleAlreadyStarted),
        )
        .counters(10, 0, 0, 0),
        case(
            "update_sale/after_end_sale_before_start_is_ended",
            plus(create(10), [(500, end_sale(SALE))]),
            600,
            Command::UpdateSale(Box::new(spec(20))),
            rej(Reject::SaleEnded),
        )
        .counters(10, 0, 0, 0),
        case(
            "update_sale/unknown",
            vec![],
            0,
            Command::UpdateSale(Box::new(spec(20))),
            rej(Reject::SaleNotFound),
        )
        .no_sale(),
        case(
            "update_sale/invalid_spec",
            create(10),
            500,
            Command::UpdateSale(Box::new(spec(0))),
            invalid("quantity", "must be 1..=10000000"),
        )
        .counters(10, 0, 0, 0),
        case(
            "update_sale/ends_in_the_past",
            create(10),
            500,
            Command::UpdateSale(Box::new(spec_with(10, |s| {
                s.starts_at_ms = 100;
                s.ends_at_ms = 500;
            }))),
            invalid("ends_at_ms", "is already in the past"),
        )
        .counters(10, 0, 0, 0),
        case(
            "update_sale/moves_the_close_deadline",
            plus(
                create(10),
                [(
                    500,
                    Command::UpdateSale(Box::new(spec_with(10, |s| s.ends_at_ms = 200_000))),
                )],
            ),
            600,
            Command::Tick,
            ticked(|t| t.next_deadline_ms = Some(200_000)),
        )
        .counters(10, 0, 0, 0),
        // ---- EndSale
        case(
            "end_sale/ok",
            create(10),
            5_000,
            end_sale(SALE),
            sale_ended(5_000),
        )
        .counters(10, 0, 0, 0),
        case(
            "end_sale/again_returns_the_first_ended_at",
            plus(create(10), [(5_000, end_sale(SALE))]),
            6_000,
            end_sale(SALE),
            sale_ended(5_000),
        ),
        case(
            "end_sale/after_the_natural_end",
            create(10),
            150_000,
            end_sale(SALE),
            sale_ended(100_000),
        ),
        case(
            "end_sale/keeps_live_holds",
            alice_holds(10),
            5_000,
            end_sale(SALE),
            sale_ended(5_000),
        )
        .counters(9, 1, 0, 0),
        case(
            "end_sale/unknown",
            vec![],
            0,
            end_sale("nope"),
            rej(Reject::SaleNotFound),
        )
        .no_sale(),
        case(
            "end_sale/bad_id",
            create(10),
            0,
            end_sale("Nope"),
            invalid("sale_id", SLUG),
        ),
        // ---- Reserve
        case(
            "reserve/ok",
            create(10),
            2_000,
            reserve("alice", 2, "r1"),
            held_resp(1, 2, 7_000),
        )
        .counters(8, 2, 0, 0),
        case(
            "reserve/retry_returns_the_first_answer",
            alice_holds(10),
            2_500,
            reserve("alice", 1, "r1"),
            held_resp(1, 1, HOLD_EXP),
        )
        .counters(9, 1, 0, 0),
        case(
            "reserve/retry_after_release_returns_the_first_answer_and_acts_no_more",
            plus(alice_holds(10), [(3_000, release("alice", 1, "q1"))]),
            3_500,
            reserve("alice", 1, "r1"),
            held_resp(1, 1, HOLD_EXP),
        )
        .counters(10, 0, 0, 0),
        case(
            "reserve/before_start",
            create(10),
            999,
            reserve("alice", 1, "r1"),
            rej(Reject::SaleNotStarted {
                starts_at_ms: 1_000,
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "reserve/at_start_ok",
            create(10),
            1_000,
            reserve("alice", 1, "r1"),
            held_resp(1, 1, 6_000),
        )
        .counters(9, 1, 0, 0),
        case(
            "reserve/retry_of_a_rejection_is_the_same_rejection",
            plus(create(10), [(999, reserve("alice", 1, "r1"))]),
            2_000,
            reserve("alice", 1, "r1"),
            rej(Reject::SaleNotStarted {
                starts_at_ms: 1_000,
            }),
        )
        .setup_may_reject()
        .counters(10, 0, 0, 0),
        case(
            "reserve/at_end",
            create(10),
            100_000,
            reserve("alice", 1, "r1"),
            rej(Reject::SaleEnded),
        )
        .counters(10, 0, 0, 0),
        case(
            "reserve/after_end_sale",
            plus(create(10), [(5_000, end_sale(SALE))]),
            5_000,
            reserve("alice", 1, "r1"),
            rej(Reject::SaleEnded),
        )
        .counters(10, 0, 0, 0),
        case(
            // Ended wins over not-started (as `query::reserve_precheck` says too): a
            // sale ended before its start never opens.
            "reserve/ended_before_start_says_ended",
            plus(create(10), [(500, end_sale(SALE))]),
            600,
            reserve("alice", 1, "r1"),
            rej(Reject::SaleEnded),
        )
        .counters(10, 0, 0, 0),
        case(
            "reserve/unknown_sale",
            create(10),
            2_000,
            reserve_on("nope", "alice", 1, "r1"),
            rej(Reject::SaleNotFound),
        ),
        case(
            "reserve/qty_zero",
            create(10),
            2_000,
            reserve("alice", 0, "r1"),
            invalid("qty", "must be 1..=100"),
        )
        .counters(10, 0, 0, 0),
        case(
            "reserve/qty_above_max",
            create(10),
            2_000,
            reserve("alice", QTY_PER_HOLD_MAX + 1, "r1"),
            invalid("qty", "must be 1..=100"),
        ),
        case(
            "reserve/bad_user_id",
            create(10),
            2_000,
            reserve("al ice", 1, "r1"),
            invalid("user_id", USER_CHARS),
        ),
        case(
            "reserve/empty_request_id",
            create(10),
            2_000,
            reserve("alice", 1, ""),
            invalid("request_id", "must be 1..=64 bytes"),
        ),
        case(
            "reserve/request_id_with_space",
            create(10),
            2_000,
            reserve("alice", 1, "r 1"),
            invalid("request_id", "must be printable ASCII without spaces"),
        ),
        case(
            "reserve/sold_out",
            alice_holds(1),
            2_500,
            reserve("bob", 1, "r1"),
            rej(Reject::SoldOut),
        )
        .counters(0, 1, 0, 0),
        case(
            "reserve/insufficient_stock",
            plus(create(3), [(2_000, reserve("alice", 2, "r1"))]),
            2_500,
            reserve("bob", 2, "r1"),
            rej(Reject::InsufficientStock { available: 1 }),
        )
        .counters(1, 2, 0, 0),
        case(
            "reserve/limit_exceeded_by_a_hold",
            alice_holds(10),
            2_500,
            reserve("alice", 2, "r2"),
            rej(Reject::LimitExceeded { limit: 2, used: 1 }),
        )
        .counters(9, 1, 0, 0),
        case(
            "reserve/limit_counts_held_and_awaiting_payment",
            plus(alice_ordered(10), [(3_500, reserve("alice", 1, "r2"))]),
            4_000,
            reserve("alice", 1, "r3"),
            rej(Reject::LimitExceeded { limit: 2, used: 2 }),
        )
        .counters(8, 1, 1, 0),
        case(
            "reserve/limit_counts_bought",
            alice_paid(10),
            5_000,
            reserve("alice", 2, "r2"),
            rej(Reject::LimitExceeded { limit: 2, used: 1 }),
        )
        .counters(9, 0, 0, 1),
        case(
            "reserve/limit_frees_after_cancel",
            plus(alice_ordered(10), [(3_500, cancel("alice", 2, "x1"))]),
            4_000,
            reserve("alice", 2, "r2"),
            held_resp(3, 2, 9_000),
        )
        .counters(8, 2, 0, 0),
        case(
            "reserve/sixteenth_live_hold_ok",
            plus(
                vec![(
                    0,
                    Command::CreateSale(Box::new(spec_with(20, |s| s.per_user_limit = 20))),
                )],
                [(2_000, holds_batch("alice", 15))],
            ),
            2_500,
            reserve("alice", 1, "h15"),
            held_resp(16, 1, 7_500),
        )
        .counters(4, 16, 0, 0),
        case(
            "reserve/too_many_holds",
            plus(
                vec![(
                    0,
                    Command::CreateSale(Box::new(spec_with(20, |s| s.per_user_limit = 20))),
                )],
                [(2_000, holds_batch("alice", HOLDS_PER_USER_MAX))],
            ),
            2_500,
            reserve("alice", 1, "h16"),
            rej(Reject::TooManyHolds {
                max: HOLDS_PER_USER_MAX,
            }),
        )
        .counters(4, 16, 0, 0),
        // ---- Release
        case(
            "release/ok",
            alice_holds(10),
            3_000,
            release("alice", 1, "q1"),
            Response::Released { hold_id: 1 },
        )
        .counters(10, 0, 0, 0),
        case(
            "release/one_ms_before_expiry_ok",
            alice_holds(10),
            HOLD_EXP - 1,
            release("alice", 1, "q1"),
            Response::Released { hold_id: 1 },
        )
        .counters(10, 0, 0, 0),
        case(
            "release/at_expiry_is_hold_expired_and_units_come_back",
            alice_holds(10),
            HOLD_EXP,
            release("alice", 1, "q1"),
            rej(Reject::HoldExpired),
        )
        .counters(10, 0, 0, 0),
        case(
            "release/hold_not_found",
            alice_holds(10),
            3_000,
            release("alice", 99, "q1"),
            rej(Reject::HoldNotFound),
        )
        .counters(9, 1, 0, 0),
        case(
            "release/an_order_id_is_not_a_hold",
            alice_ordered(10),
            3_500,
            release("alice", 2, "q1"),
            rej(Reject::HoldNotFound),
        )
        .counters(9, 0, 1, 0),
        case(
            "release/not_owner",
            alice_holds(10),
            3_000,
            release("bob", 1, "q1"),
            rej(Reject::NotOwner),
        )
        .counters(9, 1, 0, 0),
        case(
            "release/twice_is_hold_not_active",
            plus(alice_holds(10), [(3_000, release("alice", 1, "q1"))]),
            3_500,
            release("alice", 1, "q2"),
            rej(Reject::HoldNotActive {
                state: HoldState::Released { at_ms: 3_000 },
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "release/retry_same_request_is_released",
            plus(alice_holds(10), [(3_000, release("alice", 1, "q1"))]),
            3_500,
            release("alice", 1, "q1"),
            Response::Released { hold_id: 1 },
        )
        .counters(10, 0, 0, 0),
        case(
            "release/expired_by_tick_is_hold_not_active",
            plus(alice_holds(10), [(HOLD_EXP, Command::Tick)]),
            7_500,
            release("alice", 1, "q1"),
            rej(Reject::HoldNotActive {
                state: HoldState::Expired { at_ms: HOLD_EXP },
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "release/expired_by_an_earlier_release_is_hold_not_active",
            plus(alice_holds(10), [(HOLD_EXP, release("alice", 1, "q1"))]),
            7_500,
            release("alice", 1, "q2"),
            rej(Reject::HoldNotActive {
                state: HoldState::Expired { at_ms: HOLD_EXP },
            }),
        )
        .setup_may_reject()
        .counters(10, 0, 0, 0),
        case(
            "release/checked_out_is_hold_not_active",
            alice_ordered(10),
            3_500,
            release("alice", 1, "q1"),
            rej(Reject::HoldNotActive {
                state: HoldState::CheckedOut { order_id: 2 },
            }),
        )
        .counters(9, 0, 1, 0),
        case(
            "release/hands_the_units_to_the_waitlist_head",
            sold_out_bob_waits(),
            3_000,
            release("alice", 1, "q1"),
            Response::Released { hold_id: 1 },
        )
        .counters(0, 1, 0, 0),
        case(
            "release/request_id_of_a_reserve_is_reused",
            alice_holds(10),
            3_000,
            release("alice", 1, "r1"),
            rej(Reject::RequestIdReused),
        )
        .counters(9, 1, 0, 0),
        // ---- Checkout
        case(
            "checkout/ok",
            alice_holds(10),
            3_000,
            checkout("alice", 1, "c1"),
            order_resp(2, 1, OrderStatus::AwaitingPayment, Some(PAY_BY)),
        )
        .counters(9, 0, 1, 0),
        case(
            "checkout/two_units_cost_twice_the_price",
            plus(create(10), [(2_000, reserve("alice", 2, "r1"))]),
            3_000,
            checkout("alice", 1, "c1"),
            order_resp(2, 2, OrderStatus::AwaitingPayment, Some(PAY_BY)),
        )
        .counters(8, 0, 2, 0),
        case(
            "checkout/cash_on_delivery_confirms_at_once",
            plus(
                vec![(
                    0,
                    Command::CreateSale(Box::new(spec_with(10, |s| s.payment_window_ms = 0))),
                )],
                [(2_000, reserve("alice", 2, "r1"))],
            ),
            3_000,
            checkout("alice", 1, "c1"),
            order_resp(2, 2, OrderStatus::Confirmed, None),
        )
        .counters(8, 0, 0, 2),
        case(
            "checkout/retry_same_request_returns_the_order",
            alice_ordered(10),
            3_500,
            checkout("alice", 1, "c1"),
            order_resp(2, 1, OrderStatus::AwaitingPayment, Some(PAY_BY)),
        )
        .counters(9, 0, 1, 0),
        case(
            "checkout/again_with_a_new_request_is_hold_not_active",
            alice_ordered(10),
            3_500,
            checkout("alice", 1, "c2"),
            rej(Reject::HoldNotActive {
                state: HoldState::CheckedOut { order_id: 2 },
            }),
        )
        .counters(9, 0, 1, 0),
        case(
            "checkout/at_expiry_is_hold_expired_and_units_come_back",
            alice_holds(10),
            HOLD_EXP,
            checkout("alice", 1, "c1"),
            rej(Reject::HoldExpired),
        )
        .counters(10, 0, 0, 0),
        case(
            "checkout/one_ms_before_expiry_ok",
            alice_holds(10),
            HOLD_EXP - 1,
            checkout("alice", 1, "c1"),
            order_resp(
                2,
                1,
                OrderStatus::AwaitingPayment,
                Some(HOLD_EXP - 1 + 10_000),
            ),
        )
        .counters(9, 0, 1, 0),
        case(
            "checkout/hold_not_found",
            alice_holds(10),
            3_000,
            checkout("alice", 99, "c1"),
            rej(Reject::HoldNotFound),
        )
        .counters(9, 1, 0, 0),
        case(
            "checkout/not_owner",
            alice_holds(10),
            3_000,
            checkout("bob", 1, "c1"),
            rej(Reject::NotOwner),
        )
        .counters(9, 1, 0, 0),
        case(
            "checkout/released_hold_is_not_active",
            plus(alice_holds(10), [(3_000, release("alice", 1, "q1"))]),
            3_500,
            checkout("alice", 1, "c1"),
            rej(Reject::HoldNotActive {
                state: HoldState::Released { at_ms: 3_000 },
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            // Pins current behaviour: a hold granted before the sale ended can still be
            // checked out until it expires.
            "checkout/after_end_sale_honours_a_live_hold",
            plus(alice_holds(10), [(5_000, end_sale(SALE))]),
            6_000,
            checkout("alice", 1, "c1"),
            order_resp(2, 1, OrderStatus::AwaitingPayment, Some(16_000)),
        )
        .counters(9, 0, 1, 0),
        // ---- ConfirmPayment
        case(
            "pay/ok",
            alice_ordered(10),
            4_000,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            Response::Paid { order_id: 2 },
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/one_ms_before_the_window_closes_ok",
            alice_ordered(10),
            PAY_BY - 1,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            Response::Paid { order_id: 2 },
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/retry_with_a_new_request_and_the_same_ref_is_paid",
            alice_paid(10),
            5_000,
            pay("alice", 2, PRICE, "pay-1", "p2"),
            Response::Paid { order_id: 2 },
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/retry_with_the_same_ref_after_the_window_is_paid",
            alice_paid(10),
            20_000,
            pay("alice", 2, PRICE, "pay-1", "p3"),
            Response::Paid { order_id: 2 },
        )
        .counters(9, 0, 0, 1),
        case(
            // Pins current behaviour: a known payment reference answers Paid before the
            // amount is looked at.
            "pay/retry_with_the_same_ref_and_another_amount_is_paid",
            alice_paid(10),
            5_000,
            pay("alice", 2, 1, "pay-1", "p2"),
            Response::Paid { order_id: 2 },
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/a_new_ref_on_a_paid_order_is_not_awaiting_payment",
            alice_paid(10),
            5_000,
            pay("alice", 2, PRICE, "pay-2", "p2"),
            rej(Reject::OrderNotAwaitingPayment {
                status: paid_status(),
            }),
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/wrong_amount",
            alice_ordered(10),
            4_000,
            pay("alice", 2, PRICE - 1, "pay-1", "p1"),
            eur_amount_mismatch.clone(),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/wrong_currency",
            alice_ordered(10),
            4_000,
            pay_in("USD", PRICE, "pay-1"),
            eur_amount_mismatch.clone(),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/after_a_mismatch_the_right_amount_is_paid",
            plus(alice_ordered(10), [(3_500, pay_in("USD", PRICE, "pay-1"))]),
            4_000,
            pay("alice", 2, PRICE, "pay-1", "p2"),
            Response::Paid { order_id: 2 },
        )
        .setup_may_reject()
        .counters(9, 0, 0, 1),
        case(
            "pay/lower_case_currency_is_invalid",
            alice_ordered(10),
            4_000,
            pay_in("eur", PRICE, "pay-1"),
            invalid("currency", CURRENCY),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/amount_too_large_is_invalid",
            alice_ordered(10),
            4_000,
            pay_in(
                "EUR",
                PRICE_MINOR_MAX * u64::from(QTY_PER_HOLD_MAX) + 1,
                "pay-1",
            ),
            invalid("amount_minor", "too large"),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/empty_payment_ref_is_invalid",
            alice_ordered(10),
            4_000,
            pay_in("EUR", PRICE, ""),
            invalid("payment_ref", "must be 1..=128 bytes"),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/order_not_found",
            alice_ordered(10),
            4_000,
            pay("alice", 99, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotFound),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/a_hold_id_is_not_an_order",
            alice_ordered(10),
            4_000,
            pay("alice", 1, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotFound),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/not_owner",
            alice_ordered(10),
            4_000,
            pay("bob", 2, PRICE, "pay-1", "p1"),
            rej(Reject::NotOwner),
        )
        .counters(9, 0, 1, 0),
        case(
            "pay/window_expired_and_units_come_back",
            alice_ordered(10),
            PAY_BY,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            rej(Reject::PaymentWindowExpired),
        )
        .counters(10, 0, 0, 0),
        case(
            "pay/after_timeout_by_tick_is_not_awaiting_payment",
            plus(alice_ordered(10), [(PAY_BY, Command::Tick)]),
            14_000,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: cancelled(CancelReason::PaymentTimeout, PAY_BY),
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "pay/cash_on_delivery_order_is_not_awaiting_payment",
            cod_ordered(),
            4_000,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: OrderStatus::Confirmed,
            }),
        )
        .counters(9, 0, 0, 1),
        case(
            "pay/cancelled_order_is_not_awaiting_payment",
            plus(alice_ordered(10), [(3_500, cancel("alice", 2, "x1"))]),
            4_000,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: cancelled(CancelReason::ByUser, 3_500),
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "pay/failed_order_is_not_awaiting_payment",
            plus(alice_ordered(10), [(3_500, fail("alice", 2, "f1"))]),
            4_000,
            pay("alice", 2, PRICE, "pay-1", "p1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: cancelled(CancelReason::PaymentFailed, 3_500),
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "pay/ref_used_for_another_order_conflicts",
            plus(
                alice_paid(10),
                [
                    (4_500, reserve("bob", 1, "rb")),
                    (4_600, checkout("bob", 3, "cb")),
                ],
            ),
            5_000,
            pay("bob", 4, PRICE, "pay-1", "pb"),
            rej(Reject::PaymentRefConflict),
        )
        .counters(8, 0, 1, 1),
        // ---- FailPayment
        case(
            "fail/ok_units_come_back",
            alice_ordered(10),
            4_000,
            fail("alice", 2, "f1"),
            Response::PaymentFailed { order_id: 2 },
        )
        .counters(10, 0, 0, 0),
        case(
            "fail/paid_order_is_not_awaiting_payment",
            alice_paid(10),
            5_000,
            fail("alice", 2, "f1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: paid_status(),
            }),
        )
        .counters(9, 0, 0, 1),
        case(
            "fail/cash_on_delivery_order_is_not_awaiting_payment",
            cod_ordered(),
            4_000,
            fail("alice", 2, "f1"),
            rej(Reject::OrderNotAwaitingPayment {
                status: OrderStatus::Confirmed,
            }),
        )
        .counters(9, 0, 0, 1),
        case(
            "fail/window_expired_and_units_come_back",
            alice_ordered(10),
            PAY_BY,
            fail("alice", 2, "f1"),
            rej(Reject::PaymentWindowExpired),
        )
        .counters(10, 0, 0, 0),
        case(
            "fail/not_owner",
            alice_ordered(10),
            4_000,
            fail("bob", 2, "f1"),
            rej(Reject::NotOwner),
        )
        .counters(9, 0, 1, 0),
        case(
            "fail/order_not_found",
            alice_ordered(10),
            4_000,
            fail("alice", 99, "f1"),
            rej(Reject::OrderNotFound),
        )
        .counters(9, 0, 1, 0),
        case(
            "fail/reason_too_long_is_invalid",
            alice_ordered(10),
            4_000,
            Command::FailPayment {
                user_id: "alice".into(),
                order_id: 2,
                reason: "x".repeat(REASON_BYTES_MAX + 1),
                request_id: "f1".into(),
            },
            invalid("reason", "must be 0..=256 bytes"),
        )
        .counters(9, 0, 1, 0),
        case(
            "fail/hands_the_units_to_the_waitlist_head",
            plus(alice_ordered(1), [(3_500, join("bob", 1, "w1"))]),
            4_000,
            fail("alice", 2, "f1"),
            Response::PaymentFailed { order_id: 2 },
        )
        .counters(0, 1, 0, 0),
        // ---- CancelOrder
        case(
            "cancel/awaiting_payment_units_come_back",
            alice_ordered(10),
            4_000,
            cancel("alice", 2, "x1"),
            Response::Cancelled { order_id: 2 },
        )
        .counters(10, 0, 0, 0),
        case(
            "cancel/cash_on_delivery_confirmed_units_come_back",
            cod_ordered(),
            4_000,
            cancel("alice", 2, "x1"),
            Response::Cancelled { order_id: 2 },
        )
        .counters(10, 0, 0, 0),
        case(
            "cancel/paid_is_not_cancellable",
            alice_paid(10),
            5_000,
            cancel("alice", 2, "x1"),
            rej(Reject::OrderNotCancellable {
                status: paid_status(),
            }),
        )
        .counters(9, 0, 0, 1),
        case(
            "cancel/twice_is_not_cancellable",
            plus(alice_ordered(10), [(4_000, cancel("alice", 2, "x1"))]),
            4_500,
            cancel("alice", 2, "x2"),
            rej(Reject::OrderNotCancellable {
                status: cancelled(CancelReason::ByUser, 4_000),
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "cancel/after_the_payment_window_is_window_expired",
            alice_ordered(10),
            PAY_BY,
            cancel("alice", 2, "x1"),
            rej(Reject::PaymentWindowExpired),
        )
        .counters(10, 0, 0, 0),
        case(
            "cancel/not_owner",
            alice_ordered(10),
            4_000,
            cancel("bob", 2, "x1"),
            rej(Reject::NotOwner),
        )
        .counters(9, 0, 1, 0),
        case(
            "cancel/order_not_found",
            alice_ordered(10),
            4_000,
            cancel("alice", 99, "x1"),
            rej(Reject::OrderNotFound),
        )
        .counters(9, 0, 1, 0),
        // ---- JoinWaitlist
        case(
            "join/ok",
            alice_holds(1),
            2_500,
            join("bob", 1, "w1"),
            joined(1),
        )
        .counters(0, 1, 0, 0),
        case(
            "join/second_is_position_2",
            sold_out_bob_waits(),
            2_600,
            join("carol", 1, "w1"),
            joined(2),
        )
        .counters(0, 1, 0, 0),
        case(
            "join/holder_within_the_limit_may_join",
            alice_holds(1),
            2_500,
            join("alice", 1, "w1"),
            joined(1),
        )
        .counters(0, 1, 0, 0),
        case(
            "join/retry_same_request_is_joined",
            sold_out_bob_waits(),
            2_600,
            join("bob", 1, "w1"),
            joined(1),
        ),
        case(
            "join/already_waitlisted",
            sold_out_bob_waits(),
            2_600,
            join("bob", 1, "w2"),
            rej(Reject::AlreadyWaitlisted { position: 1 }),
        ),
        case(
            "join/already_waitlisted_at_position_2",
            plus(sold_out_bob_waits(), [(2_600, join("carol", 1, "w1"))]),
            2_700,
            join("carol", 2, "w2"),
            rej(Reject::AlreadyWaitlisted { position: 2 }),
        ),
        case(
            "join/already_waitlisted_position_moves_up_when_the_head_leaves",
            plus(
                sold_out_bob_waits(),
                [(2_600, join("carol", 1, "w1")), (2_700, leave("bob", "l1"))],
            ),
            2_800,
            join("carol", 1, "w2"),
            rej(Reject::AlreadyWaitlisted { position: 1 }),
        ),
        case(
            "join/not_sold_out",
            create(10),
            2_000,
            join("bob", 1, "w1"),
            rej(Reject::NotSoldOut { available: 10 }),
        )
        .counters(10, 0, 0, 0),
        case(
            "join/not_sold_out_with_one_left",
            plus(create(3), [(2_000, reserve("alice", 2, "r1"))]),
            2_500,
            join("bob", 2, "w1"),
            rej(Reject::NotSoldOut { available: 1 }),
        ),
        case(
            "join/limit_exceeded",
            alice_holds(1),
            2_500,
            join("alice", 2, "w1"),
            rej(Reject::LimitExceeded { limit: 2, used: 1 }),
        ),
        case(
            "join/before_start",
            create(10),
            500,
            join("bob", 1, "w1"),
            rej(Reject::SaleNotStarted {
                starts_at_ms: 1_000,
            }),
        ),
        case(
            "join/after_end",
            alice_holds(1),
            100_000,
            join("bob", 1, "w1"),
            rej(Reject::SaleEnded),
        ),
        case(
            "join/unknown_sale",
            alice_holds(1),
            2_500,
            Command::JoinWaitlist {
                sale_id: "nope".into(),
                user_id: "bob".into(),
                qty: 1,
                request_id: "w1".into(),
            },
            rej(Reject::SaleNotFound),
        ),
        case(
            "join/qty_zero_is_invalid",
            alice_holds(1),
            2_500,
            join("bob", 0, "w1"),
            invalid("qty", "must be 1..=100"),
        ),
        case(
            "join/reserve_request_id_is_reused",
            alice_holds(1),
            2_500,
            join("alice", 1, "r1"),
            rej(Reject::RequestIdReused),
        ),
        // ---- LeaveWaitlist
        case(
            "leave/ok",
            sold_out_bob_waits(),
            3_000,
            leave("bob", "l1"),
            Response::WaitlistLeft {
                sale_id: SALE.into(),
            },
        )
        .counters(0, 1, 0, 0),
        case(
            "leave/then_a_release_goes_back_to_available",
            plus(sold_out_bob_waits(), [(3_000, leave("bob", "l1"))]),
            3_500,
            release("alice", 1, "q1"),
            Response::Released { hold_id: 1 },
        )
        .counters(1, 0, 0, 0),
        case(
            "leave/not_waitlisted",
            alice_holds(1),
            3_000,
            leave("bob", "l1"),
            rej(Reject::NotWaitlisted),
        ),
        case(
            "leave/twice_is_not_waitlisted",
            plus(sold_out_bob_waits(), [(3_000, leave("bob", "l1"))]),
            3_500,
            leave("bob", "l2"),
            rej(Reject::NotWaitlisted),
        ),
        case(
            "leave/after_promotion_is_not_waitlisted",
            plus(sold_out_bob_waits(), [(3_000, release("alice", 1, "q1"))]),
            3_500,
            leave("bob", "l1"),
            rej(Reject::NotWaitlisted),
        )
        .counters(0, 1, 0, 0),
        case(
            "leave/unknown_sale",
            sold_out_bob_waits(),
            3_000,
            Command::LeaveWaitlist {
                sale_id: "nope".into(),
                user_id: "bob".into(),
                request_id: "l1".into(),
            },
            rej(Reject::SaleNotFound),
        ),
        // ---- Tick
        case("tick/empty_store", vec![], 0, Command::Tick, ticked(|_| ())).no_sale(),
        case(
            "tick/nothing_due",
            create(10),
            500,
            Command::Tick,
            ticked(|t| t.next_deadline_ms = Some(100_000)),
        )
        .counters(10, 0, 0, 0),
        case(
            "tick/one_ms_before_hold_expiry",
            alice_holds(10),
            HOLD_EXP - 1,
            Command::Tick,
            ticked(|t| t.next_deadline_ms = Some(HOLD_EXP)),
        )
        .counters(9, 1, 0, 0),
        case(
            "tick/expires_a_hold",
            alice_holds(10),
            HOLD_EXP,
            Command::Tick,
            ticked(|t| {
                t.holds_expired = 1;
                t.next_deadline_ms = Some(100_000);
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "tick/times_out_an_order",
            alice_ordered(10),
            PAY_BY,
            Command::Tick,
            ticked(|t| {
                t.orders_expired = 1;
                t.next_deadline_ms = Some(100_000);
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "tick/a_paid_order_does_not_time_out",
            alice_paid(10),
            PAY_BY,
            Command::Tick,
            ticked(|t| t.next_deadline_ms = Some(100_000)),
        )
        .counters(9, 0, 0, 1),
        case(
            "tick/promotes_the_waitlist_head_on_expiry",
            sold_out_bob_waits(),
            HOLD_EXP,
            Command::Tick,
            ticked(|t| {
                t.holds_expired = 1;
                t.waitlist_promoted = 1;
                t.next_deadline_ms = Some(HOLD_EXP + 5_000);
            }),
        )
        .counters(0, 1, 0, 0),
        case(
            "tick/promotes_the_waitlist_head_on_payment_timeout",
            plus(alice_ordered(1), [(3_500, join("bob", 1, "w1"))]),
            PAY_BY,
            Command::Tick,
            ticked(|t| {
                t.orders_expired = 1;
                t.waitlist_promoted = 1;
                t.next_deadline_ms = Some(PAY_BY + 5_000);
            }),
        )
        .counters(0, 1, 0, 0),
        case(
            "tick/end_sale_then_tick_drops_the_waitlist",
            plus(
                sold_out_bob_waits(),
                [(2_600, join("carol", 1, "w1")), (5_000, end_sale(SALE))],
            ),
            5_000,
            Command::Tick,
            ticked(|t| {
                t.waitlist_dropped = 2;
                t.next_deadline_ms = Some(HOLD_EXP);
            }),
        )
        .counters(0, 1, 0, 0),
        case(
            "tick/natural_close_drops_the_waitlist",
            plus(alice_paid(1), [(5_000, join("bob", 1, "w1"))]),
            100_000,
            Command::Tick,
            ticked(|t| {
                t.waitlist_dropped = 1;
                // The idempotency record of alice's first reserve.
                t.next_deadline_ms = Some(2_000 + IDEMPOTENCY_RETENTION_MS);
            }),
        )
        .counters(0, 0, 0, 1),
        case(
            "tick/purges_idempotency_records_after_retention",
            alice_holds(10),
            2_000 + IDEMPOTENCY_RETENTION_MS,
            Command::Tick,
            ticked(|t| {
                t.holds_expired = 1;
                t.records_purged = 1;
                t.next_deadline_ms = None;
            }),
        )
        .counters(10, 0, 0, 0),
        case(
            "tick/keeps_idempotency_records_until_retention",
            plus(alice_holds(10), [(HOLD_EXP, Command::Tick)]),
            2_000 + IDEMPOTENCY_RETENTION_MS - 1,
            Command::Tick,
            ticked(|t| t.next_deadline_ms = Some(2_000 + IDEMPOTENCY_RETENTION_MS)),
        )
        .counters(10, 0, 0, 0),
        // ---- Batch
        case(
            "batch/answers_each_command_in_order",
            create(10),
            2_000,
            Command::Batch(vec![
                reserve("alice", 1, "r1"),
                reserve("bob", 2, "r1"),
                reserve("alice", 1, "r1"),
                reserve("alice", 2, "r1"),
                reserve("carol", 0, "r1"),
                release("bob", 2, "q1"),
                Command::Tick,
            ]),
            Response::Batch(vec![
                held_resp(1, 1, HOLD_EXP),
                held_resp(2, 2, HOLD_EXP),
                held_resp(1, 1, HOLD_EXP),
                rej(Reject::RequestIdReused),
                invalid("qty", "must be 1..=100"),
                Response::Released { hold_id: 2 },
                ticked(|t| t.next_deadline_ms = Some(HOLD_EXP)),
            ]),
        )
        .counters(9, 1, 0, 0),
        case(
            "batch/operator_commands",
            vec![],
            0,
            Command::Batch(vec![
                Command::CreateSale(Box::new(spec(10))),
                reserve("alice", 1, "r1"),
                end_sale(SALE),
                end_sale("nope"),
            ]),
            Response::Batch(vec![
                sale_created(),
                rej(Reject::SaleNotStarted {
                    starts_at_ms: 1_000,
                }),
                sale_ended(0),
                rej(Reject::SaleNotFound),
            ]),
        )
        .counters(10, 0, 0, 0),
        case(
            "batch/max_size_ok",
            create(10),
            500,
            Command::Batch(vec![Command::Tick; BATCH_COMMANDS_MAX]),
            Response::Batch(vec![
                ticked(|t| t.next_deadline_ms = Some(100_000));
                BATCH_COMMANDS_MAX
            ]),
        )
        .counters(10, 0, 0, 0),
        case(
            "batch/empty_is_invalid",
            create(10),
            2_000,
            Command::Batch(vec![]),
            invalid("batch", "empty"),
        )
        .counters(10, 0, 0, 0),
        case(
            "batch/nested_is_invalid_and_nothing_runs",
            create(10),
            2_000,
            Command::Batch(vec![
                reserve("alice", 1, "r1"),
                Command::Batch(vec![Command::Tick]),
            ]),
            invalid("batch", "batches do not nest"),
        )
        .counters(10, 0, 0, 0),
        case(
            "batch/too_large_is_invalid_and_nothing_runs",
            create(10),
            2_000,
            Command::Batch(
                std::iter::once(reserve("alice", 1, "r1"))
                    .chain(std::iter::repeat_n(Command::Tick, BATCH_COMMANDS_MAX))
                    .collect(),
            ),
            invalid("batch", "more than 1024 commands"),
        )
        .counters(10, 0, 0, 0),
        // ---- request ids
        case(
            "idem/same_request_different_qty_is_reused",
            alice_holds(10),
            2_500,
            reserve("alice", 2, "r1"),
            rej(Reject::RequestIdReused),
        )
        .counters(9, 1, 0, 0),
        case(
            "idem/same_request_id_of_another_user_is_independent",
            alice_holds(10),
            2_500,
            reserve("bob", 1, "r1"),
            held_resp(2, 1, 7_500),
        )
        .counters(8, 2, 0, 0),
    ]
}

/// A batch of `n` one-unit reserves by `user`, request ids `h0..`.
fn holds_batch(user: &str, n: u32) -> Command {
    Command::Batch((0..n).map(|i| reserve(user, 1, &format!("h{i}"))).collect())
}

/// Every code `Reject::code` returns.
const ALL_CODES: [&str; 25] = [
    "invalid",
    "sale_not_found",
    "sale_exists",
    "sale_not_started",
    "sale_ended",
    "sale_already_started",
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "too_many_holds",
    "hold_not_found",
    "not_owner",
    "hold_expired",
    "hold_not_active",
    "order_not_found",
    "order_not_awaiting_payment",
    "payment_window_expired",
    "amount_mismatch",
    "payment_ref_conflict",
    "order_not_cancellable",
    "not_sold_out",
    "already_waitlisted",
    "not_waitlisted",
    "waitlist_full",
    "request_id_reused",
];
/// Codes covered by a focused test instead of a row.
const FOCUSED_CODES: [&str; 1] = ["waitlist_full"];

/// The first rejection in a response (looking inside batches).
fn rejection(r: &Response) -> Option<&Reject> {
    match r {
        Response::Rejected(rej) => Some(rej),
        Response::Batch(rs) => rs.iter().find_map(rejection),
        _ => None,
    }
}

fn codes_in(r: &Response, out: &mut BTreeSet<&'static str>) {
    match r {
        Response::Rejected(rej) => {
            out.insert(rej.code());
        }
        Response::Batch(rs) => rs.iter().for_each(|r| codes_in(r, out)),
        _ => {}
    }
}

fn try_apply(mem: &mut Mem, at_ms: u64, cmd: &Command) -> Result<Response, String> {
    let entry = LogEntry {
        at_ms,
        cmd: cmd.clone().into(),
    };
    apply_to_mem(&mut mem.state, &entry).map_err(|e| format!("apply failed: {e}"))
}

/// Applies a row's setup and its command; the state after it and the answer.
fn play(case: &Case) -> Result<(Mem, Response), String> {
    let mut mem = Mem::default();
    for (i, (at, cmd)) in case.setup.iter().enumerate() {
        let r = try_apply(&mut mem, *at, cmd)?;
        if !case.setup_may_reject {
            if let Some(rej) = rejection(&r) {
                return Err(format!(
                    "setup step {i} ({} at {at}) was rejected: {rej:?}",
                    cmd.kind()
                ));
            }
        }
    }
    let got = try_apply(&mut mem, case.at_ms, &case.cmd)?;
    Ok((mem, got))
}

/// Runs one row; `Err` describes every way it failed.
fn run(case: &Case) -> Result<(), String> {
    let (mem, got) = play(case)?;
    let mut errs = Vec::new();
    if got != case.expect {
        errs.push(format!(
            "response\n      got:      {got:?}\n      expected: {:?}",
            case.expect
        ));
    }
    let sales = query::sales(&mem.state, None, 100).map_err(|e| e.to_string())?;
    for s in &sales {
        if !s.counters.conserves(s.spec.quantity) {
            errs.push(format!(
                "sale {}: {:?} does not conserve quantity {}",
                s.spec.id, s.counters, s.spec.quantity
            ));
        }
    }
    let sale = sales.iter().find(|s| s.spec.id == SALE);
    match (&case.after, sale) {
        (After::Any, _) => {}
        (After::Counters(want), Some(s)) if s.counters == *want => {}
        (After::Counters(want), Some(s)) => errs.push(format!(
            "counters\n      got:      {:?}\n      expected: {want:?}",
            s.counters
        )),
        (After::Counters(_), None) => errs.push("sale missing".into()),
        (After::NoSale, None) => {}
        (After::NoSale, Some(s)) => errs.push(format!("sale exists: {s:?}")),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n    "))
    }
}

#[test]
fn every_command_and_rejection_by_table() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut names = BTreeSet::new();
    let mut covered = BTreeSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        codes_in(&case.expect, &mut covered);
        match catch_unwind(AssertUnwindSafe(|| run(case))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}:\n    {e}", case.name)),
            Err(_) => failures.push(format!("{}: panicked", case.name)),
        }
    }
    let missing: Vec<_> = ALL_CODES
        .iter()
        .filter(|c| !covered.contains(*c) && !FOCUSED_CODES.contains(c))
        .collect();
    assert!(missing.is_empty(), "codes without a row: {missing:?}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// After every row: when `query::reserve_precheck` refuses a reservation "no matter who
/// asks", a reserve by a fresh user applied at the same clock gets exactly that refusal;
/// when it lets the request through on an open sale, the fresh user gets a hold.
#[test]
fn reserve_precheck_agrees_with_apply_after_every_row() {
    let mut failures = Vec::new();
    for case in cases() {
        let Ok((mem, _)) = play(&case) else { continue };
        if query::sale(&mem.state, SALE).unwrap().is_none() {
            continue;
        }
        let clock = query::clock_ms(&mem.state).unwrap();
        for qty in [1, 2] {
            let pre = query::reserve_precheck(&mem.state, SALE, qty, clock).unwrap();
            let mut probe = Mem {
                state: mem.state.clone(),
                log: Vec::new(),
            };
            let got = try_apply(&mut probe, clock, &reserve("zed-fresh", qty, "probe"));
            let ok = match (&pre, &got) {
                (Some(r), Ok(Response::Rejected(g))) => r == g,
                (None, Ok(Response::Held(_))) => true,
                // Not started yet: the precheck lets it through (it may start by then).
                (None, Ok(Response::Rejected(Reject::SaleNotStarted { starts_at_ms }))) => {
                    clock < *starts_at_ms
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{} (qty {qty}): precheck {pre:?}, apply {got:?}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_codes_list_matches_reject_code() {
    // Guards ALL_CODES against drift: one witness per variant, in declaration order.
    let witnesses = [
        Reject::Invalid {
            field: String::new(),
            reason: String::new(),
        },
        Reject::SaleNotFound,
        Reject::SaleExists,
        Reject::SaleNotStarted { starts_at_ms: 0 },
        Reject::SaleEnded,
        Reject::SaleAlreadyStarted,
        Reject::SoldOut,
        Reject::InsufficientStock { available: 0 },
        Reject::LimitExceeded { limit: 0, used: 0 },
        Reject::TooManyHolds { max: 0 },
        Reject::HoldNotFound,
        Reject::NotOwner,
        Reject::HoldExpired,
        Reject::HoldNotActive {
            state: HoldState::Active,
        },
        Reject::OrderNotFound,
        Reject::OrderNotAwaitingPayment {
            status: OrderStatus::Confirmed,
        },
        Reject::PaymentWindowExpired,
        Reject::AmountMismatch {
            expected_minor: 0,
            currency: String::new(),
        },
        Reject::PaymentRefConflict,
        Reject::OrderNotCancellable {
            status: OrderStatus::Confirmed,
        },
        Reject::NotSoldOut { available: 0 },
        Reject::AlreadyWaitlisted { position: 0 },
        Reject::NotWaitlisted,
        Reject::WaitlistFull { max: 0 },
        Reject::RequestIdReused,
    ];
    let codes: Vec<&str> = witnesses.iter().map(Reject::code).collect();
    assert_eq!(codes, ALL_CODES);
}

// ---- focused tests ----------------------------------------------------------------------

fn apply_all(mem: &mut Mem, steps: Vec<Step>) {
    for (at, cmd) in steps {
        let kind = cmd.kind();
        let r = mem.apply(at, cmd);
        assert!(
            rejection(&r).is_none(),
            "setup {kind} at {at} rejected: {r:?}"
        );
    }
}

fn hold_record(mem: &Mem, id: u64) -> HoldRecord {
    query::hold(&mem.state, id).unwrap().expect("hold exists")
}

fn waitlist(mem: &Mem, user: &str) -> WaitlistStatus {
    query::waitlist_status(&mem.state, SALE, user).unwrap()
}

#[test]
fn release_promotes_the_waitlist_head_with_what_there_is() {
    let mut mem = Mem::default();
    // One unit; bob asks for two (gets the one there is), carol waits behind him.
    apply_all(
        &mut mem,
        plus(
            alice_holds(1),
            [
                (2_500, join("bob", 2, "w1")),
                (2_600, join("carol", 1, "w1")),
            ],
        ),
    );
    assert_eq!(
        waitlist(&mem, "bob"),
        WaitlistStatus::Waiting {
            position: 1,
            qty: 2
        }
    );
    assert_eq!(
        mem.apply(3_000, release("alice", 1, "q1")),
        Response::Released { hold_id: 1 }
    );
    assert_eq!(
        waitlist(&mem, "bob"),
        WaitlistStatus::Promoted { hold_id: 2 }
    );
    assert_eq!(
        hold_record(&mem, 2),
        HoldRecord {
            id: 2,
            sale_id: SALE.into(),
            user_id: "bob".into(),
            qty: 1,
            created_at_ms: 3_000,
            expires_at_ms: 8_000,
            from_waitlist: true,
            state: HoldState::Active,
            request_id: "w1".into(),
        }
    );
    assert_eq!(
        waitlist(&mem, "carol"),
        WaitlistStatus::Waiting {
            position: 1,
            qty: 1
        }
    );
    let sale = mem.sale();
    assert_eq!(
        sale.counters,
        Counters {
            available: 0,
            held: 1,
            awaiting_payment: 0,
            sold: 0
        }
    );
    assert_eq!(sale.waitlist_len, 1);
    assert_eq!(sale.stats.waitlist_promoted, 1);
    assert_eq!(sale.stats.holds_granted, 2);
    // The promoted hold is bob's like any other: he checks it out.
    assert_eq!(
        mem.apply(3_500, checkout("bob", 2, "c1")),
        order_resp(3, 1, OrderStatus::AwaitingPayment, Some(13_500))
    );
    assert!(mem.counters().conserves(1));
}

#[test]
fn tick_expiry_promotes_the_waitlist_head_and_its_hold_expires_in_turn() {
    let mut mem = Mem::default();
    apply_all(
        &mut mem,
        plus(sold_out_bob_waits(), [(2_600, join("carol", 1, "w1"))]),
    );
    assert_eq!(
        mem.apply(HOLD_EXP, Command::Tick),
        ticked(|t| {
            t.holds_expired = 1;
            t.waitlist_promoted = 1;
            t.next_deadline_ms = Some(12_000);
        })
    );
    assert_eq!(
        hold_record(&mem, 1).state,
        HoldState::Expired { at_ms: HOLD_EXP }
    );
    assert_eq!(
        waitlist(&mem, "bob"),
        WaitlistStatus::Promoted { hold_id: 2 }
    );
    let bob_hold = hold_record(&mem, 2);
    assert!(bob_hold.from_waitlist);
    assert_eq!(
        (
            bob_hold.user_id.as_str(),
            bob_hold.qty,
            bob_hold.expires_at_ms
        ),
        ("bob", 1, 12_000)
    );
    // Bob lets it expire too: carol is next.
    assert_eq!(
        mem.apply(12_000, Command::Tick),
        ticked(|t| {
            t.holds_expired = 1;
            t.waitlist_promoted = 1;
            t.next_deadline_ms = Some(17_000);
        })
    );
    assert_eq!(
        waitlist(&mem, "carol"),
        WaitlistStatus::Promoted { hold_id: 3 }
    );
    assert!(hold_record(&mem, 3).from_waitlist);
    assert_eq!(mem.sale().waitlist_len, 0);
    // Carol's expires with nobody waiting: the unit is available for a direct reserve.
    assert_eq!(
        mem.apply(17_000, Command::Tick),
        ticked(|t| {
            t.holds_expired = 1;
            t.next_deadline_ms = Some(100_000);
        })
    );
    assert_eq!(mem.counters().available, 1);
    assert_eq!(
        mem.apply(17_000, reserve("dave", 1, "r1")),
        held_resp(4, 1, 22_000)
    );
    assert!(mem.counters().conserves(1));
}

#[test]
fn closing_the_sale_drops_the_waitlist_in_bounded_batches() {
    let n = TICK_EXPIRE_BATCH_MAX + 44;
    let mut mem = Mem::default();
    apply_all(&mut mem, alice_holds(1));
    let joins = (0..n).map(|i| join(&format!("w{i}"), 1, "j")).collect();
    let Response::Batch(rs) = mem.apply(2_500, Command::Batch(joins)) else {
        panic!("batch answers with a batch")
    };
    let want: Vec<Response> = (1..=n).map(joined).collect();
    assert_eq!(rs, want);
    assert_eq!(mem.sale().waitlist_len, n);

    assert_eq!(mem.apply(5_000, end_sale(SALE)), sale_ended(5_000));
    // Ended but not yet ticked: still listed, and nobody can join.
    assert_eq!(
        mem.apply(5_000, join("late", 1, "j")),
        rej(Reject::SaleEnded)
    );
    assert_eq!(
        mem.apply(5_000, Command::Tick),
        ticked(|t| {
            t.waitlist_dropped = TICK_EXPIRE_BATCH_MAX;
            t.more_due = true;
            t.next_deadline_ms = Some(5_000);
        })
    );
    assert_eq!(mem.sale().waitlist_len, 44);
    assert_eq!(waitlist(&mem, "w0"), WaitlistStatus::NotWaitlisted);
    assert_eq!(
        waitlist(&mem, &format!("w{}", n - 1)),
        WaitlistStatus::Waiting {
            position: 44,
            qty: 1
        }
    );
    assert_eq!(
        mem.apply(5_000, Command::Tick),
        ticked(|t| {
            t.waitlist_dropped = 44;
            t.next_deadline_ms = Some(HOLD_EXP);
        })
    );
    assert_eq!(mem.sale().waitlist_len, 0);
    assert_eq!(
        waitlist(&mem, &format!("w{}", n - 1)),
        WaitlistStatus::NotWaitlisted
    );
    // Alice's hold still expires on time; its unit stays available (no hand-off after
    // the close) and nobody can take it.
    assert_eq!(
        mem.apply(HOLD_EXP, Command::Tick),
        ticked(|t| {
            t.holds_expired = 1;
            t.next_deadline_ms = Some(2_000 + IDEMPOTENCY_RETENTION_MS);
        })
    );
    assert_eq!(
        mem.counters(),
        Counters {
            available: 1,
            ..Counters::default()
        }
    );
    assert_eq!(
        mem.apply(HOLD_EXP, reserve("w0", 1, "r")),
        rej(Reject::SaleEnded)
    );
    assert_eq!(
        mem.apply(HOLD_EXP, leave("w1", "l")),
        rej(Reject::NotWaitlisted)
    );
}

/// 65 waiting users who already have `HOLDS_PER_USER_MAX` live holds each are skipped by
/// the hand-off (dropped); one hand-off looks at `HANDOFF_STEPS_MAX` of them, the rest
/// waits for the next tick, and meanwhile a direct reserve sees the sale as sold out
/// although a unit is available.
#[test]
fn reserve_is_sold_out_while_anyone_waits_even_with_units_available() {
    let users = HANDOFF_STEPS_MAX + 1;
    let per_user = HOLDS_PER_USER_MAX;
    let quantity = users * per_user + 1;
    let mut mem = Mem::default();
    let sale = spec_with(quantity, |s| s.per_user_limit = per_user + 1);
    apply_all(&mut mem, vec![(0, Command::CreateSale(Box::new(sale)))]);
    let reserves: Vec<Command> = (0..users)
        .flat_map(|u| (0..per_user).map(move |i| reserve(&format!("u{u}"), 1, &format!("h{i}"))))
        .collect();
    for chunk in reserves.chunks(BATCH_COMMANDS_MAX) {
        apply_all(&mut mem, vec![(2_000, Command::Batch(chunk.to_vec()))]);
    }
    let x_hold = u64::from(users * per_user) + 1;
    assert_eq!(
        mem.apply(2_000, reserve("x", 1, "r1")),
        held_resp(x_hold, 1, HOLD_EXP)
    );
    let joins = (0..users).map(|u| join(&format!("u{u}"), 1, "j")).collect();
    apply_all(&mut mem, vec![(2_500, Command::Batch(joins))]);
    assert_eq!(mem.sale().waitlist_len, users);

    assert_eq!(
        mem.apply(3_000, release("x", x_hold, "q1")),
        Response::Released { hold_id: x_hold }
    );
    let sale = mem.sale();
    assert_eq!(sale.counters.available, 1);
    assert_eq!(sale.waitlist_len, 1);
    assert_eq!(waitlist(&mem, "u0"), WaitlistStatus::NotWaitlisted);
    let last = format!("u{}", users - 1);
    assert_eq!(
        waitlist(&mem, &last),
        WaitlistStatus::Waiting {
            position: 1,
            qty: 1
        }
    );
    assert_eq!(
        mem.apply(3_000, reserve("y", 1, "r1")),
        rej(Reject::SoldOut)
    );
    assert_eq!(
        mem.apply(3_000, join("y", 1, "j")),
        joined(2),
        "with someone waiting, a unit available does not make the sale not_sold_out"
    );
    assert_eq!(
        mem.apply(3_000, leave("y", "l")),
        Response::WaitlistLeft {
            sale_id: SALE.into()
        }
    );
    // The hand-off continues at the next tick: the last user is dropped too.
    assert_eq!(
        mem.apply(3_000, Command::Tick),
        ticked(|t| {
            t.waitlist_dropped = 1;
            t.next_deadline_ms = Some(HOLD_EXP);
        })
    );
    assert_eq!(waitlist(&mem, &last), WaitlistStatus::NotWaitlisted);
    assert_eq!(mem.sale().waitlist_len, 0);
    assert_eq!(
        mem.apply(3_000, reserve("y", 1, "r2")),
        held_resp(x_hold + 1, 1, 8_000)
    );
    assert!(mem.counters().conserves(quantity));
}

#[test]
fn tick_handles_deadlines_in_time_order_a_bounded_batch_each() {
    // Sale "late" is reserved first (hold ids 1..=150) but its holds expire last;
    // SALE is reserved after (ids 151..=300) and its holds expire first.
    let n: u32 = 150;
    let late = spec_with(n, |s| {
        s.id = "late".into();
        s.per_user_limit = 1;
        s.hold_ttl_ms = 20_000;
    });
    let early = spec_with(n, |s| s.per_user_limit = 1);
    let mut mem = Mem::default();
    apply_all(
        &mut mem,
        vec![
            (0, Command::CreateSale(Box::new(late))),
            (0, Command::CreateSale(Box::new(early))),
        ],
    );
    let batch = |sale: &str| {
        Command::Batch(
            (0..n)
                .map(|i| reserve_on(sale, &format!("u{i}"), 1, &format!("{sale}-{i}")))
                .collect(),
        )
    };
    apply_all(&mut mem, vec![(1_000, batch("late")), (2_000, batch(SALE))]);
    assert_eq!(hold_record(&mem, 1).expires_at_ms, 21_000);
    assert_eq!(hold_record(&mem, 151).expires_at_ms, HOLD_EXP);

    // All 300 are due; the first tick handles 256 in deadline order.
    let first_late = TICK_EXPIRE_BATCH_MAX - n;
    assert_eq!(
        mem.apply(30_000, Command::Tick),
        ticked(|t| {
            t.holds_expired = TICK_EXPIRE_BATCH_MAX;
            t.more_due = true;
            t.next_deadline_ms = Some(21_000);
        })
    );
    assert_eq!(
        mem.counters(),
        Counters {
            available: n,
            ..Counters::default()
        }
    );
    let late_view = query::sale(&mem.state, "late").unwrap().unwrap();
    assert_eq!(
        late_view.counters,
        Counters {
            available: first_late,
            held: n - first_late,
            ..Counters::default()
        }
    );
    assert_eq!(
        hold_record(&mem, u64::from(first_late)).state,
        HoldState::Expired { at_ms: 30_000 }
    );
    assert_eq!(
        hold_record(&mem, u64::from(first_late) + 1).state,
        HoldState::Active
    );
    assert_eq!(
        hold_record(&mem, 300).state,
        HoldState::Expired { at_ms: 30_000 }
    );

    assert_eq!(
        mem.apply(30_000, Command::Tick),
        ticked(|t| {
            t.holds_expired = n - first_late;
            t.next_deadline_ms = Some(100_000);
        })
    );
    let late_view = query::sale(&mem.state, "late").unwrap().unwrap();
    assert_eq!(late_view.counters.available, n);
    assert_eq!(
        mem.apply(30_000, Command::Tick),
        ticked(|t| t.next_deadline_ms = Some(100_000))
    );
}

#[test]
fn idempotency_record_is_purged_after_retention_then_the_request_acts_again() {
    let long = spec_with(10, |s| s.ends_at_ms = 10 * IDEMPOTENCY_RETENTION_MS);
    let mut mem = Mem::default();
    apply_all(&mut mem, vec![(0, Command::CreateSale(Box::new(long)))]);
    assert_eq!(
        mem.apply(2_000, reserve("alice", 1, "r1")),
        held_resp(1, 1, HOLD_EXP)
    );
    assert_eq!(
        mem.apply(HOLD_EXP, Command::Tick),
        ticked(|t| {
            t.holds_expired = 1;
            t.next_deadline_ms = Some(2_000 + IDEMPOTENCY_RETENTION_MS);
        })
    );
    // A retry is answered from the record and does nothing.
    assert_eq!(
        mem.apply(8_000, reserve("alice", 1, "r1")),
        held_resp(1, 1, HOLD_EXP)
    );
    assert_eq!(mem.counters().available, 10);
    let purge_at = 2_000 + IDEMPOTENCY_RETENTION_MS;
    assert_eq!(
        mem.apply(purge_at - 1, Command::Tick),
        ticked(|t| t.next_deadline_ms = Some(purge_at))
    );
    assert_eq!(
        mem.apply(purge_at - 1, reserve("alice", 2, "r1")),
        rej(Reject::RequestIdReused),
        "still remembered one ms before the purge"
    );
    assert_eq!(
        mem.apply(purge_at, Command::Tick),
        ticked(|t| {
            t.records_purged = 1;
            t.next_deadline_ms = Some(10 * IDEMPOTENCY_RETENTION_MS);
        })
    );
    // Forgotten: the same request acts again, as a new hold.
    assert_eq!(
        mem.apply(purge_at + 1, reserve("alice", 1, "r1")),
        held_resp(2, 1, purge_at + 1 + 5_000)
    );
    assert_eq!(
        mem.counters(),
        Counters {
            available: 9,
            held: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn waitlist_full_at_the_max() {
    let mut mem = Mem::default();
    apply_all(
        &mut mem,
        vec![
            (
                0,
                Command::CreateSale(Box::new(spec_with(1, |s| s.per_user_limit = 1))),
            ),
            (2_000, reserve("alice", 1, "r1")),
        ],
    );
    let max = WAITLIST_LEN_MAX as usize;
    let mut next = 0usize;
    while next < max {
        let end = (next + BATCH_COMMANDS_MAX).min(max);
        let joins = (next..end)
            .map(|i| join(&format!("w{i}"), 1, "j"))
            .collect();
        let Response::Batch(rs) = mem.apply(2_500, Command::Batch(joins)) else {
            panic!("batch answers with a batch")
        };
        for (i, r) in (next..end).zip(&rs) {
            assert_eq!(*r, joined(i as u32 + 1), "join of w{i}");
        }
        next = end;
    }
    assert_eq!(mem.sale().waitlist_len, WAITLIST_LEN_MAX);
    assert_eq!(
        mem.apply(2_600, join("late", 1, "j")),
        rej(Reject::WaitlistFull {
            max: WAITLIST_LEN_MAX
        })
    );
    assert_eq!(
        mem.apply(2_600, join(&format!("w{}", max - 1), 1, "j2")),
        rej(Reject::AlreadyWaitlisted {
            position: WAITLIST_LEN_MAX
        })
    );
    // One leaves: there is room for exactly one more, at the end.
    assert_eq!(
        mem.apply(2_700, leave("w0", "l")),
        Response::WaitlistLeft {
            sale_id: SALE.into()
        }
    );
    assert_eq!(
        mem.apply(2_800, join("late", 1, "j2")),
        joined(WAITLIST_LEN_MAX)
    );
    assert_eq!(
        mem.apply(2_900, join("later", 1, "j")),
        rej(Reject::WaitlistFull {
            max: WAITLIST_LEN_MAX
        })
    );
}

#[test]
fn cash_on_delivery_counts_as_sold_and_cancelling_returns_the_units() {
    let mut mem = Mem::default();
    apply_all(&mut mem, cod_ordered());
    let sale = mem.sale();
    assert_eq!(
        sale.counters,
        Counters {
            available: 9,
            sold: 1,
            ..Counters::default()
        }
    );
    assert_eq!(sale.stats.unique_buyers, 1);
    assert_eq!(sale.stats.orders_paid, 0);
    let order = query::order(&mem.state, 2).unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Confirmed);
    assert_eq!(order.pay_by_ms, None);
    // No payment deadline: only the sale close is pending.
    assert_eq!(
        mem.apply(50_000, Command::Tick),
        ticked(|t| t.next_deadline_ms = Some(100_000))
    );
    assert_eq!(
        mem.apply(50_000, cancel("alice", 2, "x1")),
        Response::Cancelled { order_id: 2 }
    );
    let order = query::order(&mem.state, 2).unwrap().unwrap();
    assert_eq!(order.status, cancelled(CancelReason::ByUser, 50_000));
    assert_eq!(
        mem.counters(),
        Counters {
            available: 10,
            ..Counters::default()
        }
    );
    // Alice's units are free again under her limit.
    assert_eq!(
        mem.apply(50_100, reserve("alice", 2, "r2")),
        held_resp(3, 2, 55_100)
    );
}
