//! One run end to end, and the PR tier.
//!
//! This module owns [`RunConfig`], [`run`] (start the cluster — processes, namespaces or
//! containers, see [`Backend`] — join nodes started uninitialized, create the sales, run the
//! clients and the nemesis for the duration, heal everything, wait for a leader and
//! quiet, read the final state, run every checker, write `history.jsonl`,
//! `final_state.json`, `report.json`, `report.txt` into the output directory) and
//! [`pr_tier`]. It must not judge anything itself: verdicts come from the checkers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::client::{Answer, Client};
use super::cluster::Cluster;
use super::docker::{DockerCluster, DockerOpts};
use super::final_read::{read_final, wait_leader, wait_quiet};
use super::membership::{self, MemberUndo};
use super::nemesis::{
    ClusterControl, FaultKind, FaultRecord, Nemesis, ProcessNemesis, Undo, BRIDGE_RING_NODES_MIN,
};
use super::procs::{ClusterOpts, NodeSpec, ProcessCluster};
use super::rng::Rng;
use super::workload::{sale_plan, sale_spec_from, Recorder, SalePlan, Worker};
use crate::history::{History, HistoryMeta};
use crate::report::Report;
use crate::verdict::CheckConfig;

/// Longest run accepted.
pub const DURATION_MAX: Duration = Duration::from_secs(3_600);
/// Most clients accepted.
pub const CLIENTS_MAX: usize = 64;
/// How long the cluster may take to elect its first leader.
pub const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a heal a leader is waited for.
pub const HEAL_LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the final quiet is waited for.
pub const QUIET_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at creating one sale.
const CREATE_ATTEMPTS_MAX: u32 = 50;
/// Pause between them.
const CREATE_RETRY: Duration = Duration::from_millis(200);
/// The first sales open this long after creation starts (the rest in waves after).
const SALES_CREATE_ALLOWANCE_MS: u64 = 1_000;
/// No fault is injected in the first part of a run (ms) …
const CALM_START_MS: u64 = 1_500;
/// … nor in the last part, so the cluster heals under load.
const CALM_END_MS: u64 = 3_000;
/// A fault lasts this long (ms, uniform).
const FAULT_HOLD_MS: (u64, u64) = (1_500, 3_000);
/// Gap between two faults (ms, uniform).
const FAULT_GAP_MS: (u64, u64) = (1_500, 3_000);
/// Wait between a SIGSTOP and the status poll that confirms it.
const PAUSE_SETTLE: Duration = Duration::from_millis(200);
/// After the clients stop, wait out hold TTLs and payment windows plus this slack.
const SETTLE_SLACK: Duration = Duration::from_millis(1_500);
/// Bytes of a node log quoted when the cluster does not come up.
const LOG_TAIL_BYTES: usize = 2_000;

/// Set once SIGINT or SIGTERM arrived: the current run is torn down (every process,
/// namespace and proxy removed by `Drop`) and no further run starts.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Processes on loopback.
    #[default]
    Local,
    /// Processes, each in its own network namespace (partitions; root only).
    Netns,
    /// Containers of the top-level `docker-compose.yml`, as a compose project of the
    /// run's own (kill, pause, skew, partitions, membership; root and docker).
    Docker,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "local" | "process" => Some(Backend::Local),
            "netns" => Some(Backend::Netns),
            "docker" => Some(Backend::Docker),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub duration: Duration,
    pub nemesis: Vec<FaultKind>,
    pub clients: usize,
    pub nodes: usize,
    pub out: PathBuf,
    pub bin: PathBuf,
    /// Faults injected at most (`None`: as many as fit).
    pub faults_max: Option<usize>,
    pub keep_data: bool,
    pub backend: Backend,
    /// Heavy waitlist traffic on the waitlist sale `js-w`: its clients keep reserving it
    /// when sold out and join its waitlist at `WAITLIST_JOIN_PERMILLE_HEAVY`.
    pub waitlist: bool,
    /// Per mille of sold-out answers followed by a waitlist join, on every sale (the
    /// default workload; 0: no joins except on the waitlist sale of a `waitlist` run).
    pub waitlist_join_permille: u64,
    /// Image and compose file of the docker backend.
    pub docker: DockerOpts,
}

