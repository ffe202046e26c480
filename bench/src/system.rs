//! What the harness needs from each system besides the load itself.

use std::sync::Arc;

use anyhow::Result;
use stockade_cli::bench::Target;

/// A system's own counters of one sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub quantity: i64,
    pub available: i64,
    pub held: i64,
    /// Checked out (awaiting payment or paid).
    pub ordered: i64,
}

impl Counters {
    /// Units in use above the quantity (0 when nothing was oversold). A negative
    /// `available` is an oversell too.
    pub fn oversell(&self) -> i64 {
        let in_use = self.held + self.ordered;
        (in_use - self.quantity).max(0).max(-self.available)
    }

    /// Every unit is exactly once available, held or ordered.
    pub fn conserves(&self) -> bool {
        self.available >= 0
            && self.held >= 0
            && self.ordered >= 0
            && self.available + self.held + self.ordered == self.quantity
    }
}

/// One system under test, already running.
#[allow(async_fn_in_trait)]
pub trait System {
    type T: Target;
    /// Its name in the table.
    fn name(&self) -> String;
    /// Creates a sale of `units` units with holds of `ttl_ms`, for `clients` clients.
    async fn prepare(
        &self,
        sale: &str,
        units: u64,
        ttl_ms: u64,
        clients: usize,
    ) -> Result<Arc<Self::T>>;
    /// Returns expired holds to stock, as the application built on this system would
    /// (a sweeper); nothing where the system expires holds itself.
    async fn reap(&self, t: &Self::T) -> Result<u64>;
    /// The sale's counters, read from the system.
    async fn counters(&self, t: &Self::T) -> Result<Counters>;
    /// The system's own count of disk syncs so far (all its processes), if it has one.
    async fn fsyncs(&self) -> Result<Option<u64>>;
    /// The PIDs of its server processes.
    fn pids(&self) -> Vec<u32>;
    /// Writes what the system still holds in memory and will write later on its own (a
    /// checkpoint), so that it lands between runs, not in the next system's.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversell_and_conservation() {
        let c = Counters {
            quantity: 10,
            available: 2,
            held: 3,
            ordered: 5,
        };
        assert_eq!(c.oversell(), 0);
        assert!(c.conserves());
        let c = Counters {
            quantity: 10,
            available: 0,
            held: 4,
            ordered: 8,
        };
        assert_eq!(c.oversell(), 2);
        assert!(!c.conserves());
        let c = Counters {
            quantity: 10,
            available: -1,
            held: 0,
            ordered: 10,
        };
        assert_eq!(c.oversell(), 1);
        assert!(!c.conserves());
    }
}
