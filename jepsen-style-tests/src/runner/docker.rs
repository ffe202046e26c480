//! Cluster control, Docker backend: the nodes are the containers of the top-level
//! `docker-compose.yml`, run as a compose project of the runner's own.
//!
//! This module owns one run's compose project `stockade-jepsen-<pid>-<k>`: the image (a
//! FROM-scratch image of the binary under test, built by `scripts/build-image --bin …
//! --tag …`, a no-op when unchanged), the override file written into the run's output
//! directory ([`render_override`]: container names, static addresses on a /24 of our own,
//! published ports on free loopback ports, the fast Raft timings, the clock skew, and the
//! services of nodes 6 and up), and the faults on the containers:
//! - kill: `docker kill -s KILL`, restart with `docker start` (the data volume survives);
//! - pause: `docker pause` / `docker unpause` (cgroup freezer);
//! - clock skew: the container recreated with `STOCKADE_CLOCK_SKEW_MS` (same volume, same
//!   address);
//! - partitions: nftables rules in a table of our own (`inet stockade_jepsen`) inside each
//!   cut container's network namespace, entered from the host (`nsenter -t <pid> -n nft`;
//!   the image has no nft), dropping the peers' container addresses;
//! - membership: a fresh container (`--init never`) for each added node.
//!
//! Nodes 1–3 form the cluster from their flags as in the compose file; nodes 4 and up start
//! with `init never` and are joined by the runner with the admin API.
//!
//! The normal `docker compose up` of the compose file is unchanged: the image and the
//! published ports are `${STOCKADE_IMAGE:-stockade:local}` and
//! `${STOCKADE_NODE<N>_{HTTP,GRPC}_PORT:-…}` there, which only the runner sets.
//!
//! [`DockerCluster::cleanup`] (also on `Drop`: normal exit, error, panic, and SIGINT /
//! SIGTERM through the runner's select) saves every container's log into the output
//! directory, then runs `compose down -v --remove-orphans` and removes whatever still
//! carries the project's label. [`cleanup_stale`] removes the projects of runners that are
//! gone (`stockade-jepsen-<pid>-…` with `pid` dead). Delay and loss (the userspace proxy)
//! are not supported here: [`super::run::RunConfig::validate`] refuses them. It must not
//! touch any container, network, volume or rule outside its own project, nor the host's
//! firewall.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::nemesis::{ClusterControl, Verbs};
use super::netns::{partition_rules, NFT_TABLE};
use super::procs::{NodeSpec, ProcError, ProcState, NODE_FLAGS};
use super::proxy::{LinkFault, ProxyStats};

/// Prefix of every compose project this suite creates.
pub const PROJECT_PREFIX: &str = "stockade-jepsen-";
/// The image the runner builds from the binary under test by default.
pub const DEFAULT_IMAGE: &str = "stockade:jepsen";
/// Label compose puts on every container, network and volume of a project.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// First two octets of the run's network (the namespace backend uses 10.213).
const NET_BASE: &str = "10.214";
/// Third octets tried for a run's /24.
const SUBNETS: u32 = 250;
/// Last octet of node `id` is `NODE_OCTET_BASE + id`.
const NODE_OCTET_BASE: u64 = 10;
/// Largest node id (last octet stays < 255).
pub const NODE_ID_MAX: u64 = 200;
/// Nodes the compose file defines (`node1`…`node5`, 4 and 5 in the `five` profile).
pub const COMPOSE_NODES: u64 = 5;
/// Nodes that form the cluster from their flags in the compose file (the others join).
pub const COMPOSE_INITIAL: usize = 3;
/// Most nodes a Docker run starts with.
pub const NODES_MAX: usize = 9;
/// HTTP port inside every container.
pub const CONTAINER_HTTP_PORT: u16 = 8080;
/// gRPC port inside every container.
pub const CONTAINER_GRPC_PORT: u16 = 50051;
/// Seconds a container may take to stop on SIGTERM before it is killed.
const STOP_GRACE_S: u64 = 5;
/// Seconds `compose down` gives each container.
const DOWN_GRACE_S: u64 = 2;
/// Exit code of a container killed by SIGKILL.
const EXIT_SIGKILL: i64 = 137;
/// Longest one docker command may take (a hung daemon must not hang the run).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the image build may take (the first one strips and copies a debug binary).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the availability probes may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed container may take to be reported as exited.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Poll period of that wait and of child processes.
const POLL: Duration = Duration::from_millis(20);
/// Attempts at bringing the project up on another subnet when the chosen one is taken.
const UP_ATTEMPTS_MAX: u32 = 4;
/// Lines of a container log quoted by [`DockerCluster::log_tail`] at most.
const LOG_TAIL_LINES: &str = "200";
/// Most nodes added over one run (membership nemesis).
pub const ADDED_NODES_MAX: u64 = 32;

/// Why delay and loss are refused with `--backend docker`.
pub const LINK_FAULTS_UNSUPPORTED: &str =
    "delay/loss faults (the userspace proxy) are not supported by the docker backend: \
     the nodes reach each other by container name, not through the proxy; use \
     --backend local or netns for them";

/// Runs made by this process (part of the unique project name).
static RUNS: AtomicU32 = AtomicU32::new(0);

/// Where the compose file and the image come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerOpts {
    /// Image tag the containers run (`STOCKADE_IMAGE`).
    pub image: String,
    /// The top-level compose file.
    pub compose_file: PathBuf,
    /// Build `image` from the binary under test first (`scripts/build-image --bin`; a
    /// no-op when the image already holds that binary). Off: `image` must exist.
    pub build_image: bool,
}

