//! A userspace TCP proxy in front of every node's Raft/gRPC port, for delay and loss
//! (the kernel here has no `tc netem`).
//!
//! This module owns one listener per node ("the links into node `d`"): each node's Raft
//! address in the cluster membership is its proxy listener, so every Raft message,
//! snapshot and forwarded client write *to* node `d` (and the answers on the same
//! connection) passes through it. A fault is set per destination node:
//! - delay: every chunk, in each direction, is held `DELAY_MS` plus jitter before it is
//!   written on (order kept: a chunk never overtakes the one before it);
//! - loss: a share of new connections is refused (closed at once), and on every
//!   [`LOSS_TICK`] each open connection is, with that share, reset (RST) or blackholed for
//!   an interval (its bytes held, none delivered, then released).
//!
//! Per-link faults (sender → destination, one direction only): on the namespace network
//! each node connects from its own address, so the listener of node `b` tells a
//! connection from node `a` by its source address ([`Proxy::register_source`]). A fault
//! set on the link `a → b` ([`Proxy::set_link_fault`]) acts on `a`'s connections into `b`
//! only: its delay and blackholes on the bytes `a` sends (the answers `b` sends back on
//! them, and `b`'s own connections into `a`, are untouched); its refusals and resets on
//! those connections (a reset ends the connection, both ways, as TCP must). On loopback
//! every sender has the same address, so no link fault can be placed there.
//!
//! Works on loopback and on the namespace network (the listener binds the runner's address
//! there). It must not look into the bytes, and every queue, connection count and interval
//! is bounded by a named const. Dropping the [`Proxy`] stops every listener and connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::rng::Rng;

/// Smallest added one-way delay of a delay fault (ms).
pub const DELAY_MS_MIN: u64 = 20;
/// Largest added one-way delay of a delay fault (ms).
pub const DELAY_MS_MAX: u64 = 200;
/// Jitter added on top of a link's delay, per chunk, uniform in `0..=` this (ms).
pub const JITTER_MS_MAX: u64 = 40;
/// Smallest share of a loss fault, per mille.
pub const LOSS_PERMILLE_MIN: u64 = 100;
/// Largest share of a loss fault, per mille.
pub const LOSS_PERMILLE_MAX: u64 = 400;
/// How often a lossy link rolls for each open connection.
pub const LOSS_TICK: Duration = Duration::from_millis(250);
/// How long a blackholed connection holds its bytes (ms, uniform).
pub const BLACKHOLE_MS: (u64, u64) = (300, 1_500);
/// Bytes read at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks queued per direction of one connection (backpressure beyond).
const CHUNKS_QUEUED_MAX: usize = 256;
/// Open connections per destination; more are refused.
pub const CONNS_PER_DEST_MAX: u64 = 256;
/// Pause after a failed accept.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Timeout of the proxy's connect to the node.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The fault on the links into one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkFault {
    /// Added one-way delay, ms (0: none).
    pub delay_ms: u64,
    /// Share of connections refused / reset / blackholed per tick, per mille (0: none).
    pub loss_permille: u64,
}

/// What the proxy did, for the report (totals since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    pub accepted: u64,
    pub refused: u64,
    pub resets: u64,
    pub blackholes: u64,
    pub delayed_chunks: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    blackholes: AtomicU64,
    delayed_chunks: AtomicU64,
    bytes: AtomicU64,
}

struct Dest {
    target: SocketAddr,
    listen: SocketAddr,
    fault: LinkFault,
}

struct Inner {
    dests: Mutex<BTreeMap<u64, Dest>>,
    /// Faults on one link `(from, to)`.
    links: Mutex<BTreeMap<(u64, u64), LinkFault>>,
    /// Which node connects from which address.
    sources: Mutex<BTreeMap<IpAddr, u64>>,
    tasks: Mutex<Vec<AbortHandle>>,
    counters: Counters,
    next_conn: AtomicU64,
    seed: u64,
}

impl Inner {
    fn fault(&self, dest: u64) -> LinkFault {
        self.dests
            .lock()
            .ok()
            .and_then(|d| d.get(&dest).map(|x| x.fault))
            .unwrap_or_default()
    }

