//! The Raft network, client side: openraft's `RaftNetworkV2` over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address, shared by every connection
//! openraft opens to that peer (replication, heartbeats, snapshots) and by leader
//! forwarding. Every call has a deadline: openraft's hard TTL for Raft RPCs, the
//! configured forward timeout otherwise. Snapshots stream in `SNAPSHOT_CHUNK_BYTES`
//! chunks from the snapshot file, never as one message.
//!
//! **Replication is one gRPC stream per leader session** ([`Conn::stream_append`]), not a
//! unary call per AppendEntries. openraft's default `stream_append` sends one request and
//! waits for its answer before the next (one AppendEntries in flight per follower, each a
//! new HTTP/2 stream with its own headers, deadline, trailers and server task). Here the
//! leader's requests flow as messages on one bidirectional stream while earlier ones are
//! still being written and fsynced on the follower, which answers in order through
//! `Raft::stream_append` (openraft's pipelined receiver, at most 64 requests queued).
//! A long-lived stream has no deadline of its own, so a stall is detected by progress:
//! when a request that was already sent one `hard_ttl` ago is still unanswered, the
//! stream fails as `Unreachable` and openraft opens a new session (see
//! `Conn::stream_append`).
//!
//! **A one-request stream is one call on the peer's lane** (`crate::lane`): openraft sends
//! every heartbeat (one per read-index round, so thousands a second under a sold-out
//! crowd) and every probe that only syncs the commit index as a `stream_append` whose
//! input ends after one request. `Conn::stream_append` looks, without waiting, whether
//! the input has one request ready and then ends, and if so sends that request as one
//! message on the long-lived lane instead of opening a `StreamAppend` call for it; the
//! answer is converted as openraft's own sequential adapter converts a unary answer.
//! Not compatible with a node that lacks `StreamAppend` or `PeerLane` (all nodes of a
//! cluster run the same version of this internal protocol).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use stockade_proto::raft::raft_transport_client::RaftTransportClient;
use stockade_proto::raft::{Envelope, SnapshotChunk};
use stockade_raft_store::{NodeAddr, TypeConfig, Vote};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::wire;

/// Snapshot bytes per streamed message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest message a node accepts or sends on the internal transport.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, std::fs::File>;

/// Connection settings for the internal transport.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub connect_timeout: Duration,
    /// Deadline of a forwarded client request or read index.
    pub forward_timeout: Duration,
    /// Deadline of a whole snapshot transfer.
    pub snapshot_timeout: Duration,
}

/// Counters of the replication transport, both directions (exported at `/metrics`).
#[derive(Default, Debug)]
pub struct TransportStats {
    /// `StreamAppend` streams this node opened as leader (one per replication session
    /// or heartbeat).
    pub append_streams_opened: AtomicU64,
    /// AppendEntries requests this node sent on those streams.
    pub appends_sent: AtomicU64,
    /// AppendEntries requests this node received on streams, as follower.
    pub appends_received_streamed: AtomicU64,
    /// AppendEntries requests this node received as unary calls (none from a node of
    /// this version; the unary RPC stays for tools and older peers).
    pub appends_received_unary: AtomicU64,
    /// Streams this node failed because a sent request went unanswered for a `hard_ttl`.
    pub append_streams_stalled: AtomicU64,
    /// Lanes (`crate::lane`) this node opened to its peers.
    pub lanes_opened: AtomicU64,
    /// Calls this node sent on lanes (heartbeats and other single AppendEntries as
    /// leader, read indexes as follower).
    pub lane_calls_sent: AtomicU64,
    /// Calls this node served for its peers' lanes.
    pub lane_calls_received: AtomicU64,
    /// Lanes this node closed because a call went unanswered for its timeout.
    pub lane_stalls: AtomicU64,
}

/// Channels to peers, by Raft address.
#[derive(Clone)]
pub struct Pool {
    cfg: NetConfig,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    stats: Arc<TransportStats>,
    lanes: Arc<crate::lane::Lanes>,
}

impl Pool {
    pub fn new(cfg: NetConfig) -> Self {
        Pool {
            cfg,
            channels: Arc::default(),
            stats: Arc::default(),
            lanes: Arc::default(),
        }
    }

    /// This node's lanes to its peers (`crate::lane`).
    pub fn lanes(&self) -> &crate::lane::Lanes {
        &self.lanes
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    pub fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, tonic::Status> {
        let mut map = self
            .channels
            .lock()
            .map_err(|_| tonic::Status::internal("channel pool poisoned"))?;
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let ep = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("bad peer address {addr}: {e}"))
                    })?
                    .connect_timeout(self.cfg.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                let c = ep.connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX))
    }
}