impl Default for DockerOpts {
    fn default() -> DockerOpts {
        DockerOpts {
            image: DEFAULT_IMAGE.into(),
            compose_file: default_compose_file(),
            build_image: true,
        }
    }
}

/// The workspace's `docker-compose.yml` (this crate lives one level below it).
pub fn default_compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("docker-compose.yml")
}

/// `scripts/build-image` next to a compose file.
pub fn build_image_script(compose_file: &Path) -> PathBuf {
    compose_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("scripts")
        .join("build-image")
}

/// Runs `prog args` with `env` set, `stdin` fed, at most `timeout`; stdout on success,
/// else an error quoting stderr.
fn run_cmd(
    prog: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    let what = || format!("`{prog} {}`", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", what()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{} stdin: {e}", what()))?;
    }
    // Readers on their own threads, so a chatty child never blocks on a full pipe.
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(stdout),
        Some(_) => Err(format!("{} failed: {}", what(), stderr.trim())),
        None => Err(format!("{} did not finish within {timeout:?}", what())),
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run_cmd("docker", args, None, &[], DOCKER_TIMEOUT)
}

/// The compose command line: `docker compose` (the plugin) if it answers, else
/// `docker-compose`.
pub fn compose_cli() -> Result<Vec<String>, String> {
    if run_cmd("docker", &["compose", "version"], None, &[], PROBE_TIMEOUT).is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if run_cmd("docker-compose", &["version"], None, &[], PROBE_TIMEOUT).is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    Err(
        "the docker backend needs Docker Compose (`docker compose` or `docker-compose`); \
         neither answers"
            .into(),
    )
}

