//! Read-side views of the state machine, for the API and the ticker.
//!
//! These read a [`KvRead`] view (the live column family, or a test's `MemKv`) and never
//! write. Which replica, and how fresh, is the caller's choice (read levels live in the
//! node); what a view means is defined here once.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::StoreError;
use crate::keys;
use crate::kv::KvRead;
use crate::types::*;

fn get<T: serde::de::DeserializeOwned>(
    kv: &(impl KvRead + ?Sized),
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match kv.get(key)? {
        Some(bytes) => Ok(Some(codec::decode(key, &bytes)?)),
        None => Ok(None),
    }
}

/// The state machine's clock: the largest `at_ms` applied so far.
pub fn clock_ms(kv: &(impl KvRead + ?Sized)) -> Result<u64, StoreError> {
    Ok(get::<u64>(kv, keys::META_CLOCK)?.unwrap_or(0))
}

/// A sale as clients see it: spec, live counters, derived status and statistics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SaleView {
    pub spec: SaleSpec,
    pub status: SaleStatus,
    pub counters: Counters,
    pub stats: SaleStats,
    pub waitlist_len: u32,
    pub ended_early_at_ms: Option<u64>,
    /// The clock the status was derived at.
    pub as_of_ms: u64,
}

impl SaleView {
    fn new(rec: SaleRecord, clock: u64) -> Self {
        SaleView {
            status: rec.status(clock),
            counters: rec.counters,
            waitlist_len: rec.waitlist_len,
            ended_early_at_ms: rec.ended_early_at_ms,
            stats: rec.stats,
            spec: std::sync::Arc::unwrap_or_clone(rec.spec),
            as_of_ms: clock,
        }
    }
}

pub fn sale(kv: &(impl KvRead + ?Sized), id: &str) -> Result<Option<SaleView>, StoreError> {
    let clock = clock_ms(kv)?;
    Ok(get::<SaleRecord>(kv, &keys::sale(id))?.map(|r| SaleView::new(r, clock)))
}

