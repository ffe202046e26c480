//! One function per command: build the request, send it through [`Client`], print.
//!
//! Commands own their wording and output; they do not retry (the client does) and never
//! exit the process (main maps [`CliError`] to an exit code).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use reqwest::Method;
use serde::Serialize;
use stockade_api::dto::*;
use tokio::io::AsyncWriteExt;

use crate::args::{
    Cli, Command, Config, Output, RequestIdArg, SaleCommand, SaleCreateArgs, UsageError,
    WaitlistCommand,
};
use crate::client::{seg, Client, ClientError};
use crate::output::{kv, new_request_id, now_ms, opt, table};

/// Why a command failed; [`CliError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    // No `#[source]` on these: the message already includes the inner one, and main
    // prints the whole chain on one line.
    #[error("usage: {0}")]
    Usage(UsageError),
    #[error("{0}")]
    Client(ClientError),
    #[error("restore: {0}")]
    Restore(crate::restore::RestoreError),
    #[error("bench: {0}")]
    Bench(String),
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// 0 ok, 1 refused by the server, 2 usage or connection error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(e) => e.exit_code(),
            CliError::Restore(_) | CliError::Usage(_) | CliError::Local(_) => 2,
            CliError::Bench(_) => 1,
        }
    }
}

impl From<UsageError> for CliError {
    fn from(e: UsageError) -> Self {
        CliError::Usage(e)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

impl From<crate::restore::RestoreError> for CliError {
    fn from(e: crate::restore::RestoreError) -> Self {
        CliError::Restore(e)
    }
}

type Res = Result<(), CliError>;

/// `snapshot` and `backup` wait for a snapshot build (the node waits up to 120 s for one,
/// and a build runs at the lowest CPU priority, so under load it takes longer than an
/// idle node's seconds) and `backup` downloads the whole file: they get at least this
/// long per request, whatever `--timeout` says (a shorter client timeout only gave up
/// while the build went on). `compact` waits for a rewrite of a node's whole state at
/// the compaction threads' priority, so it gets as long per node.
pub const SNAPSHOT_REQUEST_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_secs(180);

/// The per-request timeout for `command`: `--timeout`, raised for snapshots and backups.
fn request_timeout(command: &Command, timeout: std::time::Duration) -> std::time::Duration {
    match command {
        Command::Snapshot | Command::Backup { .. } | Command::Compact { .. } => {
            timeout.max(SNAPSHOT_REQUEST_TIMEOUT_MIN)
        }
        _ => timeout,
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Res {
    let cfg = cli.config()?;
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "stockctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Restore(a) => {
            let r = crate::restore::restore(&a).await?;
            match cfg.output {
                Output::Json => println!("{}", crate::output::json(&r)),
                Output::Table => {
                    print!(
                        "{}",
                        kv(&[
                            ("restored into", r.data_dir.clone()),
                            ("node", r.node_id.to_string()),
                            ("last log index", r.last_log_index.to_string()),
                            ("last log term", r.last_log_term.to_string()),
                            ("voters", format!("{:?}", r.voters)),
                            ("state records", r.state_records.to_string()),
                        ])
                    );
                    println!(
                        "start the node with --node-id {} --data-dir {} and the same --peers",
                        r.node_id, r.data_dir
                    );
                }
            }
            Ok(())
        }
        Command::Bench(a) => {
            let client = Arc::new(Client::new(cfg.endpoints.clone(), cfg.timeout)?);
            crate::bench::run(client, &cfg, a).await
        }
        other => {
            let client = Client::new(cfg.endpoints.clone(), request_timeout(&other, cfg.timeout))?;
            dispatch(&client, &cfg, other).await
        }
    }
}

fn print_json<T: Serialize + std::fmt::Debug>(v: &T) {
    println!("{}", crate::output::json(v));
}

/// The request id to use: the given one, or a fresh one announced on stderr.
fn request_id(r: &RequestIdArg) -> String {
    match &r.request_id {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id("cli");
            eprintln!("request-id: {id}");
            id
        }
    }
}

async fn dispatch(c: &Client, cfg: &Config, cmd: Command) -> Res {
    let out = cfg.output;
    match cmd {
        Command::Status => status(c, cfg).await,
        Command::Init { peers } => init(c, out, &peers).await,
        Command::AddLearner {
            node_id,
            grpc_addr,
            http_addr,
        } => {
            let body = AddLearnerBody {
                node_id,
                raft_addr: grpc_addr,
                api_addr: http_addr,
            };
            let st: ClusterStatusDto = c.post("/admin/learners", &body).await?.value;
            print_status_brief(out, &st, &format!("node {node_id} added as a learner"));
            Ok(())
        }
        Command::Promote { node_id } => {
            let st: ClusterStatusDto = c.get("/admin/status").await?.value;
            if !st.members.iter().any(|m| m.node_id == node_id) {
                return Err(CliError::Local(format!(
                    "node {node_id} is not a member: add it first (stockctl add-learner)"
                )));
            }
            let mut voters: BTreeSet<u64> = st
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.node_id)
                .collect();
            voters.insert(node_id);
            change_membership(c, out, voters, false, &format!("node {node_id} is a voter")).await
        }
        Command::Remove { node_id, retain } => {
            let st: ClusterStatusDto = c.get("/admin/status").await?.value;
            let mut voters: BTreeSet<u64> = st
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.node_id)
                .collect();
            if !st.members.iter().any(|m| m.node_id == node_id) {
                return Err(CliError::Local(format!("node {node_id} is not a member")));
            }
            voters.remove(&node_id);
            let what = if retain {
                format!("node {node_id} is now a learner")
            } else {
                format!("node {node_id} removed")
            };
            change_membership(c, out, voters, retain, &what).await
        }
        Command::TransferLeader { node_id } => {
            let st: ClusterStatusDto = c
                .post("/admin/leader", &TransferLeaderBody { to: node_id })
                .await?
                .value;
            print_status_brief(out, &st, &format!("leadership handed to node {node_id}"));
            Ok(())
        }
        Command::Snapshot => {
            let a = c
                .json::<(), ClusterStatusDto>(Method::POST, "/admin/snapshot", None)
                .await?;
            let msg = format!(
                "snapshot built on node {} at index {}",
                a.value.node_id,
                opt(a.value.snapshot_index)
            );
            print_status_brief(out, &a.value, &msg);
            Ok(())
        }
        Command::Backup { file, no_snapshot } => backup(c, out, &file, no_snapshot).await,
        Command::Compact { node } => compact(c, cfg, node).await,
        Command::Sale(s) => sale(c, out, s).await,
        Command::Reserve {
            sale_id,
            user_id,
            qty,
            req,
        } => {
            let body = ReserveBody {
                user_id,
                qty,
                request_id: request_id(&req),
                // The client retries a send whose outcome is unknown with this body.
                first_attempt: false,
            };
            let g: HoldGrantDto = c
                .post(&format!("/v1/sales/{}/holds", seg(&sale_id)), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&g),
                Output::Table => println!(
                    "hold {}: {} unit(s) of {} for {}, expires at {} ms",
                    g.hold_id, g.qty, g.sale_id, body.user_id, g.expires_at_ms
                ),
            }
            Ok(())
        }
        Command::Release {
            hold_id,
            user_id,
            req,
        } => {
            let body = UserRequestBody {
                user_id,
                request_id: request_id(&req),
            };
            let r: HoldIdDto = c
                .post(&format!("/v1/holds/{hold_id}/release"), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!("hold {} released", r.hold_id),
            }
            Ok(())
        }
        Command::Checkout {
            hold_id,
            user_id,
            req,
        } => {
            let body = UserRequestBody {
                user_id,
                request_id: request_id(&req),
            };
            let o: OrderInfoDto = c
                .post(&format!("/v1/holds/{hold_id}/checkout"), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&o),
                Output::Table => println!(
                    "order {}: {} unit(s) of {}, {} {} minor units, {}{}",
                    o.order_id,
                    o.qty,
                    o.sale_id,
                    o.amount_minor,
                    o.currency,
                    o.status,
                    o.pay_by_ms
                        .map(|t| format!(", pay by {t} ms"))
                        .unwrap_or_default()
                ),
            }
            Ok(())
        }
        Command::Pay {
            order_id,
            user_id,
            amount_minor,
            currency,
            payment_ref,
            req,
        } => {
            let (amount_minor, currency) = match (amount_minor, currency) {
                (Some(a), Some(cur)) => (a, cur),
                (a, cur) => {
                    let o: OrderDto = c.get(&format!("/v1/orders/{order_id}")).await?.value;
                    (a.unwrap_or(o.amount_minor), cur.unwrap_or(o.currency))
                }
            };
            let request_id = request_id(&req);
            let body = PaymentBody {
                user_id,
                amount_minor,
                currency,
                payment_ref: payment_ref.unwrap_or_else(|| format!("pay-{request_id}")),
                request_id,
            };
            let r: OrderIdDto = c
                .post(&format!("/v1/orders/{order_id}/payment"), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!(
                    "order {} paid: {} {} (ref {})",
                    r.order_id, body.amount_minor, body.currency, body.payment_ref
                ),
            }
            Ok(())
        }
        Command::Cancel {
            order_id,
            user_id,
            req,
        } => {
            let body = UserRequestBody {
                user_id,
                request_id: request_id(&req),
            };
            let r: OrderIdDto = c
                .post(&format!("/v1/orders/{order_id}/cancel"), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!("order {} cancelled", r.order_id),
            }
            Ok(())
        }
        Command::Orders { user_id, limit } => {
            let mut path = format!("/v1/users/{}/orders", seg(&user_id));
            if let Some(l) = limit {
                path.push_str(&format!("?limit={l}"));
            }
            let l: OrderListDto = c.get(&path).await?.value;
            match out {
                Output::Json => print_json(&l),
                Output::Table => print!("{}", orders_table(&l.orders)),
            }
            Ok(())
        }
        Command::Holds { user_id, limit } => {
            let mut path = format!("/v1/users/{}/holds", seg(&user_id));
            if let Some(l) = limit {
                path.push_str(&format!("?limit={l}"));
            }
            let l: HoldListDto = c.get(&path).await?.value;
            match out {
                Output::Json => print_json(&l),
                Output::Table => print!("{}", holds_table(&l.holds)),
            }
            Ok(())
        }
        Command::Waitlist(w) => waitlist(c, out, w).await,
        Command::Completions { .. } | Command::Restore(_) | Command::Bench(_) => Ok(()),
    }
}

