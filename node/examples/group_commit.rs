//! Measures group commit: the same reservation load against an in-process three-node
//! cluster (real tonic transport on loopback, RocksDB with fsync before acknowledge),
//! once with one command per log entry and once batched. Prints throughput and latency.
//! Figures only; nothing is asserted.
//!
//! ```sh
//! cargo run --release -p stockade-node --example group_commit -- [CLIENTS] [RESERVATIONS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stockade_api::Cluster;
use stockade_node::NodeHandle;
use stockade_raft_store::types::{Product, SaleSpec};
use stockade_raft_store::{Command, Response};

async fn cluster(dir: &std::path::Path, batch_max: usize, inflight: usize) -> Vec<NodeHandle> {
    let sub = dir.join(format!("batch-{batch_max}-{inflight}"));
    let flags = [
        format!("--batch-max={batch_max}"),
        format!("--inflight-entries-max={inflight}"),
        "--snapshot-every-entries=1000000".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
    stockade_node::local::start_cluster(3, &sub, &flags)
        .await
        .expect("cluster")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let total: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::TempDir::new().expect("temp dir");
    println!(
        "{clients} concurrent clients, {total} reservations, 3 nodes, one sale, limit 1 per user"
    );
    println!(
        "{:<26} {:>12} {:>10} {:>10} {:>10} {:>16}",
        "mode", "reserves/s", "p50 ms", "p99 ms", "max ms", "cmds per entry"
    );
    for (batch_max, inflight) in [(1usize, 64usize), (256, 64), (256, 16), (256, 4), (256, 1)] {
        let nodes = cluster(dir.path(), batch_max, inflight).await;
        let leader = loop {
            if let Some(h) = nodes.iter().find(|h| h.raft.is_leader()) {
                break h.cluster.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let spec = SaleSpec {
            id: "bench".into(),
            product: Product {
                sku: "B".into(),
                name: "Bench".into(),
                ..Product::default()
            },
            list_price_minor: 1_000,
            sale_price_minor: 500,
            currency: "EUR".into(),
            quantity: total as u32,
            starts_at_ms: now,
            ends_at_ms: now + 3_600_000,
            per_user_limit: 1,
            hold_ttl_ms: 600_000,
            payment_window_ms: 600_000,
        };
        let created = leader
            .propose(Command::CreateSale(Box::new(spec)))
            .await
            .expect("create");
        assert_eq!(
            created.value,
            Response::SaleCreated {
                sale_id: "bench".into()
            }
        );
        let entries_before = leader.metrics_text();
        let started = Instant::now();
        let per_client = total / clients;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let cl = Arc::clone(&leader);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let cmd = Command::Reserve {
                        sale_id: "bench".into(),
                        user_id: format!("u{c}-{i}"),
                        qty: 1,
                        request_id: format!("r{c}-{i}"),
                    };
                    let t = Instant::now();
                    let r = cl.propose(cmd).await.expect("propose");
                    assert!(matches!(r.value, Response::Held(_)), "{:?}", r.value);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("client"));
        }
        let elapsed = started.elapsed();
        lat.sort();
        let entries = counter(
            &leader.metrics_text(),
            "stockade_log_entries_proposed_total",
        ) - counter(&entries_before, "stockade_log_entries_proposed_total");
        println!(
            "{:<26} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>16.1}",
            format!("batch {batch_max}, in flight {inflight}"),
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            lat.len() as f64 / entries.max(1) as f64
        );
        for n in nodes {
            n.shutdown().await;
        }
    }
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
