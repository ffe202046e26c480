//! The nemesis: faults, their schedule, and their log.
//!
//! This module owns the fault vocabulary ([`FaultKind`]), the [`ClusterControl`] trait a
//! cluster backend implements, the [`Nemesis`] trait that turns a fault kind into
//! control calls (inject, then heal), the [`ProcessNemesis`] built on process control,
//! and the [`FaultRecord`] every injected fault leaves in the report (timestamps, nodes,
//! whether it took effect, heal timings).
//!
//! Built: kill -9 of one node / the leader / a minority then restart from the data dir;
//! SIGSTOP of the leader then SIGCONT; restart of one node with `--clock-skew-ms` (healed
//! by a restart without skew); partitions with nftables in per-node namespaces (isolate
//! the leader, majority/minority, bridge and ring over 5 nodes; healed by deleting the
//! rules); delay and loss on the links into one node or all nodes through the userspace
//! proxy (healed by clearing the fault), and on one link `a → b` only (one direction,
//! `--backend netns`, where the proxy tells senders apart by their namespace address).
//! Membership changes talk HTTP, so the scheduler in
//! [`super::run`] does them (with [`super::membership`]). The same nemesis drives the
//! Docker backend ([`super::docker`]): kill is `docker kill -s KILL`, pause
//! `docker pause`, skew a recreated container, partitions the same nftables rules inside
//! the containers' namespaces; it has no proxy, so delay and loss are refused there.
//!
//! It must not talk HTTP: the scheduler in [`super::run`] finds the leader and confirms
//! effects; this module only acts on processes and the network.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::netns::{grudge_bridge, grudge_of_groups, grudge_ring};
use super::procs::{ProcError, ProcState, ProcessCluster};
use super::proxy::{
    LinkFault, ProxyStats, DELAY_MS_MAX, DELAY_MS_MIN, LOSS_PERMILLE_MAX, LOSS_PERMILLE_MIN,
};
use super::rng::Rng;

/// Nodes a bridge or ring partition needs (with fewer it is no partition at all).
pub const BRIDGE_RING_NODES_MIN: usize = 5;

