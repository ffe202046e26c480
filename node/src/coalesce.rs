//! Sharing one round trip between many concurrent requests: read indexes and forwards.
//!
//! **Read index** ([`ReadIndexGate`]): a linearizable read needs the leader to confirm its
//! leadership with a quorum after the read arrived. Under a flash crowd (most of it
//! refused from such a read once the sale sells out) one heartbeat round (or, on a
//! follower, one forwarded RPC) per read would cost more than the refusal itself. So reads
//! share rounds: at most one round is in flight per node; a read that arrives while one
//! is in flight waits for the *next* round, which starts as soon as the current one ends
//! and serves every read that queued meanwhile. A round never serves a read that arrived
//! after the round started, so each read's index is confirmed by a quorum round that
//! began after the read was issued: still linearizable (the classic read-index batching of
//! the Raft thesis, §6.4). openraft itself also queues reads behind one heartbeat, but
//! it broadcasts a heartbeat per read; this gate makes it one per round.
//!
//! **Forward** ([`ForwardBatcher`]): on a follower, proposals bound for the leader are
//! sent in batches, one frame on the follower's forward stream (`crate::forward`) for all
//! that queued while up to `--forward-inflight-max` (default `FORWARD_INFLIGHT_MAX`)
//! earlier batches were in flight, instead of one message each. The leader feeds them to
//! its group-commit queue together, so they usually share one log entry as well, and
//! answers each as it commits. Idle, a proposal goes out at once; no timer adds latency.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use futures::future::join_all;
use stockade_api::ClusterError;
use stockade_raft_store::{Command, Response};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::cluster::NodeCluster;
use crate::forward::{BatchTimer, Session};

/// Commands in one forwarded batch, by default (`--forward-batch-max`).
pub const FORWARD_BATCH_MAX: usize = 256;
/// Forwarded batches in flight at once per node, by default (`--forward-inflight-max`).
///
/// 16, not the 4 it was: with 4 slots each busy for a forward round trip (~4 ms at 50
/// clients here), a follower's proposals queued behind them for up to 3–5 ms at p99
/// (`stockade_forward_wait_seconds`), as long as the leader's own Raft round at p99.
/// With 16 that wait is 0.03–0.15 ms at p99, and in interleaved pairs on one binary
/// (`docs/benchmarks.md`, "Nineteenth session") the mixed flow at 50 clients was faster
/// in 4 of 4 pairs (and both runs of a first series) and the 100,000-unit storm in 2 of
/// 3, with a lower p99 in each of those seven pairs. The price: more, smaller forward
/// RPCs (7% more at 50 clients).
pub const FORWARD_INFLIGHT_MAX: usize = 16;
/// Proposals waiting to be forwarded; past this a client gets 503 `overloaded`.
pub const FORWARD_QUEUE_MAX: usize = 16_384;
/// Reads waiting for the next read-index round; past this a client gets 503 `overloaded`.
pub const READ_WAITERS_MAX: usize = 16_384;

/// What a read-index round answers each read that shared it.
type IndexReply = oneshot::Sender<Result<u64, ClusterError>>;

#[derive(Default)]
struct GateState {
    /// A round is in flight (its driver task runs).
    running: bool,
    /// Reads that arrived since the current round started.
    waiting: Vec<IndexReply>,
}

/// At most one read-index round in flight; reads queue for the next one.
#[derive(Default)]
pub struct ReadIndexGate {
    state: Mutex<GateState>,
}

