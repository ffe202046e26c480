//! The replicated vocabulary: the log entry, commands, responses, rejections, and the
//! records the state machine keeps.
//!
//! Everything here is persisted with bincode (positional), so the rules are strict:
//! fields and variants only ever go at the end, nothing is renamed in place, and no
//! `skip_serializing_if`, `flatten` or `untagged` (they need a self-describing format).
//! `tests/it/golden.rs` pins the bytes of every type.

use serde::{Deserialize, Serialize};

/// One Raft log entry's application payload: a command and the leader's clock.
///
/// Only the leader stamps `at_ms` (its wall clock, made monotonic); clients never supply
/// it. The state machine's clock is the maximum `at_ms` it has seen, so deadlines are
/// decided by the log, identically on every replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub at_ms: u64,
    /// Shared, not owned: an entry is handed to the log, to each follower's replication
    /// and to the state machine, and the log store keeps its most recent entries in
    /// memory for those readers (`store::log`), so a copy must not deep-copy a batch of
    /// up to `BATCH_COMMANDS_MAX` commands. `Arc<T>` encodes exactly as `T`, so the log
    /// format is unchanged (the golden tests pin it).
    pub cmd: std::sync::Arc<Command>,
}

impl LogEntry {
    pub fn new(at_ms: u64, cmd: Command) -> Self {
        LogEntry {
            at_ms,
            cmd: std::sync::Arc::new(cmd),
        }
    }
}

/// Product information shown before the sale opens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub image_url: String,
}

/// Everything an operator sets about a sale. Prices are integer minor units (cents).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SaleSpec {
    /// A slug: `[a-z0-9][a-z0-9-]*`, at most `SALE_ID_BYTES_MAX`.
    pub id: String,
    pub product: Product,
    pub list_price_minor: u64,
    pub sale_price_minor: u64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    pub quantity: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    /// Units one user may hold, await payment for, or have bought, together.
    pub per_user_limit: u32,
    pub hold_ttl_ms: u64,
    /// Time to pay after checkout; 0 means cash on delivery (checkout confirms at once).
    pub payment_window_ms: u64,
}

/// A state-machine command. One `match` in `machine::apply_command`, one function each.
///
/// Client commands carry `user_id` and `request_id`: a repeat of the same pair returns
/// the first answer and acts no more. Operator commands (`CreateSale`, `UpdateSale`,
/// `EndSale`) are idempotent by content instead: repeating one changes nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Boxed, as is `UpdateSale`: a spec is about 200 bytes, every other variant at most
    /// 112, and every proposal in flight (queues, batches, each request's future) takes
    /// the size of the largest variant. Boxing is invisible on the wire (serde encodes a
    /// `Box<T>` as its `T`; `tests/it/golden.rs` pins the bytes).
    CreateSale(Box<SaleSpec>),
    /// Replaces the spec of a sale that has not started yet (same id).
    UpdateSale(Box<SaleSpec>),
    EndSale {
        sale_id: String,
    },
    Reserve {
        sale_id: String,
        user_id: String,
        qty: u32,
        request_id: String,
    },
    Release {
        user_id: String,
        hold_id: u64,
        request_id: String,
    },
    Checkout {
        user_id: String,
        hold_id: u64,
        request_id: String,
    },
    /// From the payment provider's callback: the amount must match, and the payment
    /// reference makes it idempotent even across different request ids.
    ConfirmPayment {
        user_id: String,
        order_id: u64,
        amount_minor: u64,
        currency: String,
        payment_ref: String,
        request_id: String,
    },
    FailPayment {
        user_id: String,
        order_id: u64,
        reason: String,
        request_id: String,
    },
    CancelOrder {
        user_id: String,
        order_id: u64,
        request_id: String,
    },
    JoinWaitlist {
        sale_id: String,
        user_id: String,
        qty: u32,
        request_id: String,
    },
    LeaveWaitlist {
        sale_id: String,
        user_id: String,
        request_id: String,
    },
    /// Handles due deadlines in deadline order, at most `TICK_EXPIRE_BATCH_MAX`.
    Tick,
    /// Group commit: many commands in one log entry, each answered in order. Not nested.
    Batch(Vec<Command>),
}

