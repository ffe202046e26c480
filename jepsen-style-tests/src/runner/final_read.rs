//! Waiting for a leader and for quiet, and reading the final state over HTTP.
//!
//! This module owns [`wait_leader`] (every answering node agrees on one leader),
//! [`wait_quiet`] (all nodes answer, agree on a leader and have applied the same index,
//! twice in a row) and [`read_final`], which fills a [`FinalState`]:
//! - authoritative sales: linearizable `GET /v1/sales/{id}` on the leader;
//! - holds and orders: every user the history names is listed on the leader,
//!   `GET /v1/users/{user_id}/holds` and `GET /v1/users/{user_id}/orders`, page by page
//!   ([`PAGE_LIMIT`] each, at most [`PAGES_PER_USER_MAX`] pages);
//! - per node: `GET /v1/sales/{id}?consistency=stale`, `applied_index`, and the state
//!   hash (`GET /admin/state-hash`, kept only when taken at the quiet applied index).
//!
//! Holds and orders carry their request id and end time (`state_at_ms`,
//! `status_at_ms`). Whatever a node does not report is recorded in [`FinalState::gaps`] so
//! the checkers say `Unknown` for it. It must not change the cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Answer, Client, Status};
use super::workload::parse_status;
use crate::final_state::{
    FinalHold, FinalOrder, FinalState, Gap, HoldState, NodeState, SaleCounters,
};
use crate::history::{Counters, History, OkValue, SaleMeta};

/// Poll period of the leader and quiet waits.
pub const POLL: Duration = Duration::from_millis(50);
/// Records per page of a user's holds or orders.
pub const PAGE_LIMIT: u32 = 200;
/// Pages read per user and listing at most (a longer listing is an error, not a cut).
pub const PAGES_PER_USER_MAX: u32 = 500;
/// Attempts at one final read before the final state is declared unreadable.
pub const READ_ATTEMPTS_MAX: u32 = 5;
/// Pause between such attempts.
const READ_RETRY: Duration = Duration::from_millis(200);
/// Quiet: applied indexes equal and unchanged over this many polls.
const QUIET_POLLS: u32 = 3;
/// Period of the quiet polls.
const QUIET_POLL: Duration = Duration::from_millis(200);
/// Reads of every node's state before the replicas are compared at whatever indexes the
/// last read found (see `read_final`).
const NODE_READ_ATTEMPTS_MAX: u32 = 10;
/// Reads of the leader's counters, holds and orders until one is taken at a single
/// applied index (see `read_final`); after that the view is marked incomplete.
const RECORDS_READ_ATTEMPTS_MAX: u32 = 10;

async fn statuses(c: &Client, nodes: &[String]) -> Vec<Option<Status>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(c.status(n).await);
    }
    out
}

/// The leader every answering node (at least a majority) agrees on.
pub async fn leader_now(c: &Client, nodes: &[String]) -> Option<u64> {
    let st = statuses(c, nodes).await;
    let up: Vec<&Status> = st.iter().flatten().collect();
    if up.len() * 2 <= nodes.len() {
        return None;
    }
    let l = up.first()?.leader_id?;
    let leader_answers = up.iter().any(|s| s.node_id == l && s.role == "leader");
    (leader_answers && up.iter().all(|s| s.leader_id == Some(l))).then_some(l)
}

