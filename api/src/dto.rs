//! The HTTP API's JSON shapes: request bodies (strict: unknown fields are errors),
//! responses, and their conversions from the replicated types.
//!
//! These are separate from `stockade_raft_store::types` on purpose: the log's types are
//! positional bincode and change by protocol rules; the JSON contract changes by API
//! rules. Everything is snake_case; enums are lower-case strings.

use serde::{Deserialize, Serialize};
use stockade_raft_store::query::{SaleView, WaitlistStatus};
use stockade_raft_store::types::{
    self as t, CancelReason, HoldRecord, HoldState, OrderInfo, OrderRecord, OrderStatus,
};
use utoipa::{IntoParams, ToSchema};

use crate::cluster::{self, ReadLevel};

/// Every error body: a stable code and a readable message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code, e.g. `sold_out`, `invalid`, `no_leader`.
    pub code: String,
    pub message: String,
}

// ---- sales -----------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductDto {
    pub sku: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub image_url: String,
}

/// A sale as an operator defines it. Prices are integer minor units (cents).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleSpecDto {
    /// A slug: `[a-z0-9][a-z0-9-]*`.
    pub id: String,
    pub product: ProductDto,
    pub list_price_minor: u64,
    pub sale_price_minor: u64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
    pub quantity: u32,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    pub per_user_limit: u32,
    pub hold_ttl_ms: u64,
    /// 0 = cash on delivery: checkout confirms the order at once.
    pub payment_window_ms: u64,
}

impl From<SaleSpecDto> for t::SaleSpec {
    fn from(d: SaleSpecDto) -> Self {
        t::SaleSpec {
            id: d.id,
            product: t::Product {
                sku: d.product.sku,
                name: d.product.name,
                description: d.product.description,
                image_url: d.product.image_url,
            },
            list_price_minor: d.list_price_minor,
            sale_price_minor: d.sale_price_minor,
            currency: d.currency,
            quantity: d.quantity,
            starts_at_ms: d.starts_at_ms,
            ends_at_ms: d.ends_at_ms,
            per_user_limit: d.per_user_limit,
            hold_ttl_ms: d.hold_ttl_ms,
            payment_window_ms: d.payment_window_ms,
        }
    }
}

