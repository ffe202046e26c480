//! The leader-only ticker: it proposes `Tick` when the earliest deadline in the state
//! machine is due (hold expiry, payment timeout, sale close, idempotency purge), so an
//! idle cluster writes nothing. It does nothing on followers and stops proposing as soon
//! as leadership is lost (a stale leader's Tick could not commit anyway). Expiry is a
//! replicated command, never a side effect of a local timer.

use std::sync::Arc;
use std::time::Duration;

use stockade_raft_store::{Command, Response};
use tokio::sync::watch;

use crate::cluster::NodeCluster;

/// Longest the ticker sleeps before looking again (new deadlines may appear earlier
/// than the one it is waiting for).
pub const TICK_POLL_MAX: Duration = Duration::from_millis(50);
/// Pause after a failed Tick proposal before trying again.
const TICK_RETRY: Duration = Duration::from_millis(200);

pub async fn run(cluster: Arc<NodeCluster>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let pause = step(&cluster).await;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One look: proposes a Tick if a deadline is due; returns how long to sleep.
async fn step(cluster: &NodeCluster) -> Duration {
    if !cluster.raft.is_leader() {
        return TICK_POLL_MAX;
    }
    let next = match cluster.sm.next_deadline_ms() {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "reading the next deadline failed");
            return TICK_RETRY;
        }
    };
    let now = cluster.stamper.wall_ms();
    match next {
        Some(due) if due <= now => match cluster.propose_local(Command::Tick).await {
            Ok(Response::Ticked(r)) => {
                tracing::debug!(?r, "tick");
                if r.more_due {
                    Duration::ZERO
                } else {
                    r.next_deadline_ms.map_or(TICK_POLL_MAX, |t| {
                        Duration::from_millis(t.saturating_sub(now)).min(TICK_POLL_MAX)
                    })
                }
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected answer to Tick");
                TICK_RETRY
            }
            Err(e) => {
                tracing::debug!(?e, "tick not proposed");
                TICK_RETRY
            }
        },
        Some(due) => Duration::from_millis(due - now).min(TICK_POLL_MAX),
        None => TICK_POLL_MAX,
    }
}
