//! The Raft network, client side: openraft's `RaftNetworkV2` over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address, shared by every connection
//! openraft opens to that peer (replication, heartbeats, snapshots) and by leader
//! forwarding. Every call has a deadline: openraft's hard TTL for Raft RPCs, the
//! configured forward timeout otherwise. Snapshots stream in `SNAPSHOT_CHUNK_BYTES`
//! chunks from the snapshot file, never as one message.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
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

/// Channels to peers, by Raft address.
#[derive(Clone)]
pub struct Pool {
    cfg: NetConfig,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl Pool {
    pub fn new(cfg: NetConfig) -> Self {
        Pool {
            cfg,
            channels: Arc::default(),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
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
        // The remote answers Result<T, String>: an Err is a fault on the peer (shutting
        // down, storage error); openraft treats it as a network failure and retries.
        let out: Result<Resp, String> =
            wire::decode(&resp.into_inner().payload).map_err(|s| status_to_rpc(self.target, s))?;
        out.map_err(|e| RPCError::Network(NetworkError::new(&PeerError(self.target, e))))
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = std::fs::File;

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