impl Command {
    /// The idempotency key of a client command, `None` for operator commands and `Tick`.
    pub fn client_key(&self) -> Option<(&str, &str)> {
        match self {
            Command::Reserve {
                user_id,
                request_id,
                ..
            }
            | Command::Release {
                user_id,
                request_id,
                ..
            }
            | Command::Checkout {
                user_id,
                request_id,
                ..
            }
            | Command::ConfirmPayment {
                user_id,
                request_id,
                ..
            }
            | Command::FailPayment {
                user_id,
                request_id,
                ..
            }
            | Command::CancelOrder {
                user_id,
                request_id,
                ..
            }
            | Command::JoinWaitlist {
                user_id,
                request_id,
                ..
            }
            | Command::LeaveWaitlist {
                user_id,
                request_id,
                ..
            } => Some((user_id.as_str(), request_id.as_str())),
            Command::CreateSale(_)
            | Command::UpdateSale(_)
            | Command::EndSale { .. }
            | Command::Tick
            | Command::Batch(_) => None,
        }
    }

    /// A short stable name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateSale(_) => "create_sale",
            Command::UpdateSale(_) => "update_sale",
            Command::EndSale { .. } => "end_sale",
            Command::Reserve { .. } => "reserve",
            Command::Release { .. } => "release",
            Command::Checkout { .. } => "checkout",
            Command::ConfirmPayment { .. } => "confirm_payment",
            Command::FailPayment { .. } => "fail_payment",
            Command::CancelOrder { .. } => "cancel_order",
            Command::JoinWaitlist { .. } => "join_waitlist",
            Command::LeaveWaitlist { .. } => "leave_waitlist",
            Command::Tick => "tick",
            Command::Batch(_) => "batch",
        }
    }
}

/// The answer to one command. Business outcomes that refuse the command are
/// `Rejected`; storage failures are never a `Response` (they stop the node).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A blank or membership log entry.
    Applied,
    SaleCreated {
        sale_id: String,
    },
    SaleUpdated {
        sale_id: String,
    },
    SaleEnded {
        sale_id: String,
        ended_at_ms: u64,
    },
    Held(HoldGrant),
    Released {
        hold_id: u64,
    },
    CheckedOut(OrderInfo),
    Paid {
        order_id: u64,
    },
    PaymentFailed {
        order_id: u64,
    },
    Cancelled {
        order_id: u64,
    },
    WaitlistJoined {
        sale_id: String,
        /// 1-based place in the queue at the time of joining.
        position: u32,
    },
    WaitlistLeft {
        sale_id: String,
    },
    Ticked(TickReport),
    Batch(Vec<Response>),
    Rejected(Reject),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HoldGrant {
    pub hold_id: u64,
    pub sale_id: String,
    pub qty: u32,
    pub expires_at_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OrderInfo {
    pub order_id: u64,
    pub sale_id: String,
    pub qty: u32,
    pub amount_minor: u64,
    pub currency: String,
    pub status: OrderStatus,
    /// Deadline for payment; `None` for cash on delivery.
    pub pay_by_ms: Option<u64>,
}

/// What one `Tick` did, and whether the ticker should come back at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TickReport {
    pub holds_expired: u32,
    pub orders_expired: u32,
    pub records_purged: u32,
    pub waitlist_dropped: u32,
    pub waitlist_promoted: u32,
    /// More deadlines are due now (the batch bound was hit).
    pub more_due: bool,
    /// The earliest deadline still pending, if any.
    pub next_deadline_ms: Option<u64>,
}

