//! Idempotency: one effect per request id.
//!
//! The state machine keys idempotency by `(user_id, request_id)`, so this checker does:
//! - final state: at most one hold per reserve `(user, request_id)`, at most one order per
//!   checkout `(user, request_id)`, and at most one order per hold;
//! - history: retries of one `(user, request_id)` with the same call must get the same
//!   answer: all ok values equal, and never an ok next to a fail whose code the state
//!   machine decides (that fail is the stored answer, so nothing may have happened), nor
//!   two different such codes. (A fail from before the state machine, e.g. a 429, may
//!   legally be followed by an ok retry.)

use std::collections::BTreeMap;

use crate::checkers::is_state_machine_code;
use crate::final_state::{FinalState, Gap};
use crate::history::{History, Op};
use crate::verdict::{Anomaly, CheckResult};

pub const NAME: &str = "idempotency";

pub fn check(history: &History, final_state: Option<&FinalState>) -> CheckResult {
    let mut res = CheckResult::new(NAME);

    // History: group attempts by (user, request_id).
    let mut groups: BTreeMap<(&str, &str), Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        if let Some(key) = op.call.client_key() {
            groups.entry(key).or_default().push(op);
        }
    }
    res.count("request_ids", groups.len() as u64);
    for ((user, rid), ops) in &groups {
        if ops.len() > 1 {
            res.count("retried_request_ids", 1);
        }
        let Some(first) = ops.first() else { continue };
        let sale = first.call.sale_id();
        if ops.iter().any(|o| o.call != first.call) {
            // A reused request id for a different command: the server must refuse it, so
            // only the answers to the first command are compared.
            res.count("request_ids_reused_for_other_calls", 1);
        }
        let same: Vec<&&Op> = ops.iter().filter(|o| o.call == first.call).collect();
        let ids: Vec<u64> = same.iter().map(|o| o.id).collect();
        let oks: Vec<_> = same.iter().filter_map(|o| o.outcome.ok_value()).collect();
        let sm_fails: Vec<&str> = same
            .iter()
            .filter_map(|o| o.outcome.fail_code())
            .filter(|c| is_state_machine_code(c))
            .collect();
        if let Some(v0) = oks.first() {
            if oks.iter().any(|v| v != v0) {
                res.anomaly(Anomaly::new(
                    "retry_different_answer",
                    Some(sale),
                    ids.clone(),
                    format!(
                        "retries of request {rid} by {user} were answered differently: {oks:?}"
                    ),
                ));
            }
            if let Some(code) = sm_fails.first() {
                res.anomaly(Anomaly::new(
                    "retry_ok_and_fail",
                    Some(sale),
                    ids.clone(),
                    format!("request {rid} by {user} was both acknowledged and rejected ({code})"),
                ));
            }
        } else if let Some(c0) = sm_fails.first() {
            if sm_fails.iter().any(|c| c != c0) {
                res.anomaly(Anomaly::new(
                    "retry_different_answer",
                    Some(sale),
                    ids.clone(),
                    format!("retries of request {rid} by {user} were rejected differently: {sm_fails:?}"),
                ));
            }
        }
    }

    let Some(fs) = final_state else {
        res.unknown("no final state was read");
        return res;
    };
    let untied = fs
        .holds
        .iter()
        .filter(|h| h.request_id.is_none() && !h.from_waitlist)
        .count();
    if fs.has_gap(Gap::HoldRequestIds) && untied > 0 {
        res.unknown(format!(
            "{untied} hold(s) not tied to a request: a duplicate among them cannot be seen \
             (the API does not expose a hold's request id)"
        ));
    }
    let mut holds: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for h in &fs.holds {
        if let (Some(rid), false) = (&h.request_id, h.from_waitlist) {
            holds.entry((&h.user_id, rid)).or_default().push(h.hold_id);
        }
    }
    let sale_of_req = |user: &str, rid: &str| -> Option<String> {
        groups
            .get(&(user, rid))
            .and_then(|v| v.first())
            .map(|o| o.call.sale_id().to_string())
    };
    for ((user, rid), ids) in &holds {
        res.count("hold_effects", ids.len() as u64);
        if ids.len() > 1 {
            res.anomaly(Anomaly::new(
                "duplicate_hold",
                sale_of_req(user, rid).as_deref(),
                ops_of(&groups, user, rid),
                format!("request {rid} by {user} produced holds {ids:?}"),
            ));
        }
    }
    let mut orders: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut per_hold: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for o in &fs.orders {
        if let Some(rid) = &o.request_id {
            orders
                .entry((&o.user_id, rid))
                .or_default()
                .push(o.order_id);
        }
        per_hold.entry(o.hold_id).or_default().push(o.order_id);
    }
    for ((user, rid), ids) in &orders {
        res.count("order_effects", ids.len() as u64);
        if ids.len() > 1 {
            res.anomaly(Anomaly::new(
                "duplicate_order",
                sale_of_req(user, rid).as_deref(),
                ops_of(&groups, user, rid),
                format!("request {rid} by {user} produced orders {ids:?}"),
            ));
        }
    }
    for (hold, ids) in &per_hold {
        if ids.len() > 1 {
            let sale = fs.hold(*hold).map(|h| h.sale_id.clone());
            res.anomaly(Anomaly::new(
                "duplicate_order",
                sale.as_deref(),
                vec![],
                format!("hold {hold} was checked out into orders {ids:?}"),
            ));
        }
    }
    res
}

fn ops_of(groups: &BTreeMap<(&str, &str), Vec<&Op>>, user: &str, rid: &str) -> Vec<u64> {
    groups
        .get(&(user, rid))
        .map(|v| v.iter().map(|o| o.id).collect())
        .unwrap_or_default()
}
