//! The leader's clock for log entries: wall-clock milliseconds, never going backwards
//! on this node (`max(wall, last stamped)`), plus an offset that tests and the
//! fault-injection suite use to skew one node's clock.
//!
//! Only the leader stamps entries; the state machine keeps `max(clock, at_ms)`, so a new
//! leader whose clock is behind cannot move time backwards for the cluster either.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default, Debug)]
pub struct Stamper {
    last_ms: AtomicU64,
    skew_ms: AtomicI64,
}

impl Stamper {
    pub fn new(skew_ms: i64) -> Self {
        Stamper {
            last_ms: AtomicU64::new(0),
            skew_ms: AtomicI64::new(skew_ms),
        }
    }

    /// The wall clock with skew applied, without stamping.
    pub fn wall_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall.saturating_add_signed(self.skew_ms.load(Ordering::Relaxed))
    }

    /// A stamp for a new log entry: at least every stamp this node gave before.
    pub fn stamp(&self) -> u64 {
        let now = self.wall_ms();
        let prev = self.last_ms.fetch_max(now, Ordering::AcqRel);
        prev.max(now)
    }

    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_backwards_even_when_the_clock_does() {
        let s = Stamper::new(0);
        let a = s.stamp();
        s.set_skew_ms(-60_000);
        let b = s.stamp();
        assert!(b >= a, "{b} < {a}");
        assert!(
            s.wall_ms() + 50_000 < a,
            "the skew applies to the wall clock"
        );
    }
}
