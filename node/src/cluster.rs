//! The node's implementation of the API's `Cluster` port: leader forwarding, read
//! levels, group commit, and the admin operations.
//!
//! Writes: on the leader, a proposal joins the group-commit queue ([`crate::batcher`]);
//! on a follower it is forwarded to the leader over the internal transport and the
//! answer says which node served it. A proposal that meets a leader change is retried
//! (on the new leader): this is safe because every client command is idempotent by
//! `(user_id, request_id)` and every operator command by content.
//!
//! Reads: `stale` reads this node's applied state; `linearizable` first gets a read
//! index from the leader (openraft's read index, or its lease when configured) and waits
//! until this node has applied up to it, so followers serve linearizable reads too.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState};
use prometheus_client::metrics::histogram::Histogram;
use stockade_api::{
    Backup, Cluster, ClusterError, ClusterStatus, Member, ReadLevel, Readiness, Replication, Served,
};
use stockade_raft_store::store::StateView;
use stockade_raft_store::timing::stage_histogram;
use stockade_raft_store::{Command, LogStore, NodeAddr, Raft, Reject, Response, StateMachineStore};
use tokio::sync::{mpsc, oneshot};

use crate::coalesce::{ForwardBatcher, ReadIndexGate};
use crate::lane::LaneError;
use crate::network::{self, Pool};
use crate::stamp::Stamper;
use crate::wire::{
    ForwardRequest, ForwardResponse, ForwardResult, LaneAnswer, LaneRequest, WireError,
};

/// How long a client is told to wait when there is no leader.
pub(crate) const NO_LEADER_RETRY_MS: u64 = 500;
/// How long a client is told to wait when the proposal queue is full.
pub(crate) const OVERLOADED_RETRY_MS: u64 = 50;
/// Attempts of one proposal across leader changes.
const PROPOSE_ATTEMPTS_MAX: usize = 3;
/// Longest an operator's `snapshot` waits for a build that covers everything applied when
/// it asked. A build runs at a low priority (`--snapshot-build-priority`) and takes seconds per
/// hundred MB of state when the node is idle, longer under load; the HTTP admin timeout
/// (300 s) is above it.
const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(120);
/// How long a request waits for a leader to appear before answering 503.
const LEADER_WAIT: Duration = Duration::from_millis(1_000);

/// Tunables of the write and read paths.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub propose_timeout: Duration,
    pub read_timeout: Duration,
    pub read_policy: ReadPolicy,
    /// `--refusals-from-reads` (see `stockade_api::Cluster::refusals_from_reads`).
    pub refusals_from_reads: bool,
}

/// One proposal waiting in the group-commit queue.
pub struct Proposal {
    pub cmd: Command,
    pub reply: oneshot::Sender<Result<Response, ProposeError>>,
    /// When it was queued (for `WriteStats::batch_wait`).
    pub queued_at: Instant,
}

/// Where a queued proposal's answer arrives.
pub(crate) type LocalAnswer = oneshot::Receiver<Result<Response, ProposeError>>;

/// Why a local proposal did not produce a response.
#[derive(Debug)]
pub enum ProposeError {
    /// This node is not (or no longer) the leader; the hint names the new one.
    NotLeader(Option<u64>),
    Cluster(ClusterError),
}

