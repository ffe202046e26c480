//! Integration tests of the history format and the checkers: every checker must reject a
//! deliberately broken history with the right counterexample and accept a correct one.

mod common;
mod history_io;
mod lin_waitlist;
mod linearizability;
mod props;
mod report;
mod state_checkers;
