//! Cluster control, local backend: `stockade` node processes on loopback, or each in its
//! own network namespace ([`super::netns`]), optionally behind the delay/loss proxy
//! ([`super::proxy`]).
//!
//! This module owns starting N real `stockade` processes (free loopback ports, or fixed
//! ports on per-namespace addresses), each with its own data directory under one temporary
//! directory, forming one cluster from `--peers` (whose Raft addresses are the proxy's
//! listeners when the proxy is on); adding a fresh node later (`--init never`, for the
//! membership nemesis); and the process-level faults: stop (SIGTERM), kill -9, restart
//! from the data dir (optionally with `--clock-skew-ms`), pause / resume (SIGSTOP /
//! SIGCONT). Partitions and link faults are delegated to the namespaces and the proxy it
//! owns.
//!
//! Every child is killed (SIGCONT first, then SIGKILL) and reaped when the
//! [`ProcessCluster`] is dropped: on normal exit, on error and on panic. It must not talk
//! to the nodes' APIs (that is [`super::client`]) and must not touch any process it did
//! not start. A SIGKILL of the runner itself cannot be caught: its children then outlive
//! it (not handled: no `PR_SET_PDEATHSIG` without unsafe code).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a SIGTERM'd node may take to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often an exiting child is polled.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Most nodes one cluster may have.
pub const NODES_MAX: usize = 9;
/// Most nodes added over one run (membership nemesis).
pub const ADDED_NODES_MAX: u64 = 32;

/// Fast Raft timings for loopback (as `stockade_node::local` uses) and short request
/// timeouts so a paused leader turns into `info` ops quickly.
pub const NODE_FLAGS: &[&str] = &[
    "--heartbeat-ms=50",
    "--election-min-ms=200",
    "--election-max-ms=400",
    "--propose-timeout-ms=2000",
    "--forward-timeout-ms=2500",
    "--read-timeout-ms=1500",
];

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("stockade binary {0} not found")]
    NoBinary(PathBuf),
    #[error("{0}")]
    Io(String),
    #[error("no node {0}")]
    NoNode(u64),
    #[error("cluster size {0} not in 1..={NODES_MAX}")]
    Size(usize),
}

fn io(what: &str, e: impl std::fmt::Display) -> ProcError {
    ProcError::Io(format!("{what}: {e}"))
}

/// A node's fixed identity: id, addresses and data dir (kept across restarts).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    /// HTTP address the runner's clients use (listen address here; the published
    /// loopback port with Docker).
    pub http: String,
    /// HTTP address the node advertises to the cluster (`api_addr` when it is added).
    pub http_advertise: String,
    /// gRPC listen address.
    pub grpc: String,
    /// gRPC address other nodes use (the proxy's listener when the proxy is on).
    pub grpc_advertise: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// One of the nodes the cluster was started with (else added later, `--init never`).
    pub initial: bool,
}

/// How the cluster's network is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterOpts {
    /// Each node in its own network namespace (partitions possible; needs root).
    pub netns: bool,
    /// Raft/gRPC traffic through the delay/loss proxy.
    pub proxy: bool,
    /// Seed of the proxy's loss rolls.
    pub seed: u64,
}

/// What a node process is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    Paused,
    Down,
}

struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    paused: bool,
    skew_ms: i64,
}

/// N `stockade` processes. Dropping it kills and reaps every child, then removes the
/// proxy and the namespaces.
pub struct ProcessCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    added: u64,
    /// The nodes' loopback ports, held while the cluster lives (a killed node's port
    /// stays reserved for its restart).
    leases: Vec<crate::ports::PortLease>,
    // Dropped after the children are gone (Drop kills them first), in this order.
    proxy: Option<super::proxy::Proxy>,
    netns: Option<super::netns::Netns>,
    dir: tempfile::TempDir,
}

/// A loopback port held for the cluster's lifetime (see [`crate::ports`]).
pub(crate) fn lease_port() -> Result<crate::ports::PortLease, ProcError> {
    crate::ports::reserve().map_err(|e| io("reserve a loopback port", e))
}

impl ProcessCluster {
    /// Plans `n` nodes on loopback and starts them all.
    pub fn start(bin: &Path, n: usize, keep_dir: bool) -> Result<ProcessCluster, ProcError> {
        Self::start_with(bin, n, keep_dir, ClusterOpts::default())
    }