async fn change_membership(
    c: &Client,
    out: Output,
    voters: BTreeSet<u64>,
    retain: bool,
    what: &str,
) -> Res {
    if voters.is_empty() {
        return Err(CliError::Local(
            "that would leave the cluster without voters".into(),
        ));
    }
    let body = MembershipBody {
        voters: voters.into_iter().collect(),
        retain,
    };
    let st: ClusterStatusDto = c.post("/admin/membership", &body).await?.value;
    print_status_brief(out, &st, what);
    Ok(())
}

fn print_status_brief(out: Output, st: &ClusterStatusDto, what: &str) {
    match out {
        Output::Json => print_json(st),
        Output::Table => {
            println!("{what}");
            print!("{}", members_table(st));
        }
    }
}

/// The members of one node's status: id, voter or learner, addresses.
pub fn members_table(st: &ClusterStatusDto) -> String {
    let rows: Vec<Vec<String>> = st
        .members
        .iter()
        .map(|m| {
            vec![
                m.node_id.to_string(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                m.api_addr.clone(),
                m.raft_addr.clone(),
            ]
        })
        .collect();
    table(&["NODE", "MEMBERSHIP", "HTTP", "GRPC"], &rows)
}

/// One member as `status` reports it: the member, and its own view if it answered.
#[derive(Serialize, Debug, Clone)]
pub struct NodeReport {
    pub node_id: u64,
    pub voter: bool,
    pub api_addr: String,
    pub raft_addr: String,
    /// Entries behind the leader (from the leader's replication state).
    pub lag: Option<u64>,
    pub status: Option<ClusterStatusDto>,
    pub error: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct StatusReport {
    pub leader_id: Option<u64>,
    pub nodes: Vec<NodeReport>,
}

/// Builds the report from the members list and each member's own answer.
pub fn status_report(
    view: &ClusterStatusDto,
    answers: Vec<Result<ClusterStatusDto, String>>,
) -> StatusReport {
    let leader_status = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .find(|s| s.role == "leader")
        .or(if view.role == "leader" {
            Some(view)
        } else {
            None
        })
        .cloned();
    let leader_id = leader_status.as_ref().map(|s| s.node_id).or(view.leader_id);
    let nodes = view
        .members
        .iter()
        .zip(answers)
        .map(|(m, a)| {
            let lag = leader_status.as_ref().and_then(|l| {
                if l.node_id == m.node_id {
                    Some(0)
                } else {
                    l.replication
                        .iter()
                        .find(|r| r.node_id == m.node_id)
                        .map(|r| r.lag)
                }
            });
            let (status, error) = match a {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            NodeReport {
                node_id: m.node_id,
                voter: m.voter,
                api_addr: m.api_addr.clone(),
                raft_addr: m.raft_addr.clone(),
                lag,
                status,
                error,
            }
        })
        .collect();
    StatusReport { leader_id, nodes }
}

/// The `status` table.
pub fn status_table(r: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| match &n.status {
            Some(s) => vec![
                n.node_id.to_string(),
                s.role.clone(),
                if n.voter { "voter" } else { "learner" }.to_string(),
                s.term.to_string(),
                opt(s.leader_id),
                format!("{}/{}", s.commit_index, s.applied_index),
                opt(n.lag),
                n.api_addr.clone(),
            ],
            None => vec![
                n.node_id.to_string(),
                "unreachable".to_string(),
                if n.voter { "voter" } else { "learner" }.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                opt(n.lag),
                n.api_addr.clone(),
            ],
        })
        .collect();
    table(
        &[
            "NODE",
            "ROLE",
            "MEMBERSHIP",
            "TERM",
            "LEADER",
            "COMMIT/APPLIED",
            "LAG",
            "HTTP",
        ],
        &rows,
    )
}

/// Compacts the members' state machines one node at a time (each node pays for its own
/// rewrite; one at a time, the cluster always has a majority not compacting), or only
/// `only`'s. Stops at the first node that fails, naming it.
async fn compact(c: &Client, cfg: &Config, only: Option<u64>) -> Res {
    let view: ClusterStatusDto = c.get("/admin/status").await?.value;
    let members: Vec<_> = view
        .members
        .iter()
        .filter(|m| only.is_none_or(|id| id == m.node_id))
        .collect();
    if members.is_empty() {
        return Err(CliError::Usage(UsageError::Invalid(format!(
            "node {} is not a member of the cluster",
            opt(only)
        ))));
    }
    let timeout = request_timeout(&Command::Compact { node: only }, cfg.timeout);
    let mut done = Vec::with_capacity(members.len());
    for m in members {
        let endpoint = crate::args::normalize_endpoint(&m.api_addr)?;
        let one = Client::new(vec![endpoint], timeout)?;
        let a = match one
            .json::<(), CompactedDto>(Method::POST, "/admin/compact", None)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!("compact: node {} at {} failed", m.node_id, m.api_addr);
                return Err(e.into());
            }
        };
        if cfg.output == Output::Table {
            let r = &a.value;
            println!(
                "node {}: state machine compacted in {} ms, {} -> {} bytes of tables",
                r.node_id, r.took_ms, r.sst_bytes_before, r.sst_bytes_after
            );
        }
        done.push(a.value);
    }
    if cfg.output == Output::Json {
        print_json(&done);
    }
    Ok(())
}

