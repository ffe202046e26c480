//! Test harness: real `stockade` node processes on free loopback ports, each with its own
//! temporary data directory, driven only through the built `stockctl` binary. Every
//! child process is killed when its [`Cluster`] is dropped, also on panic.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader and answer on every node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `stockade` binary next to this test binary, built once if missing.
pub fn stockade_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BIN.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/debug/deps/<test> -> target/debug/stockade
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory")?;
        let bin = dir.join("stockade");
        if bin.exists() {
            return Ok(bin);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "stockade-node", "--bin", "stockade"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() || !bin.exists() {
            return Err(format!("building the stockade binary failed ({status})"));
        }
        Ok(bin)
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A loopback port reserved until the lease is dropped, outside the kernel's ephemeral
/// range (see `stockade_jepsen::ports`: a port found by binding port 0 and releasing it
/// can be taken by any outgoing connection before the node binds it).
pub fn free_port() -> stockade_jepsen::ports::PortLease {
    stockade_jepsen::ports::reserve().expect("reserve a loopback port")
}

pub struct NodeSpec {
    pub id: u64,
    pub http: String,
    pub grpc: String,
}

/// A cluster of node processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeSpec>,
    /// Flags added to every node's command line.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` of the nodes (`warn` unless set).
    pub rust_log: String,
    /// `children[i]` runs `nodes[i]` (`None` while stopped).
    children: Vec<Option<Child>>,
    /// The nodes' ports, held while the cluster lives.
    _leases: Vec<stockade_jepsen::ports::PortLease>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// `n` nodes on fresh ports, not started.
    pub fn plan(n: u64) -> Cluster {
        let mut leases = Vec::new();
        let nodes = (1..=n)
            .map(|id| {
                let (h, g) = (free_port(), free_port());
                let spec = NodeSpec {
                    id,
                    http: format!("127.0.0.1:{}", h.port()),
                    grpc: format!("127.0.0.1:{}", g.port()),
                };
                leases.extend([h, g]);
                spec
            })
            .collect();
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            nodes,
            extra_args: Vec::new(),
            rust_log: "warn".into(),
            children: Vec::new(),
            _leases: leases,
        }
    }

    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}/{}", n.id, n.grpc, n.http))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Starts every node with `--peers` (the lowest id initializes the cluster, unless
    /// the data directories already hold a restored state).
    pub fn start(&mut self) {
        self.children = (0..self.nodes.len()).map(|i| Some(self.spawn(i))).collect();
    }

    /// Node `nodes[i]` as a process; its output (the log is on stdout) goes to
    /// `node<id>.log` (truncated).
    fn spawn(&self, i: usize) -> Child {
        let n = &self.nodes[i];
        let log = std::fs::File::create(self.dir.path().join(format!("node{}.log", n.id)))
            .expect("log file");
        Command::new(stockade_bin())
            .args(["--node-id", &n.id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(n.id))
            .args(["--http-listen", &n.http, "--grpc-listen", &n.grpc])
            .args(["--peers", &self.peers()])
            .args(&self.extra_args)
            .env("RUST_LOG", &self.rust_log)
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("spawn stockade")
    }

    /// SIGKILL of node `id` (no shutdown of any kind), waited for.
    pub fn kill(&mut self, id: u64) {
        let i = self.index(id);
        if let Some(mut c) = self.children[i].take() {
            c.kill().expect("kill node");
            c.wait().expect("wait for killed node");
        }
    }

    /// Starts node `id` again on its data directory and ports.
    pub fn restart(&mut self, id: u64) {
        let i = self.index(id);
        assert!(self.children[i].is_none(), "node {id} is running");
        self.children[i] = Some(self.spawn(i));
    }

    /// What node `id` wrote since it was last started.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    fn index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn start_new(n: u64) -> Cluster {
        let mut c = Cluster::plan(n);
        c.start();
        c.wait_ready();
        c
    }

    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.http))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs stockctl against this cluster.
    pub fn ctl(&self, args: &[&str]) -> Output {
        stockctl(&self.endpoints(), args)
    }

    /// Runs stockctl and parses its JSON output, asserting success.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "stockctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stockctl {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Waits until `status` shows every node answering and one leader they agree on.
    pub fn wait_ready(&self) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < READY_TIMEOUT {
            let out = self.ctl(&["status", "--output", "json", "--timeout", "2000"]);
            if out.status.success() {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                    let leader = v["leader_id"].as_u64();
                    let all_agree = nodes.len() == self.nodes.len()
                        && nodes.iter().all(|n| {
                            n["status"]["leader_id"].as_u64() == leader && leader.is_some()
                        });
                    if all_agree {
                        return;
                    }
                }
                last = String::from_utf8_lossy(&out.stdout).to_string();
            } else {
                last = String::from_utf8_lossy(&out.stderr).to_string();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cluster not ready within {READY_TIMEOUT:?}: {last}");
    }
}

/// Runs the built stockctl with `--endpoints`.
pub fn stockctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stockctl"))
        .args(args)
        .env("STOCKADE_ENDPOINTS", endpoints)
        .env_remove("STOCKADE_OUTPUT")
        .env_remove("STOCKADE_TIMEOUT_MS")
        .stdin(Stdio::null())
        .output()
        .expect("run stockctl")
}