/// A business rejection with a stable code (see [`Reject::code`]). Codes are never
/// reused for another meaning; new variants go at the end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or out-of-limit input; names the field.
    Invalid {
        field: String,
        reason: String,
    },
    SaleNotFound,
    /// A sale with this id exists with a different spec.
    SaleExists,
    SaleNotStarted {
        starts_at_ms: u64,
    },
    SaleEnded,
    /// Updates are allowed only before the sale starts.
    SaleAlreadyStarted,
    SoldOut,
    /// Some units are left, fewer than asked.
    InsufficientStock {
        available: u32,
    },
    /// held + awaiting payment + bought + asked would pass the per-user limit.
    LimitExceeded {
        limit: u32,
        used: u32,
    },
    TooManyHolds {
        max: u32,
    },
    HoldNotFound,
    /// The hold or order belongs to another user.
    NotOwner,
    HoldExpired,
    HoldNotActive {
        state: HoldState,
    },
    OrderNotFound,
    OrderNotAwaitingPayment {
        status: OrderStatus,
    },
    PaymentWindowExpired,
    AmountMismatch {
        expected_minor: u64,
        currency: String,
    },
    /// The payment reference was already used for another order.
    PaymentRefConflict,
    OrderNotCancellable {
        status: OrderStatus,
    },
    /// Units are available: reserve instead of queueing.
    NotSoldOut {
        available: u32,
    },
    AlreadyWaitlisted {
        position: u32,
    },
    NotWaitlisted,
    WaitlistFull {
        max: u32,
    },
    /// The same (user, request_id) was used earlier for a different command.
    RequestIdReused,
}

impl Reject {
    /// The stable, never-reused code of this rejection (`snake_case`).
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Invalid { .. } => "invalid",
            Reject::SaleNotFound => "sale_not_found",
            Reject::SaleExists => "sale_exists",
            Reject::SaleNotStarted { .. } => "sale_not_started",
            Reject::SaleEnded => "sale_ended",
            Reject::SaleAlreadyStarted => "sale_already_started",
            Reject::SoldOut => "sold_out",
            Reject::InsufficientStock { .. } => "insufficient_stock",
            Reject::LimitExceeded { .. } => "limit_exceeded",
            Reject::TooManyHolds { .. } => "too_many_holds",
            Reject::HoldNotFound => "hold_not_found",
            Reject::NotOwner => "not_owner",
            Reject::HoldExpired => "hold_expired",
            Reject::HoldNotActive { .. } => "hold_not_active",
            Reject::OrderNotFound => "order_not_found",
            Reject::OrderNotAwaitingPayment { .. } => "order_not_awaiting_payment",
            Reject::PaymentWindowExpired => "payment_window_expired",
            Reject::AmountMismatch { .. } => "amount_mismatch",
            Reject::PaymentRefConflict => "payment_ref_conflict",
            Reject::OrderNotCancellable { .. } => "order_not_cancellable",
            Reject::NotSoldOut { .. } => "not_sold_out",
            Reject::AlreadyWaitlisted { .. } => "already_waitlisted",
            Reject::NotWaitlisted => "not_waitlisted",
            Reject::WaitlistFull { .. } => "waitlist_full",
            Reject::RequestIdReused => "request_id_reused",
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Reject {
        Reject::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Reject {
    /// One readable sentence, used as the `message` of API errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Invalid { field, reason } => write!(f, "invalid {field}: {reason}"),
            Reject::SaleNotFound => write!(f, "no such sale"),
            Reject::SaleExists => write!(f, "a sale with this id exists with a different spec"),
            Reject::SaleNotStarted { starts_at_ms } => {
                write!(f, "the sale starts at {starts_at_ms} ms")
            }
            Reject::SaleEnded => write!(f, "the sale has ended"),
            Reject::SaleAlreadyStarted => {
                write!(f, "the sale has started and can no longer be updated")
            }
            Reject::SoldOut => write!(f, "sold out"),
            Reject::InsufficientStock { available } => write!(f, "only {available} units left"),
            Reject::LimitExceeded { limit, used } => {
                write!(f, "per-user limit is {limit} and {used} are already held, awaiting payment or bought")
            }
            Reject::TooManyHolds { max } => write!(f, "at most {max} live holds per user and sale"),
            Reject::HoldNotFound => write!(f, "no such hold"),
            Reject::NotOwner => write!(f, "belongs to another user"),
            Reject::HoldExpired => write!(f, "the hold has expired"),
            Reject::HoldNotActive { state } => write!(f, "the hold is {}", state.name()),
            Reject::OrderNotFound => write!(f, "no such order"),
            Reject::OrderNotAwaitingPayment { status } => {
                write!(f, "the order is {}", status.name())
            }
            Reject::PaymentWindowExpired => write!(f, "the payment window has passed"),
            Reject::AmountMismatch {
                expected_minor,
                currency,
            } => {
                write!(f, "expected {expected_minor} {currency} (minor units)")
            }
            Reject::PaymentRefConflict => {
                write!(f, "payment reference already used for another order")
            }
            Reject::OrderNotCancellable { status } => {
                write!(f, "an order that is {} cannot be cancelled", status.name())
            }
            Reject::NotSoldOut { available } => {
                write!(f, "{available} units are available: reserve instead")
            }
            Reject::AlreadyWaitlisted { position } => {
                write!(f, "already on the waitlist at position {position}")
            }
            Reject::NotWaitlisted => write!(f, "not on the waitlist"),
            Reject::WaitlistFull { max } => write!(f, "the waitlist is full ({max})"),
            Reject::RequestIdReused => {
                write!(f, "request_id was already used for a different command")
            }
        }
    }
}