async fn status(c: &Client, cfg: &Config) -> Res {
    let view: ClusterStatusDto = c.get("/admin/status").await?.value;
    // Ask every member for its own view, in parallel, one attempt each.
    let asks = view.members.iter().map(|m| {
        let endpoint = crate::args::normalize_endpoint(&m.api_addr);
        let timeout = cfg.timeout;
        async move {
            let endpoint = endpoint.map_err(|e| e.to_string())?;
            let one = Client::new(vec![endpoint], timeout).map_err(|e| e.to_string())?;
            match one
                .attempt::<()>(0, Method::GET, "/admin/status", None)
                .await
            {
                crate::client::Attempt::Ok(resp) => resp
                    .json::<ClusterStatusDto>()
                    .await
                    .map_err(|e| crate::client::describe(&e)),
                crate::client::Attempt::Transport(e) => Err(e),
                crate::client::Attempt::Unavailable { code, message, .. }
                | crate::client::Attempt::Rejected { code, message, .. } => {
                    Err(format!("{code}: {message}"))
                }
            }
        }
    });
    let answers = futures::future::join_all(asks).await;
    let report = status_report(&view, answers);
    match cfg.output {
        Output::Json => print_json(&report),
        Output::Table => print!("{}", status_table(&report)),
    }
    Ok(())
}

