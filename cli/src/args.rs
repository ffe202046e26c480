//! Command-line flags (clap derive) and their validation into a [`Config`].
//!
//! This module owns the shape of the command line only: it parses, checks and
//! normalizes, and never talks to a server. Global flags are also environment variables
//! (`STOCKADE_ENDPOINTS`, `STOCKADE_TIMEOUT_MS`, `STOCKADE_OUTPUT`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Default per-request timeout, milliseconds.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest per-request timeout accepted, milliseconds.
pub const TIMEOUT_MS_MAX: u64 = 10 * 60 * 1_000;
/// Most endpoints one invocation may name.
pub const ENDPOINTS_MAX: usize = 64;
/// Default endpoint: a node started with no flags.
pub const ENDPOINT_DEFAULT: &str = "http://127.0.0.1:8080";

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  the server refused the request (printed as `error: <code>: <message>`)
  2  usage error, or no endpoint could be reached (connection error, timeout, no leader)

Examples:
  stockctl status
  stockctl --endpoints http://10.0.0.1:8080,http://10.0.0.2:8080 status --output json
  stockctl sale create --id drop-1 --sku P1 --name Phone --price 49900 --quantity 100
  stockctl reserve drop-1 ann
  stockctl bench --users 100000 --quantity 1000 --concurrency 64
  stockctl backup backup.snap
  stockctl restore backup.snap --data-dir ./restored --node-id 1";