/// Largest clock skew the nemesis gives a node, in ms (kept below the checkers' bound).
pub const SKEW_MAX_MS: i64 = 400;
/// Smallest clock skew the nemesis gives a node, in ms.
pub const SKEW_MIN_MS: i64 = 150;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    KillOne,
    KillLeader,
    KillMinority,
    PauseLeader,
    SkewRestart,
    PartitionLeader,
    PartitionHalves,
    PartitionBridge,
    PartitionRing,
    Delay,
    Loss,
    /// Delay on one link `a → b` only.
    LinkDelay,
    /// Loss on one link `a → b` only.
    LinkLoss,
    MemberAdd,
    MemberRemove,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillOne => "kill_one",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillMinority => "kill_minority",
            FaultKind::PauseLeader => "pause_leader",
            FaultKind::SkewRestart => "skew_restart",
            FaultKind::PartitionLeader => "partition_leader",
            FaultKind::PartitionHalves => "partition_halves",
            FaultKind::PartitionBridge => "partition_bridge",
            FaultKind::PartitionRing => "partition_ring",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::LinkDelay => "link_delay",
            FaultKind::LinkLoss => "link_loss",
            FaultKind::MemberAdd => "member_add",
            FaultKind::MemberRemove => "member_remove",
        }
    }

    pub fn is_partition(self) -> bool {
        use FaultKind::*;
        matches!(
            self,
            PartitionLeader | PartitionHalves | PartitionBridge | PartitionRing
        )
    }

    /// Faults that need the proxy.
    pub fn is_link(self) -> bool {
        matches!(
            self,
            FaultKind::Delay | FaultKind::Loss | FaultKind::LinkDelay | FaultKind::LinkLoss
        )
    }

    /// Faults on one link `a → b` (the proxy must tell the senders apart: netns).
    pub fn is_one_link(self) -> bool {
        matches!(self, FaultKind::LinkDelay | FaultKind::LinkLoss)
    }

    /// Delay faults (they take effect by delaying chunks; the others by losing).
    pub fn is_delay(self) -> bool {
        matches!(self, FaultKind::Delay | FaultKind::LinkDelay)
    }

    pub fn is_membership(self) -> bool {
        matches!(self, FaultKind::MemberAdd | FaultKind::MemberRemove)
    }

    /// The kinds a `--nemesis` word names: `kill`, `kill-leader`, `pause`, `skew`,
    /// `partition` (leader isolation and majority/minority), `partition5` (also bridge
    /// and ring: 5 nodes), `proxy` (delay and loss), `links` (delay and loss on one link
    /// `a → b`; netns), `membership` (add and remove), or a kind's own name (`-` or `_`).
    pub fn parse_group(word: &str) -> Option<Vec<FaultKind>> {
        use FaultKind::*;
        Some(match word.trim() {
            "kill" => vec![KillOne, KillLeader, KillMinority],
            "kill-leader" | "kill_leader" => vec![KillLeader],
            "kill-one" | "kill_one" => vec![KillOne],
            "kill-minority" | "kill_minority" => vec![KillMinority],
            "pause" | "pause_leader" | "pause-leader" => vec![PauseLeader],
            "skew" | "skew_restart" | "skew-restart" => vec![SkewRestart],
            "partition" => vec![PartitionLeader, PartitionHalves],
            "partition5" => vec![
                PartitionLeader,
                PartitionHalves,
                PartitionBridge,
                PartitionRing,
            ],
            "partition-leader" | "partition_leader" => vec![PartitionLeader],
            "partition-halves" | "partition_halves" => vec![PartitionHalves],
            "partition-bridge" | "partition_bridge" | "bridge" => vec![PartitionBridge],
            "partition-ring" | "partition_ring" | "ring" => vec![PartitionRing],
            "proxy" => vec![Delay, Loss],
            "delay" => vec![Delay],
            "loss" => vec![Loss],
            "links" => vec![LinkDelay, LinkLoss],
            "link-delay" | "link_delay" => vec![LinkDelay],
            "link-loss" | "link_loss" => vec![LinkLoss],
            "membership" => vec![MemberAdd, MemberRemove],
            "member-add" | "member_add" => vec![MemberAdd],
            "member-remove" | "member_remove" => vec![MemberRemove],
            _ => return None,
        })
    }
}

/// One fault as the report shows it. Times are run milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub nodes: Vec<u64>,
    pub injected_at_ms: u64,
    pub took_effect: bool,
    pub detail: String,
    pub healed_at_ms: Option<u64>,
    pub heal_ok: bool,
    /// From the heal until every node agreed on a leader.
    pub heal_to_leader_ms: Option<u64>,
    /// From the heal until the first acknowledged write completed (from the history).
    pub heal_to_first_ack_write_ms: Option<u64>,
    /// From the injection until the first acknowledged write completed.
    pub fault_to_first_ack_write_ms: Option<u64>,
}

/// What a cluster backend must offer the nemesis: processes ([`ProcessCluster`], on
/// loopback or in namespaces) and containers ([`super::docker::DockerCluster`], which
/// maps these onto `docker kill -s KILL`, `docker pause`, a recreated container and
/// nftables inside the containers' namespaces).
pub trait ClusterControl: Send {
    fn node_ids(&self) -> Vec<u64>;
    /// kill -9; whether a live process was killed.
    fn kill(&mut self, id: u64) -> Result<bool, ProcError>;
    /// Graceful stop; whether it exited by itself.
    fn stop(&mut self, id: u64) -> Result<bool, ProcError>;
    fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError>;
    fn pause(&mut self, id: u64) -> Result<bool, ProcError>;
    fn resume(&mut self, id: u64) -> Result<bool, ProcError>;
    fn is_down(&mut self, id: u64) -> Result<bool, ProcError>;
    /// Node `n` drops all traffic to and from `grudge[n]`; what was installed.
    fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String>;
    /// Whether node `n` carries partition rules now.
    fn partitioned(&mut self, n: u64) -> bool;
    fn heal_partition(&mut self) -> Result<(), String>;
    /// Sets a delay/loss fault on the links into `dests`.
    fn link_fault(&mut self, dests: &[u64], f: LinkFault) -> Result<(), String>;
    /// Sets a delay/loss fault on the one link `from → to`.
    fn one_link_fault(&mut self, from: u64, to: u64, f: LinkFault) -> Result<(), String> {
        let _ = (from, to, f);
        Err("this backend has no per-link faults".into())
    }
    fn heal_links(&mut self) -> Result<(), String>;
    fn proxy_stats(&self) -> Option<ProxyStats>;
    /// How the faults are done, for the fault log.
    fn verbs(&self) -> Verbs {
        Verbs::PROCESS
    }
}