async fn init(c: &Client, out: Output, peers: &[String]) -> Res {
    let members: Vec<stockade_api::dto::AddLearnerBody> = if peers.is_empty() {
        Vec::new()
    } else {
        crate::args::parse_peers(peers)?
            .into_iter()
            .map(
                |(node_id, (raft_addr, api_addr))| stockade_api::dto::AddLearnerBody {
                    node_id,
                    raft_addr,
                    api_addr,
                },
            )
            .collect()
    };
    let body = stockade_api::dto::InitBody { members };
    let st: ClusterStatusDto = c.post("/admin/init", &body).await?.value;
    match out {
        Output::Json => print_json(&st),
        Output::Table => {
            println!(
                "cluster initialized: node {} sees leader {} in term {}",
                st.node_id,
                opt(st.leader_id),
                st.term
            );
            print!("{}", members_table(&st));
        }
    }
    Ok(())
}

async fn backup(c: &Client, out: Output, file: &Path, no_snapshot: bool) -> Res {
    // Build and download on the same node, so the file holds everything it applied.
    let pinned = if no_snapshot {
        let a = c.get::<ClusterStatusDto>("/admin/status").await?;
        c.pinned(a.endpoint)?
    } else {
        let a = c
            .json::<(), ClusterStatusDto>(Method::POST, "/admin/snapshot", None)
            .await?;
        c.pinned(a.endpoint)?
    };
    let a = pinned
        .send::<()>(Method::GET, "/admin/backup", None)
        .await?;
    let index = a
        .value
        .headers()
        .get("x-stockade-snapshot-index")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let tmp = file.with_extension("part");
    let local = |e: std::io::Error| CliError::Local(format!("{}: {e}", tmp.display()));
    let mut f = tokio::fs::File::create(&tmp).await.map_err(local)?;
    let mut bytes = 0u64;
    let mut stream = a.value.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            CliError::Client(ClientError::BadResponse(format!(
                "backup download: {}",
                crate::client::describe(&e)
            )))
        })?;
        f.write_all(&chunk).await.map_err(local)?;
        bytes += chunk.len() as u64;
    }
    f.sync_all().await.map_err(local)?;
    drop(f);
    tokio::fs::rename(&tmp, file)
        .await
        .map_err(|e| CliError::Local(format!("{}: {e}", file.display())))?;
    #[derive(Serialize, Debug)]
    struct Saved {
        file: String,
        bytes: u64,
        served_by: Option<u64>,
        snapshot_index: Option<String>,
    }
    let saved = Saved {
        file: file.display().to_string(),
        bytes,
        served_by: a.served_by,
        snapshot_index: index,
    };
    match out {
        Output::Json => print_json(&saved),
        Output::Table => println!(
            "backup of node {} (snapshot index {}) saved to {} ({} bytes)",
            opt(saved.served_by),
            saved.snapshot_index.as_deref().unwrap_or("-"),
            saved.file,
            saved.bytes
        ),
    }
    Ok(())
}

