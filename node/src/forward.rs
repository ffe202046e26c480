//! Forwarding to the leader over one long-lived stream per follower (`ForwardStream`).
//!
//! A follower used to send each forward batch as a unary `Forward` call carrying
//! `ProposeMany`: one HTTP/2 stream per batch (headers, deadline, trailers, a server task
//! each) and one answer for the whole batch, sent only when its *last* command had
//! committed. On the nineteenth session's machine the leader spent 3.15 ms on average
//! serving a forwarded batch while the followers saw 4.12 ms at p50 for the call: about
//! a millisecond of transport per forward (`docs/benchmarks.md`). Now:
//!
//! - **One bidirectional stream per (follower, leader)** ([`Session`]), opened on the
//!   first forward to that leader and kept while it leads. Each batch is one message, a
//!   bincode `ForwardFrame`: the commands, each with a tag the follower chose.
//! - **Each command is answered when it commits**, not when the batch does: the leader
//!   ([`serve`]) puts every command of a frame into its group-commit queue at once and
//!   sends back, as `AnswerFrame`s, whatever answers are ready together (usually the
//!   commands of one log entry), by tag. Commands of one batch that land in different log
//!   entries no longer wait for each other.
//! - **Nothing is lost or answered twice by a broken stream.** A command's answer is
//!   matched by tag and removed from the waiting map exactly once; when the stream ends
//!   (the leader stopped, the connection broke, leadership moved) every command still
//!   waiting is failed `NoLeader` (see `status_error`), which `NodeCluster::on_leader` retries on whoever leads
//!   next: safe, because every client command is idempotent by `(user_id, request_id)`
//!   and every operator command by content (the retry gets the recorded answer if the
//!   first attempt took effect). A frame the follower could not hand to the stream within
//!   the forward timeout was never sent: its commands are failed `Overloaded` (nothing
//!   happened).
//! - **A stall is detected by progress**, as replication's `StreamAppend` does: every
//!   `forward_timeout` the session checks its waiting commands, and when one was sent
//!   more than a `forward_timeout` ago the stream is abandoned and every waiting command
//!   answered `Unknown` (it may still commit; the client retries with the same request
//!   id), as the unary call's deadline used to.
//!
//! The slots of `--forward-inflight-max` still bound the batches in flight: a batch holds
//! its slot until its last command is answered ([`BatchTimer`]), which is also when its
//! `stockade_forward_duration_seconds` is observed.
//!
//! Limits: `FORWARD_FRAMES_QUEUED_MAX` frames wait to be written on a follower's stream;
//! the leader stops reading a stream while it serves `FORWARD_STREAM_PENDING_MAX` or more
//! of its commands (so at most that plus one frame's `--forward-batch-max`), and HTTP/2
//! flow control holds the follower back; it queues at most `FORWARD_ANSWER_FRAMES_MAX`
//! answer frames for it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use stockade_api::ClusterError;
use stockade_proto::raft::Envelope;
use stockade_raft_store::Response;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cluster::{NodeCluster, WriteStats, NO_LEADER_RETRY_MS, OVERLOADED_RETRY_MS};
use crate::coalesce::Forward;
use crate::network::Pool;
use crate::wire::{self, AnswerFrame, ForwardFrame, WireError};

/// Frames waiting to be written on one follower's forward stream.
pub const FORWARD_FRAMES_QUEUED_MAX: usize = 64;
/// Commands of one forward stream the leader serves before it stops reading more frames.
pub const FORWARD_STREAM_PENDING_MAX: usize = 16_384;
/// Answer frames the leader queues for one forward stream.
pub const FORWARD_ANSWER_FRAMES_MAX: usize = 64;

/// What a forwarded command's caller gets: the answer and the node that served it.
pub type ForwardReply = oneshot::Sender<Result<(Response, u64), ClusterError>>;

/// Holds a forward slot for one batch until its last command is answered (or failed),
/// then times the batch's round trip (`stockade_forward_duration_seconds`).
pub struct BatchTimer {
    _permit: OwnedSemaphorePermit,
    sent_at: Instant,
    stats: Arc<WriteStats>,
}

