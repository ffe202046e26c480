//! Stockade: three nodes, durable (fsync before acknowledge), clients spread over all of
//! them, over HTTP or gRPC. The load goes through stockctl's own target.
//!
//! Also one node alone ([`SINGLE_NODE`]), over the gRPC stream: a reference row, labelled
//! not replicated and not failover-safe like Redis. Beside the three-node rows it tells
//! what replication costs when the three replicas share this machine's two cores: the
//! same binary, the same requests, one replica's work instead of three
//! (docs/benchmarks.md, "Thirty-fourth session").

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stockade_api::dto::{ClusterStatusDto, ProductDto, SaleDto, SaleIdDto, SaleSpecDto};
use stockade_cli::bench::{grpc_clients, PurchaseLanes, StockadeTarget, Transport};
use stockade_cli::client::{seg, Client};

use crate::sys::{port_free, Proc};
use crate::system::{Counters, System};

/// Nodes in the cluster.
pub const NODES: usize = 3;
/// Nodes of the reference row: one, not replicated.
pub const SINGLE_NODE: usize = 1;
/// Runtime worker threads of each node: the three nodes share this machine's cores, and
/// one worker each used 12–26% less node CPU per request than one per core, in every
/// measured pair (`stockade --worker-threads`; docs/benchmarks.md, "Twenty-third
/// session"). A node with a machine of its own keeps the default (one per core). The
/// default of `bench-peers --node-worker-threads`.
pub const NODE_WORKER_THREADS: u64 = 1;
/// Timeout of one request from the harness.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to elect a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while waiting for it.
pub const READY_POLL: Duration = Duration::from_millis(200);
/// Payment window of the bench's sales: long, so orders wait for payment, not time out.
pub const PAYMENT_WINDOW_MS: u64 = 10 * 60 * 1_000;

pub struct Cluster {
    /// One per node; their count is the cluster's size.
    procs: Vec<Proc>,
    http: Vec<String>,
    grpc: Vec<String>,
    client: Arc<Client>,
}