/// A sale spec from the create flags (or the `--file`).
pub fn sale_spec(a: &SaleCreateArgs, now_ms: u64) -> Result<SaleSpecDto, CliError> {
    if let Some(path) = &a.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Local(format!("{}: {e}", path.display())))?;
        return serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(UsageError::Invalid(format!(
                "{}: not a sale spec: {e}",
                path.display()
            )))
        });
    }
    let missing = |f: &str| CliError::Usage(UsageError::Invalid(format!("--{f} is required")));
    let starts = a.starts_at_ms.unwrap_or(now_ms);
    Ok(SaleSpecDto {
        id: a.id.clone().ok_or_else(|| missing("id"))?,
        product: ProductDto {
            sku: a.sku.clone().ok_or_else(|| missing("sku"))?,
            name: a.name.clone().ok_or_else(|| missing("name"))?,
            description: a.description.clone(),
            image_url: a.image_url.clone(),
        },
        list_price_minor: a.list_price.unwrap_or(a.price),
        sale_price_minor: a.price,
        currency: a.currency.clone(),
        quantity: a.quantity,
        starts_at_ms: starts,
        ends_at_ms: starts.saturating_add(a.duration_s.saturating_mul(1_000)),
        per_user_limit: a.per_user_limit,
        hold_ttl_ms: a.hold_ttl_ms,
        payment_window_ms: a.payment_window_ms,
    })
}