impl RunConfig {
    /// Refuses fault kinds this configuration cannot inject, with the reason (never
    /// skipped silently).
    pub fn validate(&self) -> Result<(), String> {
        if self.duration > DURATION_MAX || self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(format!(
                "duration must be ≤ {DURATION_MAX:?} and clients 1..={CLIENTS_MAX}"
            ));
        }
        let parts = self.nemesis.iter().any(|k| k.is_partition());
        let links = self.nemesis.iter().any(|k| k.is_link());
        if parts && self.backend == Backend::Local {
            return Err(
                "partition faults need --backend netns (each node in its own network \
                        namespace; root) or --backend docker"
                    .into(),
            );
        }
        if links && self.backend == Backend::Docker {
            return Err(super::docker::LINK_FAULTS_UNSUPPORTED.into());
        }
        if self.nemesis.iter().any(|k| k.is_one_link()) && self.backend != Backend::Netns {
            return Err(
                "one-link faults (link-delay, link-loss) need --backend netns: the proxy \
                 tells the sender by its namespace address (on loopback every node shares \
                 127.0.0.1)"
                    .into(),
            );
        }
        if self.backend == Backend::Docker
            && !(super::docker::COMPOSE_INITIAL..=super::docker::NODES_MAX).contains(&self.nodes)
        {
            return Err(format!(
                "the docker backend runs {}..={} nodes (3 from the compose file, 4 and 5 \
                 from its `five` profile, more from the runner's override), not {}",
                super::docker::COMPOSE_INITIAL,
                super::docker::NODES_MAX,
                self.nodes
            ));
        }
        if parts && links {
            return Err(
                "partition and delay/loss faults cannot share a run (the proxy would \
                        carry the partitioned traffic around the nftables rules)"
                    .into(),
            );
        }
        if self
            .nemesis
            .iter()
            .any(|k| matches!(k, FaultKind::PartitionBridge | FaultKind::PartitionRing))
            && self.nodes < BRIDGE_RING_NODES_MIN
        {
            return Err(format!(
                "bridge and ring partitions need --nodes {BRIDGE_RING_NODES_MIN} or more"
            ));
        }
        match self.backend {
            Backend::Netns => super::netns::check_available()?,
            Backend::Docker => super::docker::check_available()?,
            Backend::Local => {}
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    pub report: Report,
    pub faults: Vec<FaultRecord>,
    pub out: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `stockade` binary next to the running executable (target/{debug,release}/, also
/// from target/*/deps/ for tests).
pub fn default_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let cand = d.join("stockade");
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent();
    }
    Err(format!(
        "no `stockade` binary next to {} (build it with `cargo build -p stockade-node --bin \
         stockade`, or pass --stockade-bin PATH)",
        exe.display()
    ))
}

/// One run. Errors are setup failures (no cluster, no sale); a run that completes
/// always yields a report, whatever its verdict.
pub fn run(cfg: &RunConfig) -> Result<RunResult, String> {
    cfg.validate()?;
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err("interrupted".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // On SIGINT / SIGTERM the run future is dropped here and the runtime below, which
    // drops the cluster: children killed, proxy stopped, namespaces deleted.
    // Biased, signals first: the handlers are installed before the run's first (blocking)
    // step, so a SIGINT while the cluster starts is caught and cleaned up too.
    let out = rt.block_on(async {
        tokio::select! {
            biased;
            sig = interrupted() => {
                INTERRUPTED.store(true, Ordering::Relaxed);
                Err(format!("interrupted by {sig}; cleaning up"))
            }
            r = run_async(cfg) => r,
        }
    });
    drop(rt);
    out
}

/// Resolves on SIGINT or SIGTERM (never, if neither can be listened for).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn run_async(cfg: &RunConfig) -> Result<RunResult, String> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| format!("{}: {e}", cfg.out.display()))?;
    let mut cluster = match cfg.backend {
        Backend::Local | Backend::Netns => {
            let opts = ClusterOpts {
                netns: cfg.backend == Backend::Netns,
                proxy: cfg.nemesis.iter().any(|k| k.is_link()),
                seed: cfg.seed,
            };
            Cluster::Procs(
                ProcessCluster::start_with(&cfg.bin, cfg.nodes, cfg.keep_data, opts)
                    .map_err(|e| e.to_string())?,
            )
        }
        Backend::Docker => Cluster::Docker(DockerCluster::start(
            &cfg.docker,
            &cfg.bin,
            cfg.nodes,
            &cfg.out,
            cfg.keep_data,
        )?),
    };
    let netns_prefix = cluster.netns_prefix();
    let docker_project = cluster.docker_project();
    let specs = cluster.specs();
    let data_dir = cluster.dir().to_path_buf();
    let cluster = Arc::new(Mutex::new(cluster));
    let addrs: BTreeMap<u64, String> = specs.iter().map(|s| (s.id, s.http.clone())).collect();
    let nodes: Vec<String> = addrs.values().cloned().collect();
    let client = Client::new()?;

    // Nodes started uninitialized (docker: 4 and up) join the cluster the others form.
    let joiners: Vec<NodeSpec> = specs.iter().filter(|s| !s.initial).cloned().collect();
    if !joiners.is_empty() {
        let first: BTreeMap<u64, String> = specs
            .iter()
            .filter(|s| s.initial)
            .map(|s| (s.id, s.http.clone()))
            .collect();
        let first_nodes: Vec<String> = first.values().cloned().collect();
        if wait_leader(&client, &first_nodes, FIRST_LEADER_TIMEOUT)
            .await
            .is_none()
        {
            return Err(no_leader(&cluster));
        }
        membership::join(&client, &first, &joiners)
            .await
            .map_err(|e| {
                format!(
                    "joining nodes {:?}: {e}",
                    joiners.iter().map(|s| s.id).collect::<Vec<_>>()
                )
            })?;
    }

    if wait_leader(&client, &nodes, FIRST_LEADER_TIMEOUT)
        .await
        .is_none()
    {
        return Err(no_leader(&cluster));
    }
    let plan: Vec<SalePlan> = sale_plan(ms(cfg.duration))
        .into_iter()
        .map(|mut p| {
            p.waitlist &= cfg.waitlist;
            p
        })
        .collect();
    let sales: Vec<crate::history::SaleMeta> = plan.iter().map(|p| p.meta.clone()).collect();
    // Sales open in waves from the moment the clients start (creation takes a moment).
    let opens_base_ms = now_ms() + SALES_CREATE_ALLOWANCE_MS;
    for p in &plan {
        let opens = opens_base_ms + p.opens_after_ms;
        create_sale(&client, &nodes, p, opens).await?;
    }
    let wait = opens_base_ms.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;

    let start = Instant::now();
    let wall_start_ms = now_ms();
    let rec = Arc::new(Recorder::new(start));
    let deadline = start + cfg.duration;
    let root = Rng::new(cfg.seed);

    let mut tasks = Vec::with_capacity(cfg.clients);
    for p in 0..cfg.clients {
        let w = Worker::new(
            p as u64,
            nodes.clone(),
            p % nodes.len().max(1),
            root.fork(100 + p as u64),
            plan.clone(),
            client.clone(),
            rec.clone(),
            start,
            deadline,
        )
        .with_join_permille(cfg.waitlist_join_permille);
        tasks.push(tokio::spawn(w.run()));
    }
    let nem = tokio::spawn(nemesis_loop(
        cfg.clone(),
        cluster.clone(),
        client.clone(),
        addrs.clone(),
        root.fork(1),
        start,
    ));
    for t in tasks {
        let _ = t.await;
    }
    let mut faults = nem.await.map_err(|e| format!("nemesis task: {e}"))?;
    let ops = rec.take();

    // Final phase: everything healed already (the nemesis heals each fault, and heals
    // again below in case a heal failed); wait out TTLs, then quiet, then read.
    heal_all(&cluster).await;
    let settle = sales
        .iter()
        .map(|s| s.hold_ttl_ms + s.payment_window_ms)
        .max()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(settle) + SETTLE_SLACK).await;
    let history = History {
        meta: HistoryMeta {
            seed: cfg.seed,
            wall_start_ms,
            sales: sales.clone(),
        },
        ops,
    };
    let quiet_from_ms = start.elapsed().as_millis() as u64;
    let final_state = match wait_quiet(&client, &nodes, QUIET_TIMEOUT).await {
        Ok(leader) => read_final(&client, &addrs, leader, &sales, &history).await,
        Err(e) => Err(e),
    };

