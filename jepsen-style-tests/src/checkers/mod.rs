//! The checkers that judge a history (and the final state read after heal).
//!
//! This module owns the list of checkers and [`check_all`], which runs them in a fixed
//! order. Each checker is a pure function returning a [`CheckResult`]; none of them
//! shares code with the product it judges. The business codes the state machine decides
//! (and stores for idempotent replay) are listed here, copied from the API contract on
//! purpose rather than imported.

pub mod convergence;
pub mod expiry;
pub mod idempotency;
pub mod lost;
pub mod oversell;
pub mod phantom;

use crate::final_state::FinalState;
use crate::history::History;
use crate::linearizability;
use crate::verdict::{CheckConfig, CheckResult};

/// Rejection codes decided by the replicated state machine: such a `Fail` is the stored,
/// replayed answer of its `(user, request_id)`, so no retry of it may ever succeed.
/// Other fail codes (validation, rate limiting) may come from before the state machine.
pub const STATE_MACHINE_CODES: &[&str] = &[
    "sale_not_found",
    "sale_not_started",
    "sale_ended",
    "sold_out",
    "insufficient_stock",
    "limit_exceeded",
    "too_many_holds",
    "hold_not_found",
    "not_owner",
    "hold_expired",
    "hold_not_active",
    "order_not_found",
    "order_not_awaiting_payment",
    "payment_window_expired",
    "amount_mismatch",
    "payment_ref_conflict",
    "order_not_cancellable",
    "not_sold_out",
    "already_waitlisted",
    "waitlist_full",
];

/// Whether a fail code is one the state machine decides.
pub fn is_state_machine_code(code: &str) -> bool {
    STATE_MACHINE_CODES.contains(&code)
}

/// Runs every checker. Checkers that need the final state report `Unknown` without it.
pub fn check_all(
    history: &History,
    final_state: Option<&FinalState>,
    config: &CheckConfig,
) -> Vec<CheckResult> {
    vec![
        oversell::check(history, final_state, config),
        lost::check(history, final_state),
        phantom::check(history, final_state),
        idempotency::check(history, final_state),
        convergence::check(history, final_state),
        expiry::check(history, final_state, config),
        linearizability::check_with(history, final_state, config),
    ]
}