impl ReadIndexGate {
    /// A read index confirmed by a leadership round that started after this call.
    pub async fn read_index(&self, cluster: &Weak<NodeCluster>) -> Result<u64, ClusterError> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.waiting.len() >= READ_WAITERS_MAX {
                return Err(ClusterError::Overloaded {
                    retry_after_ms: crate::cluster::OVERLOADED_RETRY_MS,
                });
            }
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start_driver {
            let cluster = cluster.clone();
            tokio::spawn(async move { drive_rounds(cluster).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(ClusterError::Unknown("the read-index round stopped".into())))
    }
}

/// Runs rounds while reads wait; each round serves the reads queued before it began.
async fn drive_rounds(cluster: Weak<NodeCluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let waiting = {
            let mut st = c.read_gate.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.waiting.is_empty() {
                st.running = false;
                return;
            }
            std::mem::take(&mut st.waiting)
        };
        let result = c.read_index_round().await;
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

/// One proposal waiting to be forwarded, and where its answer goes.
#[derive(Debug)]
pub struct Forward {
    pub cmd: Command,
    pub reply: oneshot::Sender<Result<(Response, u64), ClusterError>>,
    /// When it was queued (for `WriteStats::forward_wait`).
    pub queued_at: Instant,
}

/// The follower side of batched forwarding: a queue and the task that drains it.
pub struct ForwardBatcher {
    tx: mpsc::Sender<Forward>,
}

/// What [`run_forwarder`] drains: the queue, the largest batch it may send and how many
/// batches may be in flight.
pub struct ForwardQueue {
    rx: mpsc::Receiver<Forward>,
    batch_max: usize,
    inflight_max: usize,
}

impl ForwardBatcher {
    /// The queue; [`run_forwarder`] must be spawned with the receiving end.
    pub fn new(batch_max: usize, inflight_max: usize) -> (ForwardBatcher, ForwardQueue) {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MAX);
        let batch_max = batch_max.clamp(1, stockade_raft_store::limits::BATCH_COMMANDS_MAX);
        let queue = ForwardQueue {
            rx,
            batch_max,
            inflight_max: inflight_max.max(1),
        };
        (ForwardBatcher { tx }, queue)
    }

    /// Forwards `cmd` to `leader` in the next batch; the answer and who served it.
    pub async fn forward(&self, cmd: Command) -> Result<(Response, u64), ClusterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Forward {
                cmd,
                reply,
                queued_at: Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClusterError::Overloaded {
                    retry_after_ms: crate::cluster::OVERLOADED_RETRY_MS,
                },
                mpsc::error::TrySendError::Closed(_) => {
                    ClusterError::Internal("the forwarder has stopped".into())
                }
            })?;
        rx.await
            .unwrap_or_else(|_| Err(ClusterError::Unknown("the forward was dropped".into())))
    }
}

/// Drains the forward queue: a batch is formed when an in-flight slot is free, from
/// everything queued by then (up to the batch limit), and sent to whoever leads as one
/// frame on this node's forward stream to it (`crate::forward`).
pub async fn run_forwarder(cluster: Weak<NodeCluster>, queue: ForwardQueue) {
    let ForwardQueue {
        mut rx,
        batch_max,
        inflight_max,
    } = queue;
    let slots = Arc::new(Semaphore::new(inflight_max));
    let mut session: Option<Session> = None;
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let first_queued = first.queued_at;
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let Some(c) = cluster.upgrade() else { return };
        // First in, first out: the first one waited longest.
        c.stats
            .forward_wait
            .observe(first_queued.elapsed().as_secs_f64());
        send_batch(&c, &mut session, batch, permit).await;
    }
}

/// Sends one batch to whoever leads, on the stream to that leader (a new one when the
/// leader changed or the last stream ended), or serves it here if this node leads now.
async fn send_batch(
    c: &Arc<NodeCluster>,
    session: &mut Option<Session>,
    batch: Vec<Forward>,
    permit: OwnedSemaphorePermit,
) {
    let leader = match c.wait_leader().await {
        Ok(l) => l,
        Err(e) => return fail_all(batch, e),
    };
    if leader == c.id {
        let c = c.clone();
        tokio::spawn(async move {
            join_all(batch.into_iter().map(|f| {
                let c = &c;
                async move {
                    let answer = c
                        .propose_local(f.cmd)
                        .await
                        .map(|r| (r, c.id))
                        .map_err(|e| ClusterError::from(crate::cluster::propose_to_wire(e)));
                    let _ = f.reply.send(answer);
                }
            }))
            .await;
            drop(permit);
        });
        return;
    }
    let addr = match c.raft_addr_of(leader) {
        Ok(a) => a,
        Err(e) => return fail_all(batch, e),
    };
    c.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    c.stats
        .forwarded_commands
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if !session.as_ref().is_some_and(|s| s.serves(leader, &addr)) {
        *session = None;
    }
    let s = session.get_or_insert_with(|| {
        c.stats.forward_streams.fetch_add(1, Ordering::Relaxed);
        Session::open(&c.pool, leader, addr, c.pool.config().forward_timeout)
    });
    let timer = BatchTimer::start(permit, c.stats.clone());
    if let Err(batch) = s.submit(batch, timer).await {
        // That stream ended just before: nothing was sent, and the callers retry on
        // whoever leads by then.
        *session = None;
        fail_all(
            batch,
            ClusterError::NoLeader {
                retry_after_ms: crate::cluster::NO_LEADER_RETRY_MS,
            },
        );
    }
}

fn fail_all(batch: Vec<Forward>, e: ClusterError) {
    for f in batch {
        let _ = f.reply.send(Err(e.clone()));
    }
}