/// One sale as `key: value` lines.
pub fn sale_text(s: &SaleDto) -> String {
    let c = &s.counters;
    let st = &s.stats;
    kv(&[
        ("sale", s.spec.id.clone()),
        (
            "product",
            format!("{} ({})", s.spec.product.name, s.spec.product.sku),
        ),
        (
            "price",
            format!(
                "{} {} (list {})",
                s.spec.sale_price_minor, s.spec.currency, s.spec.list_price_minor
            ),
        ),
        ("status", s.status.clone()),
        ("quantity", s.spec.quantity.to_string()),
        (
            "counters",
            format!(
                "available {} / held {} / awaiting payment {} / sold {}",
                c.available, c.held, c.awaiting_payment, c.sold
            ),
        ),
        (
            "window",
            format!("{} .. {} ms", s.spec.starts_at_ms, s.spec.ends_at_ms),
        ),
        (
            "limits",
            format!(
                "{} per user, hold ttl {} ms, payment window {} ms",
                s.spec.per_user_limit, s.spec.hold_ttl_ms, s.spec.payment_window_ms
            ),
        ),
        (
            "holds",
            format!(
                "granted {}, expired {}, released {}",
                st.holds_granted, st.holds_expired, st.holds_released
            ),
        ),
        (
            "orders",
            format!(
                "checkouts {}, paid {}, cancelled {}, timed out {}",
                st.checkouts, st.orders_paid, st.orders_cancelled, st.orders_timed_out
            ),
        ),
        ("waitlist", st.waitlist_len.to_string()),
    ])
}

fn stats_text(st: &SaleStatsDto) -> String {
    kv(&[
        ("holds granted", st.holds_granted.to_string()),
        ("units reserved", st.units_reserved.to_string()),
        ("holds expired", st.holds_expired.to_string()),
        ("holds released", st.holds_released.to_string()),
        ("checkouts", st.checkouts.to_string()),
        ("orders paid", st.orders_paid.to_string()),
        ("orders cancelled", st.orders_cancelled.to_string()),
        ("orders timed out", st.orders_timed_out.to_string()),
        ("unique buyers", st.unique_buyers.to_string()),
        ("waitlist joined", st.waitlist_joined.to_string()),
        ("waitlist promoted", st.waitlist_promoted.to_string()),
        ("waitlist length", st.waitlist_len.to_string()),
        ("sold out at ms", opt(st.sold_out_at_ms)),
        ("fully sold at ms", opt(st.fully_sold_at_ms)),
    ])
}

