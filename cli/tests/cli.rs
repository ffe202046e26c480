//! The binary's contract without a cluster: help, usage errors, exit codes, one-line
//! errors with the server's code, and failover, against tiny fake HTTP servers.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::stockctl;

/// A fake node: answers every request with `status` and `body`; counts requests.
fn fake(status: &'static str, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 0\r\n\
                 x-stockade-served-by: 7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (addr, hits)
}

/// An address no one listens on, reserved (so no one starts to) while the lease lives.
fn closed_port() -> (String, stockade_jepsen::ports::PortLease) {
    let l = common::free_port();
    (format!("http://127.0.0.1:{}", l.port()), l)
}

#[test]
fn help_documents_exit_codes_and_succeeds() {
    let out = stockctl("http://127.0.0.1:1", &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Exit codes",
        "bench",
        "restore",
        "--endpoints",
        "STOCKADE_ENDPOINTS",
    ] {
        assert!(text.contains(want), "help lacks {want}: {text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["no-such-command"],
        vec!["reserve"],
        vec!["--timeout", "0", "status"],
        vec!["--endpoints", "ftp://x", "status"],
        vec!["bench", "--bots", "2"],
    ] {
        let out = stockctl("http://127.0.0.1:1", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn unreachable_cluster_exits_2_with_one_line() {
    let (closed, _lease) = closed_port();
    let out = stockctl(&closed, &["--timeout", "500", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: unreachable"), "{err}");
}

#[test]
fn server_rejection_exits_1_with_code_and_message() {
    let (addr, _) = fake(
        "409 Conflict",
        r#"{"code":"sold_out","message":"sale drop is sold out"}"#,
    );
    let out = stockctl(&addr, &["reserve", "drop", "ann", "--request-id", "r-1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "error: sold_out: sale drop is sold out");
}

#[test]
fn generated_request_id_is_printed() {
    let (addr, _) = fake(
        "201 Created",
        r#"{"hold_id":5,"sale_id":"drop","qty":1,"expires_at_ms":9}"#,
    );
    let out = stockctl(&addr, &["reserve", "drop", "ann"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("request-id: cli-"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hold 5"));
}

#[test]
fn fails_over_past_dead_and_leaderless_nodes() {
    let (no_leader, hits) = fake(
        "503 Service Unavailable",
        r#"{"code":"no_leader","message":"no leader"}"#,
    );
    let (good, _) = fake(
        "201 Created",
        r#"{"hold_id":5,"sale_id":"drop","qty":1,"expires_at_ms":9}"#,
    );
    let (closed, _lease) = closed_port();
    let eps = format!("{closed},{no_leader},{good}");
    let out = stockctl(&eps, &["reserve", "drop", "ann", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["hold_id"], 5);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn leaderless_everywhere_exits_2_with_the_server_code() {
    let (a, hits) = fake(
        "503 Service Unavailable",
        r#"{"code":"no_leader","message":"no leader yet"}"#,
    );
    let out = stockctl(&a, &["sale", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: no_leader: no leader yet"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "one try per failover round");
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = stockctl("http://127.0.0.1:1", &["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("stockctl"));
    }
}

#[test]
fn a_closed_stdout_ends_the_program_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    // The reading end is closed before the program starts, so its first write fails.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stockctl"))
        .args(["completions", "bash"])
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run stockctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

#[test]
fn sale_create_from_a_bad_file_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("spec.json");
    std::fs::write(&f, "{\"id\": 1}").expect("write");
    let out = stockctl(
        "http://127.0.0.1:1",
        &["sale", "create", "--file", f.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sale spec"));
}

/// `stockctl restore FILE --data-dir TARGET` (one node on the default ports).
fn restore(file: &std::path::Path, target: &std::path::Path) -> std::process::Output {
    stockctl(
        "http://127.0.0.1:1",
        &[
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
        ],
    )
}

#[test]
fn restore_refuses_a_file_that_is_not_a_backup() {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("junk.snap");
    std::fs::write(&f, b"definitely not a snapshot").expect("write");
    let target = dir.path().join("data");
    let out = restore(&f, &target);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a Stockade snapshot"), "{err}");
    assert!(!target.join("db").exists(), "nothing written");
}

/// A backup that breaks only at its end (a flipped byte in a record: the checksum
/// fails after every record was read) is refused, and the copy streamed so far is
/// removed: the data directory is left as it was found.
#[test]
fn restore_refuses_a_corrupt_backup_and_leaves_no_staging_behind() {
    use stockade_raft_store::store::snapshot::SnapshotWriter;
    let dir = tempfile::tempdir().expect("tmp");
    let meta = stockade_raft_store::SnapshotMeta {
        last_log_id: Some(openraft::testing::log_id::<stockade_raft_store::TypeConfig>(2, 1, 40)),
        last_membership: Default::default(),
    };
    let mut w = SnapshotWriter::create(dir.path(), &meta).expect("writer");
    for i in 0..50u32 {
        w.record(&[0x30, (i >> 8) as u8, i as u8], &[7u8; 64])
            .expect("record");
    }
    let f = w.finish(dir.path(), &meta).expect("finish");
    let mut bytes = std::fs::read(&f).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&f, &bytes).expect("write");
    let target = dir.path().join("data");
    let out = restore(&f, &target);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&target)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn holds_lists_a_users_holds_as_a_table() {
    let (addr, _) = fake(
        "200 OK",
        r#"{"holds":[{"hold_id":3,"sale_id":"drop","user_id":"ann","qty":1,"created_at_ms":1,
            "expires_at_ms":9000,"from_waitlist":true,"state":"active","order_id":null,
            "state_at_ms":null,"request_id":"w-1"}],"next_after":null}"#,
    );
    let out = stockctl(&addr, &["holds", "ann"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HOLD") && text.contains("EXPIRES_AT_MS"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with('3'))
        .unwrap_or_default();
    assert!(
        row.contains("drop") && row.contains("active") && row.contains("9000"),
        "{text}"
    );
}
