//! Network namespaces for real partitions (local backend, needs root).
//!
//! This module owns one run's private network: a "switch" namespace holding a bridge, one
//! namespace per node joined to that bridge by a veth pair, and one veth from the root
//! namespace into the switch for the runner's HTTP client (and the delay proxy). Addresses
//! are `10.213.S.x/24` with `S` free in the root namespace; traffic never leaves these
//! namespaces and the host. The bridge lives in its own namespace so the host's
//! `br_netfilter` / FORWARD DROP (Docker) never sees the bridged packets, and no host
//! firewall rule is touched.
//!
//! Partitions are nftables rules in a table of our own (`inet stockade_jepsen`) inside
//! each node namespace: the node drops every packet to or from the addresses of the peers
//! it must not reach. Heal deletes that table.
//!
//! Every name carries a run-unique prefix `sjep-<pid>-<k>-`; [`Netns::cleanup`] (also on
//! `Drop`) deletes every namespace and link it made. [`cleanup_stale`] removes what a
//! killed earlier run left behind (prefix `sjep-`, owner pid no longer alive). It must not
//! touch anything outside the names it made, and never the host's rules.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this suite creates.
pub const NS_PREFIX: &str = "sjep-";
/// The nftables table of our own in each node namespace.
pub const NFT_TABLE: &str = "stockade_jepsen";
/// First two octets of the private addresses.
const NET_BASE: &str = "10.213";
/// Third octets tried for a run's /24 (first free one in the root namespace wins).
const SUBNETS: u32 = 250;
/// Last octet of the runner's (host) address.
const HOST_OCTET: u64 = 1;
/// Last octet of node `id` is `NODE_OCTET_BASE + id`.
const NODE_OCTET_BASE: u64 = 10;
/// Largest node id a namespace may be made for (last octet stays < 255).
pub const NODE_ID_MAX: u64 = 200;
/// HTTP port of every node inside its own namespace.
pub const HTTP_PORT: u16 = 7000;
/// gRPC port of every node inside its own namespace.
pub const GRPC_PORT: u16 = 7001;

/// Runs made by this process (part of the unique prefix).
static RUNS: AtomicU32 = AtomicU32::new(0);

fn run_cmd(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{prog} {}: {e}", args.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{prog} stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run_cmd("ip", args, None)
}

