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
//!   and the per-user live-hold cap (`too_many_holds`) is not modeled (such refusals are
//!   dropped; a hand-off that skips a user for it is not modeled either: the suite's
//!   per-user limits keep users far below the cap).
//! - The waitlist (one FIFO queue per sale): a join is allowed only when nothing is
//!   reservable (available is 0, or someone already waits), the user is not waiting
//!   already and the join's quantity fits the per-user limit; an ok join answers the
//!   queue length after it (`position`). While anyone waits, reserves see the sale as
//!   sold out. Every step that gives units back (release, expiry, cancel, failed
//!   payment, payment timeout) then hands them to the head of the queue, in order: the
//!   head gets a hold of `min(qty, room under the limit, available)` (a head with no
//!   room is dropped), until the queue or the stock runs out. Each join slot has a hold
//!   slot of its own for that promotion (its quantity lives in the state). The hand-off's
//!   per-call bound (64 entries) is not modeled: a sale here has at most 8 users.
//!   Leaving the waitlist is not issued by the workload and not modeled.
//! - The final state, when given, is one more observation after every op
//!   ([`Step::Final`]): the counters, which joins were promoted and with how many units,
//!   and the end state of every hold the model knows by id.
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

pub const J_NONE: u8 = 0;
pub const J_WAITING: u8 = 1;
pub const J_PROMOTED: u8 = 2;
pub const J_DROPPED: u8 = 3;

/// One hold slot (a reserve that was acknowledged or may have happened, or the hold a
/// waitlist join may be promoted to).
#[derive(Debug, Clone)]
pub struct HoldSlot {
    pub user: usize,
    /// The reserve's quantity (for a promotion: the most it can be; the granted quantity
    /// is in the state).
    pub qty: u32,
    /// The join slot whose promotion this hold is, if it is one.
    pub join: Option<usize>,
}

/// One waitlist join slot (a join that was acknowledged or may have happened).
#[derive(Debug, Clone)]
pub struct JoinSlot {
    pub user: usize,
    pub qty: u32,
    /// The hold slot of its promotion.
    pub hold: usize,
}

/// What the final state shows of a sale, as one last observation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinalObs {
    pub counters: Option<Counters>,
    /// Per join slot: the units of the hold it was promoted to, or `None` if no hold of
    /// that join exists.
    pub promoted: Vec<Option<u32>>,
    /// Hold slots and the state (`H_*`) they end in.
    pub holds: Vec<(usize, u8)>,
    /// The final state shows something no slot can explain (e.g. a waitlist hold whose
    /// join failed or was never sent).
    pub impossible: Option<String>,
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
    /// A linearizable read of the counters (and of the waitlist's length, if known).
    Read {
        counters: Counters,
        waitlist_len: Option<u32>,
    },
    /// A waitlist join that was (or may have been) queued; `position` is the queue length
    /// after it, if the answer is known.
    Join {
        slot: usize,
        position: Option<u32>,
    },
    /// `already_waitlisted`: the user is waiting.
    AlreadyWaitlisted {
        user: usize,
    },
    /// `not_sold_out`: the user is not waiting and something is reservable.
    NotSoldOut {
        user: usize,
    },
    /// `limit_exceeded` of a join: not waiting, nothing reservable, over the limit.
    JoinLimitExceeded {
        user: usize,
        qty: u32,
    },
    /// The final state (after every op).
    Final(Box<FinalObs>),
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
    /// Per join slot: `J_*`.
    pub joins: Vec<u8>,
    /// Per join slot: the units of its promotion (0 until promoted).
    pub granted: Vec<u32>,
    /// Join slots waiting, head first.
    pub queue: Vec<u16>,
}

