//! The Stockade node: wires the RocksDB store, openraft, the internal transport, the
//! HTTP and gRPC APIs, group commit and the ticker into one process.
//!
//! [`start`] brings a node up from a [`Config`] and returns a [`NodeHandle`] (used by
//! `main` and by in-process cluster tests); [`NodeHandle::shutdown`] stops it cleanly.
//! A crash (kill -9) at any point is safe: everything acknowledged is in the synced
//! WAL, and a restart resumes from the data directory.

pub mod batcher;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod forward;
pub mod lane;
pub mod local;
pub mod metrics;
pub mod network;
pub mod stamp;
#[cfg(test)]
mod testpeer;
pub mod ticker;
pub mod transport;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use stockade_proto::raft::raft_transport_server::RaftTransportServer;
use stockade_raft_store::{open, NodeAddr, Raft, SnapshotSlots, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::cluster::NodeCluster;
pub use crate::config::{Args, Config, InitMode};
use crate::network::{NetConfig, Network, Pool, RAFT_MESSAGE_BYTES_MAX};
use crate::stamp::Stamper;

/// A running node.
pub struct NodeHandle {
    pub id: u64,
    pub cluster: Arc<NodeCluster>,
    pub raft: Raft,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving, stops Raft and waits for every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// This node's clock skew for entries it stamps (fault injection).
    pub fn set_clock_skew_ms(&self, skew_ms: i64) {
        self.cluster.stamper.set_skew_ms(skew_ms);
    }
}

/// Why a node could not start. Each message includes its cause, which is therefore not
/// also an error `source`: `stockade` prints the whole chain (`{:#}`), and a cause in both
/// places printed twice ("cannot bind …: Address in use: Address in use").
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot open the store in {dir}: {error}")]
    Store {
        dir: String,
        error: stockade_raft_store::StoreError,
    },
    #[error("raft: {0}")]
    Raft(String),
}

/// Starts a node; returns once it listens (it may not have a leader yet).
pub async fn start(cfg: Config) -> Result<NodeHandle, StartError> {
    let http_listener =
        TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|error| StartError::Bind {
                addr: cfg.http_listen,
                error,
            })?;
    let grpc_listener =
        TcpListener::bind(cfg.grpc_listen)
            .await
            .map_err(|error| StartError::Bind {
                addr: cfg.grpc_listen,
                error,
            })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|error| StartError::Bind {
            addr: cfg.http_listen,
            error,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|error| StartError::Bind {
            addr: cfg.grpc_listen,
            error,
        })?;
    let me = NodeAddr {
        raft_addr: cfg
            .grpc_advertise
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string()),
        api_addr: cfg
            .http_advertise
            .clone()
            .unwrap_or_else(|| http_addr.to_string()),
    };

    let mut store_opts = StoreOptions::new(&cfg.data_dir);
    store_opts.snapshot_build_priority = cfg.snapshot_build_priority;
    store_opts.compaction_priority = cfg.compaction_priority;
    store_opts.apply_inline_commands_max = cfg.apply_inline_max;
    store_opts.snapshot_slots = Some(SnapshotSlots::new(cfg.node_id, cfg.snapshot_every_entries));
    let (log, sm) = open(&store_opts).map_err(|error| StartError::Store {
        dir: cfg.data_dir.display().to_string(),
        error,
    })?;
    let pool = Pool::new(NetConfig {
        connect_timeout: std::time::Duration::from_millis(cfg.raft.heartbeat_interval.max(200)),
        forward_timeout: cfg.forward_timeout,
        snapshot_timeout: std::time::Duration::from_millis(cfg.raft.install_snapshot_timeout),
    });
    let raft_config = Arc::new(cfg.raft.clone());
    let raft = Raft::new(
        cfg.node_id,
        raft_config,
        Network { pool: pool.clone() },
        log.clone(),
        sm.clone(),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let stamper = Arc::new(Stamper::new(cfg.clock_skew_ms));
    let (ptx, prx) = mpsc::channel(cfg.propose_queue_max);
    let stats = Arc::new(cluster::WriteStats::default());
    let (forwarder, forward_rx) =
        coalesce::ForwardBatcher::new(cfg.forward_batch_max, cfg.forward_inflight_max);
    let cluster = Arc::new_cyclic(|this| NodeCluster {
        id: cfg.node_id,
        raft: raft.clone(),
        sm: sm.clone(),
        log,
        pool,
        stamper: stamper.clone(),
        proposals: ptx,
        cfg: cluster::ClusterConfig {
            propose_timeout: cfg.propose_timeout,
            read_timeout: cfg.read_timeout,
            read_policy: cfg.read_policy.clone(),
            refusals_from_reads: cfg.refusals_from_reads,
        },
        stats: stats.clone(),
        me: me.clone(),
        read_gate: coalesce::ReadIndexGate::default(),
        forwarder,
        this: this.clone(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(coalesce::run_forwarder(
        Arc::downgrade(&cluster),
        forward_rx,
    )));
    tasks.push(tokio::spawn(batcher::run(
        raft.clone(),
        stamper,
        prx,
        cfg.batch.clone(),
        stats,
    )));
    tasks.push(tokio::spawn(ticker::run(
        cluster.clone(),
        shutdown_rx.clone(),
    )));

    // gRPC: the Raft transport and the public API share one port.
    let transport = transport::TransportService {
        raft: raft.clone(),
        cluster: cluster.clone(),
        snapshot_dir: sm.snapshot_dir().to_path_buf(),
        incoming: Default::default(),
        stop: shutdown_rx.clone(),
    };
    let api = stockade_api::Api::new(cluster.clone(), stockade_api::ApiLimits::default());
    let grpc_routes = api.grpc_routes().add_service(
        RaftTransportServer::new(transport)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX),
    );
    let mut stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        // With our own listener tonic's `tcp_nodelay` does not reach the accepted sockets:
        // set it here, or Nagle + delayed ACK add ~40 ms to small replies (Raft acks).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            |conn| {
                conn.inspect(|s| {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                    }
                })
            },
        );
        let served = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_routes(grpc_routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));

    let router = api.http_router();
    let mut stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(
            // Small JSON replies must not wait for Nagle + delayed ACK either.
            axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
            }),
            router,
        )
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }));

    maybe_initialize(&cfg, &raft, me).await?;
    tracing::info!(node_id = cfg.node_id, %http_addr, %grpc_addr, "stockade node listening");
    Ok(NodeHandle {
        id: cfg.node_id,
        cluster,
        raft,
        http_addr,
        grpc_addr,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Initializes the cluster when this node is the one to do it (see `--init`).
async fn maybe_initialize(cfg: &Config, raft: &Raft, me: NodeAddr) -> Result<(), StartError> {
    if cfg.init == InitMode::Never
        || raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
    {
        return Ok(());
    }
    let members: BTreeMap<u64, NodeAddr> = if cfg.peers.is_empty() {
        BTreeMap::from([(cfg.node_id, me)])
    } else {
        if cfg.peers.keys().next() != Some(&cfg.node_id) {
            return Ok(()); // the lowest id initializes
        }
        cfg.peers.clone()
    };
    raft.initialize(members)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))
}

#[cfg(test)]
mod start_error_tests {
    use super::StartError;

    /// `stockade` prints a start error with its whole chain (`{:#}`): the cause is in the
    /// message once, not once more as a `source`.
    #[test]
    fn a_start_errors_cause_is_printed_once() {
        let e = StartError::Bind {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            error: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use"),
        };
        let printed = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(printed, "cannot bind 127.0.0.1:8080: Address in use");
    }
}
