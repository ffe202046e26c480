//! The deterministic state machine: `(state, LogEntry) → (writes, Response)`.
//!
//! This module owns every business rule of a flash sale. It reads and writes only through
//! a [`Txn`] and takes time only from the log entry (`at_ms`, stamped by the leader), so
//! every replica that applies the same log computes byte-identical state. It must never
//! read a clock, randomness, the environment or the network (`clippy.toml` forbids the
//! usual ways in).
//!
//! Rules worth knowing:
//! - Counters: `available + held + awaiting_payment + sold == quantity` for every sale,
//!   checked for every sale a call touched before its writes are handed back.
//! - Units that come back (release, expiry, cancellation) go to the head of the waitlist
//!   first, first come first served; while anyone waits, direct reservations see the sale
//!   as sold out. A head that asks for more than is available gets what there is (so no
//!   unit is ever stuck behind a large request).
//! - Deadlines (hold expiry, payment timeout, idempotency purge, sale close) are keys
//!   ordered by time; `Tick` handles the due ones in that order, a bounded batch each.
//!   Handled and cancelled deadlines are deleted, so the front of that key range is a
//!   long run of RocksDB tombstones that every scan from the start would step over (in
//!   a flash sale, one per hold, order and request). Scans therefore start at the
//!   *deadline floor* ([`Machine::deadline_floor`]): a lower bound of every live
//!   deadline, raised by `Tick` to the first live one and lowered by every new deadline.
//!   It only decides where scans begin, never what they find, so it is not part of the
//!   replicated state: a replica that does not know it (0) computes the same results.
//! - The waitlist has the same shape (entries are taken from the head and deleted), so
//!   each sale has a *waitlist floor* too ([`Machine::with_wait_floors`]): the sequence after
//!   the last entry taken from the head. Sequences only grow, so nothing live is below
//!   it; a floor above the sale's next sequence is ignored.
//!   Checkout, payment and release recheck deadlines themselves, so correctness never
//!   waits for a tick.
//! - Client commands are idempotent by `(user_id, request_id)`: the first answer is
//!   stored and returned again for a retry; a different command under the same pair is
//!   `request_id_reused`.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::StoreError;
use crate::keys::{self, Deadline};
use crate::kv::{KvRead, Txn};
use crate::limits::*;
use crate::types::*;
use crate::{codec, validate};

macro_rules! reject {
    ($r:expr) => {
        return Ok(Response::Rejected($r))
    };
}

/// The state machine over one transaction (one apply call).
pub struct Machine<'t, 'a, R: KvRead + ?Sized> {
    txn: &'t mut Txn<'a, R>,
    clock_ms: u64,
    next_id: u64,
    touched: BTreeSet<String>,
    /// Every sale this call has read or written, decoded, at its latest version. A flash
    /// sale's batch of 256 reservations touches one sale 256 times; without this each
    /// one decoded the record, re-encoded it and replaced it in the write overlay (in
    /// callgrind, the largest struct decode of the apply path). Writes of a sale go here
    /// only; [`Machine::finish`] encodes each touched sale once into the transaction.
    /// Nothing else in this module reads a sale's key, so the cache cannot go stale; it
    /// holds at most the sales one apply call names (bounded by its commands).
    sales: BTreeMap<String, SaleRecord>,
    report: TickReport,
    /// What the last `Tick` of this call handled, if it ran one ([`Machine::last_tick_work`]).
    last_tick_work: Option<usize>,
    /// No live deadline is earlier than this (see the module docs).
    deadline_floor: u64,
    /// Per sale, no live waitlist entry has a lower sequence (see the module docs).
    wait_floors: BTreeMap<String, u64>,
}

impl<'t, 'a, R: KvRead + ?Sized> Machine<'t, 'a, R> {
    /// Loads the clock and the id counter from the state.
    pub fn load(txn: &'t mut Txn<'a, R>) -> Result<Self, StoreError> {
        let clock_ms = txn.get::<u64>(keys::META_CLOCK)?.unwrap_or(0);
        let next_id = txn.get::<u64>(keys::META_NEXT_ID)?.unwrap_or(1);
        Ok(Machine {
            txn,
            clock_ms,
            next_id,
            touched: BTreeSet::new(),
            sales: BTreeMap::new(),
            report: TickReport::default(),
            last_tick_work: None,
            deadline_floor: 0,
            wait_floors: BTreeMap::new(),
        })
    }

    /// Starts waitlist scans of each sale at its floor. The caller promises that no live
    /// entry of that sale has a lower sequence (an empty map is always true).
    pub fn with_wait_floors(mut self, floors: BTreeMap<String, u64>) -> Self {
        self.wait_floors = floors;
        self
    }