/// Counters of the write path and the latency of its stages on this node, exported as
/// metrics (see `stockade_raft_store::timing` for why stages are timed per batch).
#[derive(Debug)]
pub struct WriteStats {
    pub proposals: AtomicU64,
    pub entries: AtomicU64,
    /// Requests forwarded to the leader: batches of proposals (one frame on the forward
    /// stream each), read indexes and operator calls (one unary RPC each).
    pub forwarded: AtomicU64,
    /// Forward streams opened to a leader (one per leader, and again after one ended).
    pub forward_streams: AtomicU64,
    /// Proposals that went out in those RPCs.
    pub forwarded_commands: AtomicU64,
    /// Read-index rounds run (each may serve many linearizable reads).
    pub read_rounds: AtomicU64,
    /// Linearizable reads served by those rounds.
    pub linearizable_reads: AtomicU64,
    /// Leader: per entry proposed, how long its oldest proposal waited in the queue for a
    /// free pipeline slot (`stockade_batch_wait_seconds`).
    pub batch_wait: Histogram,
    /// Leader: per entry proposed, from handing it to Raft until its answer, i.e. log
    /// append and fsync on a majority, replication, commit and apply
    /// (`stockade_raft_round_duration_seconds`).
    pub raft_round: Histogram,
    /// Follower: per request forwarded (see `forwarded`), its round trip; for a batch of
    /// proposals, from sending it until its last command's answer
    /// (`stockade_forward_duration_seconds`).
    pub forward_round: Histogram,
    /// Follower: per batch forwarded, how long its oldest proposal waited in the forward
    /// queue for a free slot (`stockade_forward_wait_seconds`).
    pub forward_wait: Histogram,
    /// Leader: per `Tick` answered, the holds and orders it expired plus the idempotency
    /// records it purged (`stockade_tick_expirations`; see `crate::ticker`).
    pub tick_expirations: Histogram,
    /// Leader: how late the earliest due deadline was, in ms, when the ticker last looked
    /// (0 when none was due, and on a follower) (`stockade_deadline_lag_seconds`).
    pub deadline_lag_ms: AtomicU64,
}

impl Default for WriteStats {
    fn default() -> Self {
        WriteStats {
            proposals: AtomicU64::default(),
            entries: AtomicU64::default(),
            forwarded: AtomicU64::default(),
            forward_streams: AtomicU64::default(),
            forwarded_commands: AtomicU64::default(),
            read_rounds: AtomicU64::default(),
            linearizable_reads: AtomicU64::default(),
            batch_wait: stage_histogram(),
            raft_round: stage_histogram(),
            forward_round: stage_histogram(),
            forward_wait: stage_histogram(),
            tick_expirations: crate::ticker::expirations_histogram(),
            deadline_lag_ms: AtomicU64::default(),
        }
    }
}

pub struct NodeCluster {
    pub(crate) id: u64,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore,
    pub(crate) log: LogStore,
    pub(crate) pool: Pool,
    pub(crate) stamper: Arc<Stamper>,
    pub(crate) proposals: mpsc::Sender<Proposal>,
    pub(crate) cfg: ClusterConfig,
    pub(crate) stats: Arc<WriteStats>,
    /// How other nodes reach this one.
    pub(crate) me: NodeAddr,
    /// Linearizable reads share leadership rounds (see `crate::coalesce`).
    pub(crate) read_gate: ReadIndexGate,
    /// Proposals forwarded to the leader in batches (see `crate::coalesce`).
    pub(crate) forwarder: ForwardBatcher,
    /// This cluster itself, for the tasks the gate and the forwarder spawn.
    pub(crate) this: Weak<NodeCluster>,
}

fn internal(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Internal(e.to_string())
}

impl NodeCluster {
    /// Counters of the write and read paths (also exported on `/metrics`).
    pub fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Counters of the replication transport (streams, AppendEntries sent and received).
    pub fn transport_stats(&self) -> &crate::network::TransportStats {
        self.pool.stats()
    }

    /// A hash of this replica's domain state (every state-machine key except the Raft
    /// bookkeeping `last_applied` and `membership`): equal on replicas that applied the
    /// same commands.
    pub fn state_hash(&self) -> Result<u64, stockade_raft_store::StoreError> {
        self.clone_for_blocking().domain_hash()
    }

    /// What a blocking thread needs to hash the state.
    fn clone_for_blocking(&self) -> HashSource {
        HashSource(self.sm.clone())
    }
}

/// The state machine, moved to a blocking thread to be hashed.
struct HashSource(StateMachineStore);

impl HashSource {
    fn domain_hash(&self) -> Result<u64, stockade_raft_store::StoreError> {
        use stockade_raft_store::keys;
        let pairs: Vec<_> = self
            .0
            .dump()?
            .into_iter()
            .filter(|(k, _)| k != keys::META_LAST_APPLIED && k != keys::META_MEMBERSHIP)
            .collect();
        Ok(stockade_raft_store::store::hash_pairs(&pairs))
    }
}

