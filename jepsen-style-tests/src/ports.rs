//! Loopback ports for test clusters, reserved for as long as the cluster lives.
//!
//! The usual trick, binding port 0 and releasing it, hands out a port from the kernel's
//! ephemeral range and keeps nothing: between the release and the node's own bind, any
//! outgoing connection on the machine (a client, the delay proxy, a follower dialling the
//! leader) may take that port as its source port, and a parallel test may be handed the
//! same one. CI saw it once (2026-12-04): `cannot bind 127.0.0.1:35687: Address already in
//! use` and a plan that never got a leader. A node that is killed and restarted on its
//! port has the same window for as long as it is down.
//!
//! So a [`PortLease`] is taken from *outside* the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never picks source ports,
//! and is held with an exclusive `flock` on `$TMPDIR/stockade-ports/<port>` until it is
//! dropped: another test process (nextest runs them in parallel) or another cluster in
//! this process skips a locked port. A port is handed out only if a listener can bind it
//! on every IPv4 address right now, so ports taken by programs that know nothing of the
//! locks are skipped too.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port handed out.
pub const PORT_MIN: u16 = 10_000;
/// Fewest ports below the ephemeral range for that gap to be used; otherwise the ports
/// above it are.
pub const PORT_SPAN_MIN: u16 = 1_000;
/// Candidates tried before giving up.
pub const PORT_ATTEMPTS_MAX: usize = 4_096;
/// Linux's default ephemeral range, assumed when `/proc` cannot be read.
const EPHEMERAL_DEFAULT: (u16, u16) = (32_768, 60_999);

/// A port no one else in this scheme uses until this value is dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    // Holds the flock; closing the file releases it.
    _lock: File,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The kernel's ephemeral (source) port range.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or(EPHEMERAL_DEFAULT)
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
    match (it.next()?, it.next()?) {
        (Ok(lo), Ok(hi)) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// The ports to pick from, `[lo, hi]`: below the ephemeral range if that gap is wide
/// enough, else above it; `None` if neither is.
fn candidate_range((eph_lo, eph_hi): (u16, u16)) -> Option<(u16, u16)> {
    if eph_lo > PORT_MIN && eph_lo - PORT_MIN >= PORT_SPAN_MIN {
        return Some((PORT_MIN, eph_lo - 1));
    }
    let lo = eph_hi.checked_add(1)?.max(PORT_MIN);
    (u16::MAX - lo >= PORT_SPAN_MIN).then_some((lo, u16::MAX))
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("stockade-ports")
}

/// Reserves one port (see the module docs).
pub fn reserve() -> io::Result<PortLease> {
    let (lo, hi) = candidate_range(ephemeral_range()).ok_or_else(|| {
        io::Error::other("no port range outside the ephemeral range is wide enough")
    })?;
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)?;
    let span = u64::from(hi - lo) + 1;
    // A different starting point per process and call keeps parallel tests apart.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 20);
    let start = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    for i in 0..PORT_ATTEMPTS_MAX as u64 {
        let port = lo + ((start.wrapping_add(i)) % span) as u16;
        if let Some(lease) = try_lease(&dir, port)? {
            return Ok(lease);
        }
    }
    Err(io::Error::other(format!(
        "no free port in {lo}-{hi} after {PORT_ATTEMPTS_MAX} tries"
    )))
}

/// `port` if no lease holds it and a listener can bind it on every IPv4 address now.
fn try_lease(dir: &Path, port: u16) -> io::Result<Option<PortLease>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    Ok(TcpListener::bind(("0.0.0.0", port))
        .is_ok()
        .then_some(PortLease { port, _lock: file }))
}

/// `n` reserved ports, all different.
pub fn reserve_n(n: usize) -> io::Result<Vec<PortLease>> {
    (0..n).map(|_| reserve()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_avoids_the_ephemeral_ports() {
        assert_eq!(candidate_range((32_768, 60_999)), Some((10_000, 32_767)));
        // A range starting low: the ports above it.
        assert_eq!(candidate_range((1_024, 50_000)), Some((50_001, 65_535)));
        // Neither side wide enough.
        assert_eq!(candidate_range((10_500, 65_000)), None);
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("9 3"), None);
        assert_eq!(parse_range("x"), None);
    }

    #[test]
    fn a_leased_port_is_not_handed_out_again_until_dropped() {
        let leases = reserve_n(64).unwrap();
        let (eph_lo, eph_hi) = ephemeral_range();
        let mut ports: Vec<u16> = leases.iter().map(|l| l.port()).collect();
        for &p in &ports {
            assert!(!(eph_lo..=eph_hi).contains(&p), "{p} is an ephemeral port");
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 64, "a port was leased twice");
        // While held, the lock refuses a second holder, in this process too.
        let held = leases[0].port();
        let f = OpenOptions::new()
            .write(true)
            .open(lock_dir().join(held.to_string()))
            .unwrap();
        assert!(matches!(f.try_lock(), Err(TryLockError::WouldBlock)));
        drop(leases);
        assert!(f.try_lock().is_ok(), "the lock outlived its lease");
    }

    #[test]
    fn a_port_someone_listens_on_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        // Someone outside the scheme listens: no lock file, but the bind check sees it.
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        assert!(try_lease(dir.path(), port).unwrap().is_none());
        drop(squatter);
        let lease = try_lease(dir.path(), port).unwrap();
        assert_eq!(lease.map(|l| l.port()), Some(port));
    }
}