fn orders_table(orders: &[OrderDto]) -> String {
    let rows: Vec<Vec<String>> = orders
        .iter()
        .map(|o| {
            vec![
                o.order_id.to_string(),
                o.sale_id.clone(),
                o.hold_id.to_string(),
                o.qty.to_string(),
                format!("{} {}", o.amount_minor, o.currency),
                o.status.clone(),
            ]
        })
        .collect();
    table(&["ORDER", "SALE", "HOLD", "QTY", "AMOUNT", "STATUS"], &rows)
}

fn holds_table(holds: &[HoldDto]) -> String {
    let rows: Vec<Vec<String>> = holds
        .iter()
        .map(|h| {
            vec![
                h.hold_id.to_string(),
                h.sale_id.clone(),
                h.qty.to_string(),
                h.state.clone(),
                h.expires_at_ms.to_string(),
                h.order_id
                    .map_or_else(|| "-".to_string(), |o| o.to_string()),
            ]
        })
        .collect();
    table(
        &["HOLD", "SALE", "QTY", "STATE", "EXPIRES_AT_MS", "ORDER"],
        &rows,
    )
}

async fn sale(c: &Client, out: Output, cmd: SaleCommand) -> Res {
    match cmd {
        SaleCommand::Create(a) => {
            let spec = sale_spec(&a, now_ms())?;
            let r: SaleIdDto = c.post("/v1/sales", &spec).await?.value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!(
                    "sale {} created: {} units of {}",
                    r.sale_id, spec.quantity, spec.product.name
                ),
            }
        }
        SaleCommand::List { limit } => {
            let path = match limit {
                Some(l) => format!("/v1/sales?limit={l}"),
                None => "/v1/sales".to_string(),
            };
            let l: SaleListDto = c.get(&path).await?.value;
            match out {
                Output::Json => print_json(&l),
                Output::Table => {
                    let rows: Vec<Vec<String>> = l
                        .sales
                        .iter()
                        .map(|s| {
                            vec![
                                s.spec.id.clone(),
                                s.status.clone(),
                                s.spec.quantity.to_string(),
                                s.counters.available.to_string(),
                                s.counters.held.to_string(),
                                s.counters.awaiting_payment.to_string(),
                                s.counters.sold.to_string(),
                                s.spec.product.name.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(
                            &[
                                "SALE",
                                "STATUS",
                                "QUANTITY",
                                "AVAILABLE",
                                "HELD",
                                "AWAITING",
                                "SOLD",
                                "PRODUCT"
                            ],
                            &rows
                        )
                    );
                }
            }
        }
        SaleCommand::Show { sale_id } => {
            let s: SaleDto = c.get(&format!("/v1/sales/{}", seg(&sale_id))).await?.value;
            match out {
                Output::Json => print_json(&s),
                Output::Table => print!("{}", sale_text(&s)),
            }
        }
        SaleCommand::End { sale_id } => {
            let r: SaleEndedDto = c
                .json::<(), _>(
                    Method::POST,
                    &format!("/v1/sales/{}/end", seg(&sale_id)),
                    None,
                )
                .await?
                .value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!("sale {} ended at {} ms", r.sale_id, r.ended_at_ms),
            }
        }
        SaleCommand::Stats { sale_id } => {
            let s: SaleStatsDto = c
                .get(&format!("/v1/sales/{}/stats", seg(&sale_id)))
                .await?
                .value;
            match out {
                Output::Json => print_json(&s),
                Output::Table => print!("{}", stats_text(&s)),
            }
        }
    }
    Ok(())
}

