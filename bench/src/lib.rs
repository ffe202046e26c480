//! `bench-peers`: Stockade side by side with what a user would otherwise build (Redis,
//! etcd, PostgreSQL), all on loopback on this machine, under one load generator: the
//! flash-crowd engine of `stockctl bench` ([`stockade_cli::bench`]) with one
//! [`stockade_cli::bench::Target`] per system.
//!
//! - [`system`]: what the harness needs from a system besides the load (counters,
//!   sweeper, fsync counter, PIDs);
//! - [`stockade`], [`redis_peer`], [`etcd`], [`pg`]: the systems;
//! - [`sys`]: processes by PID, CPU time from /proc, the fdatasync probe;
//! - [`report`]: medians with min–max, and the table.

pub mod etcd;
pub mod pg;
pub mod redis_peer;
pub mod report;
pub mod stockade;
pub mod sys;
pub mod system;

use std::time::Duration;

/// Timeout of a harness request for metrics or health.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `url` as text (loopback only: every URL the harness builds is 127.0.0.1).
pub async fn http_text(url: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        url.starts_with("http://127.0.0.1:"),
        "refusing a non-loopback URL: {url}"
    );
    let c = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let r = c.get(url).send().await?;
    Ok(r.text().await?)
}

/// The value of an unlabelled Prometheus sample `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_finds_the_exact_sample() {
        let t = "# HELP x\nstockade_wal_syncs_total 42\nstockade_wal_syncs_total_other 1\n\
                 etcd_disk_wal_fsync_duration_seconds_count 7\n";
        assert_eq!(metric(t, "stockade_wal_syncs_total"), Some(42.0));
        assert_eq!(
            metric(t, "etcd_disk_wal_fsync_duration_seconds_count"),
            Some(7.0)
        );
        assert_eq!(metric(t, "missing"), None);
    }
}