    /// The fault on the link from `src` (if known) into `dest`.
    fn link(&self, src: Option<u64>, dest: u64) -> LinkFault {
        let Some(src) = src else {
            return LinkFault::default();
        };
        self.links
            .lock()
            .ok()
            .and_then(|l| l.get(&(src, dest)).copied())
            .unwrap_or_default()
    }

    fn source_of(&self, ip: IpAddr) -> Option<u64> {
        self.sources.lock().ok().and_then(|s| s.get(&ip).copied())
    }

    fn track(&self, h: AbortHandle) {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|x| !x.is_finished());
            t.push(h);
        }
    }
}

/// The proxy. Dropping it aborts every listener and connection.
pub struct Proxy {
    inner: Arc<Inner>,
    rt: tokio::runtime::Handle,
    host: String,
}

impl Proxy {
    /// A proxy whose listeners bind `host` (an IP), run on `rt`.
    pub fn new(rt: tokio::runtime::Handle, host: &str, seed: u64) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                dests: Mutex::new(BTreeMap::new()),
                links: Mutex::new(BTreeMap::new()),
                sources: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
                counters: Counters::default(),
                next_conn: AtomicU64::new(0),
                seed,
            }),
            rt,
            host: host.to_string(),
        }
    }

    /// Opens the listener for the links into node `dest` (real address `target`); the
    /// address nodes must use for it.
    pub fn add_dest(&self, dest: u64, target: SocketAddr) -> Result<SocketAddr, String> {
        let l = std::net::TcpListener::bind((self.host.as_str(), 0))
            .map_err(|e| format!("proxy bind {}: {e}", self.host))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("proxy listener: {e}"))?;
        let listen = l.local_addr().map_err(|e| format!("proxy addr: {e}"))?;
        let open = Arc::new(AtomicU64::new(0));
        if let Ok(mut d) = self.inner.dests.lock() {
            d.insert(
                dest,
                Dest {
                    target,
                    listen,
                    fault: LinkFault::default(),
                },
            );
        }
        let inner = self.inner.clone();
        let h = self.rt.spawn(async move {
            let Ok(l) = TcpListener::from_std(l) else {
                return;
            };
            accept_loop(l, dest, target, open, inner).await;
        });
        self.inner.track(h.abort_handle());
        Ok(listen)
    }

    /// The proxy address of node `dest`.
    pub fn listen_addr(&self, dest: u64) -> Option<SocketAddr> {
        self.inner
            .dests
            .lock()
            .ok()
            .and_then(|d| d.get(&dest).map(|x| x.listen))
    }

    /// The node address behind `dest`'s listener.
    pub fn target(&self, dest: u64) -> Option<SocketAddr> {
        self.inner
            .dests
            .lock()
            .ok()
            .and_then(|d| d.get(&dest).map(|x| x.target))
    }

    /// Sets the fault on the links into each of `dests`.
    pub fn set_fault(&self, dests: &[u64], f: LinkFault) {
        if let Ok(mut d) = self.inner.dests.lock() {
            for id in dests {
                if let Some(x) = d.get_mut(id) {
                    x.fault = f;
                }
            }
        }
    }

    /// Names the node whose connections come from `ip` (per-link faults need it).
    pub fn register_source(&self, ip: IpAddr, node: u64) {
        if let Ok(mut s) = self.inner.sources.lock() {
            s.insert(ip, node);
        }
    }

    /// Whether connections from `from` can be told from the others (its address is
    /// registered and no other node shares it).
    pub fn can_tell(&self, from: u64) -> bool {
        self.inner
            .sources
            .lock()
            .map(|s| s.values().filter(|&&n| n == from).count() == 1)
            .unwrap_or(false)
    }

    /// Sets the fault on the link `from → to` only (see the module doc).
    pub fn set_link_fault(&self, from: u64, to: u64, f: LinkFault) -> Result<(), String> {
        if from == to {
            return Err(format!("no link from n{from} to itself"));
        }
        if !self.can_tell(from) {
            return Err(format!(
                "the proxy cannot tell n{from}'s connections from the others' (per-link \
                 faults need each node on an address of its own: --backend netns)"
            ));
        }
        if self.listen_addr(to).is_none() {
            return Err(format!("no proxy listener for n{to}"));
        }
        if let Ok(mut l) = self.inner.links.lock() {
            l.insert((from, to), f);
        }
        Ok(())
    }

    /// Clears every fault (destination and link).
    pub fn heal(&self) {
        if let Ok(mut d) = self.inner.dests.lock() {
            for x in d.values_mut() {
                x.fault = LinkFault::default();
            }
        }
        if let Ok(mut l) = self.inner.links.lock() {
            l.clear();
        }
    }

    /// Whether any link is faulty now.
    pub fn faulty(&self) -> bool {
        let dests = self
            .inner
            .dests
            .lock()
            .map(|d| d.values().any(|x| x.fault != LinkFault::default()))
            .unwrap_or(false);
        let links = self
            .inner
            .links
            .lock()
            .map(|l| l.values().any(|f| *f != LinkFault::default()))
            .unwrap_or(false);
        dests || links
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: g(&c.accepted),
            refused: g(&c.refused),
            resets: g(&c.resets),
            blackholes: g(&c.blackholes),
            delayed_chunks: g(&c.delayed_chunks),
            bytes: g(&c.bytes),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(t) = self.inner.tasks.lock() {
            for h in t.iter() {
                h.abort();
            }
        }
    }
}

fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn accept_loop(
    l: TcpListener,
    dest: u64,
    target: SocketAddr,
    open: Arc<AtomicU64>,
    inner: Arc<Inner>,
) {
    loop {
        let (down, src) = match l.accept().await {
            Ok((s, peer)) => (s, inner.source_of(peer.ip())),
            Err(_) => {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::new(inner.seed).fork(conn);
        let f = effective(inner.fault(dest), inner.link(src, dest), true);
        if open.load(Ordering::Relaxed) >= CONNS_PER_DEST_MAX
            || (f.loss_permille > 0 && rng.below(1_000) < f.loss_permille)
        {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            reset(&down);
            drop(down);
            continue;
        }
        inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        open.fetch_add(1, Ordering::Relaxed);
        let inner2 = inner.clone();
        let open2 = open.clone();
        let h = tokio::spawn(async move {
            serve(down, src, dest, target, rng, inner2).await;
            open2.fetch_sub(1, Ordering::Relaxed);
        });
        inner.track(h.abort_handle());
    }
}

/// When the bytes of a blackholed connection (one direction) may flow again.
type Hold = Arc<Mutex<Instant>>;

/// The fault that acts on one direction of a connection from `src` into `dest`: the
/// destination's fault (both directions) combined with the link's (the sender's bytes,
/// `toward_dest`, only; its loss share, for refusals and resets, on the whole
/// connection).
pub fn effective(dest: LinkFault, link: LinkFault, toward_dest: bool) -> LinkFault {
    LinkFault {
        delay_ms: if toward_dest {
            dest.delay_ms.max(link.delay_ms)
        } else {
            dest.delay_ms
        },
        loss_permille: dest.loss_permille.max(link.loss_permille),
    }
}

fn extend(h: &Hold, ms: u64) {
    if let Ok(mut h) = h.lock() {
        *h = (*h).max(Instant::now() + Duration::from_millis(ms));
    }
}

async fn serve(
    down: TcpStream,
    src: Option<u64>,
    dest: u64,
    target: SocketAddr,
    mut rng: Rng,
    inner: Arc<Inner>,
) {
    let up = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        _ => {
            reset(&down);
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    // A reset is the halves dropped with linger 0: RST both ways.
    reset(&up);
    reset(&down);
    // The sender's bytes toward `dest`, and the answers back.
    let hold_to: Hold = Arc::new(Mutex::new(Instant::now()));
    let hold_back: Hold = Arc::new(Mutex::new(Instant::now()));
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let mut set = tokio::task::JoinSet::new();
    let to = Dir {
        src,
        dest,
        toward_dest: true,
    };
    let back = Dir {
        toward_dest: false,
        ..to
    };
    set.spawn(pump(
        dr,
        uw,
        to,
        hold_to.clone(),
        rng.fork(1),
        inner.clone(),
    ));
    set.spawn(pump(
        ur,
        dw,
        back,
        hold_back.clone(),
        rng.fork(2),
        inner.clone(),
    ));
    let mut tick = tokio::time::interval(LOSS_TICK);
    loop {
        tokio::select! {
            done = set.join_next() => {
                if done.is_none() { return; }
                // One direction ended: let the other drain, bounded by the tick loop.
            }
            _ = tick.tick() => {
                // The destination's loss first (both directions), then the link's (the
                // sender's bytes only).
                let (fd, fl) = (inner.fault(dest), inner.link(src, dest));
                let both = fd.loss_permille > 0 && rng.below(1_000) < fd.loss_permille;
                let link_only =
                    !both && fl.loss_permille > 0 && rng.below(1_000) < fl.loss_permille;
                if !both && !link_only {
                    continue;
                }
                if rng.below(2) == 0 {
                    inner.counters.resets.fetch_add(1, Ordering::Relaxed);
                    set.abort_all();
                    return;
                }
                inner.counters.blackholes.fetch_add(1, Ordering::Relaxed);
                let ms = rng.between(BLACKHOLE_MS.0, BLACKHOLE_MS.1);
                extend(&hold_to, ms);
                if both {
                    extend(&hold_back, ms);
                }
            }
        }
    }
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy)]
struct Dir {
    src: Option<u64>,
    dest: u64,
    toward_dest: bool,
}

/// One direction: read chunks, stamp each with its release time, write them in order.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    dir: Dir,
    hold: Hold,
    mut rng: Rng,
    inner: Arc<Inner>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let inner2 = inner.clone();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let f = effective(
                inner2.fault(dir.dest),
                inner2.link(dir.src, dir.dest),
                dir.toward_dest,
            );
            let mut at = Instant::now();
            if f.delay_ms > 0 {
                let jitter = rng.below(JITTER_MS_MAX + 1);
                at += Duration::from_millis(f.delay_ms + jitter);
                inner2
                    .counters
                    .delayed_chunks
                    .fetch_add(1, Ordering::Relaxed);
            }
            at = at.max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // A blackhole may be set (or extended) while we wait.
            loop {
                let until = hold.lock().map(|h| *h).unwrap_or_else(|_| Instant::now());
                if until <= Instant::now() {
                    break;
                }
                tokio::time::sleep_until(until).await;
            }
            if w.write_all(&data).await.is_err() {
                break;
            }
            inner
                .counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        a
    }

    async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn bytes_pass_unchanged_and_delay_is_applied_then_healed() {
        let target = echo().await;
        let p = Proxy::new(tokio::runtime::Handle::current(), "127.0.0.1", 1);
        let addr = p.add_dest(1, target).expect("listen");
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(addr, &msg).await.expect("plain"), msg);
        assert_eq!(p.stats().delayed_chunks, 0);

        p.set_fault(
            &[1],
            LinkFault {
                delay_ms: DELAY_MS_MIN,
                loss_permille: 0,
            },
        );
        assert!(p.faulty());
        assert_eq!(round_trip(addr, &msg).await.expect("delayed"), msg);
        let delayed = p.stats().delayed_chunks;
        assert!(delayed > 0);

        p.heal();
        assert!(!p.faulty());
        assert_eq!(round_trip(addr, &msg).await.expect("healed"), msg);
        assert_eq!(p.stats().delayed_chunks, delayed);
    }

    /// A round trip from a socket bound to `from` (a loopback address of its own).
    async fn round_trip_from(from: &str, addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(format!("{from}:0").parse().expect("addr"))?;
        let mut s = sock.connect(addr).await?;
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[test]
    fn a_link_fault_acts_on_the_senders_bytes_only() {
        let none = LinkFault::default();
        let d = LinkFault {
            delay_ms: 50,
            loss_permille: 0,
        };
        let l = LinkFault {
            delay_ms: 120,
            loss_permille: 300,
        };
        assert_eq!(effective(none, l, true), l);
        assert_eq!(
            effective(none, l, false),
            LinkFault {
                delay_ms: 0,
                loss_permille: 300
            },
            "the answers are not delayed; the connection's loss share is the link's"
        );
        assert_eq!(
            effective(d, none, false),
            d,
            "a destination fault: both ways"
        );
        assert_eq!(effective(d, l, true).delay_ms, 120);
        assert_eq!(effective(d, none, true), d);
    }

    #[tokio::test]
    async fn a_link_fault_is_placed_by_the_senders_address() {
        let target = echo().await;
        let p = Proxy::new(tokio::runtime::Handle::current(), "127.0.0.1", 3);
        let into1 = p.add_dest(1, target).expect("listen");
        let into2 = p.add_dest(2, target).expect("listen");
        let f = LinkFault {
            delay_ms: DELAY_MS_MIN,
            loss_permille: 0,
        };
        // Senders unknown (every node on one address): refused.
        assert!(p.set_link_fault(2, 1, f).is_err());
        p.register_source("127.0.0.2".parse().expect("ip"), 2);
        p.register_source("127.0.0.3".parse().expect("ip"), 3);
        assert!(p.set_link_fault(2, 2, f).is_err(), "no link to itself");
        assert!(p.set_link_fault(2, 9, f).is_err(), "no listener for n9");
        p.set_link_fault(2, 1, f).expect("n2 → n1");
        assert!(p.faulty());
        let msg: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        // n3 → n1 and n2 → n2's listener (the link n1 → n2 direction) are untouched.
        assert_eq!(
            round_trip_from("127.0.0.3", into1, &msg)
                .await
                .expect("n3→n1"),
            msg
        );
        assert_eq!(
            round_trip_from("127.0.0.1", into2, &msg)
                .await
                .expect("n1→n2"),
            msg
        );
        assert_eq!(
            round_trip_from("127.0.0.2", into2, &msg)
                .await
                .expect("n2→n2"),
            msg
        );
        assert_eq!(p.stats().delayed_chunks, 0);
        // n2 → n1: delayed.
        let t = Instant::now();
        assert_eq!(
            round_trip_from("127.0.0.2", into1, &msg)
                .await
                .expect("n2→n1"),
            msg
        );
        assert!(t.elapsed() >= Duration::from_millis(DELAY_MS_MIN));
        assert!(p.stats().delayed_chunks > 0);
        // Full loss on n3 → n2 refuses n3's connections there and nobody else's.
        p.set_link_fault(
            3,
            2,
            LinkFault {
                delay_ms: 0,
                loss_permille: 1_000,
            },
        )
        .expect("n3 → n2");
        assert!(round_trip_from("127.0.0.3", into2, b"hi").await.is_err());
        assert_eq!(
            round_trip_from("127.0.0.2", into2, b"hi")
                .await
                .expect("n2→n2"),
            b"hi"
        );
        assert_eq!(
            round_trip_from("127.0.0.3", into1, b"hi")
                .await
                .expect("n3→n1"),
            b"hi"
        );
        p.heal();
        assert!(!p.faulty());
        let delayed = p.stats().delayed_chunks;
        assert_eq!(
            round_trip_from("127.0.0.2", into1, &msg)
                .await
                .expect("healed"),
            msg
        );
        assert_eq!(
            round_trip_from("127.0.0.3", into2, b"hi")
                .await
                .expect("healed"),
            b"hi"
        );
        assert_eq!(p.stats().delayed_chunks, delayed);
    }

    #[tokio::test]
    async fn full_loss_refuses_new_connections() {
        let target = echo().await;
        let p = Proxy::new(tokio::runtime::Handle::current(), "127.0.0.1", 2);
        let addr = p.add_dest(1, target).expect("listen");
        p.set_fault(
            &[1],
            LinkFault {
                delay_ms: 0,
                loss_permille: 1_000,
            },
        );
        assert!(round_trip(addr, b"hello").await.is_err());
        assert!(p.stats().refused >= 1);
        p.heal();
        assert_eq!(round_trip(addr, b"hello").await.expect("healed"), b"hello");
    }
}
