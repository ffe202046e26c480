//! Local clusters of in-process nodes on loopback ports, for tests, examples and
//! benchmarks: every node is a real `stockade` node (RocksDB, tonic transport, APIs),
//! just in one process.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use stockade_raft_store::NodeAddr;

use crate::{start, Args, Config, NodeHandle, StartError};

/// The config of node `id` with its data under `dir/n<id>`, listening on the given
/// addresses (`127.0.0.1:0` for any port), not initializing anything itself, with fast
/// Raft timings for loopback, plus `extra` flags.
pub fn node_config(
    id: u64,
    dir: &Path,
    http: &str,
    grpc: &str,
    extra: &[&str],
) -> Result<Config, String> {
    let mut a = vec![
        "stockade".to_string(),
        format!("--node-id={id}"),
        format!("--data-dir={}", dir.join(format!("n{id}")).display()),
        format!("--http-listen={http}"),
        format!("--grpc-listen={grpc}"),
        "--init=never".into(),
        "--heartbeat-ms=50".into(),
        "--election-min-ms=200".into(),
        "--election-max-ms=400".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    Args::try_parse_from(a)
        .map_err(|e| e.to_string())?
        .validate()
        .map_err(|e| e.to_string())
}

/// The address a node advertises.
pub fn addr_of(h: &NodeHandle) -> NodeAddr {
    NodeAddr {
        raft_addr: h.grpc_addr.to_string(),
        api_addr: h.http_addr.to_string(),
    }
}

/// Starts nodes `1..=n` on ephemeral ports, initializes them as one cluster and waits
/// for a leader.
pub async fn start_cluster(
    n: u64,
    dir: &Path,
    extra: &[&str],
) -> Result<Vec<NodeHandle>, StartError> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        let cfg =
            node_config(id, dir, "127.0.0.1:0", "127.0.0.1:0", extra).map_err(StartError::Raft)?;
        nodes.push(start(cfg).await?);
    }
    let members: BTreeMap<u64, NodeAddr> = nodes.iter().map(|h| (h.id, addr_of(h))).collect();
    if let Some(first) = nodes.first() {
        first
            .raft
            .initialize(members)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
    }
    wait_leader(&nodes, Duration::from_secs(10))
        .await
        .ok_or_else(|| StartError::Raft("no leader elected".into()))?;
    Ok(nodes)
}

/// The id of a node that is leader, waiting up to `timeout` for one.
pub async fn wait_leader(nodes: &[NodeHandle], timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(h) = nodes.iter().find(|h| h.raft.is_leader()) {
            return Some(h.id);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