impl Cluster {
    /// Starts `nodes` nodes with HTTP on `port..port+nodes` and gRPC on
    /// `port+nodes..port+2*nodes`, each with `workers` runtime worker threads; their data
    /// and logs go to `dir`, named `<name>-<node id>`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        nodes: usize,
        port: u16,
        workers: u64,
    ) -> Result<Cluster> {
        let n = u16::try_from(nodes).context("nodes")?;
        let http: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", port + i)).collect();
        let grpc: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", port + n + i))
            .collect();
        for p in port..port + 2 * n {
            port_free(p)?;
        }
        let peers = (0..nodes)
            .map(|i| format!("{}={}/{}", i + 1, grpc[i], http[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for i in 0..nodes {
            let data = dir.join(format!("{name}-{}", i + 1));
            std::fs::create_dir_all(&data)?;
            let mut cmd = Command::new(bin);
            cmd.arg("--node-id")
                .arg((i + 1).to_string())
                .arg("--data-dir")
                .arg(&data)
                .arg("--http-listen")
                .arg(&http[i])
                .arg("--grpc-listen")
                .arg(&grpc[i])
                .arg("--peers")
                .arg(&peers)
                .arg("--init")
                .arg("auto")
                .arg("--worker-threads")
                .arg(workers.to_string());
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            procs.push(Proc::spawn(
                &format!("{name} node {}", i + 1),
                cmd,
                &dir.join(format!("{name}-{}.log", i + 1)),
            )?);
        }
        let client = Arc::new(Client::new(
            http.iter().map(|h| format!("http://{h}")).collect(),
            REQUEST_TIMEOUT,
        )?);
        Ok(Cluster {
            procs,
            http,
            grpc,
            client,
        })
    }

    /// Waits until every node knows the same leader.
    pub async fn ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            for p in &mut self.procs {
                p.check_alive()?;
            }
            let nodes = self.procs.len();
            let mut leaders = Vec::new();
            for i in 0..nodes {
                if let Ok(st) = self
                    .client
                    .pinned(i)?
                    .get::<ClusterStatusDto>("/admin/status")
                    .await
                {
                    leaders.push(st.value.leader_id);
                }
            }
            if leaders.len() == nodes
                && leaders[0].is_some()
                && leaders.iter().all(|l| *l == leaders[0])
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("stockade: no leader after {READY_TIMEOUT:?} ({leaders:?})");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

/// How the load generator talks to Stockade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    /// Unary gRPC calls.
    Grpc,
    /// Every write over `PurchaseStream` lanes (one long-lived stream per channel).
    GrpcStream,
}

/// A Stockade row's name in the table: its size and protocol; one node is labelled like
/// the other single-process peers.
pub fn system_name(nodes: usize, proto: Proto) -> String {
    let proto = match proto {
        Proto::Http => "HTTP",
        Proto::Grpc => "gRPC",
        Proto::GrpcStream => "gRPC stream",
    };
    match nodes {
        1 => format!("Stockade 1 node, {proto} (not replicated, not failover-safe)"),
        n => format!("Stockade {n} nodes, {proto}"),
    }
}

/// Stockade over one protocol.
pub struct Stockade {
    pub cluster: Arc<Cluster>,
    pub proto: Proto,
}

impl System for Stockade {
    type T = StockadeTarget;

    fn name(&self) -> String {
        system_name(self.cluster.procs.len(), self.proto)
    }

    async fn prepare(
        &self,
        sale: &str,
        units: u64,
        ttl_ms: u64,
        clients: usize,
    ) -> Result<Arc<StockadeTarget>> {
        let now = stockade_cli::output::now_ms();
        let spec = SaleSpecDto {
            id: sale.to_string(),
            product: ProductDto {
                sku: "BENCH".into(),
                name: "Bench unit".into(),
                description: String::new(),
                image_url: String::new(),
            },
            list_price_minor: 1_000,
            sale_price_minor: 500,
            currency: "EUR".into(),
            quantity: u32::try_from(units).context("units")?,
            starts_at_ms: now.saturating_sub(1_000),
            ends_at_ms: now + 3_600_000,
            per_user_limit: 1,
            hold_ttl_ms: ttl_ms,
            payment_window_ms: PAYMENT_WINDOW_MS,
        };
        let c = &self.cluster.client;
        let id = c
            .post::<_, SaleIdDto>("/v1/sales", &spec)
            .await?
            .value
            .sale_id;
        let transport = match self.proto {
            Proto::Http => Transport::Http(c.clone()),
            Proto::Grpc => {
                Transport::Grpc(grpc_clients(&self.cluster.grpc, clients, REQUEST_TIMEOUT)?)
            }
            Proto::GrpcStream => {
                let chans = grpc_clients(&self.cluster.grpc, clients, REQUEST_TIMEOUT)?;
                Transport::GrpcStream(Arc::new(PurchaseLanes::open(&chans)))
            }
        };
        Ok(Arc::new(StockadeTarget {
            transport,
            sale: id,
        }))
    }

    async fn reap(&self, _t: &StockadeTarget) -> Result<u64> {
        Ok(0)
    }

    async fn counters(&self, t: &StockadeTarget) -> Result<Counters> {
        let s: SaleDto = self
            .cluster
            .client
            .get(&format!("/v1/sales/{}", seg(&t.sale)))
            .await?
            .value;
        let c = &s.counters;
        Ok(Counters {
            quantity: i64::from(s.spec.quantity),
            available: i64::from(c.available),
            held: i64::from(c.held),
            ordered: i64::from(c.awaiting_payment) + i64::from(c.sold),
        })
    }

    async fn fsyncs(&self) -> Result<Option<u64>> {
        let mut sum = 0;
        for h in &self.cluster.http {
            let text = crate::http_text(&format!("http://{h}/metrics")).await?;
            sum += crate::metric(&text, "stockade_wal_syncs_total")
                .with_context(|| format!("{h}: no stockade_wal_syncs_total"))?
                as u64;
        }
        Ok(Some(sum))
    }

    fn pids(&self) -> Vec<u32> {
        self.cluster.procs.iter().map(Proc::pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_named_by_size_and_protocol() {
        assert_eq!(
            system_name(NODES, Proto::GrpcStream),
            "Stockade 3 nodes, gRPC stream"
        );
        assert_eq!(system_name(NODES, Proto::Http), "Stockade 3 nodes, HTTP");
        let single = system_name(SINGLE_NODE, Proto::GrpcStream);
        assert_eq!(
            single,
            "Stockade 1 node, gRPC stream (not replicated, not failover-safe)"
        );
        // `--only "3 nodes"` keeps the replicated rows and leaves the reference row out.
        assert!(!single.contains("3 nodes"));
    }
}
