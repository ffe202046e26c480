//! The sequential model of one sale that the linearizability search runs against.
//!
//! This module owns the model: written from the business rules, not from the product's
//! code. A state is the lifecycle of every hold and order the history could have created
//! (one slot per reserve or checkout that was acknowledged or may have happened), the
//! sale counters, and each user's units (held + awaiting payment + bought, for the
//! per-user limit).
//!
//! What the model abstracts (each choice is lenient: it can only hide a violation, never
//! invent one):
//! - Time. Expiry of a hold and payment timeout of an order are separate optional events
//!   that may happen at any point after `deadline − skew` (client time), or never (the
//!   ticker may lag; units of an expired-but-untouched hold stay held until a tick). A
//!   checkout or release refused with `hold_expired` *is* such an expiry and is allowed
//!   only after `expires_at − skew`. Whether ops honoured deadlines at all is the expiry
//!   checker's job, not this one's.
//! - An `Info` reserve that happened created a hold whose id the client never learned;
//!   its deadline is taken as `invoke + hold_ttl − skew` at the earliest.
//! - The sale is open for the whole run (start/end refusals are not modeled and dropped),
//!   the waitlist is not modeled (sales with waitlist activity are not judged), and the
//!   per-user live-hold cap (`too_many_holds`) is not modeled (such refusals are dropped).
//! - Only refusals whose code states a fact about the sale's state are judged
//!   (`sold_out`, `insufficient_stock`, `limit_exceeded`, `hold_expired`,
//!   `hold_not_active`, `payment_window_expired`, `order_not_awaiting_payment`,
//!   `order_not_cancellable`); other refusals changed nothing and are dropped.

use super::wgl;
use crate::history::Counters;

pub const H_NONE: u8 = 0;
pub const H_ACTIVE: u8 = 1;
pub const H_RELEASED: u8 = 2;
pub const H_EXPIRED: u8 = 3;
pub const H_CHECKED_OUT: u8 = 4;

pub const O_NONE: u8 = 0;
pub const O_AWAITING: u8 = 1;
pub const O_CONFIRMED: u8 = 2;
pub const O_PAID: u8 = 3;
pub const O_CANCELLED: u8 = 4;

/// One hold slot (a reserve that was acknowledged or may have happened).
#[derive(Debug, Clone)]
pub struct HoldSlot {
    pub user: usize,
    pub qty: u32,
}

/// One order slot (a checkout that was acknowledged or may have happened).
#[derive(Debug, Clone)]
pub struct OrderSlot {
    pub hold: usize,
    pub user: usize,
    pub qty: u32,
}

/// What one linearizable op does or observes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A reserve that got (or may have got) a hold in `slot`.
    Grant {
        slot: usize,
    },
    /// Refusals of a reserve of `qty` by `user`.
    SoldOut,
    Insufficient {
        qty: u32,
    },
    LimitExceeded {
        user: usize,
        qty: u32,
    },
    Release {
        hold: usize,
    },
    /// Expiry of an active hold: a tick (optional) or a refusal with `hold_expired`
    /// (allowed only if `eligible`: its window reaches past `expires_at − skew`).
    Expire {
        hold: usize,
        eligible: bool,
    },
    /// A refusal with `hold_not_active`.
    HoldNotActive {
        hold: usize,
    },
    Checkout {
        hold: usize,
        order: usize,
        confirmed: bool,
    },
    Pay {
        order: usize,
    },
    /// Payment timeout of an awaiting order: a tick or a `payment_window_expired` refusal.
    Timeout {
        order: usize,
        eligible: bool,
    },
    /// `order_not_awaiting_payment`.
    NotAwaiting {
        order: usize,
    },
    /// A cancel by the user (awaiting or confirmed).
    Cancel {
        order: usize,
    },
    /// `order_not_cancellable`.
    NotCancellable {
        order: usize,
    },
    /// A failed payment (awaiting only).
    FailPayment {
        order: usize,
    },
    /// A linearizable read of the counters.
    Read {
        counters: Counters,
    },
    /// A step that can never happen (e.g. a checkout answered `confirmed` in a sale with a
    /// payment window); it makes the history non-linearizable if required.
    Impossible,
}

/// The model state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    pub holds: Vec<u8>,
    pub orders: Vec<u8>,
    pub counters: Counters,
    /// Units per user (held + awaiting payment + bought).
    pub used: Vec<u32>,
}

/// One sale's model: its constants, slots and steps.
#[derive(Debug, Clone)]
pub struct SaleModel {
    pub quantity: u32,
    pub per_user_limit: u32,
    pub holds: Vec<HoldSlot>,
    pub orders: Vec<OrderSlot>,
    pub users: usize,
    pub steps: Vec<Step>,
}

impl SaleModel {
    pub fn initial(&self) -> State {
        State {
            holds: vec![H_NONE; self.holds.len()],
            orders: vec![O_NONE; self.orders.len()],
            counters: Counters {
                available: self.quantity,
                ..Counters::default()
            },
            used: vec![0; self.users],
        }
    }

    fn hold_units(&self, hold: usize) -> Option<(usize, u32)> {
        self.holds.get(hold).map(|h| (h.user, h.qty))
    }

