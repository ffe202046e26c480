//! The Raft network, server side: the `RaftTransport` gRPC service that hands peers'
//! messages to openraft and serves forwarded requests.
//!
//! Every answer is `Result<T, String>` in bincode: an `Err` is a fault of this node
//! (shutting down, storage), which the sender treats as a network failure.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use serde::Serialize;
use stockade_proto::raft::raft_transport_server::RaftTransport;
use stockade_proto::raft::{Envelope, SnapshotChunk};
use stockade_raft_store::{Raft, TypeConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::NodeCluster;
use crate::network;
use crate::wire;

pub struct TransportService {
    pub raft: Raft,
    pub cluster: Arc<NodeCluster>,
    pub snapshot_dir: std::path::PathBuf,
    pub incoming: AtomicU64,
    /// Turns true when the node shuts down: forward streams end then (see
    /// `crate::forward::serve`).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

fn answer<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<Envelope>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    Ok(Response::new(Envelope {
        payload: wire::encode(&r)?,
    }))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    type StreamAppendStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;
    type ForwardStreamStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;
    type PeerLaneStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

    async fn append_entries(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.cluster
            .pool
            .stats()
            .appends_received_unary
            .fetch_add(1, Ordering::Relaxed);
        let rpc = wire::decode(&req.into_inner().payload)?;
        answer(self.raft.append_entries(rpc).await)
    }

    /// The follower end of streamed replication (see `crate::network`): requests go to
    /// `Raft::stream_append`, which queues at most 64 for the Raft core and answers in
    /// order. A request that does not decode ends the input; the answers to the ones
    /// before it still go out, then the stream fails `InvalidArgument` naming it.
    async fn stream_append(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let bad: Arc<Mutex<Option<Status>>> = Arc::default();
        let bad_in = bad.clone();
        let cluster = self.cluster.clone();
        let requests = req.into_inner().scan((), move |_, item| {
            let next = match item {
                Ok(env) => match wire::decode::<AppendEntriesRequest<TypeConfig>>(&env.payload) {
                    Ok(rpc) => {
                        cluster
                            .pool
                            .stats()
                            .appends_received_streamed
                            .fetch_add(1, Ordering::Relaxed);
                        Some(rpc)
                    }
                    Err(s) => {
                        *bad_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                        None
                    }
                },
                // The leader went away or reset the stream: nothing more to append.
                Err(_) => None,
            };
            futures::future::ready(next)
        });
        let answers = self.raft.stream_append(requests).map(|r| {
            let r: Result<StreamAppendResult<TypeConfig>, String> = r.map_err(|f| f.to_string());
            wire::encode(&r).map(|payload| Envelope { payload })
        });
        let failure =
            futures::stream::once(
                async move { bad.lock().unwrap_or_else(|p| p.into_inner()).take() },
            )
            .filter_map(|s| futures::future::ready(s.map(Err)));
        Ok(Response::new(Box::pin(answers.chain(failure))))
    }

    async fn vote(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = wire::decode(&req.into_inner().payload)?;
        answer(self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = wire::decode(&req.into_inner().payload)?;
        answer(self.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let rpc = wire::decode(&req.into_inner().payload)?;
        answer(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Envelope>, Status> {
        let n = self.incoming.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshot_dir.join(format!("incoming-{n}.part"));
        let received = network::receive_snapshot(req.into_inner(), &path).await;
        let result = match received {
            Ok((vote, meta)) => match std::fs::File::open(&path) {
                Ok(file) => {
                    let snapshot = openraft::alias::SnapshotOf::<
                        stockade_raft_store::TypeConfig,
                        std::fs::File,
                    > {
                        meta,
                        snapshot: file,
                    };
                    self.raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(s) => Err(s.message().to_string()),
        };
        // The store kept its own verified copy; the received file is no longer needed.
        let _ = std::fs::remove_file(&path);
        answer(result)
    }

    /// A follower's forward stream (see `crate::forward`).
    async fn forward_stream(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        Ok(Response::new(crate::forward::serve(
            self.cluster.clone(),
            req.into_inner(),
            self.stop.clone(),
        )))
    }

    /// A peer's lane (see `crate::lane`).
    async fn peer_lane(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::PeerLaneStream>, Status> {
        Ok(Response::new(crate::lane::serve(
            self.cluster.clone(),
            req.into_inner(),
            self.stop.clone(),
        )))
    }

    async fn forward(&self, req: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let fwd: wire::ForwardRequest = wire::decode(&req.into_inner().payload)?;
        let out = self.cluster.handle_forward(fwd).await;
        Ok(Response::new(Envelope {
            payload: wire::encode(&out)?,
        }))
    }
}