/// The words a backend's faults are logged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verbs {
    pub kill: &'static str,
    pub pause: &'static str,
    pub resume: &'static str,
    pub skew: &'static str,
}

impl Verbs {
    pub const PROCESS: Verbs = Verbs {
        kill: "kill -9",
        pause: "SIGSTOP",
        resume: "SIGCONT",
        skew: "--clock-skew-ms",
    };
    pub const DOCKER: Verbs = Verbs {
        kill: "docker kill -s KILL",
        pause: "docker pause",
        resume: "docker unpause",
        skew: "STOCKADE_CLOCK_SKEW_MS",
    };
}

impl ClusterControl for ProcessCluster {
    fn node_ids(&self) -> Vec<u64> {
        self.ids()
    }
    fn kill(&mut self, id: u64) -> Result<bool, ProcError> {
        ProcessCluster::kill(self, id)
    }
    fn stop(&mut self, id: u64) -> Result<bool, ProcError> {
        ProcessCluster::stop(self, id)
    }
    fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        ProcessCluster::restart(self, id, skew_ms)
    }
    fn pause(&mut self, id: u64) -> Result<bool, ProcError> {
        ProcessCluster::pause(self, id)
    }
    fn resume(&mut self, id: u64) -> Result<bool, ProcError> {
        ProcessCluster::resume(self, id)
    }
    fn is_down(&mut self, id: u64) -> Result<bool, ProcError> {
        Ok(self.state(id)? == ProcState::Down)
    }
    fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        ProcessCluster::partition(self, grudge)
    }
    fn partitioned(&mut self, n: u64) -> bool {
        self.netns().is_some_and(|x| x.has_rules(n))
    }
    fn heal_partition(&mut self) -> Result<(), String> {
        match self.netns() {
            Some(x) => x.heal(),
            None => Ok(()),
        }
    }
    fn link_fault(&mut self, dests: &[u64], f: LinkFault) -> Result<(), String> {
        match self.proxy() {
            Some(p) => {
                p.set_fault(dests, f);
                Ok(())
            }
            None => Err(
                "link faults need the proxy (it is on when the nemesis has delay or loss)".into(),
            ),
        }
    }
    fn one_link_fault(&mut self, from: u64, to: u64, f: LinkFault) -> Result<(), String> {
        match self.proxy() {
            Some(p) => p.set_link_fault(from, to, f),
            None => Err(
                "link faults need the proxy (it is on when the nemesis has delay or loss)".into(),
            ),
        }
    }
    fn heal_links(&mut self) -> Result<(), String> {
        if let Some(p) = self.proxy() {
            p.heal();
        }
        Ok(())
    }
    fn proxy_stats(&self) -> Option<ProxyStats> {
        self.proxy().map(|p| p.stats())
    }
}

/// What a nemesis must undo.
#[derive(Debug, Clone)]
pub enum Undo {
    Restart(Vec<u64>),
    Resume(u64),
    Unskew(u64),
    HealPartition,
    HealLinks,
    Nothing,
}