/// openraft's network factory.
pub struct Network {
    pub pool: Pool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Conn {
        Conn {
            target,
            addr: node.raft_addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// A connection to one peer.
pub struct Conn {
    target: u64,
    addr: String,
    pool: Pool,
}

fn status_to_rpc(target: u64, s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&PeerError(target, s.to_string())))
        }
        _ => RPCError::Network(NetworkError::new(&PeerError(target, s.to_string()))),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("peer {0}: {1}")]
struct PeerError(u64, String);

impl Conn {
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, tonic::Request<Envelope>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Envelope>, tonic::Status>>,
    {
        let client = self
            .pool
            .client(&self.addr)
            .map_err(|s| status_to_rpc(self.target, s))?;
        let payload = wire::encode(req).map_err(|s| status_to_rpc(self.target, s))?;
        let mut request = tonic::Request::new(Envelope { payload });
        request.set_timeout(ttl);
        let resp = call(client, request)
            .await
            .map_err(|s| status_to_rpc(self.target, s))?;
        peer_answer(self.target, &resp.into_inner().payload)
    }
}

/// What one `StreamAppend` answer carries.
type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Decodes a peer's `Result<T, String>` answer (unary replies and stream messages alike):
/// an `Err` is a fault on the peer (shutting down, storage error), which openraft treats
/// as a network failure and retries.
fn peer_answer<T: DeserializeOwned>(
    target: u64,
    payload: &[u8],
) -> Result<T, RPCError<TypeConfig>> {
    let out: Result<T, String> = wire::decode(payload).map_err(|s| status_to_rpc(target, s))?;
    out.map_err(|e| RPCError::Network(NetworkError::new(&PeerError(target, e))))
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = std::fs::File;

    /// Replication over one bidirectional `StreamAppend` call (see the module docs).
    ///
    /// Answers come back in request order (the follower's `Raft::stream_append`
    /// guarantees it) and the stream ends after the first refusal (conflict, higher
    /// vote) or error, as openraft expects. Setting up the call is bounded by
    /// `hard_ttl`; after that, progress is checked every `hard_ttl`: if a request that
    /// was sent before the previous check is still unanswered, the follower (or the
    /// path to it) is stalled and the stream fails `Unreachable`. An idle stream, with
    /// nothing in flight, never times out.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamItem>, RPCError<TypeConfig>>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        let target = self.target;
        let ttl = option.hard_ttl();
        let pool = self.pool.clone();
        let addr = self.addr.clone();
        Box::pin(async move {
            // A stream that has one request ready and then ends (a heartbeat, a probe that
            // syncs the commit index) is one call on the lane, not a stream of its own.
            // Looking never waits: any other stream opens its call at once, with what was
            // looked at put back in front.
            let mut input = input.fuse();
            let mut head = Vec::new();
            if let Some(first) = input.next().now_or_never() {
                let Some(first) = first else {
                    return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, StreamItem>);
                };
                match input.next().now_or_never() {
                    Some(None) => {
                        let answer = append_on_lane(&pool, target, &addr, first, ttl).await;
                        return Ok(
                            Box::pin(futures::stream::once(futures::future::ready(answer)))
                                as BoxStream<'s, StreamItem>,
                        );
                    }
                    Some(Some(second)) => head.extend([first, second]),
                    None => head.push(first),
                }
            }
            let input = futures::stream::iter(head).chain(input);
            let mut client = pool.client(&addr).map_err(|s| status_to_rpc(target, s))?;
            let sent = Arc::new(AtomicU64::new(0));
            let (sent_in, stats_in) = (sent.clone(), pool.stats.clone());
            // An encoding failure ends the request stream (and so the session); openraft
            // then starts a new one. bincode into a Vec does not fail for these types.
            let requests = input.scan((), move |_, req| {
                let env = match wire::encode(&req) {
                    Ok(payload) => {
                        sent_in.fetch_add(1, Ordering::Relaxed);
                        stats_in.appends_sent.fetch_add(1, Ordering::Relaxed);
                        Some(Envelope { payload })
                    }
                    Err(e) => {
                        tracing::error!(target, "cannot encode AppendEntries: {e}");
                        None
                    }
                };
                futures::future::ready(env)
            });
            // No grpc-timeout on the call: it would bound the whole long-lived stream.
            let call = client.stream_append(tonic::Request::new(requests));
            let responses = match tokio::time::timeout(ttl, call).await {
                Ok(r) => r.map_err(|s| status_to_rpc(target, s))?.into_inner(),
                Err(_) => {
                    return Err(RPCError::Unreachable(Unreachable::new(&PeerError(
                        target,
                        format!("StreamAppend not answered within {ttl:?}"),
                    ))))
                }
            };
            pool.stats
                .append_streams_opened
                .fetch_add(1, Ordering::Relaxed);
            let stats = pool.stats.clone();
            let answers = futures::stream::unfold(Some((responses, 0u64)), move |state| {
                let sent = sent.clone();
                let stats = stats.clone();
                async move {
                    let (mut responses, mut received) = state?;
                    // Requests sent before the current check window began.
                    let mut due = sent.load(Ordering::Relaxed);
                    loop {
                        match tokio::time::timeout(ttl, responses.message()).await {
                            Ok(Ok(Some(env))) => {
                                received += 1;
                                let item: StreamItem = peer_answer(target, &env.payload);
                                let more = matches!(item, Ok(Ok(_)));
                                return Some((item, more.then_some((responses, received))));
                            }
                            Ok(Ok(None)) => return None,
                            Ok(Err(s)) => return Some((Err(status_to_rpc(target, s)), None)),
                            Err(_) if received < due => {
                                stats.append_streams_stalled.fetch_add(1, Ordering::Relaxed);
                                let e = PeerError(
                                    target,
                                    format!(
                                        "AppendEntries unanswered for {ttl:?} \
                                             ({received} of {due} answered)"
                                    ),
                                );
                                return Some((
                                    Err(RPCError::Unreachable(Unreachable::new(&e))),
                                    None,
                                ));
                            }
                            Err(_) => due = sent.load(Ordering::Relaxed),
                        }
                    }
                }
            });
            Ok(Box::pin(answers) as BoxStream<'s, StreamItem>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, option.hard_ttl(), |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let unreachable = |s: tonic::Status| {
            StreamingError::Unreachable(Unreachable::new(&PeerError(self.target, s.to_string())))
        };
        let mut client = self.pool.client(&self.addr).map_err(unreachable)?;
        let meta = wire::encode(&(vote, snapshot.meta.clone())).map_err(unreachable)?;
        let mut std_file = snapshot.snapshot;
        std::io::Seek::rewind(&mut std_file)
            .map_err(|e| unreachable(tonic::Status::internal(e.to_string())))?;
        let file = tokio::fs::File::from_std(std_file);
        // The first message carries the meta; then the file in chunks.
        let first = futures::stream::once(async move {
            SnapshotChunk {
                meta,
                data: Vec::new(),
            }
        });
        let chunks = futures::stream::unfold(Some(file), |state| async move {
            let mut f = state?;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        SnapshotChunk {
                            meta: Vec::new(),
                            data: buf,
                        },
                        Some(f),
                    ))
                }
            }
        });
        let mut request = tonic::Request::new(first.chain(chunks));
        request.set_timeout(self.pool.config().snapshot_timeout);
        let call = client.install_snapshot(request);
        let resp = tokio::select! {
            r = call => r.map_err(unreachable)?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let out: Result<SnapshotResponse<TypeConfig>, String> =
            wire::decode(&resp.into_inner().payload).map_err(unreachable)?;
        out.map_err(|e| StreamingError::Network(NetworkError::new(&PeerError(self.target, e))))
    }
}