#[derive(Parser, Debug)]
#[command(
    name = "stockctl",
    version,
    about = "Operate a Stockade cluster and act as its client: cluster status and membership, \
             backups, sales, holds, orders, waitlists, and a flash-crowd load generator.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// HTTP base addresses of cluster nodes, tried in order; the CLI fails over on
    /// connection errors and 503 (any node forwards writes to the leader).
    #[arg(
        long,
        global = true,
        env = "STOCKADE_ENDPOINTS",
        value_delimiter = ',',
        default_value = ENDPOINT_DEFAULT
    )]
    pub endpoints: Vec<String>,
    /// Per-request timeout, milliseconds (`snapshot` and `backup`: at least 180 s).
    #[arg(long = "timeout", global = true, env = "STOCKADE_TIMEOUT_MS", default_value_t = TIMEOUT_MS_DEFAULT)]
    pub timeout_ms: u64,
    /// How to print answers.
    #[arg(long, global = true, env = "STOCKADE_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Readable tables and lines.
    Table,
    /// The server's JSON (one document per command).
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every member's role, term, leader, commit/applied index and replication lag.
    Status,
    /// Initialize a new cluster on a node started with `--init never` (the node that
    /// `--endpoints` reaches first): with `--peers`, those voters; without, that node alone.
    /// Refused (exit 1, `refused`) if the node already belongs to a cluster.
    Init {
        /// The first voters, `ID=GRPC_ADDR/HTTP_ADDR,...` (must include the node itself).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
    },
    /// Add a node as a learner (it catches up before it can be promoted).
    AddLearner {
        node_id: u64,
        /// The node's gRPC (Raft) address, host:port.
        grpc_addr: String,
        /// The node's HTTP address, host:port.
        http_addr: String,
    },
    /// Make a member a voter (the voters become the current voters plus this node).
    Promote { node_id: u64 },
    /// Remove a node from the cluster (voter or learner).
    Remove {
        node_id: u64,
        /// Keep the node as a learner instead of removing it.
        #[arg(long)]
        retain: bool,
    },
    /// Hand leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Build a snapshot now on the node that answers.
    Snapshot,
    /// Compact the state machine of every member, one node at a time (or of one node):
    /// RocksDB rewrites its files without deleted versions, e.g. after a sale.
    Compact {
        /// Only this node.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Download a node's latest snapshot to FILE (a snapshot is built first).
    Backup {
        file: PathBuf,
        /// Download the existing latest snapshot without building a new one.
        #[arg(long)]
        no_snapshot: bool,
    },
    /// Offline: write a fresh node data directory from a backup file (see README).
    Restore(RestoreArgs),
    /// Sales: create, list, show, end, stats.
    #[command(subcommand)]
    Sale(SaleCommand),
    /// Reserve units of a sale for a user (a hold that expires unless checked out).
    Reserve {
        sale_id: String,
        user_id: String,
        #[arg(long, default_value_t = 1)]
        qty: u32,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// Give a hold's units back.
    Release {
        hold_id: u64,
        user_id: String,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// Turn a hold into an order.
    Checkout {
        hold_id: u64,
        user_id: String,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// Record a payment for an order (amount and currency default to the order's).
    Pay {
        order_id: u64,
        user_id: String,
        #[arg(long)]
        amount_minor: Option<u64>,
        #[arg(long)]
        currency: Option<String>,
        /// The payment provider's reference (default: derived from the request id).
        #[arg(long)]
        payment_ref: Option<String>,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// Cancel an order awaiting payment.
    Cancel {
        order_id: u64,
        user_id: String,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// A user's orders.
    Orders {
        user_id: String,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A user's holds (every state; a waitlist promotion shows up here).
    Holds {
        user_id: String,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Waitlists of sold-out sales.
    #[command(subcommand)]
    Waitlist(WaitlistCommand),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Flash-crowd load generator: many users race for a limited stock.
    Bench(BenchArgs),
}

/// The idempotency key of a mutating command.
#[derive(ClapArgs, Debug, Clone)]
pub struct RequestIdArg {
    /// Idempotency key (default: generated and printed, so the command can be retried
    /// with the same key and act at most once).
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SaleCommand {
    /// Create a sale from flags or from a JSON spec (`--file`, the API's SaleSpec).
    Create(Box<SaleCreateArgs>),
    /// List sales.
    List {
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A sale: status, counters and statistics.
    Show { sale_id: String },
    /// End a sale now.
    End { sale_id: String },
    /// A sale's statistics.
    Stats { sale_id: String },
}

#[derive(ClapArgs, Debug, Clone)]
pub struct SaleCreateArgs {
    /// A JSON file with the whole spec (the HTTP API's SaleSpec); other flags are ignored.
    #[arg(long, conflicts_with_all = ["id", "sku", "name"])]
    pub file: Option<PathBuf>,
    /// Sale id, a slug `[a-z0-9][a-z0-9-]*`.
    #[arg(long, required_unless_present = "file")]
    pub id: Option<String>,
    #[arg(long, required_unless_present = "file")]
    pub sku: Option<String>,
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long, default_value = "")]
    pub image_url: String,
    /// Sale price, minor units (cents).
    #[arg(long, default_value_t = 100)]
    pub price: u64,
    /// List price, minor units (default: the sale price).
    #[arg(long)]
    pub list_price: Option<u64>,
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    #[arg(long, default_value_t = 100)]
    pub quantity: u32,
    /// Start, ms since the epoch (default: now).
    #[arg(long)]
    pub starts_at_ms: Option<u64>,
    /// Length of the sale, seconds.
    #[arg(long, default_value_t = 3_600)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: u32,
    #[arg(long, default_value_t = 120_000)]
    pub hold_ttl_ms: u64,
    /// 0 = cash on delivery (checkout confirms at once).
    #[arg(long, default_value_t = 600_000)]
    pub payment_window_ms: u64,
}

#[derive(Subcommand, Debug)]
pub enum WaitlistCommand {
    /// Queue for units of a sold-out sale.
    Join {
        sale_id: String,
        user_id: String,
        #[arg(long, default_value_t = 1)]
        qty: u32,
        #[command(flatten)]
        req: RequestIdArg,
    },
    /// Where a user stands on a sale's waitlist.
    Show { sale_id: String, user_id: String },
}

#[derive(ClapArgs, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file (`stockctl backup`, or `GET /admin/backup`).
    pub file: PathBuf,
    /// The new node's data directory; must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new node's id (start it with the same `--node-id`).
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// The restored cluster's members, `ID=GRPC_ADDR/HTTP_ADDR,...`, exactly as the nodes
    /// will be started with `--peers`; run restore once per node with its own
    /// `--node-id` and `--data-dir`. Default: a single node on the default ports.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1=127.0.0.1:50051/127.0.0.1:8080"
    )]
    pub peers: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// Unary gRPC calls.
    Grpc,
    /// Every write (reserve, checkout, pay, release) over `PurchaseStream`, one
    /// long-lived stream per gRPC channel.
    GrpcStream,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct BenchArgs {
    /// Distinct users in the crowd.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Units on sale (for the sale the bench creates).
    #[arg(long, default_value_t = 1_000)]
    pub quantity: u32,
    /// Use this existing sale instead of creating one.
    #[arg(long)]
    pub sale: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,
    /// gRPC addresses (default: the gRPC address of each `--endpoints` node, from its status).
    #[arg(long, value_delimiter = ',')]
    pub grpc_endpoints: Vec<String>,
    /// After a hold: check out and pay.
    #[arg(long)]
    pub checkout_pay: bool,
    /// Share of users (0..=1) that are bots: they retry with new request ids, without
    /// pause, until they hold a unit or the sale is sold out.
    #[arg(long, default_value_t = 0.0)]
    pub bots: f64,
    /// Stop after this many seconds, whatever is left.
    #[arg(long, default_value_t = 60)]
    pub duration_max: u64,
    /// Stop after this many reservation attempts (default: no bound beyond users × bot retries).
    #[arg(long)]
    pub attempts_max: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Global settings, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URLs without a trailing slash, e.g. `http://127.0.0.1:8080`.
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub output: Output,
}

/// A command line that parsed but makes no sense (exit code 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("--endpoints is empty")]
    NoEndpoints,
    #[error("--endpoints names more than {ENDPOINTS_MAX} addresses")]
    TooManyEndpoints,
    #[error("--endpoints entry {0:?} is not an http:// address")]
    BadEndpoint(String),
    #[error("--timeout must be 1..={TIMEOUT_MS_MAX} ms")]
    Timeout,
    #[error("{0}")]
    Invalid(String),
}

/// Turns `host:port` or `http://host:port/` into `http://host:port`.
pub fn normalize_endpoint(raw: &str) -> Result<String, UsageError> {
    let t = raw.trim().trim_end_matches('/');
    if t.is_empty() {
        return Err(UsageError::BadEndpoint(raw.to_string()));
    }
    let url = if t.contains("://") {
        t.to_string()
    } else {
        format!("http://{t}")
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| UsageError::BadEndpoint(raw.to_string()))?;
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(UsageError::BadEndpoint(raw.to_string()));
    }
    Ok(url)
}

impl Cli {
    /// Validates the global flags.
    pub fn config(&self) -> Result<Config, UsageError> {
        let raw: Vec<&String> = self
            .endpoints
            .iter()
            .filter(|e| !e.trim().is_empty())
            .collect();
        if raw.is_empty() {
            return Err(UsageError::NoEndpoints);
        }
        if raw.len() > ENDPOINTS_MAX {
            return Err(UsageError::TooManyEndpoints);
        }
        let mut endpoints = Vec::with_capacity(raw.len());
        for e in raw {
            let n = normalize_endpoint(e)?;
            if !endpoints.contains(&n) {
                endpoints.push(n);
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MS_MAX {
            return Err(UsageError::Timeout);
        }
        Ok(Config {
            endpoints,
            timeout: Duration::from_millis(self.timeout_ms),
            output: self.output,
        })
    }
}

/// Parses `ID=GRPC_ADDR/HTTP_ADDR,...` (the node's `--peers` syntax).
pub fn parse_peers(
    items: &[String],
) -> Result<std::collections::BTreeMap<u64, (String, String)>, UsageError> {
    let mut out = std::collections::BTreeMap::new();
    for p in items.iter().filter(|p| !p.trim().is_empty()) {
        let bad =
            || UsageError::Invalid(format!("--peers entry {p:?} is not ID=GRPC_ADDR/HTTP_ADDR"));
        let (id, addrs) = p.split_once('=').ok_or_else(bad)?;
        let (grpc, http) = addrs.split_once('/').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        if id == 0 || grpc.trim().is_empty() || http.trim().is_empty() {
            return Err(bad());
        }
        if out
            .insert(id, (grpc.trim().to_string(), http.trim().to_string()))
            .is_some()
        {
            return Err(UsageError::Invalid(format!(
                "--peers lists node {id} twice"
            )));
        }
    }
    if out.is_empty() {
        return Err(UsageError::Invalid("--peers is empty".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["stockctl"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    #[test]
    fn endpoints_are_normalized_and_deduplicated() -> Result<(), Box<dyn std::error::Error>> {
        let c = cli(&[
            "--endpoints",
            "127.0.0.1:8080,http://127.0.0.1:8080/,http://h:1",
            "status",
        ])?
        .config()?;
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:8080", "http://h:1"]);
        assert_eq!(c.timeout, Duration::from_millis(TIMEOUT_MS_DEFAULT));
        assert_eq!(c.output, Output::Table);
        Ok(())
    }

    #[test]
    fn bad_globals_are_usage_errors() -> Result<(), clap::Error> {
        let bad = |args: &[&str]| cli(args).map(|c| c.config().err());
        assert_eq!(
            bad(&["--endpoints", "https://x", "status"])?,
            Some(UsageError::BadEndpoint("https://x".into()))
        );
        assert_eq!(
            bad(&["--endpoints", "http://x/path", "status"])?,
            Some(UsageError::BadEndpoint("http://x/path".into()))
        );
        assert_eq!(
            bad(&["--timeout", "0", "status"])?,
            Some(UsageError::Timeout)
        );
        assert_eq!(
            bad(&["--endpoints", ",", "status"])?,
            Some(UsageError::NoEndpoints)
        );
        Ok(())
    }

    #[test]
    fn peers_parse_like_the_node() -> Result<(), UsageError> {
        let p = parse_peers(&["1=a:1/b:2".into(), "2=c:1/d:2".into()])?;
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], ("c:1".to_string(), "d:2".to_string()));
        assert!(parse_peers(&["1=a:1".into()]).is_err());
        assert!(parse_peers(&["0=a:1/b:2".into()]).is_err());
        assert!(parse_peers(&["1=a:1/b:2".into(), "1=c:1/d:2".into()]).is_err());
        Ok(())
    }

    #[test]
    fn mutating_commands_take_a_request_id() -> Result<(), clap::Error> {
        let c = cli(&["reserve", "s", "u", "--request-id", "r-9", "--qty", "2"])?;
        match c.command {
            Command::Reserve { qty, req, .. } => {
                assert_eq!(qty, 2);
                assert_eq!(req.request_id.as_deref(), Some("r-9"));
            }
            other => panic!("parsed as {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn sale_create_needs_flags_or_a_file() {
        assert!(cli(&["sale", "create", "--id", "x"]).is_err());
        assert!(cli(&["sale", "create", "--file", "f.json"]).is_ok());
        assert!(cli(&["sale", "create", "--id", "x", "--sku", "s", "--name", "n"]).is_ok());
    }
}
