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
//! by a restart without skew). Not built (the traits leave room for them): network
//! partitions (namespaces + nftables: a `ClusterControl::partition` over node groups), a
//! userspace TCP delay/loss proxy between nodes, membership changes, the Docker backend.
//!
//! It must not talk HTTP: the scheduler in [`super::run`] finds the leader and confirms
//! effects; this module only acts on processes.

use serde::Serialize;

use super::procs::{ProcError, ProcState, ProcessCluster};
use super::rng::Rng;

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
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillOne => "kill_one",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillMinority => "kill_minority",
            FaultKind::PauseLeader => "pause_leader",
            FaultKind::SkewRestart => "skew_restart",
        }
    }

    /// The kinds a `--nemesis` word names: `kill`, `kill-leader`, `pause`, `skew`, or a
    /// kind's own name.
    pub fn parse_group(word: &str) -> Option<Vec<FaultKind>> {
        use FaultKind::*;
        Some(match word.trim() {
            "kill" => vec![KillOne, KillLeader, KillMinority],
            "kill-leader" | "kill_leader" => vec![KillLeader],
            "kill-one" | "kill_one" => vec![KillOne],
            "kill-minority" | "kill_minority" => vec![KillMinority],
            "pause" | "pause_leader" | "pause-leader" => vec![PauseLeader],
            "skew" | "skew_restart" | "skew-restart" => vec![SkewRestart],
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

/// What a cluster backend must offer the nemesis. Process control today; a namespace
/// backend would add `partition(&[Vec<u64>])` / `heal_network()`, Docker would map these
/// onto `docker kill -s KILL`, `docker pause`.
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
}

/// What a nemesis must undo.
#[derive(Debug, Clone)]
pub enum Undo {
    Restart(Vec<u64>),
    Resume(u64),
    Unskew(u64),
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
            FaultKind::KillLeader | FaultKind::PauseLeader => leader.into_iter().collect(),
            FaultKind::KillMinority => {
                let k = (ids.len().saturating_sub(1)) / 2;
                let mut pool = ids.clone();
                let mut out = Vec::new();
                while out.len() < k && !pool.is_empty() {
                    let i = rng.below(pool.len() as u64) as usize;
                    out.push(pool.swap_remove(i));
                }
                out
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
                let detail = format!("kill -9 {:?} {}", killed, notes.join("; "));
                (targets.clone(), effect, detail, Undo::Restart(targets))
            }
            FaultKind::PauseLeader => {
                let id = targets.first().copied().unwrap_or_default();
                match ctl.pause(id) {
                    Ok(true) => (targets, true, format!("SIGSTOP n{id}"), Undo::Resume(id)),
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
                            "restart n{id} with --clock-skew-ms={skew} (graceful stop: {graceful})"
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
                Ok(r) => (true, format!("SIGCONT n{id} (was paused: {r})")),
                Err(e) => (false, format!("SIGCONT n{id}: {e}")),
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