    /// Plans `n` nodes (namespaces and proxy as `opts` says) and starts them all. With the
    /// proxy on it must be called inside a tokio runtime.
    pub fn start_with(
        bin: &Path,
        n: usize,
        keep_dir: bool,
        opts: ClusterOpts,
    ) -> Result<ProcessCluster, ProcError> {
        if n == 0 || n > NODES_MAX {
            return Err(ProcError::Size(n));
        }
        if !bin.is_file() {
            return Err(ProcError::NoBinary(bin.to_path_buf()));
        }
        let mut dir = tempfile::Builder::new()
            .prefix("stockade-jepsen-")
            .tempdir()
            .map_err(|e| io("temp dir", e))?;
        if keep_dir {
            dir.disable_cleanup(true);
        }
        let ids: Vec<u64> = (1..=n as u64).collect();
        let netns = if opts.netns {
            Some(super::netns::Netns::create(&ids).map_err(ProcError::Io)?)
        } else {
            None
        };
        let proxy = if opts.proxy {
            let host = netns
                .as_ref()
                .map(|x| x.host_ip())
                .unwrap_or_else(|| "127.0.0.1".into());
            let rt = tokio::runtime::Handle::try_current()
                .map_err(|e| io("the proxy needs a tokio runtime", e))?;
            Some(super::proxy::Proxy::new(rt, &host, opts.seed))
        } else {
            None
        };
        let mut c = ProcessCluster {
            bin: bin.to_path_buf(),
            nodes: Vec::with_capacity(n),
            added: 0,
            leases: Vec::new(),
            proxy,
            netns,
            dir,
        };
        for &id in &ids {
            let spec = c.plan(id, true)?;
            c.nodes.push(Node {
                spec,
                child: None,
                paused: false,
                skew_ms: 0,
            });
        }
        for id in c.ids() {
            c.spawn(id, 0)?;
        }
        Ok(c)
    }

    /// Addresses and paths of node `id` (its namespace made if namespaces are on).
    fn plan(&mut self, id: u64, initial: bool) -> Result<NodeSpec, ProcError> {
        let (http, grpc) = match self.netns.as_mut() {
            Some(ns) => {
                ns.add_node(id).map_err(ProcError::Io)?;
                let ip = ns.node_ip(id);
                (
                    format!("{ip}:{}", super::netns::HTTP_PORT),
                    format!("{ip}:{}", super::netns::GRPC_PORT),
                )
            }
            None => {
                let (h, g) = (lease_port()?, lease_port()?);
                let addrs = (
                    format!("127.0.0.1:{}", h.port()),
                    format!("127.0.0.1:{}", g.port()),
                );
                self.leases.extend([h, g]);
                addrs
            }
        };
        if let (Some(p), Some(ns)) = (&self.proxy, &self.netns) {
            // Each node connects from its namespace address: per-link faults can tell it.
            if let Ok(ip) = ns.node_ip(id).parse() {
                p.register_source(ip, id);
            }
        }
        let grpc_advertise = match &self.proxy {
            Some(p) => {
                let target = grpc
                    .parse()
                    .map_err(|e| io(&format!("address {grpc}"), e))?;
                p.add_dest(id, target).map_err(ProcError::Io)?.to_string()
            }
            None => grpc.clone(),
        };
        Ok(NodeSpec {
            id,
            http_advertise: http.clone(),
            http,
            grpc,
            grpc_advertise,
            data_dir: self.dir.path().join(format!("node{id}")),
            log: self.dir.path().join(format!("node{id}.log")),
            initial,
        })
    }

    /// Starts a fresh node (next free id, empty data dir, `--init never`): it waits to be
    /// added with the admin API. Its spec.
    pub fn add_node(&mut self) -> Result<NodeSpec, ProcError> {
        if self.added >= ADDED_NODES_MAX {
            return Err(ProcError::Io(format!(
                "{ADDED_NODES_MAX} nodes added already"
            )));
        }
        let id = self.nodes.iter().map(|n| n.spec.id).max().unwrap_or(0) + 1;
        let spec = self.plan(id, false)?;
        self.added += 1;
        self.nodes.push(Node {
            spec: spec.clone(),
            child: None,
            paused: false,
            skew_ms: 0,
        });
        self.spawn(id, 0)?;
        Ok(spec)
    }

    /// Kills an added node and forgets it (its data dir stays until the run ends).
    pub fn retire(&mut self, id: u64) -> Result<(), ProcError> {
        self.kill(id)?;
        self.nodes.retain(|n| n.spec.id != id);
        Ok(())
    }

    /// The network namespaces, if on.
    pub fn netns(&mut self) -> Option<&mut super::netns::Netns> {
        self.netns.as_mut()
    }

    /// The delay/loss proxy, if on.
    pub fn proxy(&self) -> Option<&super::proxy::Proxy> {
        self.proxy.as_ref()
    }

    /// Partitions the nodes as `grudge` says (namespaces only).
    pub fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        match self.netns.as_mut() {
            Some(n) => n.partition(grudge),
            None => Err("partitions need the namespace backend (--backend netns)".into()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.spec.id).collect()
    }

    pub fn specs(&self) -> Vec<NodeSpec> {
        self.nodes.iter().map(|n| n.spec.clone()).collect()
    }