impl BatchTimer {
    pub fn start(permit: OwnedSemaphorePermit, stats: Arc<WriteStats>) -> Arc<BatchTimer> {
        Arc::new(BatchTimer {
            _permit: permit,
            sent_at: Instant::now(),
            stats,
        })
    }
}

impl Drop for BatchTimer {
    fn drop(&mut self) {
        self.stats
            .forward_round
            .observe(self.sent_at.elapsed().as_secs_f64());
    }
}

/// A forwarded command waiting for its answer.
struct Waiting {
    reply: ForwardReply,
    sent_at: Instant,
    _batch: Arc<BatchTimer>,
}

/// The commands a session waits for, and whether it still takes more.
#[derive(Default)]
struct Book {
    /// False once the session has ended: its waiting commands were failed, and a new
    /// command must go to a new session.
    open: bool,
    waiting: HashMap<u64, Waiting>,
    next_tag: u64,
}

/// One follower's forward stream to one leader.
pub struct Session {
    leader: u64,
    addr: String,
    frames: mpsc::Sender<Envelope>,
    book: Arc<Mutex<Book>>,
    /// How long a frame may wait to be written, and a command for its answer.
    ttl: Duration,
}

fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Opens a stream to `leader` at `addr` (in the background: the first frames queue
    /// while the call is set up).
    pub fn open(pool: &Pool, leader: u64, addr: String, ttl: Duration) -> Session {
        let (frames, frames_rx) = mpsc::channel(FORWARD_FRAMES_QUEUED_MAX);
        let book = Arc::new(Mutex::new(Book {
            open: true,
            ..Book::default()
        }));
        tokio::spawn(run_session(
            pool.clone(),
            leader,
            addr.clone(),
            frames_rx,
            book.clone(),
            ttl,
        ));
        Session {
            leader,
            addr,
            frames,
            book,
            ttl,
        }
    }

    /// True while this session is open to `leader` at `addr`.
    pub fn serves(&self, leader: u64, addr: &str) -> bool {
        self.leader == leader && self.addr == addr && lock(&self.book).open
    }

    /// Sends `batch` as one frame. Each command's answer goes to its caller when the
    /// leader sends it. `Err` gives the batch back untouched when the session has
    /// already ended (nothing was sent).
    pub async fn submit(
        &self,
        batch: Vec<Forward>,
        timer: Arc<BatchTimer>,
    ) -> Result<(), Vec<Forward>> {
        let sent_at = Instant::now();
        let mut frame: ForwardFrame = Vec::with_capacity(batch.len());
        let tags = {
            let mut book = lock(&self.book);
            if !book.open {
                return Err(batch);
            }
            let first = book.next_tag;
            book.next_tag += batch.len() as u64;
            for (tag, f) in (first..).zip(batch) {
                frame.push((tag, f.cmd));
                book.waiting.insert(
                    tag,
                    Waiting {
                        reply: f.reply,
                        sent_at,
                        _batch: timer.clone(),
                    },
                );
            }
            first..first + frame.len() as u64
        };
        drop(timer);
        let payload = match wire::encode(&frame) {
            Ok(p) => p,
            Err(s) => {
                self.fail(tags, ClusterError::Internal(s.message().to_string()));
                return Ok(());
            }
        };
        match tokio::time::timeout(self.ttl, self.frames.send(Envelope { payload })).await {
            Ok(Ok(())) => {}
            // The stream is gone: its end fails whatever it still waits for (these too,
            // unless it already ended, which `fail` covers).
            Ok(Err(_)) => self.fail(
                tags,
                ClusterError::NoLeader {
                    retry_after_ms: NO_LEADER_RETRY_MS,
                },
            ),
            // Not written in time: nothing of this frame reached the leader.
            Err(_) => {
                lock(&self.book).open = false;
                self.fail(
                    tags,
                    ClusterError::Overloaded {
                        retry_after_ms: OVERLOADED_RETRY_MS,
                    },
                );
            }
        }
        Ok(())
    }

    /// Answers the commands of `tags` still waiting with `e`.
    fn fail(&self, tags: std::ops::Range<u64>, e: ClusterError) {
        let failed: Vec<Waiting> = {
            let mut book = lock(&self.book);
            tags.filter_map(|t| book.waiting.remove(&t)).collect()
        };
        for w in failed {
            let _ = w.reply.send(Err(e.clone()));
        }
    }
}