    // Heal timings from the history: first ok write completed after each instant.
    let writes: Vec<u64> = {
        let mut v: Vec<u64> = history
            .ops
            .iter()
            .filter(|o| o.outcome.is_ok() && o.call.client_key().is_some())
            .filter_map(|o| o.complete_ns)
            .collect();
        v.sort_unstable();
        v
    };
    let first_after = |t_ms: u64| -> Option<u64> {
        let t_ns = t_ms.saturating_mul(1_000_000);
        let i = writes.partition_point(|&w| w < t_ns);
        writes.get(i).map(|w| w / 1_000_000 - t_ms)
    };
    for f in &mut faults {
        f.fault_to_first_ack_write_ms = first_after(f.injected_at_ms);
        f.heal_to_first_ack_write_ms = f.healed_at_ms.and_then(first_after);
    }

    let config = CheckConfig::default();
    let (mut report, fs_error) = match &final_state {
        Ok(fs) => (Report::build(&history, Some(fs), &config), None),
        Err(e) => (Report::build(&history, None, &config), Some(e.clone())),
    };
    let injected = faults.len();
    let effective = faults.iter().filter(|f| f.took_effect).count();
    report.extra.insert(
        "faults".into(),
        serde_json::to_value(&faults).unwrap_or_default(),
    );
    report.extra.insert(
        "faults_summary".into(),
        json!({"injected": injected, "took_effect": effective, "healed": faults.iter().filter(|f| f.heal_ok).count()}),
    );
    report.extra.insert(
        "run".into(),
        json!({
            "duration_s": cfg.duration.as_secs_f64(),
            "clients": cfg.clients,
            "nodes": cfg.nodes,
            "nemesis": cfg.nemesis.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "backend": format!("{:?}", cfg.backend),
            "waitlist_heavy": cfg.waitlist,
            "waitlist_join_permille": cfg.waitlist_join_permille,
            "netns_prefix": netns_prefix,
            "docker_project": docker_project,
            "data_dir": if cfg.keep_data { Some(data_dir.display().to_string()) } else { None },
        }),
    );
    if let Some(e) = &fs_error {
        report
            .extra
            .insert("final_state_error".into(), json!(e.clone()));
    }
    if let Ok(fs) = &final_state {
        report.extra.insert(
            "final_state_gaps".into(),
            serde_json::to_value(&fs.gaps).unwrap_or_default(),
        );
        report.extra.insert(
            "final_records_read_attempts".into(),
            json!(fs.records_read_attempts),
        );
        // Run time (ms from the start of the clients) when the wait for quiet began:
        // expiries and waitlist hand-offs after it run while the final state is read.
        report
            .extra
            .insert("final_quiet_wait_from_ms".into(), json!(quiet_from_ms));
    }
    if let Some(st) = cluster
        .lock()
        .ok()
        .and_then(|c| c.proxy().map(|p| p.stats()))
    {
        report
            .extra
            .insert("proxy".into(), serde_json::to_value(st).unwrap_or_default());
    }
    write_outputs(&cfg.out, &history, final_state.as_ref().ok(), &report)?;
    drop(cluster);
    Ok(RunResult {
        report,
        faults,
        out: cfg.out.clone(),
    })
}