/// Derived from the state machine's clock and counters, never stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleStatus {
    Scheduled,
    Active,
    SoldOut,
    Ended,
}

impl SaleStatus {
    pub fn name(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::Active => "active",
            SaleStatus::SoldOut => "sold_out",
            SaleStatus::Ended => "ended",
        }
    }
}

/// `available + held + awaiting_payment + sold == quantity`, after every command.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub available: u32,
    pub held: u32,
    pub awaiting_payment: u32,
    pub sold: u32,
}

impl Counters {
    /// The conservation invariant, checked with wide arithmetic so it cannot overflow.
    pub fn conserves(&self, quantity: u32) -> bool {
        u64::from(self.available)
            + u64::from(self.held)
            + u64::from(self.awaiting_payment)
            + u64::from(self.sold)
            == u64::from(quantity)
    }
}

/// Counts kept by the state machine for each sale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SaleStats {
    /// Holds granted (directly or from the waitlist) and the units they covered.
    pub holds_granted: u64,
    pub units_reserved: u64,
    pub holds_expired: u64,
    pub holds_released: u64,
    pub checkouts: u64,
    pub orders_paid: u64,
    /// Orders cancelled for any reason (payment failed, timed out, by the user).
    pub orders_cancelled: u64,
    pub orders_timed_out: u64,
    /// Users who have had at least one unit sold to them.
    pub unique_buyers: u64,
    pub waitlist_joined: u64,
    pub waitlist_promoted: u64,
    /// First time `available` reached zero.
    pub sold_out_at_ms: Option<u64>,
    /// First time `sold` reached `quantity`.
    pub fully_sold_at_ms: Option<u64>,
}

/// A sale as stored (`sale/<id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SaleRecord {
    /// Shared, not owned: the state machine copies a sale record for every command that
    /// touches it within an apply call (see `machine::Machine::load_sale`), and the spec
    /// (six strings) never changes after the sale starts. `Arc<T>` encodes exactly as `T`
    /// (serde's `rc` feature), so the stored format is unchanged (the golden tests pin it).
    pub spec: std::sync::Arc<SaleSpec>,
    pub created_at_ms: u64,
    /// Set when an operator ended the sale before `ends_at_ms`.
    pub ended_early_at_ms: Option<u64>,
    pub counters: Counters,
    pub stats: SaleStats,
    /// Next waitlist sequence number; queue order is sequence order.
    pub waitlist_next_seq: u64,
    pub waitlist_len: u32,
}

impl SaleRecord {
    /// When the sale stops (or stopped) taking reservations.
    pub fn ends_at_ms(&self) -> u64 {
        match self.ended_early_at_ms {
            Some(t) => t.min(self.spec.ends_at_ms),
            None => self.spec.ends_at_ms,
        }
    }

    pub fn has_started(&self, clock_ms: u64) -> bool {
        clock_ms >= self.spec.starts_at_ms
    }

    pub fn has_ended(&self, clock_ms: u64) -> bool {
        clock_ms >= self.ends_at_ms()
    }

    pub fn is_open(&self, clock_ms: u64) -> bool {
        self.has_started(clock_ms) && !self.has_ended(clock_ms)
    }