/// One sale's model: its constants, slots and steps.
#[derive(Debug, Clone)]
pub struct SaleModel {
    pub quantity: u32,
    pub per_user_limit: u32,
    pub holds: Vec<HoldSlot>,
    pub orders: Vec<OrderSlot>,
    pub joins: Vec<JoinSlot>,
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
            joins: vec![J_NONE; self.joins.len()],
            granted: vec![0; self.joins.len()],
            queue: Vec::new(),
        }
    }

    /// A hold's user and units in state `s` (a promotion's units are in the state).
    fn hold_units(&self, s: &State, hold: usize) -> Option<(usize, u32)> {
        let h = self.holds.get(hold)?;
        match h.join {
            Some(j) => Some((h.user, *s.granted.get(j)?)),
            None => Some((h.user, h.qty)),
        }
    }

    fn order_units(&self, s: &State, order: usize) -> Option<(usize, u32)> {
        let o = self.orders.get(order)?;
        match self.holds.get(o.hold).and_then(|h| h.join) {
            Some(_) => self.hold_units(s, o.hold).map(|(_, q)| (o.user, q)),
            None => Some((o.user, o.qty)),
        }
    }

    /// Units a reserve may take: none while anyone waits.
    fn reservable(s: &State) -> u32 {
        if s.queue.is_empty() {
            s.counters.available
        } else {
            0
        }
    }

    fn waiting(&self, s: &State, user: usize) -> bool {
        s.queue.iter().any(|&j| {
            self.joins
                .get(usize::from(j))
                .is_some_and(|x| x.user == user)
        })
    }

    /// Hands available units to the head of the queue, in order (as the state machine
    /// does after every step that gives units back).
    fn handoff(&self, n: &mut State) -> Option<()> {
        while !n.queue.is_empty() && n.counters.available > 0 {
            let j = usize::from(n.queue.remove(0));
            let slot = self.joins.get(j)?;
            let used = *n.used.get(slot.user)?;
            let room = self.per_user_limit.saturating_sub(used);
            let want = slot.qty.min(room);
            if want == 0 {
                n.joins[j] = J_DROPPED;
                continue;
            }
            let q = want.min(n.counters.available);
            n.joins[j] = J_PROMOTED;
            n.granted[j] = q;
            *n.holds.get_mut(slot.hold)? = H_ACTIVE;
            n.counters.available -= q;
            n.counters.held += q;
            n.used[slot.user] += q;
        }
        Some(())
    }

    fn apply(&self, s: &State, step: &Step) -> Option<State> {
        match step {
            Step::Grant { slot } => {
                let (user, qty) = self.hold_units(s, *slot)?;
                let used = *s.used.get(user)?;
                let r = Self::reservable(s);
                if *s.holds.get(*slot)? != H_NONE
                    || self.holds.get(*slot)?.join.is_some()
                    || r == 0
                    || r < qty
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
            Step::SoldOut => (Self::reservable(s) == 0).then(|| s.clone()),
            Step::Insufficient { qty } => {
                let r = Self::reservable(s);
                (r > 0 && r < *qty).then(|| s.clone())
            }
            Step::LimitExceeded { user, qty } => {
                let used = *s.used.get(*user)?;
                (Self::reservable(s) >= *qty
                    && u64::from(used) + u64::from(*qty) > u64::from(self.per_user_limit))
                .then(|| s.clone())
            }
            Step::Release { hold }
            | Step::Expire {
                hold,
                eligible: true,
            } => {
                let (user, qty) = self.hold_units(s, *hold)?;
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
                self.handoff(&mut n)?;
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
                let (_, qty) = self.hold_units(s, *hold)?;
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
                let (_, qty) = self.order_units(s, *order)?;
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
            Step::Read {
                counters,
                waitlist_len,
            } => (*counters == s.counters
                && waitlist_len.is_none_or(|l| l as usize == s.queue.len()))
            .then(|| s.clone()),
            Step::Join { slot, position } => {
                let j = self.joins.get(*slot)?;
                if *s.joins.get(*slot)? != J_NONE
                    || self.waiting(s, j.user)
                    || Self::reservable(s) > 0
                    || u64::from(*s.used.get(j.user)?) + u64::from(j.qty)
                        > u64::from(self.per_user_limit)
                {
                    return None;
                }
                let mut n = s.clone();
                n.joins[*slot] = J_WAITING;
                n.queue.push(u16::try_from(*slot).ok()?);
                if position.is_some_and(|p| p as usize != n.queue.len()) {
                    return None;
                }
                Some(n)
            }
            Step::AlreadyWaitlisted { user } => self.waiting(s, *user).then(|| s.clone()),
            Step::NotSoldOut { user } => {
                (!self.waiting(s, *user) && Self::reservable(s) > 0).then(|| s.clone())
            }
            Step::JoinLimitExceeded { user, qty } => (!self.waiting(s, *user)
                && Self::reservable(s) == 0
                && u64::from(*s.used.get(*user)?) + u64::from(*qty)
                    > u64::from(self.per_user_limit))
            .then(|| s.clone()),
            Step::Final(f) => self.final_matches(s, f).then(|| s.clone()),
        }
    }

    fn final_matches(&self, s: &State, f: &FinalObs) -> bool {
        if f.impossible.is_some() || f.counters.is_some_and(|c| c != s.counters) {
            return false;
        }
        let promoted_ok = f.promoted.iter().enumerate().all(|(j, want)| {
            let promoted = s.joins.get(j) == Some(&J_PROMOTED);
            match want {
                Some(q) => promoted && s.granted.get(j) == Some(q),
                None => !promoted,
            }
        });
        promoted_ok
            && f.holds
                .iter()
                .all(|(h, st)| s.holds.get(*h).is_some_and(|x| x == st))
    }

    /// Returns an awaiting or confirmed order's units to `available`.
    fn cancel(&self, s: &State, order: usize) -> Option<State> {
        let (user, qty) = self.order_units(s, order)?;
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
        self.handoff(&mut n)?;
        Some(n)
    }
}

impl wgl::Model for SaleModel {
    type State = State;

    fn step(&self, state: &State, op: usize) -> Option<State> {
        self.apply(state, self.steps.get(op)?)
    }
}