/// Whether this machine can make namespaces and nftables rules: root, `ip netns`, `nft`.
/// The error says what is missing.
pub fn check_available() -> Result<(), String> {
    let uid = run_cmd("id", &["-u"], None).unwrap_or_default();
    if uid.trim() != "0" {
        return Err(
            "partition faults need root (network namespaces and nftables); run as root or \
             drop the partition nemesis"
                .into(),
        );
    }
    ip(&["netns", "list"]).map_err(|e| {
        format!("partition faults need `ip netns` (iproute2; run scripts/setup.sh): {e}")
    })?;
    run_cmd("nft", &["--version"], None)
        .map_err(|e| format!("partition faults need `nft` (run scripts/setup.sh): {e}"))?;
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The namespaces `ip netns list` shows.
fn list_namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Removes namespaces a killed earlier run left behind: prefix [`NS_PREFIX`], owner pid
/// (the number after the prefix) no longer alive. Kills the processes still inside them
/// (they were started by that run). Returns the names removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list_namespaces() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        kill_inside(&name);
        if ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// SIGKILLs every process inside namespace `name` (all of them ours).
fn kill_inside(name: &str) {
    for pid in ip(&["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
    {
        if pid.parse::<u32>().is_ok() {
            let _ = run_cmd("kill", &["-KILL", pid], None);
        }
    }
}

/// One run's namespaces. Dropping it removes them all.
pub struct Netns {
    prefix: String,
    subnet: u32,
    host_link: String,
    switch: String,
    nodes: BTreeMap<u64, String>,
    /// Nodes that carry our nftables table now.
    cut: BTreeSet<u64>,
    cleaned: bool,
}

impl Netns {
    /// Makes the switch, the host link and one namespace per id.
    pub fn create(ids: &[u64]) -> Result<Netns, String> {
        check_available()?;
        cleanup_stale();
        let pid = std::process::id();
        let k = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{pid}-{k}-");
        let used = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default();
        let start = (pid.wrapping_mul(7).wrapping_add(k)) % SUBNETS;
        let subnet = (0..SUBNETS)
            .map(|i| 1 + (start + i) % SUBNETS)
            .find(|s| !used.contains(&format!("{NET_BASE}.{s}.")))
            .ok_or("no free 10.213.x.0/24 subnet in the root namespace")?;
        let mut n = Netns {
            switch: format!("{prefix}sw"),
            host_link: format!("sj{pid}x{k}"),
            prefix,
            subnet,
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            cleaned: false,
        };
        // On error `n` is dropped, which removes whatever was made.
        n.make_switch()?;
        for &id in ids {
            n.add_node(id)?;
        }
        Ok(n)
    }

    fn make_switch(&mut self) -> Result<(), String> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // Bridged frames must not go through (empty, but still) netfilter in the switch.
        let _ = run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &sw,
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
            ],
            None,
        );
        let hl = self.host_link.clone();
        ip(&[
            "link", "add", &hl, "type", "veth", "peer", "name", "host", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "host", "master", "br0", "up"])?;
        let host_cidr = format!("{}/24", self.host_ip());
        ip(&["addr", "add", &host_cidr, "dev", &hl])?;
        ip(&["link", "set", &hl, "up"])?;
        Ok(())
    }

    /// Makes node `id`'s namespace, joined to the switch.
    pub fn add_node(&mut self, id: u64) -> Result<(), String> {
        if id == 0 || id > NODE_ID_MAX {
            return Err(format!("node id {id} not in 1..={NODE_ID_MAX}"));
        }
        if self.nodes.contains_key(&id) {
            return Ok(());
        }
        let ns = format!("{}n{id}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.nodes.insert(id, ns.clone());
        let v = format!("v{id}");
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &v,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ])?;
        ip(&["-n", &self.switch, "link", "set", &v, "master", "br0", "up"])?;
        let cidr = format!("{}/24", self.node_ip(id));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The runner's address on the run's network.
    pub fn host_ip(&self) -> String {
        format!("{NET_BASE}.{}.{HOST_OCTET}", self.subnet)
    }

    pub fn node_ip(&self, id: u64) -> String {
        format!("{NET_BASE}.{}.{}", self.subnet, NODE_OCTET_BASE + id)
    }

    /// Namespace name of node `id`.
    pub fn node_ns(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(String::as_str)
    }

    /// The prefix of every name of this run.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Applies a grudge: node `n` drops all traffic to and from every node in
    /// `grudge[n]`. Replaces any earlier partition. Returns the rules installed per node.
    pub fn partition(&mut self, grudge: &BTreeMap<u64, BTreeSet<u64>>) -> Result<String, String> {
        self.heal()?;
        let mut notes = Vec::new();
        for (&node, cut) in grudge {
            if cut.is_empty() {
                continue;
            }
            let ns = self
                .nodes
                .get(&node)
                .ok_or_else(|| format!("no namespace for node {node}"))?
                .clone();
            let addrs: Vec<String> = cut.iter().map(|&p| self.node_ip(p)).collect();
            let rules = partition_rules(&addrs);
            self.cut.insert(node);
            run_cmd(
                "ip",
                &["netns", "exec", &ns, "nft", "-f", "-"],
                Some(&rules),
            )?;
            notes.push(format!("n{node}-x-{cut:?}"));
        }
        Ok(notes.join(" "))
    }

    /// Whether node `node`'s namespace carries our table now (the partition is in place).
    pub fn has_rules(&self, node: u64) -> bool {
        let Some(ns) = self.nodes.get(&node) else {
            return false;
        };
        run_cmd(
            "ip",
            &[
                "netns", "exec", ns, "nft", "list", "table", "inet", NFT_TABLE,
            ],
            None,
        )
        .is_ok()
    }

    /// Removes every partition rule.
    pub fn heal(&mut self) -> Result<(), String> {
        let mut errs = Vec::new();
        for node in std::mem::take(&mut self.cut) {
            let Some(ns) = self.nodes.get(&node) else {
                continue;
            };
            if let Err(e) = run_cmd(
                "ip",
                &[
                    "netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE,
                ],
                None,
            ) {
                // Gone already (no such table) is healed; anything else is not.
                if !e.contains("No such file") {
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

    /// Removes every namespace and link of this run (idempotent). Processes inside must
    /// have been stopped by their owner first; any left are killed.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for ns in self.nodes.values() {
            kill_inside(ns);
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The nftables script of one cut node: our own table, dropping every packet from and
/// to `addrs` (the peers it must not reach). Loaded with `nft -f -` inside the node's
/// network namespace; heal deletes the table.
pub fn partition_rules(addrs: &[String]) -> String {
    let set = addrs.join(", ");
    format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip saddr {{ {set} }} drop\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
         \t\tip daddr {{ {set} }} drop\n\t}}\n}}\n"
    )
}