/// One AppendEntries as a call on the lane to `addr` (see `crate::lane`), answered as
/// `StreamAppend` answers it. A lane that broke or a call that timed out is
/// `Unreachable`, as a stream that failed is.
async fn append_on_lane(
    pool: &Pool,
    target: u64,
    addr: &str,
    req: AppendEntriesRequest<TypeConfig>,
    ttl: Duration,
) -> StreamItem {
    // The range the request covers, as openraft's `log_id_range` (crate-private) has it.
    let prev = req.prev_log_id;
    let last = req
        .entries
        .last()
        .map(openraft::entry::RaftEntry::log_id)
        .or(prev);
    let unreachable = |e: String| RPCError::Unreachable(Unreachable::new(&PeerError(target, e)));
    match crate::lane::call(pool, addr, &wire::LaneRequest::Append(req), ttl).await {
        Ok(wire::LaneAnswer::Append(Ok(resp))) => Ok(resp.into_stream_result(prev, last)),
        Ok(wire::LaneAnswer::Append(Err(e))) => {
            Err(RPCError::Network(NetworkError::new(&PeerError(target, e))))
        }
        Ok(other) => Err(unreachable(format!(
            "answered {other:?} to an AppendEntries"
        ))),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

/// Sends a forwarded request to the leader at `addr`.
pub async fn forward(
    pool: &Pool,
    addr: &str,
    req: &wire::ForwardRequest,
) -> Result<wire::ForwardResult, tonic::Status> {
    let mut client = pool.client(addr)?;
    let mut request = tonic::Request::new(Envelope {
        payload: wire::encode(req)?,
    });
    request.set_timeout(pool.config().forward_timeout);
    let resp = client.forward(request).await?;
    wire::decode(&resp.into_inner().payload)
}

/// Drains a received snapshot stream into `path`; returns the vote and meta it carried.
pub async fn receive_snapshot(
    mut stream: tonic::Streaming<SnapshotChunk>,
    path: &std::path::Path,
) -> Result<(Vote, stockade_raft_store::SnapshotMeta), tonic::Status> {
    use tokio::io::AsyncWriteExt;
    let first = stream
        .next()
        .await
        .ok_or_else(|| tonic::Status::invalid_argument("empty snapshot stream"))??;
    let (vote, meta): (Vote, stockade_raft_store::SnapshotMeta) = wire::decode(&first.meta)?;
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    f.write_all(&first.data)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    while let Some(chunk) = stream.next().await {
        f.write_all(&chunk?.data)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    f.sync_all()
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok((vote, meta))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testpeer::{FakePeer, ForwardMode, LaneMode};

    fn test_pool() -> Pool {
        Pool::new(NetConfig {
            connect_timeout: Duration::from_secs(1),
            forward_timeout: Duration::from_secs(1),
            snapshot_timeout: Duration::from_secs(1),
        })
    }

    async fn silent_peer() -> (Conn, tokio::task::JoinHandle<()>) {
        // A follower that takes every AppendEntries and never answers.
        peer_with_lanes(LaneMode::Silent).await
    }

    fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    const TTL: Duration = Duration::from_millis(200);

    fn stalls(conn: &Conn) -> u64 {
        conn.pool
            .stats()
            .append_streams_stalled
            .load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn an_unanswered_append_fails_the_stream_as_unreachable_after_the_ttl() {
        let (mut conn, server) = silent_peer().await;
        // One request, then the input stays open (as a replication session's does).
        let input =
            Box::pin(futures::stream::iter([heartbeat()]).chain(futures::stream::pending()));
        let started = Instant::now();
        let mut answers = conn
            .stream_append(input, RPCOption::new(TTL))
            .await
            .expect("the call is set up");
        let first = tokio::time::timeout(Duration::from_secs(5), answers.next())
            .await
            .expect("a stalled stream must fail, not hang");
        let waited = started.elapsed();
        assert!(
            matches!(first, Some(Err(RPCError::Unreachable(_)))),
            "{first:?}"
        );
        assert!(waited >= TTL, "failed after {waited:?}, before one ttl");
        assert!(
            answers.next().await.is_none(),
            "the stream ends after the failure"
        );
        drop(answers);
        assert_eq!(stalls(&conn), 1);
        assert_eq!(conn.pool.stats().appends_sent.load(Ordering::Relaxed), 1);
        server.abort();
    }

    async fn peer_with_lanes(lane: LaneMode) -> (Conn, tokio::task::JoinHandle<()>) {
        let (addr, server) = FakePeer::spawn_with(ForwardMode::Silent, lane).await;
        let conn = Conn {
            target: 9,
            addr: addr.to_string(),
            pool: test_pool(),
        };
        (conn, server)
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Sends one heartbeat as openraft's heartbeat worker does (a one-request stream) and
    /// returns every answer the call yields.
    async fn one_heartbeat(conn: &mut Conn, ttl: Duration) -> Vec<StreamItem> {
        let input = Box::pin(futures::stream::once(async { heartbeat() }));
        match conn.stream_append(input, RPCOption::new(ttl)).await {
            Ok(answers) => answers.collect().await,
            Err(e) => vec![Err(e)],
        }
    }

    #[tokio::test]
    async fn heartbeats_are_calls_on_one_lane_not_streams_of_their_own() {
        let (mut conn, server) = peer_with_lanes(LaneMode::Answer).await;
        for i in 1..=3u64 {
            let answers = one_heartbeat(&mut conn, Duration::from_secs(5)).await;
            // `Success` for a request with no entries after no log: matched up to None.
            assert!(
                matches!(answers.as_slice(), [Ok(Ok(None))]),
                "heartbeat {i}: {answers:?}"
            );
            let t = conn.pool.stats();
            assert_eq!(count(&t.lane_calls_sent), i);
            assert_eq!(count(&t.lanes_opened), 1, "one lane for every heartbeat");
            assert_eq!(count(&t.append_streams_opened), 0, "no StreamAppend call");
            assert_eq!(count(&t.appends_sent), 0);
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_stream_of_more_than_one_request_still_opens_a_stream() {
        let (mut conn, server) = peer_with_lanes(LaneMode::Answer).await;
        let pool = conn.pool.clone();
        // Two requests at once, then the input stays open (a replication session).
        let input = Box::pin(
            futures::stream::iter([heartbeat(), heartbeat()]).chain(futures::stream::pending()),
        );
        let answers = conn
            .stream_append(input, RPCOption::new(TTL))
            .await
            .expect("the call is set up");
        // The fake peer never answers a stream; give the requests time to be written.
        let sent = async {
            while count(&pool.stats().appends_sent) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .expect("both requests go out on the stream");
        let t = pool.stats();
        assert_eq!(count(&t.append_streams_opened), 1);
        assert_eq!(count(&t.lane_calls_sent), 0);
        drop(answers);
        server.abort();
    }

    #[tokio::test]
    async fn an_unanswered_lane_call_is_unreachable_after_its_ttl_and_the_next_opens_a_new_lane() {
        let (mut conn, server) = peer_with_lanes(LaneMode::Silent).await;
        let started = Instant::now();
        let answers = tokio::time::timeout(Duration::from_secs(5), one_heartbeat(&mut conn, TTL))
            .await
            .expect("an unanswered heartbeat must fail, not hang");
        let waited = started.elapsed();
        assert!(
            matches!(answers.as_slice(), [Err(RPCError::Unreachable(_))]),
            "{answers:?}"
        );
        assert!(waited >= TTL, "failed after {waited:?}, before one ttl");
        let t = conn.pool.stats();
        assert_eq!(count(&t.lane_stalls), 1);
        assert_eq!(count(&t.lanes_opened), 1);
        let _ = one_heartbeat(&mut conn, TTL).await;
        let t = conn.pool.stats();
        assert_eq!(
            count(&t.lanes_opened),
            2,
            "a stalled lane is not used again"
        );
        assert_eq!(count(&t.lane_stalls), 2);
        server.abort();
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_nothing_waiting_on_the_lane() {
        let (conn, server) = peer_with_lanes(LaneMode::Silent).await;
        let req = wire::LaneRequest::ReadIndex;
        let ttl = Duration::from_secs(60);
        // The caller's own timeout drops the call long before the lane's.
        let gave_up =
            tokio::time::timeout(TTL, crate::lane::call(&conn.pool, &conn.addr, &req, ttl)).await;
        assert!(gave_up.is_err(), "a silent peer answered: {gave_up:?}");
        assert_eq!(conn.pool.lanes().waiting(&conn.addr), Some(0));
        assert_eq!(count(&conn.pool.stats().lane_stalls), 0);
        server.abort();
    }

    #[tokio::test]
    async fn a_lane_to_a_peer_that_is_not_there_fails_its_calls_as_broken_at_once() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            l.local_addr().expect("bound address")
        };
        let pool = test_pool();
        let ttl = Duration::from_secs(10);
        let started = Instant::now();
        let got =
            crate::lane::call(&pool, &addr.to_string(), &wire::LaneRequest::ReadIndex, ttl).await;
        assert!(
            matches!(got, Err(crate::lane::LaneError::Broken { .. })),
            "{got:?}"
        );
        assert!(
            started.elapsed() < ttl,
            "a lane that cannot open fails its calls at once, not after their timeout"
        );
        assert_eq!(count(&pool.stats().lane_stalls), 0);
    }

    #[tokio::test]
    async fn an_idle_stream_with_nothing_in_flight_does_not_time_out() {
        let (mut conn, server) = silent_peer().await;
        let input = Box::pin(futures::stream::pending::<AppendEntriesRequest<TypeConfig>>());
        let mut answers = conn
            .stream_append(input, RPCOption::new(TTL))
            .await
            .expect("the call is set up");
        let waited = tokio::time::timeout(TTL * 4, answers.next()).await;
        assert!(waited.is_err(), "an idle stream yielded {waited:?}");
        drop(answers);
        assert_eq!(stalls(&conn), 0);
        server.abort();
    }
}
