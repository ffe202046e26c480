//! Peer lanes: one long-lived bidirectional stream (`PeerLane`) from each node to each
//! peer for the small calls that used to open an HTTP/2 stream each. (Not the client
//! side's `PurchaseStream` lanes of `stockctl bench`: these are between nodes.)
//!
//! Two kinds of call were doing that, hundreds to thousands of times a second once a
//! sale sold out and its refusals came from linearizable reads:
//!
//! - **Heartbeats.** openraft confirms a leader's read index with a heartbeat to every
//!   follower, and its heartbeat worker sends each as a one-request `stream_append`, which
//!   `crate::network` served with a `StreamAppend` call: a new HTTP/2 stream with headers,
//!   a server task, openraft's per-stream pipeline task and channel on the follower, and
//!   trailers, for one empty AppendEntries. In a sold-out hammer on the twenty-second
//!   session's machine the leader opened 4,200 such streams a second.
//! - **Read indexes.** A follower asked the leader for each read-index round with a unary
//!   `Forward` call (1,000 a second per follower in the same run).
//!
//! Now each is one message on the peer lane to that peer, tagged by the caller, and its answer
//! one message back, sent as soon as it is ready (answers may overtake each other).
//! What can go wrong, and what the caller then hears:
//!
//! | event | every call waiting on the lane gets | why |
//! |---|---|---|
//! | the stream ends or breaks (peer stopped, connection reset) | [`LaneError::Broken`] | a heartbeat is `Unreachable` to openraft, a read index `NoLeader`: both retried |
//! | one call unanswered for its timeout | that call [`LaneError::TimedOut`]; the lane is closed, the others `Broken` | as a call's deadline did; a stalled peer must not hold calls that a new stream could carry |
//! | a call's caller gives up first (openraft's own heartbeat timeout) | nothing: its tag is dropped | so the waiting map cannot grow |
//!
//! The next call after a lane closed opens a new one. Both kinds of call are safe to
//! repeat: a heartbeat changes nothing a repeat would not, and a read index is a read.
//!
//! Limits: `LANE_FRAMES_QUEUED_MAX` requests wait to be written on a lane; a node serves
//! at most `LANE_PENDING_MAX` calls of one lane at once (then it stops reading it and
//! HTTP/2 flow control holds the caller back) and queues at most
//! `LANE_ANSWERS_QUEUED_MAX` answers for it.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use stockade_proto::raft::raft_transport_client::RaftTransportClient;
use stockade_proto::raft::Envelope;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::cluster::{NodeCluster, NO_LEADER_RETRY_MS};
use crate::network::Pool;
use crate::wire::{self, LaneAnswer, LaneFrame, LaneRequest, WireError};

/// Requests waiting to be written on one lane.
pub const LANE_FRAMES_QUEUED_MAX: usize = 256;
/// Calls of one lane a node serves at once before it stops reading more.
pub const LANE_PENDING_MAX: usize = 1_024;
/// Answers a node queues for one lane.
pub const LANE_ANSWERS_QUEUED_MAX: usize = 256;

/// Why a lane call has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// The lane ended or could not be opened or written (the peer is down or the
    /// connection broke); a retry opens a new one.
    #[error("lane to {peer}: {why}")]
    Broken { peer: String, why: String },
    /// No answer within the call's timeout; the lane was closed.
    #[error("lane to {peer}: no answer within {ttl:?}")]
    TimedOut { peer: String, ttl: Duration },
}

type Reply = oneshot::Sender<Result<LaneAnswer, LaneError>>;

/// The calls a lane waits for, and whether it still takes more.
struct Book {
    open: bool,
    next_tag: u64,
    waiting: HashMap<u64, Reply>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One lane to one peer.
struct Lane {
    frames: mpsc::Sender<Envelope>,
    book: Arc<Mutex<Book>>,
    task: tokio::task::AbortHandle,
}

impl Lane {
    fn open(pool: &Pool, addr: &str) -> Lane {
        let (frames, frames_rx) = mpsc::channel(LANE_FRAMES_QUEUED_MAX);
        let book = Arc::new(Mutex::new(Book {
            open: true,
            next_tag: 0,
            waiting: HashMap::new(),
        }));
        pool.stats().lanes_opened.fetch_add(1, Ordering::Relaxed);
        // The task gets the client, not the pool: the pool owns this lane, whose drop
        // aborts the task, so a task holding the pool would keep itself alive.
        let task = tokio::spawn(run_lane(
            pool.client(addr),
            addr.to_string(),
            frames_rx,
            book.clone(),
        ))
        .abort_handle();
        Lane { frames, book, task }
    }