/// Drives one session: opens the call, routes answers to their callers, and when the
/// stream ends for any reason fails every command still waiting.
async fn run_session(
    pool: Pool,
    leader: u64,
    addr: String,
    frames: mpsc::Receiver<Envelope>,
    book: Arc<Mutex<Book>>,
    ttl: Duration,
) {
    let end = read_answers(&pool, leader, &addr, frames, &book, ttl).await;
    let left: Vec<Waiting> = {
        let mut b = lock(&book);
        b.open = false;
        b.waiting.drain().map(|(_, w)| w).collect()
    };
    if !left.is_empty() {
        tracing::debug!(
            leader,
            "forward stream ended with {} waiting: {end:?}",
            left.len()
        );
    }
    for w in left {
        let _ = w.reply.send(Err(end.clone()));
    }
}

/// Reads the leader's answers until the stream ends; returns what the commands still
/// waiting are told.
async fn read_answers(
    pool: &Pool,
    leader: u64,
    addr: &str,
    frames: mpsc::Receiver<Envelope>,
    book: &Mutex<Book>,
    ttl: Duration,
) -> ClusterError {
    let no_leader = ClusterError::NoLeader {
        retry_after_ms: NO_LEADER_RETRY_MS,
    };
    let mut client = match pool.client(addr) {
        Ok(c) => c,
        Err(s) => return ClusterError::Internal(s.message().to_string()),
    };
    let call = client.forward_stream(tonic::Request::new(ReceiverStream::new(frames)));
    let mut answers = match tokio::time::timeout(ttl, call).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return status_error(leader, s),
        Err(_) => {
            return ClusterError::Unknown(format!(
                "forward stream to node {leader} not opened within {ttl:?}"
            ))
        }
    };
    let mut check = tokio::time::interval(ttl);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        tokio::select! {
            m = answers.message() => match m {
                Ok(Some(env)) => {
                    let frame: AnswerFrame = match wire::decode(&env.payload) {
                        Ok(f) => f,
                        Err(s) => return ClusterError::Internal(format!(
                            "node {leader} sent a forward answer that does not decode: {}",
                            s.message()
                        )),
                    };
                    let ready: Vec<_> = {
                        let mut b = lock(book);
                        frame
                            .answers
                            .into_iter()
                            .filter_map(|(tag, r)| b.waiting.remove(&tag).map(|w| (w, r)))
                            .collect()
                    };
                    for (w, r) in ready {
                        let answer = r
                            .map(|resp| (resp, frame.served_by))
                            .map_err(ClusterError::from);
                        let _ = w.reply.send(answer);
                    }
                }
                // The leader ends its side only when ours ended or it is going away.
                Ok(None) => return no_leader,
                Err(s) => return status_error(leader, s),
            },
            _ = check.tick() => {
                let stalled = lock(book).waiting.values().any(|w| w.sent_at.elapsed() > ttl);
                if stalled {
                    return ClusterError::Unknown(format!(
                        "forwarded to node {leader}: no answer within {ttl:?}"
                    ));
                }
            }
        }
    }
}

/// A failed forward stream as the callers see it. A stream that broke (the leader went
/// away, the connection reset: tonic reports these as `Unavailable`, `Cancelled`,
/// `Unknown` or `Internal` depending on where it broke) is `NoLeader`, retried on whoever
/// leads next; a peer that refuses the protocol itself (`Unimplemented`, a frame it
/// cannot decode) is `Internal`, which a retry would not fix.
fn status_error(leader: u64, s: Status) -> ClusterError {
    match s.code() {
        tonic::Code::Unimplemented | tonic::Code::InvalidArgument => {
            ClusterError::Internal(format!("forward stream to node {leader}: {}", s.message()))
        }
        _ => ClusterError::NoLeader {
            retry_after_ms: NO_LEADER_RETRY_MS,
        },
    }
}