/// Turns fault kinds into control calls. A new fault family (partitions, a delay proxy)
/// is a new implementation over a backend that can do it.
pub trait Nemesis: Send {
    /// Injects `kind`; `leader` is the leader the scheduler saw just before.
    fn inject(
        &mut self,
        kind: FaultKind,
        leader: Option<u64>,
        rng: &mut Rng,
        ctl: &mut dyn ClusterControl,
    ) -> (Vec<u64>, bool, String, Undo);
    /// Undoes one injected fault; whether that worked.
    fn heal(&mut self, undo: &Undo, ctl: &mut dyn ClusterControl) -> (bool, String);
}

/// Process faults: kill -9, pause, skewed restart.
#[derive(Debug, Default)]
pub struct ProcessNemesis;

fn shuffled(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut pool = ids.to_vec();
    let mut out = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let i = rng.below(pool.len() as u64) as usize;
        out.push(pool.swap_remove(i));
    }
    out
}

/// The link `a → b` a one-link fault acts on: half the time one end is the leader (as
/// sender or receiver), else two nodes at random; `a != b`.
pub fn link_pair(ids: &[u64], leader: Option<u64>, rng: &mut Rng) -> Option<(u64, u64)> {
    if ids.len() < 2 {
        return None;
    }
    let l = leader.filter(|l| ids.contains(l) && rng.below(2) == 0);
    let a = match l {
        Some(l) if rng.below(2) == 0 => l,
        _ => {
            let pool: Vec<u64> = ids.iter().copied().filter(|&i| Some(i) != l).collect();
            let a = pick(&pool, rng)?;
            if let Some(l) = l {
                return Some((a, l));
            }
            a
        }
    };
    let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != a).collect();
    Some((a, pick(&rest, rng)?))
}

fn link_fault_of(kind: FaultKind, rng: &mut Rng) -> LinkFault {
    if kind.is_delay() {
        LinkFault {
            delay_ms: rng.between(DELAY_MS_MIN, DELAY_MS_MAX),
            loss_permille: 0,
        }
    } else {
        LinkFault {
            delay_ms: 0,
            loss_permille: rng.between(LOSS_PERMILLE_MIN, LOSS_PERMILLE_MAX),
        }
    }
}

fn pick(ids: &[u64], rng: &mut Rng) -> Option<u64> {
    if ids.is_empty() {
        return None;
    }
    ids.get(rng.below(ids.len() as u64) as usize).copied()
}