/// Whether this machine can run the Docker backend: root, a reachable docker daemon,
/// Docker Compose, `nsenter` and `nft` (partitions). The error says what is missing.
pub fn check_available() -> Result<(), String> {
    which("docker").ok_or(
        "the docker backend needs the `docker` command, which is not installed (no \
         docker binary in PATH)",
    )?;
    run_cmd("docker", &["info"], None, &[], PROBE_TIMEOUT).map_err(|e| {
        format!("the docker backend needs a running docker daemon, which does not answer: {e}")
    })?;
    compose_cli()?;
    let uid = run_cmd("id", &["-u"], None, &[], PROBE_TIMEOUT).unwrap_or_default();
    if uid.trim() != "0" {
        return Err(
            "the docker backend needs root (partitions enter the containers' network \
             namespaces with nsenter)"
                .into(),
        );
    }
    run_cmd("nsenter", &["--version"], None, &[], PROBE_TIMEOUT)
        .map_err(|e| format!("the docker backend needs `nsenter` (util-linux): {e}"))?;
    run_cmd("nft", &["--version"], None, &[], PROBE_TIMEOUT)
        .map_err(|e| format!("the docker backend needs `nft` (run scripts/setup.sh): {e}"))?;
    Ok(())
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The runner pid in a project name `stockade-jepsen-<pid>-<k>`.
pub fn project_pid(project: &str) -> Option<u32> {
    project
        .strip_prefix(PROJECT_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The projects among `projects` that a gone runner left: ours by name, pid neither
/// `me` nor alive. Sorted, no duplicates.
pub fn stale_projects(projects: &[String], me: u32, alive: impl Fn(u32) -> bool) -> Vec<String> {
    let set: BTreeSet<&String> = projects
        .iter()
        .filter(|p| project_pid(p).is_some_and(|pid| pid != me && !alive(pid)))
        .collect();
    set.into_iter().cloned().collect()
}

/// The compose projects that own a container, network or volume now.
fn projects_in_use() -> Vec<String> {
    let format = format!("{{{{.Label \"{PROJECT_LABEL}\"}}}}");
    let filter = format!("label={PROJECT_LABEL}");
    let mut out = Vec::new();
    for args in [
        vec!["ps", "-a", "--filter", &filter, "--format", &format],
        vec!["network", "ls", "--filter", &filter, "--format", &format],
        vec!["volume", "ls", "--filter", &filter, "--format", &format],
    ] {
        out.extend(
            docker(&args)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    out
}

/// What of `project` is still there: (containers, networks, volumes).
pub fn project_leftovers(project: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let filter = format!("label={PROJECT_LABEL}={project}");
    let list = |args: &[&str]| -> Vec<String> {
        docker(args)
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    (
        list(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]),
        list(&[
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ]),
        list(&["volume", "ls", "--filter", &filter, "--format", "{{.Name}}"]),
    )
}

/// Removes every container, network and volume labelled with `project`; what is still
/// there afterwards (empty: all gone).
fn remove_project(project: &str) -> Vec<String> {
    let (cs, _, _) = project_leftovers(project);
    for c in &cs {
        // A paused container is unpaused first (an old daemon refuses to kill it).
        let _ = docker(&["unpause", c]);
        let _ = docker(&["rm", "-f", "-v", c]);
    }
    let (_, ns, _) = project_leftovers(project);
    for n in &ns {
        let _ = docker(&["network", "rm", n]);
    }
    let (_, _, vs) = project_leftovers(project);
    for v in &vs {
        let _ = docker(&["volume", "rm", "-f", v]);
    }
    let (c, n, v) = project_leftovers(project);
    c.into_iter().chain(n).chain(v).collect()
}

/// Removes the projects a killed earlier runner left behind ([`stale_projects`]): their
/// containers, networks and volumes. Returns the projects removed.
pub fn cleanup_stale() -> Vec<String> {
    let stale = stale_projects(&projects_in_use(), std::process::id(), pid_alive);
    stale
        .into_iter()
        .filter(|p| remove_project(p).is_empty())
        .collect()
}

/// `--heartbeat-ms=50` → (`STOCKADE_HEARTBEAT_MS`, `50`): the node flags as the
/// environment variables the node also reads.
pub fn flags_as_env(flags: &[&str]) -> Vec<(String, String)> {
    flags
        .iter()
        .filter_map(|f| {
            let (k, v) = f.strip_prefix("--")?.split_once('=')?;
            Some((
                format!("STOCKADE_{}", k.replace('-', "_").to_uppercase()),
                v.to_string(),
            ))
        })
        .collect()
}

/// One node's service in the run's project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub id: u64,
    /// Published loopback ports (host side).
    pub http_port: u16,
    pub grpc_port: u16,
    pub skew_ms: i64,
    /// Forms the cluster from its flags (nodes 1–3); else `init never`, joined later.
    pub initial: bool,
    /// Removed by the membership nemesis (its service stays declared so `down -v`
    /// removes its volume).
    pub retired: bool,
}

/// What the override file and the compose environment are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposePlan {
    pub project: String,
    pub image: String,
    /// Third octet of the run's /24.
    pub subnet: u32,
    pub services: Vec<ServicePlan>,
}

impl ComposePlan {
    pub fn service_name(id: u64) -> String {
        format!("node{id}")
    }

    pub fn container(&self, id: u64) -> String {
        format!("{}-node{id}", self.project)
    }

    pub fn node_ip(&self, id: u64) -> String {
        format!("{NET_BASE}.{}.{}", self.subnet, NODE_OCTET_BASE + id)
    }

    pub fn subnet_cidr(&self) -> String {
        format!("{NET_BASE}.{}.0/24", self.subnet)
    }

    /// The variables the compose file reads: the image and the published ports of the
    /// nodes it defines.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("STOCKADE_IMAGE".to_string(), self.image.clone())];
        for s in self.services.iter().filter(|s| s.id <= COMPOSE_NODES) {
            env.push((
                format!("STOCKADE_NODE{}_HTTP_PORT", s.id),
                s.http_port.to_string(),
            ));
            env.push((
                format!("STOCKADE_NODE{}_GRPC_PORT", s.id),
                s.grpc_port.to_string(),
            ));
        }
        env
    }

    pub fn spec(&self, s: &ServicePlan, log_dir: &Path) -> NodeSpec {
        let name = Self::service_name(s.id);
        NodeSpec {
            id: s.id,
            http: format!("127.0.0.1:{}", s.http_port),
            http_advertise: format!("{name}:{CONTAINER_HTTP_PORT}"),
            grpc: format!("{name}:{CONTAINER_GRPC_PORT}"),
            grpc_advertise: format!("{name}:{CONTAINER_GRPC_PORT}"),
            data_dir: PathBuf::from(format!("{}_{name}-data", self.project)),
            log: log_dir.join(format!("{name}.log")),
            initial: s.initial,
        }
    }
}

/// The override file of a run: per node its container name, static address, the fast
/// Raft timings and its clock skew; nodes above [`COMPOSE_NODES`] get a whole service
/// (the compose file stops at node5); the network gets the run's /24.
pub fn render_override(p: &ComposePlan) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut y = format!(
        "# Written by stockade-jepsen for compose project {} (Docker backend); used with\n\
         # the top-level docker-compose.yml and removed with the project.\nservices:\n",
        p.project
    );
    let mut env = vec![("RUST_LOG".to_string(), "warn".to_string())];
    env.extend(flags_as_env(NODE_FLAGS));
    for s in &p.services {
        let name = ComposePlan::service_name(s.id);
        y.push_str(&format!("  {name}:\n"));
        if s.id > COMPOSE_NODES {
            y.push_str(&format!(
                "    image: {}\n    init: true\n    restart: \"no\"\n    \
                 stop_grace_period: 10s\n    hostname: {name}\n",
                q(&p.image)
            ));
        }
        y.push_str(&format!("    container_name: {}\n", q(&p.container(s.id))));
        y.push_str("    environment:\n");
        let mut vars = env.clone();
        if s.id > COMPOSE_NODES {
            vars.push(("STOCKADE_NODE_ID".into(), s.id.to_string()));
            vars.push((
                "STOCKADE_HTTP_ADVERTISE".into(),
                format!("{name}:{CONTAINER_HTTP_PORT}"),
            ));
            vars.push((
                "STOCKADE_GRPC_ADVERTISE".into(),
                format!("{name}:{CONTAINER_GRPC_PORT}"),
            ));
            vars.push(("STOCKADE_INIT".into(), "never".into()));
        }
        vars.push(("STOCKADE_CLOCK_SKEW_MS".into(), s.skew_ms.to_string()));
        for (k, v) in vars {
            y.push_str(&format!("      {k}: {}\n", q(&v)));
        }
        if s.id > COMPOSE_NODES {
            y.push_str(&format!(
                "    ports: [{}, {}]\n    volumes: [{}]\n",
                q(&format!("127.0.0.1:{}:{CONTAINER_HTTP_PORT}", s.http_port)),
                q(&format!("127.0.0.1:{}:{CONTAINER_GRPC_PORT}", s.grpc_port)),
                q(&format!("{name}-data:/data"))
            ));
        }
        y.push_str(&format!(
            "    networks:\n      stockade:\n        ipv4_address: {}\n",
            p.node_ip(s.id)
        ));
    }
    y.push_str(&format!(
        "networks:\n  stockade:\n    ipam:\n      config:\n        - subnet: {}\n",
        p.subnet_cidr()
    ));
    let extra: Vec<&ServicePlan> = p.services.iter().filter(|s| s.id > COMPOSE_NODES).collect();
    if !extra.is_empty() {
        y.push_str("volumes:\n");
        for s in extra {
            y.push_str(&format!("  node{}-data:\n", s.id));
        }
    }
    y
}

/// The first third octet from `start` on whose `10.214.S.` appears nowhere in `used`
/// (the host's addresses and routes: every docker bridge network has both) and that was
/// not `tried` already.
pub fn pick_subnet(used: &str, start: u32, tried: &BTreeSet<u32>) -> Option<u32> {
    (0..SUBNETS)
        .map(|i| 1 + (start + i) % SUBNETS)
        .find(|s| !tried.contains(s) && !used.contains(&format!("{NET_BASE}.{s}.")))
}

/// A container's state as `docker inspect` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContainerState {
    running: bool,
    paused: bool,
    pid: u32,
    exit_code: i64,
}

