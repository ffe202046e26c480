//! End-to-end: real node processes, driven only through the built `stockctl`.

mod common;

use common::Cluster;
use serde_json::Value;

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// A 3-node cluster formed from flags: status shows 3 members and one leader; a small
/// flash crowd never oversells, and the bench's figures match the server's statistics.
#[test]
fn three_nodes_status_and_bench_match_server_counters() {
    let c = Cluster::start_new(3);

    let st = c.ctl_json(&["status"]);
    let nodes = st["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{st}");
    let leaders: Vec<_> = nodes
        .iter()
        .filter(|n| n["status"]["role"] == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{st}");
    assert!(nodes.iter().all(|n| n["voter"] == true), "{st}");
    let table = c.ctl(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("NODE") && text.contains("leader"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");

    let bench = c.ctl_json(&[
        "bench",
        "--users",
        "2000",
        "--quantity",
        "300",
        "--concurrency",
        "32",
        "--bots",
        "0.1",
        "--duration-max",
        "20",
        "--no-progress",
    ]);
    let sale = bench["sale_id"].as_str().expect("sale id").to_string();
    assert_eq!(bench["check"]["ok"], true, "{bench}");
    let granted = u(&bench, "/units_granted");
    assert!(granted <= 300, "{bench}");
    // Enough users to sell out: every unit went, and the crowd saw sold_out.
    assert_eq!(granted, 300, "{bench}");
    assert!(u(&bench, "/rejections/sold_out") > 0, "{bench}");
    assert!(u(&bench, "/attempts") >= 2000, "{bench}");

    // The server's own view, read separately.
    let s = c.ctl_json(&["sale", "show", &sale]);
    let held = u(&s, "/counters/held");
    let awaiting = u(&s, "/counters/awaiting_payment");
    let sold = u(&s, "/counters/sold");
    let available = u(&s, "/counters/available");
    assert_eq!(available + held + awaiting + sold, 300, "{s}");
    assert!(sold <= 300);
    assert_eq!(held + awaiting + sold, granted, "{s}");
    assert_eq!(
        u(&s, "/stats/holds_granted"),
        u(&bench, "/holds_granted"),
        "{s}"
    );
    let stats = c.ctl_json(&["sale", "stats", &sale]);
    assert_eq!(stats["holds_granted"], s["stats"]["holds_granted"]);

    // A second, gRPC crowd with checkout and payment on a new sale.
    let bench = c.ctl_json(&[
        "bench",
        "--users",
        "400",
        "--quantity",
        "100",
        "--concurrency",
        "16",
        "--protocol",
        "grpc",
        "--checkout-pay",
        "--duration-max",
        "20",
    ]);
    assert_eq!(bench["check"]["ok"], true, "{bench}");
    let s = c.ctl_json(&["sale", "show", bench["sale_id"].as_str().expect("sale")]);
    assert_eq!(u(&s, "/counters/sold"), u(&bench, "/sold"), "{s} {bench}");
    assert_eq!(u(&bench, "/sold"), 100, "{bench}");

    // A third crowd whose every write (reserve, checkout, pay) shares a few
    // PurchaseStream lanes: every answer reaches its own caller (granted = the server's
    // holds, every hold checked out and paid, refusals counted), no oversell.
    let bench = c.ctl_json(&[
        "bench",
        "--users",
        "900",
        "--quantity",
        "250",
        "--concurrency",
        "48",
        "--protocol",
        "grpc-stream",
        "--checkout-pay",
        "--duration-max",
        "20",
    ]);
    assert_eq!(bench["check"]["ok"], true, "{bench}");
    assert_eq!(bench["protocol"], "grpc-stream", "{bench}");
    assert_eq!(u(&bench, "/units_granted"), 250, "{bench}");
    assert_eq!(u(&bench, "/users_done"), 900, "{bench}");
    assert_eq!(u(&bench, "/sold"), 250, "{bench}");
    assert!(u(&bench, "/rejections/sold_out") > 0, "{bench}");
    let s = c.ctl_json(&["sale", "show", bench["sale_id"].as_str().expect("sale")]);
    assert_eq!(u(&s, "/counters/held"), 0, "{s}");
    assert_eq!(u(&s, "/counters/sold"), 250, "{s}");
    assert_eq!(u(&s, "/stats/orders_paid"), 250, "{s}");
    assert_eq!(
        u(&s, "/stats/holds_granted"),
        u(&bench, "/holds_granted"),
        "{s} {bench}"
    );

    // `compact` rewrites every member's state machine, one node at a time, and the state
    // read back is what it was.
    let compacted = c.ctl_json(&["compact"]);
    let nodes = compacted.as_array().expect("one answer per node");
    let mut ids: Vec<u64> = nodes.iter().map(|n| u(n, "/node_id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "{compacted}");
    assert!(
        nodes.iter().all(|n| u(n, "/sst_bytes_after") > 0),
        "the flushed state is in tables: {compacted}"
    );
    let after = c.ctl_json(&["sale", "show", bench["sale_id"].as_str().expect("sale")]);
    assert_eq!(after["counters"], s["counters"]);
    assert_eq!(after["stats"], s["stats"]);
    let one = c.ctl_json(&["compact", "--node", "2"]);
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(u(&one[0], "/node_id"), 2, "{one}");
    let none = c.ctl(&["compact", "--node", "9"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("node 9 is not a member"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

/// Backup from a running cluster, restore into a new 3-node cluster on other ports,
/// and the sale state (counters, statistics, holds as orders, waitlist) is the same.
#[test]
fn backup_then_restore_into_a_new_cluster_keeps_the_sale_state() {
    let src = Cluster::start_new(1);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ok(src.ctl(&[
        "sale",
        "create",
        "--id",
        "drop",
        "--sku",
        "P1",
        "--name",
        "Phone",
        "--quantity",
        "3",
        "--price",
        "4990",
        "--hold-ttl-ms",
        "3600000",
    ]));
    let h1 = src.ctl_json(&["reserve", "drop", "ann", "--request-id", "r1"]);
    let h2 = src.ctl_json(&["reserve", "drop", "bob"]);
    let _h3 = src.ctl_json(&["reserve", "drop", "cy"]);
    let o1 = src.ctl_json(&["checkout", &u(&h1, "/hold_id").to_string(), "ann"]);
    ok(src.ctl(&["pay", &u(&o1, "/order_id").to_string(), "ann"]));
    let o2 = src.ctl_json(&["checkout", &u(&h2, "/hold_id").to_string(), "bob"]);
    // Sold out now: dee queues.
    let w = src.ctl_json(&["waitlist", "join", "drop", "dee"]);
    assert_eq!(u(&w, "/position"), 1);
    // Outside the source cluster's directory, which goes away with it.
    let keep = tempfile::tempdir().expect("temp dir");
    let file = keep.path().join("backup.snap");
    let file_s = file.to_str().expect("utf-8 path");
    ok(src.ctl(&["backup", file_s]));
    let before = src.ctl_json(&["sale", "show", "drop"]);
    let ann_before = src.ctl_json(&["orders", "ann"]);
    let bob_before = src.ctl_json(&["orders", "bob"]);
    drop(src);

    let mut dst = Cluster::plan(3);
    let peers = dst.peers();
    for id in 1..=3u64 {
        let dir = dst.data_dir(id);
        let r = dst.ctl_json(&[
            "restore",
            file_s,
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--node-id",
            &id.to_string(),
            "--peers",
            &peers,
        ]);
        assert_eq!(r["voters"], serde_json::json!([1, 2, 3]), "{r}");
    }
    // Restoring over an existing directory is refused (exit 2).
    let again = dst.ctl(&[
        "restore",
        file_s,
        "--data-dir",
        dst.data_dir(1).to_str().expect("utf-8"),
    ]);
    assert_eq!(again.status.code(), Some(2));
    dst.start();
    dst.wait_ready();
    let st = dst.ctl_json(&["status"]);
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(3), "{st}");

    let after = dst.ctl_json(&["sale", "show", "drop"]);
    for field in ["spec", "status", "counters", "stats"] {
        assert_eq!(before[field], after[field], "{field} differs after restore");
    }
    assert_eq!(ann_before, dst.ctl_json(&["orders", "ann"]));
    assert_eq!(bob_before, dst.ctl_json(&["orders", "bob"]));
    let w = dst.ctl_json(&["waitlist", "show", "drop", "dee"]);
    assert_eq!(w["state"], "waiting", "{w}");
    // Idempotency records came along: the same request id gets the first answer.
    let again = dst.ctl_json(&["reserve", "drop", "ann", "--request-id", "r1"]);
    assert_eq!(again, h1);
    // And the new cluster takes writes: bob cancels, dee is promoted from the waitlist.
    ok(dst.ctl(&["cancel", &u(&o2, "/order_id").to_string(), "bob"]));
    let w = dst.ctl_json(&["waitlist", "show", "drop", "dee"]);
    assert_eq!(w["state"], "promoted", "{w}");
}

/// SIGKILL of a node whose state machine lives only in memtables (apply batches bypass
/// RocksDB's WAL) and whose log was purged behind frequent snapshots: on restart it
/// installs its newest snapshot, re-applies the committed log after it, and every
/// acknowledged write is there: the crowd's holds, an idempotency record (a retried
/// request gets its original hold), and the id counter (a new hold gets a fresh id).
#[test]
fn a_killed_node_recovers_every_acknowledged_write() {
    let mut c = Cluster::plan(1);
    c.extra_args = ["--snapshot-every-entries", "20", "--log-keep-entries", "5"]
        .map(String::from)
        .to_vec();
    c.rust_log = "warn,openraft=info".into();
    c.start();
    c.wait_ready();
    let bench = c.ctl_json(&[
        "bench",
        "--users",
        "600",
        "--quantity",
        "500",
        "--concurrency",
        "4",
        "--duration-max",
        "30",
        "--no-progress",
    ]);
    assert_eq!(bench["check"]["ok"], true, "{bench}");
    let sale = bench["sale_id"].as_str().expect("sale id").to_string();
    let granted = u(&bench, "/units_granted");
    assert_eq!(granted, 500, "{bench}");
    let before = c.ctl_json(&["sale", "show", &sale]);

    let zed_sale = "crash-zed";
    let create = c.ctl(&[
        "sale",
        "create",
        "--id",
        zed_sale,
        "--sku",
        "Z1",
        "--name",
        "Zed",
        "--quantity",
        "5",
        "--price",
        "100",
        "--hold-ttl-ms",
        "3600000",
    ]);
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let zed = c.ctl_json(&["reserve", zed_sale, "zed", "--request-id", "r-zed"]);
    let zed_hold = u(&zed, "/hold_id");

    c.kill(1);
    c.restart(1);
    c.wait_ready();
    let log = c.log(1);
    assert!(
        log.contains("restore transient state machine"),
        "the restart did not install its snapshot:\n{log}"
    );

    let after = c.ctl_json(&["sale", "show", &sale]);
    assert_eq!(after["counters"], before["counters"], "{after} vs {before}");
    assert_eq!(after["stats"], before["stats"], "{after} vs {before}");
    assert_eq!(u(&after, "/counters/held"), granted, "{after}");
    // The retried request gets its original answer, not a second hold.
    let again = c.ctl_json(&["reserve", zed_sale, "zed", "--request-id", "r-zed"]);
    assert_eq!(u(&again, "/hold_id"), zed_hold, "{again}");
    let s = c.ctl_json(&["sale", "show", zed_sale]);
    assert_eq!(u(&s, "/counters/held"), 1, "{s}");
    // A new hold gets an id never handed out before the crash.
    let amy = c.ctl_json(&["reserve", zed_sale, "amy"]);
    assert!(u(&amy, "/hold_id") > zed_hold, "{amy} after {zed}");
}
