//! In-process clusters over the real tonic transport on loopback ports: forwarding,
//! failover without loss or double sale, snapshot catch-up, membership changes,
//! replicated expiry and idempotency across a leader change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use openraft::async_runtime::WatchReceiver;
use stockade_api::{Cluster, ClusterError, ReadLevel};
use stockade_node::{start, Args, NodeHandle};
use stockade_raft_store::types::*;
use stockade_raft_store::{query, Command, Response};
use tempfile::TempDir;

const SALE: &str = "drop";

fn args(id: u64, dir: &Path, http: &str, grpc: &str, extra: &[&str]) -> stockade_node::Config {
    local::node_config(id, dir, http, grpc, extra).expect("valid config")
}

struct TestCluster {
    dir: TempDir,
    nodes: BTreeMap<u64, NodeHandle>,
    extra: Vec<String>,
}

impl TestCluster {
    /// Starts `n` nodes on ephemeral ports and initializes them as one cluster.
    async fn start(n: u64, extra: &[&str]) -> TestCluster {
        // Logs for a failing run: RUST_LOG=info cargo nextest run -p stockade-node --no-capture
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = TempDir::new().unwrap();
        let nodes = local::start_cluster(n, dir.path(), extra)
            .await
            .expect("cluster");
        let nodes: BTreeMap<u64, NodeHandle> = nodes.into_iter().map(|h| (h.id, h)).collect();
        let c = TestCluster {
            dir,
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.leader().await;
        c
    }

    /// The current leader id, waiting for one.
    async fn leader(&self) -> u64 {
        for _ in 0..200 {
            for h in self.nodes.values() {
                if h.raft.is_leader() {
                    return h.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no leader elected");
    }

    fn follower(&self, leader: u64) -> u64 {
        *self.nodes.keys().find(|&&id| id != leader).unwrap()
    }

    async fn stop(&mut self, id: u64) -> (String, String) {
        let h = self.nodes.remove(&id).unwrap();
        let addrs = (h.http_addr.to_string(), h.grpc_addr.to_string());
        h.shutdown().await;
        addrs
    }

    /// Restarts a stopped node from its data directory on its old addresses.
    async fn restart(&mut self, id: u64, (http, grpc): (String, String)) {
        let extra: Vec<&str> = self.extra.iter().map(|s| s.as_str()).collect();
        let mut last = None;
        for _ in 0..40 {
            match start(args(id, self.dir.path(), &http, &grpc, &extra)).await {
                Ok(h) => {
                    self.nodes.insert(id, h);
                    return;
                }
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("restart of node {id} failed: {last:?}");
    }

    async fn create_sale(&self, via: u64, spec: SaleSpec) {
        let (r, _) = self.propose(via, Command::CreateSale(Box::new(spec))).await;
        assert_eq!(
            r,
            Response::SaleCreated {
                sale_id: SALE.into()
            }
        );
    }

    async fn propose(&self, via: u64, cmd: Command) -> (Response, u64) {
        let mut last = None;
        for _ in 0..40 {
            match self.nodes[&via].cluster.propose(cmd.clone()).await {
                Ok(s) => return (s.value, s.served_by),
                Err(e @ (ClusterError::NoLeader { .. } | ClusterError::Unknown(_))) => {
                    last = Some(e)
                }
                Err(e) => panic!("propose failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("propose never succeeded: {last:?}");
    }

    async fn shutdown(self) {
        for (_, h) in self.nodes {
            h.shutdown().await;
        }
    }
}

use stockade_node::local::{self, addr_of};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A sale that has started (stamps are wall-clock ms) and lasts an hour.
fn sale(quantity: u32, hold_ttl_ms: u64) -> SaleSpec {
    let now = now_ms();
    SaleSpec {
        id: SALE.into(),
        product: Product {
            sku: "S".into(),
            name: "Shoe".into(),
            description: String::new(),
            image_url: String::new(),
        },
        list_price_minor: 10_000,
        sale_price_minor: 5_000,
        currency: "EUR".into(),
        quantity,
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        per_user_limit: 1,
        hold_ttl_ms,
        payment_window_ms: 60_000,
    }
}

fn reserve(user: &str, req: &str) -> Command {
    Command::Reserve {
        sale_id: SALE.into(),
        user_id: user.into(),
        qty: 1,
        request_id: req.into(),
    }
}

async fn counters_on(h: &NodeHandle, level: ReadLevel) -> Counters {
    let view = h.cluster.read(level).await.unwrap().value;
    query::sale(&view, SALE).unwrap().expect("sale").counters
}

/// Waits until every node has applied the same state; returns its hash.
async fn converged(c: &TestCluster) -> u64 {
    for _ in 0..200 {
        let hashes: BTreeSet<u64> = c.nodes.values().map(state_hash).collect();
        if hashes.len() == 1 {
            return *hashes.iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for h in c.nodes.values() {
        eprintln!("node {}: {:?}", h.id, h.cluster.status().await);
    }
    panic!("replicas did not converge");
}

/// A stage histogram of a node's `/metrics`: its count, after checking its buckets are
/// cumulative, end in `+Inf` with the count, and a positive count has a positive sum.
fn stage_count(text: &str, name: &str) -> u64 {
    let line = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name}_{suffix} missing from /metrics:\n{text}"))
    };
    let count = line("count") as u64;
    let sum = line("sum");
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_string(), v.parse().ok()?))
        })
        .collect();
    assert_eq!(buckets.len(), 17, "{name}: 16 buckets and +Inf:\n{text}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets not cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last(), Some(&("+Inf".to_string(), count)), "{name}");
    assert_eq!(count > 0, sum > 0.0, "{name}: count {count}, sum {sum}");
    count
}

/// Polls `/metrics` until `ok` holds of it (the last stage of a batch is observed just
/// after its answers are sent, and the ticker keeps proposing), or fails with the text.
async fn metrics_until(h: &NodeHandle, what: &str, ok: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let text = stockade_api::Cluster::metrics_text(&*h.cluster);
        if ok(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = stockade_api::Cluster::metrics_text(&*h.cluster);
    panic!("{what} never held:\n{text}");
}

/// One unlabelled sample of a node's `/metrics`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

fn counter_total(text: &str, name: &str) -> u64 {
    metric(text, &format!("{name}_total")) as u64
}

fn state_hash(h: &NodeHandle) -> u64 {
    h.cluster.state_hash().expect("state hash")
}

/// Most bytes a request's future may take (debug build, as the tests run): each is
/// copied into its box when the request arrives (`stockade_api::grpc`, `Answering`). The
/// branches few requests take (membership changes, a unary forward, waiting for a leader
/// or for the apply to catch up) are boxed where they are awaited, so they do not set
/// the size of the ones every reservation and refusal take (`NodeCluster::on_leader`,
/// "Size"). Before that, a proposal's future alone took 4,000 bytes.
const REQUEST_FUTURE_BYTES_MAX: usize = 2_560;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_futures_every_request_takes_stay_small() {
    let c = TestCluster::start(1, &[]).await;
    let h = &c.nodes[&c.leader().await];
    let [purchase_item, reserve_item] =
        stockade_api::grpc::stream_request_future_bytes::<stockade_node::NodeCluster>();
    let sizes = [
        (
            "propose",
            std::mem::size_of_val(&h.cluster.propose(reserve("ann", "r1"))),
        ),
        (
            "linearizable read",
            std::mem::size_of_val(&h.cluster.read(ReadLevel::Linearizable)),
        ),
        (
            "stale read",
            std::mem::size_of_val(&h.cluster.read(ReadLevel::Stale)),
        ),
        ("purchase stream request", purchase_item),
        ("reserve stream request", reserve_item),
    ];
    eprintln!("future sizes (bytes): {sizes:?}");
    for (what, bytes) in sizes {
        assert!(
            bytes <= REQUEST_FUTURE_BYTES_MAX,
            "a {what} future takes {bytes} bytes (at most {REQUEST_FUTURE_BYTES_MAX})"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_reach_the_leader_and_every_replica() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);
    let (r, by) = c
        .propose(follower, Command::CreateSale(Box::new(sale(5, 60_000))))
        .await;
    assert_eq!(
        r,
        Response::SaleCreated {
            sale_id: SALE.into()
        }
    );
    assert_eq!(by, leader, "the answer names the leader that served it");
    let (r, by) = c.propose(follower, reserve("ann", "r1")).await;
    assert!(matches!(r, Response::Held(_)), "{r:?}");
    assert_eq!(by, leader);
    // A linearizable read on a follower sees the write at once.
    let got = counters_on(&c.nodes[&follower], ReadLevel::Linearizable).await;
    assert_eq!(
        got,
        Counters {
            available: 4,
            held: 1,
            awaiting_payment: 0,
            sold: 0
        }
    );
    converged(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_keeps_every_acknowledged_hold_and_never_oversells() {
    use std::sync::atomic::Ordering;
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.create_sale(leader, sale(10, 600_000)).await;
    // Through both followers, so that each has a forward stream open to the leader.
    let followers: Vec<u64> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    let mut granted = BTreeMap::new();
    for i in 0..6 {
        if let (Response::Held(g), _) = c
            .propose(
                followers[i % 2],
                reserve(&format!("u{i}"), &format!("r{i}")),
            )
            .await
        {
            granted.insert(format!("u{i}"), g.hold_id);
        }
    }
    assert_eq!(granted.len(), 6);
    let streams = |c: &TestCluster, id: u64| {
        c.nodes[&id]
            .cluster
            .stats()
            .forward_streams
            .load(Ordering::Relaxed)
    };
    for &f in &followers {
        assert_eq!(streams(&c, f), 1, "node {f} forwards on one stream");
    }
    c.stop(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    // The follower left still has its stream to the stopped leader: its proposals must
    // reach the new leader (answered, never an error from the old one).
    let survivor = c.follower(new_leader);
    // Every acknowledged hold is still there, and the stock still adds up.
    let view = c.nodes[&new_leader]
        .cluster
        .read(ReadLevel::Linearizable)
        .await
        .unwrap()
        .value;
    for (user, id) in &granted {
        let h = query::hold(&view, *id)
            .unwrap()
            .expect("acknowledged hold survives failover");
        assert_eq!(&h.user_id, user);
    }
    // More demand than stock after the failover: exactly 4 more holds, then sold out.
    let mut more = 0;
    for i in 6..14 {
        match c
            .propose(survivor, reserve(&format!("u{i}"), &format!("r{i}")))
            .await
        {
            (Response::Held(_), by) => {
                assert_eq!(by, new_leader, "served by the new leader");
                more += 1
            }
            (Response::Rejected(Reject::SoldOut), _) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(more, 4);
    assert!(
        streams(&c, survivor) >= 2,
        "a new stream, to the new leader"
    );
    let counters = counters_on(&c.nodes[&new_leader], ReadLevel::Linearizable).await;
    assert_eq!(
        counters,
        Counters {
            available: 0,
            held: 10,
            awaiting_payment: 0,
            sold: 0
        }
    );
    converged(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_leader_death_returns_the_same_hold() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.create_sale(leader, sale(3, 600_000)).await;
    let (first, _) = c.propose(leader, reserve("ann", "same-id")).await;
    let Response::Held(g) = first.clone() else {
        panic!("{first:?}")
    };
    c.stop(leader).await;
    let survivor = *c.nodes.keys().next().unwrap();
    let (again, _) = c.propose(survivor, reserve("ann", "same-id")).await;
    assert_eq!(again, first, "a retry returns the first answer");
    let counters = counters_on(&c.nodes[&survivor], ReadLevel::Linearizable).await;
    assert_eq!(counters.held, 1, "and acts no more");
    assert_eq!(g.qty, 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hold_expiry_is_replicated_and_feeds_the_waitlist_even_after_a_leader_change() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.create_sale(leader, sale(1, 600)).await;
    let (held, _) = c.propose(leader, reserve("ann", "r1")).await;
    let Response::Held(first) = held else {
        panic!("{held:?}")
    };
    let join = Command::JoinWaitlist {
        sale_id: SALE.into(),
        user_id: "bob".into(),
        qty: 1,
        request_id: "w1".into(),
    };
    assert_eq!(
        c.propose(leader, join).await.0,
        Response::WaitlistJoined {
            sale_id: SALE.into(),
            position: 1
        }
    );
    // The leader's ticker expires ann's hold; bob gets it. Every replica agrees.
    let mut promoted = None;
    for _ in 0..100 {
        let view = c.nodes[&leader]
            .cluster
            .read(ReadLevel::Stale)
            .await
            .unwrap()
            .value;
        if let query::WaitlistStatus::Promoted { hold_id } =
            query::waitlist_status(&view, SALE, "bob").unwrap()
        {
            promoted = Some(hold_id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = promoted.expect("bob was promoted by the replicated tick");
    // The leader's /metrics count what its Ticks expired (ann's hold at least; bob's may
    // have expired too by now); followers never tick. Expiry is not behind: the lag
    // gauge is there and under 10 s (the ticker looks at least every 50 ms).
    let text = metrics_until(&c.nodes[&leader], "a Tick counted", |t| {
        metric(t, "stockade_tick_expirations_sum") >= 1.0
    })
    .await;
    assert!(metric(&text, "stockade_tick_expirations_count") >= 1.0);
    assert!(metric(&text, "stockade_deadline_lag_seconds") < 10.0);
    for h in c.nodes.values().filter(|h| h.id != leader) {
        let t = stockade_api::Cluster::metrics_text(&*h.cluster);
        assert_eq!(
            metric(&t, "stockade_tick_expirations_count"),
            0.0,
            "node {}",
            h.id
        );
        assert_eq!(
            metric(&t, "stockade_deadline_lag_seconds"),
            0.0,
            "node {}",
            h.id
        );
    }
    converged(&c).await;
    for h in c.nodes.values() {
        let view = h.cluster.read(ReadLevel::Stale).await.unwrap().value;
        assert_eq!(
            query::hold(&view, first.hold_id)
                .unwrap()
                .unwrap()
                .state
                .name(),
            "expired",
            "on node {}",
            h.id
        );
    }
    // Kill the leader: bob's promoted hold must still expire, via the new leader.
    c.stop(leader).await;
    let new_leader = c.leader().await;
    let mut expired = false;
    for _ in 0..100 {
        let view = c.nodes[&new_leader]
            .cluster
            .read(ReadLevel::Stale)
            .await
            .unwrap()
            .value;
        if query::hold(&view, promoted).unwrap().unwrap().state.name() == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(expired, "the new leader's ticker expires holds too");
    let counters = counters_on(&c.nodes[&new_leader], ReadLevel::Linearizable).await;
    assert_eq!(
        counters,
        Counters {
            available: 1,
            held: 0,
            awaiting_payment: 0,
            sold: 0
        }
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_purged_log_catches_up_by_snapshot() {
    let mut c = TestCluster::start(
        3,
        &[
            "--snapshot-every-entries=40",
            "--log-keep-entries=5",
            "--batch-max=1",
        ],
    )
    .await;
    let leader = c.leader().await;
    let lagging = c.follower(leader);
    let addrs = c.stop(lagging).await;
    c.create_sale(leader, sale(1_000, 600_000)).await;
    for i in 0..150 {
        c.propose(leader, reserve(&format!("u{i}"), &format!("r{i}")))
            .await;
    }
    // The leader snapshots and purges past what the lagging node has.
    let purged = c.nodes[&leader]
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 10), "log purged")
        .await;
    assert!(
        purged.is_ok(),
        "the leader never purged its log: {purged:?}"
    );
    c.restart(lagging, addrs).await;
    let hash = converged(&c).await;
    let snap = c.nodes[&lagging].raft.metrics().borrow_watched().snapshot;
    assert!(snap.is_some(), "the lagging node installed a snapshot");
    let counters = counters_on(&c.nodes[&lagging], ReadLevel::Stale).await;
    assert_eq!(counters.held, 150);
    assert_ne!(hash, 0);
    c.shutdown().await;
}

/// An operator's snapshot asked for while another build runs (openraft then drops the
/// request) still gets one that covers what it applied: it asks again once the running
/// build is in, instead of waiting for a snapshot that nobody builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_asked_for_during_a_build_covers_what_was_applied() {
    let c = TestCluster::start(1, &["--snapshot-every-entries=1000000"]).await;
    let id = c.leader().await;
    c.create_sale(id, sale(100_000, 600_000)).await;
    // Enough state that a build takes a while (it also runs at the lowest priority).
    let crowd: Vec<_> = (0..10_000)
        .map(|i| c.propose(id, reserve(&format!("u{i}"), &format!("r{i}"))))
        .collect();
    futures::future::join_all(crowd).await;
    let h = &c.nodes[&id];
    let first = {
        let cluster = h.cluster.clone();
        tokio::spawn(async move { cluster.trigger_snapshot().await })
    };
    // Let the first build start, then apply one more entry and ask again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.propose(id, reserve("late", "r-late")).await;
    let applied = h
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .unwrap()
        .index;
    let second = tokio::time::timeout(Duration::from_secs(60), h.cluster.trigger_snapshot())
        .await
        .expect("the second snapshot request never finished");
    assert!(second.is_ok(), "second request: {second:?}");
    let snap = h.raft.metrics().borrow_watched().snapshot.unwrap().index;
    assert!(snap >= applied, "snapshot at {snap}, applied {applied}");
    assert!(first.await.unwrap().is_ok());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_a_learner_promote_it_and_remove_an_old_voter() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.create_sale(leader, sale(10, 600_000)).await;
    let n4 = start(args(4, c.dir.path(), "127.0.0.1:0", "127.0.0.1:0", &[]))
        .await
        .unwrap();
    let follower = c.follower(leader);
    // Admin calls work through any node (they are forwarded to the leader).
    c.nodes[&follower]
        .cluster
        .add_learner(4, addr_of(&n4))
        .await
        .unwrap();
    c.nodes.insert(4, n4);
    let status = c.nodes[&leader].cluster.status().await.unwrap();
    assert!(
        status.members.iter().any(|m| m.node_id == 4 && !m.voter),
        "{status:?}"
    );
    let victim = *c.nodes.keys().find(|&&id| id != leader && id != 4).unwrap();
    let voters: BTreeSet<u64> = c.nodes.keys().copied().filter(|&id| id != victim).collect();
    c.nodes[&follower]
        .cluster
        .change_membership(voters.clone(), false)
        .await
        .unwrap();
    let status = c.nodes[&leader].cluster.status().await.unwrap();
    let now_voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(now_voters, voters);
    c.stop(victim).await;
    // The cluster of {leader, other, 4} still commits, and node 4 has the data.
    c.propose(4, reserve("zed", "z1")).await;
    let counters = counters_on(&c.nodes[&4], ReadLevel::Linearizable).await;
    assert_eq!(counters.held, 1);
    c.shutdown().await;
}

/// Loopback ports reserved outside the ephemeral range until the leases are dropped
/// (see `stockade_jepsen::ports`; a port bound at 0 and released can be taken by any
/// outgoing connection before the node binds it).
fn free_ports(n: usize) -> Vec<stockade_jepsen::ports::PortLease> {
    stockade_jepsen::ports::reserve_n(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_a_cluster_from_flags_alone() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = TempDir::new().unwrap();
    let leases = free_ports(6);
    let p: Vec<u16> = leases.iter().map(|l| l.port()).collect();
    let peers: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{}=127.0.0.1:{}/127.0.0.1:{}",
                i + 1,
                p[2 * i],
                p[2 * i + 1]
            )
        })
        .collect();
    let peers_flag = format!("--peers={}", peers.join(","));
    let mut nodes = Vec::new();
    // Started in reverse: the initializing node (1, the lowest id) comes up last.
    for i in (0..3).rev() {
        let id = i as u64 + 1;
        let a = vec![
            "stockade".to_string(),
            format!("--node-id={id}"),
            format!("--data-dir={}", dir.path().join(format!("n{id}")).display()),
            format!("--grpc-listen=127.0.0.1:{}", p[2 * i]),
            format!("--http-listen=127.0.0.1:{}", p[2 * i + 1]),
            peers_flag.clone(),
            "--heartbeat-ms=50".into(),
            "--election-min-ms=200".into(),
            "--election-max-ms=400".into(),
        ];
        let cfg = Args::try_parse_from(a).unwrap().validate().unwrap();
        nodes.push(start(cfg).await.unwrap());
    }
    let n3 = &nodes[0];
    let m = n3
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.current_leader.is_some()
                    && m.membership_config.membership().voter_ids().count() == 3
            },
            "cluster",
        )
        .await
        .expect("three voters and a leader");
    assert!(m.current_leader.is_some());
    let created = n3
        .cluster
        .propose(Command::CreateSale(Box::new(sale(2, 60_000))))
        .await
        .unwrap();
    assert_eq!(
        created.value,
        Response::SaleCreated {
            sale_id: SALE.into()
        }
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uninitialized_node_is_initialized_through_the_admin_port_once() {
    let dir = TempDir::new().unwrap();
    let node = start(args(1, dir.path(), "127.0.0.1:0", "127.0.0.1:0", &[]))
        .await
        .unwrap();
    assert!(!node.raft.is_initialized().await.unwrap());
    node.cluster
        .initialize(BTreeMap::new())
        .await
        .expect("initialize alone");
    assert!(
        local::wait_leader(std::slice::from_ref(&node), Duration::from_secs(5)).await == Some(1)
    );
    let again = node.cluster.initialize(BTreeMap::new()).await;
    assert!(matches!(again, Err(ClusterError::Refused(_))), "{again:?}");
    let other: BTreeMap<u64, stockade_raft_store::NodeAddr> = BTreeMap::from([(9, addr_of(&node))]);
    let without_me = node.cluster.initialize(other).await;
    assert!(
        matches!(without_me, Err(ClusterError::Refused(_))),
        "{without_me:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crowd_through_a_follower_shares_forward_batches_and_read_rounds_without_oversell() {
    use std::sync::atomic::Ordering;
    const UNITS: u32 = 100;
    const USERS: usize = 300;
    const READS: usize = 200;
    let c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = c.follower(leader);
    c.create_sale(follower, sale(UNITS, 60_000)).await;
    let f = &c.nodes[&follower];
    let rpcs_before = f.cluster.stats().forwarded.load(Ordering::Relaxed);
    let cmds_before = f.cluster.stats().forwarded_commands.load(Ordering::Relaxed);

    let answers = futures::future::join_all((0..USERS).map(|i| {
        let cluster = f.cluster.clone();
        tokio::spawn(async move {
            cluster
                .propose(reserve(&format!("u{i}"), &format!("r{i}")))
                .await
        })
    }))
    .await;
    let mut held = 0;
    let mut sold_out = 0;
    for a in answers {
        match a
            .expect("task")
            .expect("every forwarded proposal is answered")
            .value
        {
            Response::Held(_) => held += 1,
            Response::Rejected(Reject::SoldOut) => sold_out += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((held, sold_out), (UNITS as usize, USERS - UNITS as usize));
    let rpcs = f.cluster.stats().forwarded.load(Ordering::Relaxed) - rpcs_before;
    let cmds = f.cluster.stats().forwarded_commands.load(Ordering::Relaxed) - cmds_before;
    assert_eq!(cmds, USERS as u64, "every proposal went to the leader once");
    assert!(
        rpcs < cmds,
        "{cmds} concurrent proposals should share forward RPCs, took {rpcs}"
    );
    // Every forward RPC's round trip is timed once, on the follower that sent it, and so
    // is each batch's wait for a forward slot (each batch here is one RPC).
    metrics_until(
        &c.nodes[&follower],
        "one forward timing per forward RPC",
        |t| {
            let rpcs = counter_total(t, "stockade_forwarded_requests");
            stage_count(t, "stockade_forward_duration_seconds") == rpcs
                && stage_count(t, "stockade_forward_wait_seconds") == rpcs
        },
    )
    .await;

    let rounds_before = f.cluster.stats().read_rounds.load(Ordering::Relaxed);
    let l = &c.nodes[&leader];
    let lane_calls_before = f
        .cluster
        .transport_stats()
        .lane_calls_sent
        .load(Ordering::Relaxed);
    let leader_rounds_before = l.cluster.stats().read_rounds.load(Ordering::Relaxed);
    let leader_heartbeats_before = l
        .cluster
        .transport_stats()
        .lane_calls_sent
        .load(Ordering::Relaxed);
    let leader_streams_before = l
        .cluster
        .transport_stats()
        .append_streams_opened
        .load(Ordering::Relaxed);
    let views = futures::future::join_all((0..READS).map(|_| {
        let cluster = f.cluster.clone();
        tokio::spawn(async move {
            let v = cluster.read(ReadLevel::Linearizable).await.expect("read");
            query::sale(&v.value, SALE).unwrap().expect("sale").counters
        })
    }))
    .await;
    for v in views {
        // Every read started after the last write was acknowledged: each must see it.
        assert_eq!(
            v.expect("task"),
            Counters {
                available: 0,
                held: UNITS,
                awaiting_payment: 0,
                sold: 0
            }
        );
    }
    let rounds = f.cluster.stats().read_rounds.load(Ordering::Relaxed) - rounds_before;
    assert!(
        rounds < READS as u64,
        "{READS} concurrent reads should share read-index rounds, took {rounds}"
    );
    // Each of the follower's rounds was one call on its lane to the leader (no retries
    // here), which the leader served from rounds of its own gate, each confirmed by
    // heartbeats that went on the leader's lanes, not on streams of their own.
    let lane_calls = f
        .cluster
        .transport_stats()
        .lane_calls_sent
        .load(Ordering::Relaxed)
        - lane_calls_before;
    assert_eq!(lane_calls, rounds, "one lane call per read-index round");
    let leader_rounds =
        l.cluster.stats().read_rounds.load(Ordering::Relaxed) - leader_rounds_before;
    assert!(
        (1..=rounds).contains(&leader_rounds),
        "the leader ran {leader_rounds} rounds for the follower's {rounds}"
    );
    let heartbeats = l
        .cluster
        .transport_stats()
        .lane_calls_sent
        .load(Ordering::Relaxed)
        - leader_heartbeats_before;
    assert!(
        heartbeats >= leader_rounds,
        "{leader_rounds} leader rounds, {heartbeats} heartbeats on lanes"
    );
    let streams = l
        .cluster
        .transport_stats()
        .append_streams_opened
        .load(Ordering::Relaxed)
        - leader_streams_before;
    assert_eq!(streams, 0, "heartbeats opened {streams} StreamAppend calls");
    converged(&c).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_flows_on_streams_and_every_replica_agrees() {
    use std::sync::atomic::Ordering;
    const UNITS: u32 = 40;
    const USERS: usize = 60;
    let c = TestCluster::start(3, &[]).await;
    let leader = c.leader().await;
    c.create_sale(leader, sale(UNITS, 60_000)).await;
    let l = &c.nodes[&leader];
    let answers = futures::future::join_all((0..USERS).map(|i| {
        let cluster = l.cluster.clone();
        tokio::spawn(async move {
            cluster
                .propose(reserve(&format!("u{i}"), &format!("r{i}")))
                .await
        })
    }))
    .await;
    let held = answers
        .into_iter()
        .filter(|a| {
            matches!(
                a.as_ref().expect("task").as_ref().expect("answered").value,
                Response::Held(_)
            )
        })
        .count();
    assert_eq!(held, UNITS as usize);
    converged(&c).await;

    let sent = l
        .cluster
        .transport_stats()
        .appends_sent
        .load(Ordering::Relaxed);
    let opened = l
        .cluster
        .transport_stats()
        .append_streams_opened
        .load(Ordering::Relaxed);
    assert!(
        opened >= 2,
        "one stream per follower at least, saw {opened}"
    );
    assert!(sent > 0, "the leader sent no AppendEntries on streams");
    let mut received = 0;
    for (id, n) in &c.nodes {
        if *id == leader {
            continue;
        }
        let t = n.cluster.transport_stats();
        let streamed = t.appends_received_streamed.load(Ordering::Relaxed);
        assert!(streamed > 0, "follower {id} received nothing on a stream");
        assert_eq!(
            t.appends_received_unary.load(Ordering::Relaxed),
            0,
            "follower {id} was sent unary AppendEntries"
        );
        received += streamed;
    }
    assert!(
        received <= sent,
        "followers received {received} AppendEntries, the leader sent {sent}"
    );
    // Where a node's memory is, on /metrics: the crowd's writes are in the memtables.
    let text = stockade_api::Cluster::metrics_text(&*l.cluster);
    let value = |name: &str| metric(&text, name) as u64;
    assert!(value("stockade_rocksdb_memtable_bytes") > 0);
    assert!(value("stockade_process_resident_bytes") > 0);
    let _ = value("stockade_rocksdb_block_cache_bytes");
    let _ = value("stockade_rocksdb_table_readers_bytes");
    // Whether compactions keep up: nothing delayed or stopped after a small crowd.
    let _ = value("stockade_rocksdb_l0_files");
    let _ = value("stockade_rocksdb_compaction_pending_bytes");
    assert_eq!(value("stockade_rocksdb_delayed_write_rate"), 0);
    assert_eq!(value("stockade_rocksdb_write_stopped"), 0);
    // What the WAL syncs cost: counted, timed, and the slow ones among them.
    let syncs = value("stockade_wal_syncs_total");
    assert!(syncs > 0, "the leader synced its WAL {syncs} times");
    assert!(value("stockade_wal_syncs_slow_total") <= syncs);
    let sync_s: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("stockade_wal_sync_seconds_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("stockade_wal_sync_seconds_total missing:\n{text}"));
    assert!(sync_s > 0.0, "{syncs} syncs took {sync_s} s");
    // Where the write path's time went, stage by stage: every WAL sync, every entry the
    // leader proposed (its wait for a slot and its Raft round) and the apply calls are
    // each timed once; the leader forwarded nothing.
    let text = metrics_until(l, "one timing per sync, entry and round", |t| {
        let entries = counter_total(t, "stockade_log_entries_proposed");
        stage_count(t, "stockade_wal_sync_duration_seconds")
            == counter_total(t, "stockade_wal_syncs")
            && stage_count(t, "stockade_batch_wait_seconds") == entries
            && stage_count(t, "stockade_raft_round_duration_seconds") == entries
    })
    .await;
    assert!(stage_count(&text, "stockade_raft_round_duration_seconds") > 0);
    assert!(stage_count(&text, "stockade_apply_duration_seconds") > 0);
    // Every apply call is counted once, by where it ran; a small crowd's calls are all
    // small enough for the worker (`--apply-inline-max`, default 128 commands; the
    // crowd is 60 reservations in all).
    let calls_on = |on: &str| {
        let prefix = format!("stockade_apply_calls_total{{on=\"{on}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("apply calls on {on} missing:\n{text}"))
    };
    assert!(calls_on("worker") > 0, "no apply call ran on the worker");
    assert_eq!(calls_on("blocking_pool"), 0);
    assert_eq!(stage_count(&text, "stockade_forward_duration_seconds"), 0);
    assert_eq!(stage_count(&text, "stockade_forward_wait_seconds"), 0);
    c.shutdown().await;
}