impl NodeCluster {
    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The leader id, waiting up to `LEADER_WAIT` for one to be elected.
    pub(crate) async fn wait_leader(&self) -> Result<u64, ClusterError> {
        match self.leader() {
            Some(l) => Ok(l),
            // Rare, and openraft's wait future is large: boxed (see `on_leader`).
            None => Box::pin(self.wait_for_leader()).await,
        }
    }

    async fn wait_for_leader(&self) -> Result<u64, ClusterError> {
        let m = self
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| ClusterError::NoLeader {
                retry_after_ms: NO_LEADER_RETRY_MS,
            })?;
        m.current_leader.ok_or(ClusterError::NoLeader {
            retry_after_ms: NO_LEADER_RETRY_MS,
        })
    }

    pub(crate) fn raft_addr_of(&self, id: u64) -> Result<String, ClusterError> {
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        m.membership()
            .get_node(&id)
            .map(|n| n.raft_addr.clone())
            .ok_or(ClusterError::NoLeader {
                retry_after_ms: NO_LEADER_RETRY_MS,
            })
    }

    /// Queues a proposal for the local group-commit batcher (leader only) and waits for
    /// its answer.
    pub(crate) async fn propose_local(&self, cmd: Command) -> Result<Response, ProposeError> {
        let rx = self.enqueue_local(cmd)?;
        self.await_local(rx).await
    }

    /// The first half of [`Self::propose_local`]: queues the proposal at once (so the
    /// commands of a forwarded frame join the queue in their order).
    pub(crate) fn enqueue_local(&self, cmd: Command) -> Result<LocalAnswer, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.stats.proposals.fetch_add(1, Ordering::Relaxed);
        self.proposals
            .try_send(Proposal {
                cmd,
                reply,
                queued_at: Instant::now(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ProposeError::Cluster(ClusterError::Overloaded {
                        retry_after_ms: OVERLOADED_RETRY_MS,
                    })
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Cluster(internal("the batcher has stopped"))
                }
            })?;
        Ok(rx)
    }

    /// The second half of [`Self::propose_local`]: the answer, within the propose timeout.
    pub(crate) async fn await_local(&self, rx: LocalAnswer) -> Result<Response, ProposeError> {
        match tokio::time::timeout(self.cfg.propose_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Cluster(ClusterError::Unknown(
                "the proposal was dropped".into(),
            ))),
            Err(_) => Err(ProposeError::Cluster(ClusterError::Unknown(
                "timed out waiting for commit".into(),
            ))),
        }
    }

    async fn forward(
        &self,
        leader: u64,
        req: &ForwardRequest,
    ) -> Result<(ForwardResponse, u64), ClusterError> {
        let addr = self.raft_addr_of(leader)?;
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sent = network::forward(&self.pool, &addr, req).await;
        self.stats
            .forward_round
            .observe(started.elapsed().as_secs_f64());
        let out: ForwardResult = sent.map_err(|s| match s.code() {
            tonic::Code::Unavailable => ClusterError::NoLeader {
                retry_after_ms: NO_LEADER_RETRY_MS,
            },
            _ => ClusterError::Unknown(format!("forward to node {leader}: {}", s.message())),
        })?;
        out.map_err(ClusterError::from)
    }

    /// A read index from the leader, asked on this node's lane to it (`crate::lane`): one
    /// message each way, not a call of its own. The leader serves it from its own
    /// `ReadIndexGate`, so the rounds it runs for its own reads and for every follower's
    /// are shared as well.
    async fn read_index_on_lane(
        &self,
        leader: u64,
    ) -> Result<(ForwardResponse, u64), ClusterError> {
        let addr = self.raft_addr_of(leader)?;
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let ttl = self.pool.config().forward_timeout;
        let answer = crate::lane::call(&self.pool, &addr, &LaneRequest::ReadIndex, ttl).await;
        self.stats
            .forward_round
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(LaneAnswer::ReadIndex(Ok(index))) => Ok((ForwardResponse::ReadIndex(index), leader)),
            Ok(LaneAnswer::ReadIndex(Err(e))) => Err(e.into()),
            Ok(other) => Err(internal(format!(
                "node {leader} answered {other:?} to a read index"
            ))),
            // The leader went away or the connection broke: whoever leads next.
            Err(LaneError::Broken { .. }) => Err(ClusterError::NoLeader {
                retry_after_ms: NO_LEADER_RETRY_MS,
            }),
            Err(e @ LaneError::TimedOut { .. }) => Err(ClusterError::Unknown(e.to_string())),
        }
    }

    /// Runs a request that only the leader can serve, here or on the leader.
    ///
    /// An attempt that met a lost leadership may still take effect (its entry can be in
    /// the new leader's log). A later attempt refused *before* the log (a full queue:
    /// `Overloaded`, a 429 that tells the client nothing happened) would then be a false
    /// answer, so after such an attempt that refusal becomes `Unknown`: the client
    /// retries with the same request id and gets the recorded answer.
    ///
    /// **Size.** Every request's future contains this one, and each is copied, every byte,
    /// when its request arrives (a gRPC stream boxes it then: `stockade_api::grpc`,
    /// `Answering`); an async fn's future is as large as its largest branch. So only the branches every proposal takes (the
    /// local queue, the forward stream) are awaited in place; a unary forward, openraft's
    /// membership calls and waiting for a leader are boxed where they are awaited (and
    /// `Command` boxes its one large variant). That took a proposal's future from 4,000
    /// to 968 bytes and a linearizable read's from 2,136 to 72 (debug build), and
    /// `memmove`'s share of a follower's CPU in a sold-out hammer from 6.2% to 2.7%
    /// (`docs/benchmarks.md`, twenty-first session); `the_futures_every_request_takes_
    /// stay_small` in `tests/cluster.rs` holds the line.
    async fn on_leader(&self, req: ForwardRequest) -> Result<(ForwardResponse, u64), ClusterError> {
        let mut last = ClusterError::NoLeader {
            retry_after_ms: NO_LEADER_RETRY_MS,
        };
        let mut maybe_sent = false;
        for _ in 0..PROPOSE_ATTEMPTS_MAX {
            let leader = self.wait_leader().await?;
            let result = if leader == self.id {
                match self.serve_as_leader(&req).await {
                    Ok(r) => return Ok((r, self.id)),
                    Err(ProposeError::Cluster(e)) => Err(e),
                    Err(ProposeError::NotLeader(hint)) => {
                        // Lost leadership on the way: wait for the next one and retry.
                        maybe_sent = true;
                        if let Some(h) = hint.filter(|&h| h != self.id) {
                            Box::pin(self.forward(h, &req)).await
                        } else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
            } else if let ForwardRequest::Propose(cmd) = &req {
                self.forwarder
                    .forward(cmd.clone())
                    .await
                    .map(|(r, by)| (ForwardResponse::Proposed(r), by))
            } else if let ForwardRequest::ReadIndex = req {
                Box::pin(self.read_index_on_lane(leader)).await
            } else {
                Box::pin(self.forward(leader, &req)).await
            };
            match result {
                Ok(ok) => return Ok(ok),
                // The leader we knew is gone; try whoever leads next.
                Err(e @ ClusterError::NoLeader { .. }) => {
                    maybe_sent = true;
                    last = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(after_attempts(maybe_sent, e)),
            }
        }
        Err(last)
    }

    /// Serves a forwarded (or local) request on this node, which believes it leads.
    pub(crate) async fn serve_as_leader(
        &self,
        req: &ForwardRequest,
    ) -> Result<ForwardResponse, ProposeError> {
        match req {
            ForwardRequest::Propose(cmd) => self
                .propose_local(cmd.clone())
                .await
                .map(ForwardResponse::Proposed),
            // Read-index rounds and operator calls: boxed (see `on_leader`, "Size").
            other => Box::pin(self.serve_other(other)).await,
        }
    }

    /// [`Self::serve_as_leader`] for everything but a proposal.
    async fn serve_other(&self, req: &ForwardRequest) -> Result<ForwardResponse, ProposeError> {
        match req {
            ForwardRequest::Propose(cmd) => self
                .propose_local(cmd.clone())
                .await
                .map(ForwardResponse::Proposed),
            ForwardRequest::ReadIndex => {
                let read = self
                    .raft
                    .ensure_linearizable(self.cfg.read_policy.clone())
                    .await
                    .map_err(raft_err)?;
                Ok(ForwardResponse::ReadIndex(read.index()))
            }
            ForwardRequest::AddLearner { node_id, addr } => {
                self.raft
                    .add_learner(*node_id, addr.clone(), true)
                    .await
                    .map_err(raft_err)?;
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::ChangeMembership { voters, retain } => {
                self.raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), *retain)
                    .await
                    .map_err(raft_err)?;
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::TransferLeader { to } => {
                if !self
                    .raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == *to)
                {
                    return Err(ProposeError::Cluster(ClusterError::Refused(format!(
                        "node {to} is not a voter"
                    ))));
                }
                self.raft
                    .trigger()
                    .transfer_leader(*to)
                    .await
                    .map_err(|e| ProposeError::Cluster(internal(e)))?;
                Ok(ForwardResponse::Done)
            }
        }
    }

    /// One read-index round: the leader's confirmed read index (asked of the leader when
    /// this node follows). Callers go through [`ReadIndexGate`], which shares rounds.
    pub(crate) async fn read_index_round(&self) -> Result<u64, ClusterError> {
        self.stats.read_rounds.fetch_add(1, Ordering::Relaxed);
        let (resp, _) = self.on_leader(ForwardRequest::ReadIndex).await?;
        match resp {
            ForwardResponse::ReadIndex(index) => Ok(index),
            other => Err(internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The answer to a request forwarded to this node.
    pub(crate) async fn handle_forward(&self, req: ForwardRequest) -> ForwardResult {
        self.serve_as_leader(&req)
            .await
            .map(|r| (r, self.id))
            .map_err(propose_to_wire)
    }
}

/// The answer to give for a failed attempt of [`NodeCluster::on_leader`]: a refusal from
/// before the log (`Overloaded`: nothing happened *in this attempt*) is not the whole
/// truth when an earlier attempt may still take effect (`maybe_sent`), so it becomes
/// `Unknown`, and the client retries with the same request id.
fn after_attempts(maybe_sent: bool, e: ClusterError) -> ClusterError {
    match e {
        ClusterError::Overloaded { .. } if maybe_sent => ClusterError::Unknown(
            "an earlier attempt met a leader change and may still take effect, and the new \
             leader is overloaded"
                .into(),
        ),
        e => e,
    }
}

/// A local proposal's failure as it crosses the wire: "not the leader" becomes
/// `NoLeader`, which the forwarding node retries on whoever leads next.
pub(crate) fn propose_to_wire(e: ProposeError) -> WireError {
    match e {
        ProposeError::NotLeader(_) => WireError::NoLeader {
            retry_after_ms: NO_LEADER_RETRY_MS,
        },
        ProposeError::Cluster(c) => c.into(),
    }
}

/// Maps openraft's errors: "not the leader" is retried by the caller, the rest surface.
pub(crate) fn raft_err<E>(e: RaftError<stockade_raft_store::TypeConfig, E>) -> ProposeError
where
    E: std::fmt::Debug + std::fmt::Display + ForwardHint,
{
    match e {
        RaftError::APIError(api) => match api.forward_hint() {
            Some(hint) => ProposeError::NotLeader(hint),
            None => ProposeError::Cluster(ClusterError::Refused(api.to_string())),
        },
        RaftError::Fatal(f) => ProposeError::Cluster(internal(f)),
    }
}

/// openraft API errors that may mean "ask the leader".
pub(crate) trait ForwardHint {
    /// `Some(leader hint)` when the error is a forward-to-leader.
    fn forward_hint(&self) -> Option<Option<u64>>;
}

impl ForwardHint for ClientWriteError<stockade_raft_store::TypeConfig> {
    fn forward_hint(&self) -> Option<Option<u64>> {
        match self {
            ClientWriteError::ForwardToLeader(f) => Some(f.leader_id),
            _ => None,
        }
    }
}

impl ForwardHint for openraft::error::LinearizableReadError<stockade_raft_store::TypeConfig> {
    fn forward_hint(&self) -> Option<Option<u64>> {
        match self {
            openraft::error::LinearizableReadError::ForwardToLeader(f) => Some(f.leader_id),
            _ => None,
        }
    }
}

impl ForwardHint for std::convert::Infallible {
    fn forward_hint(&self) -> Option<Option<u64>> {
        None
    }
}

impl Cluster for NodeCluster {
    type View = StateView;

    fn node_id(&self) -> u64 {
        self.id
    }

    fn refusals_from_reads(&self) -> bool {
        self.cfg.refusals_from_reads
    }

    fn reserve_precheck(&self, _view: &StateView, sale_id: &str, qty: u32) -> Option<Reject> {
        // The state machine's gates are as new as the last apply call, never older than
        // the view (a live view of the same column family).
        self.sm.reserve_precheck(sale_id, qty).ok()?
    }

    async fn propose(&self, cmd: Command) -> Result<Served<Response>, ClusterError> {
        let (resp, served_by) = self.on_leader(ForwardRequest::Propose(cmd)).await?;
        match resp {
            ForwardResponse::Proposed(r) => Ok(Served {
                value: r,
                served_by,
            }),
            other => Err(internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn read(&self, level: ReadLevel) -> Result<Served<StateView>, ClusterError> {
        if level == ReadLevel::Linearizable {
            self.stats
                .linearizable_reads
                .fetch_add(1, Ordering::Relaxed);
            let index = self.read_gate.read_index(&self.this).await?;
            let applied = self.raft.metrics().borrow_watched().last_applied;
            if applied.is_some_and(|a| a.index >= index) {
                return Ok(Served {
                    value: self.sm.view(),
                    served_by: self.id,
                });
            }
            // Boxed: rare (the apply is behind the read index), and the future is large.
            Box::pin(
                self.raft
                    .wait(Some(self.cfg.read_timeout))
                    .applied_index_at_least(Some(index), "linearizable read"),
            )
            .await
            .map_err(|_| ClusterError::Unknown(format!("did not apply up to {index} in time")))?;
        }
        Ok(Served {
            value: self.sm.view(),
            served_by: self.id,
        })
    }

    async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                node_id: *id,
                raft_addr: n.raft_addr.clone(),
                api_addr: n.api_addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let last = m.last_log_index.unwrap_or(0);
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, matched)| {
                        let matched_index = matched.as_ref().map(|l| l.index);
                        Replication {
                            node_id: *id,
                            matched_index,
                            lag: last.saturating_sub(matched_index.unwrap_or(0)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ClusterStatus {
            node_id: self.id,
            role: role_name(m.state, voters.contains(&self.id)).to_string(),
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: last,
            commit_index: m.local_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            replication,
        })
    }

    fn readiness(&self) -> Readiness {
        let m = self.raft.metrics().borrow_watched().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let committed = m.local_committed.map_or(0, |l| l.index);
        Readiness {
            has_leader: m.current_leader.is_some(),
            caught_up: applied >= committed,
        }
    }

    async fn initialize(
        &self,
        members: std::collections::BTreeMap<u64, NodeAddr>,
    ) -> Result<(), ClusterError> {
        let members = if members.is_empty() {
            std::collections::BTreeMap::from([(self.id, self.me.clone())])
        } else {
            members
        };
        if !members.contains_key(&self.id) {
            return Err(ClusterError::Refused(format!(
                "the members must include this node ({})",
                self.id
            )));
        }
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(api) => ClusterError::Refused(api.to_string()),
            RaftError::Fatal(f) => internal(f),
        })
    }

    async fn add_learner(&self, node_id: u64, addr: NodeAddr) -> Result<(), ClusterError> {
        self.on_leader(ForwardRequest::AddLearner { node_id, addr })
            .await
            .map(|_| ())
    }

    async fn change_membership(
        &self,
        voters: BTreeSet<u64>,
        retain: bool,
    ) -> Result<(), ClusterError> {
        if voters.is_empty() {
            return Err(ClusterError::Refused(
                "a cluster needs at least one voter".into(),
            ));
        }
        self.on_leader(ForwardRequest::ChangeMembership { voters, retain })
            .await
            .map(|_| ())
    }

    async fn transfer_leader(&self, to: u64) -> Result<(), ClusterError> {
        self.on_leader(ForwardRequest::TransferLeader { to })
            .await?;
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_leader == Some(to), "the new leader")
            .await
            .map_err(|_| {
                ClusterError::Unknown(format!("node {to} did not become leader within 5 s"))
            })?;
        Ok(())
    }

    async fn trigger_snapshot(&self) -> Result<(), ClusterError> {
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index);
        let Some(applied) = applied else {
            return Err(ClusterError::NotFound(
                "nothing applied yet: no snapshot to take".into(),
            ));
        };
        let deadline = tokio::time::Instant::now() + SNAPSHOT_WAIT_MAX;
        loop {
            let before = self
                .raft
                .metrics()
                .borrow_watched()
                .snapshot
                .map(|s| s.index);
            if before.is_some_and(|i| i >= applied) {
                return Ok(());
            }
            // openraft asks the state machine like a policy turn; this one must not be
            // deferred.
            self.sm.force_next_snapshot();
            self.raft.trigger().snapshot().await.map_err(internal)?;
            // If a build was already running, openraft drops this request and that build
            // ends below `applied`: then ask again once it is in.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.raft
                .wait(Some(left))
                .metrics(
                    |m| m.snapshot.map(|s| s.index) != before,
                    "a snapshot build to finish",
                )
                .await
                .map_err(|e| ClusterError::Unknown(format!("snapshot not finished: {e}")))?;
        }
    }

    async fn compact(&self) -> Result<stockade_raft_store::Compaction, ClusterError> {
        let sm = self.sm.clone();
        tokio::task::spawn_blocking(move || sm.compact_blocking())
            .await
            .map_err(internal)?
            .map_err(internal)?
            .ok_or_else(|| {
                ClusterError::Refused(
                    "a compaction is already running on this node; wait for it".into(),
                )
            })
    }

    async fn backup(&self) -> Result<Backup, ClusterError> {
        use openraft::storage::RaftStateMachine;
        let mut sm = self.sm.clone();
        let snap = sm.get_current_snapshot().await.map_err(internal)?;
        let Some(snap) = snap else {
            return Err(ClusterError::NotFound(
                "no snapshot yet: trigger one first".into(),
            ));
        };
        let len_bytes = snap.snapshot.metadata().map_err(internal)?.len();
        Ok(Backup {
            file: snap.snapshot,
            len_bytes,
            last_index: snap.meta.last_log_id.map(|l| l.index),
        })
    }

    async fn state_hash(&self) -> Result<stockade_api::StateHash, ClusterError> {
        let applied_index = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index);
        let cluster = self.clone_for_blocking();
        let state_hash = tokio::task::spawn_blocking(move || cluster.domain_hash())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        Ok(stockade_api::StateHash {
            node_id: self.id,
            applied_index,
            state_hash,
        })
    }

    fn metrics_text(&self) -> String {
        crate::metrics::render(self)
    }
}

fn role_name(state: ServerState, voter: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower if voter => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overloaded_after_a_leader_change_is_an_unknown_outcome() {
        let overloaded = || ClusterError::Overloaded { retry_after_ms: 50 };
        // First attempt: nothing was sent before, so a full queue is a clean refusal.
        assert!(matches!(
            after_attempts(false, overloaded()),
            ClusterError::Overloaded { .. }
        ));
        // After an attempt that met a leader change, its entry may still commit.
        assert!(matches!(
            after_attempts(true, overloaded()),
            ClusterError::Unknown(_)
        ));
        // Other answers pass through either way.
        assert!(matches!(
            after_attempts(true, ClusterError::Refused("x".into())),
            ClusterError::Refused(_)
        ));
    }
}
