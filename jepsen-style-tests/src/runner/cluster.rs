//! The cluster a run drives, whichever backend runs it.
//!
//! This module owns [`Cluster`]: node processes ([`ProcessCluster`]: loopback or network
//! namespaces, optionally behind the proxy) or containers ([`DockerCluster`]), with the
//! calls the run loop, the nemesis ([`ClusterControl`]) and the membership changes need.
//! It only dispatches: each backend owns its own faults and its own cleanup (on `Drop`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::docker::DockerCluster;
use super::nemesis::{ClusterControl, Verbs};
use super::procs::{NodeSpec, ProcError, ProcessCluster};
use super::proxy::{LinkFault, Proxy, ProxyStats};

/// One run's nodes.
pub enum Cluster {
    /// `stockade` processes (local or netns backend).
    Procs(ProcessCluster),
    /// Containers of a compose project (docker backend).
    Docker(DockerCluster),
}

impl Cluster {
    pub fn specs(&self) -> Vec<NodeSpec> {
        match self {
            Cluster::Procs(c) => c.specs(),
            Cluster::Docker(c) => c.specs(),
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        match self {
            Cluster::Procs(c) => c.ids(),
            Cluster::Docker(c) => c.ids(),
        }
    }

    /// The nodes' data (processes) or where logs and kept data go (containers).
    pub fn dir(&self) -> &Path {
        match self {
            Cluster::Procs(c) => c.dir(),
            Cluster::Docker(c) => c.dir(),
        }
    }

    /// The namespace prefix of a netns run.
    pub fn netns_prefix(&mut self) -> Option<String> {
        match self {
            Cluster::Procs(c) => c.netns().map(|n| n.prefix().to_string()),
            Cluster::Docker(_) => None,
        }
    }

    /// The compose project of a docker run.
    pub fn docker_project(&self) -> Option<String> {
        match self {
            Cluster::Procs(_) => None,
            Cluster::Docker(c) => Some(c.project().to_string()),
        }
    }

    pub fn log_tail(&self, id: u64, max_bytes: usize) -> String {
        match self {
            Cluster::Procs(c) => c.log_tail(id, max_bytes),
            Cluster::Docker(c) => c.log_tail(id, max_bytes),
        }
    }

    /// Starts a fresh node (`--init never`) to be added with the admin API.
    pub fn add_node(&mut self) -> Result<NodeSpec, ProcError> {
        match self {
            Cluster::Procs(c) => c.add_node(),
            Cluster::Docker(c) => c.add_node(),
        }
    }

    /// Stops an added node and forgets it.
    pub fn retire(&mut self, id: u64) -> Result<(), ProcError> {
        match self {
            Cluster::Procs(c) => c.retire(id),
            Cluster::Docker(c) => c.retire(id),
        }
    }

    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            Cluster::Procs(c) => c.proxy(),
            Cluster::Docker(_) => None,
        }
    }

    pub fn skew_ms(&mut self, id: u64) -> Result<i64, ProcError> {
        match self {
            Cluster::Procs(c) => c.skew_ms(id),
            Cluster::Docker(c) => c.skew_ms(id),
        }
    }

    fn ctl(&mut self) -> &mut dyn ClusterControl {
        match self {
            Cluster::Procs(c) => c,
            Cluster::Docker(c) => c,
        }
    }
}

impl ClusterControl for Cluster {
    fn node_ids(&self) -> Vec<u64> {
        self.ids()
    }
    fn kill(&mut self, id: u64) -> Result<bool, ProcError> {
        self.ctl().kill(id)
    }
    fn stop(&mut self, id: u64) -> Result<bool, ProcError> {
        self.ctl().stop(id)
    }
    fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        self.ctl().restart(id, skew_ms)
    }
    fn pause(&mut self, id: u64) -> Result<bool, ProcError> {
        self.ctl().pause(id)
    }
    fn resume(&mut self, id: u64) -> Result<bool, ProcError> {
        self.ctl().resume(id)
    }
    fn is_down(&mut self, id: u64) -> Result<bool, ProcError> {
        self.ctl().is_down(id)
    }
    fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        self.ctl().partition(grudge)
    }
    fn partitioned(&mut self, n: u64) -> bool {
        self.ctl().partitioned(n)
    }
    fn heal_partition(&mut self) -> Result<(), String> {
        self.ctl().heal_partition()
    }
    fn link_fault(&mut self, dests: &[u64], f: LinkFault) -> Result<(), String> {
        self.ctl().link_fault(dests, f)
    }
    fn one_link_fault(&mut self, from: u64, to: u64, f: LinkFault) -> Result<(), String> {
        self.ctl().one_link_fault(from, to, f)
    }
    fn heal_links(&mut self) -> Result<(), String> {
        self.ctl().heal_links()
    }
    fn proxy_stats(&self) -> Option<ProxyStats> {
        match self {
            Cluster::Procs(c) => c.proxy_stats(),
            Cluster::Docker(c) => c.proxy_stats(),
        }
    }
    fn verbs(&self) -> Verbs {
        match self {
            Cluster::Procs(c) => c.verbs(),
            Cluster::Docker(c) => c.verbs(),
        }
    }
}