/// The error of a cluster that elected no leader, with the end of node 1's log.
fn no_leader(cluster: &Arc<Mutex<Cluster>>) -> String {
    let tail = cluster
        .lock()
        .map(|c| c.log_tail(1, LOG_TAIL_BYTES))
        .unwrap_or_default();
    format!("no leader within {FIRST_LEADER_TIMEOUT:?}; node 1 log:\n{tail}")
}

fn write_outputs(
    out: &Path,
    history: &History,
    fs: Option<&crate::final_state::FinalState>,
    report: &Report,
) -> Result<(), String> {
    let w = |name: &str, s: &str| {
        std::fs::write(out.join(name), s).map_err(|e| format!("write {name}: {e}"))
    };
    let h = history.to_jsonl_string().map_err(|e| e.to_string())?;
    w("history.jsonl", &h)?;
    if let Some(fs) = fs {
        w(
            "final_state.json",
            &serde_json::to_string_pretty(fs).map_err(|e| e.to_string())?,
        )?;
    }
    w("report.json", &report.to_json().map_err(|e| e.to_string())?)?;
    w("report.txt", &report.to_text())?;
    Ok(())
}

async fn create_sale(
    c: &Client,
    nodes: &[String],
    p: &SalePlan,
    opens_at_ms: u64,
) -> Result<(), String> {
    let s = &p.meta;
    let spec = sale_spec_from(s, opens_at_ms, now_ms());
    let mut last = String::new();
    for i in 0..CREATE_ATTEMPTS_MAX {
        let node = nodes
            .get(i as usize % nodes.len().max(1))
            .ok_or("no nodes")?;
        match c.post(node, "/v1/sales", &spec).await {
            Answer::Ok(_) => return Ok(()),
            Answer::Fail { code, .. } if code == "sale_exists" => return Ok(()),
            Answer::Fail { code, message } => last = format!("{code}: {message}"),
            Answer::Info(r) => last = r,
        }
        tokio::time::sleep(CREATE_RETRY).await;
    }
    Err(format!("creating sale {}: {last}", s.sale_id))
}