impl Nemesis for ProcessNemesis {
    fn inject(
        &mut self,
        kind: FaultKind,
        leader: Option<u64>,
        rng: &mut Rng,
        ctl: &mut dyn ClusterControl,
    ) -> (Vec<u64>, bool, String, Undo) {
        let ids = ctl.node_ids();
        let targets: Vec<u64> = match kind {
            FaultKind::KillOne | FaultKind::SkewRestart => pick(&ids, rng).into_iter().collect(),
            FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::PartitionLeader => {
                leader.into_iter().collect()
            }
            FaultKind::KillMinority | FaultKind::PartitionHalves => {
                let k = (ids.len().saturating_sub(1)) / 2;
                shuffled(&ids, rng).into_iter().take(k).collect()
            }
            FaultKind::PartitionBridge | FaultKind::PartitionRing => shuffled(&ids, rng),
            FaultKind::Delay | FaultKind::Loss => {
                // The links into every node, or into one (the leader half of the time).
                match rng.below(3) {
                    0 => ids.clone(),
                    1 => leader.or_else(|| pick(&ids, rng)).into_iter().collect(),
                    _ => pick(&ids, rng).into_iter().collect(),
                }
            }
            FaultKind::LinkDelay | FaultKind::LinkLoss => link_pair(&ids, leader, rng)
                .map(|(a, b)| vec![a, b])
                .unwrap_or_default(),
            FaultKind::MemberAdd | FaultKind::MemberRemove => {
                return (
                    vec![],
                    false,
                    "membership changes are made by the scheduler".into(),
                    Undo::Nothing,
                )
            }
        };
        if targets.is_empty() {
            return (
                vec![],
                false,
                "no target (no leader known)".into(),
                Undo::Nothing,
            );
        }
        match kind {
            FaultKind::MemberAdd | FaultKind::MemberRemove => {
                (vec![], false, "not a process fault".into(), Undo::Nothing)
            }
            FaultKind::PartitionLeader
            | FaultKind::PartitionHalves
            | FaultKind::PartitionBridge
            | FaultKind::PartitionRing => {
                let grudge = match kind {
                    FaultKind::PartitionBridge => grudge_bridge(&targets),
                    FaultKind::PartitionRing => grudge_ring(&targets),
                    _ => {
                        let rest: Vec<u64> = ids
                            .iter()
                            .copied()
                            .filter(|i| !targets.contains(i))
                            .collect();
                        grudge_of_groups(&[targets.clone(), rest])
                    }
                };
                match ctl.partition(&grudge) {
                    Ok(what) => {
                        let cut: Vec<u64> = grudge
                            .iter()
                            .filter(|(_, c)| !c.is_empty())
                            .map(|(n, _)| *n)
                            .collect();
                        let effect = !cut.is_empty() && cut.iter().all(|&n| ctl.partitioned(n));
                        (
                            targets,
                            effect,
                            format!("nft drop: {what}"),
                            Undo::HealPartition,
                        )
                    }
                    Err(e) => (
                        targets,
                        false,
                        format!("partition failed: {e}"),
                        Undo::HealPartition,
                    ),
                }
            }
            FaultKind::LinkDelay | FaultKind::LinkLoss => {
                let (a, b) = match targets.as_slice() {
                    [a, b] => (*a, *b),
                    _ => return (targets, false, "no link".into(), Undo::Nothing),
                };
                let f = link_fault_of(kind, rng);
                match ctl.one_link_fault(a, b, f) {
                    Ok(()) => (
                        targets.clone(),
                        true,
                        format!("link n{a} → n{b} only: {f:?}"),
                        Undo::HealLinks,
                    ),
                    Err(e) => (targets, false, e, Undo::Nothing),
                }
            }
            FaultKind::Delay | FaultKind::Loss => {
                let f = if kind == FaultKind::Delay {
                    LinkFault {
                        delay_ms: rng.between(DELAY_MS_MIN, DELAY_MS_MAX),
                        loss_permille: 0,
                    }
                } else {
                    LinkFault {
                        delay_ms: 0,
                        loss_permille: rng.between(LOSS_PERMILLE_MIN, LOSS_PERMILLE_MAX),
                    }
                };
                match ctl.link_fault(&targets, f) {
                    // Whether it took effect is decided from the proxy's counters at heal.
                    Ok(()) => (
                        targets.clone(),
                        true,
                        format!("links into {targets:?}: {f:?}"),
                        Undo::HealLinks,
                    ),
                    Err(e) => (targets, false, e, Undo::Nothing),
                }
            }
            FaultKind::KillOne | FaultKind::KillLeader | FaultKind::KillMinority => {
                let mut killed = Vec::new();
                let mut notes = Vec::new();
                for &id in &targets {
                    match ctl.kill(id) {
                        Ok(true) => killed.push(id),
                        Ok(false) => notes.push(format!("n{id} was not running")),
                        Err(e) => notes.push(format!("n{id}: {e}")),
                    }
                }
                let down = targets.iter().all(|&id| ctl.is_down(id).unwrap_or(false));
                let effect = !killed.is_empty() && down;
                let detail = format!("{} {:?} {}", ctl.verbs().kill, killed, notes.join("; "));
                (targets.clone(), effect, detail, Undo::Restart(targets))
            }
            FaultKind::PauseLeader => {
                let id = targets.first().copied().unwrap_or_default();
                match ctl.pause(id) {
                    Ok(true) => (
                        targets,
                        true,
                        format!("{} n{id}", ctl.verbs().pause),
                        Undo::Resume(id),
                    ),
                    Ok(false) => (targets, false, format!("n{id} not running"), Undo::Nothing),
                    Err(e) => (targets, false, format!("n{id}: {e}"), Undo::Nothing),
                }
            }
            FaultKind::SkewRestart => {
                let id = targets.first().copied().unwrap_or_default();
                let mag = SKEW_MIN_MS + rng.below((SKEW_MAX_MS - SKEW_MIN_MS + 1) as u64) as i64;
                let skew = if rng.below(2) == 0 { mag } else { -mag };
                let graceful = ctl.stop(id).unwrap_or(false);
                match ctl.restart(id, skew) {
                    Ok(()) => (
                        targets,
                        true,
                        format!(
                            "restart n{id} with {}={skew} (graceful stop: {graceful})",
                            ctl.verbs().skew
                        ),
                        Undo::Unskew(id),
                    ),
                    Err(e) => (
                        targets,
                        false,
                        format!("restart n{id} with skew failed: {e}"),
                        Undo::Restart(vec![id]),
                    ),
                }
            }
        }
    }

