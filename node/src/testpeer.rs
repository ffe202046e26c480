//! A fake peer for the transport's unit tests: a `RaftTransport` server that never
//! answers replication and serves `ForwardStream` in one of a few scripted ways.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesResponse;
use stockade_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use stockade_proto::raft::{Envelope, SnapshotChunk};
use stockade_raft_store::{Command, Response as Answer};
use tonic::{Request, Response, Status, Streaming};

use crate::wire::{self, AnswerFrame, ForwardFrame, LaneAnswer, LaneFrame, LaneRequest};

type Frames = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

/// How the fake leader serves a forward stream.
#[derive(Clone)]
pub enum ForwardMode {
    /// Takes every frame and never answers.
    Silent,
    /// Answers each frame's commands in reverse order, one answer frame each, as node 42,
    /// with `Released { hold_id }` of the command (which must be a `Release`).
    EchoReversed,
    /// Reads one frame (counting it), then ends the stream without answering.
    CloseAfterReading(Arc<AtomicUsize>),
}

/// How the fake peer serves a lane.
#[derive(Clone, Copy)]
pub enum LaneMode {
    /// Takes every call and never answers.
    Silent,
    /// Answers every AppendEntries `Success` and every read index 7, each as it arrives.
    Answer,
}

/// Takes every AppendEntries on a stream and never answers; forwards and serves lanes as
/// its modes say.
pub struct FakePeer {
    pub forward: ForwardMode,
    pub lane: LaneMode,
}

impl FakePeer {
    /// Serves a fake peer on a free loopback port: its address and the server task.
    pub async fn spawn(
        forward: ForwardMode,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        Self::spawn_with(forward, LaneMode::Silent).await
    }

    /// As [`Self::spawn`], with lanes served as `lane` says.
    pub async fn spawn_with(
        forward: ForwardMode,
        lane: LaneMode,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(RaftTransportServer::new(FakePeer { forward, lane }))
                .serve_with_incoming(incoming)
                .await;
        });
        (addr, server)
    }
}

fn drain(mut input: Streaming<Envelope>) {
    tokio::spawn(async move { while let Some(Ok(_)) = input.next().await {} });
}

fn echo_reversed(frame: ForwardFrame) -> Vec<Result<Envelope, Status>> {
    frame
        .into_iter()
        .rev()
        .map(|(tag, cmd)| {
            let hold_id = match cmd {
                Command::Release { hold_id, .. } => hold_id,
                _ => u64::MAX,
            };
            let frame = AnswerFrame {
                served_by: 42,
                answers: vec![(tag, Ok(Answer::Released { hold_id }))],
            };
            wire::encode(&frame).map(|payload| Envelope { payload })
        })
        .collect()
}

#[tonic::async_trait]
impl RaftTransport for FakePeer {
    type StreamAppendStream = Frames;
    type ForwardStreamStream = Frames;
    type PeerLaneStream = Frames;

    async fn peer_lane(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Frames>, Status> {
        let input = req.into_inner();
        let out: Frames = match self.lane {
            LaneMode::Silent => {
                drain(input);
                Box::pin(futures::stream::pending())
            }
            LaneMode::Answer => Box::pin(
                input
                    .take_while(|m| futures::future::ready(m.is_ok()))
                    .map(|m| {
                        let (tag, req): LaneFrame<LaneRequest> = wire::decode(&m?.payload)?;
                        let answer = match req {
                            LaneRequest::Append(_) => {
                                LaneAnswer::Append(Ok(AppendEntriesResponse::Success))
                            }
                            LaneRequest::ReadIndex => LaneAnswer::ReadIndex(Ok(7)),
                        };
                        wire::encode(&(tag, answer)).map(|payload| Envelope { payload })
                    }),
            ),
        };
        Ok(Response::new(out))
    }

    async fn stream_append(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Frames>, Status> {
        drain(req.into_inner());
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
    async fn forward_stream(
        &self,
        req: Request<Streaming<Envelope>>,
    ) -> Result<Response<Frames>, Status> {
        let mut input = req.into_inner();
        let out: Frames = match self.forward.clone() {
            ForwardMode::Silent => {
                drain(input);
                Box::pin(futures::stream::pending())
            }
            ForwardMode::EchoReversed => Box::pin(
                input
                    .take_while(|m| futures::future::ready(m.is_ok()))
                    .flat_map(|m| {
                        let answers = match m.map(|env| wire::decode::<ForwardFrame>(&env.payload))
                        {
                            Ok(Ok(frame)) => echo_reversed(frame),
                            Ok(Err(s)) | Err(s) => vec![Err(s)],
                        };
                        futures::stream::iter(answers)
                    }),
            ),
            ForwardMode::CloseAfterReading(reads) => Box::pin(
                futures::stream::once(async move {
                    if let Ok(Some(_)) = input.message().await {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .filter_map(|()| futures::future::ready(None)),
            ),
        };
        Ok(Response::new(out))
    }
    async fn append_entries(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
    async fn vote(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
    async fn pre_vote(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
    async fn transfer_leader(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
    async fn install_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
    async fn forward(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake peer"))
    }
}