    /// The initial cluster, as `--peers` gives it.
    fn peers(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.spec.initial)
            .map(|n| format!("{}={}/{}", n.spec.id, n.spec.grpc_advertise, n.spec.http))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: u64) -> Result<&mut Node, ProcError> {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.id == id)
            .ok_or(ProcError::NoNode(id))
    }

    pub fn state(&mut self, id: u64) -> Result<ProcState, ProcError> {
        let n = self.node(id)?;
        let alive = match n.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        };
        Ok(match (alive, n.paused) {
            (false, _) => ProcState::Down,
            (true, true) => ProcState::Paused,
            (true, false) => ProcState::Running,
        })
    }

    pub fn skew_ms(&mut self, id: u64) -> Result<i64, ProcError> {
        Ok(self.node(id)?.skew_ms)
    }

    fn spawn(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        let peers = self.peers();
        let bin = self.bin.clone();
        let ns = self
            .netns
            .as_ref()
            .and_then(|x| x.node_ns(id).map(str::to_string));
        let n = self.node(id)?;
        if n.child.is_some() {
            return Err(ProcError::Io(format!("node {id} is already running")));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.spec.log)
            .map_err(|e| io("node log", e))?;
        let mut cmd = match &ns {
            // `ip netns exec` execs the binary: the child's pid is the node's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if n.spec.initial {
            cmd.arg(format!("--peers={peers}")).arg("--init=auto");
        } else {
            cmd.arg("--init=never");
        }
        let child = cmd
            .arg(format!("--node-id={id}"))
            .arg("--data-dir")
            .arg(&n.spec.data_dir)
            .arg(format!("--http-listen={}", n.spec.http))
            .arg(format!("--grpc-listen={}", n.spec.grpc))
            .arg(format!("--grpc-advertise={}", n.spec.grpc_advertise))
            .arg(format!("--http-advertise={}", n.spec.http))
            .arg(format!("--clock-skew-ms={skew_ms}"))
            .args(NODE_FLAGS)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| io(&format!("spawn {}", bin.display()), e))?;
        n.child = Some(child);
        n.paused = false;
        n.skew_ms = skew_ms;
        Ok(())
    }

    /// Starts a stopped node from its data dir, with this clock skew.
    pub fn restart(&mut self, id: u64, skew_ms: i64) -> Result<(), ProcError> {
        self.spawn(id, skew_ms)
    }

    fn signal(&mut self, id: u64, sig: &str) -> Result<bool, ProcError> {
        let n = self.node(id)?;
        let Some(c) = n.child.as_mut() else {
            return Ok(false);
        };
        if !matches!(c.try_wait(), Ok(None)) {
            return Ok(false);
        }
        // Our own child, alive and not yet reaped: its pid cannot have been reused.
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| io("run kill", e))?;
        Ok(st.success())
    }

    /// kill -9 and reap. Returns whether a live process was killed.
    pub fn kill(&mut self, id: u64) -> Result<bool, ProcError> {
        let n = self.node(id)?;
        let Some(mut c) = n.child.take() else {
            return Ok(false);
        };
        n.paused = false;
        let was_alive = matches!(c.try_wait(), Ok(None));
        let _ = c.kill();
        let _ = c.wait();
        Ok(was_alive)
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns whether it exited by itself.
    pub fn stop(&mut self, id: u64) -> Result<bool, ProcError> {
        if self.state(id)? == ProcState::Paused {
            self.resume(id)?;
        }
        if !self.signal(id, "TERM")? {
            self.kill(id)?;
            return Ok(false);
        }
        let start = Instant::now();
        let n = self.node(id)?;
        let mut graceful = false;
        if let Some(c) = n.child.as_mut() {
            while start.elapsed() < STOP_GRACE {
                if let Ok(Some(_)) = c.try_wait() {
                    graceful = true;
                    break;
                }
                std::thread::sleep(EXIT_POLL);
            }
        }
        self.kill(id)?;
        Ok(graceful)
    }

    /// SIGSTOP. Returns whether a running process was paused.
    pub fn pause(&mut self, id: u64) -> Result<bool, ProcError> {
        if self.state(id)? != ProcState::Running {
            return Ok(false);
        }
        let ok = self.signal(id, "STOP")?;
        self.node(id)?.paused = ok;
        Ok(ok)
    }

    /// SIGCONT. Returns whether a paused process was resumed.
    pub fn resume(&mut self, id: u64) -> Result<bool, ProcError> {
        if self.state(id)? != ProcState::Paused {
            return Ok(false);
        }
        let ok = self.signal(id, "CONT")?;
        if ok {
            self.node(id)?.paused = false;
        }
        Ok(ok)
    }

    /// The last `max_bytes` of a node's log, for error messages.
    pub fn log_tail(&self, id: u64, max_bytes: usize) -> String {
        let Some(n) = self.nodes.iter().find(|n| n.spec.id == id) else {
            return String::new();
        };
        let s = std::fs::read_to_string(&n.spec.log).unwrap_or_default();
        let cut = s.len().saturating_sub(max_bytes);
        s.get(cut..).unwrap_or_default().to_string()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if n.paused {
                    let _ = Command::new("kill")
                        .arg("-CONT")
                        .arg(c.id().to_string())
                        .status();
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
