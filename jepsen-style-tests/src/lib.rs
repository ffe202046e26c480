//! Stockade's Jepsen-style suite: the offline core.
//!
//! This crate owns the operation [`history`] recorded by concurrent clients, the
//! [`final_state`] read after heal, the [`checkers`] that judge them (no oversell, no lost
//! acknowledged operation, no phantom, idempotency, conservation and convergence, expiry,
//! and per-sale [`linearizability`]), and the [`report`] a run prints and saves. Cluster
//! control, the nemesis and the workloads come later and feed this core.
//!
//! It depends on no crate of the product on purpose: the checkers must stay independent
//! of the implementation they judge; the history and final state are what clients saw.
//!
//! ```
//! use stockade_jepsen::{checkers, history::*, verdict::*};
//! let mut b = HistoryBuilder::new(0).sale("s", 1, 1, 60_000, 0);
//! let a = b.reserve(1, "s", "alice", 1, "r1");
//! b.ok(a, 0, 10, held(1, 1, 60_000));
//! let c = b.reserve(2, "s", "bob", 1, "r2");
//! b.ok(c, 5, 15, held(2, 1, 60_000)); // the last unit, granted twice
//! let results = checkers::check_all(&b.build(), None, &CheckConfig::default());
//! let lin = results.iter().find(|r| r.checker == "linearizability").unwrap();
//! assert_eq!(lin.verdict, Verdict::Invalid);
//! ```

pub mod checkers;
pub mod final_state;
pub mod history;
pub mod linearizability;
pub mod ports;
pub mod report;
pub mod runner;
pub mod verdict;
