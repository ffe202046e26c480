//! `stockade`: one node of a Stockade cluster. See `stockade --help`.
//!
//! ```sh
//! stockade                      # single-node cluster in ./stockade-data, HTTP :8080, gRPC :50051
//! stockade --node-id 2 --data-dir d2 --http-listen 127.0.0.1:8082 --grpc-listen 127.0.0.1:50052 \
//!   --peers 1=127.0.0.1:50051/127.0.0.1:8080,2=127.0.0.1:50052/127.0.0.1:8082,3=127.0.0.1:50053/127.0.0.1:8083
//! ```

use clap::Parser;
use stockade_node::config::LogFormat;
use stockade_node::{start, Args};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the request path allocates and frees many small
/// buffers across threads (HTTP bodies, bincode, RocksDB batches); see
/// docs/benchmarks.md for the before/after.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let cfg = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stockade: {e}");
            std::process::exit(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cfg.worker_threads {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stockade: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("stockade: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cfg: stockade_node::Config) -> anyhow::Result<()> {
    let data_dir = cfg.data_dir.clone();
    let node = start(cfg).await?;
    println!(
        "stockade node {} listening: HTTP http://{} (API /v1, admin /admin, /metrics), gRPC {}; data in {}",
        node.id,
        node.http_addr,
        node.grpc_addr,
        data_dir.display()
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