impl From<t::SaleSpec> for SaleSpecDto {
    fn from(s: t::SaleSpec) -> Self {
        SaleSpecDto {
            id: s.id,
            product: ProductDto {
                sku: s.product.sku,
                name: s.product.name,
                description: s.product.description,
                image_url: s.product.image_url,
            },
            list_price_minor: s.list_price_minor,
            sale_price_minor: s.sale_price_minor,
            currency: s.currency,
            quantity: s.quantity,
            starts_at_ms: s.starts_at_ms,
            ends_at_ms: s.ends_at_ms,
            per_user_limit: s.per_user_limit,
            hold_ttl_ms: s.hold_ttl_ms,
            payment_window_ms: s.payment_window_ms,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct CountersDto {
    pub available: u32,
    pub held: u32,
    pub awaiting_payment: u32,
    pub sold: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SaleStatsDto {
    pub holds_granted: u64,
    pub units_reserved: u64,
    pub holds_expired: u64,
    pub holds_released: u64,
    pub checkouts: u64,
    pub orders_paid: u64,
    pub orders_cancelled: u64,
    pub orders_timed_out: u64,
    pub unique_buyers: u64,
    pub waitlist_joined: u64,
    pub waitlist_promoted: u64,
    pub sold_out_at_ms: Option<u64>,
    pub fully_sold_at_ms: Option<u64>,
    pub waitlist_len: u32,
}

/// A sale as clients see it: product, prices, derived status and live counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SaleDto {
    pub spec: SaleSpecDto,
    /// scheduled | active | sold_out | ended
    pub status: String,
    pub counters: CountersDto,
    pub stats: SaleStatsDto,
    pub ended_early_at_ms: Option<u64>,
    /// The state machine clock the status was derived at.
    pub as_of_ms: u64,
}

impl From<SaleView> for SaleDto {
    fn from(v: SaleView) -> Self {
        SaleDto {
            status: v.status.name().to_string(),
            counters: CountersDto {
                available: v.counters.available,
                held: v.counters.held,
                awaiting_payment: v.counters.awaiting_payment,
                sold: v.counters.sold,
            },
            stats: stats_dto(&v),
            ended_early_at_ms: v.ended_early_at_ms,
            as_of_ms: v.as_of_ms,
            spec: v.spec.into(),
        }
    }
}

pub fn stats_dto(v: &SaleView) -> SaleStatsDto {
    let s = &v.stats;
    SaleStatsDto {
        holds_granted: s.holds_granted,
        units_reserved: s.units_reserved,
        holds_expired: s.holds_expired,
        holds_released: s.holds_released,
        checkouts: s.checkouts,
        orders_paid: s.orders_paid,
        orders_cancelled: s.orders_cancelled,
        orders_timed_out: s.orders_timed_out,
        unique_buyers: s.unique_buyers,
        waitlist_joined: s.waitlist_joined,
        waitlist_promoted: s.waitlist_promoted,
        sold_out_at_ms: s.sold_out_at_ms,
        fully_sold_at_ms: s.fully_sold_at_ms,
        waitlist_len: v.waitlist_len,
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SaleIdDto {
    pub sale_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SaleEndedDto {
    pub sale_id: String,
    pub ended_at_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SaleListDto {
    pub sales: Vec<SaleDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

// ---- reads -----------------------------------------------------------------------

/// How fresh a read must be (default `linearizable`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Whatever the serving node has applied: fast, possibly behind.
    Stale,
    /// Reflects every write acknowledged before the read began.
    #[default]
    Linearizable,
}

impl From<Consistency> for ReadLevel {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Stale => ReadLevel::Stale,
            Consistency::Linearizable => ReadLevel::Linearizable,
        }
    }
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `stale` or `linearizable` (default).
    pub consistency: Option<Consistency>,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSalesQuery {
    /// Start after this sale id.
    pub after: Option<String>,
    /// Page size, 1..=list_limit_max (default list_limit_default).
    pub limit: Option<u32>,
    pub consistency: Option<Consistency>,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    /// Start after this order id.
    pub after: Option<u64>,
    pub limit: Option<u32>,
    pub consistency: Option<Consistency>,
}

#[derive(Deserialize, Debug, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaveWaitlistQuery {
    pub request_id: String,
}

// ---- holds -----------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub user_id: String,
    pub qty: u32,
    /// Idempotency key: a retry with the same (user_id, request_id) gets the first answer.
    pub request_id: String,
    /// `true` only on the client's first send of this request id, never on a retry.
    /// Such a reservation may be refused (`sold_out` and the like) from a linearizable
    /// read, without a log entry, which is twice as fast after a sale sells out; a retry
    /// (or `false`, the default) goes through the log so that it and any earlier send
    /// still in flight get one recorded answer. A waitlist join (same body) ignores it.
    #[serde(default)]
    pub first_attempt: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct HoldGrantDto {
    pub hold_id: u64,
    pub sale_id: String,
    pub qty: u32,
    pub expires_at_ms: u64,
}

impl From<t::HoldGrant> for HoldGrantDto {
    fn from(g: t::HoldGrant) -> Self {
        HoldGrantDto {
            hold_id: g.hold_id,
            sale_id: g.sale_id,
            qty: g.qty,
            expires_at_ms: g.expires_at_ms,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct HoldDto {
    pub hold_id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub from_waitlist: bool,
    /// active | released | expired | checked_out
    pub state: String,
    /// Set once checked out.
    pub order_id: Option<u64>,
    /// When it was released or expired (state-machine clock).
    pub state_at_ms: Option<u64>,
    /// The request that produced it (the reserve, or the waitlist join it was handed to).
    pub request_id: String,
}

impl From<HoldRecord> for HoldDto {
    fn from(h: HoldRecord) -> Self {
        HoldDto {
            order_id: match h.state {
                HoldState::CheckedOut { order_id } => Some(order_id),
                _ => None,
            },
            state_at_ms: match h.state {
                HoldState::Released { at_ms } | HoldState::Expired { at_ms } => Some(at_ms),
                HoldState::Active | HoldState::CheckedOut { .. } => None,
            },
            state: h.state.name().to_string(),
            request_id: h.request_id,
            hold_id: h.id,
            sale_id: h.sale_id,
            user_id: h.user_id,
            qty: h.qty,
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms,
            from_waitlist: h.from_waitlist,
        }
    }
}

/// Body of release, checkout and cancel: who asks, and the idempotency key.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequestBody {
    pub user_id: String,
    pub request_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct HoldIdDto {
    pub hold_id: u64,
}

// ---- orders ----------------------------------------------------------------------

/// An order as returned by checkout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct OrderInfoDto {
    pub order_id: u64,
    pub sale_id: String,
    pub qty: u32,
    pub amount_minor: u64,
    pub currency: String,
    /// awaiting_payment | paid | confirmed | cancelled
    pub status: String,
    /// Deadline for payment; absent for cash on delivery.
    pub pay_by_ms: Option<u64>,
}

impl From<OrderInfo> for OrderInfoDto {
    fn from(o: OrderInfo) -> Self {
        OrderInfoDto {
            order_id: o.order_id,
            sale_id: o.sale_id,
            qty: o.qty,
            amount_minor: o.amount_minor,
            currency: o.currency,
            status: o.status.name().to_string(),
            pay_by_ms: o.pay_by_ms,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct OrderDto {
    pub order_id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub hold_id: u64,
    pub qty: u32,
    pub amount_minor: u64,
    pub currency: String,
    /// awaiting_payment | paid | confirmed | cancelled
    pub status: String,
    pub pay_by_ms: Option<u64>,
    pub created_at_ms: u64,
    pub payment_ref: Option<String>,
    /// payment_failed | payment_timeout | by_user
    pub cancel_reason: Option<String>,
    /// When it was paid or cancelled (state-machine clock).
    pub status_at_ms: Option<u64>,
    /// The checkout's request id.
    pub request_id: String,
}

pub fn cancel_reason_name(r: &CancelReason) -> &'static str {
    match r {
        CancelReason::PaymentFailed => "payment_failed",
        CancelReason::PaymentTimeout => "payment_timeout",
        CancelReason::ByUser => "by_user",
    }
}

impl From<OrderRecord> for OrderDto {
    fn from(o: OrderRecord) -> Self {
        let status_at_ms = match &o.status {
            OrderStatus::Paid { at_ms, .. } | OrderStatus::Cancelled { at_ms, .. } => Some(*at_ms),
            OrderStatus::AwaitingPayment | OrderStatus::Confirmed => None,
        };
        let (payment_ref, cancel_reason) = match &o.status {
            OrderStatus::Paid { payment_ref, .. } => (Some(payment_ref.clone()), None),
            OrderStatus::Cancelled { reason, .. } => {
                (None, Some(cancel_reason_name(reason).to_string()))
            }
            OrderStatus::AwaitingPayment | OrderStatus::Confirmed => (None, None),
        };
        OrderDto {
            status: o.status.name().to_string(),
            order_id: o.id,
            sale_id: o.sale_id,
            user_id: o.user_id,
            hold_id: o.hold_id,
            qty: o.qty,
            amount_minor: o.amount_minor,
            currency: o.currency,
            pay_by_ms: o.pay_by_ms,
            created_at_ms: o.created_at_ms,
            payment_ref,
            cancel_reason,
            status_at_ms,
            request_id: o.request_id,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct HoldListDto {
    pub holds: Vec<HoldDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct OrderListDto {
    pub orders: Vec<OrderDto>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    pub user_id: String,
    pub amount_minor: u64,
    pub currency: String,
    /// The payment provider's reference: paying twice with it is a no-op.
    pub payment_ref: String,
    pub request_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentFailureBody {
    pub user_id: String,
    pub reason: String,
    pub request_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct OrderIdDto {
    pub order_id: u64,
}

// ---- waitlist --------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct WaitlistJoinedDto {
    pub sale_id: String,
    /// 1-based place in the queue at the time of joining.
    pub position: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct WaitlistStatusDto {
    /// not_waitlisted | waiting | promoted
    pub state: String,
    pub position: Option<u32>,
    pub qty: Option<u32>,
    /// Set when promoted: the hold the returned units became.
    pub hold_id: Option<u64>,
}

impl From<WaitlistStatus> for WaitlistStatusDto {
    fn from(w: WaitlistStatus) -> Self {
        match w {
            WaitlistStatus::NotWaitlisted => WaitlistStatusDto {
                state: "not_waitlisted".into(),
                position: None,
                qty: None,
                hold_id: None,
            },
            WaitlistStatus::Waiting { position, qty } => WaitlistStatusDto {
                state: "waiting".into(),
                position: Some(position),
                qty: Some(qty),
                hold_id: None,
            },
            WaitlistStatus::Promoted { hold_id } => WaitlistStatusDto {
                state: "promoted".into(),
                position: None,
                qty: None,
                hold_id: Some(hold_id),
            },
        }
    }
}

// ---- admin -----------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerBody {
    pub node_id: u64,
    pub raft_addr: String,
    pub api_addr: String,
}

/// `GET /admin/state-hash`: a replica's state fingerprint.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct StateHashDto {
    pub node_id: u64,
    pub applied_index: u64,
    pub state_hash: u64,
}

/// `POST /admin/compact`: what a compaction of one node's state machine did.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct CompactedDto {
    pub node_id: u64,
    /// The state machine's table files before and after, bytes.
    pub sst_bytes_before: u64,
    pub sst_bytes_after: u64,
    pub took_ms: u64,
}

/// `POST /admin/init`: the first voters of a new cluster (empty or absent: this node alone).
#[derive(Serialize, Deserialize, Clone, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    #[serde(default)]
    pub members: Vec<AddLearnerBody>,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipBody {
    pub voters: Vec<u64>,
    /// Keep removed voters as learners.
    #[serde(default)]
    pub retain: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderBody {
    pub to: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct MemberDto {
    pub node_id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ReplicationDto {
    pub node_id: u64,
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ClusterStatusDto {
    pub node_id: u64,
    /// leader | follower | candidate | learner | shutdown
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub members: Vec<MemberDto>,
    pub replication: Vec<ReplicationDto>,
}

impl From<cluster::ClusterStatus> for ClusterStatusDto {
    fn from(s: cluster::ClusterStatus) -> Self {
        ClusterStatusDto {
            node_id: s.node_id,
            role: s.role,
            term: s.term,
            leader_id: s.leader_id,
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            snapshot_index: s.snapshot_index,
            members: s
                .members
                .into_iter()
                .map(|m| MemberDto {
                    node_id: m.node_id,
                    raft_addr: m.raft_addr,
                    api_addr: m.api_addr,
                    voter: m.voter,
                })
                .collect(),
            replication: s
                .replication
                .into_iter()
                .map(|r| ReplicationDto {
                    node_id: r.node_id,
                    matched_index: r.matched_index,
                    lag: r.lag,
                })
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ReadinessDto {
    pub has_leader: bool,
    pub caught_up: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct HealthDto {
    pub status: String,
    pub node_id: u64,
}
