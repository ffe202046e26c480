//! The final state read after every fault has healed and the cluster is quiet.
//!
//! This module owns the shape the runner hands the state checkers: the authoritative
//! (linearizable) view of every sale, hold and order, each hold and order tagged with the
//! `request_id` that produced it, and per-node counters and state-machine hashes read
//! from every replica. The checkers trust it to be complete for the sales of the run: a
//! hold or order missing here is treated as lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Counters, OrderStatus};

/// One sale's quantity and counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SaleCounters {
    pub quantity: u32,
    pub counters: Counters,
}

/// A hold's state as the API names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Active,
    Released,
    Expired,
    CheckedOut,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FinalHold {
    pub hold_id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub qty: u32,
    pub expires_at_ms: u64,
    /// The reserve request that produced it; `None` for a waitlist hand-off.
    pub request_id: Option<String>,
    #[serde(default)]
    pub from_waitlist: bool,
    /// A waitlist hold's join request (the join it was handed to); `None` for a reserve's
    /// hold, or when the final state was read without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_request_id: Option<String>,
    pub state: HoldState,
    /// When it was released or expired (state-machine clock), if it was.
    #[serde(default)]
    pub state_at_ms: Option<u64>,
    /// The order it became, if checked out.
    #[serde(default)]
    pub order_id: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FinalOrder {
    pub order_id: u64,
    pub sale_id: String,
    pub user_id: String,
    pub hold_id: u64,
    pub qty: u32,
    /// The checkout request that produced it.
    pub request_id: Option<String>,
    pub status: OrderStatus,
    #[serde(default)]
    pub pay_by_ms: Option<u64>,
    /// `payment_failed`, `payment_timeout` or `by_user` when cancelled.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// When it was paid or cancelled (state-machine clock), if it was.
    #[serde(default)]
    pub status_at_ms: Option<u64>,
}

/// What one replica reported after quiet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub node: String,
    /// The replica's state-machine hash; `None` if it could not be read.
    pub state_hash: Option<String>,
    #[serde(default)]
    pub applied_index: Option<u64>,
    pub sales: BTreeMap<String, SaleCounters>,
}

/// A part of the final state the runner could not read (the API does not expose it).
/// Checkers that need it say `Unknown` for that part, never `Valid`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Gap {
    /// No per-replica state-machine hash (`NodeState::state_hash` is `None`).
    StateHash,
    /// A hold's `request_id` is known only where an ok reserve answer named the hold.
    HoldRequestIds,
    /// An order's `request_id` is known only where an ok checkout answer named the order.
    OrderRequestIds,
    /// No `state_at_ms` / `status_at_ms` (when a hold expired, an order timed out).
    StateTimes,
    /// The authoritative counters and the hold and order listings were not read at one
    /// applied index of the leader (it applied an entry, such as an expiry tick handing a
    /// unit to the next waitlisted user, during every attempt), so comparing records with
    /// counters, or with each other, could see half of a command.
    RecordsSnapshot,
}

/// Everything read after heal and quiet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct FinalState {
    /// The authoritative view of each sale.
    pub sales: BTreeMap<String, SaleCounters>,
    pub holds: Vec<FinalHold>,
    pub orders: Vec<FinalOrder>,
    pub nodes: Vec<NodeState>,
    /// What could not be read (empty: complete).
    #[serde(default)]
    pub gaps: Vec<Gap>,
    /// Reads of the authoritative view (counters, holds, orders) until one was taken at
    /// a single applied index of the leader (0: not recorded, an older history).
    #[serde(default)]
    pub records_read_attempts: u32,
}

impl FinalState {
    pub fn hold(&self, hold_id: u64) -> Option<&FinalHold> {
        self.holds.iter().find(|h| h.hold_id == hold_id)
    }

    pub fn order(&self, order_id: u64) -> Option<&FinalOrder> {
        self.orders.iter().find(|o| o.order_id == order_id)
    }

    pub fn has_gap(&self, g: Gap) -> bool {
        self.gaps.contains(&g)
    }

    pub fn holds_by_id(&self) -> BTreeMap<u64, &FinalHold> {
        self.holds.iter().map(|h| (h.hold_id, h)).collect()
    }

    pub fn orders_by_id(&self) -> BTreeMap<u64, &FinalOrder> {
        self.orders.iter().map(|o| (o.order_id, o)).collect()
    }
}