    fn heal(&mut self, undo: &Undo, ctl: &mut dyn ClusterControl) -> (bool, String) {
        match undo {
            Undo::Nothing => (true, "nothing to heal".into()),
            Undo::Restart(ids) => {
                let mut ok = true;
                let mut notes = Vec::new();
                for &id in ids {
                    if !ctl.is_down(id).unwrap_or(true) {
                        continue;
                    }
                    if let Err(e) = ctl.restart(id, 0) {
                        ok = false;
                        notes.push(format!("n{id}: {e}"));
                    }
                }
                (ok, format!("restart {ids:?} {}", notes.join("; ")))
            }
            Undo::Resume(id) => match ctl.resume(*id) {
                Ok(r) => (
                    true,
                    format!("{} n{id} (was paused: {r})", ctl.verbs().resume),
                ),
                Err(e) => (false, format!("{} n{id}: {e}", ctl.verbs().resume)),
            },
            Undo::HealPartition => match ctl.heal_partition() {
                Ok(()) => (true, "nft rules deleted".into()),
                Err(e) => (false, format!("heal partition: {e}")),
            },
            Undo::HealLinks => match ctl.heal_links() {
                Ok(()) => (true, "link faults cleared".into()),
                Err(e) => (false, format!("heal links: {e}")),
            },
            Undo::Unskew(id) => {
                let _ = ctl.stop(*id);
                match ctl.restart(*id, 0) {
                    Ok(()) => (true, format!("restart n{id} without skew")),
                    Err(e) => (false, format!("restart n{id}: {e}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_pair_is_two_distinct_nodes_often_with_the_leader() {
        let ids = [1, 2, 3];
        let mut rng = Rng::new(5);
        let (mut from_leader, mut to_leader) = (0, 0);
        for _ in 0..300 {
            let (a, b) = link_pair(&ids, Some(2), &mut rng).expect("a pair");
            assert!(a != b && ids.contains(&a) && ids.contains(&b));
            from_leader += u32::from(a == 2);
            to_leader += u32::from(b == 2);
        }
        assert!(
            from_leader > 50 && to_leader > 50,
            "{from_leader} {to_leader}"
        );
        assert_eq!(link_pair(&[1], Some(1), &mut rng), None);
        // Same seed, same pairs.
        let a: Vec<_> = (0..5)
            .scan(Rng::new(9), |r, _| Some(link_pair(&ids, None, r)))
            .collect();
        let b: Vec<_> = (0..5)
            .scan(Rng::new(9), |r, _| Some(link_pair(&ids, None, r)))
            .collect();
        assert_eq!(a, b);
        assert_eq!(
            FaultKind::parse_group("links"),
            Some(vec![FaultKind::LinkDelay, FaultKind::LinkLoss])
        );
        assert!(FaultKind::LinkLoss.is_link() && FaultKind::LinkLoss.is_one_link());
    }
}