/// Waits up to `timeout` for [`leader_now`]; the leader and how long it took.
pub async fn wait_leader(
    c: &Client,
    nodes: &[String],
    timeout: Duration,
) -> Option<(u64, Duration)> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(l) = leader_now(c, nodes).await {
            return Some((l, start.elapsed()));
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Waits until every node answers, agrees on the leader and has applied the same index,
/// unchanged over [`QUIET_POLLS`] polls. The leader's id.
pub async fn wait_quiet(c: &Client, nodes: &[String], timeout: Duration) -> Result<u64, String> {
    let start = Instant::now();
    let mut stable = 0;
    let mut last: Option<(u64, u64)> = None;
    let mut seen = String::new();
    while start.elapsed() < timeout {
        let st = statuses(c, nodes).await;
        let all: Option<Vec<Status>> = st.into_iter().collect();
        if let Some(all) = all {
            seen = format!(
                "{:?}",
                all.iter()
                    .map(|s| (s.node_id, s.role.clone(), s.leader_id, s.applied_index))
                    .collect::<Vec<_>>()
            );
            let leader = all.first().and_then(|s| s.leader_id);
            let applied = all.first().map(|s| s.applied_index);
            let agree = leader.is_some()
                && all.iter().all(|s| s.leader_id == leader)
                && all.iter().all(|s| Some(s.applied_index) == applied)
                && all.iter().all(|s| s.commit_index == s.applied_index);
            if let (true, Some(l), Some(a)) = (agree, leader, applied) {
                if last == Some((l, a)) {
                    stable += 1;
                } else {
                    stable = 1;
                    last = Some((l, a));
                }
                if stable >= QUIET_POLLS {
                    return Ok(l);
                }
            } else {
                stable = 0;
            }
        } else {
            seen = "not every node answers".into();
            stable = 0;
        }
        tokio::time::sleep(QUIET_POLL).await;
    }
    Err(format!("no quiet within {timeout:?}: {seen}"))
}

/// A GET retried on `Info` and connect failures; `Ok(None)` for a definite 404.
async fn get_settled(c: &Client, node: &str, path: &str) -> Result<Option<Value>, String> {
    let mut last = String::new();
    for _ in 0..READ_ATTEMPTS_MAX {
        match c.get(node, path).await {
            Answer::Ok(v) => return Ok(Some(v)),
            Answer::Fail { code, .. } if code.ends_with("not_found") => return Ok(None),
            Answer::Fail { code, message } => last = format!("{code}: {message}"),
            Answer::Info(r) => last = r,
        }
        tokio::time::sleep(READ_RETRY).await;
    }
    Err(format!("GET {path} on {node}: {last}"))
}

fn sale_counters(v: &Value) -> Option<SaleCounters> {
    let c = v.get("counters")?;
    let g = |k: &str| {
        c.get(k)
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
    };
    Some(SaleCounters {
        quantity: v
            .pointer("/spec/quantity")
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())?,
        counters: Counters {
            available: g("available")?,
            held: g("held")?,
            awaiting_payment: g("awaiting_payment")?,
            sold: g("sold")?,
        },
    })
}

fn hold_state(s: &str) -> Option<HoldState> {
    Some(match s {
        "active" => HoldState::Active,
        "released" => HoldState::Released,
        "expired" => HoldState::Expired,
        "checked_out" => HoldState::CheckedOut,
        _ => return None,
    })
}

/// Reads the final state from a quiet cluster whose leader is `leader`.
pub async fn read_final(
    c: &Client,
    nodes: &BTreeMap<u64, String>,
    leader: u64,
    sales: &[SaleMeta],
    history: &History,
) -> Result<FinalState, String> {
    let lnode = nodes
        .get(&leader)
        .ok_or_else(|| format!("leader {leader} is not a node of the run"))?;
    // Request ids as the ok answers tied them to records.
    let mut hold_rid: BTreeMap<u64, String> = BTreeMap::new();
    let mut order_rid: BTreeMap<u64, String> = BTreeMap::new();
    for op in &history.ops {
        let rid = op.call.client_key().map(|(_, r)| r.to_string());
        match (op.outcome.ok_value(), rid) {
            (Some(OkValue::Held { hold_id, .. }), Some(r)) => {
                hold_rid.entry(*hold_id).or_insert(r);
            }
            (Some(OkValue::CheckedOut { order_id, .. }), Some(r)) => {
                order_rid.entry(*order_id).or_insert(r);
            }
            _ => {}
        }
    }
    let users: std::collections::BTreeSet<String> = history
        .ops
        .iter()
        .filter_map(|o| o.call.client_key().map(|(u, _)| u.to_string()))
        .collect();

    // The counters and the listings are many requests; quiet does not stop the leader's
    // ticker (a hold a waitlist handoff granted after the clients stopped still expires,
    // and hands its unit on), so an entry applied between two of them would make the
    // records disagree with the counters without any fault of the cluster's. The whole
    // read is bracketed by the leader's applied index and repeated until both ends agree;
    // if they never do, the view is marked `Gap::RecordsSnapshot` (unknown, not invalid).
    // (The status reports an index once its apply call has finished, a moment after the
    // records changed, hence the pause before the closing status.)
    let mut fs = FinalState::default();
    let mut records_at_one_index = false;
    for attempt in 1..=RECORDS_READ_ATTEMPTS_MAX {
        let before = c.status(lnode).await.map(|s| s.applied_index);
        let (sales_read, holds, orders) =
            read_records(c, lnode, sales, &users, &hold_rid, &order_rid).await?;
        tokio::time::sleep(POLL).await;
        let after = c.status(lnode).await.map(|s| s.applied_index);
        fs.sales = sales_read;
        fs.holds = holds;
        fs.orders = orders;
        fs.records_read_attempts = attempt;
        if before.is_some() && before == after {
            records_at_one_index = true;
            break;
        }
        if attempt < RECORDS_READ_ATTEMPTS_MAX {
            tokio::time::sleep(QUIET_POLL).await;
        }
    }

    // Replicas are compared at one applied index: the leader may append an entry (a
    // tick) while the nodes are read one after another, so the whole read is repeated
    // until every node was read at the same index (the checker compares only those).
    let mut all_hashes = false;
    for attempt in 1..=NODE_READ_ATTEMPTS_MAX {
        let (states, hashes) = read_nodes(c, nodes, sales).await?;
        let first = states.first().and_then(|n| n.applied_index);
        let one_index = first.is_some() && states.iter().all(|n| n.applied_index == first);
        fs.nodes = states;
        all_hashes = hashes;
        if one_index || attempt == NODE_READ_ATTEMPTS_MAX {
            break;
        }
        tokio::time::sleep(QUIET_POLL).await;
    }
    fs.gaps = if all_hashes {
        vec![]
    } else {
        vec![Gap::StateHash]
    };
    if !records_at_one_index {
        fs.gaps.push(Gap::RecordsSnapshot);
    }
    // Records name their request and carry their end times; a record read without them
    // (an older node) leaves that part of the checks unknown.
    if fs
        .holds
        .iter()
        .any(|h| !h.from_waitlist && h.request_id.is_none())
    {
        fs.gaps.push(Gap::HoldRequestIds);
    }
    if fs.orders.iter().any(|o| o.request_id.is_none()) {
        fs.gaps.push(Gap::OrderRequestIds);
    }
    Ok(fs)
}