    fn order_units(&self, order: usize) -> Option<(usize, u32)> {
        self.orders.get(order).map(|o| (o.user, o.qty))
    }

    fn apply(&self, s: &State, step: &Step) -> Option<State> {
        let c = s.counters;
        match step {
            Step::Grant { slot } => {
                let (user, qty) = self.hold_units(*slot)?;
                let used = *s.used.get(user)?;
                if *s.holds.get(*slot)? != H_NONE
                    || c.available == 0
                    || c.available < qty
                    || u64::from(used) + u64::from(qty) > u64::from(self.per_user_limit)
                {
                    return None;
                }
                let mut n = s.clone();
                n.holds[*slot] = H_ACTIVE;
                n.counters.available -= qty;
                n.counters.held += qty;
                n.used[user] += qty;
                Some(n)
            }
            Step::SoldOut => (c.available == 0).then(|| s.clone()),
            Step::Insufficient { qty } => {
                (c.available > 0 && c.available < *qty).then(|| s.clone())
            }
            Step::LimitExceeded { user, qty } => {
                let used = *s.used.get(*user)?;
                (c.available >= *qty
                    && u64::from(used) + u64::from(*qty) > u64::from(self.per_user_limit))
                .then(|| s.clone())
            }
            Step::Release { hold }
            | Step::Expire {
                hold,
                eligible: true,
            } => {
                let (user, qty) = self.hold_units(*hold)?;
                if *s.holds.get(*hold)? != H_ACTIVE {
                    return None;
                }
                let mut n = s.clone();
                n.holds[*hold] = if matches!(step, Step::Release { .. }) {
                    H_RELEASED
                } else {
                    H_EXPIRED
                };
                n.counters.held = n.counters.held.checked_sub(qty)?;
                n.counters.available += qty;
                n.used[user] = n.used[user].checked_sub(qty)?;
                Some(n)
            }
            Step::Expire {
                eligible: false, ..
            }
            | Step::Impossible => None,
            Step::HoldNotActive { hold } => {
                matches!(*s.holds.get(*hold)?, H_RELEASED | H_EXPIRED | H_CHECKED_OUT)
                    .then(|| s.clone())
            }
            Step::Checkout {
                hold,
                order,
                confirmed,
            } => {
                let (_, qty) = self.hold_units(*hold)?;
                if *s.holds.get(*hold)? != H_ACTIVE || *s.orders.get(*order)? != O_NONE {
                    return None;
                }
                let mut n = s.clone();
                n.holds[*hold] = H_CHECKED_OUT;
                n.counters.held = n.counters.held.checked_sub(qty)?;
                if *confirmed {
                    n.orders[*order] = O_CONFIRMED;
                    n.counters.sold += qty;
                } else {
                    n.orders[*order] = O_AWAITING;
                    n.counters.awaiting_payment += qty;
                }
                Some(n)
            }
            Step::Pay { order } => {
                let (_, qty) = self.order_units(*order)?;
                if *s.orders.get(*order)? != O_AWAITING {
                    return None;
                }
                let mut n = s.clone();
                n.orders[*order] = O_PAID;
                n.counters.awaiting_payment = n.counters.awaiting_payment.checked_sub(qty)?;
                n.counters.sold += qty;
                Some(n)
            }
            Step::Timeout {
                order,
                eligible: true,
            }
            | Step::FailPayment { order } => {
                if *s.orders.get(*order)? != O_AWAITING {
                    return None;
                }
                self.cancel(s, *order)
            }
            Step::Timeout {
                eligible: false, ..
            } => None,
            Step::Cancel { order } => {
                if !matches!(*s.orders.get(*order)?, O_AWAITING | O_CONFIRMED) {
                    return None;
                }
                self.cancel(s, *order)
            }
            Step::NotAwaiting { order } => {
                matches!(*s.orders.get(*order)?, O_CONFIRMED | O_PAID | O_CANCELLED)
                    .then(|| s.clone())
            }
            Step::NotCancellable { order } => {
                matches!(*s.orders.get(*order)?, O_PAID | O_CANCELLED).then(|| s.clone())
            }
            Step::Read { counters } => (*counters == s.counters).then(|| s.clone()),
        }
    }

    /// Returns an awaiting or confirmed order's units to `available`.
    fn cancel(&self, s: &State, order: usize) -> Option<State> {
        let (user, qty) = self.order_units(order)?;
        let mut n = s.clone();
        match *s.orders.get(order)? {
            O_AWAITING => {
                n.counters.awaiting_payment = n.counters.awaiting_payment.checked_sub(qty)?
            }
            O_CONFIRMED => n.counters.sold = n.counters.sold.checked_sub(qty)?,
            _ => return None,
        }
        n.orders[order] = O_CANCELLED;
        n.counters.available += qty;
        n.used[user] = n.used[user].checked_sub(qty)?;
        Some(n)
    }
}

impl wgl::Model for SaleModel {
    type State = State;

    fn step(&self, state: &State, op: usize) -> Option<State> {
        self.apply(state, self.steps.get(op)?)
    }
}