/// Restarts every down node, resumes every paused one (skew stays as healed by the
/// nemesis; this is the safety net).
async fn heal_all(cluster: &Arc<Mutex<Cluster>>) {
    let c = cluster.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let Ok(mut c) = c.lock() else { return };
        let _ = ClusterControl::heal_partition(&mut *c);
        let _ = ClusterControl::heal_links(&mut *c);
        for id in c.ids() {
            let _ = c.resume(id);
            if c.is_down(id).unwrap_or(false) {
                let _ = c.restart(id, 0);
            }
            if c.skew_ms(id).unwrap_or(0) != 0 {
                let _ = c.stop(id);
                let _ = c.restart(id, 0);
            }
        }
    })
    .await;
}

/// What one injected fault must undo.
enum Pending {
    Process(Undo),
    Member(Option<MemberUndo>),
}

async fn nemesis_loop(
    cfg: RunConfig,
    cluster: Arc<Mutex<Cluster>>,
    client: Client,
    addrs: BTreeMap<u64, String>,
    mut rng: Rng,
    start: Instant,
) -> Vec<FaultRecord> {
    let nodes: Vec<String> = addrs.values().cloned().collect();
    let mut log = Vec::new();
    if cfg.nemesis.is_empty() {
        return log;
    }
    let end_ms = ms(cfg.duration).saturating_sub(CALM_END_MS);
    let elapsed = || ms(start.elapsed());
    let first_kind = rng.below(cfg.nemesis.len() as u64) as usize;
    tokio::time::sleep(Duration::from_millis(CALM_START_MS)).await;
    loop {
        if cfg.faults_max.is_some_and(|m| log.len() >= m) {
            break;
        }
        let hold = rng.between(FAULT_HOLD_MS.0, FAULT_HOLD_MS.1);
        if elapsed() + hold > end_ms {
            break;
        }
        // Kinds in turn from a seeded start, so a short run covers each of them.
        let kind = match cfg
            .nemesis
            .get((first_kind + log.len()) % cfg.nemesis.len())
        {
            Some(k) => *k,
            None => break,
        };
        let leader = super::final_read::leader_now(&client, &nodes).await;
        let injected_at_ms = elapsed();
        let stats_before = proxy_stats(&cluster);
        let (targets, mut took_effect, mut detail, pending) = if kind.is_membership() {
            let (t, e, d, u) = if kind == FaultKind::MemberAdd {
                membership::add_node(&client, &addrs, &cluster).await
            } else {
                membership::remove_voter(&client, &addrs, &mut rng).await
            };
            (t, e, d, Pending::Member(u))
        } else {
            let c = cluster.clone();
            let mut r2 = rng.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let mut n = ProcessNemesis;
                let out = match c.lock() {
                    Ok(mut g) => n.inject(kind, leader, &mut r2, &mut *g),
                    Err(_) => (vec![], false, "cluster lock poisoned".into(), Undo::Nothing),
                };
                (out, r2)
            })
            .await;
            let ((t, e, d, u), r2) = match joined {
                Ok(v) => v,
                Err(e) => (
                    (vec![], false, format!("nemesis: {e}"), Undo::Nothing),
                    rng.clone(),
                ),
            };
            rng = r2;
            (t, e, d, Pending::Process(u))
        };
        // A pause takes effect if the paused node stops answering (asked once the stop
        // has had time to reach every thread).
        if let (FaultKind::PauseLeader, true) = (kind, took_effect) {
            tokio::time::sleep(PAUSE_SETTLE).await;
            let silent = match targets.first().and_then(|id| addrs.get(id)) {
                Some(addr) => client.status(addr).await.is_none(),
                None => false,
            };
            took_effect = silent;
            detail.push_str(&format!("; node silent afterwards: {silent}"));
        }
        let mut rec = FaultRecord {
            kind,
            nodes: targets,
            injected_at_ms,
            took_effect,
            detail,
            healed_at_ms: None,
            heal_ok: false,
            heal_to_leader_ms: None,
            heal_to_first_ack_write_ms: None,
            fault_to_first_ack_write_ms: None,
        };
        tokio::time::sleep(Duration::from_millis(hold)).await;
        // A link fault took effect if the proxy delayed, refused, reset or blackholed
        // something while it was on.
        if kind.is_link() && rec.took_effect {
            let after = proxy_stats(&cluster);
            let (b, a) = (stats_before.unwrap_or_default(), after.unwrap_or_default());
            let delayed = a.delayed_chunks - b.delayed_chunks;
            let lost =
                (a.refused + a.resets + a.blackholes) - (b.refused + b.resets + b.blackholes);
            rec.took_effect = if kind.is_delay() {
                delayed > 0
            } else {
                lost > 0
            };
            rec.detail.push_str(&format!(
                "; during it: {delayed} chunks delayed, {} refused, {} reset, {} blackholed",
                a.refused - b.refused,
                a.resets - b.resets,
                a.blackholes - b.blackholes
            ));
        }
        let healed = match pending {
            Pending::Member(None) => (true, "nothing to heal".to_string()),
            Pending::Member(Some(u)) => membership::heal(&client, &addrs, &cluster, &u).await,
            Pending::Process(undo) => {
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || match c.lock() {
                    Ok(mut g) => ProcessNemesis.heal(&undo, &mut *g),
                    Err(_) => (false, "cluster lock poisoned".into()),
                })
                .await
                .unwrap_or_else(|e| (false, format!("heal task: {e}")))
            }
        };
        rec.healed_at_ms = Some(elapsed());
        rec.heal_ok = healed.0;
        rec.detail.push_str(&format!("; heal: {}", healed.1));
        rec.heal_to_leader_ms = wait_leader(&client, &nodes, HEAL_LEADER_TIMEOUT)
            .await
            .map(|(_, d)| ms(d));
        log.push(rec);
        let gap = rng.between(FAULT_GAP_MS.0, FAULT_GAP_MS.1);
        if elapsed() + gap > end_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    log
}