/// The leader's authoritative view: every sale's counters (linearizable), and every
/// hold and order of the given users, in id order.
async fn read_records(
    c: &Client,
    lnode: &str,
    sales: &[SaleMeta],
    users: &std::collections::BTreeSet<String>,
    hold_rid: &BTreeMap<u64, String>,
    order_rid: &BTreeMap<u64, String>,
) -> Result<RecordsView, String> {
    let mut counters = BTreeMap::new();
    for s in sales {
        let v = get_settled(c, lnode, &format!("/v1/sales/{}", s.sale_id))
            .await?
            .ok_or_else(|| format!("sale {} not found", s.sale_id))?;
        let sc = sale_counters(&v).ok_or_else(|| format!("unreadable sale {v}"))?;
        counters.insert(s.sale_id.clone(), sc);
    }
    let mut holds = Vec::new();
    let mut orders = Vec::new();
    for user in users {
        for h in list_all(c, lnode, &format!("/v1/users/{user}/holds"), "holds").await? {
            holds.push(final_hold(&h, hold_rid)?);
        }
        for o in list_all(c, lnode, &format!("/v1/users/{user}/orders"), "orders").await? {
            orders.push(final_order(&o, order_rid)?);
        }
    }
    holds.sort_by_key(|h: &FinalHold| h.hold_id);
    orders.sort_by_key(|o: &FinalOrder| o.order_id);
    Ok((counters, holds, orders))
}

/// Counters by sale, holds, orders.
type RecordsView = (
    BTreeMap<String, SaleCounters>,
    Vec<FinalHold>,
    Vec<FinalOrder>,
);