    fn is_open(&self) -> bool {
        lock(&self.book).open
    }

    /// Ends the lane: every call still waiting hears `e`, the stream is dropped.
    fn close(&self, e: LaneError) {
        let waiting: Vec<Reply> = {
            let mut b = lock(&self.book);
            b.open = false;
            b.waiting.drain().map(|(_, r)| r).collect()
        };
        self.task.abort();
        for r in waiting {
            let _ = r.send(Err(e.clone()));
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lanes of one node, by peer address (part of [`Pool`]).
#[derive(Default)]
pub struct Lanes {
    by_addr: Mutex<BTreeMap<String, Arc<Lane>>>,
}

impl Lanes {
    /// The open lane to `addr`, opening one if there is none.
    fn get(&self, pool: &Pool, addr: &str) -> Arc<Lane> {
        let mut map = lock(&self.by_addr);
        if let Some(l) = map.get(addr).filter(|l| l.is_open()) {
            return l.clone();
        }
        let lane = Arc::new(Lane::open(pool, addr));
        map.insert(addr.to_string(), lane.clone());
        lane
    }
}

#[cfg(test)]
impl Lanes {
    /// Calls waiting on the lane to `addr`, if there is one.
    pub fn waiting(&self, addr: &str) -> Option<usize> {
        lock(&self.by_addr)
            .get(addr)
            .map(|l| lock(&l.book).waiting.len())
    }
}

/// Drops a call's tag when its caller stops waiting, answered or not.
struct Tag<'a> {
    book: &'a Mutex<Book>,
    tag: u64,
}

impl Drop for Tag<'_> {
    fn drop(&mut self) {
        lock(self.book).waiting.remove(&self.tag);
    }
}

/// Adds a waiting call to `lane`: its tag, or the reply back if the lane has ended.
fn register(lane: &Lane, tx: Reply) -> Result<u64, Reply> {
    let mut b = lock(&lane.book);
    if !b.open {
        return Err(tx);
    }
    let tag = b.next_tag;
    b.next_tag += 1;
    b.waiting.insert(tag, tx);
    Ok(tag)
}

/// Sends `req` to the peer at `addr` on its lane and waits at most `ttl` for the answer.
pub async fn call(
    pool: &Pool,
    addr: &str,
    req: &LaneRequest,
    ttl: Duration,
) -> Result<LaneAnswer, LaneError> {
    let broken = |why: String| LaneError::Broken {
        peer: addr.to_string(),
        why,
    };
    let (tx, rx) = oneshot::channel();
    let mut lane = pool.lanes().get(pool, addr);
    // A lane that ended between `get` and here gives the reply back: once more, on a
    // new one.
    let tag = match register(&lane, tx) {
        Ok(tag) => tag,
        Err(tx) => {
            lane = pool.lanes().get(pool, addr);
            register(&lane, tx).map_err(|_| broken("closed".into()))?
        }
    };
    let _tag = Tag {
        book: &lane.book,
        tag,
    };
    let frame: LaneFrame<&LaneRequest> = (tag, req);
    let payload = wire::encode(&frame).map_err(|s| broken(s.message().to_string()))?;
    pool.stats().lane_calls_sent.fetch_add(1, Ordering::Relaxed);
    let answered = tokio::time::timeout(ttl, async {
        lane.frames
            .send(Envelope { payload })
            .await
            .map_err(|_| broken("ended".into()))?;
        rx.await.map_err(|_| broken("ended".into()))?
    })
    .await;
    match answered {
        Ok(r) => r,
        Err(_) => {
            let e = LaneError::TimedOut {
                peer: addr.to_string(),
                ttl,
            };
            pool.stats().lane_stalls.fetch_add(1, Ordering::Relaxed);
            lane.close(LaneError::Broken {
                peer: addr.to_string(),
                why: format!("closed after a call went unanswered for {ttl:?}"),
            });
            Err(e)
        }
    }
}

/// Drives one lane: opens the call, routes answers to their callers, and when the stream
/// ends for any reason fails every call still waiting.
async fn run_lane(
    client: Result<RaftTransportClient<Channel>, Status>,
    addr: String,
    frames: mpsc::Receiver<Envelope>,
    book: Arc<Mutex<Book>>,
) {
    let why = match client {
        Ok(client) => read_answers(client, frames, &book).await,
        Err(s) => s.message().to_string(),
    };
    let waiting: Vec<Reply> = {
        let mut b = lock(&book);
        b.open = false;
        b.waiting.drain().map(|(_, r)| r).collect()
    };
    tracing::debug!(peer = %addr, waiting = waiting.len(), "lane ended: {why}");
    for r in waiting {
        let _ = r.send(Err(LaneError::Broken {
            peer: addr.clone(),
            why: why.clone(),
        }));
    }
}

/// Reads the peer's answers until the stream ends; returns why it ended.
async fn read_answers(
    mut client: RaftTransportClient<Channel>,
    frames: mpsc::Receiver<Envelope>,
    book: &Mutex<Book>,
) -> String {
    // Bounded by each call's own timeout, which closes the lane (and so this task).
    let mut answers = match client
        .peer_lane(tonic::Request::new(ReceiverStream::new(frames)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return format!("not opened: {}", s.message()),
    };
    loop {
        match answers.message().await {
            Ok(Some(env)) => {
                let (tag, answer): LaneFrame<LaneAnswer> = match wire::decode(&env.payload) {
                    Ok(f) => f,
                    Err(s) => return format!("an answer does not decode: {}", s.message()),
                };
                if let Some(r) = lock(book).waiting.remove(&tag) {
                    let _ = r.send(Ok(answer));
                }
            }
            Ok(None) => return "ended by the peer".into(),
            Err(s) => return format!("failed: {}", s.message()),
        }
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

/// The serving end of a peer's lane: each call is served as it arrives, its answer sent
/// as soon as it is ready. A request that does not decode ends the reading; the calls
/// before it are still answered, then the stream fails `InvalidArgument` naming it.
/// When this node shuts down (`stop` turns true) it stops reading, answers what it has
/// read and ends the stream.
pub fn serve(
    cluster: Arc<NodeCluster>,
    input: tonic::Streaming<Envelope>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Answers {
    let (tx, rx) = mpsc::channel(LANE_ANSWERS_QUEUED_MAX);
    tokio::spawn(serve_lane(cluster, input, tx, stop));
    Box::pin(ReceiverStream::new(rx))
}

type Served = Pin<Box<dyn std::future::Future<Output = (u64, LaneAnswer)> + Send>>;

async fn serve_lane(
    c: Arc<NodeCluster>,
    mut input: tonic::Streaming<Envelope>,
    tx: mpsc::Sender<Result<Envelope, Status>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut pending: FuturesUnordered<Served> = FuturesUnordered::new();
    let mut reading = !*stop.borrow();
    let mut bad: Option<Status> = None;
    while reading || !pending.is_empty() {
        tokio::select! {
            _ = stop.changed(), if reading => reading = false,
            Some(answer) = pending.next(), if !pending.is_empty() => {
                let out = wire::encode(&answer).map(|payload| Envelope { payload });
                if tx.send(out).await.is_err() {
                    return;
                }
            }
            m = input.message(), if reading && pending.len() < LANE_PENDING_MAX => match m {
                Ok(Some(env)) => match wire::decode::<LaneFrame<LaneRequest>>(&env.payload) {
                    Ok((tag, req)) => {
                        c.pool.stats().lane_calls_received.fetch_add(1, Ordering::Relaxed);
                        pending.push(Box::pin(answer(c.clone(), tag, req)));
                    }
                    Err(s) => {
                        reading = false;
                        bad = Some(Status::invalid_argument(format!(
                            "lane request: {}",
                            s.message()
                        )));
                    }
                },
                // The caller closed its side or went away.
                Ok(None) | Err(_) => reading = false,
            },
        }
    }
    if let Some(s) = bad {
        let _ = tx.send(Err(s)).await;
    }
}

/// Serves one lane call on this node.
async fn answer(c: Arc<NodeCluster>, tag: u64, req: LaneRequest) -> (u64, LaneAnswer) {
    let answer = match req {
        LaneRequest::Append(rpc) => {
            LaneAnswer::Append(c.raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        LaneRequest::ReadIndex => LaneAnswer::ReadIndex(if c.raft.is_leader() {
            c.read_gate
                .read_index(&c.this)
                .await
                .map_err(WireError::from)
        } else {
            Err(WireError::NoLeader {
                retry_after_ms: NO_LEADER_RETRY_MS,
            })
        }),
    };
    (tag, answer)
}