/// Sales in id order, starting after `after`, at most `limit`.
pub fn sales(
    kv: &(impl KvRead + ?Sized),
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<SaleView>, StoreError> {
    let clock = clock_ms(kv)?;
    let (lo, hi) = keys::tag_range(keys::SALE);
    let lo = match after {
        Some(a) => keys::prefix_end(&keys::sale(a)),
        None => lo,
    };
    kv.scan(&lo, &hi, limit)?
        .into_iter()
        .map(|(k, v)| Ok(SaleView::new(codec::decode(&k, &v)?, clock)))
        .collect()
}

pub fn hold(kv: &(impl KvRead + ?Sized), id: u64) -> Result<Option<HoldRecord>, StoreError> {
    get(kv, &keys::hold(id))
}

pub fn order(kv: &(impl KvRead + ?Sized), id: u64) -> Result<Option<OrderRecord>, StoreError> {
    get(kv, &keys::order(id))
}

/// A user's holds (every state), in id order after `after_id`, at most `limit`.
pub fn user_holds(
    kv: &(impl KvRead + ?Sized),
    user_id: &str,
    after_id: Option<u64>,
    limit: usize,
) -> Result<Vec<HoldRecord>, StoreError> {
    user_index(kv, keys::USER_HOLD, user_id, after_id, limit, |id| {
        hold(kv, id)
    })
}

/// A user's orders, in id order after `after_id`, at most `limit`.
pub fn user_orders(
    kv: &(impl KvRead + ?Sized),
    user_id: &str,
    after_id: Option<u64>,
    limit: usize,
) -> Result<Vec<OrderRecord>, StoreError> {
    user_index(kv, keys::USER_ORDER, user_id, after_id, limit, |id| {
        order(kv, id)
    })
}

fn user_index<T>(
    kv: &(impl KvRead + ?Sized),
    tag: u8,
    user_id: &str,
    after_id: Option<u64>,
    limit: usize,
    load: impl Fn(u64) -> Result<Option<T>, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let (lo, hi) = keys::user_index_range(tag, user_id);
    let lo = match after_id.and_then(|a| a.checked_add(1)) {
        Some(next) => {
            let mut k = lo.clone();
            k.extend_from_slice(&next.to_be_bytes());
            k
        }
        None if after_id.is_some() => return Ok(Vec::new()),
        None => lo,
    };
    let mut out = Vec::new();
    for (k, _) in kv.scan(&lo, &hi, limit)? {
        let id = keys::parse_trailing_id(&k).ok_or_else(|| StoreError::Corrupt {
            key: keys::display(&k),
            reason: "bad index key".into(),
        })?;
        let rec = load(id)?.ok_or_else(|| {
            StoreError::Invariant(format!(
                "index {} points at a missing record",
                keys::display(&k)
            ))
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Where a user stands on a sale's waitlist.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WaitlistStatus {
    NotWaitlisted,
    Waiting {
        position: u32,
        qty: u32,
    },
    /// Units came back and became this hold (see `hold`).
    Promoted {
        hold_id: u64,
    },
}

pub fn waitlist_status(
    kv: &(impl KvRead + ?Sized),
    sale_id: &str,
    user_id: &str,
) -> Result<WaitlistStatus, StoreError> {
    match get::<WaitState>(kv, &keys::wait_user(sale_id, user_id))? {
        None => Ok(WaitlistStatus::NotWaitlisted),
        Some(WaitState::Promoted { hold_id }) => Ok(WaitlistStatus::Promoted { hold_id }),
        Some(WaitState::Waiting { seq }) => {
            let key = keys::wait(sale_id, seq);
            let entry: WaitEntry = get(kv, &key)?.ok_or_else(|| {
                StoreError::Invariant(format!("waitlist user {user_id} without entry"))
            })?;
            let (lo, _) = keys::wait_range(sale_id);
            let ahead = kv
                .scan(&lo, &key, crate::limits::WAITLIST_LEN_MAX as usize)?
                .len();
            Ok(WaitlistStatus::Waiting {
                position: u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1),
                qty: entry.qty,
            })
        }
    }
}

/// The earliest pending deadline (the ticker sleeps until then; an idle cluster writes
/// nothing).
pub fn next_deadline_ms(kv: &(impl KvRead + ?Sized)) -> Result<Option<u64>, StoreError> {
    next_deadline_ms_from(kv, 0)
}

/// [`next_deadline_ms`] for a caller that knows no live deadline is before `floor_ms`
/// (the store's deadline floor): the scan skips the deleted ones before it.
pub fn next_deadline_ms_from(
    kv: &(impl KvRead + ?Sized),
    floor_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let (_, hi) = keys::tag_range(keys::DEADLINE);
    let lo = keys::deadlines_from(floor_ms);
    match kv.scan(&lo, &hi, 1)?.first() {
        None => Ok(None),
        Some((k, _)) => keys::parse_deadline(k)
            .map(|(at, _)| Some(at))
            .ok_or_else(|| StoreError::Corrupt {
                key: keys::display(k),
                reason: "bad deadline key".into(),
            }),
    }
}

/// Pre-check for a reservation against a (possibly stale) view: `Some(reject)` when the
/// sale cannot grant `qty` units at `clock_ms` no matter who asks. A node may answer such
/// a request without a Raft write only if its view is linearizable (read index or lease):
/// stock never grows except through commands that this view has seen.
pub fn reserve_precheck(
    kv: &(impl KvRead + ?Sized),
    sale_id: &str,
    qty: u32,
    clock_ms: u64,
) -> Result<Option<Reject>, StoreError> {
    Ok(match get::<SaleRecord>(kv, &keys::sale(sale_id))? {
        None => Some(Reject::SaleNotFound),
        Some(rec) => SaleGate::of(&rec).precheck(qty, clock_ms),
    })
}

/// [`reserve_precheck`] at the view's own clock (the state machine's, as of that view).
pub fn reserve_precheck_now(
    kv: &(impl KvRead + ?Sized),
    sale_id: &str,
    qty: u32,
) -> Result<Option<Reject>, StoreError> {
    reserve_precheck(kv, sale_id, qty, clock_ms(kv)?)
}

/// What [`reserve_precheck`] needs of a sale: small enough for the store to keep one per
/// sale in memory after every apply, so refusing a sold-out crowd reads no record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaleGate {
    /// Units a direct reservation could get now (0 while anyone waits on the waitlist).
    pub reservable: u32,
    pub starts_at_ms: u64,
    /// When the sale ends (or ended early).
    pub ends_at_ms: u64,
}

impl SaleGate {
    pub fn of(rec: &SaleRecord) -> Self {
        SaleGate {
            reservable: rec.reservable(),
            starts_at_ms: rec.spec.starts_at_ms,
            ends_at_ms: rec.ends_at_ms(),
        }
    }

    /// `Some(reject)` when no one could reserve `qty` units at `clock_ms`; the same rules,
    /// in the same order, as the state machine's reserve.
    pub fn precheck(&self, qty: u32, clock_ms: u64) -> Option<Reject> {
        if clock_ms >= self.ends_at_ms {
            return Some(Reject::SaleEnded);
        }
        if clock_ms < self.starts_at_ms {
            return None; // it may start by the time the entry is stamped
        }
        match self.reservable {
            0 => Some(Reject::SoldOut),
            n if n < qty => Some(Reject::InsufficientStock { available: n }),
            _ => None,
        }
    }
}
