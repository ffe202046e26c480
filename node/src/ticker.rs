//! The leader-only ticker: it proposes `Tick` when the earliest deadline in the state
//! machine is due (hold expiry, payment timeout, sale close, idempotency purge), so an
//! idle cluster writes nothing. It does nothing on followers and stops proposing as soon
//! as leadership is lost (a stale leader's Tick could not commit anyway). Expiry is a
//! replicated command, never a side effect of a local timer.
//!
//! On `/metrics` the leader reports what its Ticks did (`stockade_tick_expirations`, a
//! histogram of the holds and orders each expired and the idempotency records it purged)
//! and how far expiry is behind (`stockade_deadline_lag_seconds`: how late the earliest
//! due deadline was at the ticker's last look). A hold that is due but not yet expired
//! still keeps its units from the crowd, so a lag that grows is what an operator watches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use stockade_raft_store::types::TickReport;
use stockade_raft_store::{Command, Response};
use tokio::sync::watch;

use crate::cluster::NodeCluster;

/// Longest the ticker sleeps before looking again (new deadlines may appear earlier
/// than the one it is waiting for).
pub const TICK_POLL_MAX: Duration = Duration::from_millis(50);
/// Pause after a failed Tick proposal before trying again.
const TICK_RETRY: Duration = Duration::from_millis(200);
/// Buckets of `stockade_tick_expirations`: 1, 2, 4, … 512 records, then `+Inf` (a Tick
/// handles at most `TICK_EXPIRE_BATCH_MAX`, 256, deadlines).
pub const TICK_EXPIRATION_BUCKETS: u16 = 10;

/// The histogram of what each Tick expired or purged ([`TICK_EXPIRATION_BUCKETS`]
/// doubling buckets from 1). Clones share their counts.
pub fn expirations_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, TICK_EXPIRATION_BUCKETS))
}

/// Holds and orders one Tick expired plus the idempotency records it purged.
fn expirations(r: &TickReport) -> f64 {
    f64::from(r.holds_expired) + f64::from(r.orders_expired) + f64::from(r.records_purged)
}

/// How late the earliest deadline is at `now_ms`, in ms (0 if none is due).
fn lag_ms(next_deadline_ms: Option<u64>, now_ms: u64) -> u64 {
    next_deadline_ms.map_or(0, |due| now_ms.saturating_sub(due))
}

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
    let lag = &cluster.stats.deadline_lag_ms;
    if !cluster.raft.is_leader() {
        lag.store(0, Ordering::Relaxed);
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
    lag.store(lag_ms(next, now), Ordering::Relaxed);
    match next {
        Some(due) if due <= now => match cluster.propose_local(Command::Tick).await {
            Ok(Response::Ticked(r)) => {
                tracing::debug!(?r, "tick");
                cluster.stats.tick_expirations.observe(expirations(&r));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_only_deadlines_already_due() {
        assert_eq!(lag_ms(None, 5_000), 0);
        assert_eq!(lag_ms(Some(6_000), 5_000), 0, "not due yet");
        assert_eq!(lag_ms(Some(5_000), 5_000), 0, "due this very ms");
        assert_eq!(lag_ms(Some(4_250), 5_000), 750);
    }

    #[test]
    fn expirations_add_holds_orders_and_purged_records_only() -> std::fmt::Result {
        let r = TickReport {
            holds_expired: 3,
            orders_expired: 2,
            records_purged: 5,
            waitlist_dropped: 7,
            waitlist_promoted: 11,
            more_due: true,
            next_deadline_ms: Some(1),
        };
        assert_eq!(expirations(&r), 10.0);
        let h = expirations_histogram();
        h.observe(expirations(&r));
        h.observe(0.0);
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("t", "t", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &reg)?;
        assert!(text.contains("t_count 2"), "{text}");
        assert!(text.contains("t_sum 10.0"), "{text}");
        // 10 falls in the bucket up to 16; the zero in the first one.
        assert!(text.contains("t_bucket{le=\"1.0\"} 1"), "{text}");
        assert!(text.contains("t_bucket{le=\"8.0\"} 1"), "{text}");
        assert!(text.contains("t_bucket{le=\"16.0\"} 2"), "{text}");
        assert!(text.contains("t_bucket{le=\"512.0\"} 2"), "{text}");
        Ok(())
    }
}