fn proxy_stats(cluster: &Arc<Mutex<Cluster>>) -> Option<super::proxy::ProxyStats> {
    cluster
        .lock()
        .ok()
        .and_then(|c| c.proxy().map(|p| p.stats()))
}

/// One run of a tier.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: &'static str,
    pub nemesis: Vec<FaultKind>,
    pub nodes: usize,
    pub backend: Backend,
    pub duration: Duration,
    pub waitlist: bool,
}

/// Length of one PR-tier run (8 runs: about 8–9 minutes on 2 cores with the settle,
/// quiet and final read of each).
pub const PR_RUN: Duration = Duration::from_secs(45);
/// Length of one long-tier run.
pub const LONG_RUN: Duration = Duration::from_secs(60);
/// Seeds per plan in the long tier.
pub const LONG_SEEDS: u64 = 3;

fn plan(
    name: &'static str,
    words: &[&str],
    nodes: usize,
    backend: Backend,
    duration: Duration,
) -> Plan {
    let mut nemesis = Vec::new();
    for w in words {
        for k in FaultKind::parse_group(w).unwrap_or_default() {
            if !nemesis.contains(&k) {
                nemesis.push(k);
            }
        }
    }
    Plan {
        name,
        nemesis,
        nodes,
        backend,
        duration,
        waitlist: false,
    }
}