/// One run's containers. Dropping it removes the whole project.
pub struct DockerCluster {
    compose: Vec<String>,
    compose_file: PathBuf,
    override_file: PathBuf,
    out: PathBuf,
    plan: ComposePlan,
    keep_data: bool,
    next_id: u64,
    added: u64,
    /// Nodes that carry our nftables table now.
    cut: BTreeSet<u64>,
    cleaned: bool,
    /// The published host ports, held while the project lives.
    leases: Vec<crate::ports::PortLease>,
}

/// Reserves a host port into `leases` and returns it.
fn lease(leases: &mut Vec<crate::ports::PortLease>) -> Result<u16, ProcError> {
    let l = super::procs::lease_port()?;
    let port = l.port();
    leases.push(l);
    Ok(port)
}

impl DockerCluster {
    /// Builds (or reuses) the image, sweeps stale projects, writes the override into
    /// `out` and starts `n` nodes: 1–3 form the cluster, the others start uninitialized
    /// (the caller joins them: their specs have `initial == false`).
    pub fn start(
        opts: &DockerOpts,
        bin: &Path,
        n: usize,
        out: &Path,
        keep_data: bool,
    ) -> Result<DockerCluster, String> {
        if !(COMPOSE_INITIAL..=NODES_MAX).contains(&n) {
            return Err(format!(
                "the docker backend runs {COMPOSE_INITIAL}..={NODES_MAX} nodes, not {n}"
            ));
        }
        check_available()?;
        if !opts.compose_file.is_file() {
            return Err(format!(
                "compose file {} not found (--compose-file)",
                opts.compose_file.display()
            ));
        }
        ensure_image(opts, bin)?;
        cleanup_stale();
        let compose = compose_cli()?;
        let pid = std::process::id();
        let k = RUNS.fetch_add(1, Ordering::Relaxed);
        let project = format!("{PROJECT_PREFIX}{pid}-{k}");
        let mut services = Vec::with_capacity(n);
        let mut leases = Vec::with_capacity(2 * n);
        for id in 1..=n as u64 {
            services.push(ServicePlan {
                id,
                http_port: lease(&mut leases).map_err(|e| e.to_string())?,
                grpc_port: lease(&mut leases).map_err(|e| e.to_string())?,
                skew_ms: 0,
                initial: id as usize <= COMPOSE_INITIAL,
                retired: false,
            });
        }
        let mut c = DockerCluster {
            compose,
            compose_file: opts.compose_file.clone(),
            override_file: out.join("docker-compose.override.yml"),
            out: out.to_path_buf(),
            plan: ComposePlan {
                project,
                image: opts.image.clone(),
                subnet: 0,
                services,
            },
            keep_data,
            next_id: n as u64 + 1,
            added: 0,
            cut: BTreeSet::new(),
            cleaned: false,
            leases,
        };
        // From here on, `c` removes whatever was made when it is dropped.
        let names: Vec<String> = (1..=n as u64).map(ComposePlan::service_name).collect();
        let mut tried = BTreeSet::new();
        let mut last = String::new();
        for _ in 0..UP_ATTEMPTS_MAX {
            let used = format!(
                "{}{}",
                run_cmd(
                    "ip",
                    &["-4", "-o", "addr", "show"],
                    None,
                    &[],
                    PROBE_TIMEOUT
                )
                .unwrap_or_default(),
                run_cmd("ip", &["-4", "route", "show"], None, &[], PROBE_TIMEOUT)
                    .unwrap_or_default()
            );
            let start = pid.wrapping_mul(7).wrapping_add(k.wrapping_mul(13)) % SUBNETS;
            let subnet = pick_subnet(&used, start, &tried)
                .ok_or("no free 10.214.x.0/24 subnet on this host")?;
            tried.insert(subnet);
            c.plan.subnet = subnet;
            c.write_override()?;
            let mut args = vec!["up", "-d", "--no-build"];
            args.extend(names.iter().map(String::as_str));
            match c.compose(&args) {
                Ok(_) => return Ok(c),
                // Another network took that pool meanwhile: down, then the next subnet.
                Err(e) if e.contains("overlap") => {
                    let _ = c.compose(&["down", "-v", "--remove-orphans"]);
                    last = e;
                }
                Err(e) => return Err(format!("starting the containers: {e}")),
            }
        }
        Err(format!("starting the containers: {last}"))
    }

