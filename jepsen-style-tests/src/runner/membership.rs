//! The membership nemesis: add a node and remove a voter under load, healed by restoring
//! the original voters.
//!
//! This module owns the admin calls (`POST /admin/learners`, `POST /admin/membership`,
//! `GET /admin/status`; a follower forwards them to the leader) and the checks that each
//! change took effect (the voters a node reports afterwards). Adding starts a fresh
//! process or container through the cluster (its own data dir or volume, `--init never`);
//! [`join`] adds the docker backend's nodes 4 and up before a run; heal changes the voters
//! back to the original set (dropping the added node, promoting a removed one back from
//! learner) and then stops the added process. It must not inject any other fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::client::{Answer, Client};
use super::cluster::Cluster;
use super::final_read::leader_now;
use super::procs::NodeSpec;
use super::rng::Rng;

/// Timeout of one admin call (add-learner waits for the learner to catch up).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one admin call (a new leader may be elected meanwhile).
pub const ADMIN_ATTEMPTS_MAX: u32 = 8;
/// Pause between attempts.
const ADMIN_RETRY: Duration = Duration::from_millis(300);
/// How long a fresh node may take to answer its status.
pub const NEW_NODE_UP_POLLS_MAX: u32 = 100;
/// Poll period for that.
const NEW_NODE_POLL: Duration = Duration::from_millis(100);

/// What heal must undo.
#[derive(Debug, Clone)]
pub struct MemberUndo {
    /// The voters to restore.
    pub voters: Vec<u64>,
    /// An added node to stop after the voters are restored.
    pub retire: Option<u64>,
}

/// The voters the leader reports now (any answering node's view if no leader).
pub async fn voters_now(c: &Client, addrs: &BTreeMap<u64, String>) -> Option<Vec<u64>> {
    let nodes: Vec<String> = addrs.values().cloned().collect();
    let leader = leader_now(c, &nodes).await;
    if let Some(a) = leader.and_then(|l| addrs.get(&l)) {
        if let Some(st) = c.status(a).await {
            return Some(st.voters());
        }
    }
    for a in addrs.values() {
        if let Some(st) = c.status(a).await {
            return Some(st.voters());
        }
    }
    None
}

/// POSTs an admin call to the leader (else any node), retried; the last answer.
async fn admin_post(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    path: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let nodes: Vec<String> = addrs.values().cloned().collect();
    let mut last = String::new();
    for i in 0..ADMIN_ATTEMPTS_MAX {
        let target = match leader_now(c, &nodes).await.and_then(|l| addrs.get(&l)) {
            Some(a) => a.clone(),
            None => nodes
                .get(i as usize % nodes.len().max(1))
                .cloned()
                .unwrap_or_default(),
        };
        match c.post_timeout(&target, path, body, ADMIN_TIMEOUT).await {
            Answer::Ok(_) => return Ok(()),
            Answer::Fail { code, message } => last = format!("{code}: {message}"),
            Answer::Info(r) => last = r,
        }
        tokio::time::sleep(ADMIN_RETRY).await;
    }
    Err(format!("POST {path}: {last}"))
}

/// Adds a fresh node as learner, then as voter. Returns (targets, took effect, detail,
/// undo). `addrs` are the HTTP addresses of the original nodes.
pub async fn add_node(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    cluster: &Arc<Mutex<Cluster>>,
) -> (Vec<u64>, bool, String, Option<MemberUndo>) {
    let Some(before) = voters_now(c, addrs).await else {
        return (vec![], false, "no node reports its voters".into(), None);
    };
    let cl = cluster.clone();
    let spec = match tokio::task::spawn_blocking(move || match cl.lock() {
        Ok(mut g) => g.add_node().map_err(|e| e.to_string()),
        Err(_) => Err("cluster lock poisoned".into()),
    })
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (vec![], false, format!("start a node: {e}"), None),
        Err(e) => return (vec![], false, format!("start a node: {e}"), None),
    };
    let id = spec.id;
    let undo = MemberUndo {
        voters: before.clone(),
        retire: Some(id),
    };
    if !answers(c, &spec).await {
        return (
            vec![id],
            false,
            format!("n{id} did not answer its status"),
            Some(undo),
        );
    }
    if let Err(e) = add_learner(c, addrs, &spec).await {
        return (
            vec![id],
            false,
            format!("add learner n{id}: {e}"),
            Some(undo),
        );
    }
    let mut voters = before.clone();
    voters.push(id);
    let body = json!({"voters": voters, "retain": false});
    let changed = admin_post(c, addrs, "/admin/membership", &body).await;
    let after = voters_now(c, addrs).await.unwrap_or_default();
    let effect = changed.is_ok() && after.contains(&id);
    (
        vec![id],
        effect,
        format!(
            "added n{id} ({}): voters {before:?} -> {after:?}{}",
            spec.grpc_advertise,
            changed.err().map(|e| format!(" ({e})")).unwrap_or_default()
        ),
        Some(undo),
    )
}