    /// Takes the waitlist floors after this call's writes (raised as entries leave the
    /// head), leaving none.
    pub fn take_wait_floors(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.wait_floors)
    }

    /// Where a scan of `sale`'s live waitlist entries may start.
    fn wait_lo(&self, sale: &SaleRecord) -> Vec<u8> {
        let floor = self
            .wait_floors
            .get(&sale.spec.id)
            .copied()
            .filter(|f| *f <= sale.waitlist_next_seq)
            .unwrap_or(0);
        keys::wait(&sale.spec.id, floor)
    }

    /// Records that the entry `key` was taken from the head of `sale_id`'s waitlist.
    fn took_wait_head(&mut self, sale_id: &str, key: &[u8]) {
        if let Some(seq) = keys::wait_seq(key) {
            let f = self.wait_floors.entry(sale_id.to_string()).or_insert(0);
            *f = (*f).max(seq.saturating_add(1));
        }
    }

    /// Starts deadline scans at `floor`. The caller promises that no live deadline in
    /// the state is earlier (0, the default, is always true).
    pub fn with_deadline_floor(mut self, floor: u64) -> Self {
        self.deadline_floor = floor;
        self
    }

    /// A lower bound of every live deadline after this call's writes: the first live
    /// deadline found by the last `Tick`, lowered by every deadline added since.
    pub fn deadline_floor(&self) -> u64 {
        self.deadline_floor
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// How much the last `Tick` applied by this machine handled, `None` if it applied
    /// none: the due deadlines it took (stale ones included: each still costs a read and
    /// a delete) plus the waitlist entries it dropped or promoted. Only where a replica
    /// runs its next apply call depends on it (`store/sm.rs`, "Where apply runs"), never
    /// the state, so replicas stay identical.
    pub fn last_tick_work(&self) -> Option<usize> {
        self.last_tick_work
    }

    /// Applies one log entry: advances the clock to `at_ms` (never backwards), then runs
    /// the command.
    pub fn apply(&mut self, entry: &LogEntry) -> Result<Response, StoreError> {
        self.advance_clock(entry.at_ms);
        self.apply_command(&entry.cmd, true)
    }

    /// Advances the clock without a command (blank and membership entries carry none).
    pub fn advance_clock(&mut self, at_ms: u64) {
        self.clock_ms = self.clock_ms.max(at_ms);
    }

    /// Writes the clock, the id counter and every sale touched (each once, from the
    /// cache), checking conservation for each.
    /// Returns the reservation gate of every sale touched (the store keeps them for
    /// refusals decided without reading a record).
    pub fn finish(self) -> Result<Vec<(String, crate::query::SaleGate)>, StoreError> {
        self.txn
            .put("clock", keys::META_CLOCK.to_vec(), &self.clock_ms)?;
        self.txn
            .put("next_id", keys::META_NEXT_ID.to_vec(), &self.next_id)?;
        let mut gates = Vec::with_capacity(self.touched.len());
        for id in self.touched {
            let sale = self
                .sales
                .get(&id)
                .ok_or_else(|| StoreError::Invariant(format!("touched sale {id} vanished")))?;
            if !sale.counters.conserves(sale.spec.quantity) {
                return Err(StoreError::Invariant(format!(
                    "sale {id}: {:?} does not add up to quantity {}",
                    sale.counters, sale.spec.quantity
                )));
            }
            self.txn.put("sale", keys::sale(&id), sale)?;
            gates.push((id, crate::query::SaleGate::of(sale)));
        }
        Ok(gates)
    }

    fn apply_command(&mut self, cmd: &Command, top_level: bool) -> Result<Response, StoreError> {
        if let Err(r) = validate::command(cmd) {
            reject!(r);
        }
        match cmd {
            Command::Batch(cmds) => {
                if !top_level {
                    reject!(Reject::invalid("batch", "batches do not nest"));
                }
                let mut out = Vec::with_capacity(cmds.len());
                for c in cmds {
                    out.push(self.apply_command(c, false)?);
                }
                Ok(Response::Batch(out))
            }
            Command::Tick => self.tick(),
            Command::CreateSale(spec) => self.create_sale(spec),
            Command::UpdateSale(spec) => self.update_sale(spec),
            Command::EndSale { sale_id } => self.end_sale(sale_id),
            _ => self.idempotent(cmd),
        }
    }

    // ---- idempotency -------------------------------------------------------------------

    fn idempotent(&mut self, cmd: &Command) -> Result<Response, StoreError> {
        let Some((user_id, request_id)) = cmd.client_key() else {
            return Err(StoreError::Invariant(format!(
                "{} is not a client command",
                cmd.kind()
            )));
        };
        let key = keys::idem(user_id, request_id);
        let fingerprint = codec::fingerprint("command", cmd)?;
        if let Some(rec) = self.txn.get::<IdemRecord>(&key)? {
            if rec.fingerprint == fingerprint {
                return Ok(rec.response);
            }
            reject!(Reject::RequestIdReused);
        }
        let response = self.client_command(cmd)?;
        let rec = IdemRecord {
            fingerprint,
            recorded_at_ms: self.clock_ms,
            response: response.clone(),
        };
        self.txn.put("idempotency record", key, &rec)?;
        let purge_at = self.clock_ms.saturating_add(IDEMPOTENCY_RETENTION_MS);
        let what = Deadline::Idem {
            user_id: user_id.to_string(),
            request_id: request_id.to_string(),
        };
        self.add_deadline(purge_at, &what);
        Ok(response)
    }

    fn client_command(&mut self, cmd: &Command) -> Result<Response, StoreError> {
        match cmd {
            Command::Reserve {
                sale_id,
                user_id,
                qty,
                request_id,
            } => self.reserve(sale_id, user_id, *qty, request_id),
            Command::Release {
                user_id, hold_id, ..
            } => self.release(user_id, *hold_id),
            Command::Checkout {
                user_id,
                hold_id,
                request_id,
            } => self.checkout(user_id, *hold_id, request_id),
            Command::ConfirmPayment {
                user_id,
                order_id,
                amount_minor,
                currency,
                payment_ref,
                ..
            } => self.confirm_payment(user_id, *order_id, *amount_minor, currency, payment_ref),
            Command::FailPayment {
                user_id, order_id, ..
            } => self.fail_payment(user_id, *order_id),
            Command::CancelOrder {
                user_id, order_id, ..
            } => self.cancel_order(user_id, *order_id),
            Command::JoinWaitlist {
                sale_id,
                user_id,
                qty,
                request_id,
            } => self.join_waitlist(sale_id, user_id, *qty, request_id),
            Command::LeaveWaitlist {
                sale_id, user_id, ..
            } => self.leave_waitlist(sale_id, user_id),
            other => Err(StoreError::Invariant(format!(
                "{} is not a client command",
                other.kind()
            ))),
        }
    }

    // ---- sales -------------------------------------------------------------------------

    fn create_sale(&mut self, spec: &SaleSpec) -> Result<Response, StoreError> {
        if let Some(existing) = self.load_sale(&spec.id)? {
            if *existing.spec == *spec {
                return Ok(Response::SaleCreated {
                    sale_id: spec.id.clone(),
                });
            }
            reject!(Reject::SaleExists);
        }
        if spec.ends_at_ms <= self.clock_ms {
            reject!(Reject::invalid("ends_at_ms", "is already in the past"));
        }
        let rec = SaleRecord {
            spec: std::sync::Arc::new(spec.clone()),
            created_at_ms: self.clock_ms,
            ended_early_at_ms: None,
            counters: Counters {
                available: spec.quantity,
                ..Counters::default()
            },
            stats: SaleStats::default(),
            waitlist_next_seq: 0,
            waitlist_len: 0,
        };
        self.add_deadline(spec.ends_at_ms, &Deadline::SaleClose(spec.id.clone()));
        self.save_sale(&rec)?;
        Ok(Response::SaleCreated {
            sale_id: spec.id.clone(),
        })
    }

    fn update_sale(&mut self, spec: &SaleSpec) -> Result<Response, StoreError> {
        let Some(mut rec) = self.load_sale(&spec.id)? else {
            reject!(Reject::SaleNotFound)
        };
        if rec.has_ended(self.clock_ms) {
            reject!(Reject::SaleEnded);
        }
        if rec.has_started(self.clock_ms) {
            reject!(Reject::SaleAlreadyStarted);
        }
        if spec.ends_at_ms <= self.clock_ms {
            reject!(Reject::invalid("ends_at_ms", "is already in the past"));
        }
        if rec.counters.available != rec.spec.quantity || rec.waitlist_len != 0 {
            return Err(StoreError::Invariant(format!(
                "sale {} has activity before it started",
                spec.id
            )));
        }
        self.remove_deadline(rec.spec.ends_at_ms, &Deadline::SaleClose(spec.id.clone()));
        self.add_deadline(spec.ends_at_ms, &Deadline::SaleClose(spec.id.clone()));
        rec.spec = std::sync::Arc::new(spec.clone());
        rec.counters = Counters {
            available: spec.quantity,
            ..Counters::default()
        };
        self.save_sale(&rec)?;
        Ok(Response::SaleUpdated {
            sale_id: spec.id.clone(),
        })
    }

    fn end_sale(&mut self, sale_id: &str) -> Result<Response, StoreError> {
        let Some(mut rec) = self.load_sale(sale_id)? else {
            reject!(Reject::SaleNotFound)
        };
        if rec.has_ended(self.clock_ms) {
            return Ok(Response::SaleEnded {
                sale_id: sale_id.to_string(),
                ended_at_ms: rec.ends_at_ms(),
            });
        }
        self.remove_deadline(
            rec.spec.ends_at_ms,
            &Deadline::SaleClose(sale_id.to_string()),
        );
        self.add_deadline(self.clock_ms, &Deadline::SaleClose(sale_id.to_string()));
        rec.ended_early_at_ms = Some(self.clock_ms);
        self.save_sale(&rec)?;
        Ok(Response::SaleEnded {
            sale_id: sale_id.to_string(),
            ended_at_ms: self.clock_ms,
        })
    }

    // ---- holds -------------------------------------------------------------------------

    fn reserve(
        &mut self,
        sale_id: &str,
        user_id: &str,
        qty: u32,
        request_id: &str,
    ) -> Result<Response, StoreError> {
        let Some(mut sale) = self.load_sale(sale_id)? else {
            reject!(Reject::SaleNotFound)
        };
        // Ended wins over not-started: a sale ended before its start never opens.
        if sale.has_ended(self.clock_ms) {
            reject!(Reject::SaleEnded);
        }
        if !sale.has_started(self.clock_ms) {
            reject!(Reject::SaleNotStarted {
                starts_at_ms: sale.spec.starts_at_ms
            });
        }
        let reservable = sale.reservable();
        if reservable == 0 {
            reject!(Reject::SoldOut);
        }
        if reservable < qty {
            reject!(Reject::InsufficientStock {
                available: reservable
            });
        }
        let mut user = self.load_user(sale_id, user_id)?;
        if u64::from(user.used()) + u64::from(qty) > u64::from(sale.spec.per_user_limit) {
            reject!(Reject::LimitExceeded {
                limit: sale.spec.per_user_limit,
                used: user.used()
            });
        }
        if user.live_holds >= HOLDS_PER_USER_MAX {
            reject!(Reject::TooManyHolds {
                max: HOLDS_PER_USER_MAX
            });
        }
        let grant = self.grant_hold(&mut sale, &mut user, user_id, qty, false, request_id)?;
        self.save_user(&sale, user_id, &user)?;
        self.save_sale(&sale)?;
        Ok(Response::Held(grant))
    }

    fn grant_hold(
        &mut self,
        sale: &mut SaleRecord,
        user: &mut UserSaleRecord,
        user_id: &str,
        qty: u32,
        from_waitlist: bool,
        request_id: &str,
    ) -> Result<HoldGrant, StoreError> {
        let id = self.next_id();
        let expires_at_ms = self.clock_ms.saturating_add(sale.spec.hold_ttl_ms);
        let c = &mut sale.counters;
        c.available = c.available.checked_sub(qty).ok_or_else(|| {
            StoreError::Invariant(format!(
                "sale {}: hold of {qty} above available",
                sale.spec.id
            ))
        })?;
        c.held += qty;
        user.held += qty;
        user.live_holds += 1;
        sale.stats.holds_granted += 1;
        sale.stats.units_reserved += u64::from(qty);
        if c.available == 0 && sale.stats.sold_out_at_ms.is_none() {
            sale.stats.sold_out_at_ms = Some(self.clock_ms);
        }
        let hold = HoldRecord {
            id,
            sale_id: sale.spec.id.clone(),
            user_id: user_id.to_string(),
            qty,
            created_at_ms: self.clock_ms,
            expires_at_ms,
            from_waitlist,
            state: HoldState::Active,
            request_id: request_id.to_string(),
        };
        self.txn.put("hold", keys::hold(id), &hold)?;
        self.txn.put_raw(keys::user_hold(user_id, id), Vec::new());
        self.add_deadline(expires_at_ms, &Deadline::Hold(id));
        Ok(HoldGrant {
            hold_id: id,
            sale_id: sale.spec.id.clone(),
            qty,
            expires_at_ms,
        })
    }

    /// Loads a hold the caller owns and that is still active, or says why not.
    fn owned_active_hold(
        &self,
        user_id: &str,
        hold_id: u64,
    ) -> Result<Result<HoldRecord, Reject>, StoreError> {
        let Some(hold) = self.txn.get::<HoldRecord>(&keys::hold(hold_id))? else {
            return Ok(Err(Reject::HoldNotFound));
        };
        if hold.user_id != user_id {
            return Ok(Err(Reject::NotOwner));
        }
        if hold.state != HoldState::Active {
            return Ok(Err(Reject::HoldNotActive { state: hold.state }));
        }
        Ok(Ok(hold))
    }

    fn release(&mut self, user_id: &str, hold_id: u64) -> Result<Response, StoreError> {
        let hold = match self.owned_active_hold(user_id, hold_id)? {
            Ok(h) => h,
            Err(r) => reject!(r),
        };
        let mut sale = self.sale_of(&hold.sale_id)?;
        if self.clock_ms >= hold.expires_at_ms {
            self.expire_hold(&mut sale, hold)?;
            self.save_sale(&sale)?;
            reject!(Reject::HoldExpired);
        }
        self.end_hold(
            &mut sale,
            hold,
            HoldState::Released {
                at_ms: self.clock_ms,
            },
        )?;
        sale.stats.holds_released += 1;
        self.handoff(&mut sale)?;
        self.save_sale(&sale)?;
        Ok(Response::Released { hold_id })
    }

    fn expire_hold(&mut self, sale: &mut SaleRecord, hold: HoldRecord) -> Result<(), StoreError> {
        self.end_hold(
            sale,
            hold,
            HoldState::Expired {
                at_ms: self.clock_ms,
            },
        )?;
        sale.stats.holds_expired += 1;
        self.report.holds_expired += 1;
        self.handoff(sale)
    }

    /// Returns a live hold's units to `available` (the caller runs the hand-off).
    fn end_hold(
        &mut self,
        sale: &mut SaleRecord,
        mut hold: HoldRecord,
        state: HoldState,
    ) -> Result<(), StoreError> {
        let q = hold.qty;
        let c = &mut sale.counters;
        c.held = c
            .held
            .checked_sub(q)
            .ok_or_else(|| underflow(&sale.spec.id, "held"))?;
        c.available += q;
        let mut user = self.load_user(&hold.sale_id, &hold.user_id)?;
        user.held = user
            .held
            .checked_sub(q)
            .ok_or_else(|| underflow(&hold.user_id, "user held"))?;
        user.live_holds = user.live_holds.saturating_sub(1);
        self.save_user(sale, &hold.user_id, &user)?;
        self.remove_deadline(hold.expires_at_ms, &Deadline::Hold(hold.id));
        hold.state = state;
        self.txn.put("hold", keys::hold(hold.id), &hold)
    }

    fn checkout(
        &mut self,
        user_id: &str,
        hold_id: u64,
        request_id: &str,
    ) -> Result<Response, StoreError> {
        let mut hold = match self.owned_active_hold(user_id, hold_id)? {
            Ok(h) => h,
            Err(r) => reject!(r),
        };
        let mut sale = self.sale_of(&hold.sale_id)?;
        if self.clock_ms >= hold.expires_at_ms {
            self.expire_hold(&mut sale, hold)?;
            self.save_sale(&sale)?;
            reject!(Reject::HoldExpired);
        }
        let q = hold.qty;
        let order_id = self.next_id();
        let amount_minor = sale
            .spec
            .sale_price_minor
            .checked_mul(u64::from(q))
            .ok_or_else(|| {
                StoreError::Invariant(format!("order amount overflows for sale {}", sale.spec.id))
            })?;
        let mut user = self.load_user(&hold.sale_id, user_id)?;
        sale.counters.held = sale
            .counters
            .held
            .checked_sub(q)
            .ok_or_else(|| underflow(&sale.spec.id, "held"))?;
        user.held = user
            .held
            .checked_sub(q)
            .ok_or_else(|| underflow(user_id, "user held"))?;
        user.live_holds = user.live_holds.saturating_sub(1);
        let (status, pay_by_ms) = if sale.spec.payment_window_ms == 0 {
            self.mark_sold(&mut sale, &mut user, q);
            (OrderStatus::Confirmed, None)
        } else {
            sale.counters.awaiting_payment += q;
            user.awaiting_payment += q;
            let pay_by = self.clock_ms.saturating_add(sale.spec.payment_window_ms);
            self.add_deadline(pay_by, &Deadline::Order(order_id));
            (OrderStatus::AwaitingPayment, Some(pay_by))
        };
        sale.stats.checkouts += 1;
        self.remove_deadline(hold.expires_at_ms, &Deadline::Hold(hold.id));
        hold.state = HoldState::CheckedOut { order_id };
        self.txn.put("hold", keys::hold(hold.id), &hold)?;
        let order = OrderRecord {
            id: order_id,
            sale_id: hold.sale_id.clone(),
            user_id: user_id.to_string(),
            hold_id,
            qty: q,
            amount_minor,
            currency: sale.spec.currency.clone(),
            created_at_ms: self.clock_ms,
            pay_by_ms,
            status,
            request_id: request_id.to_string(),
        };
        self.txn.put("order", keys::order(order_id), &order)?;
        self.txn
            .put_raw(keys::user_order(user_id, order_id), Vec::new());
        self.save_user(&sale, user_id, &user)?;
        self.save_sale(&sale)?;
        Ok(Response::CheckedOut(order.info()))
    }

    fn mark_sold(&mut self, sale: &mut SaleRecord, user: &mut UserSaleRecord, q: u32) {
        sale.counters.sold += q;
        user.bought += q;
        if !user.counted_as_buyer {
            user.counted_as_buyer = true;
            sale.stats.unique_buyers += 1;
        }
        if sale.counters.sold == sale.spec.quantity && sale.stats.fully_sold_at_ms.is_none() {
            sale.stats.fully_sold_at_ms = Some(self.clock_ms);
        }
    }

    // ---- orders ------------------------------------------------------------------------

    fn owned_order(
        &self,
        user_id: &str,
        order_id: u64,
    ) -> Result<Result<OrderRecord, Reject>, StoreError> {
        let Some(order) = self.txn.get::<OrderRecord>(&keys::order(order_id))? else {
            return Ok(Err(Reject::OrderNotFound));
        };
        if order.user_id != user_id {
            return Ok(Err(Reject::NotOwner));
        }
        Ok(Ok(order))
    }

    fn confirm_payment(
        &mut self,
        user_id: &str,
        order_id: u64,
        amount_minor: u64,
        currency: &str,
        payment_ref: &str,
    ) -> Result<Response, StoreError> {
        let mut order = match self.owned_order(user_id, order_id)? {
            Ok(o) => o,
            Err(r) => reject!(r),
        };
        if let Some(paid_order) = self.txn.get::<u64>(&keys::payref(payment_ref))? {
            let same = paid_order == order_id
                && matches!(&order.status, OrderStatus::Paid { payment_ref: r, .. } if r == payment_ref);
            if same {
                return Ok(Response::Paid { order_id });
            }
            reject!(Reject::PaymentRefConflict);
        }
        if order.status != OrderStatus::AwaitingPayment {
            reject!(Reject::OrderNotAwaitingPayment {
                status: order.status
            });
        }
        let mut sale = self.sale_of(&order.sale_id)?;
        if self.payment_window_passed(&order) {
            self.time_out_order(&mut sale, order)?;
            self.save_sale(&sale)?;
            reject!(Reject::PaymentWindowExpired);
        }
        if amount_minor != order.amount_minor || currency != order.currency {
            reject!(Reject::AmountMismatch {
                expected_minor: order.amount_minor,
                currency: order.currency
            });
        }
        let q = order.qty;
        let mut user = self.load_user(&order.sale_id, user_id)?;
        sale.counters.awaiting_payment = sale
            .counters
            .awaiting_payment
            .checked_sub(q)
            .ok_or_else(|| underflow(&sale.spec.id, "awaiting"))?;
        user.awaiting_payment = user
            .awaiting_payment
            .checked_sub(q)
            .ok_or_else(|| underflow(user_id, "user awaiting"))?;
        self.mark_sold(&mut sale, &mut user, q);
        sale.stats.orders_paid += 1;
        if let Some(pay_by) = order.pay_by_ms {
            self.remove_deadline(pay_by, &Deadline::Order(order_id));
        }
        order.status = OrderStatus::Paid {
            payment_ref: payment_ref.to_string(),
            at_ms: self.clock_ms,
        };
        self.txn.put("order", keys::order(order_id), &order)?;
        self.txn
            .put("payment ref", keys::payref(payment_ref), &order_id)?;
        self.save_user(&sale, user_id, &user)?;
        self.save_sale(&sale)?;
        Ok(Response::Paid { order_id })
    }

    fn payment_window_passed(&self, order: &OrderRecord) -> bool {
        order.pay_by_ms.is_some_and(|t| self.clock_ms >= t)
    }

    fn fail_payment(&mut self, user_id: &str, order_id: u64) -> Result<Response, StoreError> {
        let order = match self.owned_order(user_id, order_id)? {
            Ok(o) => o,
            Err(r) => reject!(r),
        };
        if order.status != OrderStatus::AwaitingPayment {
            reject!(Reject::OrderNotAwaitingPayment {
                status: order.status
            });
        }
        let mut sale = self.sale_of(&order.sale_id)?;
        if self.payment_window_passed(&order) {
            self.time_out_order(&mut sale, order)?;
            self.save_sale(&sale)?;
            reject!(Reject::PaymentWindowExpired);
        }
        self.cancel_units(&mut sale, order, CancelReason::PaymentFailed)?;
        self.save_sale(&sale)?;
        Ok(Response::PaymentFailed { order_id })
    }

    fn cancel_order(&mut self, user_id: &str, order_id: u64) -> Result<Response, StoreError> {
        let order = match self.owned_order(user_id, order_id)? {
            Ok(o) => o,
            Err(r) => reject!(r),
        };
        match order.status {
            OrderStatus::AwaitingPayment | OrderStatus::Confirmed => {}
            status => reject!(Reject::OrderNotCancellable { status }),
        }
        let mut sale = self.sale_of(&order.sale_id)?;
        if self.payment_window_passed(&order) {
            self.time_out_order(&mut sale, order)?;
            self.save_sale(&sale)?;
            reject!(Reject::PaymentWindowExpired);
        }
        self.cancel_units(&mut sale, order, CancelReason::ByUser)?;
        self.save_sale(&sale)?;
        Ok(Response::Cancelled { order_id })
    }

    fn time_out_order(
        &mut self,
        sale: &mut SaleRecord,
        order: OrderRecord,
    ) -> Result<(), StoreError> {
        sale.stats.orders_timed_out += 1;
        self.report.orders_expired += 1;
        self.cancel_units(sale, order, CancelReason::PaymentTimeout)
    }

    /// Cancels an order that is awaiting payment or confirmed (cash on delivery), returns
    /// its units and runs the hand-off.
    fn cancel_units(
        &mut self,
        sale: &mut SaleRecord,
        mut order: OrderRecord,
        reason: CancelReason,
    ) -> Result<(), StoreError> {
        let q = order.qty;
        let mut user = self.load_user(&order.sale_id, &order.user_id)?;
        match order.status {
            OrderStatus::AwaitingPayment => {
                let c = &mut sale.counters;
                c.awaiting_payment = c
                    .awaiting_payment
                    .checked_sub(q)
                    .ok_or_else(|| underflow(&order.sale_id, "awaiting"))?;
                user.awaiting_payment = user
                    .awaiting_payment
                    .checked_sub(q)
                    .ok_or_else(|| underflow(&order.user_id, "user awaiting"))?;
                if let Some(pay_by) = order.pay_by_ms {
                    self.remove_deadline(pay_by, &Deadline::Order(order.id));
                }
            }
            OrderStatus::Confirmed => {
                let c = &mut sale.counters;
                c.sold = c
                    .sold
                    .checked_sub(q)
                    .ok_or_else(|| underflow(&order.sale_id, "sold"))?;
                user.bought = user
                    .bought
                    .checked_sub(q)
                    .ok_or_else(|| underflow(&order.user_id, "user bought"))?;
            }
            ref other => {
                return Err(StoreError::Invariant(format!(
                    "cancel of order {} in state {}",
                    order.id,
                    other.name()
                )))
            }
        }
        sale.counters.available += q;
        sale.stats.orders_cancelled += 1;
        order.status = OrderStatus::Cancelled {
            reason,
            at_ms: self.clock_ms,
        };
        self.txn.put("order", keys::order(order.id), &order)?;
        self.save_user(sale, &order.user_id, &user)?;
        self.handoff(sale)
    }

    // ---- waitlist ----------------------------------------------------------------------

    fn join_waitlist(
        &mut self,
        sale_id: &str,
        user_id: &str,
        qty: u32,
        request_id: &str,
    ) -> Result<Response, StoreError> {
        let Some(mut sale) = self.load_sale(sale_id)? else {
            reject!(Reject::SaleNotFound)
        };
        // Ended wins over not-started: a sale ended before its start never opens.
        if sale.has_ended(self.clock_ms) {
            reject!(Reject::SaleEnded);
        }
        if !sale.has_started(self.clock_ms) {
            reject!(Reject::SaleNotStarted {
                starts_at_ms: sale.spec.starts_at_ms
            });
        }
        if let Some(WaitState::Waiting { seq }) = self
            .txn
            .get::<WaitState>(&keys::wait_user(sale_id, user_id))?
        {
            let position = self.waitlist_position(&sale, seq)?;
            reject!(Reject::AlreadyWaitlisted { position });
        }
        let reservable = sale.reservable();
        if reservable > 0 {
            reject!(Reject::NotSoldOut {
                available: reservable
            });
        }
        let user = self.load_user(sale_id, user_id)?;
        if u64::from(user.used()) + u64::from(qty) > u64::from(sale.spec.per_user_limit) {
            reject!(Reject::LimitExceeded {
                limit: sale.spec.per_user_limit,
                used: user.used()
            });
        }
        if sale.waitlist_len >= WAITLIST_LEN_MAX {
            reject!(Reject::WaitlistFull {
                max: WAITLIST_LEN_MAX
            });
        }
        let seq = sale.waitlist_next_seq;
        sale.waitlist_next_seq += 1;
        sale.waitlist_len += 1;
        sale.stats.waitlist_joined += 1;
        let entry = WaitEntry {
            user_id: user_id.to_string(),
            qty,
            joined_at_ms: self.clock_ms,
            request_id: request_id.to_string(),
        };
        self.txn
            .put("waitlist entry", keys::wait(sale_id, seq), &entry)?;
        self.txn.put(
            "waitlist user",
            keys::wait_user(sale_id, user_id),
            &WaitState::Waiting { seq },
        )?;
        let position = sale.waitlist_len;
        self.save_sale(&sale)?;
        Ok(Response::WaitlistJoined {
            sale_id: sale_id.to_string(),
            position,
        })
    }

    fn leave_waitlist(&mut self, sale_id: &str, user_id: &str) -> Result<Response, StoreError> {
        let Some(mut sale) = self.load_sale(sale_id)? else {
            reject!(Reject::SaleNotFound)
        };
        let Some(WaitState::Waiting { seq }) = self
            .txn
            .get::<WaitState>(&keys::wait_user(sale_id, user_id))?
        else {
            reject!(Reject::NotWaitlisted);
        };
        self.txn.delete(keys::wait(sale_id, seq));
        self.txn.delete(keys::wait_user(sale_id, user_id));
        sale.waitlist_len = sale
            .waitlist_len
            .checked_sub(1)
            .ok_or_else(|| underflow(sale_id, "waitlist"))?;
        self.save_sale(&sale)?;
        Ok(Response::WaitlistLeft {
            sale_id: sale_id.to_string(),
        })
    }

    /// 1-based position of the entry with sequence `seq` (bounded by `WAITLIST_LEN_MAX`).
    fn waitlist_position(&self, sale: &SaleRecord, seq: u64) -> Result<u32, StoreError> {
        let lo = self.wait_lo(sale);
        let ahead = self
            .txn
            .scan(
                &lo,
                &keys::wait(&sale.spec.id, seq),
                WAITLIST_LEN_MAX as usize,
            )?
            .len();
        Ok(u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1))
    }

    /// Gives available units to the head of the waitlist, in order, while the sale is open.
    /// At most `HANDOFF_STEPS_MAX` entries per call; the rest continues at the next tick.
    fn handoff(&mut self, sale: &mut SaleRecord) -> Result<(), StoreError> {
        if !sale.is_open(self.clock_ms) {
            return Ok(());
        }
        let sale_id = sale.spec.id.clone();
        let (_, hi) = keys::wait_range(&sale_id);
        let mut steps = 0;
        while sale.waitlist_len > 0 && sale.counters.available > 0 {
            if steps == HANDOFF_STEPS_MAX {
                self.add_deadline(self.clock_ms, &Deadline::Handoff(sale_id.clone()));
                break;
            }
            steps += 1;
            let lo = self.wait_lo(sale);
            let Some((key, bytes)) = self.txn.scan(&lo, &hi, 1)?.into_iter().next() else {
                return Err(StoreError::Invariant(format!(
                    "sale {sale_id}: waitlist_len > 0 but no entry"
                )));
            };
            let entry: WaitEntry = codec::decode(&key, &bytes)?;
            self.took_wait_head(&sale_id, &key);
            self.txn.delete(key);
            sale.waitlist_len -= 1;
            let mut user = self.load_user(&sale_id, &entry.user_id)?;
            let room = sale.spec.per_user_limit.saturating_sub(user.used());
            let want = entry.qty.min(room);
            if want == 0 || user.live_holds >= HOLDS_PER_USER_MAX {
                self.txn.delete(keys::wait_user(&sale_id, &entry.user_id));
                self.report.waitlist_dropped += 1;
                continue;
            }
            let qty = want.min(sale.counters.available);
            let grant = self.grant_hold(
                sale,
                &mut user,
                &entry.user_id,
                qty,
                true,
                &entry.request_id,
            )?;
            self.save_user(sale, &entry.user_id, &user)?;
            let promoted = WaitState::Promoted {
                hold_id: grant.hold_id,
            };
            self.txn.put(
                "waitlist user",
                keys::wait_user(&sale_id, &entry.user_id),
                &promoted,
            )?;
            sale.stats.waitlist_promoted += 1;
            self.report.waitlist_promoted += 1;
        }
        Ok(())
    }

    /// Drops up to `budget` entries of a closed sale's waitlist; true if it is now empty.
    fn drop_waitlist(&mut self, sale: &mut SaleRecord, budget: u32) -> Result<bool, StoreError> {
        let (_, hi) = keys::wait_range(&sale.spec.id);
        let lo = self.wait_lo(sale);
        for (key, bytes) in self.txn.scan(&lo, &hi, budget as usize)? {
            let entry: WaitEntry = codec::decode(&key, &bytes)?;
            self.took_wait_head(&sale.spec.id, &key);
            self.txn.delete(key);
            self.txn
                .delete(keys::wait_user(&sale.spec.id, &entry.user_id));
            sale.waitlist_len = sale.waitlist_len.saturating_sub(1);
            self.report.waitlist_dropped += 1;
        }
        Ok(sale.waitlist_len == 0)
    }

    // ---- time --------------------------------------------------------------------------

    fn tick(&mut self) -> Result<Response, StoreError> {
        self.report = TickReport::default();
        let (lo, hi) = keys::deadlines_due(self.deadline_floor, self.clock_ms);
        let due = self.txn.scan(&lo, &hi, TICK_EXPIRE_BATCH_MAX as usize)?;
        let scanned = due.len();
        for (key, _) in due {
            let Some((_, what)) = keys::parse_deadline(&key) else {
                return Err(StoreError::Corrupt {
                    key: keys::display(&key),
                    reason: "bad deadline key".into(),
                });
            };
            self.txn.delete(key);
            self.run_deadline(what)?;
        }
        let mut report = std::mem::take(&mut self.report);
        self.last_tick_work =
            Some(scanned + report.waitlist_dropped as usize + report.waitlist_promoted as usize);
        // Handling a deadline may add one (a sale close retried, a hand-off), possibly
        // below where this scan began: look again from the floor as it is now.
        let (lo, hi) = keys::deadlines_due(self.deadline_floor, self.clock_ms);
        report.more_due = !self.txn.scan(&lo, &hi, 1)?.is_empty();
        let (_, all_hi) = keys::tag_range(keys::DEADLINE);
        report.next_deadline_ms = self
            .txn
            .scan(&lo, &all_hi, 1)?
            .first()
            .and_then(|(k, _)| keys::parse_deadline(k))
            .map(|(at, _)| at);
        // Every deadline before the first live one is handled: later scans start there.
        // With none left, the clock will do (any deadline added later lowers the floor).
        self.deadline_floor = report.next_deadline_ms.unwrap_or(self.clock_ms);
        Ok(Response::Ticked(report))
    }

    fn run_deadline(&mut self, what: Deadline) -> Result<(), StoreError> {
        match what {
            Deadline::Hold(id) => {
                let Some(hold) = self.txn.get::<HoldRecord>(&keys::hold(id))? else {
                    return Ok(());
                };
                if hold.state == HoldState::Active && hold.expires_at_ms <= self.clock_ms {
                    let mut sale = self.sale_of(&hold.sale_id)?;
                    self.expire_hold(&mut sale, hold)?;
                    self.save_sale(&sale)?;
                }
            }
            Deadline::Order(id) => {
                let Some(order) = self.txn.get::<OrderRecord>(&keys::order(id))? else {
                    return Ok(());
                };
                if order.status == OrderStatus::AwaitingPayment
                    && self.payment_window_passed(&order)
                {
                    let mut sale = self.sale_of(&order.sale_id)?;
                    self.time_out_order(&mut sale, order)?;
                    self.save_sale(&sale)?;
                }
            }
            Deadline::Idem {
                user_id,
                request_id,
            } => {
                let key = keys::idem(&user_id, &request_id);
                if let Some(rec) = self.txn.get::<IdemRecord>(&key)? {
                    if rec.recorded_at_ms.saturating_add(IDEMPOTENCY_RETENTION_MS) <= self.clock_ms
                    {
                        self.txn.delete(key);
                        self.report.records_purged += 1;
                    }
                }
            }
            Deadline::SaleClose(sale_id) => {
                let Some(mut sale) = self.load_sale(&sale_id)? else {
                    return Ok(());
                };
                if sale.has_ended(self.clock_ms) {
                    if !self.drop_waitlist(&mut sale, TICK_EXPIRE_BATCH_MAX)? {
                        self.add_deadline(self.clock_ms, &Deadline::SaleClose(sale_id));
                    }
                    self.save_sale(&sale)?;
                }
            }
            Deadline::Handoff(sale_id) => {
                let Some(mut sale) = self.load_sale(&sale_id)? else {
                    return Ok(());
                };
                self.handoff(&mut sale)?;
                self.save_sale(&sale)?;
            }
        }
        Ok(())
    }

    fn add_deadline(&mut self, at_ms: u64, what: &Deadline) {
        self.deadline_floor = self.deadline_floor.min(at_ms);
        self.txn.put_raw(keys::deadline(at_ms, what), Vec::new());
    }

    fn remove_deadline(&mut self, at_ms: u64, what: &Deadline) {
        self.txn.delete(keys::deadline(at_ms, what));
    }

    // ---- records -----------------------------------------------------------------------

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The sale's latest version in this call: from the cache, else decoded from the
    /// transaction once (a copy is cheap: the spec is shared).
    fn load_sale(&mut self, id: &str) -> Result<Option<SaleRecord>, StoreError> {
        if let Some(rec) = self.sales.get(id) {
            return Ok(Some(rec.clone()));
        }
        let rec: Option<SaleRecord> = self.txn.get(&keys::sale(id))?;
        if let Some(r) = &rec {
            self.sales.insert(id.to_string(), r.clone());
        }
        Ok(rec)
    }

    /// The sale a hold or order points at; its absence is corruption.
    fn sale_of(&mut self, id: &str) -> Result<SaleRecord, StoreError> {
        self.load_sale(id)?
            .ok_or_else(|| StoreError::Invariant(format!("sale {id} referenced but missing")))
    }

    /// Records the sale's new version; [`Machine::finish`] writes it.
    fn save_sale(&mut self, rec: &SaleRecord) -> Result<(), StoreError> {
        let id = &rec.spec.id;
        if !self.touched.contains(id) {
            self.touched.insert(id.clone());
        }
        match self.sales.get_mut(id) {
            Some(slot) => slot.clone_from(rec),
            None => {
                self.sales.insert(id.clone(), rec.clone());
            }
        }
        Ok(())
    }

    fn load_user(&self, sale_id: &str, user_id: &str) -> Result<UserSaleRecord, StoreError> {
        Ok(self
            .txn
            .get(&keys::user_sale(sale_id, user_id))?
            .unwrap_or_default())
    }

    /// Saves a user's units on a sale (deleting the record when it is all zero), checking
    /// the per-user limit as the second half of the pair the reserve path checks first.
    fn save_user(
        &mut self,
        sale: &SaleRecord,
        user_id: &str,
        rec: &UserSaleRecord,
    ) -> Result<(), StoreError> {
        if rec.used() > sale.spec.per_user_limit {
            return Err(StoreError::Invariant(format!(
                "user {user_id} has {} units of sale {} above its limit {}",
                rec.used(),
                sale.spec.id,
                sale.spec.per_user_limit
            )));
        }
        let key = keys::user_sale(&sale.spec.id, user_id);
        if *rec == UserSaleRecord::default() {
            self.txn.delete(key);
            Ok(())
        } else {
            self.txn.put("user sale record", key, rec)
        }
    }
}

fn underflow(what: &str, counter: &str) -> StoreError {
    StoreError::Invariant(format!("{what}: {counter} would go below zero"))
}

/// Applies one entry to an in-memory state: the reference replay used by tests, models
/// and audits. Runs exactly the code the RocksDB store runs.
pub fn apply_to_mem(
    state: &mut crate::kv::MemKv,
    entry: &LogEntry,
) -> Result<Response, StoreError> {
    let mut txn = Txn::new(&*state);
    let response = {
        let mut machine = Machine::load(&mut txn)?;
        let r = machine.apply(entry)?;
        machine.finish()?;
        r
    };
    let writes = txn.into_writes();
    crate::kv::commit_to_mem(state, writes);
    Ok(response)
}