    pub fn status(&self, clock_ms: u64) -> SaleStatus {
        if self.has_ended(clock_ms) {
            SaleStatus::Ended
        } else if !self.has_started(clock_ms) {
            SaleStatus::Scheduled
        } else if self.counters.available == 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Active
        }
    }

    /// Units a direct reservation may take: none while anyone waits, because units that
    /// come back belong to the waitlist, first come first served.
    pub fn reservable(&self) -> u32 {
        if self.waitlist_len > 0 {
            0
        } else {
            self.counters.available
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HoldState {
    Active,
    Released { at_ms: u64 },
    Expired { at_ms: u64 },
    CheckedOut { order_id: u64 },
}

impl HoldState {
    pub fn name(&self) -> &'static str {
        match self {
            HoldState::Active => "active",
            HoldState::Released { .. } => "released",
            HoldState::Expired { .. } => "expired",
            HoldState::CheckedOut { .. } => "checked_out",
        }
    }
}

/// A reservation of `qty` units for one user until `expires_at_ms` (`hold/<id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    pub id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub from_waitlist: bool,
    pub state: HoldState,
    /// The client request that produced it: the reserve's `request_id`, or for a waitlist
    /// hand-off the `request_id` of the join.
    pub request_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CancelReason {
    PaymentFailed,
    PaymentTimeout,
    ByUser,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    AwaitingPayment,
    Paid {
        payment_ref: String,
        at_ms: u64,
    },
    /// Cash on delivery: confirmed at checkout.
    Confirmed,
    Cancelled {
        reason: CancelReason,
        at_ms: u64,
    },
}

impl OrderStatus {
    pub fn name(&self) -> &'static str {
        match self {
            OrderStatus::AwaitingPayment => "awaiting_payment",
            OrderStatus::Paid { .. } => "paid",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled { .. } => "cancelled",
        }
    }
}

/// An order made from a hold at checkout (`order/<id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub hold_id: u64,
    pub qty: u32,
    pub amount_minor: u64,
    pub currency: String,
    pub created_at_ms: u64,
    pub pay_by_ms: Option<u64>,
    pub status: OrderStatus,
    /// The checkout's `request_id`.
    pub request_id: String,
}

impl OrderRecord {
    pub fn info(&self) -> OrderInfo {
        OrderInfo {
            order_id: self.id,
            sale_id: self.sale_id.clone(),
            qty: self.qty,
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            status: self.status.clone(),
            pay_by_ms: self.pay_by_ms,
        }
    }
}

/// One user's units on one sale (`user_sale/<sale>/<user>`), for the per-user limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct UserSaleRecord {
    pub held: u32,
    pub awaiting_payment: u32,
    pub bought: u32,
    pub live_holds: u32,
    /// Counted once in `unique_buyers`.
    pub counted_as_buyer: bool,
}

impl UserSaleRecord {
    pub fn used(&self) -> u32 {
        self.held
            .saturating_add(self.awaiting_payment)
            .saturating_add(self.bought)
    }
}

/// The first answer to a client command (`idem/<user>/<request_id>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdemRecord {
    /// xxh3 of the encoded command, to tell a retry from a reused request id.
    pub fingerprint: u64,
    pub recorded_at_ms: u64,
    pub response: Response,
}

/// One place in a sale's waitlist (`wait/<sale>/<seq>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WaitEntry {
    pub user_id: String,
    pub qty: u32,
    pub joined_at_ms: u64,
    /// The join's `request_id` (the hold a hand-off grants carries it).
    pub request_id: String,
}

/// Where one user stands on one sale's waitlist (`wait_user/<sale>/<user>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WaitState {
    Waiting {
        seq: u64,
    },
    /// Units came back and became this hold.
    Promoted {
        hold_id: u64,
    },
}

impl std::fmt::Display for LogEntry {
    /// Short form for openraft's logs: the command kind and the leader's stamp.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.cmd {
            Command::Batch(cmds) => write!(f, "batch[{}]@{}", cmds.len(), self.at_ms),
            cmd => write!(f, "{}@{}", cmd.kind(), self.at_ms),
        }
    }
}