/// Whether a fresh node answers its status within [`NEW_NODE_UP_POLLS_MAX`] polls.
async fn answers(c: &Client, spec: &NodeSpec) -> bool {
    for _ in 0..NEW_NODE_UP_POLLS_MAX {
        if c.status(&spec.http).await.is_some() {
            return true;
        }
        tokio::time::sleep(NEW_NODE_POLL).await;
    }
    false
}

/// `POST /admin/learners` for a started node, with the addresses it advertises.
async fn add_learner(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    spec: &NodeSpec,
) -> Result<(), String> {
    let body = json!({"node_id": spec.id, "raft_addr": spec.grpc_advertise, "api_addr": spec.http_advertise});
    admin_post(c, addrs, "/admin/learners", &body).await
}

/// Joins nodes started with `--init never` (the docker backend's nodes 4 and up) to the
/// cluster of `addrs` before the run: each added as learner, then all made voters.
/// Returns the voters afterwards.
pub async fn join(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    joiners: &[NodeSpec],
) -> Result<Vec<u64>, String> {
    let before = voters_now(c, addrs)
        .await
        .ok_or("no node reports its voters")?;
    for s in joiners {
        if !answers(c, s).await {
            return Err(format!("n{} did not answer its status", s.id));
        }
        add_learner(c, addrs, s)
            .await
            .map_err(|e| format!("add learner n{}: {e}", s.id))?;
    }
    let mut voters = before.clone();
    voters.extend(joiners.iter().map(|s| s.id));
    voters.sort_unstable();
    voters.dedup();
    let body = json!({"voters": voters, "retain": false});
    admin_post(c, addrs, "/admin/membership", &body).await?;
    let after = voters_now(c, addrs).await.unwrap_or_default();
    if after != voters {
        return Err(format!("voters {before:?} -> {after:?}, wanted {voters:?}"));
    }
    Ok(after)
}

/// Removes one voter (kept as learner). Returns (targets, took effect, detail, undo).
pub async fn remove_voter(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    rng: &mut Rng,
) -> (Vec<u64>, bool, String, Option<MemberUndo>) {
    let Some(before) = voters_now(c, addrs).await else {
        return (vec![], false, "no node reports its voters".into(), None);
    };
    if before.len() < 2 {
        return (vec![], false, format!("voters {before:?}: too few"), None);
    }
    let Some(&victim) = before.get(rng.below(before.len() as u64) as usize) else {
        return (vec![], false, "no voter".into(), None);
    };
    let undo = MemberUndo {
        voters: before.clone(),
        retire: None,
    };
    let voters: Vec<u64> = before.iter().copied().filter(|&v| v != victim).collect();
    let body = json!({"voters": voters, "retain": true});
    let changed = admin_post(c, addrs, "/admin/membership", &body).await;
    let after = voters_now(c, addrs).await.unwrap_or_default();
    let effect = changed.is_ok() && !after.is_empty() && !after.contains(&victim);
    (
        vec![victim],
        effect,
        format!(
            "removed voter n{victim} (kept as learner): voters {before:?} -> {after:?}{}",
            changed.err().map(|e| format!(" ({e})")).unwrap_or_default()
        ),
        Some(undo),
    )
}

/// Restores the voters, then stops an added node. Whether the voters are back.
pub async fn heal(
    c: &Client,
    addrs: &BTreeMap<u64, String>,
    cluster: &Arc<Mutex<Cluster>>,
    undo: &MemberUndo,
) -> (bool, String) {
    let body = json!({"voters": undo.voters, "retain": false});
    let changed = admin_post(c, addrs, "/admin/membership", &body).await;
    let after = voters_now(c, addrs).await.unwrap_or_default();
    let restored = changed.is_ok() && after == undo.voters;
    let mut detail = format!(
        "voters restored to {:?}: now {after:?}{}",
        undo.voters,
        changed
            .as_ref()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    if let Some(id) = undo.retire {
        // Only once it is out of the voters: a stopped voter would cost the quorum.
        if !after.contains(&id) {
            let cl = cluster.clone();
            let r = tokio::task::spawn_blocking(move || match cl.lock() {
                Ok(mut g) => g.retire(id).map_err(|e| e.to_string()),
                Err(_) => Err("cluster lock poisoned".into()),
            })
            .await;
            detail.push_str(&format!("; stopped n{id}: {}", matches!(r, Ok(Ok(())))));
        } else {
            detail.push_str(&format!("; n{id} is still a voter, left running"));
        }
    }
    (restored, detail)
}