    /// The project name (`stockade-jepsen-<pid>-<k>`).
    pub fn project(&self) -> &str {
        &self.plan.project
    }

    /// The override file written for this run.
    pub fn override_file(&self) -> &Path {
        &self.override_file
    }

    fn write_override(&self) -> Result<(), String> {
        std::fs::write(&self.override_file, render_override(&self.plan))
            .map_err(|e| format!("{}: {e}", self.override_file.display()))
    }

    /// Runs one compose command on this project (both files, its environment; the
    /// `five` profile when node 4 or 5 is in it).
    fn compose(&self, args: &[&str]) -> Result<String, String> {
        let (prog, pre) = self
            .compose
            .split_first()
            .ok_or("no compose command line")?;
        let file = self.compose_file.to_string_lossy().into_owned();
        let over = self.override_file.to_string_lossy().into_owned();
        let mut all: Vec<&str> = pre.iter().map(String::as_str).collect();
        all.extend(["-p", &self.plan.project, "-f", &file, "-f", &over]);
        if self.plan.services.iter().any(|s| s.id == 4 || s.id == 5) {
            all.extend(["--profile", "five"]);
        }
        all.extend(args);
        run_cmd(prog, &all, None, &self.plan.env(), DOCKER_TIMEOUT)
    }

    fn service(&mut self, id: u64) -> Result<&mut ServicePlan, ProcError> {
        self.plan
            .services
            .iter_mut()
            .find(|s| s.id == id && !s.retired)
            .ok_or(ProcError::NoNode(id))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.plan
            .services
            .iter()
            .filter(|s| !s.retired)
            .map(|s| s.id)
            .collect()
    }

    pub fn specs(&self) -> Vec<NodeSpec> {
        self.plan
            .services
            .iter()
            .filter(|s| !s.retired)
            .map(|s| self.plan.spec(s, &self.out))
            .collect()
    }

    /// Where a run's node logs (and, with `--keep-data`, the nodes' data) are saved.
    pub fn dir(&self) -> &Path {
        &self.out
    }