async fn waitlist(c: &Client, out: Output, cmd: WaitlistCommand) -> Res {
    match cmd {
        WaitlistCommand::Join {
            sale_id,
            user_id,
            qty,
            req,
        } => {
            let body = ReserveBody {
                user_id,
                qty,
                request_id: request_id(&req),
                // The client retries a send whose outcome is unknown with this body.
                first_attempt: false,
            };
            let r: WaitlistJoinedDto = c
                .post(&format!("/v1/sales/{}/waitlist", seg(&sale_id)), &body)
                .await?
                .value;
            match out {
                Output::Json => print_json(&r),
                Output::Table => println!(
                    "{} is number {} on the waitlist of {}",
                    body.user_id, r.position, r.sale_id
                ),
            }
        }
        WaitlistCommand::Show { sale_id, user_id } => {
            let w: WaitlistStatusDto = c
                .get(&format!(
                    "/v1/sales/{}/waitlist/{}",
                    seg(&sale_id),
                    seg(&user_id)
                ))
                .await?
                .value;
            match out {
                Output::Json => print_json(&w),
                Output::Table => println!(
                    "{}",
                    match w.state.as_str() {
                        "waiting" => format!(
                            "waiting: position {}, {} unit(s)",
                            opt(w.position),
                            opt(w.qty)
                        ),
                        "promoted" => format!("promoted: hold {}", opt(w.hold_id)),
                        other => other.to_string(),
                    }
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_backups_wait_for_a_build_whatever_the_timeout() {
        let short = std::time::Duration::from_secs(10);
        let long = std::time::Duration::from_secs(600);
        assert_eq!(request_timeout(&Command::Status, short), short);
        assert_eq!(
            request_timeout(&Command::Snapshot, short),
            SNAPSHOT_REQUEST_TIMEOUT_MIN
        );
        let backup = Command::Backup {
            file: "b.snap".into(),
            no_snapshot: false,
        };
        assert_eq!(
            request_timeout(&backup, short),
            SNAPSHOT_REQUEST_TIMEOUT_MIN
        );
        assert_eq!(
            request_timeout(&Command::Compact { node: None }, short),
            SNAPSHOT_REQUEST_TIMEOUT_MIN
        );
        assert_eq!(
            request_timeout(&Command::Snapshot, long),
            long,
            "never lowered"
        );
    }

    fn status(id: u64, role: &str, leader: Option<u64>) -> ClusterStatusDto {
        ClusterStatusDto {
            node_id: id,
            role: role.into(),
            term: 3,
            leader_id: leader,
            last_log_index: 10,
            commit_index: 10,
            applied_index: 9,
            snapshot_index: None,
            members: (1..=3)
                .map(|n| MemberDto {
                    node_id: n,
                    raft_addr: format!("h:{}", 50050 + n),
                    api_addr: format!("h:{}", 8080 + n),
                    voter: n != 3,
                })
                .collect(),
            replication: if role == "leader" {
                vec![ReplicationDto {
                    node_id: 2,
                    matched_index: Some(7),
                    lag: 3,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn status_report_takes_lag_from_the_leader_and_marks_unreachable_nodes() {
        let view = status(2, "follower", Some(1));
        let answers = vec![
            Ok(status(1, "leader", Some(1))),
            Ok(status(2, "follower", Some(1))),
            Err("connection refused".to_string()),
        ];
        let r = status_report(&view, answers);
        assert_eq!(r.leader_id, Some(1));
        assert_eq!(r.nodes[0].lag, Some(0));
        assert_eq!(r.nodes[1].lag, Some(3));
        assert_eq!(r.nodes[2].lag, None);
        let t = status_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("NODE  ROLE"), "{t}");
        assert!(
            lines[1].contains("leader") && lines[1].contains("10/9"),
            "{t}"
        );
        assert!(
            lines[3].contains("unreachable") && lines[3].contains("learner"),
            "{t}"
        );
    }

    #[test]
    fn sale_spec_from_flags() -> Result<(), CliError> {
        let a = SaleCreateArgs {
            file: None,
            id: Some("d".into()),
            sku: Some("P".into()),
            name: Some("N".into()),
            description: String::new(),
            image_url: String::new(),
            price: 499,
            list_price: None,
            currency: "EUR".into(),
            quantity: 5,
            starts_at_ms: None,
            duration_s: 60,
            per_user_limit: 1,
            hold_ttl_ms: 1_000,
            payment_window_ms: 0,
        };
        let s = sale_spec(&a, 1_000)?;
        assert_eq!((s.starts_at_ms, s.ends_at_ms), (1_000, 61_000));
        assert_eq!(s.list_price_minor, 499);
        Ok(())
    }
}
