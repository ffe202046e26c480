//! Conservation and convergence, on the state read after quiet.
//!
//! - Conservation: `available + held + awaiting_payment + sold == quantity` for every
//!   sale on every node and in the authoritative view, and the quantity is the one the
//!   run created the sale with.
//! - Records agree with counters (authoritative view): `held` is the sum of active holds,
//!   `awaiting_payment` of awaiting orders, `sold` of paid and confirmed orders.
//! - Convergence: every node reports a state-machine hash and all are equal; every node
//!   has the same counters for every sale.
//!
//! A node whose hash could not be read makes the verdict `Unknown`, never `Valid`; so do
//! counters and records that were not read at one applied index of the leader
//! (`Gap::RecordsSnapshot`): the records-against-counters comparison is then skipped.

use std::collections::BTreeMap;

use crate::final_state::{FinalState, Gap, HoldState};
use crate::history::{Counters, History, OrderStatus};
use crate::verdict::{Anomaly, CheckResult};

pub const NAME: &str = "conservation";

pub fn check(history: &History, final_state: Option<&FinalState>) -> CheckResult {
    let mut res = CheckResult::new(NAME);
    let Some(fs) = final_state else {
        res.unknown("no final state was read");
        return res;
    };

    let mut views: Vec<(&str, &BTreeMap<String, crate::final_state::SaleCounters>)> =
        vec![("authoritative", &fs.sales)];
    views.extend(fs.nodes.iter().map(|n| (n.node.as_str(), &n.sales)));
    for (who, sales) in &views {
        for (sale_id, s) in sales.iter() {
            res.count("sale_views", 1);
            if !s.counters.conserves(s.quantity) {
                res.anomaly(Anomaly::new(
                    "not_conserved",
                    Some(sale_id),
                    vec![],
                    format!("{who}: {:?} does not add up to {}", s.counters, s.quantity),
                ));
            }
            if let Some(meta) = history.meta.sale(sale_id) {
                if meta.quantity != s.quantity {
                    res.anomaly(Anomaly::new(
                        "quantity_changed",
                        Some(sale_id),
                        vec![],
                        format!(
                            "{who}: quantity {} but the sale was created with {}",
                            s.quantity, meta.quantity
                        ),
                    ));
                }
            }
        }
    }

    // Records agree with the authoritative counters, when both were read at one index.
    if fs.has_gap(Gap::RecordsSnapshot) {
        res.unknown(
            "the counters and the records were not read at one applied index of the leader; \
             records against counters not compared",
        );
    } else {
        records_agree(&mut res, fs);
    }
    convergence(&mut res, fs);
    res
}

/// `held`, `awaiting_payment` and `sold` of every sale equal the sums of its records.
fn records_agree(res: &mut CheckResult, fs: &FinalState) {
    let mut from_records: BTreeMap<&str, Counters> = BTreeMap::new();
    for h in &fs.holds {
        if h.state == HoldState::Active {
            let c = from_records.entry(&h.sale_id).or_default();
            c.held = c.held.saturating_add(h.qty);
        }
    }
    for o in &fs.orders {
        let c = from_records.entry(&o.sale_id).or_default();
        match o.status {
            OrderStatus::AwaitingPayment => {
                c.awaiting_payment = c.awaiting_payment.saturating_add(o.qty)
            }
            OrderStatus::Paid | OrderStatus::Confirmed => c.sold = c.sold.saturating_add(o.qty),
            OrderStatus::Cancelled => {}
        }
    }
    for (sale_id, s) in &fs.sales {
        let r = from_records
            .get(sale_id.as_str())
            .copied()
            .unwrap_or_default();
        let c = s.counters;
        if (r.held, r.awaiting_payment, r.sold) != (c.held, c.awaiting_payment, c.sold) {
            res.anomaly(Anomaly::new(
                "records_disagree",
                Some(sale_id),
                vec![],
                format!(
                    "counters say held={} awaiting={} sold={}, holds and orders add up to \
                     held={} awaiting={} sold={}",
                    c.held, c.awaiting_payment, c.sold, r.held, r.awaiting_payment, r.sold
                ),
            ));
        }
    }
}

/// Every replica read at the same applied index has the same state hash and counters.
fn convergence(res: &mut CheckResult, fs: &FinalState) {
    res.count("nodes", fs.nodes.len() as u64);
    if fs.nodes.is_empty() {
        res.unknown("no node states were read");
        return;
    }
    // A state hash (and a node's counters) can only be compared with another node's read
    // at the same applied index: a replica that applied one more entry (a tick after the
    // quiet period, say) differs without having diverged.
    let mut by_index: BTreeMap<Option<u64>, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for n in &fs.nodes {
        match &n.state_hash {
            Some(h) => by_index
                .entry(n.applied_index)
                .or_default()
                .entry(h)
                .or_default()
                .push(&n.node),
            None => res.unknown(format!("node {} reported no state hash", n.node)),
        }
    }
    for (index, hashes) in &by_index {
        if hashes.len() > 1 {
            res.anomaly(Anomaly::new(
                "diverged",
                None,
                vec![],
                format!(
                    "replicas disagree on the state hash at applied index {index:?}: {hashes:?}"
                ),
            ));
        }
    }
    if by_index.len() > 1 {
        let at: Vec<(&str, Option<u64>)> = fs
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.applied_index))
            .collect();
        res.unknown(format!(
            "node states were read at different applied indexes, not all comparable: {at:?}"
        ));
    }
    if let Some(first) = fs.nodes.first() {
        let same_index = fs
            .nodes
            .iter()
            .skip(1)
            .filter(|n| n.applied_index == first.applied_index);
        for n in same_index {
            for (sale_id, s) in &first.sales {
                let other = n.sales.get(sale_id);
                if other != Some(s) {
                    res.anomaly(Anomaly::new(
                        "counters_diverged",
                        Some(sale_id),
                        vec![],
                        format!(
                            "{} has {:?}, {} has {:?}",
                            first.node,
                            s.counters,
                            n.node,
                            other.map(|o| o.counters)
                        ),
                    ));
                }
            }
        }
    }
}