/// The leader's end of a follower's forward stream: each command of each frame joins the
/// group-commit queue as the frame arrives; answers go back as they are ready, those ready
/// together in one frame. A frame that does not decode ends the reading; the commands
/// before it are still answered, then the stream fails `InvalidArgument` naming it.
///
/// When this node shuts down (`stop` turns true) it stops reading, answers what it has
/// read and ends the stream, so the follower fails whatever else it sent `NoLeader` and
/// retries it elsewhere. In the in-process tests the stream also ends without this, when
/// the stopped node's connections close; this makes it not depend on what the gRPC
/// server does with open streams at shutdown (a frame read after it would meet a stopped
/// batcher and come back `Internal`, which the follower does not retry).
pub fn serve(
    cluster: Arc<NodeCluster>,
    input: tonic::Streaming<Envelope>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>> {
    let (tx, rx) = mpsc::channel(FORWARD_ANSWER_FRAMES_MAX);
    tokio::spawn(serve_stream(cluster, input, tx, stop));
    Box::pin(ReceiverStream::new(rx))
}

async fn serve_stream(
    c: Arc<NodeCluster>,
    mut input: tonic::Streaming<Envelope>,
    tx: mpsc::Sender<Result<Envelope, Status>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut pending = FuturesUnordered::new();
    let mut reading = !*stop.borrow();
    let mut bad: Option<Status> = None;
    loop {
        tokio::select! {
            // Shutting down (or the node is gone): read no more.
            _ = stop.changed(), if reading => reading = false,
            Some(first) = pending.next(), if !pending.is_empty() => {
                let mut answers: Vec<(u64, Result<Response, WireError>)> = vec![first];
                while let Some(Some(a)) = pending.next().now_or_never() {
                    answers.push(a);
                }
                let frame = AnswerFrame { served_by: c.id, answers };
                let out = wire::encode(&frame).map(|payload| Envelope { payload });
                if tx.send(out).await.is_err() {
                    return;
                }
            }
            m = input.message(), if reading && pending.len() < FORWARD_STREAM_PENDING_MAX => {
                match m {
                    Ok(Some(env)) => match wire::decode::<ForwardFrame>(&env.payload) {
                        Ok(frame) => {
                            for (tag, cmd) in frame {
                                let queued = c.enqueue_local(cmd);
                                let c = c.clone();
                                pending.push(async move {
                                    let r = match queued {
                                        Ok(rx) => c.await_local(rx).await,
                                        Err(e) => Err(e),
                                    };
                                    (tag, r.map_err(crate::cluster::propose_to_wire))
                                });
                            }
                        }
                        Err(s) => {
                            reading = false;
                            bad = Some(Status::invalid_argument(format!(
                                "forward frame: {}",
                                s.message()
                            )));
                        }
                    },
                    // The follower closed its side or went away.
                    Ok(None) | Err(_) => reading = false,
                }
            }
            else => break,
        }
    }
    if let Some(s) = bad {
        let _ = tx.send(Err(s)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use stockade_raft_store::Command;

    use super::*;
    use crate::network::NetConfig;
    use crate::testpeer::{FakePeer, ForwardMode};

    const TTL: Duration = Duration::from_millis(300);

    async fn session_to(mode: ForwardMode) -> (Session, tokio::task::JoinHandle<()>) {
        let (addr, server) = FakePeer::spawn(mode).await;
        let pool = Pool::new(NetConfig {
            connect_timeout: Duration::from_secs(1),
            forward_timeout: TTL,
            snapshot_timeout: Duration::from_secs(1),
        });
        (Session::open(&pool, 7, addr.to_string(), TTL), server)
    }

    type Answer = oneshot::Receiver<Result<(Response, u64), ClusterError>>;

    fn batch(n: usize) -> (Vec<Forward>, Vec<Answer>) {
        (0..n)
            .map(|i| {
                let (reply, rx) = oneshot::channel();
                let cmd = Command::Release {
                    user_id: format!("u{i}"),
                    hold_id: i as u64,
                    request_id: format!("r{i}"),
                };
                (
                    Forward {
                        cmd,
                        reply,
                        queued_at: Instant::now(),
                    },
                    rx,
                )
            })
            .unzip()
    }

    fn timer(stats: &Arc<WriteStats>) -> (Arc<BatchTimer>, Arc<Semaphore>) {
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        (BatchTimer::start(permit, stats.clone()), slots)
    }

    async fn answer(rx: Answer) -> Result<(Response, u64), ClusterError> {
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("every forwarded command is answered")
            .expect("the reply is sent, not dropped")
    }

    #[tokio::test]
    async fn answers_that_come_out_of_order_reach_their_own_callers() {
        // The fake leader answers each frame's commands in reverse order, one frame each,
        // with the command's hold id.
        let (session, server) = session_to(ForwardMode::EchoReversed).await;
        let stats = Arc::new(WriteStats::default());
        for round in 0..2 {
            let (fwd, rxs) = batch(5);
            let (t, slots) = timer(&stats);
            session.submit(fwd, t).await.expect("the session is open");
            for (i, rx) in rxs.into_iter().enumerate() {
                let (resp, by) = answer(rx).await.expect("answered");
                assert_eq!(by, 42, "served by the fake leader's id");
                assert!(
                    matches!(resp, Response::Released { hold_id } if hold_id == i as u64),
                    "round {round}, command {i}: {resp:?}"
                );
            }
            // The batch's slot is free again and its round trip timed once.
            assert_eq!(slots.available_permits(), 1);
        }
        assert!(session.serves(7, &session.addr));
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_leader_fails_the_waiting_commands_as_unknown_after_the_ttl() {
        let (session, server) = session_to(ForwardMode::Silent).await;
        let stats = Arc::new(WriteStats::default());
        let (fwd, rxs) = batch(3);
        let (t, slots) = timer(&stats);
        let started = Instant::now();
        session.submit(fwd, t).await.expect("the session is open");
        for rx in rxs {
            let e = answer(rx).await.expect_err("no answer came");
            assert!(matches!(e, ClusterError::Unknown(_)), "{e:?}");
        }
        let waited = started.elapsed();
        assert!(waited >= TTL, "failed after {waited:?}, before one ttl");
        assert_eq!(slots.available_permits(), 1, "the slot is given back");
        // The session is over: a new batch comes back unsent.
        assert!(!session.serves(7, &session.addr));
        let (fwd, _rxs) = batch(1);
        let (t, _slots) = timer(&stats);
        let back = session.submit(fwd, t).await.expect_err("refused");
        assert_eq!(back.len(), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_leader_that_closes_the_stream_has_its_waiting_commands_retried_elsewhere() {
        let reads = Arc::new(AtomicUsize::new(0));
        let (session, server) = session_to(ForwardMode::CloseAfterReading(reads.clone())).await;
        let stats = Arc::new(WriteStats::default());
        let (fwd, rxs) = batch(2);
        let (t, _slots) = timer(&stats);
        session.submit(fwd, t).await.expect("the session is open");
        for rx in rxs {
            let e = answer(rx).await.expect_err("the leader went away");
            // NoLeader: `on_leader` retries it on whoever leads next.
            assert!(matches!(e, ClusterError::NoLeader { .. }), "{e:?}");
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1, "the frame did reach it");
        assert!(!session.serves(7, &session.addr));
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_leader_fails_the_commands_it_was_sent() {
        // Nothing listens there (the port was bound and released).
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = Pool::new(NetConfig {
            connect_timeout: Duration::from_millis(200),
            forward_timeout: TTL,
            snapshot_timeout: Duration::from_secs(1),
        });
        let session = Session::open(&pool, 7, addr.to_string(), TTL);
        let stats = Arc::new(WriteStats::default());
        let (fwd, rxs) = batch(2);
        let (t, _slots) = timer(&stats);
        // Sent or handed back, never lost: either way each caller hears exactly once.
        if let Err(back) = session.submit(fwd, t).await {
            assert_eq!(back.len(), 2);
            return;
        }
        for rx in rxs {
            let e = answer(rx).await.expect_err("nobody there");
            assert!(matches!(e, ClusterError::NoLeader { .. }), "{e:?}");
        }
    }
}