/// The PR tier: one short run per fault family (kill, pause, skew, partition, proxy,
/// membership), one with them mixed (all but partitions, which need the namespaces), and
/// `docker-mixed`: kill, pause, skew and partitions against the containers of the
/// compose file. The partition run needs root and the docker run root and a docker
/// daemon; each is refused (a failed run), not skipped, when it cannot be set up.
pub fn pr_plans() -> Vec<Plan> {
    use Backend::*;
    vec![
        plan("kill", &["kill"], 3, Local, PR_RUN),
        plan("pause", &["pause"], 3, Local, PR_RUN),
        plan("skew", &["skew"], 3, Local, PR_RUN),
        plan("partition", &["partition"], 3, Netns, PR_RUN),
        plan("proxy", &["proxy"], 3, Local, PR_RUN),
        plan("membership", &["membership"], 3, Local, PR_RUN),
        plan(
            "mixed",
            &["kill", "pause", "skew", "proxy", "membership"],
            3,
            Local,
            PR_RUN,
        ),
        plan(
            "docker-mixed",
            &["kill", "pause", "skew", "partition"],
            3,
            Docker,
            PR_RUN,
        ),
    ]
}

/// The long tier: every family alone and all together, 5 nodes for bridge and ring,
/// `seeds` seeds each ([`LONG_SEEDS`] by default).
pub fn long_plans(seeds: u64) -> Vec<Plan> {
    use Backend::*;
    let one = [
        plan("kill", &["kill"], 3, Local, LONG_RUN),
        plan("pause", &["pause"], 3, Local, LONG_RUN),
        plan("skew", &["skew"], 3, Local, LONG_RUN),
        plan("partition", &["partition"], 3, Netns, LONG_RUN),
        plan("partition5", &["partition5"], 5, Netns, LONG_RUN),
        plan("proxy", &["proxy"], 3, Local, LONG_RUN),
        plan("proxy-netns", &["proxy"], 3, Netns, LONG_RUN),
        plan("links-netns", &["links"], 3, Netns, LONG_RUN),
        plan("membership", &["membership"], 3, Local, LONG_RUN),
        plan(
            "mixed-netns",
            &["kill", "pause", "skew", "partition5", "membership"],
            5,
            Netns,
            LONG_RUN,
        ),
        plan(
            "mixed-proxy",
            &["kill", "pause", "skew", "proxy", "membership"],
            3,
            Local,
            LONG_RUN,
        ),
        plan(
            "docker-mixed5",
            &["kill", "pause", "skew", "partition5", "membership"],
            5,
            Docker,
            LONG_RUN,
        ),
        // Heavy waitlist traffic on the waitlist sale (every plan has joins at the
        // default rate).
        Plan {
            waitlist: true,
            ..plan("waitlist-kill", &["kill", "pause"], 3, Local, LONG_RUN)
        },
    ];
    let mut out = Vec::new();
    for _ in 0..seeds {
        out.extend(one.iter().cloned());
    }
    out
}

/// Runs `plans` in order, seeds `base.seed`, `base.seed + 1`, …; stops early on an
/// interrupt. Each run's output goes to `base.out/<i>-<name>`.
pub fn run_tier(base: &RunConfig, plans: &[Plan]) -> Vec<(String, Result<RunResult, String>)> {
    let mut out = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let cfg = RunConfig {
            seed: base.seed.wrapping_add(i as u64),
            duration: p.duration,
            nemesis: p.nemesis.clone(),
            nodes: p.nodes,
            backend: p.backend,
            waitlist: p.waitlist,
            out: base.out.join(format!("{i}-{}", p.name)),
            ..base.clone()
        };
        out.push((format!("{i}-{} seed {}", p.name, cfg.seed), run(&cfg)));
    }
    out
}

/// The PR tier with the default plans (kept for callers of the earlier API).
pub fn pr_tier(base: &RunConfig, run_duration: Duration) -> Vec<Result<RunResult, String>> {
    let plans: Vec<Plan> = pr_plans()
        .into_iter()
        .map(|p| Plan {
            duration: run_duration,
            ..p
        })
        .collect();
    run_tier(base, &plans).into_iter().map(|(_, r)| r).collect()
}
