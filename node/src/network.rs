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
//! `Conn::stream_append`). Heartbeats use the same path as a one-request
//! stream. Not compatible with a node that lacks `StreamAppend` (all nodes of a cluster
//! run the same version of this internal protocol).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
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
}

/// Channels to peers, by Raft address.
#[derive(Clone)]
pub struct Pool {
    cfg: NetConfig,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    stats: Arc<TransportStats>,
}

impl Pool {
    pub fn new(cfg: NetConfig) -> Self {
        Pool {
            cfg,
            channels: Arc::default(),
            stats: Arc::default(),
        }
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
    use crate::testpeer::{FakePeer, ForwardMode};

    async fn silent_peer() -> (Conn, tokio::task::JoinHandle<()>) {
        // A follower that takes every AppendEntries and never answers.
        let (addr, server) = FakePeer::spawn(ForwardMode::Silent).await;
        let pool = Pool::new(NetConfig {
            connect_timeout: Duration::from_secs(1),
            forward_timeout: Duration::from_secs(1),
            snapshot_timeout: Duration::from_secs(1),
        });
        let conn = Conn {
            target: 9,
            addr: addr.to_string(),
            pool,
        };
        (conn, server)
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
