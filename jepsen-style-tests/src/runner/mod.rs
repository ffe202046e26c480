//! The runner: real histories from a real cluster under faults.
//!
//! This module tree owns everything that touches live processes and the network:
//! [`procs`] (process backend), [`client`] (HTTP), [`nemesis`] (faults and their log),
//! [`workload`] (clients and the recorder), [`final_read`] (leader, quiet, final state)
//! and [`run`] (one run end to end, and the PR tier). The offline core (history,
//! checkers, report) stays independent of it: the runner only feeds it.

pub mod client;
pub mod final_read;
pub mod nemesis;
pub mod procs;
pub mod rng;
pub mod run;
pub mod workload;