/// Every node's state hash (read at the applied index its status gives, else none) and
/// its counters of each sale, with that index (none if the node applied more while it was
/// read); whether every node gave a hash at its index.
async fn read_nodes(
    c: &Client,
    nodes: &BTreeMap<u64, String>,
    sales: &[SaleMeta],
) -> Result<(Vec<NodeState>, bool), String> {
    let mut out = Vec::new();
    let mut all_hashes = true;
    for (&nid, addr) in nodes {
        let st = c
            .status(addr)
            .await
            .ok_or_else(|| format!("node {nid} gives no status"))?;
        // The hash is comparable only at one applied index; after quiet every node is at
        // the same one, and a node that moved on (or gives none) leaves the hash unknown.
        let state_hash = match c.get(addr, "/admin/state-hash").await {
            Answer::Ok(v)
                if v.get("applied_index").and_then(Value::as_u64) == Some(st.applied_index) =>
            {
                v.get("state_hash")
                    .and_then(Value::as_u64)
                    .map(|h| format!("{h:016x}"))
            }
            _ => None,
        };
        all_hashes &= state_hash.is_some();
        let mut ns = NodeState {
            node: format!("n{nid}"),
            state_hash,
            applied_index: Some(st.applied_index),
            sales: BTreeMap::new(),
        };
        for s in sales {
            let v = get_settled(
                c,
                addr,
                &format!("/v1/sales/{}?consistency=stale", s.sale_id),
            )
            .await?
            .ok_or_else(|| format!("node {nid}: sale {} not found", s.sale_id))?;
            let sc = sale_counters(&v).ok_or_else(|| format!("unreadable sale {v}"))?;
            ns.sales.insert(s.sale_id.clone(), sc);
        }
        // Counters read after the node applied more are not at the hash's index: such a
        // node's read is not comparable (the caller reads again).
        let moved = c
            .status(addr)
            .await
            .is_none_or(|again| again.applied_index != st.applied_index);
        if moved {
            ns.applied_index = None;
            ns.state_hash = None;
            all_hashes = false;
        }
        out.push(ns);
    }
    Ok((out, all_hashes))
}

/// Every record of a paged listing (`field` is the array's name), in id order.
async fn list_all(c: &Client, node: &str, path: &str, field: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut after: Option<u64> = None;
    for _ in 0..PAGES_PER_USER_MAX {
        let q = match after {
            Some(a) => format!("{path}?limit={PAGE_LIMIT}&after={a}"),
            None => format!("{path}?limit={PAGE_LIMIT}"),
        };
        let page = get_settled(c, node, &q)
            .await?
            .ok_or_else(|| format!("GET {q}: not found"))?;
        let items = page
            .get(field)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("GET {q}: no {field} array in {page}"))?;
        out.extend(items.iter().cloned());
        match page.get("next_after").and_then(Value::as_u64) {
            Some(a) => after = Some(a),
            None => return Ok(out),
        }
    }
    Err(format!(
        "{path}: more than {PAGES_PER_USER_MAX} pages of {PAGE_LIMIT}"
    ))
}

fn u(v: &Value, k: &str) -> Result<u64, String> {
    v.get(k)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{k} missing in {v}"))
}

fn s<'a>(v: &'a Value, k: &str) -> Result<&'a str, String> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{k} missing in {v}"))
}

fn final_hold(v: &Value, rids: &BTreeMap<u64, String>) -> Result<FinalHold, String> {
    let hold_id = u(v, "hold_id")?;
    let state = hold_state(s(v, "state")?).ok_or_else(|| format!("unknown hold state in {v}"))?;
    let from_waitlist = v
        .get("from_waitlist")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(FinalHold {
        hold_id,
        sale_id: s(v, "sale_id")?.to_string(),
        user_id: s(v, "user_id")?.to_string(),
        qty: u32::try_from(u(v, "qty")?).map_err(|e| e.to_string())?,
        expires_at_ms: u(v, "expires_at_ms")?,
        // The record names its request; a waitlist hold's is the join's, which the
        // checkers do not count as a reserve's effect.
        request_id: if from_waitlist {
            None
        } else {
            v.get("request_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| rids.get(&hold_id).cloned())
        },
        join_request_id: if from_waitlist {
            v.get("request_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        } else {
            None
        },
        from_waitlist,
        state,
        state_at_ms: v.get("state_at_ms").and_then(Value::as_u64),
        order_id: v.get("order_id").and_then(Value::as_u64),
    })
}

fn final_order(v: &Value, rids: &BTreeMap<u64, String>) -> Result<FinalOrder, String> {
    let order_id = u(v, "order_id")?;
    Ok(FinalOrder {
        order_id,
        sale_id: s(v, "sale_id")?.to_string(),
        user_id: s(v, "user_id")?.to_string(),
        hold_id: u(v, "hold_id")?,
        qty: u32::try_from(u(v, "qty")?).map_err(|e| e.to_string())?,
        request_id: v
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| rids.get(&order_id).cloned()),
        status: parse_status(s(v, "status")?).ok_or_else(|| format!("unknown status in {v}"))?,
        pay_by_ms: v.get("pay_by_ms").and_then(Value::as_u64),
        cancel_reason: v
            .get("cancel_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        status_at_ms: v.get("status_at_ms").and_then(Value::as_u64),
    })
}