    fn inspect(&self, id: u64) -> Result<ContainerState, ProcError> {
        let s = docker(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.Paused}} {{.State.Pid}} {{.State.ExitCode}}",
            &self.plan.container(id),
        ])
        .map_err(ProcError::Io)?;
        let w: Vec<&str> = s.split_whitespace().collect();
        match w.as_slice() {
            [r, p, pid, code] => Ok(ContainerState {
                running: *r == "true",
                paused: *p == "true",
                pid: pid.parse().unwrap_or(0),
                exit_code: code.parse().unwrap_or(0),
            }),
            _ => Err(ProcError::Io(format!(
                "docker inspect of node {id}: unexpected {s:?}"
            ))),
        }
    }

    pub fn state(&mut self, id: u64) -> Result<ProcState, ProcError> {
        self.service(id)?;
        let st = self.inspect(id)?;
        Ok(match (st.running, st.paused) {
            (false, _) => ProcState::Down,
            (true, true) => ProcState::Paused,
            (true, false) => ProcState::Running,
        })
    }

    pub fn skew_ms(&mut self, id: u64) -> Result<i64, ProcError> {
        Ok(self.service(id)?.skew_ms)
    }

    fn wait_exited(&self, id: u64) -> Result<ContainerState, ProcError> {
        let start = Instant::now();
        loop {
            let st = self.inspect(id)?;
            if !st.running || start.elapsed() > EXIT_WAIT {
                return Ok(st);
            }
            std::thread::sleep(POLL);
        }
    }

    /// `docker kill -s KILL`, then waits until docker reports it exited. Whether a
    /// running container was killed.
    pub fn kill(&mut self, id: u64) -> Result<bool, ProcError> {
        self.service(id)?;
        let before = self.inspect(id)?;
        if !before.running {
            return Ok(false);
        }
        let name = self.plan.container(id);
        if before.paused {
            let _ = docker(&["unpause", &name]);
        }
        docker(&["kill", "-s", "KILL", &name]).map_err(ProcError::Io)?;
        let after = self.wait_exited(id)?;
        Ok(!after.running)
    }

    /// `docker stop` (SIGTERM through the container's init, SIGKILL after
    /// [`STOP_GRACE_S`]). Whether it exited by itself.
    pub fn stop(&mut self, id: u64) -> Result<bool, ProcError> {
        self.service(id)?;
        let before = self.inspect(id)?;
        if !before.running {
            return Ok(false);
        }
        let name = self.plan.container(id);
        if before.paused {
            docker(&["unpause", &name]).map_err(ProcError::Io)?;
        }
        docker(&["stop", "-t", &STOP_GRACE_S.to_string(), &name]).map_err(ProcError::Io)?;
        let after = self.wait_exited(id)?;
        Ok(!after.running && after.exit_code != EXIT_SIGKILL)
    }

    /// Starts a stopped container with this clock skew: `docker start` when the skew is
    /// unchanged, else the container is recreated with the new `STOCKADE_CLOCK_SKEW_MS`
    /// (same volume, same address).
    pub fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        let cur = self.service(id)?.skew_ms;
        if cur == skew_ms {
            docker(&["start", &self.plan.container(id)]).map_err(ProcError::Io)?;
            return Ok(());
        }
        self.service(id)?.skew_ms = skew_ms;
        self.write_override().map_err(ProcError::Io)?;
        let name = ComposePlan::service_name(id);
        let r = self.compose(&[
            "up",
            "-d",
            "--no-build",
            "--no-deps",
            "--force-recreate",
            &name,
        ]);
        if let Err(e) = r {
            return Err(ProcError::Io(format!("recreate node {id}: {e}")));
        }
        // The skew is in the new container's environment, or the restart failed.
        let want = format!("STOCKADE_CLOCK_SKEW_MS={skew_ms}");
        let env = docker(&[
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &self.plan.container(id),
        ])
        .map_err(ProcError::Io)?;
        if !env.lines().any(|l| l.trim() == want) {
            return Err(ProcError::Io(format!(
                "node {id} was recreated without {want}"
            )));
        }
        Ok(())
    }

    /// `docker pause`. Whether a running container was paused.
    pub fn pause(&mut self, id: u64) -> Result<bool, ProcError> {
        if self.state(id)? != ProcState::Running {
            return Ok(false);
        }
        docker(&["pause", &self.plan.container(id)]).map_err(ProcError::Io)?;
        Ok(self.state(id)? == ProcState::Paused)
    }

    /// `docker unpause`. Whether a paused container was resumed.
    pub fn resume(&mut self, id: u64) -> Result<bool, ProcError> {
        if self.state(id)? != ProcState::Paused {
            return Ok(false);
        }
        docker(&["unpause", &self.plan.container(id)]).map_err(ProcError::Io)?;
        Ok(self.state(id)? == ProcState::Running)
    }

    /// Starts a fresh node (next unused id, empty volume, `init never`): it waits to be
    /// added with the admin API.
    pub fn add_node(&mut self) -> Result<NodeSpec, ProcError> {
        if self.added >= ADDED_NODES_MAX {
            return Err(ProcError::Io(format!(
                "{ADDED_NODES_MAX} nodes added already"
            )));
        }
        let id = self.next_id;
        if id > NODE_ID_MAX {
            return Err(ProcError::Io(format!("node id {id} > {NODE_ID_MAX}")));
        }
        self.next_id += 1;
        self.added += 1;
        let s = ServicePlan {
            id,
            http_port: lease(&mut self.leases)?,
            grpc_port: lease(&mut self.leases)?,
            skew_ms: 0,
            initial: false,
            retired: false,
        };
        self.plan.services.push(s.clone());
        self.write_override().map_err(ProcError::Io)?;
        let name = ComposePlan::service_name(id);
        self.compose(&["up", "-d", "--no-build", "--no-deps", &name])
            .map_err(|e| ProcError::Io(format!("start node {id}: {e}")))?;
        Ok(self.plan.spec(&s, &self.out))
    }

    /// Removes an added node's container (its volume goes with the project).
    pub fn retire(&mut self, id: u64) -> Result<(), ProcError> {
        self.service(id)?;
        self.save_log(id);
        let name = self.plan.container(id);
        let _ = docker(&["unpause", &name]);
        docker(&["rm", "-f", &name]).map_err(ProcError::Io)?;
        self.service(id)?.retired = true;
        Ok(())
    }

    fn pid(&self, id: u64) -> Option<u32> {
        self.inspect(id).ok().filter(|s| s.running).map(|s| s.pid)
    }

    fn nsenter_nft(&self, id: u64, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("node {id}'s container is not running"))?
            .to_string();
        let mut all = vec!["-t", pid.as_str(), "-n", "nft"];
        all.extend(args);
        run_cmd("nsenter", &all, stdin, &[], DOCKER_TIMEOUT)
    }

    /// Applies a grudge: node `n`'s container drops all traffic to and from the
    /// containers of `grudge[n]`. Replaces any earlier partition.
    pub fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        self.heal()?;
        let mut notes = Vec::new();
        for (&node, cut) in grudge {
            if cut.is_empty() {
                continue;
            }
            if !self.ids().contains(&node) {
                return Err(format!("no container for node {node}"));
            }
            let addrs: Vec<String> = cut.iter().map(|&p| self.plan.node_ip(p)).collect();
            self.cut.insert(node);
            self.nsenter_nft(node, &["-f", "-"], Some(&partition_rules(&addrs)))?;
            notes.push(format!("n{node}-x-{cut:?}"));
        }
        Ok(notes.join(" "))
    }

    /// Whether node `node`'s network namespace carries our table now.
    pub fn has_rules(&self, node: u64) -> bool {
        self.nsenter_nft(node, &["list", "table", "inet", NFT_TABLE], None)
            .is_ok()
    }

    /// Removes every partition rule (a container that is down has no namespace, hence
    /// no rule: it comes back without).
    pub fn heal(&mut self) -> Result<(), String> {
        let mut errs = Vec::new();
        for node in std::mem::take(&mut self.cut) {
            if self.pid(node).is_none() {
                continue;
            }
            if let Err(e) = self.nsenter_nft(node, &["delete", "table", "inet", NFT_TABLE], None) {
                if !e.contains("No such file") && self.pid(node).is_some() {
                    errs.push(e);
                    self.cut.insert(node);
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// The last lines of a node's log, for error messages.
    pub fn log_tail(&self, id: u64, max_bytes: usize) -> String {
        let s = match run_cmd(
            "docker",
            &["logs", "--tail", LOG_TAIL_LINES, &self.plan.container(id)],
            None,
            &[],
            DOCKER_TIMEOUT,
        ) {
            Ok(s) => s,
            Err(e) => e,
        };
        let mut cut = s.len().saturating_sub(max_bytes);
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.get(cut..).unwrap_or_default().to_string()
    }

    /// Writes node `id`'s container log (stdout and stderr) into `node<id>.log` in the
    /// output directory (appended: a retired node's log is saved before it goes).
    fn save_log(&self, id: u64) {
        let path = self.out.join(format!("node{id}.log"));
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        else {
            return;
        };
        let Ok(err) = file.try_clone() else { return };
        let Ok(mut child) = Command::new("docker")
            .args(["logs", &self.plan.container(id)])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
        else {
            return;
        };
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < DOCKER_TIMEOUT {
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Saves the logs (and with `keep_data` each node's `/data`) into the output
    /// directory, then removes the project: `compose down -v --remove-orphans`, then
    /// whatever still carries its label. Idempotent. What could not be removed is
    /// returned (and printed).
    pub fn cleanup(&mut self) -> Vec<String> {
        if self.cleaned {
            return Vec::new();
        }
        self.cleaned = true;
        let ids = self.ids();
        for &id in &ids {
            let name = self.plan.container(id);
            if self.state(id).ok() == Some(ProcState::Paused) {
                let _ = docker(&["unpause", &name]);
            }
            self.save_log(id);
            if self.keep_data {
                let dest = self.out.join(format!("node{id}-data"));
                let _ = docker(&["cp", &format!("{name}:/data"), &dest.to_string_lossy()]);
            }
        }
        let grace = DOWN_GRACE_S.to_string();
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", &grace]);
        let left = remove_project(&self.plan.project);
        if !left.is_empty() {
            eprintln!(
                "stockade-jepsen: could not remove {left:?} of docker project {}",
                self.plan.project
            );
        }
        left
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl ClusterControl for DockerCluster {
    fn node_ids(&self) -> Vec<u64> {
        self.ids()
    }
    fn kill(&mut self, id: u64) -> Result<bool, ProcError> {
        DockerCluster::kill(self, id)
    }
    fn stop(&mut self, id: u64) -> Result<bool, ProcError> {
        DockerCluster::stop(self, id)
    }
    fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        DockerCluster::restart(self, id, skew_ms)
    }
    fn pause(&mut self, id: u64) -> Result<bool, ProcError> {
        DockerCluster::pause(self, id)
    }
    fn resume(&mut self, id: u64) -> Result<bool, ProcError> {
        DockerCluster::resume(self, id)
    }
    fn is_down(&mut self, id: u64) -> Result<bool, ProcError> {
        Ok(self.state(id)? == ProcState::Down)
    }
    fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        DockerCluster::partition(self, grudge)
    }
    fn partitioned(&mut self, n: u64) -> bool {
        self.has_rules(n)
    }
    fn heal_partition(&mut self) -> Result<(), String> {
        self.heal()
    }
    fn link_fault(&mut self, _dests: &[u64], _f: LinkFault) -> Result<(), String> {
        Err(LINK_FAULTS_UNSUPPORTED.into())
    }
    fn heal_links(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn proxy_stats(&self) -> Option<ProxyStats> {
        None
    }
    fn verbs(&self) -> Verbs {
        Verbs::DOCKER
    }
}

/// Builds `opts.image` from `bin` with `scripts/build-image` (a no-op when the image
/// already holds that binary), or, with `build_image` off, checks that it exists.
pub fn ensure_image(opts: &DockerOpts, bin: &Path) -> Result<(), String> {
    if !opts.build_image {
        return docker(&["image", "inspect", &opts.image])
            .map(|_| ())
            .map_err(|_| {
                format!(
                    "image {} not found; build it with `scripts/build-image --bin {} --tag {}` \
                     (no registry: nothing is pulled)",
                    opts.image,
                    bin.display(),
                    opts.image
                )
            });
    }
    if !bin.is_file() {
        return Err(format!("stockade binary {} not found", bin.display()));
    }
    let script = build_image_script(&opts.compose_file);
    if !script.is_file() {
        return Err(format!(
            "{} not found (the image is built with it)",
            script.display()
        ));
    }
    let script = script.to_string_lossy().into_owned();
    let bin = bin.to_string_lossy().into_owned();
    run_cmd(
        "bash",
        &[&script, "--bin", &bin, "--tag", &opts.image],
        None,
        &[],
        BUILD_TIMEOUT,
    )
    .map(|_| ())
    .map_err(|e| format!("building image {}: {e}", opts.image))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ids: &[u64]) -> ComposePlan {
        ComposePlan {
            project: "stockade-jepsen-42-0".into(),
            image: "stockade:jepsen".into(),
            subnet: 7,
            services: ids
                .iter()
                .map(|&id| ServicePlan {
                    id,
                    http_port: 20_000 + id as u16,
                    grpc_port: 30_000 + id as u16,
                    skew_ms: if id == 2 { -250 } else { 0 },
                    initial: id <= 3,
                    retired: false,
                })
                .collect(),
        }
    }

    #[test]
    fn override_names_addresses_timings_and_skew() {
        let y = render_override(&plan(&[1, 2, 3]));
        assert!(y.contains("  node1:\n    container_name: \"stockade-jepsen-42-0-node1\"\n"));
        assert!(y.contains("ipv4_address: 10.214.7.11\n"));
        assert!(y.contains("ipv4_address: 10.214.7.13\n"));
        assert!(y.contains("- subnet: 10.214.7.0/24\n"));
        assert!(y.contains("STOCKADE_HEARTBEAT_MS: \"50\"\n"));
        assert!(y.contains("STOCKADE_ELECTION_MIN_MS: \"200\"\n"));
        assert!(y.contains("RUST_LOG: \"warn\"\n"));
        assert!(y.contains("STOCKADE_CLOCK_SKEW_MS: \"-250\"\n"));
        // The compose file's own services keep their image, ports, peers and volume.
        assert!(!y.contains("image:"), "{y}");
        assert!(!y.contains("ports:"), "{y}");
        assert!(!y.contains("STOCKADE_PEERS"), "{y}");
        assert!(!y.contains("volumes:"), "{y}");
    }

    #[test]
    fn override_defines_nodes_beyond_the_compose_file() {
        let y = render_override(&plan(&[1, 2, 3, 4, 5, 6]));
        let n6 = y.split("  node6:\n").nth(1).expect("node6 service");
        assert!(n6.contains("image: \"stockade:jepsen\"\n"));
        assert!(n6.contains("init: true\n"));
        assert!(n6.contains("STOCKADE_NODE_ID: \"6\"\n"));
        assert!(n6.contains("STOCKADE_INIT: \"never\"\n"));
        assert!(n6.contains("STOCKADE_GRPC_ADVERTISE: \"node6:50051\"\n"));
        assert!(n6.contains("ports: [\"127.0.0.1:20006:8080\", \"127.0.0.1:30006:50051\"]"));
        assert!(n6.contains("ipv4_address: 10.214.7.16\n"));
        assert!(y.ends_with("volumes:\n  node6-data:\n"), "{y}");
        // Node 5 is the compose file's: no image or ports of ours.
        let n5 = y
            .split("  node5:\n")
            .nth(1)
            .and_then(|s| s.split("  node6:\n").next());
        assert!(!n5.expect("node5").contains("image:"));
    }

    #[test]
    fn compose_env_sets_image_and_every_published_port() {
        let env = plan(&[1, 2, 3, 6]).env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("STOCKADE_IMAGE"), Some("stockade:jepsen"));
        assert_eq!(get("STOCKADE_NODE1_HTTP_PORT"), Some("20001"));
        assert_eq!(get("STOCKADE_NODE3_GRPC_PORT"), Some("30003"));
        // Node 6's ports are literal in the override, not variables of the compose file.
        assert_eq!(get("STOCKADE_NODE6_HTTP_PORT"), None);
        let compose = std::fs::read_to_string(default_compose_file()).expect("compose file");
        for (k, _) in &env {
            assert!(
                compose.contains(&format!("${{{k}:-")),
                "{k} not in the compose file"
            );
        }
    }

    #[test]
    fn specs_use_published_ports_and_service_names() {
        let p = plan(&[1, 2, 3]);
        let s = p.spec(&p.services[1], Path::new("/tmp/out"));
        assert_eq!(s.http, "127.0.0.1:20002");
        assert_eq!(s.http_advertise, "node2:8080");
        assert_eq!(s.grpc_advertise, "node2:50051");
        assert_eq!(s.log, Path::new("/tmp/out/node2.log"));
        assert!(s.initial);
    }

    #[test]
    fn node_flags_become_environment_variables() {
        let env = flags_as_env(&["--heartbeat-ms=50", "--read-timeout-ms=1500", "bogus"]);
        assert_eq!(
            env,
            vec![
                ("STOCKADE_HEARTBEAT_MS".to_string(), "50".to_string()),
                ("STOCKADE_READ_TIMEOUT_MS".to_string(), "1500".to_string())
            ]
        );
        assert_eq!(flags_as_env(NODE_FLAGS).len(), NODE_FLAGS.len());
    }

    #[test]
    fn stale_projects_are_ours_with_a_dead_runner() {
        let names: Vec<String> = [
            "stockade-jepsen-100-0",
            "stockade-jepsen-100-1",
            "stockade-jepsen-100-1",
            "stockade-jepsen-200-0",
            "stockade-jepsen-300-0",
            "stockade-jepsen-x-0",
            "main",
            "stockade",
            "other-jepsen-100-0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // 100 is dead, 200 alive, 300 is us.
        let stale = stale_projects(&names, 300, |p| p == 200);
        assert_eq!(
            stale,
            vec!["stockade-jepsen-100-0", "stockade-jepsen-100-1"]
        );
        assert_eq!(project_pid("stockade-jepsen-77-3"), Some(77));
        assert_eq!(project_pid("stockade-jepsen-"), None);
    }

    #[test]
    fn subnet_skips_used_and_tried_ones() {
        let used = "inet 10.214.5.1/24 brd\n10.214.6.0/24 dev br-1\n";
        assert_eq!(pick_subnet(used, 3, &BTreeSet::new()), Some(4));
        assert_eq!(pick_subnet(used, 4, &BTreeSet::new()), Some(7));
        assert_eq!(pick_subnet(used, 4, &BTreeSet::from([7])), Some(8));
        assert_eq!(
            pick_subnet("", SUBNETS - 1, &BTreeSet::new()),
            Some(SUBNETS)
        );
    }
}
