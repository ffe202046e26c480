//! The runner: real histories from a real cluster under faults.
//!
//! This module tree owns everything that touches live processes and the network:
//! [`procs`] (process backend), [`docker`] (containers of a compose project),
//! [`cluster`] (either of them), [`client`] (HTTP), [`nemesis`] (faults and their log),
//! [`netns`] (namespaces and nftables partitions), [`proxy`] (delay/loss between nodes),
//! [`membership`] (add/remove nodes), [`workload`] (clients and the recorder),
//! [`final_read`] (leader, quiet, final state) and [`run`] (one run end to end, tiers). The offline core (history,
//! checkers, report) stays independent of it: the runner only feeds it.

pub mod client;
pub mod cluster;
pub mod docker;
pub mod final_read;
pub mod membership;
pub mod nemesis;
pub mod netns;
pub mod procs;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod workload;