/// The grudge of a partition into `groups`: each node cuts every node outside its group.
pub fn grudge_of_groups(groups: &[Vec<u64>]) -> BTreeMap<u64, BTreeSet<u64>> {
    let all: BTreeSet<u64> = groups.iter().flatten().copied().collect();
    let mut g = BTreeMap::new();
    for grp in groups {
        let mine: BTreeSet<u64> = grp.iter().copied().collect();
        for &n in grp {
            g.insert(n, all.difference(&mine).copied().collect());
        }
    }
    g
}

/// Bridge: two halves that share one node (`ids` in order; the middle one sees all).
pub fn grudge_bridge(ids: &[u64]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mid = ids.len() / 2;
    let left: BTreeSet<u64> = ids.iter().take(mid).copied().collect();
    let right: BTreeSet<u64> = ids.iter().skip(mid + 1).copied().collect();
    let mut g = BTreeMap::new();
    for &n in &left {
        g.insert(n, right.clone());
    }
    for &n in &right {
        g.insert(n, left.clone());
    }
    if let Some(&m) = ids.get(mid) {
        g.insert(m, BTreeSet::new());
    }
    g
}

/// Ring: each node reaches only its two neighbours in `ids` order.
pub fn grudge_ring(ids: &[u64]) -> BTreeMap<u64, BTreeSet<u64>> {
    let n = ids.len();
    let mut g = BTreeMap::new();
    for (i, &a) in ids.iter().enumerate() {
        let near: BTreeSet<u64> = [
            ids.get((i + 1) % n.max(1)).copied(),
            ids.get((i + n.saturating_sub(1)) % n.max(1)).copied(),
        ]
        .into_iter()
        .flatten()
        .collect();
        g.insert(
            a,
            ids.iter()
                .copied()
                .filter(|b| *b != a && !near.contains(b))
                .collect(),
        );
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_rules_drop_both_directions_in_our_table() {
        let r = partition_rules(&["10.0.0.2".into(), "10.0.0.3".into()]);
        assert!(r.starts_with("table inet stockade_jepsen {"), "{r}");
        assert!(r.contains("type filter hook input priority 0; policy accept;"));
        assert!(r.contains("ip saddr { 10.0.0.2, 10.0.0.3 } drop"), "{r}");
        assert!(r.contains("ip daddr { 10.0.0.2, 10.0.0.3 } drop"), "{r}");
        assert_eq!(r.matches("drop").count(), 2);
    }

    #[test]
    fn grudges_cut_what_they_should() {
        let g = grudge_of_groups(&[vec![1], vec![2, 3]]);
        assert_eq!(g[&1], BTreeSet::from([2, 3]));
        assert_eq!(g[&2], BTreeSet::from([1]));
        let b = grudge_bridge(&[1, 2, 3, 4, 5]);
        assert_eq!(b[&3], BTreeSet::new());
        assert_eq!(b[&1], BTreeSet::from([4, 5]));
        assert_eq!(b[&5], BTreeSet::from([1, 2]));
        let r = grudge_ring(&[1, 2, 3, 4, 5]);
        assert_eq!(r[&1], BTreeSet::from([3, 4]));
        assert_eq!(r[&3], BTreeSet::from([1, 5]));
    }
}
